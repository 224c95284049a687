//! Controller safety: portico never touches what is not its own, never gives
//! up on an error a cloud returned, and never loses an Event to a long note.
//! Each scenario runs on the stand-in and on the real control plane.

mod common;

use common::*;
use kube::api::{Patch, PatchParams};
use portico::builders::svc;
use portico::status::CONDITION_TYPE;
use portico_provider::testing::{Op, RecordingProvider};
use portico_provider::{
    ClusterName, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, ProviderError,
};

const OTHER_CLASS: &str = "example.com/other";
const LB_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

fn key(uid: &str, name: &str) -> LoadBalancerKey {
    LoadBalancerKey::new(ClusterName::new("test-cluster"), "default", name, uid)
}

/// Wait until portico has asked the provider about `name` (the positive
/// barrier that it saw the Service), and return the calls about it.
async fn calls_about(
    provider: &RecordingProvider,
    name: &str,
    op: Op,
) -> Vec<portico_provider::testing::Call> {
    eventually(&format!("portico looked at {name}"), 20, || async {
        let calls: Vec<_> = provider
            .calls()
            .into_iter()
            .filter(|c| c.key.as_ref().is_some_and(|k| k.name == name))
            .collect();
        calls.iter().any(|c| c.op == op).then_some(calls)
    })
    .await
}

/// Another controller's Service, being deleted with the shared finalizer,
/// keeps it: portico looks for a balancer of its own, finds none, and
/// leaves the Service, its finalizer and its Events alone.
async fn another_controllers_finalizer_is_never_stripped(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        let theirs = svc("default", "theirs")
            .lb()
            .class(OTHER_CLASS)
            .port(80, 30081)
            .finalizer("service.kubernetes.io/load-balancer-cleanup")
            .build();
        env.create(theirs).await;
        env.delete("theirs").await;
        calls_about(env.provider(), "theirs", Op::Get).await;
        left_alone(&env, "theirs").await;
    })
    .await;
}

/// Whatever portico would do about `name` (a Service that is not its), it
/// has done once a later Service is served: it only looked, kept the other
/// controller's finalizer and posted no Event.
async fn left_alone(env: &Env, name: &str) {
    env.barrier(env.provider(), "barrier").await;
    let calls = calls_for(&env.provider().calls(), name);
    assert!(
        calls.iter().all(|c| c.op == Op::Get),
        "only look-ups, no delete: {calls:?}"
    );
    let svc = env.get(name).await.expect("still there");
    assert!(
        has_finalizer(&svc),
        "the other controller's finalizer stays"
    );
    assert!(
        env.events(name).await.is_empty(),
        "no Events on a Service that is not portico's"
    );
}

/// A class-less Service portico does not claim, leaving type LoadBalancer
/// with the shared finalizer, keeps it too.
async fn type_change_of_an_unclaimed_service_keeps_its_finalizer(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let config = portico::config::ControllerConfig {
            claim_classless: false,
            ..test_config()
        };
        let replica = env.replica(RecordingProvider::new(), config, None);
        env.create(
            svc("default", "theirs")
                .lb()
                .port(80, 30081)
                .finalizer("service.kubernetes.io/load-balancer-cleanup")
                .build(),
        )
        .await;
        let to_cluster_ip = serde_json::json!({"spec": {"type": "ClusterIP"}});
        env.services()
            .patch(
                "theirs",
                &PatchParams::default(),
                &Patch::Merge(&to_cluster_ip),
            )
            .await
            .expect("type change");
        calls_about(&replica.provider, "theirs", Op::Get).await;
        env.barrier(&replica.provider, "barrier").await;
        let svc = env.get("theirs").await.expect("exists");
        assert!(
            has_finalizer(&svc),
            "the finalizer is not portico's to remove"
        );
        assert_eq!(
            replica
                .provider
                .calls()
                .iter()
                .filter(|c| c.op == Op::Delete)
                .count(),
            0
        );
        replica.stop().await;
    })
    .await;
}

/// Evidence of ownership: when the cloud holds this cluster's balancer for
/// another class's Service being deleted, portico removes it (and only it).
async fn a_balancer_of_ours_for_a_foreign_service_is_removed(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let created = env
            .create(
                svc("default", "moved")
                    .lb()
                    .class(OTHER_CLASS)
                    .port(80, 30081)
                    .finalizer("service.kubernetes.io/load-balancer-cleanup")
                    .build(),
            )
            .await;
        let provider = RecordingProvider::new();
        let ours = key(&created.metadata.uid.clone().expect("uid"), "moved");
        provider.insert(LoadBalancerSpec::new(ours.clone()));
        let replica = env.replica(provider.clone(), test_config(), None);
        env.delete("moved").await;
        eventually("our balancer removed", 20, || async {
            (!provider.balancers().contains(&ours)).then_some(())
        })
        .await;
        // A finalizer stripped after the delete would be gone by now.
        env.barrier(&provider, "barrier").await;
        let svc = env.get("moved").await.expect("still there");
        assert!(has_finalizer(&svc), "the finalizer stays for its owner");
        replica.stop().await;
    })
    .await;
}

