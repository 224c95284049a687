//! The arp provider against the contract, without an API server (fixed
//! pools).
//!
//! Only part of the conformance suite applies. Its scenarios check after
//! each change that the cloud routes every listener to every target's node
//! port (`Observed::routes`), and the arp provider builds no route: the
//! speakers pick one announcing node per address among the nodes *they*
//! see alive, and kube-proxy on that node forwards the traffic. Reporting
//! listeners × targets would be a lie, so `observe` reports the ports an
//! allocation serves and no routes, and the scenarios that compare routes
//! are replaced by the provider's own below (same steps, checking what the
//! provider does own: the address, the ports, and that nothing changes
//! when only targets, health checks or source ranges change).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use portico_arp::allocator::Allocation;
use portico_arp::pool::{AddressBlock, IpPool, IpPoolSpec};
use portico_arp::provider::Ownership;
use portico_arp::request::annotation;
use portico_arp::{ArpProvider, ArpProviderConfig};
use portico_provider::conformance::{Faults, Harness, Observed};
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, ClusterName, HealthCheck, IpFamily, IpMode, Listener, LoadBalancerKey,
    LoadBalancerProvider, LoadBalancerSpec, Protocol, ProviderError, Target, TrafficPolicy,
};

fn config() -> ArpProviderConfig {
    ArpProviderConfig::new(
        ClusterName::new("conformance"),
        Ownership {
            class: "portico.io/arp".into(),
            claim_classless: false,
        },
        "test",
    )
}

fn pool(name: &str, addresses: &[&str]) -> IpPool {
    IpPool::new(
        name,
        IpPoolSpec {
            addresses: addresses.iter().map(|a| AddressBlock::from(*a)).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            namespace_selector: None,
            service_selector: None,
        },
    )
}

struct ArpHarness {
    provider: ArpProvider,
}

impl ArpHarness {
    fn with(pools: &[IpPool]) -> Self {
        Self {
            provider: ArpProvider::with_pools(config(), pools),
        }
    }

    fn start() -> Self {
        Self::with(&[pool("conformance", &["10.96.0.0/24", "fd00:96::/120"])])
    }
}

#[async_trait]
impl Harness for ArpHarness {
    type Provider = ArpProvider;

    fn provider(&self) -> &ArpProvider {
        &self.provider
    }

    /// What the allocator holds for `key`: the ports its address serves;
    /// no routes (the provider makes none) and no source filtering of its
    /// own (kube-proxy applies `loadBalancerSourceRanges`).
    async fn observe(&self, key: &LoadBalancerKey) -> Option<Observed> {
        self.provider.allocation(key).map(|a: Allocation| Observed {
            listeners: a
                .ports
                .iter()
                .map(|(proto, port)| (*port, *proto))
                .collect(),
            routes: BTreeSet::new(),
            health_checks: BTreeSet::new(),
            source_ranges: None,
        })
    }

    /// Every change of the allocator counts as a mutation.
    async fn mutating_calls(&self) -> u64 {
        self.provider.generation()
    }

    async fn set_faults(&self, _: Faults) -> bool {
        false
    }
}

/// The conformance scenarios that compare no routes.
mod conformance {
    use super::*;

    async fn run(scenario: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(60), scenario)
            .await
            .expect("scenario timed out");
    }

    #[tokio::test]
    async fn delete_twice() {
        let h = ArpHarness::start();
        run(portico_provider::conformance::delete_twice(&h)).await;
    }

    #[tokio::test]
    async fn list_owned_tracks_balancers() {
        let h = ArpHarness::start();
        run(portico_provider::conformance::list_owned_tracks_balancers(
            &h,
        ))
        .await;
    }

    #[tokio::test]
    async fn rejects_invalid_without_leaking() {
        let h = ArpHarness::start();
        run(portico_provider::conformance::rejects_invalid_without_leaking(&h)).await;
    }
}

fn key(name: &str) -> LoadBalancerKey {
    LoadBalancerKey::new(
        ClusterName::new("conformance"),
        "default",
        name,
        format!("uid-{name}"),
    )
}

fn listener(port: u16, protocol: Protocol) -> Listener {
    Listener {
        port,
        protocol,
        node_port: 30000 + port,
        name: None,
    }
}

fn spec(name: &str) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(key(name));
    spec.listeners = vec![listener(53, Protocol::Udp), listener(80, Protocol::Tcp)];
    spec.targets = (0..2)
        .map(|i| Target {
            node_name: format!("node-{i}"),
            addresses: vec![format!("10.240.0.{}", i + 10).parse().expect("ip")],
            provider_id: None,
            labels: BTreeMap::new(),
        })
        .collect::<Vec<_>>()
        .into();
    spec
}

