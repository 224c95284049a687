//! portico: the load-balancer half of a Kubernetes cloud-controller-manager.
//!
//! Data flow: Service/Node watches → [`plan`] (pure) → provider
//! `ensure`/`delete` → Service status, Events and metrics. See
//! `docs/ARCHITECTURE.md`.

pub mod app;
pub mod backlog;
#[cfg(any(test, feature = "testing"))]
pub mod builders;
pub mod cli;
pub mod config;
pub mod context;
pub mod controller;
pub mod finalizer;
pub mod gc;
pub mod k8s;
pub mod keylock;
pub mod leader;
pub mod metrics;
pub mod node_watcher;
pub mod nodes;
pub mod outcome;
pub mod plan;
pub mod providers;
pub mod reconcile;
pub mod runtime;
pub mod server;
pub mod service_spec;
pub mod status;

use std::net::SocketAddr;

/// Errors that stop the process, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the Kubernetes API server; point --kubeconfig (or KUBECONFIG) at a cluster, or run `portico demo` to try portico without one"
    )]
    ApiUnreachable {
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "no Kubernetes configuration found (no --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster service account); point --kubeconfig at a cluster, or run `portico demo` to try portico without one"
    )]
    NoKubeconfig {
        #[source]
        source: Box<kube::config::InferConfigError>,
    },
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },
    #[error("cannot build a Kubernetes client")]
    Client {
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid leader election settings")]
    Lease {
        #[source]
        source: leader::LeaseConfigError,
    },
    #[error("provider setup failed: {0}")]
    Provider(String),
    #[error("cannot start the embedded SLB cloud")]
    EmbeddedSlb {
        #[source]
        source: portico_slb::cloud::CloudError,
    },
    #[cfg(feature = "demo")]
    #[error(transparent)]
    Demo(#[from] portico_demo::Error),
    #[error("the speaker failed")]
    Speaker(#[source] portico_arp::Error),
}
