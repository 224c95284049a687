//! TCP forwarding on loopback: scheduling by weight, least connections,
//! stickiness, access control, bind errors and idempotent apply.

mod dataplane_support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_support::*;
use portico_slb::forwarding::{
    AccessControl, ForwardingError, ForwardingSink, ProbeKind, Scheduler, Transport,
};
use prometheus_client::registry::Registry;

const FILE: u8 = 1;

async fn tally(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let name = ask(addr).await.expect("request through the vip");
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn wrr_spreads_by_weight_and_weight_zero_gets_none() {
    within(30, async {
        let (a, b, c, z) = (
            Backend::name("a").await,
            Backend::name("b").await,
            Backend::name("c").await,
            Backend::name("z").await,
        );
        let dp = dataplane();
        let vip = vip(FILE, 1);
        let l = listener(8000, Transport::Tcp)
            .backend(a.addr, 1)
            .backend(b.addr, 2)
            .backend(c.addr, 3)
            .backend(z.addr, 0)
            .build();
        dp.apply(balancer("lb-wrr", vip, vec![l]))
            .await
            .expect("apply");
        // Let the first probes settle so the set is stable.
        wait_for(&dp, "lb-wrr", 5, "probes", |s| {
            s.listeners[0]
                .backends
                .iter()
                .all(|b| b.health == portico_slb::dataplane::HealthState::Healthy)
        })
        .await;

        let counts = tally(SocketAddr::new(vip, 8000), 300).await;
        let got = |n: &str| counts.get(n).copied().unwrap_or(0);
        // Smooth WRR is exact over whole rounds of 6.
        assert_eq!(
            (got("a"), got("b"), got("c"), got("z")),
            (50, 100, 150, 0),
            "{counts:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn wlc_prefers_the_least_loaded_backend() {
    within(30, async {
        let (busy, idle) = (Backend::echo().await, Backend::name("idle").await);
        let dp = dataplane();
        let vip = vip(FILE, 2);
        let l = listener(8000, Transport::Tcp)
            .backends(&[busy.addr, idle.addr])
            .probe(ProbeKind::Disabled)
            .scheduler(Scheduler::Wlc)
            .build();
        dp.apply(balancer("lb-wlc", vip, vec![l]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);

        // First connection lands somewhere; pin three long-lived ones and see
        // that the next short requests avoid the loaded echo backend.
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            if echo_once(&mut s, b"x").await.is_ok() {
                held.push(s);
            }
        }
        assert!(
            !held.is_empty(),
            "some connections reached the echo backend"
        );
        wait_for(&dp, "lb-wlc", 5, "held connections counted", |s| {
            s.listeners[0]
                .backends
                .iter()
                .any(|b| b.addr == busy.addr && b.active_connections as usize == held.len())
        })
        .await;
        let counts = tally(addr, 20).await;
        assert_eq!(counts.get("idle"), Some(&20), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn sticky_sessions_keep_a_client_on_its_backend() {
    within(30, async {
        let (a, b) = (Backend::name("a").await, Backend::name("b").await);
        let dp = dataplane();
        let vip = vip(FILE, 3);
        let l = listener(8000, Transport::Tcp)
            .backends(&[a.addr, b.addr])
            .probe(ProbeKind::Disabled)
            .sticky(Duration::from_secs(60))
            .build();
        dp.apply(balancer("lb-sticky", vip, vec![l]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let one: IpAddr = "127.0.0.1".parse().expect("ip");
        let two: IpAddr = "127.0.0.2".parse().expect("ip");
        let first = ask_from(one, addr).await.expect("request");
        let second = ask_from(two, addr).await.expect("request");
        assert_ne!(
            first, second,
            "round robin gives the second client the other backend"
        );
        for _ in 0..10 {
            assert_eq!(ask_from(one, addr).await.expect("request"), first);
            assert_eq!(ask_from(two, addr).await.expect("request"), second);
        }
    })
    .await;
}

#[tokio::test]
async fn access_control_allows_and_refuses_by_source() {
    within(30, async {
        let a = Backend::name("a").await;
        let dp = dataplane();
        let vip = vip(FILE, 4);
        let allow_only = AccessControl::AllowOnly(vec!["127.0.0.1/32".parse().expect("net")]);
        let l = listener(8000, Transport::Tcp)
            .backends(&[a.addr])
            .probe(ProbeKind::Disabled)
            .access(allow_only)
            .build();
        dp.apply(balancer("lb-acl", vip, vec![l.clone()]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let inside: IpAddr = "127.0.0.1".parse().expect("ip");
        let outside: IpAddr = "127.0.0.2".parse().expect("ip");

        assert_eq!(ask_from(inside, addr).await.expect("allowed source"), "a");
        let refused = ask_from(outside, addr).await;
        assert!(
            refused.is_err(),
            "a source outside the list gets nothing: {refused:?}"
        );

        // Deny list: the reverse, swapped in place on the same socket.
        let deny = listener(8000, Transport::Tcp)
            .backends(&[a.addr])
            .probe(ProbeKind::Disabled)
            .access(AccessControl::Deny(vec![
                "127.0.0.1/32".parse().expect("net"),
            ]))
            .build();
        dp.apply(balancer("lb-acl", vip, vec![deny]))
            .await
            .expect("apply");
        assert!(ask_from(inside, addr).await.is_err(), "denied source");
        assert_eq!(ask_from(outside, addr).await.expect("not denied"), "a");
    })
    .await;
}

#[tokio::test]
async fn apply_is_idempotent_and_bind_conflicts_are_errors() {
    within(30, async {
        let a = Backend::name("a").await;
        let dp = dataplane();
        let vip = vip(FILE, 5);
        let l = listener(8000, Transport::Tcp).backends(&[a.addr]).build();
        let cfg = balancer("lb-idem", vip, vec![l.clone()]);
        dp.apply(cfg.clone()).await.expect("first apply");
        let before = dp.snapshot("lb-idem").expect("snapshot");
        for _ in 0..3 {
            dp.apply(cfg.clone()).await.expect("same apply again");
        }
        assert_eq!(
            dp.snapshot("lb-idem").expect("snapshot").listeners.len(),
            before.listeners.len()
        );
        assert_eq!(
            ask(SocketAddr::new(vip, 8000))
                .await
                .expect("still serving"),
            "a"
        );

        // Something else holds vip:8001: the listener cannot be added and
        // the balancer is left as it was.
        let squatter = std::net::TcpListener::bind(SocketAddr::new(vip, 8001)).expect("squat");
        let both = vec![
            l.clone(),
            listener(8001, Transport::Tcp).backends(&[a.addr]).build(),
        ];
        let err = dp
            .apply(balancer("lb-idem", vip, both))
            .await
            .expect_err("port in use");
        match err {
            ForwardingError::Bind {
                addr, transport, ..
            } => {
                assert_eq!(addr, SocketAddr::new(vip, 8001));
                assert_eq!(transport, Transport::Tcp);
            }
        }
        assert_eq!(dp.snapshot("lb-idem").expect("snapshot").listeners.len(), 1);
        assert_eq!(
            ask(SocketAddr::new(vip, 8000))
                .await
                .expect("still serving"),
            "a"
        );

        // Another data plane (or balancer) on the same vip:port is a conflict too.
        let other = dataplane();
        assert!(
            other
                .apply(balancer("lb-other", vip, vec![l]))
                .await
                .is_err()
        );
        drop(squatter);
    })
    .await;
}

#[tokio::test]
async fn removed_balancer_stops_listening() {
    within(30, async {
        let a = Backend::name("a").await;
        let dp = dataplane();
        let vip = vip(FILE, 6);
        let l = listener(8000, Transport::Tcp).backends(&[a.addr]).build();
        dp.apply(balancer("lb-rm", vip, vec![l.clone()]))
            .await
            .expect("apply");
        assert_eq!(ask(SocketAddr::new(vip, 8000)).await.expect("serving"), "a");
        dp.remove("lb-rm").await;
        dp.remove("lb-rm").await;
        assert!(dp.snapshot("lb-rm").is_none());
        assert!(
            ask(SocketAddr::new(vip, 8000)).await.is_err(),
            "nobody listens"
        );
        // The port is free again at once.
        dp.apply(balancer("lb-rm", vip, vec![l]))
            .await
            .expect("apply again");
        assert_eq!(ask(SocketAddr::new(vip, 8000)).await.expect("serving"), "a");
    })
    .await;
}

#[tokio::test]
async fn metrics_count_connections_and_bytes() {
    within(30, async {
        let a = Backend::name("alpha").await;
        let dp = dataplane();
        let mut registry = Registry::default();
        dp.register_metrics(&mut registry);
        let vip = vip(FILE, 7);
        let l = listener(8000, Transport::Tcp)
            .backends(&[a.addr])
            .probe(ProbeKind::Disabled)
            .build();
        dp.apply(balancer("lb-metrics", vip, vec![l]))
            .await
            .expect("apply");
        for _ in 0..3 {
            ask(SocketAddr::new(vip, 8000)).await.expect("request");
        }
        // The connection tasks finish just after the client has read EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let labels = format!(
            "balancer=\"lb-metrics\",listener=\"8000/tcp\",backend=\"{}\"",
            a.addr
        );
        for (metric, want) in [
            ("slb_dataplane_connections_total", "3"),
            ("slb_dataplane_active_connections", "0"),
            ("slb_dataplane_bytes_in_total", "18"),
            ("slb_dataplane_bytes_out_total", "15"),
            ("slb_dataplane_backend_healthy", "1"),
            ("slb_dataplane_connect_failures_total", "0"),
        ] {
            let line = format!("{metric}{{{labels}}} {want}");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("# HELP slb_dataplane_bytes_in "),
            "help text present"
        );
    })
    .await;
}

/// Bulk data both ways with a half-close, for both copy modes: the client
/// sends 3 MiB and shuts its write side; the echo backend sends it all back
/// and closes; the client reads exactly what it sent, then EOF.
#[tokio::test]
async fn bulk_transfer_with_half_close_in_both_copy_modes() {
    use portico_slb::dataplane::{CopyMode, DataPlane, DataPlaneConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(30, async {
        let e = Backend::echo().await;
        for (i, copy) in [CopyMode::Splice, CopyMode::Buffered]
            .into_iter()
            .enumerate()
        {
            let dp = DataPlane::new(DataPlaneConfig {
                copy,
                ..DataPlaneConfig::default()
            });
            let vip = vip(FILE, 8 + i as u8);
            let l = listener(8000, Transport::Tcp)
                .backends(&[e.addr])
                .probe(ProbeKind::Disabled)
                .build();
            dp.apply(balancer("lb-bulk", vip, vec![l]))
                .await
                .expect("apply");
            let s = tokio::net::TcpStream::connect(SocketAddr::new(vip, 8000))
                .await
                .expect("connect");
            let (mut r, mut w) = s.into_split();
            let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.expect("write");
                w.shutdown().await.expect("half-close");
                w
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.expect("read to EOF");
            let _w = writer.await.expect("writer");
            assert_eq!(back.len(), data.len(), "{copy:?}");
            assert!(back == data, "{copy:?}: bytes differ");
            wait_for(&dp, "lb-bulk", 5, "connection closed", |s| {
                s.listeners[0].backends[0].active_connections == 0
            })
            .await;
        }
    })
    .await;
}

/// Removing a backend: once `apply` returns, no new TCP connection reaches
/// it, even with every core busy (its open connections drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_gets_no_new_connection_after_apply() {
    within(120, async {
        let _load = CpuLoad::start(2);
        for round in 0..20u8 {
            let (a, b) = (Backend::name("a").await, Backend::name("b").await);
            let dp = dataplane();
            let vip = vip(FILE, 100 + round);
            let both = listener(8200, Transport::Tcp)
                .backends(&[a.addr, b.addr])
                .build();
            dp.apply(balancer("lb-removal", vip, vec![both]))
                .await
                .expect("apply");
            let addr = SocketAddr::new(vip, 8200);
            let first = ask(addr).await.expect("an answer");
            let stays = if first == "a" { b.addr } else { a.addr };
            let remaining = listener(8200, Transport::Tcp).backends(&[stays]).build();
            dp.apply(balancer("lb-removal", vip, vec![remaining]))
                .await
                .expect("apply");
            for _ in 0..20 {
                let answer = ask(addr).await.expect("an answer");
                assert_ne!(
                    answer, first,
                    "round {round}: the removed backend took a new connection"
                );
            }
        }
    })
    .await;
}
