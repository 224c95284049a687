//! The provider conformance suite: the same scenarios against any provider.
//!
//! A provider's tests implement [`Harness`] (how to reach the provider, how
//! to count its mutating cloud calls, how to inject faults) and invoke
//! [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[tokio::test]` per scenario:
//!
//! ```text
//! portico_provider::conformance_tests!(async { MyHarness::start().await });
//! ```
//!
//! Every scenario uses keys with a fresh UID, so scenarios can run in
//! parallel against one shared cloud. After every change the suite reads
//! the cloud through [`Harness::observe`] and checks it holds what the spec
//! asks (listeners, targets, health check, source ranges): a provider that
//! answers "ok" without building fails.
//!
//! Longer than most files on purpose: the whole suite in one file, so a
//! provider's author reads everything it asserts in one place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use async_trait::async_trait;

use ipnet::IpNet;

use crate::testing::EnsureSpec;

use crate::{
    ClusterName, HealthCheck, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, Protocol, ProviderError, Target, Targets,
};

/// A health check as the cloud holds it, in the spec's words where it can.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObservedCheck {
    /// A TCP connect to the port traffic goes to.
    TrafficPort,
    /// An HTTP GET of `path` on `port`.
    Http { port: u16, path: String },
    /// Anything else, described by the cloud's own words.
    Other(String),
}

/// What the cloud holds for one key, read back by a [`Harness`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// `(port, protocol)` of every listener portico made.
    pub listeners: BTreeSet<(u16, Protocol)>,
    /// Where each listener sends traffic: `(port, protocol, target, node
    /// port)`, the target as [`Harness::target_id`] names it.
    pub routes: BTreeSet<(u16, Protocol, String, u16)>,
    /// Every distinct health check of the balancer's listeners.
    pub health_checks: BTreeSet<ObservedCheck>,
    /// Who may connect; `None` when the cloud cannot filter by source.
    pub source_ranges: Option<BTreeSet<IpNet>>,
}

impl Observed {
    /// What a cloud that does exactly what `spec` says would hold: the
    /// reference for [`RecordingProvider`](crate::testing::RecordingProvider).
    pub fn exactly<H: Harness + ?Sized>(spec: &LoadBalancerSpec, h: &H) -> Self {
        Self {
            listeners: spec
                .listeners
                .iter()
                .map(|l| (l.port, l.protocol))
                .collect(),
            routes: spec
                .listeners
                .iter()
                .flat_map(|l| {
                    spec.targets
                        .iter()
                        .map(move |t| (l.port, l.protocol, h.target_id(t), l.node_port))
                })
                .collect(),
            health_checks: BTreeSet::from([match &spec.health_check {
                HealthCheck::TrafficPort => ObservedCheck::TrafficPort,
                HealthCheck::Http { port, path } => ObservedCheck::Http {
                    port: *port,
                    path: path.clone(),
                },
            }]),
            source_ranges: Some(spec.source_ranges.iter().copied().collect()),
        }
    }
}

/// Faults a harness injects into its cloud.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Fail every n-th cloud call (0 = never).
    pub fail_every: u64,
    /// Fail with throttling (Retry-After) rather than a server error.
    pub throttle: bool,
}

/// What the suite needs from a provider's test setup.
#[async_trait]
pub trait Harness: Send + Sync {
    type Provider: LoadBalancerProvider;

    fn provider(&self) -> &Self::Provider;

    /// The cluster name the provider was configured with.
    fn cluster(&self) -> ClusterName {
        ClusterName::new("conformance")
    }

