//! Groups, backends and listeners on one balancer: which calls turn what
//! is on it into the wanted listeners.

use portico_provider::{
    Annotations, HealthCheck as SpecHealthCheck, Listener as SpecListener, LoadBalancerSpec,
    Protocol, ProviderError, SessionAffinity,
};
use portico_slb::cloud::model::*;
use portico_slb::provider::desired::DesiredListener;
use portico_slb::provider::options::{ForeignListeners, PREFIX};
use portico_slb::provider::plan::{
    GroupRef, Mode, PlannedSettings, Step, group_name, listener_steps, release_steps, server_diff,
};

use crate::support::{
    MARK, assert_refs_resolve, base_spec, converged, desired, operations, server, target,
};

const MODES: [Mode; 3] = [
    Mode::Owned,
    Mode::Reused(ForeignListeners::Override),
    Mode::Reused(ForeignListeners::Keep),
];

#[test]
fn desired_listeners_follow_the_spec() {
    let spec = base_spec();
    let want = desired(&spec);
    assert_eq!(want.len(), 2);
    let udp = &want[0];
    assert_eq!((udp.port, udp.protocol), (53, ListenerProtocol::Udp));
    assert_eq!(
        udp.servers,
        vec![
            BackendServer {
                description: "a".into(),
                ..server("10.0.0.1", 30053)
            },
            BackendServer {
                description: "b".into(),
                ..server("10.0.0.2", 30053)
            },
        ],
        "IPv4 address of each target at the node port; IPv6-only nodes skipped"
    );
    assert!(
        !udp.health_check.enabled,
        "a TCP connect cannot check a UDP port"
    );
    let tcp = &want[1];
    assert!(tcp.health_check.enabled);
    assert_eq!(tcp.health_check.kind, HealthCheckType::Tcp);
    assert_eq!(tcp.health_check.port, None);
    assert_eq!(tcp.sticky_session, None);
}

#[test]
fn health_checks_and_annotations_shape_the_listener() {
    type Check = fn(&DesiredListener) -> bool;
    type Case<'a> = (
        &'a str,
        Option<SpecHealthCheck>,
        &'a [(&'a str, &'a str)],
        SessionAffinity,
        Check,
    );
    let cases: &[Case<'_>] = &[
        (
            "local policy: http to the health check node port",
            Some(SpecHealthCheck::Http {
                port: 32000,
                path: "/healthz".into(),
            }),
            &[],
            SessionAffinity::None,
            |d| {
                d.health_check.kind == HealthCheckType::Http
                    && d.health_check.port == Some(32000)
                    && d.health_check.path.as_deref() == Some("/healthz")
            },
        ),
        (
            "http annotation without a port probes the node port",
            None,
            &[("health-check-type", "http")],
            SessionAffinity::None,
            |d| d.health_check.port == Some(30080) && d.health_check.path.as_deref() == Some("/"),
        ),
        (
            "annotation port and uri win",
            Some(SpecHealthCheck::Http {
                port: 32000,
                path: "/healthz".into(),
            }),
            &[
                ("health-check-connect-port", "8080"),
                ("health-check-uri", "/ok"),
            ],
            SessionAffinity::None,
            |d| d.health_check.port == Some(8080) && d.health_check.path.as_deref() == Some("/ok"),
        ),
        (
            "timings",
            None,
            &[
                ("health-check-interval", "10"),
                ("health-check-timeout", "20"),
                ("healthy-threshold", "4"),
                ("unhealthy-threshold", "5"),
            ],
            SessionAffinity::None,
            |d| {
                let h = &d.health_check;
                (
                    h.interval_seconds,
                    h.timeout_seconds,
                    h.healthy_threshold,
                    h.unhealthy_threshold,
                ) == (10, 20, 4, 5)
            },
        ),
        (
            "weight and scheduler",
            None,
            &[("weight", "30"), ("scheduler", "wlc")],
            SessionAffinity::None,
            |d| d.servers.iter().all(|s| s.weight == 30) && d.scheduler == SchedulerKind::Wlc,
        ),
        (
            "session affinity sticks",
            None,
            &[],
            SessionAffinity::ClientIp {
                timeout_seconds: 10800,
            },
            |d| {
                d.sticky_session
                    == Some(StickySession {
                        timeout_seconds: 10800,
                    })
            },
        ),
        (
            "persistence annotation overrides affinity",
            None,
            &[("persistence-timeout", "0")],
            SessionAffinity::ClientIp {
                timeout_seconds: 10800,
            },
            |d| d.sticky_session.is_none(),
        ),
    ];
    for (desc, hc, annotations, affinity, check) in cases {
        let mut spec = base_spec();
        spec.listeners.retain(|l| l.protocol == Protocol::Tcp);
        if let Some(hc) = hc {
            spec.health_check = hc.clone();
        }
        spec.session_affinity = *affinity;
        spec.annotations = Annotations::new(
            annotations
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                .collect(),
        );
        let want = desired(&spec);
        assert!(check(&want[0]), "{desc}: {:?}", want[0]);
    }
}

