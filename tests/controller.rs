//! The controller through a real kube::Client over HTTP, with a recording
//! provider: every scenario runs against the API stand-in (`standin::*`) and
//! against the real control plane (`real::*`, as the controller's
//! ServiceAccount under `deploy/rbac.yaml`).

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Patch, PatchParams};
use portico::builders::{node, svc};
use portico::status::CONDITION_TYPE;
use portico_provider::testing::{Effect, NODE_LABELS_ANNOTATION, Op, RecordingProvider};
use portico_provider::{ClusterName, LoadBalancerKey, LoadBalancerSpec, ProviderError};

async fn create_update_delete(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 2).await;
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;

        let ready = env.ready("web").await;
        assert!(
            has_finalizer(&ready),
            "finalizer added before the cloud call"
        );
        assert_eq!(
            condition(&ready, CONDITION_TYPE),
            Some(("True".into(), "Ready".into()))
        );
        let spec = env
            .provider()
            .spec_for("default", "web")
            .expect("balancer exists");
        assert_eq!(spec.targets.len(), 2, "both nodes are targets");
        assert_eq!(spec.key.cluster.as_str(), "test-cluster");
        eventually("events", 10, || async {
            (env.has_event("web", "EnsuringLoadBalancer").await
                && env.has_event("web", "EnsuredLoadBalancer").await)
                .then_some(())
        })
        .await;

        // A port change reaches the provider.
        let patch = serde_json::json!({"spec": {"ports": [
            {"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
            {"name": "https", "port": 443, "nodePort": 30443, "protocol": "TCP"}]}});
        env.services()
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        eventually("two listeners", 20, || async {
            env.provider()
                .spec_for("default", "web")
                .filter(|s| s.listeners.len() == 2)
        })
        .await;

        env.delete("web").await;
        eventually("Service gone", 20, || async {
            env.get("web").await.is_none().then_some(())
        })
        .await;
        assert!(
            env.provider().spec_for("default", "web").is_none(),
            "balancer deleted before the finalizer went"
        );
        assert!(env.provider().balancers().is_empty());
    })
    .await;
}

async fn steady_state_makes_no_writes_and_few_calls(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 2).await;
        env.create(svc("default", "quiet").lb().port(80, 30080).build())
            .await;
        eventually("ready", 20, || async {
            env.get("quiet")
                .await
                .filter(|s| condition(s, CONDITION_TYPE).is_some() && ingress_ip(s).is_some())
        })
        .await;
        // The echoes of the finalizer and status writes came before it.
        env.barrier(env.provider(), "later").await;
        let ensures = calls_for(&env.provider().calls(), "quiet")
            .iter()
            .filter(|c| c.op == Op::Ensure)
            .count();
        assert_eq!(
            ensures, 1,
            "one create is one ensure (no second one for the finalizer, no loop)"
        );

        let mark = env.mark();
        env.provider().clear_calls();
        // Three passes of the orphan scan: the controller ran on for that long.
        eventually("three orphan scans", 20, || async {
            let scans = env
                .provider()
                .calls()
                .iter()
                .filter(|c| c.op == Op::ListOwned)
                .count();
            (scans >= 3).then_some(())
        })
        .await;
        let writes = env.controller_writes_since(mark);
        assert!(
            writes.is_empty(),
            "steady state wrote to the API: {writes:?}"
        );
        // Only the periodic orphan scan (list_owned) runs at rest.
        let calls: Vec<_> = env
            .provider()
            .calls()
            .into_iter()
            .filter(|c| c.op != Op::ListOwned)
            .collect();
        assert!(
            calls.is_empty(),
            "steady state called the provider: {calls:?}"
        );
    })
    .await;
}

