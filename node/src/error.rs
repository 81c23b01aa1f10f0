//! The one error type of the node's operations: what went wrong, of which
//! kind (the HTTP edge maps the kind to a status), and what to do.

use tern_api::client::ClientError;

/// What kind of failure an operation met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: a bad name, bytes that do not check out.
    BadRequest,
    /// No such app, module, checkpoint or session on this node.
    NotFound,
    /// The request conflicts with the node's state: a stale generation, an
    /// app that is not running, a copy that already runs.
    Conflict,
    /// The app is going away (shut down, handed over): ask again.
    Unavailable,
    /// Too much is waiting for the app: ask again after a moment (503 with
    /// `Retry-After`).
    Busy,
    /// Bytes sent by a peer did not check out on arrival (a link that
    /// damages them): nothing of them was kept, send them again (422).
    Damaged,
    /// Something failed on this node.
    Internal,
    /// Another node or the control plane answered with this status (502
    /// when it did not answer at all).
    Peer(u16),
}

/// A failed node operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

impl NodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> NodeError {
        NodeError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::Unavailable, message)
    }

    pub fn busy(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::Busy, message)
    }

    pub fn damaged(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::Damaged, message)
    }

    pub fn internal(message: impl Into<String>) -> NodeError {
        NodeError::new(ErrorKind::Internal, message)
    }

    /// A call to a peer failed: its status is passed on (502 when it did
    /// not answer), after `context`.
    pub fn peer(context: &str, e: ClientError) -> NodeError {
        NodeError::new(
            ErrorKind::Peer(e.status().unwrap_or(502)),
            format!("{context}: {e}"),
        )
    }

    /// A call to a peer failed; its own message is enough.
    pub fn from_peer(e: ClientError) -> NodeError {
        NodeError::new(ErrorKind::Peer(e.status().unwrap_or(502)), e.to_string())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Unavailable | ErrorKind::Busy => 503,
            ErrorKind::Damaged => 422,
            ErrorKind::Internal => 500,
            ErrorKind::Peer(s) => s,
        }
    }
}

impl From<tern_api::names::BadName> for NodeError {
    fn from(e: tern_api::names::BadName) -> NodeError {
        NodeError::bad_request(e.to_string())
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for NodeError {
    fn from(e: tokio::task::JoinError) -> NodeError {
        NodeError::internal(e.to_string())
    }
}
