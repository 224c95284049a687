//! Annotation parsing: every annotation, good and bad values; errors name
//! the annotation.

use std::collections::BTreeMap;

use portico_provider::{
    Annotations, ClusterName, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    ProviderError,
};
use portico_slb::cloud::model::{AclMode, AddressType, HealthCheckType, SchedulerKind};
use portico_slb::provider::options::{ForeignListeners, PREFIX, Reuse, SlbOptions, UserAcl};
use portico_slb::provider::{SlbProvider, SlbProviderConfig};

fn spec(pairs: &[(&str, &str)]) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(LoadBalancerKey::new(
        ClusterName::new("c"),
        "ns",
        "web",
        "uid-1",
    ));
    spec.annotations = Annotations::new(
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    spec
}

type Pairs<'a> = &'a [(&'a str, &'a str)];

fn parse(pairs: &[(&str, &str)]) -> Result<SlbOptions, ProviderError> {
    SlbOptions::parse(&spec(pairs))
}

#[test]
fn good_values_parse() {
    type Check = fn(&SlbOptions) -> bool;
    let cases: &[(&str, Pairs<'_>, Check)] = &[
        ("defaults", &[], |o| {
            o.address_type == AddressType::Internet
                && o.scheduler == SchedulerKind::Wrr
                && o.weight == 100
                && o.acl.is_none()
                && o.reuse.is_none()
        }),
        ("intranet", &[("address-type", "intranet")], |o| {
            o.address_type == AddressType::Intranet
        }),
        (
            "address type any case",
            &[("address-type", "Internet")],
            |o| o.address_type == AddressType::Internet,
        ),
        ("spec", &[("spec", "slb.s2.medium")], |o| {
            o.spec.as_deref() == Some("slb.s2.medium")
        }),
        ("wlc", &[("scheduler", "wlc")], |o| {
            o.scheduler == SchedulerKind::Wlc
        }),
        ("rr maps to wrr", &[("scheduler", "rr")], |o| {
            o.scheduler == SchedulerKind::Wrr
        }),
        (
            "http check",
            &[
                ("health-check-type", "http"),
                ("health-check-uri", "/ready"),
                ("health-check-connect-port", "8080"),
            ],
            |o| {
                o.health.kind == Some(HealthCheckType::Http)
                    && o.health.uri.as_deref() == Some("/ready")
                    && o.health.connect_port == Some(8080)
            },
        ),
        ("interval bounds", &[("health-check-interval", "50")], |o| {
            o.health.interval_seconds == Some(50)
        }),
        (
            "connect timeout",
            &[("health-check-connect-timeout", "7")],
            |o| o.health.timeout_seconds == Some(7),
        ),
        (
            "timeout wins over connect timeout",
            &[
                ("health-check-connect-timeout", "7"),
                ("health-check-timeout", "9"),
            ],
            |o| o.health.timeout_seconds == Some(9),
        ),
        (
            "thresholds",
            &[("healthy-threshold", "2"), ("unhealthy-threshold", "10")],
            |o| o.health.healthy_threshold == Some(2) && o.health.unhealthy_threshold == Some(10),
        ),
        (
            "acl on",
            &[
                ("acl-status", "on"),
                ("acl-id", "acl-123"),
                ("acl-type", "black"),
            ],
            |o| {
                o.acl
                    == Some(UserAcl {
                        id: "acl-123".into(),
                        mode: AclMode::Black,
                    })
            },
        ),
        (
            "acl off ignores the id",
            &[("acl-status", "off"), ("acl-id", "acl-123")],
            |o| o.acl.is_none(),
        ),
        (
            "acl type defaults to white",
            &[("acl-status", "on"), ("acl-id", "acl-1")],
            |o| o.acl.as_ref().is_some_and(|a| a.mode == AclMode::White),
        ),
        (
            "reuse",
            &[("id", "lb-abc"), ("force-override-listeners", "true")],
            |o| {
                o.reuse
                    == Some(Reuse {
                        id: "lb-abc".into(),
                        foreign_listeners: ForeignListeners::Override,
                    })
            },
        ),
        (
            "reuse keeps foreign listeners by default",
            &[("id", "lb-abc")],
            |o| o.reuse.as_ref().map(|r| r.foreign_listeners) == Some(ForeignListeners::Keep),
        ),
        (
            "force-override-listeners alone reuses nothing",
            &[("force-override-listeners", "true")],
            |o| o.reuse.is_none(),
        ),
        ("weight", &[("weight", "1")], |o| o.weight == 1),
        ("weight zero drains", &[("weight", "0")], |o| o.weight == 0),
        ("persistence", &[("persistence-timeout", "1800")], |o| {
            o.persistence_timeout == Some(1800)
        }),
        ("persistence off", &[("persistence-timeout", "0")], |o| {
            o.persistence_timeout == Some(0)
        }),
        ("ip", &[("ip", "127.240.1.2")], |o| {
            o.ip == Some("127.240.1.2".parse().expect("ip"))
        }),
        (
            "unknown annotations are ignored",
            &[("made-up-thing", "x")],
            |o| o == &SlbOptions::parse(&spec(&[])).expect("defaults"),
        ),
    ];
    for (desc, pairs, check) in cases {
        let opts = parse(pairs).unwrap_or_else(|e| panic!("{desc}: {e}"));
        assert!(check(&opts), "{desc}: {opts:?}");
    }
}

#[test]
fn bad_values_name_the_annotation() {
    let cases: &[(&str, Pairs<'_>, &str)] = &[
        (
            "address type",
            &[("address-type", "public")],
            "address-type",
        ),
        ("spec", &[("spec", "slb.s9.huge")], "spec"),
        ("scheduler", &[("scheduler", "random")], "scheduler"),
        (
            "check type",
            &[("health-check-type", "icmp")],
            "health-check-type",
        ),
        (
            "uri without slash",
            &[("health-check-uri", "healthz")],
            "health-check-uri",
        ),
        (
            "connect port zero",
            &[("health-check-connect-port", "0")],
            "health-check-connect-port",
        ),
        (
            "connect port too big",
            &[("health-check-connect-port", "65536")],
            "health-check-connect-port",
        ),
        (
            "connect port with tcp",
            &[
                ("health-check-type", "tcp"),
                ("health-check-connect-port", "80"),
            ],
            "health-check-connect-port",
        ),
        (
            "interval zero",
            &[("health-check-interval", "0")],
            "health-check-interval",
        ),
        (
            "interval too long",
            &[("health-check-interval", "51")],
            "health-check-interval",
        ),
        (
            "interval not a number",
            &[("health-check-interval", "5s")],
            "health-check-interval",
        ),
        (
            "connect timeout",
            &[("health-check-connect-timeout", "301")],
            "health-check-connect-timeout",
        ),
        (
            "timeout",
            &[("health-check-timeout", "0")],
            "health-check-timeout",
        ),
        (
            "healthy threshold",
            &[("healthy-threshold", "1")],
            "healthy-threshold",
        ),
        (
            "unhealthy threshold",
            &[("unhealthy-threshold", "11")],
            "unhealthy-threshold",
        ),
        ("acl status", &[("acl-status", "maybe")], "acl-status"),
        ("acl on without id", &[("acl-status", "on")], "acl-id"),
        (
            "acl type",
            &[("acl-status", "on"), ("acl-id", "a"), ("acl-type", "grey")],
            "acl-type",
        ),
        (
            "force override",
            &[("force-override-listeners", "yes")],
            "force-override-listeners",
        ),
        ("weight below zero", &[("weight", "-1")], "weight"),
        ("weight too big", &[("weight", "101")], "weight"),
        (
            "persistence",
            &[("persistence-timeout", "-1")],
            "persistence-timeout",
        ),
        ("ip", &[("ip", "not-an-ip")], "-ip]"),
    ];
    for (desc, pairs, name) in cases {
        match parse(pairs) {
            Err(ProviderError::InvalidSpec { field, reason }) => {
                assert!(
                    field.starts_with("metadata.annotations[service.beta.kubernetes.io/alibaba-cloud-loadbalancer-")
                        && field.contains(name),
                    "{desc}: field {field:?} should name {name}"
                );
                assert!(!reason.is_empty(), "{desc}");
            }
            other => panic!("{desc}: expected InvalidSpec, got {other:?}"),
        }
    }
}

#[test]
fn acl_and_source_ranges_are_exclusive() {
    let mut s = spec(&[("acl-status", "on"), ("acl-id", "acl-1")]);
    s.source_ranges = vec!["10.0.0.0/8".parse().expect("net")];
    let err = SlbOptions::parse(&s).expect_err("both");
    assert!(err.to_string().contains("acl-status"), "{err}");
}

#[test]
fn prepare_checks_listeners_and_annotations_without_io() {
    // The endpoint is never contacted: prepare is pure.
    let provider = SlbProvider::new(SlbProviderConfig::new(
        "http://127.0.0.1:9",
        ClusterName::new("c"),
    ))
    .expect("provider");
    let mut s = spec(&[("weight", "500")]);
    assert!(matches!(
        provider.prepare(s.clone()).map(|_| ()),
        Err(ProviderError::InvalidSpec { .. })
    ));
    s.annotations = Annotations::default();
    s.listeners = vec![portico_provider::Listener {
        port: 9999,
        protocol: portico_provider::Protocol::Sctp,
        node_port: 30999,
        name: None,
    }];
    assert!(matches!(
        provider.prepare(s.clone()).map(|_| ()),
        Err(ProviderError::Unsupported { .. })
    ));
    s.listeners[0].protocol = portico_provider::Protocol::Tcp;
    assert!(provider.prepare(s.clone()).map(|_| ()).is_ok());
    s.key.cluster = ClusterName::new("other");
    assert!(
        matches!(
            provider.prepare(s.clone()).map(|_| ()),
            Err(ProviderError::InvalidSpec { .. })
        ),
        "a foreign cluster's key"
    );
}
