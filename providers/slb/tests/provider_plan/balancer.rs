//! The balancer-level decisions: which balancer a Service uses, what may
//! change on it in place, its ACL, and what `delete` removes or gives back.

use std::collections::BTreeMap;

use portico_provider::{LoadBalancerSpec, ProviderError, tag};
use portico_slb::cloud::model::*;
use portico_slb::provider::REUSED_TAG;
use portico_slb::provider::desired::Desired;
use portico_slb::provider::observe::{Found, Observed, ObservedBalancer, Owned};
use portico_slb::provider::options::ForeignListeners;
use portico_slb::provider::plan::{
    AclRef, Balancer, Mode, Plan, Step, Teardown, TeardownPlan, plan, teardown,
};

use crate::support::{
    annotate, assert_refs_resolve, base_spec, converged_with, desired_of, key, key_marker,
    operations,
};

const ADDRESS: &str = "127.240.0.10";

fn balancer(id: &str, created_at: u64, tags: BTreeMap<String, String>) -> LoadBalancer {
    LoadBalancer {
        id: id.into(),
        name: "some-name".into(),
        address: ADDRESS.parse().expect("ip"),
        address_type: AddressType::Internet,
        spec: DEFAULT_BALANCER_SPEC.into(),
        tags,
        created_at,
    }
}

fn reused_tags() -> BTreeMap<String, String> {
    let mut tags = key().owner_tags();
    tags.insert(REUSED_TAG.into(), "true".into());
    tags
}

/// A balancer holding exactly what `d` asks, with `tags` and `acl` on its listeners.
fn holding(
    id: &str,
    created_at: u64,
    tags: BTreeMap<String, String>,
    d: &Desired,
    acl: Option<ListenerAcl>,
) -> ObservedBalancer {
    let (listeners, groups) = converged_with(&d.marker, &d.listeners, acl);
    ObservedBalancer {
        balancer: balancer(id, created_at, tags),
        listeners,
        groups,
    }
}

fn ours(id: &str, created_at: u64, d: &Desired) -> ObservedBalancer {
    holding(id, created_at, key().owner_tags(), d, None)
}

/// Someone else's balancer with one listener of theirs on port 9000.
fn bare(id: &str) -> ObservedBalancer {
    let group = BackendServerGroup {
        id: "sg-theirs".into(),
        load_balancer_id: id.into(),
        name: "theirs".into(),
        servers: Vec::new(),
    };
    let listener = Listener {
        id: "lsn-theirs".into(),
        load_balancer_id: id.into(),
        port: 9000,
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
    ObservedBalancer {
        balancer: balancer(id, 1, BTreeMap::new()),
        listeners: vec![listener],
        groups: vec![group],
    }
}

fn named(id: &str, balancer: Option<ObservedBalancer>) -> Found {
    Found::Named {
        id: id.into(),
        balancer: balancer.map(Box::new),
    }
}

/// What a plan should come to.
enum Want {
    /// Create a balancer, then make these calls.
    Create(&'static [&'static str]),
    /// Use the existing balancer `id` in `mode`, making these calls.
    Use {
        id: &'static str,
        mode: Mode,
        calls: &'static [&'static str],
    },
    /// Refuse with this kind of error, its field or subject containing this.
    Refuse(&'static str, &'static str),
}

fn check(desc: &str, got: Result<Plan, ProviderError>, want: &Want) {
    match (got, want) {
        (Ok(plan), Want::Create(calls)) => {
            assert!(
                matches!(plan.balancer, Balancer::Create(_)),
                "{desc}: {plan:?}"
            );
            assert_eq!(plan.mode, Mode::Owned, "{desc}");
            assert_eq!(operations(&plan.steps), *calls, "{desc}: {plan:?}");
            assert_refs_resolve(desc, &plan.steps);
        }
        (Ok(plan), Want::Use { id, mode, calls }) => {
            match &plan.balancer {
                Balancer::Existing(lb) => assert_eq!(lb.id, *id, "{desc}"),
                other => panic!("{desc}: expected balancer {id}, got {other:?}"),
            }
            assert_eq!(plan.mode, *mode, "{desc}");
            assert_eq!(operations(&plan.steps), *calls, "{desc}: {plan:?}");
            assert_refs_resolve(desc, &plan.steps);
        }
        (Err(err), Want::Refuse(kind, subject)) => {
            assert_eq!(err.metric_label(), *kind, "{desc}: {err}");
            let named = match &err {
                ProviderError::InvalidSpec { field, .. } => field.clone(),
                ProviderError::NotFound { what } => what.clone(),
                other => panic!("{desc}: {other:?}"),
            };
            assert!(
                named.contains(subject),
                "{desc}: {named:?} should name {subject}"
            );
        }
        (got, _) => panic!("{desc}: unexpected {got:?}"),
    }
}

