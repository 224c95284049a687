//! Table tests of `options.rs` (kept apart so the module reads as its logic).

use super::*;
use portico_provider::{ClusterName, LoadBalancerKey};

type Pairs = &'static [(&'static str, &'static str)];

fn spec(pairs: &[(&str, &str)]) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(LoadBalancerKey::new(
        ClusterName::new("c"),
        "ns",
        "svc",
        "uid",
    ));
    spec.annotations =
        Annotations::new(pairs.iter().map(|(k, v)| (key(k), v.to_string())).collect());
    spec
}

#[test]
fn defaults_without_annotations() {
    let o = AwsOptions::parse(&spec(&[])).expect("no annotations is valid");
    assert_eq!(o.scheme, Scheme::InternetFacing);
    assert_eq!(o.subnets, SubnetSelector::Discover);
    assert_eq!(o.cross_zone, None);
    assert_eq!(o.health, HealthOverrides::default());
    assert_eq!(o.ip_address_type, IpAddressType::Ipv4);
}

#[test]
fn good_annotations_parse() {
    type Check = fn(&AwsOptions) -> bool;
    let cases: &[(&str, Pairs, Check)] = &[
        ("type nlb", &[("type", "nlb")], |_| true),
        ("internal", &[("internal", "true")], |o| {
            o.scheme == Scheme::Internal
        }),
        ("internal false", &[("internal", "false")], |o| {
            o.scheme == Scheme::InternetFacing
        }),
        (
            "internal as old manifests write it",
            &[("internal", "0.0.0.0/0")],
            |o| o.scheme == Scheme::Internal,
        ),
        (
            "node labels by presence",
            &[("target-node-labels", "pool=edge, gpu=, spot")],
            |o| {
                o.target_node_labels.get("pool") == Some(&Some("edge".into()))
                    && o.target_node_labels.get("gpu") == Some(&None)
                    && o.target_node_labels.get("spot") == Some(&None)
            },
        ),
        ("scheme internal", &[("scheme", "internal")], |o| {
            o.scheme == Scheme::Internal
        }),
        ("subnets", &[("subnets", "subnet-1, public-a")], |o| {
            o.subnets == SubnetSelector::Listed(vec!["subnet-1".into(), "public-a".into()])
        }),
        (
            "cross zone",
            &[("cross-zone-load-balancing-enabled", "true")],
            |o| o.cross_zone == Some(true),
        ),
        ("hc protocol", &[("healthcheck-protocol", "HTTP")], |o| {
            o.health.protocol == Some(HealthProtocol::Http)
        }),
        ("hc port", &[("healthcheck-port", "8080")], |o| {
            o.health.port == Some(HealthPort::Port(8080))
        }),
        (
            "hc traffic-port",
            &[("healthcheck-port", "traffic-port")],
            |o| o.health.port == Some(HealthPort::TrafficPort),
        ),
        ("hc path", &[("healthcheck-path", "/ready")], |o| {
            o.health.path.as_deref() == Some("/ready")
        }),
        ("hc interval", &[("healthcheck-interval", "30")], |o| {
            o.health.interval == Some(30)
        }),
        ("hc timeout", &[("healthcheck-timeout", "4")], |o| {
            o.health.timeout == Some(4)
        }),
        (
            "hc healthy",
            &[("healthcheck-healthy-threshold", "2")],
            |o| o.health.healthy_threshold == Some(2),
        ),
        (
            "hc unhealthy",
            &[("healthcheck-unhealthy-threshold", "10")],
            |o| o.health.unhealthy_threshold == Some(10),
        ),
        (
            "tags",
            &[("additional-resource-tags", "team=web, env=prod")],
            |o| o.additional_tags.get("env").map(String::as_str) == Some("prod"),
        ),
        ("node labels", &[("target-node-labels", "pool=edge")], |o| {
            o.target_node_labels.len() == 1
        }),
        (
            "eips",
            &[
                ("subnets", "subnet-a,subnet-b"),
                ("eip-allocations", "eipalloc-1,eipalloc-2"),
            ],
            |o| o.eip_allocations.len() == 2,
        ),
        (
            "private ips",
            &[
                ("internal", "true"),
                ("subnets", "subnet-a"),
                ("private-ipv4-addresses", "10.0.1.10"),
            ],
            |o| o.private_ipv4_addresses == vec![Ipv4Addr::new(10, 0, 1, 10)],
        ),
        (
            "attributes",
            &[
                ("attributes", "deletion_protection.enabled=true"),
                ("cross-zone-load-balancing-enabled", "true"),
            ],
            |o| {
                o.load_balancer_attributes.len() == 2
                    && o.load_balancer_attributes.get(CROSS_ZONE_ATTRIBUTE)
                        == Some(&"true".to_string())
            },
        ),
        (
            "proxy protocol and group attributes",
            &[
                ("proxy-protocol", "*"),
                (
                    "target-group-attributes",
                    "deregistration_delay.timeout_seconds=30,stickiness.enabled=true,stickiness.type=source_ip",
                ),
            ],
            |o| {
                o.target_group_attributes.len() == 4
                    && o.target_group_attributes.get(PROXY_PROTOCOL_ATTRIBUTE)
                        == Some(&"true".to_string())
            },
        ),
        ("dualstack", &[("ip-address-type", "dualstack")], |o| {
            o.ip_address_type == IpAddressType::Dualstack
        }),
        ("load balancer name", &[("name", " web-prod-1 ")], |o| {
            o.name.as_deref() == Some("web-prod-1")
        }),
        ("no name: generated", &[], |o| o.name.is_none()),
    ];
    for (desc, pairs, check) in cases {
        let o = AwsOptions::parse(&spec(pairs)).unwrap_or_else(|e| panic!("{desc}: {e}"));
        assert!(check(&o), "{desc}: {o:?}");
    }
}

