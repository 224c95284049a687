//! Orphan garbage collection: balancers this cluster owns whose Service no
//! longer exists (deleted while the controller was down, finalizer removed
//! by hand, or re-created under a new UID) are deleted.

use std::sync::Arc;
use std::time::Duration;

use portico_provider::{LoadBalancerKey, LoadBalancerProvider};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ControllerConfig;
use crate::k8s::{ObjectRef, ResourceExt, Service, Store};
use crate::metrics::Metrics;
use crate::plan;

/// Whether `key`'s balancer has no Service that still wants it.
pub fn is_orphan(
    key: &LoadBalancerKey,
    services: &Store<Service>,
    config: &ControllerConfig,
) -> bool {
    if key.cluster != config.cluster {
        return false;
    }
    let Some(svc) = services.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
        return true;
    };
    if svc.uid().as_deref() != Some(key.uid.as_str()) {
        return true;
    }
    // A Service still holding our finalizer is the reconciler's to clean up.
    !plan::is_ours(&svc, config) && !plan::has_finalizer(&svc)
}

/// One pass: list what we own, delete what nobody wants.
pub async fn collect_once(
    services: &Store<Service>,
    provider: &dyn LoadBalancerProvider,
    config: &ControllerConfig,
    metrics: &Metrics,
) -> usize {
    let owned = match provider.list_owned().await {
        Ok(owned) => owned,
        Err(err) => {
            warn!(error = %err, "listing owned balancers failed");
            return 0;
        }
    };
    debug!(owned = owned.len(), "looking for orphaned balancers");
    let mut deleted = 0;
    for key in owned.iter().filter(|k| is_orphan(k, services, config)) {
        match provider.delete(key).await {
            Ok(()) => {
                info!(service = %key, uid = %key.uid, "deleted orphaned balancer");
                metrics.orphans_deleted.inc();
                deleted += 1;
            }
            Err(err) => warn!(service = %key, error = %err, "deleting orphaned balancer failed"),
        }
    }
    deleted
}

/// Collect now (once the Service cache is complete) and then periodically.
pub async fn run_gc(
    services: Store<Service>,
    provider: Arc<dyn LoadBalancerProvider>,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Re-poll with a timeout: kube-runtime's readiness future wakes only its
    // latest waiter, and the Controller waits on the same store.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = tokio::time::timeout(Duration::from_millis(500), services.wait_until_ready()) => match ready {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => continue,
            },
        }
    }
    loop {
        collect_once(&services, provider.as_ref(), &config, &metrics).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.gc_interval) => {}
        }
    }
}
