//! AWS call behaviour against the endpoint in `AWS_ENDPOINT_URL` (moto):
//! exactly which calls a change makes. Skips when it is not set.

use portico_aws::testing as common;

use std::collections::BTreeMap;

use common::AwsHarness;
use portico_aws::CallStats;
use portico_aws::aws_test;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, ClusterName, HealthCheck, Listener, LoadBalancerKey, LoadBalancerProvider,
    LoadBalancerSpec, Protocol, TrafficPolicy,
};

const A: &str = "service.beta.kubernetes.io/aws-load-balancer-";

fn key(cluster: &ClusterName, name: &str) -> LoadBalancerKey {
    let uid = uuid::Uuid::new_v4().to_string();
    LoadBalancerKey::new(
        cluster.clone(),
        "calls",
        format!("{name}-{}", &uid[..8]),
        uid,
    )
}

fn tcp(port: u16, node_port: u16) -> Listener {
    Listener {
        port,
        protocol: Protocol::Tcp,
        node_port,
        name: None,
    }
}

fn udp(port: u16, node_port: u16) -> Listener {
    Listener {
        protocol: Protocol::Udp,
        ..tcp(port, node_port)
    }
}

async fn spec(h: &AwsHarness, name: &str, targets: usize) -> LoadBalancerSpec {
    let mut s = LoadBalancerSpec::new(key(&h.cluster, name));
    s.listeners = vec![tcp(80, 30080)];
    s.targets = h.target_list(targets).await.into();
    s
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

/// Run `f` and return the AWS calls it made.
async fn calls<F, T>(h: &AwsHarness, f: F) -> (T, CallStats)
where
    F: std::future::Future<Output = T>,
{
    let before = h.provider.calls().stats();
    let out = f.await;
    (out, h.provider.calls().stats().since(&before))
}

async fn ensure(h: &AwsHarness, s: &LoadBalancerSpec) -> CallStats {
    let (r, stats) = calls(h, h.provider.ensure_spec(s)).await;
    r.unwrap_or_else(|e| panic!("ensure {}: {e}", s.key));
    stats
}

aws_test!(
    reensure_makes_no_mutating_call,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "steady", 3).await;
        s.listeners = vec![tcp(80, 30080), udp(53, 30053), tcp(443, 30443)];
        annotate(
            &mut s,
            &[
                ("additional-resource-tags", "team=web"),
                ("cross-zone-load-balancing-enabled", "true"),
            ],
        );
        ensure(&h, &s).await;
        let again = ensure(&h, &s).await;
        assert_eq!(again.mutations, 0, "re-ensure mutated: {again:?}");
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    node_port_change_replaces_the_target_group,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "nodeport", 2).await;
        s.listeners = vec![udp(53, 30053), tcp(80, 30080)];
        ensure(&h, &s).await;
        s.listeners.push(tcp(443, 30443));
        ensure(&h, &s).await;
        s.listeners = vec![udp(53, 30053), tcp(80, 31080), tcp(443, 30443)];
        let changed = ensure(&h, &s).await;
        assert_eq!(
            (
                changed.count("CreateTargetGroup"),
                changed.count("ModifyListener"),
                changed.count("DeleteTargetGroup"),
                changed.count("CreateLoadBalancer"),
            ),
            (1, 1, 1, 0),
            "{changed:?}"
        );
        let again = ensure(&h, &s).await;
        assert_eq!(again.mutations, 0, "re-ensure mutated: {again:?}");
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    node_join_and_leave_are_batched,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "batch", 10).await;
        ensure(&h, &s).await;
        s.targets = h.target_list(260).await.into();
        let joined = ensure(&h, &s).await;
        assert_eq!(
            joined.count("RegisterTargets"),
            3,
            "250 joins in 3 calls: {joined:?}"
        );
        assert_eq!(joined.mutations, 3, "{joined:?}");
        s.targets = s.targets[..5].into();
        let left = ensure(&h, &s).await;
        assert_eq!(
            left.count("DeregisterTargets"),
            3,
            "255 leaves in 3 calls: {left:?}"
        );
        assert_eq!(left.mutations, 3, "{left:?}");
        assert_eq!(ensure(&h, &s).await.mutations, 0);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    tcp_and_udp_on_one_port_share_a_tcp_udp_listener,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "tcpudp", 2).await;
        s.listeners = vec![tcp(53, 30053), udp(53, 30053)];
        let created = ensure(&h, &s).await;
        assert_eq!(created.count("CreateListener"), 1, "{created:?}");
        assert_eq!(created.count("CreateTargetGroup"), 1, "{created:?}");
        let lb = h
            .elb
            .describe_load_balancers()
            .names(portico_aws::load_balancer_name(&s.key))
            .send()
            .await
            .expect("describe");
        let arn = lb.load_balancers()[0]
            .load_balancer_arn()
            .expect("arn")
            .to_string();
        let listeners = h
            .elb
            .describe_listeners()
            .load_balancer_arn(&arn)
            .send()
            .await
            .expect("listeners");
        let protocols: Vec<_> = listeners
            .listeners()
            .iter()
            .map(|l| l.protocol().map(|p| p.as_str().to_string()))
            .collect();
        assert_eq!(protocols, vec![Some("TCP_UDP".to_string())]);
        assert_eq!(ensure(&h, &s).await.mutations, 0);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    health_check_change_only_modifies_target_groups,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "health", 2).await;
        s.listeners = vec![tcp(80, 30080), tcp(443, 30443)];
        ensure(&h, &s).await;
        s.health_check = HealthCheck::Http {
            port: 32000,
            path: "/healthz".into(),
        };
        s.traffic_policy = TrafficPolicy::Local;
        let changed = ensure(&h, &s).await;
        assert_eq!(changed.count("ModifyTargetGroup"), 2, "{changed:?}");
        assert_eq!(
            changed.mutations, 2,
            "the nodes' shared rules already cover the health-check NodePort: {changed:?}"
        );
        let groups = h
            .elb
            .describe_target_groups()
            .names(portico_aws::target_group_name(&s.key, 80, "TCP", 30080))
            .send()
            .await
            .expect("describe tg");
        let g = &groups.target_groups()[0];
        assert_eq!(g.health_check_protocol().map(|p| p.as_str()), Some("HTTP"));
        assert_eq!(g.health_check_port(), Some("32000"));
        assert_eq!(g.health_check_path(), Some("/healthz"));
        assert_eq!(ensure(&h, &s).await.mutations, 0);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(delete_leaves_nothing, |h: AwsHarness| async move {
    let mut s = spec(&h, "gone", 2).await;
    s.listeners = vec![tcp(80, 30080), udp(53, 30053)];
    ensure(&h, &s).await;
    assert_eq!(h.groups_tagged(&s.key.uid).await.len(), 2);
    h.provider.delete(&s.key).await.expect("delete");
    let lbs = h
        .elb
        .describe_load_balancers()
        .names(portico_aws::load_balancer_name(&s.key))
        .send()
        .await;
    assert!(
        lbs.as_ref()
            .map(|o| o.load_balancers().is_empty())
            .unwrap_or(true),
        "load balancer left: {lbs:?}"
    );
    assert_eq!(
        h.groups_tagged(&s.key.uid).await,
        Vec::<String>::new(),
        "target groups left"
    );
    let (r, again) = calls(&h, h.provider.delete(&s.key)).await;
    r.expect("second delete");
    assert_eq!(again.mutations, 0, "{again:?}");
});