const LISTENERS_FROM_SCRATCH: &[&str] = &[
    "CreateBackendServerGroup",
    "CreateBackendServerGroup",
    "CreateListener",
    "CreateListener",
];

#[test]
fn the_balancer_is_chosen_and_kept_in_line() {
    struct Case {
        desc: &'static str,
        spec: fn(&mut LoadBalancerSpec),
        found: fn(&Desired) -> Found,
        want: Want,
    }
    let keep = Mode::Reused(ForeignListeners::Keep);
    let cases = [
        Case {
            desc: "no balancer yet: create one, then its groups and listeners",
            spec: |_| {},
            found: |_| Found::Tagged(Vec::new()),
            want: Want::Create(LISTENERS_FROM_SCRATCH),
        },
        Case {
            desc: "the Service's balancer holds what the spec asks: no call",
            spec: |_| {},
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Use {
                id: "lb-1",
                mode: Mode::Owned,
                calls: &[],
            },
        },
        Case {
            desc: "several carry the Service's tags: the oldest is used",
            spec: |_| {},
            found: |d| Found::Tagged(vec![ours("lb-new", 20, d), ours("lb-old", 10, d)]),
            want: Want::Use {
                id: "lb-old",
                mode: Mode::Owned,
                calls: &[],
            },
        },
        Case {
            desc: "several of the same age: the lowest id is used",
            spec: |_| {},
            found: |d| Found::Tagged(vec![ours("lb-b", 10, d), ours("lb-a", 10, d)]),
            want: Want::Use {
                id: "lb-a",
                mode: Mode::Owned,
                calls: &[],
            },
        },
        Case {
            desc: "another size: changed in place",
            spec: |s| annotate(s, &[("spec", "slb.s3.large")]),
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Use {
                id: "lb-1",
                mode: Mode::Owned,
                calls: &["ModifyLoadBalancer"],
            },
        },
        Case {
            desc: "no size asked: the balancer's size is left alone",
            spec: |_| {},
            found: |d| {
                let mut lb = ours("lb-1", 10, d);
                lb.balancer.spec = "slb.s3.large".into();
                Found::Tagged(vec![lb])
            },
            want: Want::Use {
                id: "lb-1",
                mode: Mode::Owned,
                calls: &[],
            },
        },
        Case {
            desc: "another address by annotation: refused (no change in place)",
            spec: |s| annotate(s, &[("ip", "127.240.9.9")]),
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Refuse("invalid_spec", "spec.loadBalancerIP"),
        },
        Case {
            desc: "another loadBalancerIP: refused",
            spec: |s| s.requested_ips = vec!["127.240.9.9".parse().expect("ip")],
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Refuse("invalid_spec", "spec.loadBalancerIP"),
        },
        Case {
            desc: "the same address asked: fine",
            spec: |s| annotate(s, &[("ip", ADDRESS)]),
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Use {
                id: "lb-1",
                mode: Mode::Owned,
                calls: &[],
            },
        },
        Case {
            desc: "another address type: refused, naming the annotation",
            spec: |s| annotate(s, &[("address-type", "intranet")]),
            found: |d| Found::Tagged(vec![ours("lb-1", 10, d)]),
            want: Want::Refuse("invalid_spec", "address-type"),
        },
        Case {
            desc: "id names no balancer: not found",
            spec: |s| annotate(s, &[("id", "lb-gone")]),
            found: |_| named("lb-gone", None),
            want: Want::Refuse("not_found", "lb-gone"),
        },
        Case {
            desc: "id names another Service's balancer: refused, naming the annotation",
            spec: |s| annotate(s, &[("id", "lb-x")]),
            found: |_| {
                let mut lb = bare("lb-x");
                lb.balancer
                    .tags
                    .insert(tag::UID.into(), "someone-else".into());
                named("lb-x", Some(lb))
            },
            want: Want::Refuse("invalid_spec", "-id]"),
        },
        Case {
            desc: "id names a balancer of nobody's: tagged as the Service's, listeners added beside theirs",
            spec: |s| annotate(s, &[("id", "lb-x")]),
            found: |_| named("lb-x", Some(bare("lb-x"))),
            want: Want::Use {
                id: "lb-x",
                mode: keep,
                calls: &[
                    "ModifyLoadBalancer",
                    "CreateBackendServerGroup",
                    "CreateBackendServerGroup",
                    "CreateListener",
                    "CreateListener",
                ],
            },
        },
        Case {
            desc: "id with force-override-listeners: foreign listeners may be taken over",
            spec: |s| annotate(s, &[("id", "lb-x"), ("force-override-listeners", "true")]),
            found: |_| named("lb-x", Some(bare("lb-x"))),
            want: Want::Use {
                id: "lb-x",
                mode: Mode::Reused(ForeignListeners::Override),
                calls: &[
                    "ModifyLoadBalancer",
                    "CreateBackendServerGroup",
                    "CreateBackendServerGroup",
                    "CreateListener",
                    "CreateListener",
                ],
            },
        },
        Case {
            desc: "id, tagged and holding what the spec asks: no call",
            spec: |s| annotate(s, &[("id", "lb-x")]),
            found: |d| named("lb-x", Some(holding("lb-x", 1, reused_tags(), d, None))),
            want: Want::Use {
                id: "lb-x",
                mode: keep,
                calls: &[],
            },
        },
        Case {
            desc: "id: a reused balancer's address, type and size are not portico's to check",
            spec: |s| {
                annotate(
                    s,
                    &[
                        ("id", "lb-x"),
                        ("ip", "127.240.9.9"),
                        ("address-type", "intranet"),
                        ("spec", "slb.s3.large"),
                    ],
                )
            },
            found: |d| named("lb-x", Some(holding("lb-x", 1, reused_tags(), d, None))),
            want: Want::Use {
                id: "lb-x",
                mode: keep,
                calls: &[],
            },
        },
        Case {
            desc: "reused before, id since removed: still only added to, nothing of it deleted",
            spec: |s| {
                s.listeners.remove(0);
            },
            found: |_| {
                let full = desired_of(&base_spec());
                Found::Tagged(vec![holding("lb-x", 1, reused_tags(), &full, None)])
            },
            want: Want::Use {
                id: "lb-x",
                mode: keep,
                calls: &[],
            },
        },
    ];
    for case in cases {
        let mut spec = base_spec();
        (case.spec)(&mut spec);
        let d = desired_of(&spec);
        let observed = Observed {
            found: (case.found)(&d),
            acls: Vec::new(),
        };
        check(case.desc, plan(&observed, &d), &case.want);
    }
}

