//! Reaching an app that runs on another node: the route to it (learned
//! from a handover, or asked of the control plane and cached), and calls
//! forwarded there.
//!
//! A route can go stale: the app moved on, or its node died and the app
//! restarted elsewhere. A forward that could not be delivered (the node
//! did not take the connection, or answered that it has no such app) drops
//! the route, asks the control plane where the app is now, and tries there
//! once. Only calls surely not delivered are sent again, so none runs
//! twice. Unknown apps are remembered as unknown for a moment, so a stream
//! of requests for them does not become a stream of control-plane lookups.
//!
//! At most [`MAX_FORWARDS_PER_PEER`] calls are forwarded to one node at a
//! time: a node whose calls hang (an app holding them) would otherwise
//! collect a connection per waiting call, each kept until the request
//! times out, until this node or the link to it had none left for anything
//! else. Past the bound a call is answered at once with 503 and
//! `Retry-After`, unsent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tern_api::client::ClientError;
use tern_api::types::{InvokeRequest, InvokeResponse};

use crate::error::{NodeError, Result};
use crate::node::{lock, Node, Slot};

/// The header a node's ingress sets when it answers for an app it does not
/// have (rather than the app answering 404 itself).
pub(crate) const NO_APP_HEADER: &str = "x-tern-no-app";
/// How long an app the control plane does not know stays unknown here.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Routes (and unknown apps) remembered at most; past that the cache starts
/// over (it is only a cache).
const MAX_ROUTES: usize = 4096;
/// Calls forwarded to one node at once, at most.
pub(crate) const MAX_FORWARDS_PER_PEER: usize = 256;

/// What the node knows of apps elsewhere.
#[derive(Default)]
pub(crate) struct Routes {
    /// App → the URL of the node that runs it.
    known: HashMap<String, String>,
    /// Apps the control plane did not know, and when it said so.
    unknown: HashMap<String, Instant>,
    /// Node URL → the calls being forwarded there now.
    in_flight: HashMap<String, Arc<tokio::sync::Semaphore>>,
}

impl Routes {
    /// A slot for one more call forwarded to the node at `url`, unless
    /// [`MAX_FORWARDS_PER_PEER`] are in flight there already.
    pub(crate) fn forward_slot(&mut self, url: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !self.in_flight.contains_key(url) && self.in_flight.len() >= MAX_ROUTES {
            // Only nodes with calls in flight need their count kept.
            self.in_flight
                .retain(|_, s| s.available_permits() < MAX_FORWARDS_PER_PEER);
        }
        self.in_flight
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_PER_PEER)))
            .clone()
            .try_acquire_owned()
            .ok()
    }
}

/// The answer to a call not forwarded because too many wait on its node.
fn too_many(url: &str) -> String {
    format!(
        "{MAX_FORWARDS_PER_PEER} calls are already waiting on node {url}: try again in a moment\n"
    )
}

/// The outcome of one attempt to deliver a request to a node's ingress.
enum Attempt {
    Answered(tern_sdk::Response),
    /// Surely not run there: the node has no such app.
    NoApp,
    /// Surely not run there: the connection could not be made.
    Unreachable(String),
}

impl Node {
    /// Where an app runs, from the cache or the control plane.
    pub(crate) async fn resolve(&self, app: &str) -> Lookup {
        {
            let mut routes = lock(&self.routes);
            if let Some(u) = routes.known.get(app) {
                return Lookup::At(u.clone());
            }
            match routes.unknown.get(app) {
                Some(t) if t.elapsed() < NEGATIVE_TTL => return Lookup::Nowhere,
                Some(_) => {
                    routes.unknown.remove(app);
                }
                None => {}
            }
        }
        let found = self.ask_control(app).await;
        let mut routes = lock(&self.routes);
        if routes.known.len() + routes.unknown.len() >= MAX_ROUTES {
            routes.known.clear();
            routes.unknown.clear();
        }
        // Only answers are remembered: a control plane that did not answer
        // said nothing about the app.
        match &found {
            Lookup::At(u) => {
                routes.known.insert(app.to_string(), u.clone());
            }
            Lookup::Nowhere => {
                routes.unknown.insert(app.to_string(), Instant::now());
            }
            Lookup::Unreachable(_) => {}
        }
        found
    }

    /// Asks the control plane which node runs `app`.
    async fn ask_control(&self, app: &str) -> Lookup {
        let Some(control) = self.control() else {
            return Lookup::Nowhere;
        };
        // Only where it runs: a node's credential does not read other apps.
        let route: serde_json::Value = match self
            .client
            .get_json(&format!("{control}/v1/routes/{app}"))
            .await
        {
            Ok(v) => v,
            Err(e) if e.status() == Some(404) => return Lookup::Nowhere,
            Err(e) => {
                self.control_failed(&control, &e);
                return Lookup::Unreachable(e.to_string());
            }
        };
        match route["url"].as_str() {
            Some(u) => Lookup::At(u.to_string()),
            None => Lookup::Nowhere,
        }
    }

    pub(crate) fn forget_route(&self, app: &str) {
        let mut routes = lock(&self.routes);
        routes.known.remove(app);
        routes.unknown.remove(app);
    }

