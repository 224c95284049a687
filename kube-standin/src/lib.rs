//! A Kubernetes API server stand-in for tests and demos.
//!
//! [`ApiServer::start`] serves the Kubernetes HTTP API on a random loopback
//! port over plain `http://`, well enough for a real `kube::Client`,
//! kube-runtime's `Controller`/`watcher`/`reflector`, `kube-lease-manager`,
//! and `kubectl get/apply/delete`. Objects are kept as JSON in memory
//! ([`store::Store`]); the served resources are one data table
//! ([`resources`]), extended at run time by `CustomResourceDefinition`s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_standin::StandinError> {
//! let server = kube_standin::ApiServer::start().await?;
//! std::fs::write("/tmp/kubeconfig", server.kubeconfig_yaml()).ok();
//! // with the `client` feature: let client = server.client().await?;
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! - One global resourceVersion, bumped on every real change; a write that
//!   changes nothing (ignoring `resourceVersion`/`managedFields`) is not
//!   stored, does not bump it and emits no watch event.
//! - `uid`, `creationTimestamp`, `generation` (bumped on changes outside
//!   `metadata` and `status` for resources with a status subresource),
//!   `generateName`, namespace defaulting from the URL.
//! - list with label/field selectors, `limit`/`continue`, `resourceVersion`
//!   and `resourceVersionMatch`; watch with replay from a bounded history,
//!   `allowWatchBookmarks` (periodic BOOKMARKs), `sendInitialEvents`
//!   (ADDED for all, then a BOOKMARK annotated `k8s.io/initial-events-end`),
//!   `timeoutSeconds`, selector-aware ADDED/DELETED transitions, `410` as an
//!   `ERROR` event for expired resourceVersions.
//! - create/get/update/patch/delete/deletecollection, the `status`
//!   subresource, finalizers and `deletionTimestamp`, optimistic concurrency,
//!   `Status` error objects, `dryRun`.
//! - Patches: JSON patch (a `test` for `null` passes on an absent path, as
//!   kube-runtime's finalizer helper needs), merge patch, strategic merge
//!   patch (see [`patch`]), server-side apply with minimal field ownership.
//! - Services are defaulted and allocated like the real API server does
//!   (see [`defaults`]).
//! - Discovery (`/version`, `/api`, `/apis`, ...) and `meta.k8s.io/v1` Table
//!   output for `kubectl get`.
//! - Every request is recorded ([`ApiServer::requests`]).
//!
//! # Known differences from a real API server
//!
//! Two suites send the same requests to the stand-in and to a real
//! kube-apiserver (`scripts/control-plane.sh`) and require the same
//! answers. `tests/api.rs` is the stand-in's own API suite: CRUD and
//! defaults, the status subresource, merge/strategic/apply patches with
//! apply conflicts, no-op writes keeping the resourceVersion (no watch
//! event), pagination, watch replay, label and field selectors, Nodes and Lease conflicts,
//! streaming lists, discovery and Tables, CRDs and their custom resources.
//! `tests/differential.rs` probes what portico depends on: Service defaults
//! and NodePort sharing between TCP and UDP on one port, strategic merge of
//! `spec.ports` by port alone, Service status defaulting (`ipMode: VIP`)
//! and validation, an immutable `loadBalancerClass`, type changes clearing
//! `status.loadBalancer`, field selectors, Lease updates without a
//! resourceVersion, Event validation, the finalizer flow with JSON-patch
//! `test`s, source-range validation.
//!
//! Left to the stand-in alone (`tests/standin_only.rs`), because the real
//! server has no counterpart to ask: cutting every watch at once
//! ([`ApiServer::disconnect_watches`]; the real tier breaks watches by
//! restarting kube-apiserver instead), compaction followed by a watcher
//! re-list and the `410` for a forgotten resourceVersion
//! ([`ApiServer::compact`]; the real server forgets when its watch cache
//! window moves on, so a fresh control plane still serves a watch from
//! version 1), the request record ([`ApiServer::requests`]; the real
//! server's is its audit log), and the fixed allocation ranges below.
//!
//! `tests/kubectl.rs` and `tests/controller.rs` (kubectl, a kube-runtime
//! Controller and kube-lease-manager against the stand-in) stay stand-in
//! only: portico's `tests/kubectl_real.rs` runs kubectl on the real server
//! and its `tests/controller.rs` runs the controller on both.
//!
//! What is left different on purpose:
//!
//! - No authentication, authorization, admission, TLS, or HTTP/2.
//! - No OpenAPI (`/openapi/v2`, `/openapi/v3` are 404): use
//!   `kubectl apply --validate=false`. No aggregated discovery (kubectl falls
//!   back to the legacy documents). Serving OpenAPI would mean the whole
//!   schema of every served kind, and the stand-in validates no schema
//!   anyway: where a test needs validation it runs on the real server.
//! - helm cannot install a chart into the stand-in: `helm install` first
//!   validates the rendered manifest against the server's OpenAPI ("failed
//!   to download openapi"), and with `--disable-openapi-validation` it stops
//!   at the kinds a chart is made of that the stand-in does not serve
//!   (`apps/v1` Deployments, `rbac.authorization.k8s.io` Roles and bindings).
//!   Left so: with no kubelet and no authorizer nothing would run the
//!   Deployment or enforce the roles, so an install here would prove
//!   nothing. The chart is installed, upgraded and uninstalled on the real
//!   control plane instead (portico's `tests/chart_real.rs`).
//! - Server-side apply: no `managedFields` in responses; ownership is tracked
//!   per leaf field for appliers only (lists are atomic); a non-apply write
//!   that changes a field takes it away from its appliers without recording
//!   the writer as an owner, so a later apply never conflicts with it.
//! - Strategic merge patch knows merge keys only for a few fields
//!   (`status.conditions`, `spec.ports` by `port` alone as upstream,
//!   `metadata.ownerReferences`, containers, taints, node addresses); other
//!   lists are replaced.
//!   `metadata.finalizers` merges as a set, as upstream.
//! - `continue` pages show the current state of the remaining objects, not a
//!   snapshot at the list's resourceVersion (the list's resourceVersion is
//!   kept, so a following watch replays anything that changed). A list with
//!   `resourceVersionMatch=Exact` for anything but the current version
//!   gets 410; other `resourceVersion`s are served from the current state.
//! - Validation is minimal: object names (RFC 1123 subdomain), namespace
//!   existence on create, Service ports and their names/types/node
//!   ports/cluster IPs/source ranges and status (see [`defaults`]),
//!   `events.k8s.io` Events, Lease updates without a resourceVersion; no
//!   schema validation, unknown fields are stored, CRD schemas are ignored
//!   (the real server prunes fields a structural schema does not name).
//!   Where an object has problems of several kinds, the stand-in may name
//!   only the first kind (the real server names them all).
//! - Cluster IPs come from 10.96.0.0/12 and node ports from 30000-32767,
//!   lowest free first; the real server's ranges are flags (the test
//!   control plane uses 10.96.0.0/16 and 20000-60000) and it picks at
//!   random.
//! - Field selectors are checked against the real server's lists for
//!   Services, Nodes, Namespaces, ConfigMaps and Leases only; other
//!   resources accept any field.
//! - Error `causes` may list a field once where the real server lists it
//!   twice (the differential suite compares the set of fields named).
//! - `metadata.generation` is kept for Pods and custom resources with a
//!   status subresource, not for Services, Nodes and Namespaces (as upstream);
//!   other built-in kinds that the real server versions (Deployments) are
//!   not served.
//! - Only one version is stored per resource; all served versions return
//!   the same JSON with their own `apiVersion` (no conversion).
//! - core/v1 and events.k8s.io/v1 Events are separate resources, so an
//!   Event portico writes (events.k8s.io) is invisible to `kubectl describe`,
//!   which reads core/v1 Events by `involvedObject`. The real server stores
//!   both as one resource and converts field by field (`regarding` ↔
//!   `involvedObject`, `note` ↔ `message`, `reportingController` ↔
//!   `reportingComponent`, ...). Left so: tests read portico's Events
//!   through events.k8s.io, as it writes them, and `kubectl describe svc`
//!   showing them is proven on the real server (portico's
//!   `tests/kubectl_real.rs`); a two-way conversion with `involvedObject.*`
//!   field selectors would be code only `describe` uses.
//! - Deleting a namespace does not delete its contents; `gracePeriodSeconds`
//!   and `propagationPolicy` are ignored (no garbage collector, no
//!   ownerReference cascading). Status writes change only `.status`.
//! - Periodic BOOKMARKs carry the newest resourceVersion the watch has seen
//!   for its resource, and are sent every [`ApiServerOptions::bookmark_interval`].