/// Another class's Service, with the shared finalizer of its own
/// controller, leaves type LoadBalancer: the API server clears its class,
/// so it reads as class-less, which portico claims. Nothing on it says it
/// was ever portico's: no delete, no Event, its finalizer stays.
async fn another_class_leaving_type_load_balancer_is_left_alone(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(
            svc("default", "theirs")
                .lb()
                .class(OTHER_CLASS)
                .port(80, 30081)
                .finalizer(LB_FINALIZER)
                .build(),
        )
        .await;
        calls_about(env.provider(), "theirs", Op::Get).await;
        to_cluster_ip(&env, "theirs").await;
        let left = env.get("theirs").await.expect("exists");
        assert_eq!(
            left.spec
                .as_ref()
                .and_then(|s| s.load_balancer_class.as_deref()),
            None,
            "the API server cleared the class"
        );
        left_alone(&env, "theirs").await;
    })
    .await;
}

/// A class-less Service another controller serves (its address, its
/// finalizer): portico stands back, and when the Service is deleted, or
/// leaves type LoadBalancer, it neither deletes nor strips that
/// controller's finalizer (which guards that controller's balancer).
async fn a_service_portico_stood_back_from_keeps_its_finalizer(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        for (name, node_port) in [("deleted", 30081), ("retyped", 30082)] {
            env.create(
                svc("default", name)
                    .lb()
                    .port(80, node_port)
                    .finalizer(LB_FINALIZER)
                    .build(),
            )
            .await;
            let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.77", "ipMode": "VIP"}]}}});
            env.services()
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("another controller's status");
        }
        let replica = env.replica(RecordingProvider::new(), test_config(), None);
        for name in ["deleted", "retyped"] {
            eventually(&format!("portico stood back from {name}"), 20, || async {
                env.get(name).await.filter(|s| {
                    condition(s, CONDITION_TYPE)
                        == Some(("False".into(), "ConflictingController".into()))
                })
            })
            .await;
        }
        env.delete("deleted").await;
        to_cluster_ip(&env, "retyped").await;
        env.barrier(&replica.provider, "barrier").await;
        for name in ["deleted", "retyped"] {
            let calls = calls_for(&replica.provider.calls(), name);
            assert!(
                calls.iter().all(|c| c.op == Op::Get),
                "{name}: only look-ups, no delete: {calls:?}"
            );
            let svc = env.get(name).await.expect("still there");
            assert!(
                has_finalizer(&svc),
                "{name}: the other controller's finalizer stays"
            );
        }
        replica.stop().await;
    })
    .await;
}

/// `spec.type: ClusterIP` on Service `name`.
async fn to_cluster_ip(env: &Env, name: &str) {
    let patch = serde_json::json!({"spec": {"type": "ClusterIP"}});
    env.services()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("type change");
}

/// A Service portico would claim already shows an address someone else
/// wrote: portico builds nothing and says so.
async fn another_controllers_address_is_not_overwritten(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        env.create(svc("default", "served").lb().port(80, 30081).build())
            .await;
        let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.77", "ipMode": "VIP"}]}}});
        env.services()
            .patch_status("served", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("another controller's status");
        let replica = env.replica(RecordingProvider::new(), test_config(), None);
        let svc = eventually("ConflictingController condition", 20, || async {
            env.get("served")
                .await
                .filter(|s| condition(s, CONDITION_TYPE).is_some())
        })
        .await;
        assert_eq!(
            condition(&svc, CONDITION_TYPE),
            Some(("False".into(), "ConflictingController".into()))
        );
        assert_eq!(ingress_ip(&svc).as_deref(), Some("198.51.100.77"), "address kept");
        assert!(!has_finalizer(&svc), "no finalizer added");
        assert_eq!(replica.provider.creates(), 0, "nothing created");
        let note = env.event("served", "Warning", "ConflictingController").await;
        assert!(note.contains("198.51.100.77"), "{note}");
        replica.stop().await;
    })
    .await;
}

