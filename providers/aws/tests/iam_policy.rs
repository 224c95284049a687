//! The IAM policy in providers/aws/README.md lists exactly the AWS actions
//! the provider calls: a Service's whole life against moto (create with
//! discovery, every kind of change, delete, orphan listing) is counted by
//! the provider's call counter, and the actions counted must be the
//! README's. Skips without `AWS_ENDPOINT_URL`.

use portico_aws::testing as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::AwsHarness;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, HealthCheck, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    Protocol, TrafficPolicy,
};

const A: &str = "service.beta.kubernetes.io/aws-load-balancer-";

/// Authorized with the call that creates a tagged resource, never called on its own.
const AUTHORIZATION_ONLY: &[&str] = &["ec2:CreateTags"];

fn readme_actions() -> BTreeSet<String> {
    let readme = include_str!("../README.md");
    let policy = readme
        .split("<!-- iam-policy -->")
        .nth(1)
        .expect("README has an <!-- iam-policy --> section");
    policy
        .split('"')
        .filter(|s| s.starts_with("elasticloadbalancing:") || s.starts_with("ec2:"))
        .map(String::from)
        .collect()
}

fn iam_action(op: &str) -> String {
    match op.strip_prefix("ec2:") {
        Some(ec2) => format!("ec2:{ec2}"),
        None => format!("elasticloadbalancing:{op}"),
    }
}

fn annotate(s: &mut LoadBalancerSpec, pairs: &[(&str, &str)]) {
    let mut map: BTreeMap<String, String> = s
        .annotations
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    for (k, v) in pairs {
        map.insert(format!("{A}{k}"), v.to_string());
    }
    s.annotations = Annotations::new(map);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_policy_is_exactly_what_the_provider_calls() {
    if common::skip() {
        return;
    }
    tokio::time::timeout(Duration::from_secs(240), async {
        // Untagged subnets, no VPC configured: every discovery call happens.
        let h = AwsHarness::with_options(false).await;
        h.make_public(0).await;
        h.make_public(1).await;
        let provider = h.provider_with(|c| c.vpc_id = None);
        let users = h
            .ec2
            .create_security_group()
            .group_name(format!("{}-users", h.cluster))
            .description("a user's group")
            .vpc_id(&h.vpc_id)
            .send()
            .await
            .expect("user group")
            .group_id()
            .expect("id")
            .to_string();

        let uid = uuid::Uuid::new_v4().to_string();
        let mut s =
            LoadBalancerSpec::new(LoadBalancerKey::new(h.cluster.clone(), "iam", "web", uid));
        let tcp = |port, node_port| Listener {
            port,
            protocol: Protocol::Tcp,
            node_port,
            name: None,
        };
        s.listeners = vec![tcp(80, 30080), tcp(443, 30443)];
        s.targets = h.target_list(3).await.into();
        annotate(
            &mut s,
            &[
                ("additional-resource-tags", "team=web,env=prod"),
                ("attributes", "load_balancing.cross_zone.enabled=true"),
                (
                    "target-group-attributes",
                    "deregistration_delay.timeout_seconds=30",
                ),
            ],
        );
        let step = |s: LoadBalancerSpec| {
            let provider = provider.clone();
            async move {
                provider
                    .ensure_spec(&s)
                    .await
                    .unwrap_or_else(|e| panic!("ensure: {e}"));
                s
            }
        };
        let mut s = step(s).await;
        s = step(s).await;
        // Health check, nodePort, port removal, tags, targets, ranges, address type.
        s.health_check = HealthCheck::Http {
            port: 32000,
            path: "/healthz".into(),
        };
        s.traffic_policy = TrafficPolicy::Local;
        s.listeners = vec![tcp(80, 31080)];
        s.targets = s.targets[..2].into();
        s.source_ranges = vec!["203.0.113.0/24".parse().expect("cidr")];
        annotate(
            &mut s,
            &[
                ("additional-resource-tags", "team=api"),
                ("ip-address-type", "dualstack"),
            ],
        );
        s = step(s).await;
        // A group kept in place: its health check and targets change.
        s.health_check = HealthCheck::Http {
            port: 32001,
            path: "/healthz".into(),
        };
        s.targets = s.targets[..1].into();
        s = step(s).await;
        // The user's groups, with portico's own group kept for the nodes, then without it.
        annotate(
            &mut s,
            &[
                ("security-groups", &users),
                ("manage-backend-security-group-rules", "true"),
            ],
        );
        s = step(s).await;
        annotate(&mut s, &[("manage-backend-security-group-rules", "false")]);
        s = step(s).await;
        provider.get(&s.key).await.expect("get");
        provider.list_owned().await.expect("list owned");
        provider.delete(&s.key).await.expect("delete");

        let called: BTreeSet<String> = provider
            .calls()
            .stats()
            .by_operation
            .keys()
            .map(|op| iam_action(op))
            .collect();
        let documented = readme_actions();
        let mut expected = called.clone();
        expected.extend(AUTHORIZATION_ONLY.iter().map(|a| a.to_string()));
        let missing: Vec<_> = expected.difference(&documented).collect();
        let unused: Vec<_> = documented.difference(&expected).collect();
        assert!(
            missing.is_empty() && unused.is_empty(),
            "README policy: missing {missing:?}, never called {unused:?}"
        );
    })
    .await
    .expect("timed out");
}
