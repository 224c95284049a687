//! Table tests of `plan.rs` (kept apart so the module reads as its logic).

use super::*;
use crate::desired::CheckPort;
use crate::options::HealthProtocol;
use crate::security::Peer;
use portico_provider::{Annotations, HealthCheck, LoadBalancerSpec, Protocol};
use std::collections::BTreeSet;

use crate::test_fixtures::{desired, listener, spec};

/// What AWS would report after carrying out `desired` on a fresh NLB.
fn converged(d: &Desired) -> Observed {
    let mut o = Observed::fresh(
        ObservedLb {
            arn: "arn:lb".into(),
            name: d.name.clone(),
            dns_name: "lb.example".into(),
            scheme: Some("internet-facing".into()),
            ip_address_type: Some("ipv4".into()),
            vpc_id: Some("vpc-1".into()),
            security_groups: vec!["sg-backend".into(), "sg-own".into()],
        },
        d.tags.clone(),
        ObservedSecurity {
            own: Some(OwnGroup {
                id: "sg-own".into(),
                rules: d.security.frontend.clone(),
            }),
            user_groups: Vec::new(),
            node_rules: BTreeMap::from([(
                "sg-nodes".to_string(),
                security::backend_rules("sg-own", &d.security.own_node_ports()),
            )]),
            backend: Some("sg-backend".into()),
            shared_rules: BTreeMap::from([(
                "sg-nodes".to_string(),
                security::shared_backend_rules("sg-backend", d.security.node_port_range),
            )]),
            foreign_rules: BTreeMap::new(),
            node_groups: ["sg-nodes".to_string()].into(),
        },
    );
    o.security.node_rules.retain(|_, rules| !rules.is_empty());
    o.lb_attributes = d.lb_attributes.clone();
    for g in &d.groups {
        let arn = format!("arn:tg/{}", g.name);
        o.groups.push(ObservedGroup {
            arn: arn.clone(),
            name: g.name.clone(),
            health: ObservedHealth {
                protocol: Some(g.health.protocol.as_str().into()),
                port: Some(g.health.port_string()),
                path: g.health.path.clone(),
                success_codes: g.health.success_codes.clone(),
                interval: Some(g.health.interval),
                timeout: Some(g.health.timeout),
                healthy: Some(g.health.healthy),
                unhealthy: Some(g.health.unhealthy),
            },
            targets: g.targets.clone(),
            tags: d.tags.clone(),
            attributes: d.group_attributes.clone(),
        });
        o.listeners.push(ObservedListener {
            arn: format!("arn:listener/{}", g.port),
            port: g.port,
            protocol: g.listener.as_str().into(),
            target_group_arn: Some(arn),
            certificate: g.tls.as_ref().map(|t| t.certificate.clone()),
            ssl_policy: g.tls.as_ref().map(|t| t.policy.clone()),
            alpn: g.tls.as_ref().and_then(|t| t.alpn.clone()),
        });
    }
    o
}

fn ops(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(Step::operation).collect()
}

#[test]
fn fresh_nlb_plan_creates_groups_registers_and_listens() {
    let s = spec(
        vec![
            listener(80, Protocol::Tcp, 30080),
            listener(53, Protocol::Udp, 30053),
        ],
        2,
    );
    let d = desired(&s);
    let mut fresh = converged(&d);
    fresh.groups.clear();
    fresh.listeners.clear();
    fresh.security.node_rules.clear();
    fresh.security.shared_rules.clear();
    if let Some(own) = fresh.security.own.as_mut() {
        own.rules.clear();
    }
    let steps = plan(&fresh, &d);
    assert_eq!(
        ops(&steps),
        [
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:AuthorizeSecurityGroupIngress",
            "CreateTargetGroup",
            "CreateTargetGroup",
            "RegisterTargets",
            "RegisterTargets",
            "CreateListener",
            "CreateListener"
        ]
    );
}

