//! Running the controller as a replica: reach the API server, serve health
//! and metrics, take part in leader election, and run the Service
//! controller only while leading.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use portico_provider::DynProvider;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::config::ControllerConfig;
use crate::controller::{ControllerParts, run_controller};
use crate::k8s::Client;
use crate::leader::{LeaseConfig, run_election};
use crate::metrics::Metrics;
use crate::server::{self, Health};

/// How this replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub config: ControllerConfig,
    /// `None` runs without leader election (a single replica).
    pub lease: Option<LeaseConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: Option<SocketAddr>,
    pub identity: String,
}

/// Work a provider needs done beside the Service controller while this
/// replica leads, and only then (the arp provider's IPPool sync: loading
/// pools and adopting statuses before any call, writing pool statuses). It
/// is started with each term and stopped by its token once the controller
/// has finished, or dropped with the controller when the lease is lost.
pub type LeaderTask = Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// Run until `shutdown` is cancelled (SIGTERM in `main`): in-flight
/// reconciles finish, then the lease is released.
pub async fn run_replica(
    client: Client,
    provider: Arc<dyn DynProvider>,
    options: ReplicaOptions,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_replica_with(client, provider, options, registry, shutdown, None).await
}

/// The controller, and the provider's leader task beside it: the task stops
/// only after the controller (graceful shutdown lets in-flight reconciles
/// still call the provider).
async fn lead(parts: ControllerParts, stop: CancellationToken, task: Option<&LeaderTask>) {
    let Some(task) = task else {
        return run_controller(parts, stop).await;
    };
    let task_stop = CancellationToken::new();
    let side = task(task_stop.clone());
    let controller = async {
        run_controller(parts, stop).await;
        task_stop.cancel();
    };
    tokio::join!(controller, side);
}

/// [`run_replica`] with a provider's [`LeaderTask`].
pub async fn run_replica_with(
    client: Client,
    provider: Arc<dyn DynProvider>,
    options: ReplicaOptions,
    mut registry: Registry,
    shutdown: CancellationToken,
    leader_task: Option<LeaderTask>,
) -> Result<(), Error> {
    if let Some(lease) = &options.lease {
        lease.validate().map_err(|source| Error::Lease { source })?;
    }
    let metrics = Metrics::register(&mut registry);
    registry.sub_registry_with_prefix("portico").register(
        "cluster",
        "This cluster's identity, as written into every balancer's ownership tags",
        prometheus_client::metrics::info::Info::new(vec![(
            "cluster".to_string(),
            options.config.cluster.as_str().to_string(),
        )]),
    );
    let health = Health::new(registry);
    let http_task = match options.http_addr {
        Some(addr) => {
            let listener = server::bind(addr).await?;
            info!(%addr, "serving /metrics, /healthz and /readyz");
            let (health, shutdown) = (health.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                if let Err(err) = server::serve(listener, health, shutdown).await {
                    warn!(error = %err, "health server stopped");
                }
            }))
        }
        None => None,
    };

    let version = client
        .apiserver_version()
        .await
        .map_err(|source| Error::ApiUnreachable {
            source: Box::new(source),
        })?;
    info!(kubernetes = %version.git_version, provider = provider.name(), workers = options.config.workers, "connected");
    health.set_ready(true);

    let parts = || ControllerParts {
        client: client.clone(),
        provider: provider.clone(),
        config: options.config.clone(),
        metrics: metrics.clone(),
        identity: options.identity.clone(),
    };

    match options.lease.clone() {
        None => {
            metrics.is_leader.set(1);
            lead(parts(), shutdown.clone(), leader_task.as_ref()).await;
            metrics.is_leader.set(0);
        }
        Some(lease) => {
            let (leading_tx, mut leading) = watch::channel(false);
            // The lease is released only once the controller has stopped, so
            // a standby never acts while this replica still finishes work.
            let election_stop = CancellationToken::new();
            let election = tokio::spawn(run_election(
                client.clone(),
                lease,
                leading_tx,
                election_stop.clone(),
            ));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
                }
                metrics.is_leader.set(1);
                let term = shutdown.child_token();
                let deposed = {
                    let mut leading = leading.clone();
                    async move {
                        let _ = leading.wait_for(|l| !*l).await;
                    }
                };
                tokio::select! {
                    // SIGTERM: in-flight reconciles finish, then it returns.
                    () = lead(parts(), term.clone(), leader_task.as_ref()) => {}
                    // Deposed: another replica may already act. Dropping the
                    // controller drops every in-flight reconcile and provider
                    // call at once (upstream exits the process).
                    () = deposed => {
                        term.cancel();
                        warn!("lost the lease: every reconcile stopped at once; standing by");
                    }
                }
                metrics.is_leader.set(0);
                if shutdown.is_cancelled() {
                    break;
                }
            }
            election_stop.cancel();
            let _ = election.await;
        }
    }
    if let Some(task) = http_task {
        let _ = task.await;
    }
    Ok(())
}
