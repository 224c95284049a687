//! The provider against a real cloud server: reuse by id, errors, paging,
//! annotations reaching the cloud.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, ClusterName, IpMode, Listener as SpecListener, LoadBalancerKey,
    LoadBalancerProvider, LoadBalancerSpec, Protocol, ProviderError, Target,
};
use portico_slb::cloud::model::*;
use portico_slb::cloud::{
    ApiStats, CloudConfig, CloudServer, FaultConfig, FaultRule, NullSink, Quotas,
};
use portico_slb::provider::options::PREFIX;
use portico_slb::provider::{SlbProvider, SlbProviderConfig};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn setup(config: CloudConfig) -> (CloudServer, SlbProvider, reqwest::Client) {
    let cloud = CloudServer::start(
        config,
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(NullSink),
    )
    .await
    .expect("cloud");
    let mut pc = SlbProviderConfig::new(cloud.url(), ClusterName::new("test"));
    pc.max_retries = 2;
    let provider = SlbProvider::new(pc).expect("provider");
    (cloud, provider, reqwest::Client::new())
}

fn spec(name: &str, annotations: &[(&str, &str)]) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(LoadBalancerKey::new(
        ClusterName::new("test"),
        "ns",
        name,
        format!("uid-{name}"),
    ));
    spec.listeners = vec![SpecListener {
        port: 80,
        protocol: Protocol::Tcp,
        node_port: 30080,
        name: None,
    }];
    spec.targets = vec![Target {
        node_name: "n1".into(),
        addresses: vec!["10.0.0.1".parse().expect("ip")],
        provider_id: None,
        labels: BTreeMap::new(),
    }]
    .into();
    spec.annotations = Annotations::new(
        annotations
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect(),
    );
    spec
}

async fn set_faults(http: &reqwest::Client, cloud: &CloudServer, faults: FaultConfig) {
    let resp = http
        .put(format!("{}/admin/faults", cloud.url()))
        .json(&faults)
        .send()
        .await
        .expect("faults");
    assert!(resp.status().is_success());
}

