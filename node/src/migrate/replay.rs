//! The calls an app's actor held during a move's pause, replayed on the
//! node the app moved to, in the order they arrived; each caller gets the
//! answer from there.

use bytes::Bytes;
use tern_runtime::snapshot::Snapshot;

use crate::app::Cmd;
use crate::error::NodeError;
use crate::node::Node;

/// Replays held calls on the node at `url`, in order.
pub(crate) async fn replay_held(node: &Node, url: &str, app: &str, held: Vec<Cmd>) {
    for cmd in held {
        replay(node, url, app, cmd).await;
    }
}

async fn replay(node: &Node, url: &str, app: &str, cmd: Cmd) {
    match cmd {
        // A held call whose caller went away is not replayed.
        Cmd::Invoke(_, reply) if reply.is_closed() => {}
        Cmd::Http(_, reply) if reply.is_closed() => {}
        Cmd::Invoke(req, reply) => reply.send(node.forward_invoke(url, app, &req).await),
        Cmd::Http(req, reply) => reply.send(node.forward_request(url, app, req).await),
        Cmd::Snapshot(reply) => {
            let r = node
                .client
                .post_bytes(&format!("{url}/v1/apps/{app}/snapshot"), Bytes::new())
                .await
                .map_err(NodeError::from_peer)
                .and_then(|b| {
                    Snapshot::from_bytes(b.to_vec())
                        .map_err(|e| NodeError::new(crate::ErrorKind::Peer(502), e.to_string()))
                });
            let _ = reply.send(r);
        }
        Cmd::Stop(reply) | Cmd::Start(reply) => {
            let _ = reply.send(Err(NodeError::conflict(format!(
                "app {app} moved to {url}: ask there"
            ))));
        }
        // Nothing else is held: migration steps come from the one move in
        // progress, which is over.
        _ => {}
    }
}
