//! Table tests of `plan.rs` (kept apart so the module reads as its logic).

use super::*;
use crate::builders::{node, svc};
use crate::nodes::node_target;
use portico_provider::ClusterName;
use portico_provider::testing::{DECLINE_ANNOTATION, RecordingProvider};

fn config() -> ControllerConfig {
    ControllerConfig {
        cluster: ClusterName::new("test"),
        ..Default::default()
    }
}

fn targets() -> Targets {
    ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            node_target(&node(n).ip(&format!("10.0.0.{}", i + 1)).build()).expect("eligible")
        })
        .collect()
}

fn plan_of(s: &Service) -> Plan {
    plan(s, &targets(), &config(), &RecordingProvider::new())
}

fn kind(p: &Plan) -> String {
    match p {
        Plan::Ignore(r) => format!("ignore:{r:?}"),
        Plan::Ensure(e) => format!("ensure:finalizer={}", e.add_finalizer),
        Plan::Reject(r) => format!("reject:{}", r.field),
        Plan::Cleanup(c) => {
            format!(
                "cleanup:{:?}:clear={}:release={}:{:?}",
                c.reason, c.clear_status, c.release_finalizer, c.ownership
            )
        }
        Plan::Conflict(_) => "conflict".into(),
    }
}

/// `s` with an address in status and, if given, portico's condition.
fn served(mut s: Service, condition_reason: Option<&str>) -> Service {
    use crate::k8s::{Condition, K8sLoadBalancerStatus, LoadBalancerIngress, Time, Timestamp};
    let status = s.status.get_or_insert_with(Default::default);
    status.load_balancer = Some(K8sLoadBalancerStatus {
        ingress: Some(vec![LoadBalancerIngress {
            ip: Some("203.0.113.9".into()),
            ..Default::default()
        }]),
    });
    status.conditions = condition_reason.map(|reason| {
        vec![Condition {
            type_: crate::status::CONDITION_TYPE.into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }]
    });
    s
}

/// `s` with portico's condition, of this reason, and no address.
fn with_condition(mut s: Service, reason: &str) -> Service {
    let served = served(s.clone(), Some(reason));
    s.status = served.status.map(|mut status| {
        status.load_balancer = None;
        status
    });
    s
}

