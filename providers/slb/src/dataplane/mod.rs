//! The data plane: real TCP and UDP forwarding from each balancer's
//! `vip:port` to its backends, with active health checks, access control,
//! draining and metrics. [`DataPlane`] is the [`ForwardingSink`] the cloud
//! drives.
//!
//! # Forwarding
//! - **TCP**: accept, check the source against the listener's
//!   [`AccessControl`](crate::forwarding::AccessControl) (refused = reset at
//!   once), pick a backend, connect within
//!   [`DataPlaneConfig::connect_timeout`] (on failure the next backend is
//!   tried, up to [`DataPlaneConfig::connect_attempts`], and the failure is
//!   counted), then copy bytes both ways with
//!   [`DataPlaneConfig::buffer_size`] buffers, passing a half-close on.
//!   `TCP_NODELAY` is set on both sides.
//! - **UDP**: one session per client `ip:port`, with its own connected
//!   socket to the backend picked for it; replies leave from the VIP socket.
//!   Sessions end after [`DataPlaneConfig::udp_idle_timeout`] without
//!   traffic. The access control list is checked on every datagram.
//! - **Scheduling**: smooth weighted round robin (`Wrr`, as nginx) or
//!   weighted least connections (`Wlc`). Weight 0 never gets a new
//!   connection. With `sticky_timeout`, a client IP keeps its backend while
//!   it stays eligible and comes back within the timeout.
//!
//! # Health
//! - A backend starts **unknown** and takes the verdict of its first probe
//!   (the first probe runs as soon as the backend is added). After that a
//!   healthy backend turns unhealthy after `unhealthy_threshold` failed
//!   probes in a row, and an unhealthy one healthy after
//!   `healthy_threshold` good probes in a row.
//! - New connections go to **healthy** backends. When no backend (with
//!   weight > 0) is healthy the listener **fails open** and uses all of
//!   them, whatever their state. So a fresh balancer serves at once (all
//!   unknown), and a backend added to a serving listener gets traffic only
//!   after its first good probe.
//! - `Disabled` probes: every backend is healthy. A **UDP** listener with a
//!   `TcpConnect` probe runs no check (a TCP connect says nothing about a
//!   UDP port) and counts every backend healthy; an `Http` probe (e.g.
//!   `healthCheckNodePort` `/healthz`) is run for UDP listeners too.
//!
//! # Reconfiguration
//! [`ForwardingSink::apply`] is idempotent. A listener whose port and
//! transport stay keeps its socket and task; its backends, access list,
//! scheduler, stickiness and health check are swapped in place. Backends
//! that stay keep their connections and health state. Removed backends get
//! no new connections and are drained: open connections may finish until
//! `drain_timeout`, then are closed. A backend added back while draining
//! is revived as it was. A backend that stays but is weighted to 0 drains
//! too: no new connection, while its open TCP connections *and* UDP
//! sessions carry on until `drain_timeout`, then end; weighted up before
//! that, it keeps them, and after that it serves new ones again. A removed TCP listener stops accepting at once and
//! drains its connections the same way; a removed UDP listener closes its
//! socket and sessions at once (UDP has nothing to finish). A changed VIP
//! rebinds every listener. All new sockets are bound before anything
//! changes, so a bind error leaves the balancer as it was.

mod acl;
mod backend;
mod health;
mod listener;
mod metrics;
mod scheduler;
#[cfg(target_os = "linux")]
mod splice;
mod tcp;
mod udp;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

pub use backend::HealthState;

use backend::Backend;

use crate::forwarding::{
    BalancerForwarding, ForwardingError, ForwardingSink, ListenerConfig, Transport,
};
use listener::{ListenerKey, ListenerShared};
use metrics::Metrics;

/// Tunables of the data plane as a whole (per-listener settings come with
/// each [`ListenerConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// How long a connect to a backend may take before the next is tried.
    pub connect_timeout: Duration,
    /// How many backends a new TCP connection tries before giving up.
    pub connect_attempts: usize,
    /// A UDP session without traffic either way for this long is closed.
    pub udp_idle_timeout: Duration,
    /// The most UDP client sessions one listener keeps; datagrams of new
    /// clients beyond it are dropped (and counted) until sessions end.
    pub max_udp_sessions: usize,
    /// Passive health checking: backends that fail real traffic are taken
    /// out between active probes.
    pub outlier: OutlierDetection,
    /// How TCP connections move bytes.
    pub copy: CopyMode,
    /// Size of each of the two copy buffers (or pipes, for
    /// [`CopyMode::Splice`]) of a TCP connection.
    pub buffer_size: usize,
}

/// Passive health checking, as Envoy's and HAProxy's outlier detection: a
/// backend whose real connections fail `consecutive_failures` times in a row
/// (connect refused or timed out, reset by the backend, ICMP unreachable for
/// UDP) gets no new connection for `ejection`, then is tried again. Any
/// success resets the count. Active health checks keep running meanwhile,
/// and one that brings the backend back from unhealthy ends its ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    pub ejection: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
        }
    }
}

