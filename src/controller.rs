//! The Service controller: watches, the reconcile executor that carries out
//! a [`Plan`], and the node-change fan-out.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::runtime::controller::{Action, Config as RuntimeConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::watcher::{self, watcher};
use portico_provider::{DynProvider, LoadBalancerSpec, ProviderError};
use rand::Rng;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backlog::Backlog;
use crate::config::ControllerConfig;
use crate::k8s::{
    Api, Client, LAST_APPLIED_ANNOTATION, LB_FINALIZER, Node, ObjectRef, Patch, PatchParams,
    ResourceExt, Service, Store, Timestamp, WatchStreamExt, reflector,
};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::node_watcher::{self, NodeWatcher};
use crate::nodes::TargetSnapshot;
use crate::plan::{
    self, CONFLICT_REASON, CleanupPlan, Conflict, EnsurePlan, Ownership, Plan, Rejection,
};
use crate::status::{self, Readiness, StatusUpdate};

/// Why a reconcile could not finish; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API call failed: {context}")]
    Kube {
        context: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cleaning up the balancer failed")]
    Cleanup(#[source] ProviderError),
    #[error("the node watch ended before listing nodes")]
    NodesUnavailable,
}

impl Error {
    fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube {
            context,
            source: Box::new(source),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kubernetes",
            Self::Cleanup(e) => e.metric_label(),
            Self::NodesUnavailable => "nodes_unavailable",
        }
    }
}

/// What the executor remembers between reconciles of a Service.
#[derive(Debug, Default)]
struct Memory {
    /// Failed attempts in a row, for exponential backoff.
    failures: HashMap<ObjectRef<Service>, u32>,
    /// Hashes of the last spec ensured (whole, and without targets), so a
    /// resync of an unchanged Service emits no events.
    ensured: HashMap<ObjectRef<Service>, (u64, u64)>,
}

/// Shared state of one controller run.
pub struct Context {
    client: Client,
    provider: Arc<dyn DynProvider>,
    config: ControllerConfig,
    targets: watch::Receiver<Option<TargetSnapshot>>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    backlog: Arc<Backlog>,
    memory: Mutex<Memory>,
    /// Shared with the orphan collector: one provider caller per Service.
    locks: Arc<KeyLocks>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl Context {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exponential backoff with full jitter, at least `floor`.
    fn backoff(&self, obj: &ObjectRef<Service>, floor: Duration) -> Duration {
        let failures = {
            let mut memory = self.memory();
            let n = memory.failures.entry(obj.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << failures.min(16).saturating_sub(1));
        let capped = exp.min(self.config.backoff_max);
        let jittered = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(floor)
    }

    /// The periodic re-ensure, spread by ±10% so Services created together
    /// are not all re-ensured in the same instant forever.
    fn resync_after(&self) -> Duration {
        spread(self.config.resync, rand::rng().random_range(0.0..=1.0))
    }

    fn succeeded(&self, obj: &ObjectRef<Service>) {
        self.memory().failures.remove(obj);
    }

    fn forget(&self, obj: &ObjectRef<Service>) {
        let mut memory = self.memory();
        memory.failures.remove(obj);
        memory.ensured.remove(obj);
    }

    async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            // The API server refuses (and so loses) an Event whose note is
            // over 1 KiB; provider errors can be longer. The log keeps it all.
            note: Some(truncate_note(note)),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(error = %err, reason, "could not publish event");
        }
    }

    /// Run a provider call with a span, timing and a metric.
    async fn provider_call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let start = Instant::now();
        let span = info_span!("provider", provider = self.provider.name(), op);
        let result = fut.instrument(span).await;
        self.metrics.provider_call(
            self.provider.name(),
            op,
            result.as_ref().map(|_| ()).map_err(|e| e.metric_label()),
            start,
        );
        result
    }

    /// Write `update` unless the Service shows it already; whether it wrote.
    async fn patch_status(
        &self,
        api: &Api<Service>,
        svc: &Service,
        update: StatusUpdate,
    ) -> Result<bool, Error> {
        let Some(patch) = status::status_patch(svc, &update, Timestamp::now()) else {
            return Ok(false);
        };
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::kube("patching Service status"))?;
        Ok(true)
    }

    /// Wait for the first node list, then hand out the eligible targets.
    async fn eligible_targets(&self) -> Result<TargetSnapshot, Error> {
        let mut rx = self.targets.clone();
        let ready = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NodesUnavailable)?;
        ready.clone().ok_or(Error::NodesUnavailable)
    }
}