fn with_annotations(mut spec: LoadBalancerSpec, pairs: &[(&str, &str)]) -> LoadBalancerSpec {
    spec.annotations = Annotations::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    spec
}

fn ips(status: &portico_provider::LoadBalancerStatus) -> Vec<IpAddr> {
    status.ingress.iter().filter_map(|i| i.ip).collect()
}

#[tokio::test]
async fn create_gives_a_vip_per_family_serving_the_ports() {
    let h = ArpHarness::start();
    let mut s = spec("web");
    s.ip_families = vec![IpFamily::V6, IpFamily::V4];
    let status = h.provider.ensure_spec(&s).await.expect("ensure");
    assert_eq!(
        ips(&status),
        vec![
            "fd00:96::".parse::<IpAddr>().expect("ip"),
            "10.96.0.0".parse().expect("ip")
        ],
        "one address per family, the primary family first"
    );
    for ingress in &status.ingress {
        assert_eq!(
            ingress.ip_mode,
            Some(IpMode::Vip),
            "traffic arrives addressed to the VIP"
        );
        let ports: Vec<(u16, Protocol)> =
            ingress.ports.iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(ports, vec![(53, Protocol::Udp), (80, Protocol::Tcp)]);
    }
    let got = h.provider.get(&s.key).await.expect("get").expect("held");
    assert_eq!(got, status, "get reports what ensure returned");
    let seen = h.observe(&s.key).await.expect("allocated");
    assert_eq!(
        seen.listeners,
        BTreeSet::from([(53, Protocol::Udp), (80, Protocol::Tcp)])
    );
    assert_eq!(
        h.provider.list_owned().await.expect("list"),
        vec![s.key.clone()]
    );
}

#[tokio::test]
async fn an_unchanged_spec_or_one_that_changes_only_targets_checks_or_ranges_changes_nothing() {
    let h = ArpHarness::start();
    let mut s = spec("quiet");
    let first = h.provider.ensure_spec(&s).await.expect("ensure");
    let generation = h.mutating_calls().await;
    /// A change to a spec.
    type Change = Box<dyn Fn(&mut LoadBalancerSpec)>;
    let changes: Vec<(&str, Change)> = vec![
        ("the same spec", Box::new(|_| {})),
        (
            "two more targets",
            Box::new(|s| {
                let mut targets = s.targets.to_vec();
                targets.extend(targets.clone().into_iter().map(|mut t| {
                    t.node_name.push_str("-b");
                    t
                }));
                s.targets = targets.into();
            }),
        ),
        ("no targets", Box::new(|s| s.targets = Vec::new().into())),
        (
            "an HTTP health check (Local)",
            Box::new(|s| {
                s.health_check = HealthCheck::Http {
                    port: 32000,
                    path: "/healthz".into(),
                };
            }),
        ),
        (
            "source ranges",
            Box::new(|s| s.source_ranges = vec!["10.0.0.0/8".parse().expect("cidr")]),
        ),
    ];
    for (desc, change) in changes {
        change(&mut s);
        let again = h.provider.ensure_spec(&s).await.expect(desc);
        assert_eq!(ips(&again), ips(&first), "{desc}: same address");
        assert_eq!(
            h.mutating_calls().await,
            generation,
            "{desc}: the allocator did not change"
        );
    }
}

#[tokio::test]
async fn listener_changes_keep_the_address_and_follow_the_ports() {
    let h = ArpHarness::start();
    let mut s = spec("ports");
    let first = h.provider.ensure_spec(&s).await.expect("ensure");
    s.listeners.push(listener(443, Protocol::Tcp));
    let added = h.provider.ensure_spec(&s).await.expect("listener added");
    assert_eq!(
        ips(&added),
        ips(&first),
        "adding a listener keeps the address"
    );
    s.listeners.retain(|l| l.port != 53);
    let removed = h.provider.ensure_spec(&s).await.expect("listener removed");
    let ports: Vec<u16> = removed.ingress[0].ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80, 443], "status reports the ports served");
    let seen = h.observe(&s.key).await.expect("allocated");
    assert_eq!(
        seen.listeners,
        BTreeSet::from([(80, Protocol::Tcp), (443, Protocol::Tcp)])
    );
}