#[test]
fn converged_state_plans_nothing() {
    let mut s = spec(
        vec![
            listener(80, Protocol::Tcp, 30080),
            listener(53, Protocol::Udp, 30053),
        ],
        3,
    );
    s.annotations = Annotations::new(
        [
            (
                "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags",
                "team=web",
            ),
            (
                "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled",
                "true",
            ),
            (
                "service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol",
                "http",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let d = desired(&s);
    assert_eq!(plan(&converged(&d), &d), vec![]);
}

#[test]
fn target_changes_batch_by_100_register_first() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 250);
    let d = desired(&s);
    let mut o = converged(&d);
    // 250 desired; AWS has 0..50 and 300..420 (120 to go, 200 to add).
    o.groups[0].targets = (0..50)
        .chain(300..420)
        .map(|i| format!("i-{i:05x}"))
        .collect();
    let steps = plan(&o, &d);
    assert_eq!(
        ops(&steps),
        [
            "RegisterTargets",
            "RegisterTargets",
            "DeregisterTargets",
            "DeregisterTargets"
        ]
    );
    let sizes: Vec<usize> = steps
        .iter()
        .map(|s| match s {
            Step::Register { ids, .. } | Step::Deregister { ids, .. } => ids.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, [100, 100, 100, 20]);
}

#[test]
fn health_change_modifies_the_group_only() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 2);
    let d = desired(&s);
    let o = converged(&d);
    let mut local = s.clone();
    local.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    let steps = plan(&o, &desired(&local));
    assert_eq!(
        ops(&steps),
        ["ModifyTargetGroup"],
        "the shared rules already let the NLBs reach every NodePort"
    );
    match &steps[0] {
        Step::ModifyHealth { health, .. } => {
            assert_eq!(health.protocol, HealthProtocol::Http);
            assert_eq!(health.port_string(), "32000");
            assert_eq!(health.path.as_deref(), Some("/healthz"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn node_port_change_replaces_the_group_behind_the_listener() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 2);
    let o = converged(&desired(&s));
    let moved = spec(vec![listener(80, Protocol::Tcp, 31080)], 2);
    let steps = plan(&o, &desired(&moved));
    assert_eq!(
        ops(&steps),
        [
            "CreateTargetGroup",
            "RegisterTargets",
            "ModifyListener",
            "DeleteTargetGroup"
        ],
        "no node rule changes: the shared rules cover the new NodePort"
    );
}

#[test]
fn protocol_change_to_tcp_udp_modifies_the_listener() {
    let s = spec(vec![listener(53, Protocol::Udp, 30053)], 1);
    let o = converged(&desired(&s));
    let both = spec(
        vec![
            listener(53, Protocol::Tcp, 30053),
            listener(53, Protocol::Udp, 30053),
        ],
        1,
    );
    let steps = plan(&o, &desired(&both));
    assert_eq!(
        ops(&steps),
        [
            "ec2:AuthorizeSecurityGroupIngress",
            "CreateTargetGroup",
            "RegisterTargets",
            "ModifyListener",
            "DeleteTargetGroup"
        ],
        "TCP opened to clients on the own group; the nodes' shared rules cover it"
    );
    assert!(matches!(
        &steps[3],
        Step::ModifyListener {
            protocol: TgProtocol::TcpUdp,
            ..
        }
    ));
}

#[test]
fn removed_port_deletes_listener_then_group() {
    let s = spec(
        vec![
            listener(80, Protocol::Tcp, 30080),
            listener(443, Protocol::Tcp, 30443),
        ],
        1,
    );
    let o = converged(&desired(&s));
    let fewer = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    assert_eq!(
        ops(&plan(&o, &desired(&fewer))),
        [
            "DeleteListener",
            "DeleteTargetGroup",
            "ec2:RevokeSecurityGroupIngress"
        ],
        "the port closes to clients on the own group once nothing listens"
    );
}

#[test]
fn duplicate_listeners_from_an_emulator_are_cleaned() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let d = desired(&s);
    let mut o = converged(&d);
    let mut dup = o.listeners[0].clone();
    dup.arn = "arn:listener/zz".into();
    o.listeners.push(dup);
    assert_eq!(ops(&plan(&o, &d)), ["DeleteListener"]);
}

#[test]
fn tags_diff_keeps_foreign_tags() {
    let with = |tags: &str| {
        let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
        s.annotations = Annotations::new(
            [(
                "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags".to_string(),
                tags.to_string(),
            )]
            .into_iter()
            .collect(),
        );
        desired(&s)
    };
    let before = with("team=web,env=prod");
    let mut o = converged(&before);
    o.tags.insert("someone-else".into(), "x".into());
    let after = with("team=api");
    let steps = plan(&o, &after);
    let lb_steps: Vec<&Step> = steps
        .iter()
        .filter(|s| {
            matches!(s, Step::AddTags { resource: GroupRef::Arn(a), .. }
                | Step::RemoveTags { resource: GroupRef::Arn(a), .. } if a == "arn:lb")
        })
        .collect();
    assert_eq!(lb_steps.len(), 2, "{steps:?}");
    match lb_steps[0] {
        Step::AddTags { tags, .. } => {
            assert_eq!(tags.get("team").map(String::as_str), Some("api"));
            assert_eq!(
                tags.get(names::TAG_ADDITIONAL_KEYS).map(String::as_str),
                Some("team")
            );
        }
        other => panic!("{other:?}"),
    }
    match lb_steps[1] {
        Step::RemoveTags { keys, .. } => assert_eq!(keys, &vec!["env".to_string()]),
        other => panic!("{other:?}"),
    }
}

fn with_annotations(mut s: LoadBalancerSpec, pairs: &[(&str, &str)]) -> LoadBalancerSpec {
    s.annotations = Annotations::new(
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    format!("service.beta.kubernetes.io/aws-load-balancer-{k}"),
                    v.to_string(),
                )
            })
            .collect(),
    );
    s
}

