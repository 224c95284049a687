//! What `delete` removes, and what it gives back.

use portico_slb::provider::observe::Owned;
use portico_slb::provider::plan::{Step, Teardown, TeardownPlan, teardown};

use crate::support::*;

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
