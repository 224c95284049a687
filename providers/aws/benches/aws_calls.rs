//! AWS API calls per operation of the provider, against the endpoint in
//! `AWS_ENDPOINT_URL` (moto: `eval "$(scripts/moto.sh start)"`). Counts,
//! not timings: calls are what cost money, quota and throttling in AWS.
//!
//! `cargo bench -p portico-aws --bench aws_calls` (`SERVICES=n` to change the 100).

use portico_aws::testing as common;

use std::time::Instant;

use common::AwsHarness;
use portico_aws::CallStats;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, Protocol,
};

fn row(what: &str, services: usize, stats: &CallStats, secs: f64) {
    let per = |n: u64| n as f64 / services as f64;
    let top: Vec<String> = stats
        .by_operation
        .iter()
        .map(|(op, n)| format!("{op} {:.1}", per(*n)))
        .collect();
    println!(
        "| {what} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
        per(stats.total()),
        per(stats.reads),
        per(stats.mutations),
        secs,
        top.join(", ")
    );
}

async fn ensure_all(h: &AwsHarness, specs: &[LoadBalancerSpec]) -> (CallStats, f64) {
    let before = h.provider.calls().stats();
    let start = Instant::now();
    for s in specs {
        h.provider
            .ensure_spec(s)
            .await
            .unwrap_or_else(|e| panic!("ensure {}: {e}", s.key));
    }
    (
        h.provider.calls().stats().since(&before),
        start.elapsed().as_secs_f64(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if common::skip() {
        return;
    }
    let services: usize = std::env::var("SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let nodes = 10;
    let h = AwsHarness::start().await;
    let targets = h.target_list(nodes + 1).await;
    let mut specs: Vec<LoadBalancerSpec> = (0..services)
        .map(|i| {
            let uid = uuid::Uuid::new_v4().to_string();
            let mut s = LoadBalancerSpec::new(LoadBalancerKey::new(
                h.cluster.clone(),
                "bench",
                format!("svc-{i}"),
                uid,
            ));
            s.listeners = vec![
                Listener {
                    port: 80,
                    protocol: Protocol::Tcp,
                    node_port: 30080,
                    name: None,
                },
                Listener {
                    port: 443,
                    protocol: Protocol::Tcp,
                    node_port: 30443,
                    name: None,
                },
            ];
            s.targets = targets[..nodes].into();
            s
        })
        .collect();

    println!(
        "AWS API calls per Service ({services} Services, 2 TCP ports each, {nodes} nodes; moto)\n"
    );
    println!("| operation | calls | reads | mutating | wall s (all) | by operation |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let (stats, secs) = ensure_all(&h, &specs).await;
    row("create", services, &stats, secs);
    let (stats, secs) = ensure_all(&h, &specs).await;
    row("re-ensure at rest", services, &stats, secs);
    for s in &mut specs {
        s.targets = targets.as_slice().into();
    }
    let (stats, secs) = ensure_all(&h, &specs).await;
    row("node join (1 node)", services, &stats, secs);
    for s in &mut specs {
        s.targets = targets[1..].into();
    }
    let (stats, secs) = ensure_all(&h, &specs).await;
    row("node leave (1 node)", services, &stats, secs);

    let before = h.provider.calls().stats();
    let start = Instant::now();
    let owned = h.provider.list_owned().await.expect("list_owned");
    let listed = h.provider.calls().stats().since(&before);
    println!(
        "\nlist_owned over {} balancers: {} calls ({}) in {:.2}s",
        owned.len(),
        listed.total(),
        listed
            .by_operation
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        start.elapsed().as_secs_f64()
    );

    let before = h.provider.calls().stats();
    let start = Instant::now();
    for s in &specs {
        h.provider.delete(&s.key).await.expect("delete");
    }
    let stats = h.provider.calls().stats().since(&before);
    println!();
    println!("| operation | calls | reads | mutating | wall s (all) | by operation |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    row("delete", services, &stats, start.elapsed().as_secs_f64());
}