async fn lb_subnets(h: &AwsHarness, key: &LoadBalancerKey) -> Vec<String> {
    let lb = h
        .elb
        .describe_load_balancers()
        .names(portico_aws::load_balancer_name(key))
        .send()
        .await
        .expect("describe");
    let mut subnets: Vec<String> = lb.load_balancers()[0]
        .availability_zones()
        .iter()
        .filter_map(|z| z.subnet_id().map(String::from))
        .collect();
    subnets.sort();
    subnets
}

aws_test!(subnets_are_discovered_by_tags, |h: AwsHarness| async move {
    let s = spec(&h, "discover", 1).await;
    let created = ensure(&h, &s).await;
    assert_eq!(created.count("ec2:DescribeSubnets"), 1, "{created:?}");
    let mut want: Vec<String> = h.subnets.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(lb_subnets(&h, &s.key).await, want);
    h.provider.delete(&s.key).await.expect("delete");
});

aws_test!(subnets_from_the_annotation, |h: AwsHarness| async move {
    // Untagged subnets: discovery finds nothing, the annotation names them.
    let h2 = AwsHarness::with_options(false).await;
    let mut s = spec(&h2, "named", 1).await;
    let err = h2
        .provider
        .ensure_spec(&s)
        .await
        .expect_err("no subnet is tagged");
    assert!(
        err.to_string().contains("aws-load-balancer-subnets"),
        "{err}"
    );
    let (first_id, _) = h2.subnets[0].clone();
    let second_name = format!("{}-public-1", h2.cluster);
    annotate(&mut s, &[("subnets", &format!("{first_id},{second_name}"))]);
    ensure(&h2, &s).await;
    let mut want: Vec<String> = h2.subnets.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(lb_subnets(&h2, &s.key).await, want);
    let mut missing = spec(&h2, "missing", 1).await;
    annotate(&mut missing, &[("subnets", "no-such-subnet")]);
    let err = h2
        .provider
        .ensure_spec(&missing)
        .await
        .expect_err("unknown subnet");
    assert!(err.to_string().contains("no-such-subnet"), "{err}");
    h2.provider.delete(&s.key).await.expect("delete");
    drop(h);
});