    /// `n` targets the cloud accepts (real instance ids where the cloud needs them).
    async fn targets(&self, n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                node_name: format!("node-{i}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 240, 0, i as u8 + 10))],
                provider_id: None,
                labels: BTreeMap::new(),
            })
            .collect()
    }

    /// How [`Observed::routes`] names a target (an address, an instance id).
    fn target_id(&self, target: &Target) -> String {
        target
            .addresses
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| target.node_name.clone())
    }

    /// What the cloud holds for `key`, read from the cloud itself (not from
    /// the provider's memory); `None` when it holds no balancer for it.
    async fn observe(&self, key: &LoadBalancerKey) -> Option<Observed>;

    /// Mutating cloud calls (create, modify, delete, register, tag...) made so far.
    async fn mutating_calls(&self) -> u64;

    /// Inject faults into the cloud; `false` if this harness cannot.
    async fn set_faults(&self, faults: Faults) -> bool;
}

fn fresh_key<H: Harness + ?Sized>(h: &H, name: &str) -> LoadBalancerKey {
    let uid = uuid::Uuid::new_v4().to_string();
    LoadBalancerKey::new(
        h.cluster(),
        "conformance",
        format!("{name}-{}", &uid[..8]),
        uid,
    )
}

async fn base_spec<H: Harness + ?Sized>(h: &H, name: &str) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(fresh_key(h, name));
    spec.listeners = vec![
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
    spec.listeners.sort();
    spec.targets = h.targets(2).await.into();
    spec
}

/// Retry through transient faults the way the controller would, up to a bound.
async fn ensure_eventually<P: LoadBalancerProvider + ?Sized>(
    provider: &P,
    spec: &LoadBalancerSpec,
) -> LoadBalancerStatus {
    let mut last = None;
    for _ in 0..30 {
        match provider.ensure_spec(spec).await {
            Ok(status) => return status,
            Err(err) => {
                if matches!(
                    err,
                    ProviderError::InvalidSpec { .. } | ProviderError::Unsupported { .. }
                ) {
                    panic!("ensure refused a valid spec: {err}");
                }
                // The controller's floor, shortened for the suite.
                let wait = err.retry_floor().min(Duration::from_secs(2));
                tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
                last = Some(err);
            }
        }
    }
    panic!("ensure did not succeed in 30 attempts, last error: {last:?}");
}

async fn delete_eventually<P: LoadBalancerProvider + ?Sized>(provider: &P, key: &LoadBalancerKey) {
    let mut last = None;
    for _ in 0..30 {
        match provider.delete(key).await {
            Ok(()) => return,
            Err(err) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                last = Some(err);
            }
        }
    }
    panic!("delete did not succeed in 30 attempts, last error: {last:?}");
}

fn assert_reachable(status: &LoadBalancerStatus, spec: &LoadBalancerSpec) {
    assert!(
        !status.ingress.is_empty(),
        "{}: status has no ingress",
        spec.key
    );
    for ingress in &status.ingress {
        assert!(
            ingress.ip.is_some() || ingress.hostname.is_some(),
            "{}: ingress without ip or hostname: {ingress:?}",
            spec.key
        );
    }
}

/// Assert the cloud holds what `spec` asks, and return what it holds.
async fn assert_cloud_matches<H: Harness + ?Sized>(
    h: &H,
    spec: &LoadBalancerSpec,
    step: &str,
) -> Observed {
    let Some(seen) = h.observe(&spec.key).await else {
        panic!("{step}: the cloud holds no balancer for {}", spec.key);
    };
    let want = Observed::exactly(spec, h);
    assert_eq!(
        seen.listeners, want.listeners,
        "{step}: listeners in the cloud"
    );
    assert_eq!(
        seen.routes, want.routes,
        "{step}: targets and node ports in the cloud"
    );
    if let HealthCheck::Http { .. } = spec.health_check {
        assert_eq!(
            seen.health_checks, want.health_checks,
            "{step}: every listener checks the spec's HTTP endpoint"
        );
    }
    if let Some(ranges) = &seen.source_ranges {
        let everyone: BTreeSet<IpNet> = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let open =
            spec.source_ranges.is_empty() && (ranges.is_empty() || ranges.is_subset(&everyone));
        assert!(
            open || Some(ranges) == want.source_ranges.as_ref(),
            "{step}: source ranges in the cloud {ranges:?}, spec {:?}",
            spec.source_ranges
        );
    }
    seen
}