/// Mutating calls the cloud has answered so far.
async fn mutating_calls(http: &reqwest::Client, cloud: &CloudServer) -> u64 {
    let stats: ApiStats = http
        .get(format!("{}/admin/stats", cloud.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    stats.mutating_calls
}

#[tokio::test]
async fn status_and_annotations_reach_the_cloud() {
    tokio::time::timeout(TIMEOUT, async {
        let (cloud, provider, http) = setup(CloudConfig::default()).await;
        let s = spec("annotated", &[("address-type", "intranet"), ("spec", "slb.s2.small"), ("ip", "127.240.9.9")]);
        let status = provider.ensure_spec(&s).await.expect("ensure");
        let ingress = &status.ingress[0];
        assert_eq!(ingress.ip, Some("127.240.9.9".parse().expect("ip")));
        assert_eq!(ingress.ip_mode, Some(IpMode::Proxy));
        assert_eq!(ingress.ports.len(), 1);
        let state = cloud.snapshot();
        let lb = state.balancers.values().next().expect("one balancer");
        assert_eq!(lb.address_type, AddressType::Intranet);
        assert_eq!(lb.spec, "slb.s2.small");
        assert_eq!(lb.tags.get("portico.io/service-name").map(String::as_str), Some("annotated"));
        assert!(lb.name.starts_with("portico-"));

        // A spec change is made in place; an address type change is refused.
        let s2 = spec("annotated", &[("address-type", "intranet"), ("spec", "slb.s3.large"), ("ip", "127.240.9.9")]);
        provider.ensure_spec(&s2).await.expect("spec change");
        assert_eq!(cloud.snapshot().balancers.values().next().map(|b| b.spec.clone()), Some("slb.s3.large".into()));
        let before = mutating_calls(&http, &cloud).await;
        provider.ensure_spec(&s2).await.expect("at rest");
        assert_eq!(mutating_calls(&http, &cloud).await, before, "a resized balancer at rest");
        let s3 = spec("annotated", &[("address-type", "internet"), ("ip", "127.240.9.9")]);
        assert!(matches!(provider.ensure_spec(&s3).await, Err(ProviderError::InvalidSpec { field, .. }) if field.contains("address-type")));

        let outside = spec("outside", &[("ip", "192.0.2.1")]);
        match provider.ensure_spec(&outside).await {
            Err(ProviderError::InvalidSpec { field, .. }) => assert!(field.contains("address"), "{field}"),
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn reused_balancer_is_never_deleted() {
    tokio::time::timeout(TIMEOUT, async {
        let (cloud, provider, http) = setup(CloudConfig::default()).await;
        let base = cloud.url();
        let lb: LoadBalancer = http
            .post(format!("{base}/v1/load-balancers"))
            .json(&json!({"name": "hand-made"}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let group: BackendServerGroup = http
            .post(format!(
                "{base}/v1/load-balancers/{}/backend-server-groups",
                lb.id
            ))
            .json(&json!({"name": "theirs", "servers": []}))
            .send()
            .await
            .expect("group")
            .json()
            .await
            .expect("json");
        let resp = http
            .post(format!("{base}/v1/load-balancers/{}/listeners", lb.id))
            .json(&json!({"port": 9000, "protocol": "tcp", "backend_server_group_id": group.id}))
            .send()
            .await
            .expect("listener");
        assert!(resp.status().is_success());

        // A clash with their listener is refused before anything changes:
        // the balancer is not even tagged as the Service's.
        let mut clash = spec("reuser", &[("id", &lb.id)]);
        clash.listeners.push(SpecListener {
            port: 9000,
            protocol: Protocol::Tcp,
            node_port: 30900,
            name: None,
        });
        let before = mutating_calls(&http, &cloud).await;
        assert!(matches!(
            provider.ensure_spec(&clash).await,
            Err(ProviderError::InvalidSpec { .. })
        ));
        assert_eq!(
            mutating_calls(&http, &cloud).await,
            before,
            "a refused reuse"
        );
        assert!(provider.list_owned().await.expect("owned").is_empty());

        let s = spec("reuser", &[("id", &lb.id)]);
        let status = provider.ensure_spec(&s).await.expect("ensure on reused");
        let before = mutating_calls(&http, &cloud).await;
        provider.ensure_spec(&s).await.expect("at rest");
        assert_eq!(
            mutating_calls(&http, &cloud).await,
            before,
            "a reused balancer at rest"
        );
        assert_eq!(status.ingress[0].ip, Some(lb.address));
        assert_eq!(
            cloud.snapshot().listeners.len(),
            2,
            "ours added, theirs kept"
        );
        assert_eq!(
            provider.list_owned().await.expect("owned"),
            vec![s.key.clone()]
        );

        // Still refused once the balancer is the Service's.
        assert!(matches!(
            provider.ensure_spec(&clash).await,
            Err(ProviderError::InvalidSpec { .. })
        ));

        provider.delete(&s.key).await.expect("delete");
        let state = cloud.snapshot();
        let kept = state
            .balancers
            .get(&lb.id)
            .expect("the reused balancer stays");
        assert!(
            !kept.tags.contains_key("portico.io/cluster"),
            "ownership tags removed"
        );
        assert_eq!(state.listeners.len(), 1, "only portico's listener went");
        assert_eq!(state.listeners.values().next().map(|l| l.port), Some(9000));
        assert!(provider.list_owned().await.expect("owned").is_empty());

        let missing = spec("missing", &[("id", "lb-does-not-exist")]);
        assert!(matches!(
            provider.ensure_spec(&missing).await,
            Err(ProviderError::NotFound { .. })
        ));
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn errors_map_to_what_the_controller_should_do() {
    tokio::time::timeout(TIMEOUT, async {
        let (cloud, provider, http) = setup(CloudConfig {
            quotas: Quotas {
                balancers: 1,
                ..Quotas::default()
            },
            ..CloudConfig::default()
        })
        .await;
        provider
            .ensure_spec(&spec("first", &[]))
            .await
            .expect("first");
        match provider.ensure_spec(&spec("second", &[])).await {
            Err(ProviderError::QuotaExceeded { resource, .. }) => assert_eq!(resource, "balancers"),
            other => panic!("{other:?}"),
        }

        // A long Retry-After is handed back rather than slept through.
        set_faults(
            &http,
            &cloud,
            FaultConfig {
                default: FaultRule {
                    throttle_every: 1,
                    retry_after_ms: 30_000,
                    ..FaultRule::default()
                },
                ..FaultConfig::default()
            },
        )
        .await;
        let started = Instant::now();
        match provider.ensure_spec(&spec("first", &[])).await {
            Err(ProviderError::Throttled { retry_after }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));

        // A short one is waited out, and the call succeeds on retry.
        set_faults(
            &http,
            &cloud,
            FaultConfig {
                default: FaultRule {
                    throttle_every: 2,
                    retry_after_ms: 50,
                    ..FaultRule::default()
                },
                ..FaultConfig::default()
            },
        )
        .await;
        provider
            .ensure_spec(&spec("first", &[]))
            .await
            .expect("retries through throttling");

        // A cloud that keeps failing is transient.
        set_faults(
            &http,
            &cloud,
            FaultConfig {
                default: FaultRule {
                    error_every: 1,
                    ..FaultRule::default()
                },
                ..FaultConfig::default()
            },
        )
        .await;
        assert!(matches!(
            provider.ensure_spec(&spec("first", &[])).await,
            Err(ProviderError::Transient { .. })
        ));
        set_faults(&http, &cloud, FaultConfig::default()).await;

        // An unreachable cloud is transient too.
        let gone = SlbProvider::new(SlbProviderConfig {
            max_retries: 1,
            ..SlbProviderConfig::new("http://127.0.0.1:9", ClusterName::new("test"))
        })
        .expect("provider");
        assert!(matches!(
            gone.list_owned().await,
            Err(ProviderError::Transient { .. })
        ));
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn list_owned_pages_through_many_balancers() {
    tokio::time::timeout(TIMEOUT, async {
        let (cloud, provider, http) = setup(CloudConfig::default()).await;
        for i in 0..130 {
            let cluster = if i % 10 == 0 { "other" } else { "test" };
            let resp = http
                .post(format!("{}/v1/load-balancers", cloud.url()))
                .json(&json!({"name": format!("b{i}"), "tags": {
                    "portico.io/cluster": cluster,
                    "portico.io/service-namespace": "ns",
                    "portico.io/service-name": format!("svc-{i}"),
                    "portico.io/service-uid": format!("uid-{i}"),
                }}))
                .send()
                .await
                .expect("create");
            assert!(resp.status().is_success());
        }
        let owned = provider.list_owned().await.expect("list_owned");
        assert_eq!(owned.len(), 117, "130 minus the other cluster's 13");
        assert!(
            owned
                .iter()
                .all(|k| k.cluster.as_str() == "test" && k.namespace == "ns")
        );
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn source_ranges_and_user_acls() {
    tokio::time::timeout(TIMEOUT, async {
        let (cloud, provider, http) = setup(CloudConfig::default()).await;
        let mut s = spec("ranged", &[]);
        s.source_ranges = vec!["10.0.0.0/8".parse().expect("net")];
        provider.ensure_spec(&s).await.expect("ensure");
        let state = cloud.snapshot();
        let acl = state.acls.values().next().expect("managed acl");
        assert_eq!(
            acl.entries,
            vec![AclEntry::new("10.0.0.0/8".parse().expect("net"))]
        );
        assert!(
            state
                .listeners
                .values()
                .all(|l| l.settings.acl.as_ref().map(|a| &a.acl_id) == Some(&acl.id))
        );
        provider.delete(&s.key).await.expect("delete");
        assert!(
            cloud.snapshot().acls.is_empty(),
            "the managed acl goes with the Service"
        );

        let user: Acl = http
            .post(format!("{}/v1/acls", cloud.url()))
            .json(&json!({"name": "office", "entries": [{"cidr": "192.168.0.0/16"}]}))
            .send()
            .await
            .expect("acl")
            .json()
            .await
            .expect("json");
        let s = spec(
            "user-acl",
            &[
                ("acl-status", "on"),
                ("acl-id", &user.id),
                ("acl-type", "black"),
            ],
        );
        provider.ensure_spec(&s).await.expect("ensure");
        let state = cloud.snapshot();
        let l = state.listeners.values().next().expect("listener");
        assert_eq!(
            l.settings.acl,
            Some(ListenerAcl {
                acl_id: user.id.clone(),
                mode: AclMode::Black
            })
        );
        provider.delete(&s.key).await.expect("delete");
        assert!(
            cloud.snapshot().acls.contains_key(&user.id),
            "a user's acl is never deleted"
        );
    })
    .await
    .expect("timed out");
}