/// `period` moved by up to ±10%: `unit` in [0, 1] picks where.
fn spread(period: Duration, unit: f64) -> Duration {
    period.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// The most an Event's note may hold (events.k8s.io validation).
const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to [`EVENT_NOTE_LIMIT`] bytes on a character boundary, with
/// an ellipsis when cut.
fn truncate_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    const ELLIPSIS: &str = "…";
    let mut end = EVENT_NOTE_LIMIT - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &note[..end])
}

/// Hashes of `spec` whole and without its targets; `targets` is the
/// fingerprint of the snapshot the spec was built from, so no reconcile
/// walks the node list to hash it.
fn spec_hashes(spec: &LoadBalancerSpec, targets: u64) -> (u64, u64) {
    // Every field but the targets, named so a new field is not forgotten.
    let LoadBalancerSpec {
        key,
        listeners,
        targets: _,
        health_check,
        source_ranges,
        requested_ips,
        ip_families,
        traffic_policy,
        session_affinity,
        annotations,
    } = spec;
    let mut h = DefaultHasher::new();
    (
        key,
        listeners,
        health_check,
        source_ranges,
        requested_ips,
        ip_families,
        traffic_policy,
        session_affinity,
        annotations,
    )
        .hash(&mut h);
    let rest = h.finish();
    let mut h = DefaultHasher::new();
    (rest, targets).hash(&mut h);
    (h.finish(), rest)
}

/// Reconcile one Service: plan, then carry the plan out.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()));
    async move {
        ctx.backlog.started(&ObjectRef::from_obj(svc.as_ref()));
        let _timer = ctx.metrics.reconcile_timer();
        // kube-runtime runs one reconcile per Service at a time; the orphan
        // collector takes the same lock.
        let _guard = ctx
            .locks
            .lock(&svc.namespace().unwrap_or_default(), &svc.name_any())
            .await;
        let targets = ctx.eligible_targets().await?;
        let plan = plan::plan(&svc, &targets.targets, &ctx.config, ctx.provider.as_ref());
        let result = match plan {
            Plan::Ignore(reason) => {
                debug!(?reason, "not ours");
                ctx.metrics.reconciled("ignored");
                Ok(Action::await_change())
            }
            Plan::Reject(rejection) => reject(&svc, &ctx, rejection).await,
            Plan::Ensure(ensure_plan) => {
                ensure(&svc, &ctx, *ensure_plan, targets.fingerprint).await
            }
            Plan::Cleanup(cleanup_plan) => cleanup(&svc, &ctx, cleanup_plan).await,
            Plan::Conflict(conflict) => stand_back(&svc, &ctx, conflict).await,
        };
        if let Err(err) = &result {
            ctx.metrics.reconciled("error");
            ctx.metrics.error(err.metric_label());
        }
        result
    }
    .instrument(span)
    .await
}

async fn reject(svc: &Service, ctx: &Context, rejection: Rejection) -> Result<Action, Error> {
    let message = rejection.message();
    warn!(field = %rejection.field, reason = %rejection.reason, "invalid Service; no cloud change made");
    ctx.event(
        svc,
        EventType::Warning,
        "SyncLoadBalancerFailed",
        format!("Error syncing load balancer: {message}"),
    )
    .await;
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    ctx.patch_status(
        &api,
        svc,
        StatusUpdate {
            ingress: None,
            condition: Some(Some(Readiness::invalid(message, rejection.unsupported))),
        },
    )
    .await?;
    ctx.metrics.reconciled("invalid");
    ctx.metrics.error(if rejection.unsupported {
        "unsupported"
    } else {
        "invalid_spec"
    });
    // Nothing to retry until the Service (or the node set) changes.
    Ok(Action::await_change())
}

