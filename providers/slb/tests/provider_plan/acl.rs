//! Portico's ACL from `loadBalancerSourceRanges`, or the user's.

use portico_slb::cloud::model::*;
use portico_slb::provider::observe::{Found, Observed};
use portico_slb::provider::plan::{AclRef, Step, plan};

use crate::balancer::LISTENERS_FROM_SCRATCH;
use crate::support::*;

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