#[test]
fn ownership_and_lifecycle() {
    let lb = || svc("default", "web").lb().port(80, 30080);
    let cases = [
        (
            "ClusterIP Service is ignored",
            svc("default", "web").port(80, 30080).build(),
            "ignore:NotLoadBalancer",
        ),
        (
            "NodePort Service is ignored",
            svc("d", "w").type_("NodePort").port(80, 30080).build(),
            "ignore:NotLoadBalancer",
        ),
        (
            "new LB Service gets the finalizer first",
            lb().build(),
            "ensure:finalizer=true",
        ),
        (
            "finalized LB Service is ensured",
            lb().finalizer(LB_FINALIZER).build(),
            "ensure:finalizer=false",
        ),
        (
            "our class is ours",
            lb().class(crate::config::DEFAULT_CLASS).build(),
            "ensure:finalizer=true",
        ),
        (
            "another class is not ours",
            lb().class("example.com/lb").build(),
            "ignore:OtherClass",
        ),
        (
            "a class-less Service the provider declines is left alone",
            lb().annotation(DECLINE_ANNOTATION, "aws-lb-controller")
                .build(),
            "ignore:OtherClass",
        ),
        (
            "our class wins over what the provider would decline",
            lb().class(crate::config::DEFAULT_CLASS)
                .annotation(DECLINE_ANNOTATION, "aws-lb-controller")
                .build(),
            "ensure:finalizer=true",
        ),
        (
            "deleted with finalizer and portico's condition is cleaned up, status kept",
            with_condition(lb().finalizer(LB_FINALIZER).deleting().build(), "Ready"),
            "cleanup:ServiceDeleted:clear=false:release=true:Claimed",
        ),
        (
            "another class's Service being deleted: only a balancer found for it goes; its finalizer stays",
            lb().class("example.com/lb")
                .finalizer(LB_FINALIZER)
                .deleting()
                .build(),
            "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
        ),
        (
            "an address portico never wrote: another controller serves it",
            served(lb().build(), None),
            "conflict",
        ),
        (
            "portico's own address and condition: ensured",
            served(lb().finalizer(LB_FINALIZER).build(), Some("Ready")),
            "ensure:finalizer=false",
        ),
        (
            "portico stood back before and the other address is still there",
            served(lb().build(), Some(CONFLICT_REASON)),
            "conflict",
        ),
        (
            "portico stood back (another controller's address) and the Service is deleted: \
             the finalizer is that controller's",
            served(
                lb().finalizer(LB_FINALIZER).deleting().build(),
                Some(CONFLICT_REASON),
            ),
            "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
        ),
        (
            "another controller's address, no condition of portico's yet, deleted",
            served(lb().finalizer(LB_FINALIZER).deleting().build(), None),
            "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
        ),
        (
            "portico stood back, then the Service left type LoadBalancer: its status and \
             finalizer stay the other controller's",
            with_condition(
                svc("default", "web")
                    .type_("ClusterIP")
                    .port(80, 30080)
                    .finalizer(LB_FINALIZER)
                    .build(),
                CONFLICT_REASON,
            ),
            "cleanup:NoLongerLoadBalancer:clear=false:release=false:IfBalancerFound",
        ),
        (
            "stood back even on portico's class: portico never added that finalizer",
            served(
                lb().class(crate::config::DEFAULT_CLASS)
                    .finalizer(LB_FINALIZER)
                    .deleting()
                    .build(),
                Some(CONFLICT_REASON),
            ),
            "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
        ),
        (
            "class-less, another load-balancer controller's own finalizer on it: theirs",
            lb().finalizer("service.k8s.aws/resources").build(),
            "conflict",
        ),
        (
            "GKE's L4 finalizers too",
            lb().finalizer("gke.networking.io/l4-netlb-v2")
                .finalizer(LB_FINALIZER)
                .build(),
            "conflict",
        ),
        (
            "a finalizer of portico's own kind alone proves nothing (portico adds it itself)",
            lb().finalizer(LB_FINALIZER).build(),
            "ensure:finalizer=false",
        ),
        (
            "portico served it before the other controller's mark appeared: still portico's",
            with_condition(
                lb().finalizer("service.k8s.aws/resources")
                    .finalizer(LB_FINALIZER)
                    .build(),
                "Ready",
            ),
            "ensure:finalizer=false",
        ),
        (
            "deleted without finalizer is ignored",
            lb().deleting().build(),
            "ignore:BeingDeletedWithoutFinalizer",
        ),
        (
            "type changed away from LB, portico's condition on it: cleaned up, status cleared",
            with_condition(
                svc("default", "web")
                    .type_("ClusterIP")
                    .port(80, 30080)
                    .finalizer(LB_FINALIZER)
                    .build(),
                "Ready",
            ),
            "cleanup:NoLongerLoadBalancer:clear=true:release=true:Claimed",
        ),
        (
            "type changed away from LB, nothing of portico's on it (the server cleared \
             whatever class it had): only a balancer found for it proves it portico's",
            svc("default", "web")
                .type_("ClusterIP")
                .port(80, 30080)
                .finalizer(LB_FINALIZER)
                .build(),
            "cleanup:NoLongerLoadBalancer:clear=true:release=true:IfBalancerFound",
        ),
        (
            "a failed ensure's condition is portico's too",
            with_condition(
                svc("default", "web")
                    .type_("ClusterIP")
                    .port(80, 30080)
                    .finalizer(LB_FINALIZER)
                    .build(),
                "ProviderError",
            ),
            "cleanup:NoLongerLoadBalancer:clear=true:release=true:Claimed",
        ),
        (
            "class-less, being deleted, nothing of portico's on it: the finalizer may be \
             another default controller's",
            lb().finalizer(LB_FINALIZER).deleting().build(),
            "cleanup:ServiceDeleted:clear=false:release=true:IfBalancerFound",
        ),
        (
            "portico's class, being deleted: the class is the proof",
            lb().class(crate::config::DEFAULT_CLASS)
                .finalizer(LB_FINALIZER)
                .deleting()
                .build(),
            "cleanup:ServiceDeleted:clear=false:release=true:Claimed",
        ),
        (
            "another class's finalized Service: our balancer goes, its status and finalizer stay",
            lb().class("example.com/lb").finalizer(LB_FINALIZER).build(),
            "cleanup:ClassChanged:clear=false:release=false:IfBalancerFound",
        ),
    ];
    for (desc, s, want) in cases {
        assert_eq!(kind(&plan_of(&s)), want, "{desc}");
    }
}

