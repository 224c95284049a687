//! The executor: one reconcile plans (`plan.rs`), calls the provider, asks
//! `outcome.rs` what the result means, and carries that out. Every failure,
//! the provider's and the Kubernetes API's, leaves through one path:
//! `Err` to kube-runtime, then [`error_policy`]'s backoff.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use portico_provider::LoadBalancerSpec;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::Context;
use crate::controller::Error;
use crate::finalizer;
use crate::k8s::{Api, ObjectRef, ResourceExt, Service};
use crate::outcome::{self, Announce, EnsureFacts, Next, Note, Outcome, Severity, SpecHashes};
use crate::plan::{self, CleanupPlan, EnsurePlan, Ownership, Plan};

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
        let result = execute(&svc, &ctx).await;
        if let Err(err) = &result
            && !matches!(err, Error::Provider(_))
        {
            // Provider failures were counted by their outcome.
            ctx.metrics.reconciled("error");
            ctx.metrics.error(err.metric_label());
        }
        result
    }
    .instrument(span)
    .await
}

async fn execute(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    let targets = ctx.eligible_targets().await?;
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    match plan::plan(svc, &targets.targets, &ctx.config, ctx.provider.as_ref()) {
        Plan::Ignore(reason) => {
            debug!(?reason, "not ours");
            ctx.metrics.reconciled("ignored");
            Ok(Action::await_change())
        }
        Plan::Reject(rejection) => {
            warn!(field = %rejection.field, reason = %rejection.reason, "invalid Service; no cloud change made");
            carry_out(svc, ctx, &api, outcome::rejected(&rejection)).await
        }
        Plan::Conflict(conflict) => {
            warn!(message = %conflict.message, "another controller serves this Service; left alone");
            carry_out(svc, ctx, &api, outcome::stood_back(&conflict)).await
        }
        Plan::Ensure(plan) => ensure(svc, ctx, &api, *plan, targets.fingerprint).await,
        Plan::Cleanup(plan) => cleanup(svc, ctx, &api, plan).await,
    }
}

async fn ensure(
    svc: &Service,
    ctx: &Context,
    api: &Api<Service>,
    plan: EnsurePlan,
    targets_fingerprint: u64,
) -> Result<Action, Error> {
    // The status write is guarded by the resourceVersion of the object it is
    // built from: after adding the finalizer, that is the patched one.
    let finalized;
    let svc = if plan.add_finalizer {
        finalized = finalizer::add(api, svc)
            .await
            .map_err(Error::kube("adding the finalizer"))?;
        &finalized
    } else {
        svc
    };
    let hashes = spec_hashes(plan.spec(), targets_fingerprint);
    let previous = ctx.last_ensured(&ObjectRef::from_obj(svc));
    let change = outcome::spec_change(previous, hashes);
    post(svc, ctx, outcome::before_ensure(change)).await;
    let result = ctx
        .provider_call("ensure", ctx.provider.ensure(&plan.prepared))
        .await;
    let mut notices = Vec::new();
    if let Err(err) = &result {
        warn!(error = %err, kind = err.metric_label(), "ensuring the load balancer failed");
    } else {
        info!(
            targets = plan.spec().targets.len(),
            ?change,
            "load balancer ensured"
        );
        notices = ctx.provider.take_notices(&plan.spec().key);
    }
    let facts = EnsureFacts {
        change,
        hashes,
        hosts: plan.spec().targets.len(),
        unenforced: plan.prepared.unenforced(),
        notices: &notices,
    };
    carry_out(svc, ctx, api, outcome::ensured(facts, result)).await
}

async fn cleanup(
    svc: &Service,
    ctx: &Context,
    api: &Api<Service>,
    plan: CleanupPlan,
) -> Result<Action, Error> {
    if plan.ownership == Ownership::IfBalancerFound {
        let found = ctx.provider_call("get", ctx.provider.get(&plan.key)).await;
        match outcome::looked_up(found) {
            None => info!(
                "a balancer of this cluster exists for a Service portico does not claim; removing it"
            ),
            Some(out) => {
                debug!(
                    "not portico's and no balancer of this cluster for it (or the look-up failed)"
                );
                return carry_out(svc, ctx, api, out).await;
            }
        }
    }
    // Past this point the Service is portico's (claimed, or its balancer found).
    post(svc, ctx, outcome::before_delete()).await;
    let result = ctx
        .provider_call("delete", ctx.provider.delete(&plan.key))
        .await;
    match &result {
        Ok(()) => info!(reason = ?plan.reason, "load balancer deleted"),
        Err(err) => warn!(error = %err, "deleting the load balancer failed; the finalizer stays"),
    }
    carry_out(svc, ctx, api, outcome::deleted(&plan, result)).await
}

/// Do what `out` says, in order: finalizer, status, Events, memory, metrics.
/// The finalizer goes first: portico's condition is its evidence that the
/// finalizer is its own, so it must not be cleared while the finalizer may
/// still be there (a failed removal would leave a finalizer nobody owns).
async fn carry_out(
    svc: &Service,
    ctx: &Context,
    api: &Api<Service>,
    out: Outcome,
) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(svc);
    let released;
    // The status write is guarded by the resourceVersion of the object it
    // is built from: after removing the finalizer, that is the patched one.
    let svc = if out.release_finalizer {
        released = finalizer::remove(api, svc)
            .await
            .map_err(Error::kube("removing the finalizer"))?;
        released.as_ref().unwrap_or(svc)
    } else {
        svc
    };
    let wrote = match &out.status {
        Some(update) => ctx.patch_status(api, svc, update).await?,
        None => false,
    };
    if out.announce == Announce::Always || wrote {
        post(svc, ctx, out.events).await;
    }
    ctx.remember(&obj, out.memo);
    ctx.metrics.reconciled(out.result);
    if let Some(kind) = out.error_kind {
        ctx.metrics.error(kind);
    }
    match out.next {
        Next::Resync => {
            ctx.succeeded(&obj);
            Ok(Action::requeue(ctx.resync_after()))
        }
        Next::AwaitChange => {
            ctx.succeeded(&obj);
            Ok(Action::await_change())
        }
        Next::Retry(err) => Err(Error::Provider(err)),
    }
}