async fn node_changes_follow_and_heartbeats_do_nothing(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 2).await;
        env.create(svc("default", "web").lb().port(80, 30080).build()).await;
        // Selects targets by node label: a label change reaches it alone.
        env.create(svc("default", "by-label").lb().port(81, 30081).annotation(NODE_LABELS_ANNOTATION, "rack=r1").build()).await;
        env.create(svc("default", "other").type_("ClusterIP").port_without_node_port(80).build()).await;
        env.ready("web").await;
        env.ready("by-label").await;

        env.add_node("node-9", "10.0.0.99").await;
        let updated = |name: &'static str| {
            let calls = env.provider().calls();
            calls_for(&calls, name).iter().any(|c| c.op == Op::Ensure && c.effect == Effect::Updated)
        };
        eventually("new node is a target of both", 20, || async {
            let three = |name| env.provider().spec_for("default", name).is_some_and(|s| s.targets.len() == 3);
            (three("web") && three("by-label") && updated("web") && updated("by-label")).then_some(())
        })
        .await;
        let mark = env.provider().calls().len();

        // Heartbeat-like changes (conditions, readiness) change nothing...
        let flapping = node("node-9").ip("10.0.0.99").not_ready().build();
        env.nodes()
            .patch_status("node-9", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": flapping.status})))
            .await
            .expect("status patch");
        // ...as a label change after it shows: node events are handled in
        // order, and a label change reaches only `by-label`; had the flap
        // changed the targets (alone or merged with the label change),
        // `web` would have been ensured too.
        let rack = serde_json::json!({"metadata": {"labels": {"rack": "r1"}}});
        env.nodes().patch("node-1", &PatchParams::default(), &Patch::Merge(&rack)).await.expect("label");
        eventually("the label reached by-label", 20, || async {
            env.provider()
                .spec_for("default", "by-label")
                .filter(|s| s.targets.iter().any(|t| t.node_name == "node-1" && t.labels.get("rack").map(String::as_str) == Some("r1")))
        })
        .await;
        let calls = env.provider().calls();
        let reconciles = calls_for(&calls[mark..], "web");
        assert!(reconciles.is_empty(), "a readiness flap reconciled: {reconciles:?}");

        // Excluding a node removes it; only the LB Services are reconciled.
        let mark = env.provider().calls().len();
        let label = serde_json::json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}});
        env.nodes().patch("node-0", &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
        let spec = eventually("excluded node leaves", 20, || async {
            env.provider().spec_for("default", "web").filter(|s| s.targets.len() == 2)
        })
        .await;
        assert!(spec.targets.iter().all(|t| t.node_name != "node-0"));
        eventually("UpdatedLoadBalancer event", 10, || async {
            env.has_event("web", "UpdatedLoadBalancer").await.then_some(())
        })
        .await;
        let keys: Vec<_> = env.provider().calls()[mark..].iter().filter_map(|c| c.key.clone()).map(|k| k.name).collect();
        assert!(keys.iter().all(|k| k == "web" || k == "by-label"), "only the LB Services are touched: {keys:?}");
    })
    .await;
}

async fn class_filtering(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(
            svc("default", "mine")
                .lb()
                .class(CLASS)
                .port(80, 30080)
                .build(),
        )
        .await;
        env.create(
            svc("default", "theirs")
                .lb()
                .class("example.com/other")
                .port(80, 30081)
                .build(),
        )
        .await;
        env.create(svc("default", "classless").lb().port(80, 30082).build())
            .await;
        env.ready("mine").await;
        // Created after `theirs`: once it is served, `theirs` was seen.
        env.ready("classless").await;
        let theirs = env.get("theirs").await.expect("exists");
        assert!(
            !has_finalizer(&theirs),
            "no finalizer on another class's Service"
        );
        assert!(ingress_ip(&theirs).is_none());
        assert!(
            env.provider().spec_for("default", "theirs").is_none(),
            "no balancer for another class"
        );
    })
    .await;
}

async fn classless_services_left_alone_when_not_default(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let config = portico::config::ControllerConfig {
            claim_classless: false,
            ..test_config()
        };
        let replica = env.replica(RecordingProvider::new(), config, None);
        env.create(svc("default", "classless").lb().port(80, 30082).build())
            .await;
        env.create(
            svc("default", "mine")
                .lb()
                .class(CLASS)
                .port(80, 30080)
                .build(),
        )
        .await;
        // Created after `classless`: once it is served, `classless` was seen.
        env.ready("mine").await;
        assert!(replica.provider.spec_for("default", "classless").is_none());
        assert!(
            calls_for(&replica.provider.calls(), "classless").is_empty(),
            "no provider call about a class-less Service it does not claim"
        );
        replica.stop().await;
    })
    .await;
}

async fn type_change_cleans_up(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        env.ready("web").await;
        let patch = serde_json::json!({"spec": {"type": "ClusterIP"}});
        env.services()
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        // The finalizer goes first, then the status is cleared.
        eventually("released, condition removed", 20, || async {
            env.get("web").await.filter(|s| {
                !has_finalizer(s)
                    && ingress_ip(s).is_none()
                    && condition(s, CONDITION_TYPE).is_none()
            })
        })
        .await;
        assert!(env.provider().balancers().is_empty(), "balancer deleted");
        env.event("web", "Normal", "DeletedLoadBalancer").await;
    })
    .await;
}

