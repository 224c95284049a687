//! Table tests of `desired.rs` (kept apart so the module reads as its logic).

use super::*;
use portico_provider::{Annotations, Target};

use crate::test_fixtures::{desired, listener, spec, target};

#[test]
fn provider_ids_parse() {
    let cases = [
        ("zonal", "aws:///us-east-1a/i-0abc123", Some("i-0abc123")),
        ("no zone", "aws:////i-0abc", Some("i-0abc")),
        ("not aws", "gce://p/z/i-0abc", None),
        ("not an instance", "aws:///us-east-1a/fargate-ip-10", None),
        ("empty id", "aws:///us-east-1a/i-", None),
        ("garbage", "i-0abc", None),
    ];
    for (desc, raw, want) in cases {
        assert_eq!(instance_id(raw), want, "{desc}");
    }
}

#[test]
fn tcp_and_udp_on_one_port_merge() {
    let s = spec(
        vec![
            listener(53, Protocol::Tcp, 30053),
            listener(53, Protocol::Udp, 30053),
        ],
        1,
    );
    let d = desired(&s);
    assert_eq!(d.groups.len(), 1);
    assert_eq!(d.groups[0].protocol, TgProtocol::TcpUdp);
    let ports = &d.status("x").ingress[0].ports;
    assert_eq!(ports.len(), 2, "status reports both protocols");

    let bad = spec(
        vec![
            listener(53, Protocol::Tcp, 30053),
            listener(53, Protocol::Udp, 30054),
        ],
        1,
    );
    let opts = AwsOptions::parse(&bad).expect("options");
    assert!(matches!(
        Desired::new(&bad, &opts),
        Err(ProviderError::InvalidSpec { .. })
    ));
}

#[test]
fn invalid_listeners_are_rejected() {
    let cases = [
        (
            "duplicate",
            vec![
                listener(80, Protocol::Tcp, 1),
                listener(80, Protocol::Tcp, 2),
            ],
            "invalid_spec",
        ),
        ("sctp", vec![listener(80, Protocol::Sctp, 1)], "unsupported"),
    ];
    for (desc, listeners, label) in cases {
        let s = spec(listeners, 1);
        let opts = AwsOptions::parse(&s).expect("options");
        let err = Desired::new(&s, &opts).expect_err(desc);
        assert_eq!(err.metric_label(), label, "{desc}");
    }
}

#[test]
fn target_node_labels_filter_targets() {
    let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 0);
    s.targets = vec![
        target(1, &[("pool", "edge")]),
        target(2, &[("pool", "batch")]),
        target(3, &[]),
        Target {
            provider_id: None,
            ..target(4, &[("pool", "edge")])
        },
    ]
    .into();
    s.annotations = Annotations::new(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-target-node-labels".to_string(),
            "pool=edge".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    let d = desired(&s);
    assert_eq!(
        d.groups[0].targets.iter().collect::<Vec<_>>(),
        vec!["i-00001"]
    );
}

#[test]
fn health_settings_follow_policy_and_overrides() {
    let named = |name: &str, node_port| Listener {
        name: Some(name.into()),
        ..listener(80, Protocol::Tcp, node_port)
    };
    let listeners = [named("http", 30080), named("status", 30099)];
    let hc = |check: &HealthCheck, o: HealthOverrides| {
        HealthSettings::new(check, &o, &listeners).expect("valid")
    };
    let local_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    type Want = (
        HealthProtocol,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<(&str, HealthSettings, Want)> = vec![
        (
            "Cluster: kube-proxy's /healthz on 10256",
            hc(&HealthCheck::TrafficPort, HealthOverrides::default()),
            (
                HealthProtocol::Http,
                "10256",
                Some("/healthz"),
                Some("200-399"),
            ),
        ),
        (
            "Local: healthCheckNodePort",
            hc(&local_check, HealthOverrides::default()),
            (
                HealthProtocol::Http,
                "32000",
                Some("/healthz"),
                Some("200-399"),
            ),
        ),
        (
            "traffic-port alone is a TCP check",
            hc(
                &HealthCheck::TrafficPort,
                HealthOverrides {
                    port: Some(HealthPort::TrafficPort),
                    ..Default::default()
                },
            ),
            (HealthProtocol::Tcp, "traffic-port", None, None),
        ),
        (
            "a named port is that port's NodePort",
            hc(
                &HealthCheck::TrafficPort,
                HealthOverrides {
                    port: Some(HealthPort::Named("status".into())),
                    protocol: Some(HealthProtocol::Http),
                    success_codes: Some("200,204".into()),
                    ..Default::default()
                },
            ),
            (
                HealthProtocol::Http,
                "30099",
                Some("/healthz"),
                Some("200,204"),
            ),
        ),
        (
            "https with a timeout",
            hc(
                &HealthCheck::TrafficPort,
                HealthOverrides {
                    protocol: Some(HealthProtocol::Https),
                    path: Some("/ready".into()),
                    timeout: Some(20),
                    ..Default::default()
                },
            ),
            (
                HealthProtocol::Https,
                "10256",
                Some("/ready"),
                Some("200-399"),
            ),
        ),
    ];
    for (desc, got, (protocol, port, path, codes)) in cases {
        assert_eq!(
            (
                got.protocol,
                got.port_string().as_str(),
                got.path.as_deref(),
                got.success_codes.as_deref()
            ),
            (protocol, port, path, codes),
            "{desc}"
        );
        assert!(got.timeout < got.interval, "{desc}: {got:?}");
    }
    let short = hc(
        &HealthCheck::TrafficPort,
        HealthOverrides {
            interval: Some(5),
            ..Default::default()
        },
    );
    assert_eq!((short.interval, short.timeout), (5, 4));
    let err = HealthSettings::new(
        &HealthCheck::TrafficPort,
        &HealthOverrides {
            port: Some(HealthPort::Named("nope".into())),
            ..Default::default()
        },
        &listeners,
    )
    .expect_err("no such port");
    assert!(err.to_string().contains("healthcheck-port"), "{err}");
}

#[test]
fn ipv6_source_range_needs_dualstack() {
    let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
    s.source_ranges = vec!["2001:db8::/32".parse().expect("cidr")];
    let opts = AwsOptions::parse(&s).expect("options");
    let err = Desired::new(&s, &opts).expect_err("v6 on an ipv4 NLB");
    assert!(
        err.to_string().contains("spec.loadBalancerSourceRanges"),
        "{err}"
    );
    s.annotations = Annotations::new(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-ip-address-type".to_string(),
            "dualstack".to_string(),
        )]
        .into(),
    );
    assert_eq!(desired(&s).security.frontend.len(), 1);
    s.source_ranges.clear();
    assert_eq!(
        desired(&s).security.frontend.len(),
        2,
        "everyone on both families by default"
    );
}
