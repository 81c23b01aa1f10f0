//! Registration with the control plane and heartbeats.

use std::sync::Arc;

use crate::node::Node;
use crate::HEARTBEAT_INTERVAL;

/// Registers with the control plane, then sends heartbeats; re-registers
/// when the control plane forgets the node (it restarted).
pub(crate) async fn report_loop(node: Arc<Node>) {
    if node.control().is_none() {
        return;
    }
    let mut registered = false;
    loop {
        let Some(control) = node.control() else {
            return;
        };
        if !registered {
            match node
                .client
                .post_json::<_, serde_json::Value>(&format!("{control}/v1/nodes"), &node.info())
                .await
            {
                Ok(_) => registered = true,
                Err(e) => node.control_failed(&control, &e),
            }
        }
        if registered {
            let hb = node.heartbeat();
            let url = format!("{control}/v1/nodes/{}/heartbeat", node.name());
            match node
                .client
                .post_json::<_, serde_json::Value>(&url, &hb)
                .await
            {
                // The answer lists the revoked certificates: their holders
                // are refused here too from now on.
                Ok(answer) => {
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
