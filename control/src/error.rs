//! The one error type of the handlers: an HTTP status and a message that
//! says what to do.

use hyper::{Response, StatusCode};
use tern_api::client::ClientError;
use tern_api::server::{self, Body};

/// An API error: the status and the `{"error": ...}` message of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A credential that may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The app is not in the table.
    pub fn no_app(name: &str) -> ApiError {
        ApiError::not_found(format!("no app named {name}: see `tern ps`"))
    }

    /// The node is not registered.
    pub fn no_node(name: &str) -> ApiError {
        ApiError::not_found(format!("no node named {name}: see `tern nodes`"))
    }

    /// Another operation holds the app.
    pub fn busy(name: &str) -> ApiError {
        ApiError::conflict(format!(
            "app {name} is being moved, restored or removed right now: try again in a moment"
        ))
    }

    /// A call to a node failed.
    pub fn from_node(node: &str, url: &str, e: ClientError) -> ApiError {
        match e {
            ClientError::Unreachable { reason, .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("node {node} at {url} does not answer ({reason}): start it again, or choose another node (`tern nodes`)"),
            ),
            ClientError::Certificate { reason, .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("node {node} at {url} is not the node the cluster's CA certified ({reason}): check its certificate, or join it again"),
            ),
            ClientError::Timeout { secs, .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("node {node} at {url} did not answer within {secs} s: is it overloaded or stuck?"),
            ),
            ClientError::Status { status, message, .. } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let status = if status == StatusCode::UNAUTHORIZED {
                    // A node that refuses our token is a cluster misconfiguration,
                    // not the client's wrong token.
                    StatusCode::BAD_GATEWAY
                } else {
                    status
                };
                ApiError::new(status, format!("node {node}: {message}"))
            }
            ClientError::Decode { reason, .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("node {node} at {url} gave an answer this control plane does not understand ({reason}): are both the same tern version?"))
            }
        }
    }

    /// The answer for this error.
    pub fn into_response(self) -> Response<Body> {
        server::error(self.status, self.message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(format!("{e:#}"))
    }
}

impl From<tern_scheduler::ScheduleError> for ApiError {
    fn from(e: tern_scheduler::ScheduleError) -> ApiError {
        use tern_scheduler::ScheduleError as E;
        let status = match &e {
            E::NoNodes | E::NoFeasibleNode { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::UnknownNode(_) | E::UnknownApp(_) => StatusCode::NOT_FOUND,
            E::DuplicateApp(_) => StatusCode::CONFLICT,
            E::UnknownPolicy(_) | E::UnknownRestartPolicy(_) => StatusCode::BAD_REQUEST,
            #[allow(unreachable_patterns)]
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}
