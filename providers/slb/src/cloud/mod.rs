//! The mock cloud: an HTTP/JSON API modelled on Alibaba SLB.
//!
//! Resources: load balancers (a VIP from [`CloudConfig::vip_range`], tags),
//! listeners per (port, protocol), backend server groups, ACLs. Every create
//! takes an idempotency token in the `x-client-token` header. Errors are
//! `{code, message, request_id}` with the HTTP status; every response has an
//! `x-request-id` header. `/openapi.json` describes the API; `/admin/faults`
//! and `/admin/stats` drive fault injection and count calls.
//!
//! Every change that affects forwarding is handed, in order, to the
//! [`ForwardingSink`] given at start; with [`CloudConfig::state_file`] every
//! acknowledged change is on disk before the response is sent.

mod api;
mod error;
mod faults;
pub mod limits;
pub mod model;
mod openapi;
mod sink;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

pub use api::{ApiMetrics, ApiStats, RequestLabels};
pub use error::{ApiError, CloudError};
pub use faults::{FaultConfig, FaultRule, InvalidFaultRate};
pub use sink::{NullSink, RecordingSink, SinkEvent};
pub use state::{Inconsistency, MAX_PAGE_SIZE, Store};

use crate::forwarding::ForwardingSink;
use api::Inner;

/// Account limits of the cloud.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub balancers: usize,
    pub listeners_per_balancer: usize,
    pub groups_per_balancer: usize,
    pub servers_per_group: usize,
    pub acls: usize,
    pub entries_per_acl: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            balancers: 500,
            listeners_per_balancer: 50,
            groups_per_balancer: 50,
            servers_per_group: 500,
            acls: 500,
            entries_per_acl: 300,
        }
    }
}

/// How a cloud is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    /// Where balancer VIPs come from; the default lies on loopback.
    pub vip_range: IpNet,
    pub quotas: Quotas,
    /// Faults in force from the start (change them at `PUT /admin/faults`).
    pub faults: FaultConfig,
    /// Durable state: loaded at start, rewritten after every change.
    pub state_file: Option<PathBuf>,
    /// How long the data plane lets connections to removed backends finish.
    pub drain_timeout: Duration,
}

/// `127.240.0.0/16`: inside 127.0.0.0/8, so nothing leaves the machine.
pub fn default_vip_range() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(127, 240, 0, 0),
        16,
    ))
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            vip_range: default_vip_range(),
            quotas: Quotas::default(),
            faults: FaultConfig::default(),
            state_file: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Load the state file, if configured and present.
fn load_state(config: &CloudConfig) -> Result<Store, CloudError> {
    let Some(path) = &config.state_file else {
        return Ok(Store::new());
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::new()),
        Err(source) => {
            return Err(CloudError::ReadState {
                path: path.clone(),
                source,
            });
        }
    };
    let store: Store =
        serde_json::from_slice(&bytes).map_err(|source| CloudError::CorruptState {
            path: path.clone(),
            source,
        })?;
    store
        .check_consistency()
        .map_err(|source| CloudError::InconsistentState {
            path: path.clone(),
            source,
        })?;
    Ok(store)
}

/// Build the API router and its shared state without serving it; the
/// applier task feeding `sink` is spawned on the current runtime.
fn build(
    config: CloudConfig,
    sink: Arc<dyn ForwardingSink>,
) -> Result<(axum::Router, Arc<Inner>, tokio::task::JoinHandle<()>), CloudError> {
    config
        .faults
        .validate()
        .map_err(CloudError::InvalidFaults)?;
    let store = load_state(&config)?;
    let (tx, applier) = sink::spawn_applier(sink);
    let inner = Arc::new(Inner::new(config, store, tx));
    inner.apply_all();
    Ok((api::router(inner.clone()), inner, applier))
}

/// A running cloud API server.
#[derive(Debug)]
pub struct CloudServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    applier: tokio::task::JoinHandle<()>,
}

impl CloudServer {
    /// Load state (if any), hand every balancer to `sink`, and serve the API
    /// on `listen` (port 0 picks a free port; see [`CloudServer::url`]).
    ///
    /// # Errors
    /// [`CloudError`] when the address is taken, the state file cannot be
    /// read or is corrupt or inconsistent, or the faults are invalid.
    pub async fn start(
        config: CloudConfig,
        listen: SocketAddr,
        sink: Arc<dyn ForwardingSink>,
    ) -> Result<CloudServer, CloudError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| CloudError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CloudError::Bind {
            addr: listen,
            source,
        })?;
        let (router, inner, applier) = build(config, sink)?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(err) = result {
                tracing::error!(error = %err, "cloud api server stopped");
            }
        });
        tracing::info!(%addr, "mock cloud api listening");
        Ok(CloudServer {
            addr,
            inner,
            shutdown: Some(tx),
            server,
            applier,
        })
    }

    /// `http://ip:port`, the endpoint for [`crate::provider::SlbProviderConfig`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the whole cloud state, for tests and debugging.
    pub fn snapshot(&self) -> Store {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Register the API's metrics (`slb_api_requests_total{operation,code}`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "slb_api_requests",
            "Calls of the mock cloud API by operation and result code",
            self.inner.metrics.requests.clone(),
        );
    }

    /// Stop accepting requests, finish those in flight, and let the data
    /// plane catch up with every change made.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        // The router (and with it the applier's sender) is gone once the
        // server task ends; this drops the last sender so the applier drains.
        drop(self.inner);
        let _ = self.applier.await;
    }
}

/// The API as a router, for embedding in another server. The applier task
/// feeding `sink` runs on the current runtime until the router is dropped.
///
/// # Errors
/// As [`CloudServer::start`], except binding.
pub fn router(
    config: CloudConfig,
    sink: Arc<dyn ForwardingSink>,
) -> Result<axum::Router, CloudError> {
    build(config, sink).map(|(router, _, _)| router)
}
