//! Security groups against the AWS endpoint in `AWS_ENDPOINT_URL` (moto):
//! each NLB is created with its own group whose rules follow
//! `loadBalancerSourceRanges`, and the cluster's backend group; the nodes'
//! group lets the backend group reach the NodePort range and the health
//! port, three rules however many Services (moto enforces AWS's 60 rules
//! per group); drift is repaired without duplicates; the user's groups
//! replace portico's; deleting the last Service leaves nothing.
//! Skips when the endpoint is not set.

use portico_aws::testing as common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, IpPermission, UserIdGroupPair};
use common::AwsHarness;
use portico_aws::CallStats;
use portico_aws::aws_test;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, Protocol,
};

const A: &str = "service.beta.kubernetes.io/aws-load-balancer-";

/// (protocol, from, to, peer) of every ingress rule of `group`.
async fn ingress(h: &AwsHarness, group: &str) -> BTreeSet<(String, i32, i32, String)> {
    let out = h
        .ec2
        .describe_security_groups()
        .group_ids(group)
        .send()
        .await
        .expect("describe security group");
    let mut rules = BTreeSet::new();
    for g in out.security_groups() {
        for p in g.ip_permissions() {
            let key = |peer: &str| {
                (
                    p.ip_protocol().unwrap_or_default().to_string(),
                    p.from_port().unwrap_or(-1),
                    p.to_port().unwrap_or(-1),
                    peer.to_string(),
                )
            };
            for r in p.ip_ranges() {
                rules.insert(key(r.cidr_ip().unwrap_or_default()));
            }
            for r in p.ipv6_ranges() {
                rules.insert(key(r.cidr_ipv6().unwrap_or_default()));
            }
            for r in p.user_id_group_pairs() {
                rules.insert(key(r.group_id().unwrap_or_default()));
            }
        }
    }
    rules
}

async fn group_exists(h: &AwsHarness, group: &str) -> bool {
    h.security_group_exists(group).await
}

/// The NLB's security groups.
async fn lb_groups(h: &AwsHarness, key: &LoadBalancerKey) -> Vec<String> {
    let lb = h
        .elb
        .describe_load_balancers()
        .names(portico_aws::load_balancer_name(key))
        .send()
        .await
        .expect("describe load balancer");
    let mut groups = lb.load_balancers()[0].security_groups().to_vec();
    groups.sort();
    groups
}

fn rule(proto: &str, port: i32, peer: &str) -> (String, i32, i32, String) {
    (proto.to_string(), port, port, peer.to_string())
}

/// The rules every node group holds for the backend group `backend`.
fn shared(backend: &str) -> BTreeSet<(String, i32, i32, String)> {
    [
        ("tcp".to_string(), 30000, 32767, backend.to_string()),
        ("udp".to_string(), 30000, 32767, backend.to_string()),
        rule("tcp", 10256, backend),
    ]
    .into()
}

/// The cluster's backend group, if it exists.
async fn backend_group(h: &AwsHarness) -> Option<String> {
    let out = h
        .ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values(portico_aws::backend_group_name(&h.cluster))
                .build(),
        )
        .send()
        .await
        .expect("describe security groups");
    out.security_groups()
        .first()
        .and_then(|g| g.group_id())
        .map(String::from)
}

/// The node group's rules whose peer is `peer`.
async fn node_rules_from(h: &AwsHarness, peer: &str) -> BTreeSet<(String, i32, i32, String)> {
    ingress(h, &h.node_group)
        .await
        .into_iter()
        .filter(|r| r.3 == peer)
        .collect()
}

async fn ensure(h: &AwsHarness, s: &LoadBalancerSpec) -> CallStats {
    let before = h.provider.calls().stats();
    h.provider
        .ensure_spec(s)
        .await
        .unwrap_or_else(|e| panic!("ensure {}: {e}", s.key));
    h.provider.calls().stats().since(&before)
}

