//! An SLB-style mock cloud and the portico provider that drives it.
//!
//! - [`cloud`]: the cloud's HTTP/JSON API (balancers, listeners, backends,
//!   ACLs, tags, quotas, faults), embeddable or standalone, with durable state.
//! - [`dataplane`]: real TCP/UDP forwarding from each balancer's VIP to
//!   healthy backends, with active health checks.
//! - [`forwarding`]: the seam between the two.
//! - [`provider`]: the `LoadBalancerProvider` that talks to the cloud over HTTP.
//! - [`embedded`]: cloud and data plane started together in one process.

pub mod cloud;
pub mod dataplane;
pub mod embedded;
pub mod forwarding;
pub mod provider;