#[cfg(feature = "control-plane")]
pub mod control_plane;
pub mod defaults;
pub mod discovery;
mod http;
pub mod patch;
pub mod record;
pub mod resources;
pub mod selectors;
pub mod store;
pub mod table;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

pub use record::RecordedRequest;
pub use store::Store;

/// Everything that can go wrong, with the Kubernetes `Status` it maps to.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    /// The object does not exist (404).
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// Resource (plural, qualified with the group when not core).
        resource: String,
        /// Object name.
        name: String,
    },
    /// The object exists already (409).
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// Resource.
        resource: String,
        /// Object name.
        name: String,
    },
    /// Stale resourceVersion or failed precondition (409):
    /// re-read and retry.
    #[error("{0}")]
    Conflict(String),
    /// Server-side apply would take fields from other managers (409), each
    /// named as a `FieldManagerConflict` cause.
    #[error("Apply failed with {} conflict(s): {}", .0.len(), .0.iter().map(|c| format!("conflict with {:?}: {}", c.manager, c.field)).collect::<Vec<_>>().join(", "))]
    ApplyConflict(Vec<patch::ApplyConflict>),
    /// Validation failed (422); each cause is (field path, message).
    #[error("{kind} {name:?} is invalid: {}", causes.iter().map(|(f, m)| if f.is_empty() { m.clone() } else { format!("{f}: {m}") }).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// Object name.
        name: String,
        /// (field, message) pairs.
        causes: Vec<(String, String)>,
    },
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// The resourceVersion is too old (410): re-list.
    #[error("{0}")]
    Expired(String),
    /// No such resource or path (404).
    #[error("the server could not find the requested resource {0}")]
    UnknownResource(String),
    /// Method not supported here (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Unknown patch content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A 500 without a reason, as the real server answers when one of its
    /// allocators meets a state its validation would have refused had it
    /// run first (`duplicate nodePort: {UDP 30053}`).
    #[error("{0}")]
    Internal(String),
    /// The listener could not be bound.
    #[error("failed to bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The generated kubeconfig could not be loaded by kube.
    #[cfg(feature = "client")]
    #[error("failed to load the generated kubeconfig")]
    Kubeconfig(#[source] Box<kube::config::KubeconfigError>),
    /// kube refused to build a client.
    #[cfg(feature = "client")]
    #[error("failed to build a kube client")]
    Client(#[source] Box<kube::Error>),
}

impl StandinError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            StandinError::NotFound { .. } | StandinError::UnknownResource(_) => 404,
            StandinError::AlreadyExists { .. }
            | StandinError::Conflict(_)
            | StandinError::ApplyConflict(_) => 409,
            StandinError::Invalid { .. } => 422,
            StandinError::BadRequest(_) => 400,
            StandinError::Expired(_) => 410,
            StandinError::MethodNotAllowed(_) => 405,
            StandinError::UnsupportedMediaType(_) => 415,
            _ => 500,
        }
    }

    /// The `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            StandinError::NotFound { .. } | StandinError::UnknownResource(_) => "NotFound",
            StandinError::AlreadyExists { .. } => "AlreadyExists",
            StandinError::Conflict(_) | StandinError::ApplyConflict(_) => "Conflict",
            StandinError::Invalid { .. } => "Invalid",
            StandinError::BadRequest(_) => "BadRequest",
            StandinError::Expired(_) => "Expired",
            StandinError::MethodNotAllowed(_) => "MethodNotAllowed",
            StandinError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            // upstream's StatusReasonUnknown
            StandinError::Internal(_) => "",
            _ => "InternalError",
        }
    }

    /// The `v1 Status` object the API returns for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        match self {
            StandinError::NotFound { resource, name }
            | StandinError::AlreadyExists { resource, name } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource.as_str(), ""));
                s["details"] = json!({"name": name, "group": group, "kind": kind});
            }
            StandinError::Invalid { kind, name, causes } => {
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|(f, m)| {
                        if f.is_empty() {
                            json!({"message": m})
                        } else {
                            json!({"reason": "FieldValueInvalid", "message": m, "field": f})
                        }
                    })
                    .collect();
                s["details"] = json!({"name": name, "kind": kind, "causes": causes});
            }
            StandinError::ApplyConflict(conflicts) => {
                let causes: Vec<Value> = conflicts
                    .iter()
                    .map(|c| {
                        json!({
                            "reason": "FieldManagerConflict",
                            "message": format!("conflict with {:?}", c.manager),
                            "field": c.field,
                        })
                    })
                    .collect();
                s["details"] = json!({"causes": causes});
            }
            StandinError::UnknownResource(_) => {
                s["message"] = json!("the server could not find the requested resource");
            }
            StandinError::Internal(_) => {
                if let Some(m) = s.as_object_mut() {
                    m.remove("reason");
                }
            }
            _ => {}
        }
        s
    }
}