/// A class-less Service carrying another load-balancer controller's own
/// finalizer (here the AWS Load Balancer Controller's) is that
/// controller's, even before it writes an address: portico builds nothing.
async fn another_controllers_finalizer_marks_the_service_as_theirs(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(
            svc("default", "marked")
                .lb()
                .port(80, 30081)
                .finalizer("service.k8s.aws/resources")
                .build(),
        )
        .await;
        let svc = eventually("ConflictingController condition", 20, || async {
            env.get("marked")
                .await
                .filter(|s| condition(s, CONDITION_TYPE).is_some())
        })
        .await;
        assert_eq!(
            condition(&svc, CONDITION_TYPE),
            Some(("False".into(), "ConflictingController".into()))
        );
        let note = env
            .event("marked", "Warning", "ConflictingController")
            .await;
        assert!(note.contains("service.k8s.aws/resources"), "{note}");
        env.barrier(env.provider(), "barrier").await;
        let svc = env.get("marked").await.expect("exists");
        assert!(!has_finalizer(&svc), "portico added no finalizer");
        assert!(
            calls_for(&env.provider().calls(), "marked").is_empty(),
            "no cloud call for it"
        );
    })
    .await;
}

/// Errors a cloud returned are retried, even those that name the spec
/// (AWS answers TargetGroupNotFound for a while after creating one).
async fn cloud_errors_are_retried_not_parked(backend: Backend) {
    within(90, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        provider.fail_next([ProviderError::NotFound {
            what: "target group (not visible yet)".into(),
        }]);
        let replica = env.replica(provider.clone(), test_config(), None);
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        let svc = eventually("ready after the cloud caught up", 30, || async {
            env.get("web")
                .await
                .filter(|s| condition(s, CONDITION_TYPE) == Some(("True".into(), "Ready".into())))
        })
        .await;
        assert!(ingress_ip(&svc).is_some());
        replica.stop().await;
    })
    .await;
}

/// A provider error longer than an Event may hold still reaches the user,
/// cut to the API server's 1 KiB limit.
async fn long_errors_still_make_an_event(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        provider.fail_next([ProviderError::transient("x".repeat(3000))]);
        let replica = env.replica(provider, test_config(), None);
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        let note = env.event("web", "Warning", "SyncLoadBalancerFailed").await;
        assert!(note.len() <= 1024, "note of {} bytes", note.len());
        assert!(note.ends_with('…'), "cut notes say so");
        replica.stop().await;
    })
    .await;
}

/// `--gc=false`: an orphan of this cluster stays, however long it waits.
async fn gc_off_deletes_nothing(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        let orphan = key("uid-gone", "gone");
        provider.insert(LoadBalancerSpec::new(orphan.clone()));
        let config = portico::config::ControllerConfig {
            gc: false,
            ..test_config()
        };
        // The control: the same timings with the collector on (for another
        // class, with a cloud of its own), started at the same moment.
        let control_cloud = RecordingProvider::new();
        let control_orphan = key("uid-gone-too", "gone-too");
        control_cloud.insert(LoadBalancerSpec::new(control_orphan.clone()));
        let control_config = portico::config::ControllerConfig {
            gc: true,
            class: OTHER_CLASS.into(),
            claim_classless: false,
            ..config.clone()
        };
        let replica = env.replica(provider.clone(), config, None);
        let control = env.replica(control_cloud.clone(), control_config, None);
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        env.ready("web").await;
        // Once the control's collector has deleted its orphan, this one's
        // would have too, were it on.
        eventually("the control collected its orphan", 20, || async {
            (!control_cloud.balancers().contains(&control_orphan)).then_some(())
        })
        .await;
        control.stop().await;
        assert!(provider.balancers().contains(&orphan), "the orphan stays");
        assert!(
            !provider.calls().iter().any(|c| c.op == Op::ListOwned),
            "no collection pass ran"
        );
        replica.stop().await;
    })
    .await;
}