/// What a provider notices while ensuring (AWS: an instance it refused as
/// a target) reaches the Service as a Warning Event (that it is posted at
/// rest too is in the outcome table).
async fn provider_notices_become_warning_events(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(
            svc("default", "noticed")
                .lb()
                .port(80, 30090)
                .annotation("test.portico.io/notice", "instance i-0dead was refused")
                .build(),
        )
        .await;
        env.ready("noticed").await;
        let note = env.event("noticed", "Warning", "TestNotice").await;
        assert_eq!(note, "instance i-0dead was refused");
        let ensured = env.events("noticed").await;
        assert!(
            ensured
                .iter()
                .any(|(_, reason, _)| reason == "EnsuredLoadBalancer"),
            "{ensured:?}"
        );
    })
    .await;
}

async fn bad_input_is_reported_and_others_keep_working(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(
            svc("default", "bad")
                .lb()
                .port(80, 30080)
                .annotation("test.portico.io/weight", "heavy")
                .build(),
        )
        .await;
        env.create(svc("default", "good").lb().port(80, 30082).build())
            .await;

        env.ready("good").await;
        let bad = eventually("bad has a condition", 20, || async {
            env.get("bad")
                .await
                .filter(|s| condition(s, CONDITION_TYPE).is_some())
        })
        .await;
        assert_eq!(
            condition(&bad, CONDITION_TYPE),
            Some(("False".into(), "InvalidSpec".into()))
        );
        let note = env.event("bad", "Warning", "SyncLoadBalancerFailed").await;
        assert!(
            note.contains("metadata.annotations[test.portico.io/weight]"),
            "event names the field: {note}"
        );
        assert!(
            env.provider().spec_for("default", "bad").is_none(),
            "no cloud state for a bad Service"
        );
        assert!(
            !env.provider()
                .calls()
                .iter()
                .any(|c| c.key.as_ref().is_some_and(|k| k.name == "bad"))
        );

        // Fixing the annotation makes it work.
        let fix = serde_json::json!({"metadata": {"annotations": {"test.portico.io/weight": "5"}}});
        env.services()
            .patch("bad", &PatchParams::default(), &Patch::Merge(&fix))
            .await
            .expect("patch");
        let fixed = env.ready("bad").await;
        assert_eq!(
            condition(&fixed, CONDITION_TYPE),
            Some(("True".into(), "Ready".into()))
        );
    })
    .await;
}

async fn provider_errors_back_off_and_recover(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        provider.fail_next([
            ProviderError::Throttled {
                retry_after: Some(Duration::from_millis(100)),
            },
            ProviderError::transient("cloud hiccup"),
        ]);
        let replica = env.replica(provider.clone(), test_config(), None);
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        let svc = env.ready("web").await;
        assert_eq!(
            condition(&svc, CONDITION_TYPE),
            Some(("True".into(), "Ready".into()))
        );
        // Failures were reported (each Event beside its status write).
        env.event("web", "Warning", "SyncLoadBalancerFailed").await;
        let failed = provider.calls().iter().filter(|c| c.failed).count();
        assert_eq!(failed, 2);
        assert_eq!(provider.creates(), 1);
        replica.stop().await;
    })
    .await;
}

async fn no_eligible_nodes_is_reported(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 0).await;
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        let svc = eventually("condition", 20, || async {
            env.get("web")
                .await
                .filter(|s| condition(s, CONDITION_TYPE).is_some())
        })
        .await;
        assert_eq!(
            condition(&svc, CONDITION_TYPE),
            Some(("False".into(), "NoEligibleNodes".into()))
        );
        // The Event is posted beside the status write: wait for it.
        env.event("web", "Warning", "UnAvailableLoadBalancer").await;
        env.add_node("late", "10.0.0.50").await;
        eventually("ready once a node joins", 20, || async {
            env.get("web")
                .await
                .filter(|s| condition(s, CONDITION_TYPE) == Some(("True".into(), "Ready".into())))
        })
        .await;
    })
    .await;
}

async fn watch_disconnects_are_survived(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        env.create(svc("default", "before").lb().port(80, 30080).build())
            .await;
        env.ready("before").await;
        env.break_watches().await;
        env.create(svc("default", "after").lb().port(80, 30081).build())
            .await;
        env.break_watches().await;
        env.add_node("node-new", "10.0.0.77").await;
        env.ready("after").await;
        eventually("node seen after disconnect", 20, || async {
            env.provider()
                .spec_for("default", "after")
                .filter(|s| s.targets.len() == 2)
        })
        .await;
    })
    .await;
}