aws_test!(
    additional_tags_are_added_and_removed,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "tags", 1).await;
        annotate(&mut s, &[("additional-resource-tags", "team=web,env=prod")]);
        ensure(&h, &s).await;
        let lb_tags = |h: &AwsHarness, key: LoadBalancerKey| {
            let elb = h.elb.clone();
            async move {
                let lb = elb
                    .describe_load_balancers()
                    .names(portico_aws::load_balancer_name(&key))
                    .send()
                    .await
                    .expect("describe");
                let arn = lb.load_balancers()[0]
                    .load_balancer_arn()
                    .expect("arn")
                    .to_string();
                let tags = elb
                    .describe_tags()
                    .resource_arns(arn)
                    .send()
                    .await
                    .expect("tags");
                tags.tag_descriptions()[0]
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                    .collect::<BTreeMap<_, _>>()
            }
        };
        let tags = lb_tags(&h, s.key.clone()).await;
        assert_eq!(tags.get("team").map(String::as_str), Some("web"));
        assert_eq!(tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(
            tags.get(&format!("kubernetes.io/cluster/{}", h.cluster))
                .map(String::as_str),
            Some("owned")
        );
        annotate(&mut s, &[("additional-resource-tags", "team=api")]);
        let changed = ensure(&h, &s).await;
        assert!(
            changed.count("AddTags") >= 1 && changed.count("RemoveTags") >= 1,
            "{changed:?}"
        );
        let tags = lb_tags(&h, s.key.clone()).await;
        assert_eq!(tags.get("team").map(String::as_str), Some("api"));
        assert!(!tags.contains_key("env"), "{tags:?}");
        assert_eq!(ensure(&h, &s).await.mutations, 0);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    target_node_labels_select_targets,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "labels", 4).await;
        let mut labelled = s.targets.to_vec();
        for (i, t) in labelled.iter_mut().enumerate() {
            t.labels.insert(
                "pool".into(),
                if i % 2 == 0 { "edge" } else { "batch" }.into(),
            );
        }
        s.targets = labelled.into();
        annotate(&mut s, &[("target-node-labels", "pool=edge")]);
        ensure(&h, &s).await;
        let groups = h
            .elb
            .describe_target_groups()
            .names(portico_aws::target_group_name(&s.key, 80, "TCP", 30080))
            .send()
            .await
            .expect("describe tg");
        let arn = groups.target_groups()[0].target_group_arn().expect("arn");
        let health = h
            .elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .expect("health");
        let mut registered: Vec<String> = health
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target()?.id().map(String::from))
            .collect();
        registered.sort();
        let mut want: Vec<String> = s
            .targets
            .iter()
            .step_by(2)
            .filter_map(|t| {
                t.provider_id
                    .as_deref()?
                    .rsplit('/')
                    .next()
                    .map(String::from)
            })
            .collect();
        want.sort();
        assert_eq!(registered, want);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    injected_faults_are_absorbed_by_sdk_retries,
    |h: AwsHarness| async move {
        let s = spec(&h, "faults", 2).await;
        h.provider
            .calls()
            .set_faults(Some(portico_aws::FaultInjection {
                every: 2,
                kind: portico_aws::FaultKind::Throttling,
            }));
        let created = ensure(&h, &s).await;
        h.provider.calls().set_faults(None);
        assert!(created.injected_faults > 0, "{created:?}");
        assert!(created.attempts > created.total(), "{created:?}");
        assert_eq!(ensure(&h, &s).await.mutations, 0);
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    vpc_from_the_nodes_and_untagged_public_subnets,
    |h: AwsHarness| async move {
        // No subnet is tagged and no VPC configured: the VPC comes from the
        // nodes' instances, the subnet from its route to an internet gateway.
        let h2 = AwsHarness::with_options(false).await;
        h2.make_public(1).await;
        let provider = h2.provider_with(|c| c.vpc_id = None);
        let s = spec(&h2, "discovered", 2).await;
        let before = provider.calls().stats();
        provider.ensure_spec(&s).await.expect("ensure");
        let created = provider.calls().stats().since(&before);
        assert_eq!(
            (
                created.count("ec2:DescribeInstances"),
                created.count("ec2:DescribeRouteTables")
            ),
            (1, 1),
            "{created:?}"
        );
        assert_eq!(lb_subnets(&h2, &s.key).await, vec![h2.subnets[1].0.clone()]);
        let again = {
            let before = provider.calls().stats();
            provider.ensure_spec(&s).await.expect("re-ensure");
            provider.calls().stats().since(&before)
        };
        assert_eq!(again.mutations, 0, "{again:?}");
        assert_eq!(
            again.count("ec2:DescribeInstances"),
            0,
            "instances are cached: {again:?}"
        );
        provider.delete(&s.key).await.expect("delete");
        drop(h);
    }
);

