//! Active health checks: fail-over when a backend stops and its return,
//! HTTP `/healthz` on a separate port (externalTrafficPolicy: Local), and
//! failing open when nothing is healthy.

mod dataplane_support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use dataplane_support::*;
use portico_slb::dataplane::HealthState;
use portico_slb::forwarding::{ForwardingSink, ProbeKind, Transport};

const FILE: u8 = 3;

async fn tally(addr: SocketAddr, n: usize) -> (HashMap<String, usize>, usize) {
    let mut counts = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match ask(addr).await {
            Ok(name) => *counts.entry(name).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    (counts, failed)
}

#[tokio::test]
async fn stopped_backend_is_taken_out_and_comes_back() {
    within(30, async {
        let a = Backend::name("a").await;
        let mut b = Backend::name("b").await;
        let c = Backend::name("c").await;
        let dp = dataplane();
        let vip = vip(FILE, 1);
        let l = listener(8000, Transport::Tcp)
            .backends(&[a.addr, b.addr, c.addr])
            .build();
        dp.apply(balancer("lb-fail", vip, vec![l]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        wait_for(&dp, "lb-fail", 5, "all healthy", |s| {
            s.listeners[0]
                .backends
                .iter()
                .all(|b| b.health == HealthState::Healthy)
        })
        .await;
        let (counts, failed) = tally(addr, 30).await;
        assert_eq!((counts.len(), failed), (3, 0), "{counts:?}");

        b.stop().await;
        // Before the check notices, connect fail-over hides the dead backend.
        let (counts, failed) = tally(addr, 30).await;
        assert_eq!(failed, 0, "{counts:?}");
        assert!(!counts.contains_key("b"));
        wait_for(&dp, "lb-fail", 5, "b unhealthy", |s| {
            health_of(s, b.addr) == Some(HealthState::Unhealthy)
        })
        .await;
        let (counts, failed) = tally(addr, 60).await;
        assert_eq!(failed, 0);
        assert_eq!(
            (counts.get("a"), counts.get("c"), counts.get("b")),
            (Some(&30), Some(&30), None)
        );

        b.restart().await;
        wait_for(&dp, "lb-fail", 5, "b healthy again", |s| {
            health_of(s, b.addr) == Some(HealthState::Healthy)
        })
        .await;
        let (counts, failed) = tally(addr, 30).await;
        assert_eq!(failed, 0);
        assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn http_healthz_on_a_separate_port_excludes_a_503_backend() {
    within(30, async {
        // Two "nodes" on different loopback addresses, each with a traffic
        // port and a health port (the same health port number on both,
        // like healthCheckNodePort).
        let ip1: IpAddr = "127.0.0.1".parse().expect("ip");
        let ip3: IpAddr = "127.0.0.3".parse().expect("ip");
        let h1 = Healthz::start_on(SocketAddr::new(ip1, 0), true).await;
        let hport = h1.addr.port();
        let h3 = Healthz::start_on(SocketAddr::new(ip3, hport), false).await;
        let n1 = Backend::name_on(ip1, "node1").await;
        let n3 = Backend::name_on(ip3, "node3").await;

        let dp = dataplane();
        let vip = vip(FILE, 2);
        let l = listener(8000, Transport::Tcp)
            .backends(&[n1.addr, n3.addr])
            .probe(ProbeKind::Http {
                port: hport,
                path: "/healthz".into(),
            })
            .build();
        dp.apply(balancer("lb-http", vip, vec![l]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        wait_for(&dp, "lb-http", 5, "verdicts", |s| {
            health_of(s, n1.addr) == Some(HealthState::Healthy)
                && health_of(s, n3.addr) == Some(HealthState::Unhealthy)
        })
        .await;
        let (counts, failed) = tally(addr, 20).await;
        assert_eq!((counts.get("node1"), failed), (Some(&20), 0), "{counts:?}");

        // The endpoint on node3 gets ready, node1's goes away.
        h3.ok.store(true, Ordering::SeqCst);
        wait_for(&dp, "lb-http", 5, "node3 healthy", |s| {
            health_of(s, n3.addr) == Some(HealthState::Healthy)
        })
        .await;
        h1.ok.store(false, Ordering::SeqCst);
        wait_for(&dp, "lb-http", 5, "node1 unhealthy", |s| {
            health_of(s, n1.addr) == Some(HealthState::Unhealthy)
        })
        .await;
        let (counts, failed) = tally(addr, 20).await;
        assert_eq!((counts.get("node3"), failed), (Some(&20), 0), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn nothing_healthy_fails_open() {
    within(30, async {
        let h = Healthz::start(false).await;
        let (a, b) = (Backend::name("a").await, Backend::name("b").await);
        let dp = dataplane();
        let vip = vip(FILE, 3);
        let l = listener(8000, Transport::Tcp)
            .backends(&[a.addr, b.addr])
            .probe(ProbeKind::Http {
                port: h.addr.port(),
                path: "/healthz".into(),
            })
            .build();
        dp.apply(balancer("lb-open", vip, vec![l]))
            .await
            .expect("apply");
        wait_for(&dp, "lb-open", 5, "both unhealthy", |s| {
            s.listeners[0]
                .backends
                .iter()
                .all(|b| b.health == HealthState::Unhealthy)
        })
        .await;
        let (counts, failed) = tally(SocketAddr::new(vip, 8000), 10).await;
        assert_eq!(
            (counts.get("a"), counts.get("b"), failed),
            (Some(&5), Some(&5), 0)
        );
    })
    .await;
}

#[tokio::test]
async fn a_new_backend_waits_for_its_first_good_probe() {
    within(30, async {
        let h = Healthz::start(true).await;
        let a = Backend::name("a").await;
        // b's traffic port is open but its health endpoint (same port
        // number, other address) says no: it must never get traffic while
        // a is healthy, not even before its first probe.
        let ip4: IpAddr = "127.0.0.4".parse().expect("ip");
        let _h4 = Healthz::start_on(SocketAddr::new(ip4, h.addr.port()), false).await;
        let b = Backend::name_on(ip4, "b").await;
        let dp = dataplane();
        let vip = vip(FILE, 4);
        let probe = ProbeKind::Http {
            port: h.addr.port(),
            path: "/healthz".into(),
        };
        let one = listener(8000, Transport::Tcp)
            .backends(&[a.addr])
            .probe(probe.clone())
            .build();
        dp.apply(balancer("lb-new", vip, vec![one]))
            .await
            .expect("apply");
        wait_for(&dp, "lb-new", 5, "a healthy", |s| {
            health_of(s, a.addr) == Some(HealthState::Healthy)
        })
        .await;
        let two = listener(8000, Transport::Tcp)
            .backends(&[a.addr, b.addr])
            .probe(probe)
            .build();
        dp.apply(balancer("lb-new", vip, vec![two]))
            .await
            .expect("apply");
        let (counts, failed) = tally(SocketAddr::new(vip, 8000), 20).await;
        assert_eq!((counts.get("a"), failed), (Some(&20), 0), "{counts:?}");
        assert_ne!(
            health_of(&dp.snapshot("lb-new").expect("snapshot"), b.addr),
            Some(HealthState::Healthy)
        );
    })
    .await;
}