#[test]
fn bad_annotations_name_the_annotation() {
    let cases: &[(&str, Pairs, &str)] = &[
        ("type alb", &[("type", "alb")], "type"),
        ("scheme bogus", &[("scheme", "public")], "scheme"),
        (
            "scheme contradicts internal",
            &[("internal", "true"), ("scheme", "internet-facing")],
            "scheme",
        ),
        ("empty subnets", &[("subnets", " , ")], "subnets"),
        (
            "cross zone",
            &[("cross-zone-load-balancing-enabled", "maybe")],
            "cross-zone-load-balancing-enabled",
        ),
        (
            "hc protocol",
            &[("healthcheck-protocol", "udp")],
            "healthcheck-protocol",
        ),
        ("hc port", &[("healthcheck-port", "0")], "healthcheck-port"),
        (
            "hc port word",
            &[("healthcheck-port", "Not_A_Port")],
            "healthcheck-port",
        ),
        (
            "hc path",
            &[("healthcheck-path", "healthz")],
            "healthcheck-path",
        ),
        (
            "hc path with tcp",
            &[("healthcheck-protocol", "tcp"), ("healthcheck-path", "/x")],
            "healthcheck-path",
        ),
        (
            "hc interval low",
            &[("healthcheck-interval", "4")],
            "healthcheck-interval",
        ),
        (
            "hc interval high",
            &[("healthcheck-interval", "301")],
            "healthcheck-interval",
        ),
        (
            "hc timeout",
            &[("healthcheck-timeout", "1")],
            "healthcheck-timeout",
        ),
        (
            "hc timeout over interval",
            &[
                ("healthcheck-interval", "10"),
                ("healthcheck-timeout", "10"),
            ],
            "healthcheck-timeout",
        ),
        (
            "hc healthy",
            &[("healthcheck-healthy-threshold", "11")],
            "healthcheck-healthy-threshold",
        ),
        (
            "hc unhealthy",
            &[("healthcheck-unhealthy-threshold", "1")],
            "healthcheck-unhealthy-threshold",
        ),
        (
            "tags not kv",
            &[("additional-resource-tags", "team")],
            "additional-resource-tags",
        ),
        (
            "tags reserved",
            &[("additional-resource-tags", "kubernetes.io/x=1")],
            "additional-resource-tags",
        ),
        (
            "labels not kv",
            &[("target-node-labels", "=x")],
            "target-node-labels",
        ),
        (
            "eip id",
            &[("eip-allocations", "1.2.3.4")],
            "eip-allocations",
        ),
        (
            "eip count",
            &[
                ("subnets", "subnet-a,subnet-b"),
                ("eip-allocations", "eipalloc-1"),
            ],
            "eip-allocations",
        ),
        (
            "eip internal",
            &[("internal", "true"), ("eip-allocations", "eipalloc-1")],
            "eip-allocations",
        ),
        (
            "private ip bad",
            &[("internal", "true"), ("private-ipv4-addresses", "10.0.0")],
            "private-ipv4-addresses",
        ),
        (
            "private ip public",
            &[("private-ipv4-addresses", "10.0.0.1")],
            "private-ipv4-addresses",
        ),
        ("ip type", &[("ip-address-type", "ipv6")], "ip-address-type"),
        (
            "proxy protocol per port",
            &[("proxy-protocol", "80")],
            "proxy-protocol",
        ),
        (
            "attribute without value",
            &[("target-group-attributes", "stickiness.enabled=")],
            "target-group-attributes",
        ),
        (
            "name too long",
            &[("name", "a2345678901234567890123456789012b")],
            "name",
        ),
        ("name empty", &[("name", "")], "name"),
        ("name with a dot", &[("name", "web.prod")], "name"),
        ("name ends in a hyphen", &[("name", "web-")], "name"),
        ("name internal-", &[("name", "internal-web")], "name"),
        (
            "name of the generated form",
            &[("name", "k8s-0123456789abcdef0123456789ab")],
            "name",
        ),
    ];
    for (desc, pairs, suffix) in cases {
        let err = AwsOptions::parse(&spec(pairs)).expect_err(desc);
        let want = format!("metadata.annotations[{}]", key(suffix));
        match &err {
            ProviderError::InvalidSpec { field, .. } => {
                assert_eq!(field, &want, "{desc}: {err}");
            }
            other => panic!("{desc}: expected InvalidSpec, got {other:?}"),
        }
    }
}

