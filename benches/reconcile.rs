//! Services reconciled per second: the real controller against the API
//! stand-in with the recording provider, one worker (upstream's service
//! controller) against portico's default, in one run.
//!
//!   cargo bench --bench reconcile            # prints a table
//!   PORTICO_BENCH_SERVICES=2000 PORTICO_BENCH_NODES=1000 cargo bench --bench reconcile
//!   PORTICO_BENCH_LATENCIES_MS=0 ...      # only the zero-latency pair
//!
//! The provider answers after a fixed latency standing in for a cloud API
//! round trip, so the figure shows what concurrency buys; with zero latency
//! it shows the controller's own overhead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube_standin::ApiServer;
use portico::builders::{node, svc};
use portico::config::ControllerConfig;
use portico::runtime::{ReplicaOptions, run_replica};
use portico_provider::ClusterName;
use portico_provider::testing::RecordingProvider;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A node labelled like a managed cloud node (a dozen labels), since the
/// controller keeps labels for label-selecting Services.
fn cloud_node(i: usize) -> Node {
    let name = format!("ip-10-1-{}-{}", i / 250, i % 250 + 1);
    let zone = ["a", "b", "c"][i % 3];
    [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/instance-type", "m6i.large"),
        ("node.kubernetes.io/instance-type", "m6i.large"),
        ("topology.kubernetes.io/region", "eu-west-1"),
        ("topology.kubernetes.io/zone", &format!("eu-west-1{zone}")),
        (
            "failure-domain.beta.kubernetes.io/zone",
            &format!("eu-west-1{zone}"),
        ),
        ("eks.amazonaws.com/nodegroup", "general"),
        ("eks.amazonaws.com/capacityType", "ON_DEMAND"),
    ]
    .iter()
    .fold(node(&name), |n, (k, v)| n.label(k, v))
    .ip(&format!("10.1.{}.{}", i / 250, i % 250 + 1))
    .build()
}

/// Seconds until every Service shows an address, from controller start.
async fn run_once(
    services: usize,
    nodes: usize,
    workers: u16,
    latency: Duration,
) -> Result<f64, Box<dyn std::error::Error>> {
    let server = ApiServer::start().await?;
    let client = server.client().await?;
    let node_api: Api<Node> = Api::all(client.clone());
    for i in 0..nodes {
        node_api
            .create(&PostParams::default(), &cloud_node(i))
            .await?;
    }
    let svc_api: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..services {
        svc_api
            .create(
                &PostParams::default(),
                &svc("default", &format!("s{i}"))
                    .lb()
                    .port(80, 30000 + i as i32 % 2700)
                    .build(),
            )
            .await?;
    }
    let provider = RecordingProvider::new();
    provider.set_latency(latency);
    let config = ControllerConfig {
        cluster: ClusterName::new("bench"),
        workers,
        ..ControllerConfig::default()
    };
    let options = ReplicaOptions {
        config,
        lease: None,
        http_addr: None,
        identity: "bench".into(),
    };
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(run_replica(
        client.clone(),
        Arc::new(provider.clone()),
        options,
        Registry::default(),
        shutdown.clone(),
    ));
    // Watch (rather than list in a loop, which at thousands of Services
    // would cost more CPU than the controller under test).
    let mut ready = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(svc_api, watcher::Config::default()).applied_objects());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while ready.len() < services {
        let next = tokio::time::timeout_at(deadline, events.try_next()).await;
        let Ok(Ok(Some(svc))) = next else {
            return Err(format!("only {}/{services} ready: {next:?}", ready.len()).into());
        };
        let has_address = svc
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        if has_address {
            ready.insert(svc.metadata.name.unwrap_or_default());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = task.await;
    Ok(secs)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let services = env_usize("PORTICO_BENCH_SERVICES", 300);
    let nodes = env_usize("PORTICO_BENCH_NODES", 50);
    let default_workers = ControllerConfig::default().workers;
    println!(
        "reconcile throughput: {services} Services, {nodes} nodes, API stand-in over HTTP, recording provider"
    );
    println!(
        "{:<22} {:>8} {:>12} {:>14} {:>10}",
        "provider latency", "workers", "seconds", "Services/s", "speed-up"
    );
    let latencies: Vec<Duration> = std::env::var("PORTICO_BENCH_LATENCIES_MS")
        .unwrap_or_else(|_| "20,0".into())
        .split(',')
        .filter_map(|ms| ms.trim().parse().ok().map(Duration::from_millis))
        .collect();
    for latency in latencies {
        let one = run_once(services, nodes, 1, latency).await?;
        let many = run_once(services, nodes, default_workers, latency).await?;
        let label = format!("{} ms per call", latency.as_millis());
        println!(
            "{label:<22} {:>8} {one:>12.2} {:>14.1} {:>10}",
            1,
            services as f64 / one,
            "1.00x"
        );
        println!(
            "{label:<22} {default_workers:>8} {many:>12.2} {:>14.1} {:>9.2}x",
            services as f64 / many,
            one / many
        );
    }
    Ok(())
}