/// How a TCP connection's bytes are moved between client and backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// `splice(2)` through a pipe per direction: the payload stays in the
    /// kernel. Linux only; elsewhere the same as `Buffered`.
    Splice,
    /// Read into a user-space buffer and write it out.
    Buffered,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            udp_idle_timeout: Duration::from_secs(30),
            max_udp_sessions: 16_384,
            outlier: OutlierDetection::default(),
            copy: CopyMode::Splice,
            buffer_size: 256 * 1024,
        }
    }
}

/// What a balancer forwards right now (for tests, the demo and debugging).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalancerSnapshot {
    pub balancer_id: String,
    pub vip: IpAddr,
    /// Ordered by port, then transport.
    pub listeners: Vec<ListenerSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerSnapshot {
    pub port: u16,
    pub transport: Transport,
    /// The bound socket address (`vip:port`).
    pub local_addr: SocketAddr,
    /// Configured backends in config order, then draining ones.
    pub backends: Vec<BackendSnapshot>,
    /// Open UDP sessions (0 for TCP).
    pub udp_sessions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSnapshot {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: HealthState,
    /// Removed from the config; open connections are finishing.
    pub draining: bool,
    /// Open TCP connections or UDP sessions.
    pub active_connections: u64,
    /// Taken out by passive health checking for now (real connections or
    /// UDP sessions failed in a row); back after the cool-down.
    pub ejected: bool,
}

/// The forwarding data plane. Cheap to clone (all clones share one state);
/// when the last clone is dropped every listener and connection ends.
#[derive(Debug, Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Arc<DataPlaneConfig>,
    metrics: Metrics,
    balancers: Mutex<HashMap<String, Balancer>>,
    root: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

#[derive(Debug)]
struct Balancer {
    vip: IpAddr,
    listeners: BTreeMap<ListenerKey, Arc<ListenerShared>>,
}

impl DataPlane {
    pub fn new(config: DataPlaneConfig) -> DataPlane {
        DataPlane {
            inner: Arc::new(Inner {
                settings: Arc::new(config),
                metrics: Metrics::default(),
                balancers: Mutex::new(HashMap::new()),
                root: CancellationToken::new(),
            }),
        }
    }

    /// Register the data plane's metrics (`slb_dataplane_*`) in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// What `balancer_id` forwards right now, or `None` if it is unknown.
    pub fn snapshot(&self, balancer_id: &str) -> Option<BalancerSnapshot> {
        let balancers = self.balancers();
        let b = balancers.get(balancer_id)?;
        Some(BalancerSnapshot {
            balancer_id: balancer_id.to_owned(),
            vip: b.vip,
            listeners: b.listeners.values().map(|l| l.snapshot()).collect(),
        })
    }

    /// Every balancer the data plane forwards for, ordered by id.
    pub fn all_snapshots(&self) -> Vec<BalancerSnapshot> {
        let mut ids: Vec<String> = self.balancers().keys().cloned().collect();
        ids.sort();
        ids.iter().filter_map(|id| self.snapshot(id)).collect()
    }

    fn balancers(&self) -> MutexGuard<'_, HashMap<String, Balancer>> {
        self.inner
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Make `desired` what runs; returns the backends taken out of new
    /// traffic, for [`settle`].
    fn converge(&self, desired: BalancerForwarding) -> Result<Vec<Arc<Backend>>, ForwardingError> {
        let mut balancers = self.balancers();
        let current = balancers.get(&desired.balancer_id);
        let plan = plan(
            current.map(|b| {
                (
                    b.vip,
                    b.listeners
                        .iter()
                        .map(|(k, l)| (*k, l.config()))
                        .collect::<BTreeMap<_, _>>(),
                )
            }),
            &desired,
        );
        if plan.is_noop() && current.is_some() {
            return Ok(Vec::new());
        }

        // Bind everything new first: an error leaves the balancer untouched.
        let mut bound = Vec::with_capacity(plan.add.len());
        for config in plan.add {
            let socket = Bound::bind(SocketAddr::new(desired.vip, config.port), config.transport)?;
            bound.push((config, socket));
        }

        let balancer = balancers
            .entry(desired.balancer_id.clone())
            .or_insert_with(|| Balancer {
                vip: desired.vip,
                listeners: BTreeMap::new(),
            });
        balancer.vip = desired.vip;
        let mut taken_out = Vec::new();
        for key in plan.remove {
            if let Some(l) = balancer.listeners.remove(&key) {
                let _e = l.span.enter();
                info!("listener removed");
                taken_out.extend(l.shutdown());
            }
        }
        for config in plan.update {
            if let Some(l) = balancer.listeners.get(&ListenerKey::of(&config)) {
                let _e = l.span.enter();
                info!("listener reconfigured");
                taken_out.extend(l.reconfigure(config));
            }
        }
        for (config, socket) in bound {
            let key = ListenerKey::of(&config);
            let span = info_span!(
                "listener",
                balancer = %desired.balancer_id,
                listener = %key.label(),
                vip = %desired.vip,
            );
            let shared = {
                let _e = span.enter();
                info!(addr = %socket.local_addr, "listener added");
                ListenerShared::start(
                    &desired.balancer_id,
                    config,
                    socket.local_addr,
                    Arc::clone(&self.inner.settings),
                    self.inner.metrics.clone(),
                    self.inner.root.child_token(),
                    span.clone(),
                )
            };
            match socket.socket {
                Socket::Tcp(l) => {
                    tokio::spawn(tcp::serve(Arc::clone(&shared), l).instrument(span));
                }
                Socket::Udp(s) => {
                    tokio::spawn(udp::serve(Arc::clone(&shared), Arc::new(s)).instrument(span));
                }
            }
            balancer.listeners.insert(key, shared);
        }
        Ok(taken_out)
    }

    /// How long a change waits for decisions under way: a connect ends
    /// within the connect timeout.
    fn settle_limit(&self) -> Duration {
        self.inner.settings.connect_timeout + Duration::from_millis(100)
    }
}

/// Wait until no connect or datagram decided before a change is still on
/// its way to a backend the change took out (at most `limit` each), so
/// that once `apply` returns nothing reaches them any more.
async fn settle(taken_out: &[Arc<Backend>], limit: Duration) {
    for b in taken_out {
        if !b.settle(limit).await {
            debug!(backend = %b.addr, "forwarding under way to a backend taken out did not end in time");
        }
    }
}

#[async_trait]
impl ForwardingSink for DataPlane {
    async fn apply(&self, config: BalancerForwarding) -> Result<(), ForwardingError> {
        // Binding is synchronous (std sockets handed to tokio), so the whole
        // convergence runs under one lock without awaiting.
        let taken_out = self.converge(config)?;
        settle(&taken_out, self.settle_limit()).await;
        Ok(())
    }

    async fn remove(&self, balancer_id: &str) {
        let removed = self.balancers().remove(balancer_id);
        let mut taken_out = Vec::new();
        if let Some(b) = removed {
            for l in b.listeners.values() {
                let _e = l.span.enter();
                info!("listener removed with its balancer");
                taken_out.extend(l.shutdown());
            }
        }
        settle(&taken_out, self.settle_limit()).await;
    }
}

/// How one balancer's listeners change (no I/O).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Sockets to bind.
    add: Vec<ListenerConfig>,
    /// Listeners whose socket stays but whose settings change.
    update: Vec<ListenerConfig>,
    /// Listeners to close and drain.
    remove: Vec<ListenerKey>,
}