async fn restart_between_cloud_create_and_status_makes_no_second_balancer(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let provider = RecordingProvider::new();
        // Slow status writes are not needed: kill the replica the moment the cloud call returns.
        let ensured = provider.ensured();
        let first = env.replica(provider.clone(), test_config(), None);
        let waiter = ensured.notified();
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        waiter.await;
        first.kill();
        assert_eq!(provider.creates(), 1);

        let second = env.replica(provider.clone(), test_config(), None);
        env.ready("web").await;
        assert_eq!(provider.creates(), 1, "restart made a second balancer");
        assert_eq!(provider.balancers().len(), 1);
        second.stop().await;
    })
    .await;
}

async fn balancer_made_before_a_crash_is_adopted(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let created = env
            .create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        // As if a previous controller made the balancer and died before writing status.
        let provider = RecordingProvider::new();
        let key = LoadBalancerKey::new(
            ClusterName::new("test-cluster"),
            "default",
            "web",
            created.metadata.uid.clone().expect("uid"),
        );
        let mut spec = LoadBalancerSpec::new(key);
        spec.listeners = vec![portico_provider::Listener {
            port: 80,
            protocol: portico_provider::Protocol::Tcp,
            node_port: 30080,
            name: Some("tcp-80".into()),
        }];
        provider.insert(spec);
        let replica = env.replica(provider.clone(), test_config(), None);
        env.ready("web").await;
        assert_eq!(
            provider.creates(),
            0,
            "existing balancer adopted, not re-created"
        );
        assert!(
            provider
                .calls()
                .iter()
                .any(|c| c.op == Op::Ensure && c.effect == Effect::Updated),
            "targets converged"
        );
        replica.stop().await;
    })
    .await;
}

async fn orphans_are_collected(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let kept = env
            .create(svc("default", "kept").lb().port(80, 30080).build())
            .await;
        let provider = RecordingProvider::new();
        let cluster = ClusterName::new("test-cluster");
        let orphan = LoadBalancerKey::new(cluster.clone(), "default", "gone", "uid-gone");
        let recreated = LoadBalancerKey::new(cluster.clone(), "default", "kept", "old-uid");
        let foreign = LoadBalancerKey::new(
            ClusterName::new("other-cluster"),
            "default",
            "gone",
            "uid-x",
        );
        for key in [&orphan, &recreated, &foreign] {
            provider.insert(LoadBalancerSpec::new(key.clone()));
        }
        let replica = env.replica(provider.clone(), test_config(), None);
        eventually("orphans deleted", 20, || async {
            let left = provider.balancers();
            (!left.contains(&orphan) && !left.contains(&recreated)).then_some(())
        })
        .await;
        env.ready("kept").await;
        let left = provider.balancers();
        assert!(
            left.contains(&foreign),
            "another cluster's balancer is never touched"
        );
        assert!(
            left.iter()
                .any(|k| k.uid == kept.metadata.uid.clone().expect("uid"))
        );
        replica.stop().await;
    })
    .await;
}

async fn leader_election_one_acts_other_takes_over(backend: Backend) {
    within(90, async {
        let env = Env::api_only(backend, 1).await;
        let a = env.replica(RecordingProvider::new(),
            test_config(),
            Some(fast_lease("replica-a")),
        );
        eventually("a leads", 10, || async {
            env.lease_holder().await.filter(|h| h == "replica-a")
        })
        .await;
        let b = env.replica(RecordingProvider::new(),
            test_config(),
            Some(fast_lease("replica-b")),
        );
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        env.ready("web").await;
        // Three retry periods in which the standby looked at the lease.
        env.lease_renewals(3).await;
        assert!(a.provider.creates() == 1, "leader acts");
        assert!(
            b.provider.calls().is_empty(),
            "standby made cloud calls (even list_owned): {:?}",
            b.provider.calls()
        );

        // The leader stops (SIGTERM): it releases the lease and b takes over.
        let b_provider = b.provider.clone();
        let stopped = tokio::time::Instant::now();
        a.stop().await;
        // Released, not expired: b holds the lease well before the 3 s duration runs out.
        eventually("b holds the lease", 10, || async {
            env.lease_holder().await.filter(|h| h == "replica-b")
        })
        .await;
        assert!(
            stopped.elapsed() < Duration::from_millis(2500),
            "b took over {:?} after a stopped, not before the lease would have expired: the leader did not release it",
            stopped.elapsed()
        );
        env.create(svc("default", "second").lb().port(81, 30081).build())
            .await;
        eventually("b serves after takeover", 20, || async {
            b_provider.spec_for("default", "second")
        })
        .await;
        b.stop().await;
    })
    .await;
}