#[test]
fn a_new_balancer_is_made_as_the_spec_asks() {
    let mut spec = base_spec();
    annotate(
        &mut spec,
        &[
            ("ip", "127.240.9.9"),
            ("address-type", "intranet"),
            ("spec", "slb.s2.small"),
        ],
    );
    let d = desired_of(&spec);
    let observed = Observed {
        found: Found::Tagged(Vec::new()),
        acls: Vec::new(),
    };
    let plan = plan(&observed, &d).expect("plan");
    assert_eq!(
        plan.balancer,
        Balancer::Create(CreateLoadBalancerRequest {
            name: key().cloud_name("portico", 80),
            address_type: AddressType::Intranet,
            spec: Some("slb.s2.small".into()),
            address: Some("127.240.9.9".parse().expect("ip")),
            tags: key().owner_tags(),
        })
    );
}

#[test]
fn a_reused_balancer_gets_only_the_tags_it_lacks() {
    let mut spec = base_spec();
    annotate(&mut spec, &[("id", "lb-x")]);
    let d = desired_of(&spec);
    let mut lb = bare("lb-x");
    // Half-tagged by an ensure that stopped midway.
    lb.balancer.tags = BTreeMap::from([
        (tag::UID.to_string(), key().uid),
        ("team".to_string(), "payments".to_string()),
    ]);
    let observed = Observed {
        found: named("lb-x", Some(lb)),
        acls: Vec::new(),
    };
    let plan = plan(&observed, &d).expect("plan");
    let mut want = reused_tags();
    want.remove(tag::UID);
    assert_eq!(plan.steps[0], Step::TagBalancer { tags: want });
}