async fn spec(h: &AwsHarness, name: &str, annotations: &[(&str, &str)]) -> LoadBalancerSpec {
    let uid = uuid::Uuid::new_v4().to_string();
    let mut s = LoadBalancerSpec::new(LoadBalancerKey::new(
        h.cluster.clone(),
        "sg",
        format!("{name}-{}", &uid[..8]),
        uid,
    ));
    s.listeners = vec![
        Listener {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: 30080,
            name: Some("http".into()),
        },
        Listener {
            port: 53,
            protocol: Protocol::Udp,
            node_port: 30053,
            name: Some("dns".into()),
        },
    ];
    s.targets = h.target_list(2).await.into();
    s.annotations = Annotations::new(
        annotations
            .iter()
            .map(|(k, v)| (format!("{A}{k}"), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    s
}

aws_test!(
    own_group_follows_source_ranges_and_the_backend_group_opens_the_nodes,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "ranges", &[]).await;
        s.source_ranges = vec!["203.0.113.0/24".parse().expect("cidr")];
        let created = ensure(&h, &s).await;
        assert_eq!(
            created.count("ec2:CreateSecurityGroup"),
            2,
            "its own group and the cluster's backend group: {created:?}"
        );
        let backend = backend_group(&h).await.expect("the backend group");
        let groups = lb_groups(&h, &s.key).await;
        assert_eq!(groups.len(), 2, "own and backend: {groups:?}");
        assert!(groups.contains(&backend));
        let own = groups
            .iter()
            .find(|g| **g != backend)
            .expect("own group")
            .clone();
        assert_eq!(
            ingress(&h, &own).await,
            [
                rule("tcp", 80, "203.0.113.0/24"),
                rule("udp", 53, "203.0.113.0/24")
            ]
            .into(),
            "clients from the source ranges on the listener ports only"
        );
        assert_eq!(
            node_rules_from(&h, &backend).await,
            shared(&backend),
            "the NodePort range (TCP, UDP) and kube-proxy's health port, from the backend group"
        );
        assert!(
            node_rules_from(&h, &own).await.is_empty(),
            "no per-Service rule on the nodes"
        );
        assert_eq!(ensure(&h, &s).await.mutations, 0, "at rest");

        // New ranges: one authorize and one revoke, on the own group.
        s.source_ranges = vec!["198.51.100.0/24".parse().expect("cidr")];
        let changed = ensure(&h, &s).await;
        assert_eq!(
            (
                changed.count("ec2:AuthorizeSecurityGroupIngress"),
                changed.count("ec2:RevokeSecurityGroupIngress"),
                changed.mutations
            ),
            (1, 1, 2),
            "{changed:?}"
        );
        assert_eq!(
            ingress(&h, &own).await,
            [
                rule("tcp", 80, "198.51.100.0/24"),
                rule("udp", 53, "198.51.100.0/24")
            ]
            .into()
        );

        // Drift: someone removes a shared node rule; it comes back, and only it.
        h.ec2
            .revoke_security_group_ingress()
            .group_id(&h.node_group)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("udp")
                    .from_port(30000)
                    .to_port(32767)
                    .user_id_group_pairs(
                        UserIdGroupPair::builder()
                            .group_id(&backend)
                            // moto matches a group rule with its description; AWS does not.
                            .description(format!(
                                "portico: load balancers of cluster {}",
                                h.cluster
                            ))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("revoke by hand");
        assert_eq!(node_rules_from(&h, &backend).await.len(), 2, "revoked");
        let repaired = ensure(&h, &s).await;
        assert_eq!(repaired.mutations, 1, "{repaired:?}");
        assert_eq!(node_rules_from(&h, &backend).await, shared(&backend));

        // Someone else's rule naming the backend group is theirs: kept by every ensure.
        h.ec2
            .authorize_security_group_ingress()
            .group_id(&h.node_group)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(8080)
                    .to_port(8080)
                    .user_id_group_pairs(
                        UserIdGroupPair::builder()
                            .group_id(&backend)
                            .description("team-a: metrics from the load balancers")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("authorize by hand");
        assert_eq!(
            ensure(&h, &s).await.mutations,
            0,
            "their rule is not ours to revoke"
        );
        assert!(
            node_rules_from(&h, &backend)
                .await
                .contains(&rule("tcp", 8080, &backend))
        );

        // Delete the last Service: the NLB, its group, then the backend group
        // and every rule naming it (AWS keeps a group that is named).
        h.provider.delete(&s.key).await.expect("delete");
        assert!(!group_exists(&h, &own).await, "own group left behind");
        assert!(
            !group_exists(&h, &backend).await,
            "backend group left behind"
        );
        assert!(
            ingress(&h, &h.node_group)
                .await
                .iter()
                .all(|r| r.3 != own && r.3 != backend),
            "node rules left behind"
        );
        assert!(
            h.provider.list_owned().await.expect("list").is_empty(),
            "nothing owned"
        );
    }
);

aws_test!(
    node_rules_stay_three_past_the_sixty_rule_limit,
    |h: AwsHarness| async move {
        // Before the backend group, each two-port Service added three rules
        // to the nodes' group and the 21st hit AWS's 60-rule limit.
        let mut specs = Vec::new();
        for i in 0..24u16 {
            let mut s = spec(&h, &format!("many{i}"), &[]).await;
            s.listeners[0].node_port = 30100 + i;
            s.listeners[1].node_port = 31100 + i;
            ensure(&h, &s).await;
            specs.push(s);
        }
        let backend = backend_group(&h).await.expect("the backend group");
        let from_portico: Vec<_> = ingress(&h, &h.node_group)
            .await
            .into_iter()
            .filter(|r| r.3.starts_with("sg-"))
            .collect();
        assert_eq!(
            from_portico.into_iter().collect::<BTreeSet<_>>(),
            shared(&backend),
            "24 Services, three rules"
        );
        // All but the last go: the backend group stays for the one left.
        let last = specs.pop().expect("a spec");
        for s in &specs {
            h.provider.delete(&s.key).await.expect("delete");
        }
        assert!(
            group_exists(&h, &backend).await,
            "still carried by the last NLB"
        );
        assert_eq!(node_rules_from(&h, &backend).await, shared(&backend));
        assert_eq!(ensure(&h, &last).await.mutations, 0, "the last one at rest");
        h.provider.delete(&last.key).await.expect("delete");
        assert!(!group_exists(&h, &backend).await, "gone with the last NLB");
        assert!(node_rules_from(&h, &backend).await.is_empty());
    }
);

aws_test!(
    users_groups_replace_portico_s_and_opt_out_leaves_nodes_alone,
    |h: AwsHarness| async move {
        let users = h
            .ec2
            .create_security_group()
            .group_name(format!("{}-users", h.cluster))
            .description("a user's group")
            .vpc_id(&h.vpc_id)
            .send()
            .await
            .expect("create user group")
            .group_id()
            .expect("id")
            .to_string();
        // By name, as users often write it; portico then leaves the nodes alone.
        let s = spec(
            &h,
            "users",
            &[("security-groups", &format!("{}-users", h.cluster))],
        )
        .await;
        let created = ensure(&h, &s).await;
        assert_eq!(lb_groups(&h, &s.key).await, vec![users.clone()]);
        assert_eq!(created.count("ec2:CreateSecurityGroup"), 0, "{created:?}");
        assert_eq!(
            created.count("ec2:AuthorizeSecurityGroupIngress"),
            0,
            "{created:?}"
        );
        assert_eq!(ensure(&h, &s).await.mutations, 0, "at rest");
        h.provider.delete(&s.key).await.expect("delete");
        assert!(
            group_exists(&h, &users).await,
            "the user's group is never deleted"
        );

        // Portico's own group, but the nodes are not portico's to open.
        let opted_out = spec(
            &h,
            "optout",
            &[("manage-backend-security-group-rules", "false")],
        )
        .await;
        ensure(&h, &opted_out).await;
        let own = lb_groups(&h, &opted_out.key).await[0].clone();
        let nodes = h.node_group.clone();
        assert!(
            ingress(&h, &nodes).await.iter().all(|r| r.3 != own),
            "no rule on the nodes"
        );
        h.provider.delete(&opted_out.key).await.expect("delete");
    }
);
