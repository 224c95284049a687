//! The Service controller's wiring: the Service watch feeding
//! kube-runtime's Controller, the node watcher, the orphan collector, and
//! the backlog gauge, all stopped together. What one reconcile does lives
//! in `reconcile.rs` (the executor) and `outcome.rs` (its decisions).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::Config as RuntimeConfig;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::watcher::{self, watcher};
use portico_provider::{DynProvider, ProviderError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span};

use crate::backlog::Backlog;
use crate::config::ControllerConfig;
use crate::context::Context;
use crate::k8s::{
    Api, Client, LAST_APPLIED_ANNOTATION, Node, ObjectRef, Service, Store, WatchStreamExt,
    reflector,
};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::node_watcher::{self, NodeWatcher};
use crate::plan;
use crate::reconcile::{error_policy, reconcile};

/// Why a reconcile could not finish; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API call failed: {context}")]
    Kube {
        context: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    /// The provider failed; retried no sooner than the error's floor.
    #[error("the provider failed")]
    Provider(#[source] ProviderError),
    #[error("the node watch ended before listing nodes")]
    NodesUnavailable,
}

impl Error {
    pub(crate) fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube {
            context,
            source: Box::new(source),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kubernetes",
            Self::Provider(e) => e.metric_label(),
            Self::NodesUnavailable => "nodes_unavailable",
        }
    }

    /// The least time before a retry: what the cloud asked for (throttling),
    /// nothing for Kubernetes errors.
    pub fn retry_floor(&self) -> Duration {
        match self {
            Self::Provider(e) => e.retry_floor(),
            Self::Kube { .. } | Self::NodesUnavailable => Duration::ZERO,
        }
    }
}

/// Keep only what the controller reads: managedFields and kubectl's copy of
/// the object are the bulk of a Service and never used.
fn trim_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    if let Some(annotations) = svc.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Everything the controller needs to run.
pub struct ControllerParts {
    pub client: Client,
    pub provider: Arc<dyn DynProvider>,
    pub config: ControllerConfig,
    pub metrics: Arc<Metrics>,
    /// Event reporter instance (the replica's identity).
    pub identity: String,
}

impl std::fmt::Debug for ControllerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerParts")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Run the Service controller until `shutdown`; in-flight reconciles finish
/// first. Dropping the future instead stops everything at once, background
/// tasks included (what a deposed leader does).
pub async fn run_controller(parts: ControllerParts, shutdown: CancellationToken) {
    let ControllerParts {
        client,
        provider,
        config,
        metrics,
        identity,
    } = parts;
    let services: Api<Service> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let backlog = Arc::new(Backlog::new(metrics.queued.clone()));
    let service_stream = watcher(services, watcher::Config::default())
        .default_backoff()
        .modify(trim_service)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            |svc: &Service| Some(plan::sync_fingerprint(svc)),
            PredicateConfig::default(),
        )
        .inspect_ok({
            let backlog = backlog.clone();
            move |svc| backlog.queued(ObjectRef::from_obj(svc))
        });

    let (targets_tx, targets_rx) = watch::channel(None);
    let locks = Arc::new(KeyLocks::default());
    let (trigger_tx, trigger_rx) = mpsc::unbounded();

    let ctx = Arc::new(Context {
        client: client.clone(),
        provider: provider.clone(),
        config: config.clone(),
        targets: targets_rx,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "portico".into(),
                instance: Some(identity),
            },
        ),
        metrics: metrics.clone(),
        backlog: backlog.clone(),
        memory: Mutex::default(),
        locks: locks.clone(),
    });

    // Dropping the controller (a deposed leader) must stop these too.
    let node_task = AbortOnDropHandle::new(tokio::spawn(
        node_watcher::run(
            NodeWatcher {
                nodes,
                services: reader.clone(),
                config: config.clone(),
                provider: provider.clone(),
                targets_tx,
                trigger_tx,
                metrics: metrics.clone(),
            },
            shutdown.clone(),
        )
        .instrument(info_span!("nodes")),
    ));
    let gc_task = config.gc.then(|| {
        AbortOnDropHandle::new(tokio::spawn(
            crate::gc::run_gc(
                reader.clone(),
                provider.clone(),
                config.clone(),
                metrics.clone(),
                locks.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("orphan-gc")),
        ))
    });
    if !config.gc {
        info!("orphan garbage collection is off (--gc=false)");
    }

    let backlog_task = AbortOnDropHandle::new(tokio::spawn(forget_deleted_periodically(
        backlog.clone(),
        reader.clone(),
        shutdown.clone(),
    )));
    let node_triggers = trigger_rx.inspect(move |svc| backlog.queued(svc.clone()));

    let runtime_config = RuntimeConfig::default().concurrency(config.workers);
    kube::runtime::Controller::for_stream(service_stream, reader)
        .with_config(runtime_config)
        .reconcile_on(node_triggers)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                debug!(error = %err, "controller event");
            }
        })
        .await;
    shutdown.cancel();
    let _ = node_task.await;
    if let Some(gc_task) = gc_task {
        let _ = gc_task.await;
    }
    let _ = backlog_task.await;
    info!("controller stopped");
}

/// Services deleted while waiting never reach a worker; drop them from the
/// backlog now and then so the gauge does not drift.
async fn forget_deleted_periodically(
    backlog: Arc<Backlog>,
    services: Store<Service>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => backlog.forget_deleted(&services),
        }
    }
}