impl Plan {
    fn is_noop(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// Compare what runs (`current`: VIP and listener configs) with `desired`.
/// A changed VIP replaces every listener. Of two listeners with the same
/// port and transport the first wins.
fn plan(
    current: Option<(IpAddr, BTreeMap<ListenerKey, ListenerConfig>)>,
    desired: &BalancerForwarding,
) -> Plan {
    let mut wanted: BTreeMap<ListenerKey, &ListenerConfig> = BTreeMap::new();
    for l in &desired.listeners {
        wanted.entry(ListenerKey::of(l)).or_insert(l);
    }
    let running = match current {
        Some((vip, running)) if vip == desired.vip => running,
        Some((_, running)) => {
            return Plan {
                add: wanted.into_values().cloned().collect(),
                update: Vec::new(),
                remove: running.into_keys().collect(),
            };
        }
        None => BTreeMap::new(),
    };
    let mut plan = Plan::default();
    for (key, want) in &wanted {
        match running.get(key) {
            None => plan.add.push((*want).clone()),
            Some(have) if have != *want => plan.update.push((*want).clone()),
            Some(_) => {}
        }
    }
    plan.remove = running
        .into_keys()
        .filter(|k| !wanted.contains_key(k))
        .collect();
    plan
}

#[derive(Debug)]
enum Socket {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}

#[derive(Debug)]
struct Bound {
    socket: Socket,
    local_addr: SocketAddr,
}

impl Bound {
    fn bind(addr: SocketAddr, transport: Transport) -> Result<Bound, ForwardingError> {
        let err = |source| ForwardingError::Bind {
            addr,
            transport,
            source,
        };
        let socket = match transport {
            Transport::Tcp => {
                let l = std::net::TcpListener::bind(addr).map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                Socket::Tcp(tokio::net::TcpListener::from_std(l).map_err(err)?)
            }
            Transport::Udp => {
                let s = std::net::UdpSocket::bind(addr).map_err(err)?;
                s.set_nonblocking(true).map_err(err)?;
                Socket::Udp(tokio::net::UdpSocket::from_std(s).map_err(err)?)
            }
        };
        let local_addr = match &socket {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
        .map_err(err)?;
        Ok(Bound { socket, local_addr })
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