#[test]
fn external_type_is_unsupported_and_detected() {
    let s = spec(&[("type", "external")]);
    assert!(matches!(
        AwsOptions::parse(&s),
        Err(ProviderError::Unsupported { .. })
    ));
    let raw = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (key(k), v.to_string())).collect()
    };
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: [Case<'_>; 4] = [
        ("external", &[("type", "external")], true),
        ("nlb-ip in any case", &[("type", " NLB-IP ")], true),
        ("portico's own nlb", &[("type", "nlb")], false),
        ("no annotation", &[], false),
    ];
    for (desc, pairs, declined) in cases {
        let got = declined_for_aws_lb_controller(&raw(pairs));
        assert_eq!(got.is_some(), declined, "{desc}: {got:?}");
    }
}

#[test]
fn every_unimplemented_aws_annotation_is_named() {
    let s = spec(&[
        ("internal", "true"),
        ("access-log-enabled", "true"),
        ("nlb-target-type", "ip"),
    ]);
    let notes = unimplemented_notes(&s.annotations);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        unimplemented_notes(&spec(&[("name", "web")]).annotations).is_empty(),
        "load-balancer-name is implemented"
    );
    assert!(notes[0].contains(&key("access-log-enabled")), "{notes:?}");
    assert!(notes[1].contains(&key("nlb-target-type")), "{notes:?}");
    assert!(unimplemented_notes(&spec(&[("internal", "true")]).annotations).is_empty());
}
