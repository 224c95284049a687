//! The arp provider fed by an API server (the stand-in, over HTTP, through
//! a real `kube::Client`): adoption of statuses at the start of a term,
//! other controllers' addresses, selectors on watched labels, and what it
//! writes into IPPool statuses and Events.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use kube_standin::ApiServer;
use portico_arp::pool::{AddressBlock, IpPool, IpPoolSpec};
use portico_arp::provider::Ownership;
use portico_arp::{ArpProvider, ArpProviderConfig};
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    ClusterName, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, Protocol,
};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CLASS: &str = "portico.io/arp";

struct Cluster {
    _server: ApiServer,
    client: Client,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start().await.expect("stand-in");
    let client = server.client().await.expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &IpPool::crd())
        .await
        .expect("IPPool CRD");
    Cluster {
        _server: server,
        client,
    }
}

fn config() -> ArpProviderConfig {
    let mut config = ArpProviderConfig::new(
        ClusterName::new("test"),
        Ownership {
            class: CLASS.into(),
            claim_classless: false,
        },
        "test-replica",
    );
    config.ready_timeout = Duration::from_secs(5);
    config.status_debounce = Duration::from_millis(20);
    config
}

impl Cluster {
    fn pools(&self) -> Api<IpPool> {
        Api::all(self.client.clone())
    }

    async fn pool(&self, name: &str, addresses: &[&str], tweak: impl FnOnce(&mut IpPoolSpec)) {
        let mut spec = IpPoolSpec {
            addresses: addresses.iter().map(|a| AddressBlock::from(*a)).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            namespace_selector: None,
            service_selector: None,
        };
        tweak(&mut spec);
        self.pools()
            .create(&PostParams::default(), &IpPool::new(name, spec))
            .await
            .expect("create pool");
    }

    /// A LoadBalancer Service of `class` on TCP/80, showing `ips` in its status.
    async fn service(&self, ns: &str, name: &str, class: Option<&str>, ips: &[&str]) -> Service {
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": class,
                     "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
        .expect("service");
        let created = services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service");
        if ips.is_empty() {
            return created;
        }
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        services
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
            )
            .await
            .expect("status")
    }
}

/// The spec the controller would build for `svc`.
fn spec_for(svc: &Service) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(key_of(svc));
    spec.listeners = vec![Listener {
        port: 80,
        protocol: Protocol::Tcp,
        node_port: 30080,
        name: None,
    }];
    spec
}

