//! Reconfiguration: draining removed backends and listeners, connections to
//! backends that stay are untouched, zero failed requests while backends
//! are replaced under load.

mod dataplane_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dataplane_support::*;
use portico_slb::forwarding::{AccessControl, ForwardingSink, ProbeKind, Transport};
use tokio::net::TcpStream;

const FILE: u8 = 4;

fn active(
    dp: &portico_slb::dataplane::DataPlane,
    id: &str,
    backend: SocketAddr,
) -> Option<(u64, bool)> {
    dp.snapshot(id)?
        .listeners
        .iter()
        .flat_map(|l| &l.backends)
        .find(|b| b.addr == backend)
        .map(|b| (b.active_connections, b.draining))
}

#[tokio::test]
async fn removed_backend_drains_until_the_timeout() {
    within(30, async {
        let (e1, e2) = (Backend::echo().await, Backend::echo().await);
        let dp = dataplane();
        let vip = vip(FILE, 1);
        let drain = Duration::from_millis(1500);
        let cfg = |b: SocketAddr| {
            listener(8000, Transport::Tcp)
                .backends(&[b])
                .probe(ProbeKind::Disabled)
                .drain(drain)
                .build()
        };
        dp.apply(balancer("lb-drain", vip, vec![cfg(e1.addr)]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let mut old = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut old, b"before").await.expect("echo");

        dp.apply(balancer("lb-drain", vip, vec![cfg(e2.addr)]))
            .await
            .expect("apply");
        let removed_at = tokio::time::Instant::now();
        assert_eq!(
            active(&dp, "lb-drain", e1.addr),
            Some((1, true)),
            "e1 draining with its connection"
        );
        echo_once(&mut old, b"during the drain")
            .await
            .expect("old connection still works");
        let mut new = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut new, b"new").await.expect("echo");
        assert_eq!(
            active(&dp, "lb-drain", e2.addr),
            Some((1, false)),
            "new connection went to e2"
        );
        assert_eq!(active(&dp, "lb-drain", e1.addr), Some((1, true)));

        tokio::time::sleep_until(removed_at + Duration::from_millis(1000)).await;
        echo_once(&mut old, b"still")
            .await
            .expect("old connection works until the timeout");
        tokio::time::sleep_until(removed_at + drain + Duration::from_millis(300)).await;
        assert!(
            echo_once(&mut old, b"after").await.is_err(),
            "closed at the end of the drain"
        );
        assert_eq!(active(&dp, "lb-drain", e1.addr), None, "e1 gone");
        echo_once(&mut new, b"unaffected")
            .await
            .expect("e2 connection untouched");
    })
    .await;
}

