//! The load-balancer provider contract of portico.
//!
//! The controller turns a Kubernetes Service into a [`LoadBalancerSpec`] and
//! hands it to a [`LoadBalancerProvider`]; the provider converges its cloud
//! (or, on bare metal, its announcer) to that spec and answers with a
//! [`LoadBalancerStatus`]. Nothing here knows about Kubernetes types: the
//! spec carries exactly what a provider needs.
//!
//! With the `testing` feature this crate also ships the [`conformance`] suite
//! every provider's tests run, and an in-memory [`testing::RecordingProvider`]
//! for controller tests.

mod error;
mod identity;
mod names;
mod provider;
mod spec;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::ProviderError;
pub use identity::{cluster_tags, tag};
pub use names::{owned_name, short_hash};
pub use provider::{
    Declined, DynProvider, LoadBalancerProvider, Notice, Prepared, PreparedSpec, ServiceAnnotations,
};
pub use spec::{
    Annotations, ClusterName, HealthCheck, IngressStatus, IpFamily, IpMode, Listener,
    LoadBalancerKey, LoadBalancerSpec, LoadBalancerStatus, PortStatus, Protocol, SessionAffinity,
    Target, Targets, TrafficPolicy,
};