/// Ensure, then assert the cloud matches the spec and the re-ensure of the
/// same spec mutates nothing.
async fn converge_and_check_noop<H: Harness + ?Sized>(
    h: &H,
    spec: &LoadBalancerSpec,
    step: &str,
) -> LoadBalancerStatus {
    let status = ensure_eventually(h.provider(), spec).await;
    assert_reachable(&status, spec);
    assert_cloud_matches(h, spec, step).await;
    let before = h.mutating_calls().await;
    let again = ensure_eventually(h.provider(), spec).await;
    let after = h.mutating_calls().await;
    assert_eq!(
        after - before,
        0,
        "{step}: re-ensure of an unchanged spec made mutating calls"
    );
    assert_eq!(
        status
            .ingress
            .iter()
            .map(|i| (i.ip, &i.hostname))
            .collect::<Vec<_>>(),
        again
            .ingress
            .iter()
            .map(|i| (i.ip, &i.hostname))
            .collect::<Vec<_>>(),
        "{step}: address changed on re-ensure"
    );
    status
}

async fn count_owned<H: Harness + ?Sized>(h: &H, key: &LoadBalancerKey) -> usize {
    let owned = h.provider().list_owned().await.expect("list_owned");
    owned.iter().filter(|k| *k == key).count()
}

/// Create a balancer; `get` and `list_owned` see it.
pub async fn create<H: Harness + ?Sized>(h: &H) {
    let spec = base_spec(h, "create").await;
    let status = ensure_eventually(h.provider(), &spec).await;
    assert_reachable(&status, &spec);
    assert_cloud_matches(h, &spec, "create").await;
    let got = h
        .provider()
        .get(&spec.key)
        .await
        .expect("get")
        .expect("balancer exists after ensure");
    assert_eq!(
        got.ingress
            .iter()
            .map(|i| (i.ip, &i.hostname))
            .collect::<Vec<_>>(),
        status
            .ingress
            .iter()
            .map(|i| (i.ip, &i.hostname))
            .collect::<Vec<_>>(),
        "get reports the address ensure returned"
    );
    assert_eq!(
        count_owned(h, &spec.key).await,
        1,
        "list_owned reports the balancer once"
    );
    delete_eventually(h.provider(), &spec.key).await;
}

/// A second `ensure` of an unchanged spec makes zero mutating calls.
pub async fn reensure_is_noop<H: Harness + ?Sized>(h: &H) {
    let spec = base_spec(h, "noop").await;
    converge_and_check_noop(h, &spec, "first create").await;
    delete_eventually(h.provider(), &spec.key).await;
}

/// Adding, changing and removing listeners converges, keeping the address.
pub async fn listener_changes<H: Harness + ?Sized>(h: &H) {
    let mut spec = base_spec(h, "listeners").await;
    let first = converge_and_check_noop(h, &spec, "create").await;

    spec.listeners.push(Listener {
        port: 443,
        protocol: Protocol::Tcp,
        node_port: 30443,
        name: Some("https".into()),
    });
    spec.listeners.sort();
    let added = converge_and_check_noop(h, &spec, "listener added").await;
    assert_eq!(
        first.ingress[0].ip, added.ingress[0].ip,
        "adding a listener keeps the address"
    );
    assert_eq!(first.ingress[0].hostname, added.ingress[0].hostname);

    if let Some(l) = spec.listeners.iter_mut().find(|l| l.port == 80) {
        l.node_port = 31080;
    }
    converge_and_check_noop(h, &spec, "node port changed").await;

    spec.listeners.retain(|l| l.port != 53);
    let removed = converge_and_check_noop(h, &spec, "listener removed").await;
    let ports: Vec<u16> = removed.ingress[0].ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80, 443], "status reports the ports served");
    delete_eventually(h.provider(), &spec.key).await;
}

