//! Bare-metal load balancing for portico: the layer-2 speaker.
//!
//! Every node runs a speaker (a DaemonSet on the host network). For each
//! VIP that the controller wrote into a Service's `status.loadBalancer`,
//! exactly one speaker announces it: answers ARP (IPv4) or neighbour
//! solicitations (IPv6) for it with its node's MAC address, and sends
//! gratuitous ARP / unsolicited neighbour advertisements when it takes the
//! VIP over, so clients and routers move at once. kube-proxy on that node
//! then forwards the traffic as for any other node.
//!
//! - [`ranking`]: the pure choice of the announcing node per VIP.
//! - [`membership`]: which speakers are alive (SWIM gossip, Kubernetes as
//!   the fallback).
//! - [`announce`]: the raw ARP/NDP sockets.
//! - [`speaker`]: the watches, wiring the three together, and what it
//!   publishes (Events, the `VipAnnouncement` resource).
//!
//! The IP pools and the allocator the controller uses live beside these,
//! apart from every socket (see the crate README).

use std::net::SocketAddr;

pub mod announce;
pub mod membership;
pub mod ranking;
pub mod speaker;

/// What can stop a speaker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface to announce on does not exist or has no MAC address.
    #[error("interface {name:?}: {problem}")]
    Interface {
        /// The interface name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A raw socket could not be opened (needs CAP_NET_RAW).
    #[error(
        "cannot open the {what} socket on {interface} (the speaker needs CAP_NET_RAW and the host network)"
    )]
    RawSocket {
        /// ARP or NDP.
        what: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gossip socket could not be bound.
    #[error("cannot bind the gossip socket on {addr}")]
    GossipBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The API server could not be reached or refused a request.
    #[error("kubernetes API")]
    Kube(#[source] Box<kube::Error>),
    /// The node this speaker runs on is not usable.
    #[error("node {node:?}: {problem}")]
    Node {
        /// The node name.
        node: String,
        /// What is wrong.
        problem: String,
    },
    /// The health/metrics server could not be bound.
    #[error("cannot bind the health server on {addr}")]
    HealthBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Error::Kube(Box::new(err))
    }
}

// The controller side: IP pools and the allocator (apart from every socket).
pub mod addresses;
pub mod allocator;
pub mod pool;
pub mod pools;
pub mod provider;
pub mod request;

pub use provider::{ArpProvider, ArpProviderConfig};