async fn controllers_of_different_classes_do_not_fight(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 1).await;
        let other_config = portico::config::ControllerConfig {
            class: "example.com/other".into(),
            claim_classless: false,
            ..test_config()
        };
        let ours = env.replica(RecordingProvider::new(), test_config(), None);
        let other = env.replica(RecordingProvider::new(), other_config, None);
        env.create(
            svc("default", "mine")
                .lb()
                .class(CLASS)
                .port(80, 30080)
                .build(),
        )
        .await;
        env.create(
            svc("default", "theirs")
                .lb()
                .class("example.com/other")
                .port(80, 30081)
                .build(),
        )
        .await;
        eventually("both served", 20, || async {
            let mine = env
                .get("mine")
                .await
                .filter(|s| ingress_ip(s).is_some() && has_finalizer(s));
            let theirs = env
                .get("theirs")
                .await
                .filter(|s| ingress_ip(s).is_some() && has_finalizer(s));
            mine.zip(theirs)
        })
        .await;
        // Each controller has seen the other's writes before its own later Service.
        env.barrier(&ours.provider, "mine-later").await;
        let theirs_later = svc("default", "theirs-later")
            .lb()
            .class("example.com/other")
            .port(80, 30083)
            .build();
        env.create(theirs_later).await;
        eventually("theirs-later ensured", 20, || async {
            other.provider.spec_for("default", "theirs-later")
        })
        .await;
        for name in ["mine", "theirs"] {
            let s = env.get(name).await.expect("exists");
            assert!(
                has_finalizer(&s),
                "{name}: the other controller removed the shared finalizer"
            );
            assert!(
                ingress_ip(&s).is_some(),
                "{name}: status cleared by the other controller"
            );
        }
        assert!(ours.provider.spec_for("default", "theirs").is_none());
        assert!(other.provider.spec_for("default", "mine").is_none());
        assert!(
            !env.has_event("mine", "DeletingLoadBalancer").await,
            "no cleanup events on a foreign Service"
        );
        ours.stop().await;
        other.stop().await;
    })
    .await;
}

/// `externalTrafficPolicy: Local`: the balancer health-checks the
/// Service's `healthCheckNodePort` (allocated by the API server) on
/// `/healthz`; switching back to Cluster goes back to the traffic port.
async fn local_traffic_policy_checks_the_health_check_node_port(backend: Backend) {
    within(60, async {
        let env = Env::start(backend, 1).await;
        let mut local = svc("default", "api").lb().port(443, 30443).build();
        if let Some(spec) = local.spec.as_mut() {
            spec.external_traffic_policy = Some("Local".into());
        }
        let created = env.create(local).await;
        let allocated = created
            .spec
            .as_ref()
            .and_then(|s| s.health_check_node_port)
            .expect("the API server allocates a healthCheckNodePort");
        let spec = eventually("balancer", 20, || async {
            env.provider().spec_for("default", "api")
        })
        .await;
        assert_eq!(
            spec.health_check,
            portico_provider::HealthCheck::Http {
                port: u16::try_from(allocated).expect("a port"),
                path: "/healthz".into()
            },
            "health check on healthCheckNodePort /healthz"
        );
        let cluster = serde_json::json!({"spec": {"externalTrafficPolicy": "Cluster"}});
        env.services()
            .patch("api", &PatchParams::default(), &Patch::Merge(&cluster))
            .await
            .expect("patch");
        eventually("health check back on the traffic port", 20, || async {
            env.provider()
                .spec_for("default", "api")
                .filter(|s| s.health_check == portico_provider::HealthCheck::TrafficPort)
        })
        .await;
    })
    .await;
}

on_both_backends!(
    provider_notices_become_warning_events,
    local_traffic_policy_checks_the_health_check_node_port,
    create_update_delete,
    steady_state_makes_no_writes_and_few_calls,
    node_changes_follow_and_heartbeats_do_nothing,
    class_filtering,
    classless_services_left_alone_when_not_default,
    type_change_cleans_up,
    bad_input_is_reported_and_others_keep_working,
    provider_errors_back_off_and_recover,
    no_eligible_nodes_is_reported,
    watch_disconnects_are_survived,
    restart_between_cloud_create_and_status_makes_no_second_balancer,
    balancer_made_before_a_crash_is_adopted,
    orphans_are_collected,
    leader_election_one_acts_other_takes_over,
    controllers_of_different_classes_do_not_fight,
);