fn acl(id: &str, cidrs: &[&str]) -> Acl {
    Acl {
        id: id.into(),
        name: key_marker(),
        entries: cidrs
            .iter()
            .map(|c| AclEntry::new(c.parse().expect("cidr")))
            .collect(),
        tags: key().owner_tags(),
    }
}

fn whitelist(id: &str) -> Option<ListenerAcl> {
    Some(ListenerAcl {
        acl_id: id.into(),
        mode: AclMode::White,
    })
}

#[test]
fn source_ranges_become_portico_s_acl() {
    struct Case {
        desc: &'static str,
        ranges: &'static [&'static str],
        annotations: &'static [(&'static str, &'static str)],
        /// The ACL the listeners carry now.
        on_listeners: Option<ListenerAcl>,
        acls: Vec<Acl>,
        calls: &'static [&'static str],
        attached: Option<AclRef>,
    }
    let cases = [
        Case {
            desc: "no ranges, no ACL: no call",
            ranges: &[],
            annotations: &[],
            on_listeners: None,
            acls: Vec::new(),
            calls: &[],
            attached: None,
        },
        Case {
            desc: "ranges removed: listeners drop the ACL first, then it is deleted",
            ranges: &[],
            annotations: &[],
            on_listeners: whitelist("acl-1"),
            acls: vec![acl("acl-1", &["10.0.0.0/8"])],
            calls: &["ModifyListener", "ModifyListener", "DeleteAcl"],
            attached: None,
        },
        Case {
            desc: "first ranges: the ACL is created before the listeners point at it",
            ranges: &["10.0.0.0/8"],
            annotations: &[],
            on_listeners: None,
            acls: Vec::new(),
            calls: &["CreateAcl", "ModifyListener", "ModifyListener"],
            attached: Some(AclRef::Created),
        },
        Case {
            desc: "the same ranges in another order, one repeated: no call",
            ranges: &["192.168.0.0/16", "10.0.0.0/8", "192.168.0.0/16"],
            annotations: &[],
            on_listeners: whitelist("acl-1"),
            acls: vec![acl("acl-1", &["10.0.0.0/8", "192.168.0.0/16"])],
            calls: &[],
            attached: Some(AclRef::Existing(ListenerAcl {
                acl_id: "acl-1".into(),
                mode: AclMode::White,
            })),
        },
        Case {
            desc: "ranges changed: the ACL is rewritten in place, listeners untouched",
            ranges: &["10.0.0.0/8", "172.16.0.0/12"],
            annotations: &[],
            on_listeners: whitelist("acl-1"),
            acls: vec![acl("acl-1", &["10.0.0.0/8"])],
            calls: &["ModifyAcl"],
            attached: Some(AclRef::Existing(ListenerAcl {
                acl_id: "acl-1".into(),
                mode: AclMode::White,
            })),
        },
        Case {
            desc: "several of portico's ACLs: the first is the Service's, the rest wait for delete",
            ranges: &["10.0.0.0/8"],
            annotations: &[],
            on_listeners: whitelist("acl-1"),
            acls: vec![acl("acl-1", &["10.0.0.0/8"]), acl("acl-2", &["10.0.0.0/8"])],
            calls: &[],
            attached: Some(AclRef::Existing(ListenerAcl {
                acl_id: "acl-1".into(),
                mode: AclMode::White,
            })),
        },
        Case {
            desc: "a user's ACL: attached as configured, portico's own left alone",
            ranges: &[],
            annotations: &[
                ("acl-status", "on"),
                ("acl-id", "acl-user"),
                ("acl-type", "black"),
            ],
            on_listeners: whitelist("acl-1"),
            acls: vec![acl("acl-1", &["10.0.0.0/8"])],
            calls: &["ModifyListener", "ModifyListener"],
            attached: Some(AclRef::Existing(ListenerAcl {
                acl_id: "acl-user".into(),
                mode: AclMode::Black,
            })),
        },
    ];
    for case in cases {
        let mut spec = base_spec();
        annotate(&mut spec, case.annotations);
        spec.source_ranges = case
            .ranges
            .iter()
            .map(|r| r.parse().expect("cidr"))
            .collect();
        let d = desired_of(&spec);
        let observed = Observed {
            found: Found::Tagged(vec![holding(
                "lb-1",
                1,
                key().owner_tags(),
                &d,
                case.on_listeners.clone(),
            )]),
            acls: case.acls.clone(),
        };
        let plan = plan(&observed, &d).unwrap_or_else(|e| panic!("{}: {e}", case.desc));
        assert_eq!(
            operations(&plan.steps),
            case.calls,
            "{}: {:?}",
            case.desc,
            plan.steps
        );
        assert_refs_resolve(case.desc, &plan.steps);
        for step in &plan.steps {
            if let Step::UpdateListener { settings, .. } = step {
                assert_eq!(settings.acl, case.attached, "{}", case.desc);
            }
        }
    }
}

