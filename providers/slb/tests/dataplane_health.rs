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

/// A backend whose port accepts (so the active TCP check passes) and then
/// resets every connection, counting them.
struct Resetter {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Resetter {
    async fn start() -> Resetter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                // Wait for the request, then close with RST (SO_LINGER 0).
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                )
                .await;
                let _ = stream.set_zero_linger();
                drop(stream);
            }
        });
        Resetter {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passive health checking: a backend that passes its active check but
/// resets real connections is ejected after the configured failures in a
/// row, gets no traffic during its cool-down, and is tried again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_resets_connections_is_ejected_and_comes_back() {
    use portico_slb::dataplane::{DataPlane, DataPlaneConfig, OutlierDetection};
    within(60, async {
        let good = Backend::name("good").await;
        let bad = Resetter::start().await;
        let dp = DataPlane::new(DataPlaneConfig {
            connect_timeout: std::time::Duration::from_millis(500),
            connect_attempts: 1,
            outlier: OutlierDetection {
                consecutive_failures: 3,
                ejection: std::time::Duration::from_millis(1500),
            },
            ..DataPlaneConfig::default()
        });
        let mut registry = prometheus_client::registry::Registry::default();
        dp.register_metrics(&mut registry);
        let vip = vip(FILE, 20);
        let l = listener(8090, Transport::Tcp)
            .backends(&[good.addr, bad.addr])
            .build();
        dp.apply(balancer("lb-outlier", vip, vec![l]))
            .await
            .expect("apply");
        wait_for(&dp, "lb-outlier", 10, "both pass the active check", |s| {
            health_of(s, good.addr) == Some(HealthState::Healthy)
                && health_of(s, bad.addr) == Some(HealthState::Healthy)
        })
        .await;
        let addr = SocketAddr::new(vip, 8090);

        let (counts, failed) = tally(addr, 30).await;
        assert!(
            (3..=4).contains(&failed),
            "ejected after 3 resets in a row (WRR alternates): {failed} failed, {counts:?}"
        );
        let (counts, failed) = tally(addr, 20).await;
        assert_eq!(failed, 0, "no traffic to the ejected backend: {counts:?}");
        assert_eq!(counts.get("good"), Some(&20));

        let before = bad.accepted.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
        let _ = tally(addr, 10).await;
        assert!(
            bad.accepted.load(Ordering::SeqCst) > before,
            "tried again after its cool-down"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let ejections = text
            .lines()
            .find(|l| {
                l.starts_with("slb_dataplane_backend_ejections_total{")
                    && l.contains(&bad.addr.to_string())
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(ejections.is_some_and(|n| n >= 1), "counted:\n{text}");
    })
    .await;
}

/// The value of `metric` for `backend` in `registry`'s text, if present.
fn backend_metric(
    registry: &prometheus_client::registry::Registry,
    metric: &str,
    backend: SocketAddr,
) -> Option<i64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&format!("\"{backend}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether `backend` is ejected, as the snapshot says.
fn ejected(dp: &portico_slb::dataplane::DataPlane, id: &str, backend: SocketAddr) -> bool {
    dp.snapshot(id)
        .into_iter()
        .flat_map(|s| s.listeners)
        .flat_map(|l| l.backends)
        .any(|b| b.addr == backend && b.ejected)
}

/// Start a UDP backend on `addr` once its old socket is gone.
async fn udp_backend_on(addr: SocketAddr, name: &str) -> UdpBackend {
    for _ in 0..100 {
        if let Ok(b) = UdpBackend::start_on(addr, name).await {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("cannot bind {addr} again");
}

/// Passive health checking for UDP: a session the backend refuses (ICMP
/// port unreachable) counts as a failure and a reply as a success, so only
/// failures in a row eject; the ejection shows in the snapshot and in
/// `slb_dataplane_backend_ejected`, and ends after the cool-down.
#[tokio::test]
async fn udp_failures_in_a_row_eject_a_backend_until_its_cool_down() {
    use portico_slb::dataplane::{DataPlane, DataPlaneConfig, OutlierDetection};
    within(60, async {
        let dp = DataPlane::new(DataPlaneConfig {
            outlier: OutlierDetection {
                consecutive_failures: 3,
                ejection: std::time::Duration::from_millis(1500),
            },
            ..DataPlaneConfig::default()
        });
        let mut registry = prometheus_client::registry::Registry::default();
        dp.register_metrics(&mut registry);
        let flaky = UdpBackend::start("flaky").await;
        let addr = flaky.addr;
        drop(flaky);
        let vip = vip(FILE, 21);
        let l = listener(5390, Transport::Udp).backends(&[addr]).build();
        dp.apply(balancer("lb-udp-outlier", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5390);
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        // One datagram; the session it opens either answers or is refused
        // (and ends). Returns whether it answered.
        let ask = |msg: &'static str| {
            let (client, dp) = (&client, &dp);
            async move {
                client.send_to(msg.as_bytes(), to).await.expect("send");
                let mut buf = [0u8; 256];
                let answered = tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    client.recv_from(&mut buf),
                )
                .await
                .is_ok();
                if !answered {
                    wait_for(dp, "lb-udp-outlier", 5, "the refused session to end", |s| {
                        s.listeners[0].udp_sessions == 0
                    })
                    .await;
                }
                answered
            }
        };

        assert!(!ask("1").await && !ask("2").await, "refused twice");
        assert!(
            !ejected(&dp, "lb-udp-outlier", addr),
            "two failures do not eject"
        );
        let alive = udp_backend_on(addr, "flaky").await;
        assert!(ask("3").await, "the backend answers");
        drop(alive);
        // Refused again: the answer in between started the count over.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!ask("4").await && !ask("5").await, "refused twice more");
        assert!(
            !ejected(&dp, "lb-udp-outlier", addr),
            "failures separated by a success are not in a row"
        );
        assert_eq!(
            backend_metric(&registry, "slb_dataplane_backend_ejected", addr),
            Some(0)
        );

        assert!(!ask("6").await, "refused a third time in a row");
        assert!(
            ejected(&dp, "lb-udp-outlier", addr),
            "ejected after three in a row"
        );
        assert_eq!(
            backend_metric(&registry, "slb_dataplane_backend_ejected", addr),
            Some(1)
        );
        assert_eq!(
            backend_metric(&registry, "slb_dataplane_backend_ejections_total", addr),
            Some(1)
        );

        tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
        assert!(
            !ejected(&dp, "lb-udp-outlier", addr),
            "back after its cool-down"
        );
        assert_eq!(
            backend_metric(&registry, "slb_dataplane_backend_ejected", addr),
            Some(0)
        );
    })
    .await;
}

/// A UDP backend that refuses every session is ejected: after the
/// configured failures, every new client's session goes to the backend
/// that answers.
#[tokio::test]
async fn a_udp_backend_that_refuses_is_ejected() {
    use portico_slb::dataplane::{DataPlane, DataPlaneConfig, OutlierDetection};
    within(60, async {
        let dp = DataPlane::new(DataPlaneConfig {
            outlier: OutlierDetection {
                consecutive_failures: 2,
                ejection: std::time::Duration::from_secs(30),
            },
            ..DataPlaneConfig::default()
        });
        let good = UdpBackend::start("good").await;
        let dead = UdpBackend::start("dead").await;
        let dead_addr = dead.addr;
        drop(dead);
        let vip = vip(FILE, 22);
        let l = listener(5391, Transport::Udp)
            .backends(&[dead_addr, good.addr])
            .build();
        dp.apply(balancer("lb-udp-eject", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5391);
        let mut unanswered = 0;
        for i in 0..20 {
            // A new client each time: a new session, picked round robin.
            let c = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            c.send_to(format!("m{i}").as_bytes(), to)
                .await
                .expect("send");
            let mut buf = [0u8; 256];
            let answered =
                tokio::time::timeout(std::time::Duration::from_millis(300), c.recv_from(&mut buf))
                    .await
                    .is_ok();
            if !answered {
                unanswered += 1;
            }
        }
        assert_eq!(
            unanswered, 2,
            "two sessions refused, then the backend is out and every client gets an answer"
        );
        assert!(ejected(&dp, "lb-udp-eject", dead_addr));
    })
    .await;
}