fn rules_of<'a>(steps: &'a [Step], op: &str, on: &str) -> Vec<&'a Rule> {
    steps
        .iter()
        .filter(|s| s.operation() == op)
        .flat_map(|s| match s {
            Step::Authorize { group, rules, .. } | Step::Revoke { group, rules, .. }
                if group == on =>
            {
                rules.iter().collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn source_range_change_touches_the_own_group_only() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let o = converged(&desired(&s));
    let mut narrowed = s.clone();
    narrowed.source_ranges = vec!["203.0.113.0/24".parse().expect("cidr")];
    let steps = plan(&o, &desired(&narrowed));
    assert_eq!(
        ops(&steps),
        [
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:RevokeSecurityGroupIngress"
        ]
    );
    let added = rules_of(&steps, "ec2:AuthorizeSecurityGroupIngress", "sg-own");
    assert_eq!(
        added,
        [&Rule::port(
            "tcp",
            80,
            Peer::Cidr("203.0.113.0/24".parse().expect("cidr"))
        )]
    );
    let removed = rules_of(&steps, "ec2:RevokeSecurityGroupIngress", "sg-own");
    assert_eq!(
        removed,
        [&Rule::port(
            "tcp",
            80,
            Peer::Cidr("0.0.0.0/0".parse().expect("cidr"))
        )]
    );
}

#[test]
fn nodes_in_a_new_group_get_the_shared_rules_and_the_old_group_keeps_them() {
    let s = spec(vec![listener(53, Protocol::Udp, 30053)], 1);
    let d = desired(&s);
    let shared = security::shared_backend_rules("sg-backend", d.security.node_port_range);
    let mut o = converged(&d);
    o.security.node_groups = ["sg-nodes-2".to_string()].into();
    let steps = plan(&o, &d);
    assert_eq!(ops(&steps), ["ec2:AuthorizeSecurityGroupIngress"]);
    assert_eq!(
        rules_of(&steps, "ec2:AuthorizeSecurityGroupIngress", "sg-nodes-2"),
        shared.iter().collect::<Vec<_>>(),
        "TCP and UDP on the NodePort range and kube-proxy's health port, from the backend group"
    );
    assert!(
        rules_of(&steps, "ec2:RevokeSecurityGroupIngress", "sg-nodes").is_empty(),
        "other NLBs (other nodes) may still need the old group's shared rules"
    );
    assert!(matches!(
        &steps[0],
        Step::Authorize {
            scope: RuleScope::Cluster,
            ..
        }
    ));
    // Drift: someone removed one rule; only it comes back, nothing is duplicated.
    let mut drifted = converged(&d);
    let first = shared.iter().next().expect("a rule").clone();
    drifted
        .security
        .shared_rules
        .get_mut("sg-nodes")
        .expect("rules")
        .remove(&first);
    let steps = plan(&drifted, &d);
    assert_eq!(ops(&steps), ["ec2:AuthorizeSecurityGroupIngress"]);
    assert_eq!(
        rules_of(&steps, "ec2:AuthorizeSecurityGroupIngress", "sg-nodes"),
        [&first]
    );
}

#[test]
fn rules_someone_else_added_are_present_but_never_ours_to_revoke() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let d = desired(&s);
    let shared = security::shared_backend_rules("sg-backend", d.security.node_port_range);
    let theirs = Rule::port("tcp", 8080, Peer::Group("sg-backend".into()));
    let mut o = converged(&d);
    // Someone opened 8080 to the backend group, and wrote one shared rule themselves.
    let one_shared = shared.iter().next().expect("a rule").clone();
    o.security
        .shared_rules
        .get_mut("sg-nodes")
        .expect("rules")
        .remove(&one_shared);
    o.security.foreign_rules.insert(
        "sg-nodes".into(),
        [theirs.clone(), one_shared.clone()].into(),
    );
    assert_eq!(
        plan(&o, &d),
        vec![],
        "their rule stays, and their copy of ours counts as there"
    );
}

#[test]
fn node_rules_stay_three_however_many_services() {
    // Services on every corner of the range, UDP and TCP, Local and Cluster policy.
    let mut shared_wanted = BTreeSet::new();
    for (i, node_port) in [30000u16, 30001, 31500, 32767].into_iter().enumerate() {
        let mut s = spec(
            vec![
                listener(80 + i as u16, Protocol::Tcp, node_port),
                listener(53, Protocol::Udp, node_port),
            ],
            1,
        );
        if i % 2 == 1 {
            s.health_check = HealthCheck::Http {
                port: 32767 - i as u16,
                path: "/healthz".into(),
            };
        }
        let d = desired(&s);
        assert!(
            d.security.own_node_ports().is_empty(),
            "{node_port}: covered by the shared rules"
        );
        shared_wanted.extend(security::shared_backend_rules(
            "sg-backend",
            d.security.node_port_range,
        ));
    }
    assert_eq!(shared_wanted.len(), 3, "{shared_wanted:?}");
}

#[test]
fn a_health_check_port_outside_the_range_is_opened_from_the_own_group() {
    let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    s.health_check = HealthCheck::Http {
        port: 9000,
        path: "/ready".into(),
    };
    let d = desired(&s);
    assert_eq!(d.security.own_node_ports(), [("tcp", 9000)].into());
    let mut o = converged(&d);
    o.security.node_rules.clear();
    let steps = plan(&o, &d);
    assert_eq!(
        rules_of(&steps, "ec2:AuthorizeSecurityGroupIngress", "sg-nodes"),
        [&Rule::port("tcp", 9000, Peer::Group("sg-own".into()))],
        "this Service's alone, so it goes with the Service"
    );
    assert!(matches!(
        &steps[0],
        Step::Authorize {
            scope: RuleScope::Service,
            ..
        }
    ));
}

#[test]
fn an_nlb_from_before_the_backend_group_moves_to_it_without_a_gap() {
    let s = spec(
        vec![
            listener(80, Protocol::Tcp, 30080),
            listener(53, Protocol::Udp, 30053),
        ],
        1,
    );
    let d = desired(&s);
    let mut legacy = converged(&d);
    legacy.lb.security_groups = vec!["sg-own".into()];
    legacy.security.shared_rules.clear();
    let per_port: BTreeSet<Rule> = [
        Rule::port("tcp", 30080, Peer::Group("sg-own".into())),
        Rule::port("udp", 30053, Peer::Group("sg-own".into())),
        Rule::port("tcp", 10256, Peer::Group("sg-own".into())),
    ]
    .into();
    legacy
        .security
        .node_rules
        .insert("sg-nodes".into(), per_port.clone());
    let steps = plan(&legacy, &d);
    assert_eq!(
        ops(&steps),
        [
            "ec2:AuthorizeSecurityGroupIngress",
            "SetSecurityGroups",
            "ec2:RevokeSecurityGroupIngress"
        ],
        "open the shared rules, attach the backend group, and only then the old per-port rules go"
    );
    assert_eq!(
        steps[1],
        Step::SetSecurityGroups(vec!["sg-backend".into(), "sg-own".into()])
    );
    assert_eq!(
        rules_of(&steps, "ec2:RevokeSecurityGroupIngress", "sg-nodes").len(),
        per_port.len()
    );
}

#[test]
fn opting_out_of_node_rules_detaches_nothing_shared() {
    let s = with_annotations(
        spec(vec![listener(80, Protocol::Tcp, 30080)], 1),
        &[("manage-backend-security-group-rules", "false")],
    );
    let d = desired(&s);
    assert!(!d.security.shared_backend());
    let mut o = converged(&d);
    o.lb.security_groups = vec!["sg-own".into()];
    o.security.backend = None;
    o.security.shared_rules.clear();
    assert_eq!(plan(&o, &d), vec![], "no backend group, no node rules");
}

#[test]
fn user_groups_replace_the_own_group() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let o = converged(&desired(&s));
    let users = with_annotations(s.clone(), &[("security-groups", "sg-user")]);
    let mut with_users = o.clone();
    with_users.security.user_groups = vec!["sg-user".into()];
    let steps = plan(&with_users, &desired(&users));
    assert_eq!(
        ops(&steps),
        ["SetSecurityGroups", "ec2:DeleteSecurityGroup"],
        "the user's groups alone; portico's group goes, the shared one is left to the others"
    );
    assert_eq!(steps[0], Step::SetSecurityGroups(vec!["sg-user".into()]));

    let managed = with_annotations(
        s,
        &[
            ("security-groups", "sg-user"),
            ("manage-backend-security-group-rules", "true"),
        ],
    );
    let steps = plan(&with_users, &desired(&managed));
    assert_eq!(
        ops(&steps),
        ["SetSecurityGroups", "ec2:RevokeSecurityGroupIngress"],
        "the own group stays for the node rules, without client rules"
    );
    assert_eq!(
        steps[0],
        Step::SetSecurityGroups(vec!["sg-backend".into(), "sg-own".into(), "sg-user".into()])
    );
    assert_eq!(
        rules_of(&steps, "ec2:RevokeSecurityGroupIngress", "sg-own").len(),
        1
    );
}

