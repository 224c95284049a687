//! End to end with the arp provider, as `portico run --provider arp` wires
//! it (the provider and its leader task): the chart's IPPool CRD applied
//! to the API server, pools checked by the API server's schema and by the
//! controller, Services getting addresses from a pool, the pool running
//! out and filling again, and a restarted controller re-adopting the
//! addresses in status. On the stand-in and on the real control plane
//! (there as the controller's ServiceAccount of `deploy/rbac.yaml`).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portico::builders::svc;
use portico::config::ControllerConfig;
use portico::runtime::{ReplicaOptions, run_replica_with};
use portico_arp::pool::{AddressBlock, IpPool, IpPoolSpec};
use portico_provider::ClusterName;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CLASS: &str = "portico.io/arp";

fn arp_config() -> ControllerConfig {
    ControllerConfig {
        cluster: ClusterName::new("e2e-arp"),
        class: CLASS.into(),
        claim_classless: false,
        ..test_config()
    }
}

/// One controller replica with the arp provider, wired as `portico run` does.
struct Controller {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), portico::Error>>,
}

impl Controller {
    fn start(env: &Env) -> Self {
        let config = arp_config();
        let built = portico::providers::arp_provider(&env.controller_client, &config, "e2e-arp");
        let options = ReplicaOptions {
            config,
            lease: None,
            http_addr: None,
            identity: "e2e-arp".into(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_replica_with(
            env.controller_client.clone(),
            built.provider,
            options,
            Registry::default(),
            shutdown.clone(),
            built.leader_task,
        ));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn pools(env: &Env) -> Api<IpPool> {
    Api::all(env.client.clone())
}

/// Apply the chart's CRD file and wait until the API server serves IPPools.
async fn install_crd(env: &Env) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico/crds/ippool.yaml");
    let text = std::fs::read_to_string(&path).expect("charts/portico/crds/ippool.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("the CRD parses");
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch(
        "ippools.portico.io",
        &PatchParams::apply("portico-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the IPPool CRD");
    eventually("IPPools served", 30, || async {
        pools(env).list(&ListParams::default()).await.ok()
    })
    .await;
    // Earlier runs on the real control plane leave pools behind.
    pools(env)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("clear pools");
    eventually("no pools left", 30, || async {
        let left = pools(env).list(&ListParams::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
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

/// The pool's `Accepted` condition (status, reason) and `inUse`.
async fn pool_state(env: &Env, name: &str) -> Option<(String, String, i64)> {
    let pool = pools(env).get(name).await.ok()?;
    let status = pool.status?;
    let c = status.conditions.iter().find(|c| c.type_ == "Accepted")?;
    Some((c.status.clone(), c.reason.clone(), status.in_use))
}

async fn pool_reaches(env: &Env, name: &str, status: &str, reason: &str, in_use: i64) {
    let want = (status.to_string(), reason.to_string(), in_use);
    eventually(
        &format!("IPPool {name}: Accepted={status} {reason}, {in_use} in use"),
        20,
        || async { (pool_state(env, name).await? == want).then_some(()) },
    )
    .await;
}

fn arp_svc(name: &str, port: i32) -> k8s_openapi::api::core::v1::Service {
    svc("default", name)
        .lb()
        .class(CLASS)
        .port_without_node_port(port)
        .build()
}

async fn address(env: &Env, name: &str) -> String {
    let ready = env.ready(name).await;
    let ingress = ready
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    assert_eq!(ingress.len(), 1, "{name}: one address (single stack)");
    assert_eq!(
        ingress[0].ip_mode.as_deref(),
        Some("VIP"),
        "{name}: traffic arrives addressed to the VIP"
    );
    ingress[0].ip.clone().unwrap_or_default()
}

/// Wait for the `AllocationFailed` warning of `name`, with `words` in it.
async fn allocation_failed(env: &Env, name: &str, words: &str) {
    eventually(
        &format!("{name}: AllocationFailed with {words:?}"),
        20,
        || async {
            env.events(name).await.into_iter().find(|(t, _, note)| {
                t == "Warning" && note.contains("AllocationFailed") && note.contains(words)
            })
        },
    )
    .await;
    let svc = env.get(name).await.expect("service");
    assert_eq!(ingress_ip(&svc), None, "{name} shows no address");
    let (status, _) = condition(&svc, "portico.io/LoadBalancerReady").expect("condition");
    assert_eq!(
        status, "False",
        "{name}: the condition says it is not ready"
    );
}

async fn pools_and_addresses_end_to_end(backend: Backend) {
    within(180, async {
        let env = Env::api_only(backend, 1).await;
        install_crd(&env).await;

        // A typo: the real API server's schema refuses it (CEL on every
        // address block); the stand-in keeps no schema, so the controller
        // rejects it instead.
        let typo = pools(&env)
            .create(&PostParams::default(), &pool("typo", &["10.250.0.0/33"]))
            .await;
        match (backend, typo) {
            (Backend::Real, Err(kube::Error::Api(status))) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains("must be a CIDR"),
                    "{}",
                    status.message
                );
            }
            (Backend::Real, other) => panic!("the schema let a typo through: {other:?}"),
            (Backend::StandIn, created) => drop(created.expect("the stand-in has no schema")),
        }
        // What no schema can see: a range that ends before it starts.
        pools(&env)
            .create(
                &PostParams::default(),
                &pool("reversed", &["10.251.0.20-10.251.0.10"]),
            )
            .await
            .expect("a well-formed but reversed range passes the schema");
        pools(&env)
            .create(&PostParams::default(), &pool("e2e", &["10.250.0.0/31"]))
            .await
            .expect("pool");

        let controller = Controller::start(&env);
        pool_reaches(&env, "e2e", "True", "Valid", 0).await;
        pool_reaches(&env, "reversed", "False", "Invalid", 0).await;
        if backend == Backend::StandIn {
            pool_reaches(&env, "typo", "False", "Invalid", 0).await;
        }
        // Events on a cluster-scoped object land in `default`.
        let note = env.event("reversed", "Warning", "Invalid").await;
        assert!(note.contains("ends before it starts"), "{note}");

        // Two Services fill the pool; a third gets nothing, and says why.
        env.create(arp_svc("s1", 80)).await;
        assert_eq!(address(&env, "s1").await, "10.250.0.0");
        env.create(arp_svc("s2", 80)).await;
        assert_eq!(address(&env, "s2").await, "10.250.0.1");
        pool_reaches(&env, "e2e", "True", "Valid", 2).await;
        env.create(arp_svc("s3", 443)).await;
        allocation_failed(&env, "s3", "no free IPv4 address in IPPool(s) e2e").await;

        // Deleting s1 frees its address, and s3 gets it.
        env.delete("s1").await;
        assert_eq!(
            address(&env, "s3").await,
            "10.250.0.0",
            "s3 takes the address s1 freed"
        );
        eventually("s1 gone", 20, || async {
            env.get("s1").await.is_none().then_some(())
        })
        .await;

        // A restarted controller adopts what the statuses show before it
        // answers: the newcomer s4 cannot take s2's or s3's address.
        controller.stop().await;
        env.create(arp_svc("s4", 8080)).await;
        let controller = Controller::start(&env);
        allocation_failed(&env, "s4", "no free IPv4 address in IPPool(s) e2e").await;
        for (name, ip) in [("s2", "10.250.0.1"), ("s3", "10.250.0.0")] {
            let svc = env.get(name).await.expect("service");
            assert_eq!(
                ingress_ip(&svc).as_deref(),
                Some(ip),
                "{name} keeps its address across the restart"
            );
        }
        pool_reaches(&env, "e2e", "True", "Valid", 2).await;
        if backend == Backend::Real {
            let table = on_real_cluster("kubectl", &["get", "ippools"]).await;
            let row = table
                .lines()
                .find(|l| l.starts_with("e2e "))
                .unwrap_or_else(|| panic!("{table}"));
            assert!(
                row.contains("True") && row.contains(" 2 "),
                "kubectl shows capacity, use and Accepted: {table}"
            );
        }
        env.delete("s2").await;
        assert_eq!(
            address(&env, "s4").await,
            "10.250.0.1",
            "s4 takes the address s2 freed"
        );

        for name in ["s3", "s4"] {
            env.delete(name).await;
        }
        eventually("every Service gone", 20, || async {
            for name in ["s2", "s3", "s4"] {
                if env.get(name).await.is_some() {
                    return None;
                }
            }
            Some(())
        })
        .await;
        pool_reaches(&env, "e2e", "True", "Valid", 0).await;
        controller.stop().await;
        pools(&env)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .expect("clear pools");
    })
    .await;
}

/// The manifests of `examples/arp/`: IPPools and Services.
fn arp_examples() -> (Vec<IpPool>, Vec<k8s_openapi::api::core::v1::Service>) {
    use serde::Deserialize;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/arp");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/arp")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let (mut pools, mut services) = (Vec::new(), Vec::new());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("YAML");
            match value["kind"].as_str() {
                Some("IPPool") => pools.push(serde_yaml::from_value(value).expect("an IPPool")),
                Some("Service") => services.push(serde_yaml::from_value(value).expect("a Service")),
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
        }
    }
    (pools, services)
}

/// `examples/arp/` as an operator applies it: the pool, a Service asking
/// for it by annotation, and two Services sharing one address by their
/// sharing key.
async fn the_arp_examples_get_their_addresses(backend: Backend) {
    within(120, async {
        let env = Env::api_only(backend, 1).await;
        install_crd(&env).await;
        let (example_pools, services) = arp_examples();
        assert_eq!(example_pools.len(), 1, "one IPPool in examples/arp");
        let pool_name = kube::ResourceExt::name_any(&example_pools[0]);
        for pool in &example_pools {
            pools(&env)
                .create(&PostParams::default(), pool)
                .await
                .expect("the example IPPool is accepted");
        }
        let controller = Controller::start(&env);
        pool_reaches(&env, &pool_name, "True", "Valid", 0).await;
        for service in services.clone() {
            env.create(service).await;
        }
        let mut addresses = std::collections::BTreeMap::new();
        for service in &services {
            let name = kube::ResourceExt::name_any(service);
            let ip: std::net::Ipv4Addr = address(&env, &name).await.parse().expect("IPv4");
            assert!(
                (ip.octets()[..3] == [192, 168, 10] && ip.octets()[3] >= 240),
                "{name}: {ip} is from the pool {pool_name}"
            );
            addresses.insert(name, ip);
        }
        assert_eq!(
            addresses.get("arp-dns-tcp"),
            addresses.get("arp-dns-udp"),
            "the allow-shared-ip key puts both DNS Services on one address: {addresses:?}"
        );
        assert_ne!(
            addresses.get("arp-web"),
            addresses.get("arp-dns-tcp"),
            "a Service without the key gets its own: {addresses:?}"
        );
        pool_reaches(&env, &pool_name, "True", "Valid", 2).await;

        for name in addresses.keys() {
            env.delete(name).await;
        }
        eventually("every example Service gone", 20, || async {
            for name in addresses.keys() {
                if env.get(name).await.is_some() {
                    return None;
                }
            }
            Some(())
        })
        .await;
        controller.stop().await;
        pools(&env)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .expect("clear pools");
    })
    .await;
}

on_both_backends!(
    pools_and_addresses_end_to_end,
    the_arp_examples_get_their_addresses
);
