//! /metrics, /healthz and /readyz of a running replica.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use portico::builders::svc;
use portico::runtime::{ReplicaOptions, run_replica};
use portico_provider::testing::RecordingProvider;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn metrics_and_probes() {
    within(60, async {
        let env = Env::api_only(Backend::StandIn, 1).await;
        // Pick a free port, then hand it to the replica.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let shutdown = CancellationToken::new();
        let options = ReplicaOptions {
            config: test_config(),
            lease: None,
            http_addr: Some(addr),
            identity: "http-test".into(),
        };
        let task = tokio::spawn(run_replica(
            env.client.clone(),
            Arc::new(RecordingProvider::new()),
            options,
            Registry::default(),
            shutdown.clone(),
        ));
        env.create(svc("default", "web").lb().port(80, 30080).build())
            .await;
        env.ready("web").await;

        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let health = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
        // Once the Service is served, nothing waits for a worker.
        let body = eventually("queue drained", 10, || async {
            let body = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.contains("portico_reconciles_queued 0").then_some(body)
        })
        .await;
        for needle in [
            "portico_reconciles_total{result=\"ensured\"}",
            "portico_provider_calls_total{provider=\"recording\",op=\"ensure\",result=\"ok\"}",
            "portico_reconcile_duration_seconds_bucket",
            "portico_is_leader 1",
            "portico_eligible_nodes 1",
            "# HELP portico_is_leader",
            "portico_cluster_info{cluster=\"test-cluster\"} 1",
        ] {
            assert!(body.contains(needle), "metrics lack {needle}:\n{body}");
        }
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    })
    .await;
}