#[test]
fn an_nlb_created_without_security_groups_gets_no_security_steps() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let d = desired(&s);
    let mut legacy = converged(&d);
    legacy.lb.security_groups.clear();
    legacy.security = ObservedSecurity::default();
    assert_eq!(plan(&legacy, &d), vec![]);
}

#[test]
fn scheme_change_is_a_replacement() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    let o = converged(&desired(&s));
    assert_eq!(replacement(&o.lb, &desired(&s)), None);
    let internal = with_annotations(s, &[("internal", "true")]);
    let why = replacement(&o.lb, &desired(&internal)).expect("replaced");
    assert!(
        why.contains("internet-facing") && why.contains("internal"),
        "{why}"
    );
}

#[test]
fn health_checks_can_pass() {
    let udp = spec(vec![listener(53, Protocol::Udp, 30053)], 1);
    let cluster = desired(&udp).groups[0].health.clone();
    assert_eq!(
        (cluster.protocol, cluster.port, cluster.path.as_deref()),
        (
            HealthProtocol::Http,
            CheckPort::Port(10256),
            Some("/healthz")
        ),
        "Cluster policy: kube-proxy's health endpoint, never the UDP NodePort"
    );
    let mut local = udp.clone();
    local.health_check = HealthCheck::Http {
        port: 32001,
        path: "/healthz".into(),
    };
    let local = desired(&local);
    assert_eq!(local.groups[0].health.port, CheckPort::Port(32001));
    assert!(
        local.security.backend_ports.contains(&("tcp", 32001)),
        "the nodes accept the health check port from the NLB"
    );
}