#[test]
fn classless_services_only_when_configured() {
    let s = svc("default", "web").lb().port(80, 30080).build();
    let cfg = ControllerConfig {
        claim_classless: false,
        ..config()
    };
    assert_eq!(
        kind(&plan(&s, &targets(), &cfg, &RecordingProvider::new())),
        "ignore:OtherClass"
    );
    let deleting = svc("default", "web")
        .lb()
        .port(80, 30080)
        .finalizer(LB_FINALIZER)
        .deleting()
        .build();
    assert_eq!(
        kind(&plan(
            &deleting,
            &targets(),
            &cfg,
            &RecordingProvider::new()
        )),
        "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
        "a class-less Service portico does not claim keeps its (shared) finalizer"
    );
    let left_lb = svc("default", "web")
        .type_("ClusterIP")
        .port(80, 30080)
        .finalizer(LB_FINALIZER)
        .build();
    assert_eq!(
        kind(&plan(&left_lb, &targets(), &cfg, &RecordingProvider::new())),
        "cleanup:NoLongerLoadBalancer:clear=true:release=true:IfBalancerFound",
        "after a type change only a balancer found for the key proves it was ours"
    );
}

#[test]
fn provider_validation_rejects_before_any_cloud_call() {
    let s = svc("default", "web")
        .lb()
        .port(80, 30080)
        .annotation("test.portico.io/weight", "heavy")
        .build();
    match plan_of(&s) {
        Plan::Reject(r) => {
            assert_eq!(r.field, "metadata.annotations[test.portico.io/weight]");
            assert!(r.reason.contains("heavy"), "{}", r.reason);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn no_eligible_nodes_still_ensures() {
    let s = svc("default", "web").lb().port(80, 30080).build();
    let Plan::Ensure(e) = plan(
        &s,
        &Targets::default(),
        &config(),
        &RecordingProvider::new(),
    ) else {
        panic!("expected ensure")
    };
    assert!(e.no_eligible_nodes());
}

#[test]
fn fingerprint_tracks_exactly_the_sync_fields() {
    let base = svc("default", "web").lb().port(80, 30080).build();
    let fp = sync_fingerprint(&base);
    let mut status_only = base.clone();
    status_only.status = Some(Default::default());
    status_only.metadata.resource_version = Some("42".into());
    assert_eq!(
        sync_fingerprint(&status_only),
        fp,
        "status and resourceVersion do not matter"
    );
    let finalized = svc("default", "web")
        .lb()
        .port(80, 30080)
        .finalizer(LB_FINALIZER)
        .build();
    assert_eq!(
        sync_fingerprint(&finalized),
        fp,
        "adding the finalizer does not trigger a second ensure"
    );
    assert_ne!(
        sync_fingerprint(&served(base.clone(), Some(CONFLICT_REASON))),
        fp,
        "standing back for another controller is seen"
    );
    let mut selector = base.clone();
    if let Some(spec) = selector.spec.as_mut() {
        spec.selector = Some([("app".to_string(), "x".to_string())].into());
    }
    assert_eq!(
        sync_fingerprint(&selector),
        fp,
        "selector does not matter to the balancer"
    );
    let changed = [
        ("port", svc("default", "web").lb().port(81, 30080).build()),
        (
            "annotation",
            svc("default", "web")
                .lb()
                .port(80, 30080)
                .annotation("k", "v")
                .build(),
        ),
        (
            "type",
            svc("default", "web")
                .type_("NodePort")
                .port(80, 30080)
                .build(),
        ),
        (
            "uid",
            svc("default", "web")
                .lb()
                .port(80, 30080)
                .uid("other")
                .build(),
        ),
        (
            "source ranges",
            svc("default", "web")
                .lb()
                .port(80, 30080)
                .source_range("10.0.0.0/8")
                .build(),
        ),
        (
            "traffic policy",
            svc("default", "web")
                .lb()
                .port(80, 30080)
                .local(32000)
                .build(),
        ),
        (
            "deleting",
            svc("default", "web")
                .lb()
                .port(80, 30080)
                .deleting()
                .build(),
        ),
    ];
    for (desc, s) in changed {
        assert_ne!(sync_fingerprint(&s), fp, "{desc} changes the fingerprint");
    }
}
