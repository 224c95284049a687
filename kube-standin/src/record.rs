//! The request log: every request the stand-in served, in order.

use std::sync::{Arc, Mutex};

/// One request, as the API server's authorizer would see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedRequest {
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// Query string (may be empty).
    pub query: String,
    /// Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`; `get` for discovery and other
    /// non-resource requests.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource, empty for non-resource requests (discovery).
    pub resource: String,
    /// Subresource such as `status`, empty if none.
    pub subresource: String,
    /// Namespace, empty for cluster-scoped or all-namespace requests.
    pub namespace: String,
    /// Object name, empty for collection requests.
    pub name: String,
    /// The patch type for PATCH requests: `json`, `merge`, `strategic`, `apply`.
    pub patch_type: Option<String>,
    /// The request `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
    /// The response status code.
    pub status: u16,
}

impl RecordedRequest {
    /// Whether the verb changes state.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// `resource` or `resource/subresource`.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The shared request log.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl Recorder {
    /// Append a request.
    pub fn push(&self, r: RecordedRequest) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// A copy of the log.
    pub fn all(&self) -> Vec<RecordedRequest> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