#[test]
fn tls_settings_change_modifies_the_listener_only() {
    let cert = "arn:aws:acm:us-east-1:123456789012:certificate/abc";
    let tls = |policy: &str, backend: &str| {
        with_annotations(
            spec(
                vec![
                    listener(80, Protocol::Tcp, 30080),
                    listener(443, Protocol::Tcp, 30443),
                ],
                1,
            ),
            &[
                ("ssl-cert", cert),
                ("ssl-ports", "443"),
                ("ssl-negotiation-policy", policy),
                ("backend-protocol", backend),
            ],
        )
    };
    let d = desired(&tls("ELBSecurityPolicy-2016-08", "tcp"));
    assert_eq!(
        d.groups.iter().map(|g| g.listener).collect::<Vec<_>>(),
        [TgProtocol::Tcp, TgProtocol::Tls],
        "only the ssl port terminates TLS"
    );
    let o = converged(&d);
    assert_eq!(plan(&o, &d), vec![]);
    let steps = plan(
        &o,
        &desired(&tls("ELBSecurityPolicy-TLS13-1-2-2021-06", "tcp")),
    );
    assert_eq!(ops(&steps), ["ModifyListener"]);
    assert!(matches!(
        &steps[0],
        Step::ModifyListener { protocol: TgProtocol::Tls, tls: Some(t), .. }
            if t.policy == "ELBSecurityPolicy-TLS13-1-2-2021-06" && t.certificate == cert
    ));
    let steps = plan(&o, &desired(&tls("ELBSecurityPolicy-2016-08", "ssl")));
    assert!(
        ops(&steps).contains(&"CreateTargetGroup"),
        "TLS to the targets is a new TLS target group: {steps:?}"
    );
}