#[tokio::test]
async fn an_exhausted_pool_fails_with_allocation_failed_and_retries_into_freed_capacity() {
    let h = ArpHarness::with(&[pool("small", &["10.0.0.0/31"])]);
    let a = h.provider.ensure_spec(&spec("a")).await.expect("a");
    h.provider.ensure_spec(&spec("b")).await.expect("b");
    let err = h
        .provider
        .ensure_spec(&spec("c"))
        .await
        .expect_err("pool exhausted");
    assert!(
        matches!(err, ProviderError::Transient { .. }) && err.retry_floor().is_zero(),
        "retried with backoff until capacity appears: {err:?}"
    );
    assert!(
        err.to_string()
            .contains("AllocationFailed: no free IPv4 address in IPPool(s) small"),
        "{err}"
    );
    assert!(
        h.provider.get(&key("c")).await.expect("get").is_none(),
        "nothing held"
    );
    h.provider.delete(&key("a")).await.expect("delete a");
    let c = h
        .provider
        .ensure_spec(&spec("c"))
        .await
        .expect("capacity appeared");
    assert_eq!(ips(&c), ips(&a), "c takes the address a freed");
}

#[tokio::test]
async fn asked_addresses_come_from_the_spec_or_any_annotation_spelling() {
    let h = ArpHarness::start();
    let mut by_field = spec("field");
    by_field.requested_ips = vec!["10.96.0.7".parse().expect("ip")];
    let rows = [
        ("spec.loadBalancerIP", by_field, "10.96.0.7"),
        (
            "portico.io/load-balancer-ips",
            with_annotations(
                spec("portico"),
                &[(annotation::LOAD_BALANCER_IPS, "10.96.0.8")],
            ),
            "10.96.0.8",
        ),
        (
            "metallb.universe.tf/loadBalancerIPs",
            with_annotations(
                spec("metallb"),
                &[(annotation::METALLB_LEGACY_LOAD_BALANCER_IPS, "10.96.0.9")],
            ),
            "10.96.0.9",
        ),
    ];
    for (desc, s, want) in rows {
        let status = h
            .provider
            .ensure_spec(&s)
            .await
            .unwrap_or_else(|e| panic!("{desc}: {e}"));
        assert_eq!(
            ips(&status),
            vec![want.parse::<IpAddr>().expect("ip")],
            "{desc}"
        );
    }
    let mut outside = spec("outside");
    outside.requested_ips = vec!["192.0.2.99".parse().expect("ip")];
    let err = h
        .provider
        .ensure_spec(&outside)
        .await
        .expect_err("outside every pool");
    assert!(
        err.to_string()
            .contains("AllocationFailed: 192.0.2.99 is outside every accepted IPPool"),
        "{err}"
    );
    let mut taken = spec("taken");
    taken.requested_ips = vec!["10.96.0.7".parse().expect("ip")];
    let err = h
        .provider
        .ensure_spec(&taken)
        .await
        .expect_err("s2 can't take s1's address");
    assert!(
        err.to_string()
            .contains("10.96.0.7 is in use by default/field"),
        "{err}"
    );
}

#[tokio::test]
async fn services_with_one_sharing_key_share_an_address_unless_ports_clash() {
    let h = ArpHarness::start();
    let shared = |name: &str, port: u16, protocol: Protocol| {
        let mut s = with_annotations(spec(name), &[(annotation::METALLB_ALLOW_SHARED_IP, "dns")]);
        s.listeners = vec![listener(port, protocol)];
        s
    };
    let udp = h
        .provider
        .ensure_spec(&shared("dns-udp", 53, Protocol::Udp))
        .await
        .expect("udp");
    let tcp = h
        .provider
        .ensure_spec(&shared("dns-tcp", 53, Protocol::Tcp))
        .await
        .expect("tcp");
    assert_eq!(ips(&udp), ips(&tcp), "TCP/53 and UDP/53 share one address");
    let mut clash = shared("dns-again", 53, Protocol::Udp);
    clash.requested_ips = ips(&udp);
    let err = h
        .provider
        .ensure_spec(&clash)
        .await
        .expect_err("port clash");
    assert!(
        err.to_string().contains("port 53/UDP is taken there"),
        "{err}"
    );
    let mut local = shared("dns-local", 5353, Protocol::Udp);
    local.traffic_policy = TrafficPolicy::Local;
    local.requested_ips = ips(&udp);
    let err = h
        .provider
        .ensure_spec(&local)
        .await
        .expect_err("another traffic policy");
    assert!(err.to_string().contains("externalTrafficPolicy"), "{err}");
}

#[tokio::test]
async fn a_provider_fed_by_the_api_server_answers_nothing_before_it_has_loaded() {
    let mut config = config();
    config.ready_timeout = Duration::from_millis(50);
    let provider = ArpProvider::new(config);
    let err = provider
        .ensure_spec(&spec("early"))
        .await
        .expect_err("not loaded");
    assert!(
        err.to_string().contains("has not loaded the IPPools"),
        "{err}"
    );
    assert!(
        provider.list_owned().await.is_err(),
        "nor lists before it knows"
    );
    assert!(
        provider.delete(&key("early")).await.is_err(),
        "nor releases"
    );
    assert_eq!(provider.name(), "arp");
}