aws_test!(
    proxy_protocol_and_attributes_are_set_and_kept,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "attrs", 2).await;
        annotate(
            &mut s,
            &[
                ("proxy-protocol", "*"),
                (
                    "target-group-attributes",
                    "deregistration_delay.timeout_seconds=30,preserve_client_ip.enabled=true",
                ),
                ("attributes", "load_balancing.cross_zone.enabled=true"),
            ],
        );
        let created = ensure(&h, &s).await;
        assert_eq!(
            (
                created.count("ModifyTargetGroupAttributes"),
                created.count("ModifyLoadBalancerAttributes")
            ),
            (1, 1),
            "{created:?}"
        );
        let groups = h
            .elb
            .describe_target_groups()
            .names(portico_aws::target_group_name(&s.key, 80, "TCP", 30080))
            .send()
            .await
            .expect("describe tg");
        let arn = groups.target_groups()[0].target_group_arn().expect("arn");
        let attrs = h
            .elb
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .expect("attributes");
        let got: BTreeMap<String, String> = attrs
            .attributes()
            .iter()
            .filter_map(|a| Some((a.key()?.to_string(), a.value()?.to_string())))
            .collect();
        for (k, v) in [
            ("proxy_protocol_v2.enabled", "true"),
            ("deregistration_delay.timeout_seconds", "30"),
            ("preserve_client_ip.enabled", "true"),
        ] {
            assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}: {got:?}");
        }
        assert_eq!(ensure(&h, &s).await.mutations, 0, "at rest");
        annotate(
            &mut s,
            &[(
                "target-group-attributes",
                "deregistration_delay.timeout_seconds=0",
            )],
        );
        let changed = ensure(&h, &s).await;
        assert_eq!(
            changed.mutations, 1,
            "only the changed attribute: {changed:?}"
        );
        h.provider.delete(&s.key).await.expect("delete");
    }
);

aws_test!(
    tls_listeners_terminate_on_the_nlb,
    |h: AwsHarness| async move {
        // An IAM server certificate: moto checks ACM ARNs against its own ACM.
        let cert = "arn:aws:iam::123456789012:server-certificate/portico-test";
        let mut s = spec(&h, "tls", 2).await;
        s.listeners = vec![tcp(80, 30080), tcp(443, 30443)];
        annotate(
            &mut s,
            &[
                ("ssl-cert", cert),
                ("ssl-ports", "443"),
                (
                    "ssl-negotiation-policy",
                    "ELBSecurityPolicy-TLS13-1-2-2021-06",
                ),
                ("alpn-policy", "HTTP2Preferred"),
            ],
        );
        ensure(&h, &s).await;
        let lb = h
            .elb
            .describe_load_balancers()
            .names(portico_aws::load_balancer_name(&s.key))
            .send()
            .await
            .expect("describe");
        let arn = lb.load_balancers()[0].load_balancer_arn().expect("arn");
        let listeners = h
            .elb
            .describe_listeners()
            .load_balancer_arn(arn)
            .send()
            .await
            .expect("listeners");
        let mut seen: Vec<(i32, String, Option<String>, Option<String>)> = listeners
            .listeners()
            .iter()
            .map(|l| {
                (
                    l.port().unwrap_or_default(),
                    l.protocol()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    l.ssl_policy().map(String::from),
                    l.certificates()
                        .first()
                        .and_then(|c| c.certificate_arn())
                        .map(String::from),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen[0].0, 80);
        assert_eq!(seen[0].1, "TCP", "port 80 is not in ssl-ports");
        assert_eq!(
            seen[1],
            (
                443,
                "TLS".to_string(),
                Some("ELBSecurityPolicy-TLS13-1-2-2021-06".to_string()),
                Some(cert.to_string())
            )
        );
        assert_eq!(ensure(&h, &s).await.mutations, 0, "at rest");
        // Changing a TLS listener is planned in unit tests: moto's ModifyListener refuses TLS.
        h.provider.delete(&s.key).await.expect("delete");
    }
);