#[test]
fn an_adopted_nlb_is_tagged_and_repointed_and_its_old_groups_are_left() {
    let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 2);
    let d = desired(&s);
    // As cloud-provider-aws leaves it: its own tags, no security groups,
    // port 80 forwarding to its target group on the same NodePort.
    let mut adopted = converged(&d);
    adopted.tags = BTreeMap::from([("kubernetes.io/service-name".into(), "ns/web".into())]);
    adopted.lb.security_groups.clear();
    adopted.security = ObservedSecurity::default();
    let theirs = &mut adopted.groups[0];
    theirs.name = "k8s-ns-web-0123456789".into();
    theirs.arn = "arn:tg/theirs".into();
    theirs.tags = adopted.tags.clone();
    adopted.listeners[0].target_group_arn = Some("arn:tg/theirs".into());

    let steps = plan(&adopted, &d);
    assert_eq!(
        ops(&steps),
        [
            "AddTags",
            "CreateTargetGroup",
            "RegisterTargets",
            "ModifyListener"
        ],
        "tagged as ours, our group made and filled, the listener moved; theirs is not deleted"
    );
    let Step::AddTags { resource, tags } = &steps[0] else {
        panic!("{steps:?}")
    };
    assert_eq!(resource, &GroupRef::Arn("arn:lb".into()));
    assert!(names::owned_by(&d.key, tags), "{tags:?}");
    assert!(
        matches!(&steps[3], Step::ModifyListener { group: GroupRef::Created(name), .. } if *name == d.groups[0].name)
    );

    // Once converged (their group still listed by an emulator): at rest.
    let mut after = converged(&d);
    after.lb.security_groups.clear();
    after.security = ObservedSecurity::default();
    after.groups.push(adopted.groups[0].clone());
    assert_eq!(plan(&after, &d), vec![], "their group is never deleted");
    // A leftover group of ours still is.
    let mut ours_left = after.clone();
    ours_left.groups[1].tags = d.tags.clone();
    assert_eq!(ops(&plan(&ours_left, &d)), ["DeleteTargetGroup"]);
}