/// Targets joining and leaving converge; the steady state is quiet again.
pub async fn target_changes<H: Harness + ?Sized>(h: &H) {
    let mut spec = base_spec(h, "targets").await;
    converge_and_check_noop(h, &spec, "create").await;
    spec.targets = h.targets(4).await.into();
    converge_and_check_noop(h, &spec, "two targets joined").await;
    spec.targets = spec.targets[..1].into();
    converge_and_check_noop(h, &spec, "three targets left").await;
    spec.targets = Targets::default();
    converge_and_check_noop(h, &spec, "no targets").await;
    delete_eventually(h.provider(), &spec.key).await;
}

/// Switching between traffic-port and HTTP health checks converges.
pub async fn health_check_changes<H: Harness + ?Sized>(h: &H) {
    let mut spec = base_spec(h, "health").await;
    converge_and_check_noop(h, &spec, "create").await;
    spec.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    spec.traffic_policy = crate::TrafficPolicy::Local;
    converge_and_check_noop(h, &spec, "http health check").await;
    spec.health_check = HealthCheck::Http {
        port: 32001,
        path: "/healthz".into(),
    };
    converge_and_check_noop(h, &spec, "health check port changed").await;
    spec.health_check = HealthCheck::TrafficPort;
    spec.traffic_policy = crate::TrafficPolicy::Cluster;
    converge_and_check_noop(h, &spec, "back to traffic port").await;
    let back = assert_cloud_matches(h, &spec, "back to traffic port").await;
    let local = ObservedCheck::Http {
        port: 32001,
        path: "/healthz".into(),
    };
    assert!(
        !back.health_checks.contains(&local),
        "the Local-policy check stays after switching back: {:?}",
        back.health_checks
    );
    delete_eventually(h.provider(), &spec.key).await;
}

/// Source ranges can be set, changed and cleared.
pub async fn source_range_changes<H: Harness + ?Sized>(h: &H) {
    let mut spec = base_spec(h, "ranges").await;
    spec.listeners.retain(|l| l.protocol == Protocol::Tcp);
    converge_and_check_noop(h, &spec, "create").await;
    spec.source_ranges = vec![
        "10.0.0.0/8".parse().expect("cidr"),
        "192.168.1.0/24".parse().expect("cidr"),
    ];
    converge_and_check_noop(h, &spec, "ranges set").await;
    spec.source_ranges.truncate(1);
    converge_and_check_noop(h, &spec, "range removed").await;
    spec.source_ranges.clear();
    converge_and_check_noop(h, &spec, "ranges cleared").await;
    delete_eventually(h.provider(), &spec.key).await;
}

/// Deleting twice succeeds; nothing is left.
pub async fn delete_twice<H: Harness + ?Sized>(h: &H) {
    let spec = base_spec(h, "delete").await;
    ensure_eventually(h.provider(), &spec).await;
    h.provider().delete(&spec.key).await.expect("first delete");
    h.provider()
        .delete(&spec.key)
        .await
        .expect("deleting what is gone is success");
    assert!(
        h.provider().get(&spec.key).await.expect("get").is_none(),
        "balancer gone after delete"
    );
    assert!(
        h.observe(&spec.key).await.is_none(),
        "the cloud holds nothing after delete"
    );
    assert_eq!(
        count_owned(h, &spec.key).await,
        0,
        "list_owned forgets a deleted balancer"
    );
    // Deleting a key that never existed is success too.
    h.provider()
        .delete(&fresh_key(h, "never"))
        .await
        .expect("delete of unknown key");
}

