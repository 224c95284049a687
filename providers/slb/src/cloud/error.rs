//! Errors: the API's error responses and the server's own start-up errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;

use super::faults::InvalidFaultRate;
use super::state::Inconsistency;

/// An error answered to an API caller: HTTP status, a stable code, a message
/// naming the offending field or resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `InvalidParameter`; `field` leads the message.
    pub fn invalid(field: impl AsRef<str>, reason: impl AsRef<str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            format!("{}: {}", field.as_ref(), reason.as_ref()),
        )
    }

    pub fn not_found(code: &'static str, what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code,
            format!("{what} {id:?} does not exist"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn quota(limit: &str, max: usize) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "QuotaExceeded",
            format!("quota {limit} of {max} reached"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

/// Why the cloud server could not start.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read state file {path}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt (move it away to start empty)")]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} is inconsistent (move it away to start empty)")]
    InconsistentState {
        path: PathBuf,
        #[source]
        source: Inconsistency,
    },
    #[error("invalid fault configuration")]
    InvalidFaults(#[source] InvalidFaultRate),
}
