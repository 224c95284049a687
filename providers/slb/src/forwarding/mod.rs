//! The seam between the mock cloud's control plane (`cloud`) and its data
//! plane (`dataplane`): the cloud tells a [`ForwardingSink`] what each
//! balancer should forward, the data plane makes it so with real sockets.
//! Tests of the cloud API use a recording sink; the embedded and standalone
//! clouds use the real data plane. `projection` computes a balancer's
//! forwarding from the cloud's state.

pub(crate) mod projection;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Transport of a listener. The mock cloud forwards TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

/// One backend (a node's `address:nodePort`) with its scheduling weight (0..=100; 0 = no new traffic).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// How a listener probes its backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeKind {
    /// TCP connect to the backend's own address and port.
    TcpConnect,
    /// HTTP GET `path` on `port` of the backend's address; 200 is healthy.
    Http { port: u16, path: String },
    /// No active check: every backend counts as healthy.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheckConfig {
    pub probe: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Who may connect to a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessControl {
    AllowAll,
    /// Only sources inside these ranges.
    AllowOnly(Vec<IpNet>),
    /// Everyone except sources inside these ranges.
    Deny(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Weighted round robin.
    Wrr,
    /// Weighted least connections.
    Wlc,
}

/// What one listener (VIP:port/transport) forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListenerConfig {
    pub port: u16,
    pub transport: Transport,
    pub backends: Vec<BackendConfig>,
    pub health_check: HealthCheckConfig,
    pub access: AccessControl,
    pub scheduler: Scheduler,
    /// How long established connections to a removed backend may finish.
    pub drain_timeout: Duration,
    /// Client-IP stickiness (sessionAffinity: ClientIP), if any.
    pub sticky_timeout: Option<Duration>,
}

/// Everything one balancer forwards: its VIP and listeners.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BalancerForwarding {
    pub balancer_id: String,
    pub vip: IpAddr,
    pub listeners: Vec<ListenerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error("cannot listen on {addr} ({transport:?})")]
    Bind {
        addr: SocketAddr,
        transport: Transport,
        #[source]
        source: std::io::Error,
    },
}

/// Receives the desired forwarding of each balancer. Implementations must be
/// idempotent (the cloud re-sends the whole config of a balancer on every
/// change and at start-up) and must not drop established connections to
/// backends that stay.
#[async_trait]
pub trait ForwardingSink: Send + Sync + 'static {
    /// Converge the forwarding of `config.balancer_id` to `config`.
    async fn apply(&self, config: BalancerForwarding) -> Result<(), ForwardingError>;
    /// Stop forwarding for a balancer (listeners closed, connections drained).
    async fn remove(&self, balancer_id: &str);
}