/// Weight 0 drains a backend that stays configured: its open connection
/// keeps working until the drain timeout, then is closed; new connections
/// go elsewhere meanwhile; weighted up again, it serves new connections
/// that outlive the old timeout, and weighting up before the timeout keeps
/// the open ones.
#[tokio::test]
async fn a_backend_weighted_to_zero_drains_until_the_timeout() {
    within(30, async {
        let (e1, e2) = (Backend::echo().await, Backend::echo().await);
        let dp = dataplane();
        let vip = vip(FILE, 5);
        let drain = Duration::from_millis(800);
        let cfg = |w1: u32| {
            listener(8000, Transport::Tcp)
                .backend(e1.addr, w1)
                .backend(e2.addr, 1)
                .probe(ProbeKind::Disabled)
                .drain(drain)
                .build()
        };
        // Only e1 takes the first connection.
        dp.apply(balancer("lb-weight", vip, vec![cfg(1)]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let mut old = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut old, b"before").await.expect("echo");
        let (drained, other) = if active(&dp, "lb-weight", e1.addr) == Some((1, false)) {
            (e1.addr, e2.addr)
        } else {
            (e2.addr, e1.addr)
        };
        let cfg = |w_drained: u32| {
            listener(8000, Transport::Tcp)
                .backend(drained, w_drained)
                .backend(other, 1)
                .probe(ProbeKind::Disabled)
                .drain(drain)
                .build()
        };

        dp.apply(balancer("lb-weight", vip, vec![cfg(0)]))
            .await
            .expect("apply");
        let weighted_down = tokio::time::Instant::now();
        let mut fresh = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            echo_once(&mut c, b"new").await.expect("echo");
            fresh.push(c);
        }
        assert_eq!(
            active(&dp, "lb-weight", other),
            Some((4, false)),
            "new connections avoid the backend at weight 0"
        );
        tokio::time::sleep_until(weighted_down + drain / 2).await;
        echo_once(&mut old, b"during")
            .await
            .expect("the open connection works while draining");
        tokio::time::sleep_until(weighted_down + drain + Duration::from_millis(300)).await;
        assert!(
            echo_once(&mut old, b"after").await.is_err(),
            "closed when the drain ran out, though the backend is still configured"
        );
        assert_eq!(active(&dp, "lb-weight", drained), Some((0, false)));
        for c in &mut fresh {
            echo_once(c, b"unaffected").await.expect("others untouched");
        }

        // Weighted up again: it serves, and what it serves is not cut by the
        // drain that ended.
        dp.apply(balancer("lb-weight", vip, vec![cfg(100)]))
            .await
            .expect("apply");
        let mut back = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut back, b"back").await.expect("echo");
        assert_eq!(active(&dp, "lb-weight", drained), Some((1, false)));

        // Down and up again within the timeout: the open connection stays.
        dp.apply(balancer("lb-weight", vip, vec![cfg(0)]))
            .await
            .expect("apply");
        tokio::time::sleep(drain / 4).await;
        dp.apply(balancer("lb-weight", vip, vec![cfg(1)]))
            .await
            .expect("apply");
        tokio::time::sleep(drain + Duration::from_millis(300)).await;
        echo_once(&mut back, b"kept")
            .await
            .expect("weighted up before the timeout: the connection stays");
    })
    .await;
}

#[tokio::test]
async fn reconfiguring_other_settings_leaves_connections_alone() {
    within(30, async {
        let (e1, e2) = (Backend::echo().await, Backend::echo().await);
        let dp = dataplane();
        let vip = vip(FILE, 2);
        let base = listener(8000, Transport::Tcp)
            .backends(&[e1.addr])
            .drain(Duration::from_millis(200));
        dp.apply(balancer("lb-same", vip, vec![base.clone().build()]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut conn, b"one").await.expect("echo");
        let local = conn.local_addr().expect("addr");

        // Identical config, then a new backend, new ACL, new health check,
        // another listener: the socket and the connection stay.
        dp.apply(balancer("lb-same", vip, vec![base.clone().build()]))
            .await
            .expect("apply");
        let changed = base
            .clone()
            .backend(e2.addr, 5)
            .access(AccessControl::Deny(vec![
                "10.0.0.0/8".parse().expect("net"),
            ]))
            .probe(ProbeKind::Disabled)
            .build();
        let extra = listener(8001, Transport::Tcp).backends(&[e2.addr]).build();
        dp.apply(balancer("lb-same", vip, vec![changed, extra]))
            .await
            .expect("apply");
        tokio::time::sleep(Duration::from_millis(400)).await;
        echo_once(&mut conn, b"two")
            .await
            .expect("same connection still echoes");
        assert_eq!(conn.local_addr().expect("addr"), local);
        assert_eq!(active(&dp, "lb-same", e1.addr), Some((1, false)));
        // Removing only the other listener does not touch this one either.
        dp.apply(balancer("lb-same", vip, vec![base.build()]))
            .await
            .expect("apply");
        tokio::time::sleep(Duration::from_millis(400)).await;
        echo_once(&mut conn, b"three").await.expect("still echoes");
    })
    .await;
}

#[tokio::test]
async fn removed_listener_stops_accepting_and_drains() {
    within(30, async {
        let e1 = Backend::echo().await;
        let dp = dataplane();
        let vip = vip(FILE, 3);
        let l = listener(8000, Transport::Tcp)
            .backends(&[e1.addr])
            .drain(Duration::from_millis(800))
            .build();
        dp.apply(balancer("lb-l", vip, vec![l]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut conn, b"one").await.expect("echo");
        dp.remove("lb-l").await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
        echo_once(&mut conn, b"two").await.expect("drains");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            echo_once(&mut conn, b"three").await.is_err(),
            "closed after the drain"
        );
    })
    .await;
}

#[tokio::test]
async fn backends_replaced_under_load_fail_no_request() {
    within(60, async {
        let dp = dataplane();
        let vip = vip(FILE, 4);
        let addr = SocketAddr::new(vip, 8000);
        let cfg = |bs: &[&Backend]| {
            let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
            listener(8000, Transport::Tcp)
                .backends(&addrs)
                .drain(Duration::from_secs(2))
                .build()
        };
        let mut live = vec![Backend::name("gen0-a").await, Backend::name("gen0-b").await];
        dp.apply(balancer(
            "lb-zero",
            vip,
            vec![cfg(&live.iter().collect::<Vec<_>>())],
        ))
        .await
        .expect("apply");

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match ask(addr).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }

        // One by one: add a new backend, then remove an old one, then (once
        // it has drained) shut the old one down.
        for generation in 1..=3 {
            for slot in 0..2 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let fresh = Backend::name(&format!("gen{generation}-{slot}")).await;
                let mut with_new: Vec<&Backend> = live.iter().collect();
                with_new.push(&fresh);
                dp.apply(balancer("lb-zero", vip, vec![cfg(&with_new)]))
                    .await
                    .expect("add");
                tokio::time::sleep(Duration::from_millis(150)).await;
                let mut old = live.remove(0);
                live.push(fresh);
                dp.apply(balancer(
                    "lb-zero",
                    vip,
                    vec![cfg(&live.iter().collect::<Vec<_>>())],
                ))
                .await
                .expect("remove");
                let gone = old.addr;
                wait_for(&dp, "lb-zero", 5, "old backend drained", |s| {
                    s.listeners[0].backends.iter().all(|b| b.addr != gone)
                })
                .await;
                old.stop().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.expect("load task");
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
        assert!(ok > 200, "the load loop ran ({ok} requests)");
        // Only the last generation is left and it serves.
        let names: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(ask(addr).await.expect("request"));
            }
            v
        };
        assert!(names.iter().all(|n| n.starts_with("gen3-")), "{names:?}");
    })
    .await;
}