/// A node labelled `portico.io/slb-drain` (any value but a Go `ParseBool`
/// false) gets weight 0 on every listener; other nodes keep the
/// Service's weight.
#[test]
fn a_drained_node_is_weighted_to_zero() {
    use portico_slb::provider::options::DRAIN_NODE_LABEL;
    let cases = [
        ("true", 0),
        ("yes", 0),
        ("", 0),
        ("false", 40),
        ("F", 40),
        ("0", 40),
    ];
    for (value, want) in cases {
        let mut spec = base_spec();
        spec.annotations = Annotations::new([(format!("{PREFIX}weight"), "40".to_string())].into());
        let mut targets: Vec<_> = spec.targets.iter().cloned().collect();
        targets[1]
            .labels
            .insert(DRAIN_NODE_LABEL.into(), value.into());
        spec.targets = targets.into();
        for l in desired(&spec) {
            let weights: Vec<(String, u32)> = l
                .servers
                .iter()
                .map(|s| (s.description.clone(), s.weight))
                .collect();
            assert_eq!(
                weights,
                [("a".to_string(), 40), ("b".to_string(), want)],
                "label value {value:?}"
            );
        }
    }
}

#[test]
fn creates_everything_on_an_empty_balancer() {
    let want = desired(&base_spec());
    let actions = listener_steps(Mode::Owned, MARK, &want, None, &[], &[]).expect("plan");
    assert_refs_resolve("empty balancer", &actions);
    assert_eq!(
        operations(&actions),
        [
            "CreateBackendServerGroup",
            "CreateBackendServerGroup",
            "CreateListener",
            "CreateListener"
        ]
    );
    match &actions[2] {
        Step::CreateListener {
            settings:
                PlannedSettings {
                    group: GroupRef::Created(name),
                    description,
                    acl: None,
                    ..
                },
            ..
        } => {
            assert_eq!(name, &group_name(MARK, 53, ListenerProtocol::Udp));
            assert_eq!(description, MARK);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn converged_state_needs_no_call() {
    for mode in MODES {
        let want = desired(&base_spec());
        let (listeners, groups) = converged(&want);
        let actions = listener_steps(mode, MARK, &want, None, &listeners, &groups).expect("plan");
        assert!(actions.is_empty(), "{mode:?}: {actions:?}");
    }
}

#[test]
fn changes_make_only_the_needed_calls_in_a_safe_order() {
    struct Case {
        desc: &'static str,
        change: fn(&mut LoadBalancerSpec),
        want: &'static [&'static str],
    }
    let cases = [
        Case {
            desc: "node port change: new backends before old ones go, listener in place",
            change: |s| s.listeners[1].node_port = 31080,
            want: &["AddBackendServers", "RemoveBackendServers"],
        },
        Case {
            desc: "a node joins",
            change: |s| {
                s.targets = s
                    .targets
                    .iter()
                    .cloned()
                    .chain([target("c", &["10.0.0.3"])])
                    .collect()
            },
            want: &["AddBackendServers", "AddBackendServers"],
        },
        Case {
            desc: "a node leaves",
            change: |s| s.targets = s.targets[1..].into(),
            want: &["RemoveBackendServers", "RemoveBackendServers"],
        },
        Case {
            desc: "health check changes in place",
            change: |s| {
                s.health_check = SpecHealthCheck::Http {
                    port: 32000,
                    path: "/healthz".into(),
                }
            },
            want: &["ModifyListener", "ModifyListener"],
        },
        Case {
            desc: "a listener goes: listener then its group",
            change: |s| {
                s.listeners.remove(0);
            },
            want: &["DeleteListener", "DeleteBackendServerGroup"],
        },
        Case {
            desc: "a listener comes",
            change: |s| {
                s.listeners.push(SpecListener {
                    port: 443,
                    protocol: Protocol::Tcp,
                    node_port: 30443,
                    name: None,
                })
            },
            want: &["CreateBackendServerGroup", "CreateListener"],
        },
        Case {
            desc: "weight change updates servers in place",
            change: |s| {
                s.annotations =
                    Annotations::new([(format!("{PREFIX}weight"), "50".to_string())].into())
            },
            want: &["AddBackendServers", "AddBackendServers"],
        },
    ];
    for case in cases {
        let spec = base_spec();
        let (listeners, groups) = converged(&desired(&spec));
        let mut changed = spec.clone();
        (case.change)(&mut changed);
        let actions = listener_steps(
            Mode::Owned,
            MARK,
            &desired(&changed),
            None,
            &listeners,
            &groups,
        )
        .expect("plan");
        assert_eq!(
            operations(&actions),
            case.want,
            "{}: {actions:?}",
            case.desc
        );
        assert_refs_resolve(case.desc, &actions);
    }
}

#[test]
fn server_diff_adds_before_removing() {
    let have = vec![server("10.0.0.1", 30080), server("10.0.0.2", 30080)];
    let mut heavier = server("10.0.0.2", 30080);
    heavier.weight = 10;
    let want = vec![heavier.clone(), server("10.0.0.3", 30080)];
    let (add, remove) = server_diff(&have, &want);
    assert_eq!(add, vec![heavier, server("10.0.0.3", 30080)]);
    assert_eq!(remove, vec![server("10.0.0.1", 30080)]);
}

#[test]
fn leftovers_of_a_crash_are_reused_or_collected() {
    let want = desired(&base_spec());
    let (_, mut groups) = converged(&want);
    // Groups exist but the listeners were never made; plus a stray group of ours.
    groups.push(BackendServerGroup {
        id: "sg-stray".into(),
        load_balancer_id: "lb-1".into(),
        name: group_name(MARK, 8080, ListenerProtocol::Tcp),
        servers: vec![],
    });
    let actions = listener_steps(Mode::Owned, MARK, &want, None, &[], &groups).expect("plan");
    assert_eq!(
        operations(&actions),
        [
            "CreateListener",
            "CreateListener",
            "DeleteBackendServerGroup"
        ]
    );
    assert!(
        matches!(&actions[0], Step::CreateListener { settings, .. } if settings.group == GroupRef::Id("sg-0".into()))
    );
    assert!(matches!(&actions[2], Step::DeleteGroup { group_id } if group_id == "sg-stray"));
}

fn foreign_listener(port: u16) -> (Listener, BackendServerGroup) {
    let group = BackendServerGroup {
        id: format!("sg-foreign-{port}"),
        load_balancer_id: "lb-1".into(),
        name: "theirs".into(),
        servers: vec![server("10.9.9.9", 31000)],
    };
    let listener = Listener {
        id: format!("lsn-foreign-{port}"),
        load_balancer_id: "lb-1".into(),
        port,
        protocol: ListenerProtocol::Tcp,
        settings: ListenerSettings {
            backend_server_group_id: group.id.clone(),
            health_check: HealthCheck::default(),
            scheduler: SchedulerKind::Wrr,
            acl: None,
            sticky_session: None,
            description: "made by hand".into(),
        },
    };
    (listener, group)
}

#[test]
fn reused_balancers_keep_what_is_not_ours() {
    let want = desired(&base_spec());
    let (clash, clash_group) = foreign_listener(80);
    let (other, other_group) = foreign_listener(9000);
    let listeners = vec![clash.clone(), other.clone()];
    let groups = vec![clash_group, other_group];

    let keep = Mode::Reused(ForeignListeners::Keep);
    let take_over = Mode::Reused(ForeignListeners::Override);
    let err = listener_steps(keep, MARK, &want, None, &listeners, &groups).expect_err("clash");
    match err {
        ProviderError::InvalidSpec { field, .. } => {
            assert!(field.contains("force-override-listeners"), "{field}")
        }
        other => panic!("{other:?}"),
    }

    let actions = listener_steps(take_over, MARK, &want, None, &listeners, &groups).expect("plan");
    assert_eq!(
        operations(&actions),
        [
            "CreateBackendServerGroup",
            "CreateBackendServerGroup",
            "CreateListener",
            "ModifyListener"
        ],
        "the clashing listener is taken over in place with our own group; nothing of theirs is deleted: {actions:?}"
    );
    assert!(
        matches!(&actions[3], Step::UpdateListener { listener_id, settings }
        if listener_id == &clash.id && settings.description == MARK && matches!(settings.group, GroupRef::Created(_)))
    );

    // Without clashes, add-only adds and leaves the rest alone.
    let actions = listener_steps(
        keep,
        MARK,
        &want,
        None,
        std::slice::from_ref(&other),
        &groups[1..],
    )
    .expect("plan");
    assert_eq!(
        operations(&actions),
        [
            "CreateBackendServerGroup",
            "CreateBackendServerGroup",
            "CreateListener",
            "CreateListener"
        ]
    );

    // Deleting the Service removes only portico's listeners and groups.
    let (mut ours, our_groups) = converged(&want);
    ours.push(other);
    let mut all_groups = our_groups;
    all_groups.extend(groups);
    let actions = release_steps(MARK, &ours, &all_groups);
    assert_eq!(
        actions,
        vec![
            Step::DeleteListener {
                listener_id: "lsn-0".into()
            },
            Step::DeleteListener {
                listener_id: "lsn-1".into()
            },
            Step::DeleteGroup {
                group_id: "sg-0".into()
            },
            Step::DeleteGroup {
                group_id: "sg-1".into()
            },
        ]
    );
}
