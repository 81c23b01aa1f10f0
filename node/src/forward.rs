//! Reaching an app that runs on another node: the route to it (learned
//! from a handover, or asked of the control plane and cached), and calls
//! forwarded there.

use bytes::Bytes;
use hyper::Method;
use tern_api::client::ClientError;
use tern_api::types::{InvokeRequest, InvokeResponse};

use crate::error::{NodeError, Result};
use crate::node::{lock, Node};

impl Node {
    /// Asks the control plane where an app runs (cached).
    pub(crate) async fn resolve(&self, app: &str) -> Option<String> {
        if let Some(u) = lock(&self.routes).get(app).cloned() {
            return Some(u);
        }
        let control = self.control()?;
        // Only where it runs: a node's credential does not read other apps.
        let route: serde_json::Value = match self
            .client
            .get_json(&format!("{control}/v1/routes/{app}"))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.control_failed(&control, &e);
                return None;
            }
        };
        let url = route["url"].as_str()?.to_string();
        lock(&self.routes).insert(app.to_string(), url.clone());
        Some(url)
    }

    fn forget_route(&self, app: &str) {
        lock(&self.routes).remove(app);
    }

    /// Sends an app request to another node's ingress.
    pub(crate) async fn forward_request(
        &self,
        url: &str,
        app: &str,
        req: tern_sdk::Request,
    ) -> tern_sdk::Response {
        let mut target = format!("{url}/apps/{app}{}", req.path);
        if !req.query.is_empty() {
            target.push('?');
            target.push_str(&req.query);
        }
        let method = Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
        let ct = req
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str())
            .unwrap_or("application/octet-stream");
        match self
            .client
            .send(method, &target, ct, Bytes::from(req.body))
            .await
        {
            Ok((status, body)) => tern_sdk::Response::bytes(status.as_u16(), body.to_vec()),
            Err(ClientError::Status { status, message }) => {
                self.forget_route(app);
                tern_sdk::Response::text(status, message)
            }
            Err(e) => {
                self.forget_route(app);
                tern_sdk::Response::text(
                    502,
                    format!("app {app} is on a node that does not answer: {e}\n"),
                )
            }
        }
    }

    /// Calls an export of an app on another node.
    pub(crate) async fn forward_invoke(
        &self,
        url: &str,
        app: &str,
        req: &InvokeRequest,
    ) -> Result<InvokeResponse> {
        self.client
            .post_json(&format!("{url}/v1/apps/{app}/invoke"), req)
            .await
            .map_err(NodeError::from_peer)
    }
}
