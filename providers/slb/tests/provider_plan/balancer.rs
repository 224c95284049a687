//! Which balancer a Service uses and what may change on it in place.

use std::collections::BTreeMap;

use portico_provider::{LoadBalancerSpec, ProviderError, tag};
use portico_slb::cloud::model::*;
use portico_slb::provider::desired::Desired;
use portico_slb::provider::observe::{Found, Observed};
use portico_slb::provider::options::ForeignListeners;
use portico_slb::provider::plan::{Balancer, Mode, Plan, Step, plan};

use crate::support::*;

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

pub const LISTENERS_FROM_SCRATCH: &[&str] = &[
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