async fn ensure(
    svc: &Service,
    ctx: &Context,
    plan: EnsurePlan,
    targets_fingerprint: u64,
) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(svc);
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    // The status write below is guarded by the resourceVersion of the object
    // it is built from: after adding the finalizer, that is the patched one.
    let finalized;
    let svc = if plan.add_finalizer {
        finalized = add_finalizer(&api, svc).await?;
        &finalized
    } else {
        svc
    };
    let hashes = spec_hashes(plan.spec(), targets_fingerprint);
    let previous = ctx.memory().ensured.get(&obj).copied();
    let quiet = previous == Some(hashes);
    let only_targets_changed =
        previous.is_some_and(|(full, rest)| full != hashes.0 && rest == hashes.1);
    if !quiet && !only_targets_changed {
        ctx.event(
            svc,
            EventType::Normal,
            "EnsuringLoadBalancer",
            "Ensuring load balancer".into(),
        )
        .await;
    }
    match ctx
        .provider_call("ensure", ctx.provider.ensure(&plan.prepared))
        .await
    {
        Ok(lb_status) => {
            ctx.succeeded(&obj);
            let readiness = if plan.no_eligible_nodes() {
                ctx.event(
                    svc,
                    EventType::Warning,
                    "UnAvailableLoadBalancer",
                    "There are no available nodes for LoadBalancer".into(),
                )
                .await;
                Readiness::no_eligible_nodes()
            } else {
                Readiness::ready()
            };
            let ingress = status::ingress_of(&lb_status);
            ctx.patch_status(
                &api,
                svc,
                StatusUpdate {
                    ingress: Some(ingress),
                    condition: Some(Some(readiness)),
                },
            )
            .await?;
            // Remembered only once the Service shows it: a reconcile that
            // failed before this point repeats its Events.
            ctx.memory().ensured.insert(obj, hashes);
            if only_targets_changed {
                let hosts = plan.spec().targets.len();
                ctx.event(
                    svc,
                    EventType::Normal,
                    "UpdatedLoadBalancer",
                    format!("Updated load balancer with new hosts ({hosts} eligible)"),
                )
                .await;
            } else if !quiet {
                ctx.event(
                    svc,
                    EventType::Normal,
                    "EnsuredLoadBalancer",
                    "Ensured load balancer".into(),
                )
                .await;
                for note in plan.prepared.unenforced() {
                    warn!(note, "accepted but not enforced");
                    ctx.event(svc, EventType::Warning, "UnenforcedField", note.clone())
                        .await;
                }
            }
            info!(
                targets = plan.spec().targets.len(),
                quiet, "load balancer ensured"
            );
            ctx.metrics.reconciled("ensured");
            Ok(Action::requeue(ctx.resync_after()))
        }
        Err(err) => {
            ctx.memory().ensured.remove(&obj);
            warn!(error = %err, kind = err.metric_label(), "ensuring the load balancer failed");
            ctx.event(
                svc,
                EventType::Warning,
                "SyncLoadBalancerFailed",
                format!("Error syncing load balancer: {err}"),
            )
            .await;
            ctx.patch_status(
                &api,
                svc,
                StatusUpdate {
                    ingress: None,
                    condition: Some(Some(Readiness::failed(&err))),
                },
            )
            .await?;
            ctx.metrics.reconciled("failed");
            ctx.metrics.error(err.metric_label());
            // Whatever the cloud said, try again: only the pure validation
            // waits for the Service to change.
            Ok(Action::requeue(ctx.backoff(&obj, err.retry_floor())))
        }
    }
}

/// Another controller serves this Service: build nothing, say so once.
async fn stand_back(svc: &Service, ctx: &Context, conflict: Conflict) -> Result<Action, Error> {
    warn!(message = %conflict.message, "another controller serves this Service; left alone");
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let update = StatusUpdate {
        ingress: None,
        condition: Some(Some(Readiness::conflict(conflict.message.clone()))),
    };
    // The condition doubles as the record that the Event was sent.
    if ctx.patch_status(&api, svc, update).await? {
        ctx.event(svc, EventType::Warning, CONFLICT_REASON, conflict.message)
            .await;
    }
    ctx.metrics.reconciled("conflict");
    Ok(Action::requeue(ctx.resync_after()))
}