/// Options for [`ApiServer::start_with`].
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Address to listen on (port 0: pick one).
    pub addr: SocketAddr,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running stand-in API server. Dropping it (or [`ApiServer::shutdown`])
/// stops serving and closes every watch.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    store: Store,
    recorder: record::Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Start on `127.0.0.1` with a random port.
    pub async fn start() -> Result<ApiServer, StandinError> {
        ApiServer::start_with(ApiServerOptions::default()).await
    }

    /// Start with options.
    pub async fn start_with(opts: ApiServerOptions) -> Result<ApiServer, StandinError> {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| StandinError::Bind {
                addr: opts.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StandinError::Bind {
            addr: opts.addr,
            source,
        })?;
        let store = Store::new();
        let recorder = record::Recorder::default();
        let state = Arc::new(http::AppState {
            store: store.clone(),
            recorder: recorder.clone(),
            server_address: addr.to_string(),
            bookmark_interval: opts.bookmark_interval,
        });
        let app = http::router(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "kube-standin server stopped");
            }
        });
        tracing::info!(%addr, "kube-standin API server listening");
        Ok(ApiServer {
            addr,
            store,
            recorder,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (plain http, no credentials, namespace
    /// `default`, context `kube-standin`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kube-standin
  cluster:
    server: {url}
contexts:
- name: kube-standin
  context:
    cluster: kube-standin
    user: kube-standin
    namespace: default
current-context: kube-standin
users:
- name: kube-standin
  user: {{}}
preferences: {{}}
",
            url = self.url()
        )
    }

    /// Write [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A `kube::Client` for this server, built from the generated kubeconfig.
    #[cfg(feature = "client")]
    pub async fn client(&self) -> Result<kube::Client, StandinError> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| StandinError::Kubeconfig(Box::new(e)))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| StandinError::Kubeconfig(Box::new(e)))?;
        kube::Client::try_from(config).map_err(|e| StandinError::Client(Box::new(e)))
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.all()
    }

    /// The object store, for direct manipulation in tests (no HTTP).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Close every open watch stream (clients see the stream end and
    /// re-watch from their last resourceVersion).
    pub fn disconnect_watches(&self) {
        self.store.disconnect_watches();
    }

    /// Forget the event history: watches from resourceVersions older than
    /// the current one get `410 Gone`.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Stop serving and close every watch.
    pub async fn shutdown(self) {
        self.store.disconnect_watches();
        self.task.abort();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.store.disconnect_watches();
        self.task.abort();
    }
}