#[test]
fn portico_s_acl_is_made_with_the_service_s_name_and_tags() {
    let mut spec = base_spec();
    spec.source_ranges = vec![
        "192.168.0.0/16".parse().expect("cidr"),
        "10.0.0.0/8".parse().expect("cidr"),
        "10.0.0.0/8".parse().expect("cidr"),
    ];
    let d = desired_of(&spec);
    let observed = Observed {
        found: Found::Tagged(Vec::new()),
        acls: Vec::new(),
    };
    let plan = plan(&observed, &d).expect("plan");
    assert_eq!(
        plan.steps[0],
        Step::CreateAcl(CreateAclRequest {
            name: key_marker(),
            entries: vec![
                AclEntry::new("10.0.0.0/8".parse().expect("cidr")),
                AclEntry::new("192.168.0.0/16".parse().expect("cidr")),
            ],
            tags: key().owner_tags(),
        }),
        "sorted, each range once"
    );
    assert_eq!(
        operations(&plan.steps[1..]),
        LISTENERS_FROM_SCRATCH,
        "then a new balancer's groups and listeners, carrying it"
    );
}

#[test]
fn delete_removes_what_portico_made_and_gives_back_what_it_reused() {
    let d = desired_of(&base_spec());
    let untag: Vec<String> = reused_tags().into_keys().collect();
    let release = |id: &str| Teardown::Release {
        balancer_id: id.into(),
        steps: vec![
            Step::DeleteListener {
                listener_id: "lsn-0".into(),
            },
            Step::DeleteListener {
                listener_id: "lsn-1".into(),
            },
            Step::DeleteGroup {
                group_id: "sg-0".into(),
            },
            Step::DeleteGroup {
                group_id: "sg-1".into(),
            },
        ],
        untag: untag.clone(),
    };
    let reused_with_theirs = |id: &str, created_at| {
        let mut lb = holding(id, created_at, reused_tags(), &d, None);
        let theirs = bare(id);
        lb.listeners.extend(theirs.listeners);
        lb.groups.extend(theirs.groups);
        lb
    };
    let cases = [
        (
            "nothing owned: nothing to do",
            Owned::default(),
            TeardownPlan::default(),
        ),
        (
            "made by portico: deleted whole",
            Owned {
                balancers: vec![ours("lb-1", 1, &d)],
                acls: Vec::new(),
            },
            TeardownPlan {
                balancers: vec![Teardown::Delete {
                    balancer_id: "lb-1".into(),
                }],
                acls: Vec::new(),
            },
        ),
        (
            "reused: portico's listeners and groups go, then its tags; theirs stay",
            Owned {
                balancers: vec![reused_with_theirs("lb-x", 1)],
                acls: Vec::new(),
            },
            TeardownPlan {
                balancers: vec![release("lb-x")],
                acls: Vec::new(),
            },
        ),
        (
            "several balancers oldest first, then every ACL of portico's",
            Owned {
                balancers: vec![reused_with_theirs("lb-new", 20), ours("lb-old", 10, &d)],
                acls: vec![acl("acl-1", &[]), acl("acl-2", &[])],
            },
            TeardownPlan {
                balancers: vec![
                    Teardown::Delete {
                        balancer_id: "lb-old".into(),
                    },
                    release("lb-new"),
                ],
                acls: vec!["acl-1".into(), "acl-2".into()],
            },
        ),
    ];
    for (desc, owned, want) in cases {
        assert_eq!(teardown(&key(), &d.marker, &owned), want, "{desc}");
    }
}