fn key_of(svc: &Service) -> LoadBalancerKey {
    LoadBalancerKey::new(
        ClusterName::new("test"),
        svc.namespace().unwrap_or_default(),
        svc.name_any(),
        svc.uid().unwrap_or_default(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// One leadership term of the provider.
struct Term {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn term(provider: &ArpProvider, client: &Client) -> Term {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (provider, client, stop) = (provider.clone(), client.clone(), stop.clone());
        async move { provider.sync(client, stop).await }
    });
    Term { stop, task }
}

impl Term {
    async fn end(self) {
        self.stop.cancel();
        self.task.await.expect("sync task");
    }
}

async fn ensured(provider: &ArpProvider, svc: &Service) -> Vec<IpAddr> {
    let status = provider.ensure_spec(&spec_for(svc)).await.expect("ensure");
    status.ingress.iter().filter_map(|i| i.ip).collect()
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn within(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn a_new_term_adopts_every_status_before_answering() {
    within(async {
        let c = cluster().await;
        c.pool("p", &["10.0.0.0/29"], |_| {}).await;
        let s1 = c.service("default", "s1", Some(CLASS), &["10.0.0.0"]).await;
        c.service("default", "metallb-web", Some("metallb"), &["10.0.0.1"]).await;
        c.service("default", "classless", None, &["10.0.0.2"]).await;
        let s3 = c.service("default", "s3", Some(CLASS), &[]).await;
        let provider = ArpProvider::new(config());
        // The first call arrives before the term has loaded anything: it
        // waits, then is answered with everything in status accounted for.
        let early = tokio::spawn({
            let (provider, s3) = (provider.clone(), s3.clone());
            async move { ensured(&provider, &s3).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = term(&provider, &c.client);
        assert_eq!(
            early.await.expect("task"),
            vec![ip("10.0.0.3")],
            "a new Service skips ours, another class's and a class-less Service's addresses"
        );
        let generation = provider.generation();
        assert_eq!(ensured(&provider, &s1).await, vec![ip("10.0.0.0")], "s1 keeps its address");
        assert_eq!(provider.generation(), generation, "and nothing changed");
        let mut owned = provider.list_owned().await.expect("list");
        owned.sort();
        let mut want = vec![key_of(&s1), key_of(&s3)];
        want.sort();
        assert_eq!(owned, want, "ours only");

        let s4 = c.service("default", "s4", Some(CLASS), &[]).await;
        let mut asks = spec_for(&s4);
        asks.requested_ips = vec![ip("10.0.0.1")];
        let err = provider.ensure_spec(&asks).await.expect_err("another controller's");
        assert!(
            err.to_string().contains("AllocationFailed: 10.0.0.1 is in use by default/metallb-web (a Service of another controller)"),
            "{err}"
        );
        let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
        services
            .delete("metallb-web", &DeleteParams::default())
            .await
            .expect("delete");
        let got = eventually("the other controller's address to be free", || async {
            provider.ensure_spec(&asks).await.ok()
        })
        .await;
        assert_eq!(got.ingress[0].ip, Some(ip("10.0.0.1")));
        t.end().await;
    })
    .await;
}

#[tokio::test]
async fn a_new_term_forgets_holdings_that_never_reached_a_status() {
    within(async {
        let c = cluster().await;
        c.pool("p", &["10.0.0.0/30"], |_| {}).await;
        let s1 = c.service("default", "s1", Some(CLASS), &[]).await;
        let mut cfg = config();
        cfg.ready_timeout = Duration::from_millis(200);
        let provider = ArpProvider::new(cfg);
        let t = term(&provider, &c.client);
        assert_eq!(ensured(&provider, &s1).await, vec![ip("10.0.0.0")]);
        t.end().await;
        let err = provider.list_owned().await.expect_err("not leading");
        assert!(err.to_string().contains("has not loaded"), "{err}");
        // Meanwhile another leader gave 10.0.0.0 to s2 and wrote it.
        let s2 = c.service("default", "s2", Some(CLASS), &["10.0.0.0"]).await;
        let t = term(&provider, &c.client);
        assert_eq!(
            provider.list_owned().await.expect("list"),
            vec![key_of(&s2)]
        );
        assert_eq!(
            ensured(&provider, &s1).await,
            vec![ip("10.0.0.1")],
            "s1 gets another"
        );
        assert_eq!(
            ensured(&provider, &s2).await,
            vec![ip("10.0.0.0")],
            "s2 keeps its own"
        );
        t.end().await;
    })
    .await;
}

#[tokio::test]
async fn pool_statuses_and_events_say_what_the_allocator_sees() {
    within(async {
        let c = cluster().await;
        c.pool("a-old", &["10.0.0.0/30"], |_| {}).await;
        c.pool("b-dup", &["10.0.0.2/31", "10.0.1.0/31"], |_| {})
            .await;
        c.pool("c-bad", &["10.0.2.20-10.0.2.10"], |_| {}).await;
        let provider = ArpProvider::new(config());
        let t = term(&provider, &c.client);
        let condition = |pool: &IpPool| {
            pool.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Accepted")
                    .map(|c| (c.status.clone(), c.reason.clone(), s.capacity, s.in_use))
            })
        };
        let rows = [
            ("a valid pool", "a-old", ("True", "Valid", 4, 0)),
            (
                "an overlapping pool",
                "b-dup",
                ("False", "Overlapping", 0, 0),
            ),
            ("a reversed range", "c-bad", ("False", "Invalid", 0, 0)),
        ];
        for (desc, name, (status, reason, capacity, in_use)) in rows {
            let want = (status.to_string(), reason.to_string(), capacity, in_use);
            eventually(desc, || async {
                let pool = c.pools().get(name).await.ok()?;
                (condition(&pool) == Some(want.clone())).then_some(())
            })
            .await;
        }
        let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
        for (name, reason, words) in [
            (
                "b-dup",
                "Overlapping",
                "overlaps 10.0.0.0/30 of IPPool \"a-old\"",
            ),
            ("c-bad", "Invalid", "ends before it starts"),
        ] {
            eventually(&format!("a Warning Event {reason} on {name}"), || async {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .into_iter()
                    .find(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                            && e.type_.as_deref() == Some("Warning")
                            && e.reason.as_deref() == Some(reason)
                            && e.note.as_deref().is_some_and(|n| n.contains(words))
                    })
                    .map(|_| ())
            })
            .await;
        }

        let s1 = c.service("default", "s1", Some(CLASS), &[]).await;
        assert_eq!(ensured(&provider, &s1).await, vec![ip("10.0.0.0")]);
        eventually("in use to count s1", || async {
            let pool = c.pools().get("a-old").await.ok()?;
            (pool.status?.in_use == 1).then_some(())
        })
        .await;

        c.pools()
            .delete("a-old", &DeleteParams::default())
            .await
            .expect("delete pool");
        eventually(
            "the overlapping pool to be accepted once the old one is gone",
            || async {
                let pool = c.pools().get("b-dup").await.ok()?;
                let (status, _, capacity, in_use) = condition(&pool)?;
                // s1 still holds 10.0.0.0, outside b-dup: nothing of b-dup in use.
                (status == "True" && capacity == 4 && in_use == 0).then_some(())
            },
        )
        .await;
        t.end().await;
    })
    .await;
}

#[tokio::test]
async fn selectors_match_the_watched_labels_of_services_and_namespaces() {
    within(async {
        let c = cluster().await;
        let namespaces: Api<Namespace> = Api::all(c.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "web", "labels": {"team": "web"}}
        }))
        .expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
        let selector = |k: &str, v: &str| LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..LabelSelector::default()
        };
        c.pool("team", &["10.1.0.0/31"], |s| {
            s.namespace_selector = Some(selector("team", "web"));
        })
        .await;
        c.pool("open", &["10.0.0.0/31"], |_| {}).await;
        let provider = ArpProvider::new(config());
        let t = term(&provider, &c.client);
        let in_web = c.service("web", "shop", Some(CLASS), &[]).await;
        let elsewhere = c.service("default", "blog", Some(CLASS), &[]).await;
        assert_eq!(
            ensured(&provider, &in_web).await,
            vec![ip("10.1.0.0")],
            "the team's pool"
        );
        assert_eq!(
            ensured(&provider, &elsewhere).await,
            vec![ip("10.0.0.0")],
            "the open pool"
        );
        t.end().await;
    })
    .await;
}