    /// Sends an app request to the node at `url`; when it cannot be
    /// delivered there, to wherever the control plane says the app is now.
    pub(crate) async fn forward_request(
        &self,
        url: &str,
        app: &str,
        req: tern_sdk::Request,
    ) -> tern_sdk::Response {
        let mut path = format!("/apps/{app}{}", req.path);
        if !req.query.is_empty() {
            path.push('?');
            path.push_str(&req.query);
        }
        let method = Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
        let ct = req
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "application/octet-stream".into());
        let body = Bytes::from(req.body);
        let first = self.deliver(url, &path, &method, &ct, body.clone()).await;
        if let Attempt::Answered(r) = first {
            return r;
        }
        self.forget_route(app);
        let next = match self.ask_control(app).await {
            Lookup::At(next) if next != url && next != self.url => next,
            _ => return failed(app, first),
        };
        self.follow(app, &next);
        match self.deliver(&next, &path, &method, &ct, body).await {
            Attempt::Answered(r) => r,
            again => failed(app, again),
        }
    }

    /// The app is at `url` now: the route, and a moved-away slot, say so.
    fn follow(&self, app: &str, url: &str) {
        if let Some(Slot::Moved { .. }) = self.slot(app) {
            self.mark_moved(app, url);
        }
        let mut routes = lock(&self.routes);
        routes.unknown.remove(app);
        routes.known.insert(app.to_string(), url.to_string());
    }

    async fn deliver(
        &self,
        url: &str,
        path: &str,
        method: &Method,
        content_type: &str,
        body: Bytes,
    ) -> Attempt {
        let Some(_slot) = lock(&self.routes).forward_slot(url) else {
            let mut r = tern_sdk::Response::text(503, too_many(url));
            r.headers.push(("retry-after".into(), "1".into()));
            return Attempt::Answered(r);
        };
        let target = format!("{url}{path}");
        match self
            .client
            .send_raw(method.clone(), &target, Some(content_type), body)
            .await
        {
            Ok(r) if r.headers.contains_key(NO_APP_HEADER) => Attempt::NoApp,
            Ok(r) => {
                let mut resp = tern_sdk::Response::bytes(r.status.as_u16(), r.body.to_vec());
                // Which copy answered travels back through the forward.
                for h in [crate::NODE_HEADER, crate::GENERATION_HEADER] {
                    if let Some(v) = r.headers.get(h).and_then(|v| v.to_str().ok()) {
                        resp.headers.push((h.into(), v.into()));
                    }
                }
                if let Some(ct) = r.content_type {
                    resp.headers.retain(|(k, _)| k != "content-type");
                    resp.headers.push(("content-type".into(), ct));
                }
                Attempt::Answered(resp)
            }
            Err(e) if e.never_delivered() => Attempt::Unreachable(e.to_string()),
            Err(e) => Attempt::Answered(tern_sdk::Response::text(
                502,
                format!("app {} answered nothing: {e}\n", path),
            )),
        }
    }

    /// Calls an export of an app on another node (an invoke is retried
    /// elsewhere only by its caller: it may have run).
    pub(crate) async fn forward_invoke(
        &self,
        url: &str,
        app: &str,
        req: &InvokeRequest,
    ) -> Result<InvokeResponse> {
        let Some(_slot) = lock(&self.routes).forward_slot(url) else {
            return Err(NodeError::busy(too_many(url).trim_end()));
        };
        self.client
            .post_json(&format!("{url}/v1/apps/{app}/invoke"), req)
            .await
            .map_err(|e: ClientError| NodeError::from_peer(e))
    }
}

/// The answer when a request could not be delivered anywhere.
fn failed(app: &str, attempt: Attempt) -> tern_sdk::Response {
    match attempt {
        Attempt::Unreachable(why) => tern_sdk::Response::text(
            502,
            format!("app {app} is on a node that does not answer: {why}\n"),
        ),
        _ => no_app(app),
    }
}

/// A node's answer for an app it does not know (marked, so that a
/// forwarding node can tell it from the app's own 404).
/// Where the control plane says an app runs.
pub(crate) enum Lookup {
    At(String),
    /// It runs nowhere (or this node has no control plane to ask).
    Nowhere,
    /// The control plane did not answer (why): nothing is known.
    Unreachable(String),
}

/// The answer for an app whose whereabouts cannot be learned now: 503, to
/// try again, not 404 (the app may well exist).
pub(crate) fn unreachable(app: &str, why: &str) -> tern_sdk::Response {
    let mut r = tern_sdk::Response::text(
        503,
        format!("cannot learn where app {app} runs: the control plane did not answer ({why}); try again in a moment\n"),
    );
    r.headers.push(("retry-after".into(), "1".into()));
    r
}

pub(crate) fn no_app(app: &str) -> tern_sdk::Response {
    tern_sdk::Response::text(404, format!("no app named {app}\n")).with_header(NO_APP_HEADER, "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_to_one_node_are_bounded_and_their_slots_come_back() {
        let mut routes = Routes::default();
        let held: Vec<_> = (0..MAX_FORWARDS_PER_PEER)
            .map(|_| routes.forward_slot("https://a").expect("under the bound"))
            .collect();
        assert!(
            routes.forward_slot("https://a").is_none(),
            "one call past the bound"
        );
        // Another node has slots of its own.
        let other = routes.forward_slot("https://b").expect("another node");
        drop(held);
        assert!(
            routes.forward_slot("https://a").is_some(),
            "slots come back"
        );
        drop(other);
        // The map of nodes is bounded: idle nodes make way for new ones.
        for i in 0..MAX_ROUTES + 10 {
            let _slot = routes.forward_slot(&format!("https://n{i}")).unwrap();
        }
        assert!(routes.in_flight.len() <= MAX_ROUTES);
    }
}