async fn cleanup(svc: &Service, ctx: &Context, plan: CleanupPlan) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(svc);
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    if plan.ownership == Ownership::IfBalancerFound {
        match ctx.provider_call("get", ctx.provider.get(&plan.key)).await {
            Ok(Some(_)) => info!(
                "a balancer of this cluster exists for a Service portico does not claim; removing it"
            ),
            Ok(None) => {
                debug!("not portico's and no balancer of this cluster for it; left alone");
                ctx.metrics.reconciled("ignored");
                return Ok(Action::await_change());
            }
            Err(err) => {
                warn!(error = %err, "looking for this cluster's balancer failed");
                ctx.metrics.error(err.metric_label());
                return Ok(Action::requeue(ctx.backoff(&obj, err.retry_floor())));
            }
        }
    }
    // Past this point the Service is portico's (claimed, or its balancer found).
    ctx.event(
        svc,
        EventType::Normal,
        "DeletingLoadBalancer",
        "Deleting load balancer".into(),
    )
    .await;
    if let Err(err) = ctx
        .provider_call("delete", ctx.provider.delete(&plan.key))
        .await
    {
        warn!(error = %err, "deleting the load balancer failed; the finalizer stays");
        ctx.event(
            svc,
            EventType::Warning,
            "SyncLoadBalancerFailed",
            format!("Error deleting load balancer: {err}"),
        )
        .await;
        ctx.metrics.reconciled("failed");
        ctx.metrics.error(err.metric_label());
        return Ok(Action::requeue(ctx.backoff(&obj, err.retry_floor())));
    }
    if plan.clear_status {
        ctx.patch_status(
            &api,
            svc,
            StatusUpdate {
                ingress: Some(Vec::new()),
                condition: Some(None),
            },
        )
        .await?;
    }
    if plan.release_finalizer {
        remove_finalizer(&api, svc).await?;
    }
    ctx.event(
        svc,
        EventType::Normal,
        "DeletedLoadBalancer",
        "Deleted load balancer".into(),
    )
    .await;
    info!(reason = ?plan.reason, "load balancer deleted");
    ctx.forget(&obj);
    ctx.metrics.reconciled("deleted");
    Ok(Action::await_change())
}

/// JSON patch guarded by a `test` of the current list, so a concurrent
/// writer's finalizer is never lost (as kube-runtime's finalizer helper does).
async fn add_finalizer(api: &Api<Service>, svc: &Service) -> Result<Service, Error> {
    let ops = match svc.metadata.finalizers.as_ref() {
        None => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [LB_FINALIZER] },
        ]),
        Some(list) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": list },
            { "op": "add", "path": "/metadata/finalizers/-", "value": LB_FINALIZER },
        ]),
    };
    json_patch_service(api, svc, ops, "adding the finalizer").await
}

async fn remove_finalizer(api: &Api<Service>, svc: &Service) -> Result<(), Error> {
    let Some(index) = svc.finalizers().iter().position(|f| f == LB_FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        { "op": "test", "path": path, "value": LB_FINALIZER },
        { "op": "remove", "path": path },
    ]);
    match json_patch_service(api, svc, ops, "removing the finalizer").await {
        Ok(_) => Ok(()),
        // Already gone (deleted once the last finalizer went).
        Err(Error::Kube { source, .. }) if matches!(*source, kube::Error::Api(ref s) if s.code == 404) => {
            Ok(())
        }
        Err(other) => Err(other),
    }
}

async fn json_patch_service(
    api: &Api<Service>,
    svc: &Service,
    ops: serde_json::Value,
    context: &'static str,
) -> Result<Service, Error> {
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| Error::Kube {
        context,
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(Error::kube(context))
}

/// Failed reconciles (Kubernetes API errors) back off per Service.
pub fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff(&ObjectRef::from_obj(svc.as_ref()), Duration::ZERO);
    warn!(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()), error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_are_spread_by_ten_percent() {
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(spread(ten_minutes, 0.0), Duration::from_secs(540));
        assert_eq!(spread(ten_minutes, 1.0), Duration::from_secs(660));
        assert_eq!(spread(ten_minutes, 0.5), ten_minutes);
        let mut seen: Vec<Duration> = (0..50)
            .map(|_| spread(ten_minutes, rand::rng().random_range(0.0..=1.0)))
            .collect();
        seen.dedup();
        assert!(
            seen.len() > 1,
            "Services created together do not resync together"
        );
    }

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_keeps() {
        let cases = [
            ("short note kept", "ok".to_string(), "ok".to_string()),
            ("exactly 1 KiB kept", "x".repeat(1024), "x".repeat(1024)),
        ];
        for (desc, note, want) in cases {
            assert_eq!(truncate_note(note), want, "{desc}");
        }
        let cut = truncate_note("é".repeat(1000));
        assert!(
            cut.len() <= 1024 && cut.ends_with('…'),
            "multi-byte text cut on a char boundary"
        );
    }
}