/// `list_owned` reports exactly the balancers that exist, and a Service
/// re-created under the same name (new UID) is a different balancer.
pub async fn list_owned_tracks_balancers<H: Harness + ?Sized>(h: &H) {
    let a = base_spec(h, "owned-a").await;
    let mut b = a.clone();
    b.key.uid = uuid::Uuid::new_v4().to_string();
    let a_status = ensure_eventually(h.provider(), &a).await;
    let b_status = ensure_eventually(h.provider(), &b).await;
    assert_eq!(count_owned(h, &a.key).await, 1);
    assert_eq!(count_owned(h, &b.key).await, 1);
    assert_ne!(
        (a_status.ingress[0].ip, &a_status.ingress[0].hostname),
        (b_status.ingress[0].ip, &b_status.ingress[0].hostname),
        "a re-created Service gets its own balancer"
    );
    delete_eventually(h.provider(), &a.key).await;
    assert_eq!(count_owned(h, &a.key).await, 0);
    assert_eq!(
        count_owned(h, &b.key).await,
        1,
        "deleting one keeps the other"
    );
    delete_eventually(h.provider(), &b.key).await;
}

/// Under injected faults every operation still converges, with exactly one
/// balancer, and the state after the faults is quiet.
pub async fn converges_under_faults<H: Harness + ?Sized>(h: &H) {
    for throttle in [false, true] {
        let mut spec = base_spec(h, if throttle { "throttled" } else { "faulty" }).await;
        if !h
            .set_faults(Faults {
                fail_every: 3,
                throttle,
            })
            .await
        {
            eprintln!("conformance: harness cannot inject faults; skipping the fault scenario");
            return;
        }
        ensure_eventually(h.provider(), &spec).await;
        spec.targets = h.targets(3).await.into();
        spec.listeners.push(Listener {
            port: 8443,
            protocol: Protocol::Tcp,
            node_port: 31443,
            name: None,
        });
        spec.listeners.sort();
        ensure_eventually(h.provider(), &spec).await;
        h.set_faults(Faults::default()).await;

        converge_and_check_noop(h, &spec, "after faults").await;
        assert_eq!(
            count_owned(h, &spec.key).await,
            1,
            "faults made a duplicate balancer"
        );

        h.set_faults(Faults {
            fail_every: 2,
            throttle,
        })
        .await;
        delete_eventually(h.provider(), &spec.key).await;
        h.set_faults(Faults::default()).await;
        assert!(
            h.provider().get(&spec.key).await.expect("get").is_none(),
            "balancer left after faulty delete"
        );
    }
}

/// An invalid spec is rejected before anything is created.
pub async fn rejects_invalid_without_leaking<H: Harness + ?Sized>(h: &H) {
    let mut spec = base_spec(h, "invalid").await;
    spec.listeners = vec![
        Listener {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: 30080,
            name: None,
        },
        Listener {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: 30081,
            name: None,
        },
    ];
    let before = h.mutating_calls().await;
    let result = h.provider().ensure_spec(&spec).await;
    match result {
        Err(ProviderError::InvalidSpec { .. } | ProviderError::Unsupported { .. }) => {}
        other => panic!("duplicate listener port must be rejected as invalid, got {other:?}"),
    }
    assert_eq!(
        h.mutating_calls().await,
        before,
        "a rejected spec made mutating calls"
    );
    assert!(
        h.provider().get(&spec.key).await.expect("get").is_none(),
        "a rejected spec left a balancer"
    );
    assert!(
        h.observe(&spec.key).await.is_none(),
        "a rejected spec left a balancer in the cloud"
    );
}

/// Expands to one `#[tokio::test]` per conformance scenario. The argument is
/// a future that resolves to the [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            create, reensure_is_noop, listener_changes, target_changes, health_check_changes,
            source_range_changes, delete_twice, list_owned_tracks_balancers,
            converges_under_faults, rejects_invalid_without_leaking);
    };
    (@each $make:expr; $($scenario:ident),*) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let harness = $make.await;
                    tokio::time::timeout(
                        std::time::Duration::from_secs(180),
                        $crate::conformance::$scenario(&harness),
                    )
                    .await
                    .expect(concat!("conformance scenario ", stringify!($scenario), " timed out"));
                }
            )*
        }
    };
}
