//! Registration with the control plane and heartbeats.

use std::sync::Arc;

use crate::node::Node;
use crate::HEARTBEAT_INTERVAL;

/// The least a registration waits for its answer.
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registers with the control plane, then sends heartbeats; re-registers
/// when the control plane forgets the node (it restarted). A heartbeat
/// waits for its answer no longer than a lease lasts (`Lease::term`), a
/// registration that long but at least 5 s: a control plane that hangs
/// does not keep the node from the one that leads.
pub(crate) async fn report_loop(node: Arc<Node>) {
    if node.control().is_none() {
        return;
    }
    let mut registered = false;
    loop {
        let Some(control) = node.control() else {
            return;
        };
        let sent = std::time::Instant::now();
        let client = node.client.clone().with_timeout(node.lease.term());
        if !registered {
            // A registration answered late still lets the heartbeats begin
            // (a durable write on a loaded control plane can take seconds):
            // it waits at least REGISTRATION_WAIT.
            match client
                .clone()
                .with_timeout(node.lease.term().max(REGISTRATION_WAIT))
                .post_json::<_, serde_json::Value>(&format!("{control}/v1/nodes"), &node.info())
                .await
            {
                Ok(answer) => {
                    registered = true;
                    renew(&node, sent, &answer);
                }
                Err(e) => node.control_failed(&control, &e),
            }
        }
        if registered {
            let hb = node.heartbeat();
            let url = format!("{control}/v1/nodes/{}/heartbeat", node.name());
            match client.post_json::<_, serde_json::Value>(&url, &hb).await {
                // The answer lists the revoked certificates: their holders
                // are refused here too from now on.
                Ok(answer) => {
                    renew(&node, sent, &answer);
                    if let Some(list) = answer["revoked"].as_array() {
                        node.auth.set_revoked(
                            list.iter()
                                .filter_map(|s| s.as_str().map(str::to_string))
                                .collect(),
                        );
                    }
                }
                Err(e) => {
                    if e.status() == Some(404) {
                        registered = false;
                    }
                    node.control_failed(&control, &e);
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}

/// An acknowledgement renews the node's lease (`lease.rs`) for half the
/// heartbeat timeout the control plane states (10 s if it states none).
fn renew(node: &Node, sent: std::time::Instant, answer: &serde_json::Value) {
    let t = answer["heartbeat_timeout_ms"]
        .as_u64()
        .map(std::time::Duration::from_millis)
        .unwrap_or(std::time::Duration::from_secs(10));
    node.lease.renew(sent, t);
}