/// A leader cut off from the API server long enough to lose its lease,
/// while a slow provider call is in flight, makes no further cloud call:
/// the call in flight is dropped, no new one starts, and the standby takes
/// over only after the old leader has stopped.
async fn deposed_leader_stops_at_once(backend: Backend) {
    within(90, async {
        let env = Env::api_only(backend, 1).await;
        let quiet = portico::config::ControllerConfig {
            gc: false,
            ..test_config()
        };
        let link = partition(&env).await;
        let slow = RecordingProvider::new();
        slow.set_latency(std::time::Duration::from_secs(6));
        let a = Replica::start(
            client_through(&env, &link),
            slow.clone(),
            quiet.clone(),
            Some(fast_lease("replica-a")),
        );
        eventually("a leads", 20, || async {
            env.lease_holder().await.filter(|h| h == "replica-a")
        })
        .await;
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        eventually("a's ensure is in flight", 20, || async {
            (slow.started() >= 1).then_some(())
        })
        .await;
        link.cut();
        let b = env.replica(
            RecordingProvider::new(),
            quiet,
            Some(fast_lease("replica-b")),
        );
        eventually("b took over and serves web", 30, || async {
            b.provider.spec_for("default", "web")
        })
        .await;
        // A call made now takes as long as a's did and started later: once
        // it is through, a's would be too, had it not been dropped.
        let probe = key("uid-probe", "probe");
        LoadBalancerProvider::get(&slow, &probe)
            .await
            .expect("probe call");
        let calls = slow.calls();
        assert!(
            calls.iter().all(|c| c.key.as_ref() == Some(&probe)),
            "the deposed leader's call went through: {calls:?}"
        );
        assert_eq!(
            slow.started(),
            2,
            "the deposed leader started no new call (the other is the probe)"
        );
        a.kill();
        b.stop().await;
    })
    .await;
}

/// Portico's status write was built from its cache; if another controller
/// added a condition meanwhile, the write is refused (and retried on a
/// fresh copy) instead of dropping that condition.
async fn a_stale_status_write_cannot_drop_another_controllers_condition(backend: Backend) {
    use portico::status::{ConditionChange, Readiness, StatusUpdate, status_patch};
    within(30, async {
        let env = Env::api_only(backend, 0).await;
        let stale = env
            .create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        let theirs = serde_json::json!({"status": {"conditions": [{
            "type": "example.com/Healthy", "status": "True", "reason": "Probed",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        env.services()
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&theirs))
            .await
            .expect("another controller's condition");
        let update = StatusUpdate {
            ingress: None,
            condition: ConditionChange::Set(Readiness::no_eligible_nodes()),
        };
        let patch =
            status_patch(&stale, &update, k8s_openapi::jiff::Timestamp::now()).expect("a change");
        let result = env.controller_client.clone();
        let api: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(result, "default");
        match api
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
            other => panic!("a stale write must be refused, got {other:?}"),
        }
        let now = env.get("web").await.expect("exists");
        assert!(
            condition(&now, "example.com/Healthy").is_some(),
            "the other controller's condition is still there"
        );
    })
    .await;
}

/// The controller itself meets that refusal: another controller adds its
/// condition while portico's cloud call is in flight, so portico's status
/// write (built from the copy read before) is refused with 409; the
/// controller retries on a fresh copy and the Service ends with both
/// conditions.
async fn a_refused_status_write_is_retried_and_both_conditions_stay(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        provider.set_latency(std::time::Duration::from_secs(2));
        let mark = env.mark();
        let replica = env.replica(provider.clone(), test_config(), None);
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        eventually("the ensure is in flight", 20, || async {
            (provider.started() >= 1).then_some(())
        })
        .await;
        provider.set_latency(std::time::Duration::ZERO);
        let theirs = serde_json::json!({"status": {"conditions": [{
            "type": "example.com/Healthy", "status": "True", "reason": "Probed",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        env.services()
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&theirs))
            .await
            .expect("another controller's condition");
        let svc = eventually("portico's condition beside theirs", 30, || async {
            env.get("web")
                .await
                .filter(|s| condition(s, CONDITION_TYPE) == Some(("True".into(), "Ready".into())))
        })
        .await;
        assert!(
            condition(&svc, "example.com/Healthy").is_some(),
            "the other controller's condition survived"
        );
        assert!(ingress_ip(&svc).is_some());
        let refused = eventually(
            "the refused write in the API server's record",
            10,
            || async {
                let refused = env.controller_writes_answered_since(mark, 409);
                (!refused.is_empty()).then_some(refused)
            },
        )
        .await;
        assert!(
            refused.iter().all(|w| w.contains("services/status")),
            "only the status write was refused: {refused:?}"
        );
        replica.stop().await;
    })
    .await;
}

on_both_backends!(
    a_stale_status_write_cannot_drop_another_controllers_condition,
    a_refused_status_write_is_retried_and_both_conditions_stay,
    deposed_leader_stops_at_once,
    gc_off_deletes_nothing,
    another_controllers_finalizer_is_never_stripped,
    type_change_of_an_unclaimed_service_keeps_its_finalizer,
    a_balancer_of_ours_for_a_foreign_service_is_removed,
    another_class_leaving_type_load_balancer_is_left_alone,
    a_service_portico_stood_back_from_keeps_its_finalizer,
    another_controllers_address_is_not_overwritten,
    another_controllers_finalizer_marks_the_service_as_theirs,
    cloud_errors_are_retried_not_parked,
    long_errors_still_make_an_event,
);