async fn post(svc: &Service, ctx: &Context, notes: Vec<Note>) {
    for note in notes {
        let type_ = match note.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        };
        ctx.event(svc, type_, &note.reason, note.message).await;
    }
}

/// Every failed reconcile backs off per Service: exponential with jitter,
/// never sooner than the error's floor (a cloud's Retry-After).
pub fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff(&ObjectRef::from_obj(svc.as_ref()), err.retry_floor());
    warn!(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()), error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

/// Hashes of `spec` whole and without its targets; `targets` is the
/// fingerprint of the snapshot the spec was built from, so no reconcile
/// walks the node list to hash it.
fn spec_hashes(spec: &LoadBalancerSpec, targets: u64) -> SpecHashes {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::{node, svc};
    use crate::config::ControllerConfig;
    use crate::k8s::PostParams;
    use crate::nodes::node_target;
    use portico_provider::testing::RecordingProvider;
    use portico_provider::{ClusterName, LoadBalancerKey, ProviderError, Targets};
    use std::time::Duration;

    /// The stand-in with Service `name` created, and a Context on it.
    async fn on_stand_in(
        provider: RecordingProvider,
        names: &[&str],
    ) -> (kube_standin::ApiServer, Arc<Context>, Vec<Arc<Service>>) {
        let server = kube_standin::ApiServer::start().await.expect("stand-in");
        let client = server.client().await.expect("client");
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let mut created = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let port = 30080 + i32::try_from(i).expect("few");
            let mut s = svc("default", name).lb().port(80, port).build();
            s.metadata.uid = None;
            let s = api
                .create(&PostParams::default(), &s)
                .await
                .expect("create");
            created.push(Arc::new(s));
        }
        let targets: Targets = [node_target(&node("n1").ip("10.0.0.1").build()).expect("eligible")]
            .into_iter()
            .collect();
        let config = ControllerConfig {
            cluster: ClusterName::new("c"),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            ..ControllerConfig::default()
        };
        let ctx = crate::context::for_tests(client, Arc::new(provider), config, targets);
        (server, Arc::new(ctx), created)
    }

    #[tokio::test]
    async fn a_reconcile_calls_the_provider_only_under_the_services_lock() {
        let provider = RecordingProvider::new();
        provider.set_latency(Duration::from_millis(300));
        let (_server, ctx, created) = on_stand_in(provider.clone(), &["web"]).await;
        let run = tokio::spawn(reconcile(created[0].clone(), ctx.clone()));
        while provider.started() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            ctx.locks.is_held("default", "web"),
            "the ensure runs without the Service's lock (the orphan collector takes it too)"
        );
        run.await.expect("task").expect("reconciled");
        assert!(ctx.locks.is_empty(), "released afterwards");
    }

    #[tokio::test]
    async fn refusals_from_the_cloud_are_retried_at_their_floor_not_parked() {
        let cases = [
            (
                "invalid",
                ProviderError::invalid("spec.ports", "the cloud refused the listener"),
                30,
            ),
            (
                "unsupported",
                ProviderError::Unsupported {
                    what: "this scheme in this region".into(),
                },
                30,
            ),
            (
                "quota",
                ProviderError::QuotaExceeded {
                    resource: "load balancers".into(),
                    message: "limit 20".into(),
                },
                60,
            ),
        ];
        let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
        let provider = RecordingProvider::new();
        let (_server, ctx, created) = on_stand_in(provider.clone(), &names).await;
        for ((desc, err, floor_secs), svc) in cases.into_iter().zip(created) {
            provider.fail_next([err]);
            let err = reconcile(svc.clone(), ctx.clone())
                .await
                .expect_err("a refusal from the cloud is a failed reconcile");
            assert!(matches!(err, Error::Provider(_)), "{desc}: {err:?}");
            // The backoff (at most 2 s here) is lifted to the kind's floor:
            // retried, not left waiting for the Service to change.
            assert_eq!(
                error_policy(svc, &err, ctx.clone()),
                Action::requeue(Duration::from_secs(floor_secs)),
                "{desc}"
            );
        }
    }

    #[test]
    fn spec_hashes_separate_target_changes_from_the_rest() {
        let spec = LoadBalancerSpec::new(LoadBalancerKey::new(
            ClusterName::new("c"),
            "default",
            "web",
            "u1",
        ));
        let (whole, rest) = spec_hashes(&spec, 1);
        let (whole_new_nodes, rest_new_nodes) = spec_hashes(&spec, 2);
        assert_ne!(whole, whole_new_nodes);
        assert_eq!(rest, rest_new_nodes, "targets do not touch the rest");
        let mut other = spec.clone();
        other.source_ranges = vec!["10.0.0.0/8".parse().expect("cidr")];
        assert_ne!(spec_hashes(&other, 1).1, rest, "any other field does");
    }
}