/// A change that takes a backend out returns only once no connect to it is
/// under way any more: a connect decided before the change (here stuck,
/// the backend's accept queue being full) is over when `apply` returns, so
/// nothing reaches a removed backend afterwards.
#[tokio::test]
async fn apply_waits_for_connects_under_way_to_a_backend_it_takes_out() {
    within(30, async {
        // A backend that never accepts, its queue full: SYNs are dropped
        // and a connect hangs until the data plane's timeout (500 ms).
        let stuck = tokio::net::TcpSocket::new_v4().expect("socket");
        stuck
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let stuck = stuck.listen(1).expect("listen");
        let stuck_addr = stuck.local_addr().expect("addr");
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(stuck_addr))
                    .await
            {
                fillers.push(s);
            }
        }
        let e2 = Backend::echo().await;
        let dp = dataplane();
        let vip = vip(FILE, 6);
        let cfg = |b: SocketAddr| {
            listener(8000, Transport::Tcp)
                .backends(&[b])
                .probe(ProbeKind::Disabled)
                .build()
        };
        dp.apply(balancer("lb-settle", vip, vec![cfg(stuck_addr)]))
            .await
            .expect("apply");
        let addr = SocketAddr::new(vip, 8000);
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            echo_once(&mut c, b"hello").await
        });
        wait_for(&dp, "lb-settle", 5, "a connect under way", |s| {
            s.listeners[0]
                .backends
                .iter()
                .any(|b| b.addr == stuck_addr && b.active_connections == 1)
        })
        .await;

        dp.apply(balancer("lb-settle", vip, vec![cfg(e2.addr)]))
            .await
            .expect("apply");
        let under_way = active(&dp, "lb-settle", stuck_addr).is_some_and(|(n, _)| n > 0);
        assert!(
            !under_way,
            "apply returned while a connect to the removed backend was under way"
        );
        // The client's connection fails over to the new backend.
        client
            .await
            .expect("client task")
            .expect("answered by the remaining backend");
        drop(fillers);
    })
    .await;
}
