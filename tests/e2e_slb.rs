//! End to end with the SLB provider: the API stand-in, simulated nodes whose
//! NodePorts answer with their name, the mock cloud with its real data plane,
//! and the real controller — all over HTTP and real sockets.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kube::api::{DeleteParams, Patch, PatchParams};
use portico::builders::svc;
use portico::providers::{EmbeddedSlb, slb_provider};
use portico::runtime::{ReplicaOptions, run_replica};
use portico_demo::{KubeProxySim, SimNode};
use portico_provider::ClusterName;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn sim_node(i: u8) -> SimNode {
    SimNode {
        name: format!("e2e-{i}"),
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 2, i)),
    }
}

async fn ask(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        body.lines()
            .last()?
            .strip_prefix("hello from ")
            .map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

async fn nodes_come_and_go_under_load_without_a_failed_request(backend: Backend) {
    within(120, async {
        let env = Env::api_only(backend, 0).await;
        let all: Vec<SimNode> = (1..=5).map(sim_node).collect();
        for n in &all[..3] {
            env.add_node(&n.name, &n.ip.to_string()).await;
        }
        let kube_proxy = KubeProxySim::start(env.client.clone(), all.clone());
        let mut registry = Registry::default();
        let vips: ipnet::IpNet = "127.244.0.0/24".parse().expect("cidr");
        let cloud = EmbeddedSlb::start(vips, None, "127.0.0.1:0".parse().expect("addr"), &mut registry)
            .await
            .expect("cloud");
        let cluster = ClusterName::new("e2e");
        let provider = slb_provider(cloud.url(), cluster.clone()).expect("provider");
        let config = portico::config::ControllerConfig { cluster, ..test_config() };
        let shutdown = CancellationToken::new();
        let options = ReplicaOptions { config, lease: None, http_addr: None, identity: "e2e".into() };
        let controller = tokio::spawn(run_replica(env.controller_client.clone(), provider.clone(), options, registry, shutdown.clone()));

        env.create(svc("default", "web").lb().port(80, 31080).build()).await;
        let ready = env.ready("web").await;
        let vip: IpAddr = ingress_ip(&ready).expect("ip").parse().expect("vip parses");
        assert!(vips.contains(&vip), "{vip} comes from the configured range");
        let addr = SocketAddr::new(vip, 80);
        // Baseline: every initial node serves before anything changes.
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        eventually("all three nodes answer", 20, || async {
            let answer = ask(addr).await;
            let mut seen = seen.lock().expect("lock");
            seen.extend(answer);
            (seen.len() == 3).then_some(())
        })
        .await;

        // Load: one request after another until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let load = {
            let (stop, failures, answers) = (stop.clone(), failures.clone(), answers.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match ask(addr).await {
                        Some(node) => answers.lock().expect("lock").push(node),
                        None => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };

        // Two nodes join, then two leave (one excluded by label, one deleted).
        for n in &all[3..] {
            env.add_node(&n.name, &n.ip.to_string()).await;
        }
        eventually("joined", 20, || async {
            answers.lock().expect("lock").iter().any(|a| a == "e2e-5").then_some(())
        })
        .await;
        let exclude = serde_json::json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}});
        env.nodes().patch("e2e-1", &PatchParams::default(), &Patch::Merge(&exclude)).await.expect("label");
        env.nodes().delete("e2e-2", &DeleteParams::default()).await.expect("delete node");
        // The data plane sends new connections to e2e-3..5 only...
        let serving: Vec<SocketAddr> = all[2..].iter().map(|n| SocketAddr::new(n.ip, 31080)).collect();
        eventually("the VIP forwards to the remaining nodes only", 20, || async {
            let snapshot = cloud.dataplane.all_snapshots().into_iter().find(|b| b.vip == vip)?;
            let listener = snapshot.listeners.first()?;
            let live: Vec<SocketAddr> = listener.backends.iter().filter(|b| !b.draining).map(|b| b.addr).collect();
            (live.len() == serving.len() && serving.iter().all(|a| live.contains(a))).then_some(())
        })
        .await;
        // ...and from here on every one of them answers.
        let mark = answers.lock().expect("lock").len();
        eventually("each remaining node answers", 20, || async {
            let answers = answers.lock().expect("lock");
            let late = &answers[mark..];
            (late.len() >= 30 && ["e2e-3", "e2e-4", "e2e-5"].iter().all(|n| late.iter().any(|a| a == n))).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        load.await.expect("load task");

        let all_answers = answers.lock().expect("lock").clone();
        let late: BTreeMap<&str, usize> = all_answers[mark..].iter().fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a.as_str()).or_default() += 1;
            m
        });
        assert_eq!(failures.load(Ordering::Relaxed), 0, "requests failed while nodes changed ({} answered)", all_answers.len());
        assert!(all_answers.len() > 50, "enough load to mean something: {}", all_answers.len());
        assert!(!late.contains_key("e2e-1") && !late.contains_key("e2e-2"), "departed nodes still served: {late:?}");
        assert!(late.contains_key("e2e-3") && late.contains_key("e2e-4") && late.contains_key("e2e-5"), "{late:?}");

        // Deleting the Service leaves nothing in the cloud or the data plane.
        env.delete("web").await;
        eventually("cloud empty", 20, || async {
            let owned = provider.list_owned().await.ok()?;
            (owned.is_empty() && cloud.dataplane.all_snapshots().is_empty()).then_some(())
        })
        .await;
        assert!(ask(addr).await.is_none(), "the VIP stopped answering");

        shutdown.cancel();
        let _ = controller.await;
        kube_proxy.stop().await;
        cloud.shutdown().await;
    })
    .await;
}

/// On the stand-in and on the real control plane (as the controller's ServiceAccount).
mod standin {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_come_and_go_under_load_without_a_failed_request() {
        super::nodes_come_and_go_under_load_without_a_failed_request(super::Backend::StandIn).await
    }
}

mod real {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_come_and_go_under_load_without_a_failed_request() {
        super::nodes_come_and_go_under_load_without_a_failed_request(super::Backend::Real).await
    }
}
