//! App ingress, the HTTP edge anonymous clients reach: `/apps/NAME/REST`
//! goes to the app's handler here, or to the node that runs it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tern_api::server::{self, error, read_body, Body};

use crate::forward::Lookup;
use crate::node::{Node, Slot};

/// The largest request body ingress takes for an app.
pub(crate) const MAX_INGRESS_BODY: usize = 16 << 20;

/// Handles one ingress request.
pub(crate) async fn ingress(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix("/apps/").unwrap_or("");
    let (name, sub) = match rest.split_once('/') {
        Some((n, s)) => (n.to_string(), format!("/{s}")),
        None => (rest.to_string(), "/".to_string()),
    };
    if name.is_empty() {
        return error(StatusCode::NOT_FOUND, "ingress paths are /apps/NAME/...");
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match read_body(req.into_body(), MAX_INGRESS_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let app_req = tern_sdk::Request {
        method,
        path: sub,
        query,
        headers,
        body: body.to_vec(),
    };
    to_http(request(&node, &name, app_req).await)
}

/// Runs a request on the app, wherever it is.
async fn request(node: &Node, name: &str, req: tern_sdk::Request) -> tern_sdk::Response {
    let no_app = || crate::forward::no_app(name);
    match node.slot(name) {
        Some(Slot::Local(h)) => match node.lease.check() {
            Err(why) => {
                let mut r = tern_sdk::Response::text(503, format!("{why}\n"));
                r.headers.push(("retry-after".into(), "1".into()));
                r
            }
            Ok(()) => match h.request_here(req, node.lease.clone()).await {
                Ok(r) => r.with_header(crate::NODE_HEADER, node.config.name.clone()),
                // The app was handed over (or deleted) between the lookup and
                // the call: the request did not run; follow the app.
                Err(req) => match node.moved_to(name) {
                    Some(url) => node.forward_request(&url, name, req).await,
                    None => no_app(),
                },
            },
        },
        Some(Slot::Moved { url }) => node.forward_request(&url, name, req).await,
        None => match node.resolve(name).await {
            Lookup::At(url) if url != node.url => node.forward_request(&url, name, req).await,
            Lookup::Unreachable(why) => crate::forward::unreachable(name, &why),
            _ => no_app(),
        },
    }
}

fn to_http(resp: tern_sdk::Response) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in &resp.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            b = b.header(k, v);
        }
    }
    b.body(server::full(resp.body))
        .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "app answered an invalid response"))
}
