//! UDP forwarding on loopback: both ways, several clients, replies from the
//! VIP, access control, session expiry.

mod dataplane_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_support::*;
use portico_slb::forwarding::{AccessControl, ForwardingSink, Transport};
use tokio::net::UdpSocket;

const FILE: u8 = 2;

async fn client(source: &str) -> UdpSocket {
    UdpSocket::bind(format!("{source}:0"))
        .await
        .expect("bind client")
}

/// Send `msg` to `to` and return the reply and where it came from.
async fn round_trip(s: &UdpSocket, to: SocketAddr, msg: &str) -> Option<(String, SocketAddr)> {
    s.send_to(msg.as_bytes(), to).await.expect("send");
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
        _ => None,
    }
}

#[tokio::test]
async fn udp_forwards_both_ways_for_many_clients() {
    within(30, async {
        let (a, b) = (UdpBackend::start("a").await, UdpBackend::start("b").await);
        let dp = dataplane();
        let vip = vip(FILE, 1);
        // TcpConnect on UDP runs no check: both backends count healthy.
        let l = listener(5300, Transport::Udp)
            .backends(&[a.addr, b.addr])
            .build();
        dp.apply(balancer("lb-udp", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5300);

        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(client("127.0.0.1").await);
        }
        let mut per_backend = [0usize; 2];
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("ping{i}");
            let (reply, from) = round_trip(c, to, &msg).await.expect("a reply");
            assert_eq!(from, to, "the reply comes from the vip");
            let (name, payload) = reply.split_once(':').expect("name:payload");
            assert_eq!(payload, msg);
            per_backend[usize::from(name == "b")] += 1;
            // The same client stays on its session's backend.
            for k in 0..3 {
                let again = format!("again{k}");
                let (r, from) = round_trip(c, to, &again).await.expect("a reply");
                assert_eq!(from, to);
                assert_eq!(r, format!("{name}:{again}"));
            }
        }
        assert_eq!(per_backend, [3, 3], "sessions spread round robin");
        let snap = dp.snapshot("lb-udp").expect("snapshot");
        assert_eq!(snap.listeners[0].udp_sessions, 6);
        for b in &snap.listeners[0].backends {
            assert_eq!(b.health, portico_slb::dataplane::HealthState::Healthy);
            assert_eq!(b.active_connections, 3);
        }

        // Idle sessions expire (2 s in the test data plane).
        wait_for(&dp, "lb-udp", 10, "sessions to expire", |s| {
            s.listeners[0].udp_sessions == 0
        })
        .await;
        let (reply, _) = round_trip(&clients[0], to, "back")
            .await
            .expect("a new session");
        assert!(reply.ends_with(":back"));
    })
    .await;
}

#[tokio::test]
async fn udp_access_control_drops_foreign_sources() {
    within(30, async {
        let a = UdpBackend::start("a").await;
        let dp = dataplane();
        let vip = vip(FILE, 2);
        let l = listener(5300, Transport::Udp)
            .backends(&[a.addr])
            .access(AccessControl::AllowOnly(vec![
                "127.0.0.2/32".parse().expect("net"),
            ]))
            .build();
        dp.apply(balancer("lb-udp-acl", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5300);
        let allowed = client("127.0.0.2").await;
        let denied = client("127.0.0.1").await;
        let (reply, from) = round_trip(&allowed, to, "hi")
            .await
            .expect("allowed source gets a reply");
        assert_eq!((reply.as_str(), from), ("a:hi", to));
        assert!(
            round_trip(&denied, to, "hi").await.is_none(),
            "denied source gets nothing"
        );
        let _: IpAddr = vip;
    })
    .await;
}

#[tokio::test]
async fn udp_session_to_a_dead_backend_moves_on() {
    within(30, async {
        let a = UdpBackend::start("a").await;
        // A port with nothing behind it: ICMP port unreachable.
        let dead = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr")
        };
        let dp = dataplane();
        let vip = vip(FILE, 3);
        let l = listener(5300, Transport::Udp)
            .backends(&[dead, a.addr])
            .build();
        dp.apply(balancer("lb-udp-dead", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5300);
        let c = client("127.0.0.1").await;
        // Without a health check the first session may go to the dead one;
        // it ends on the refusal and a retry gets a live backend.
        let mut answered = false;
        for _ in 0..4 {
            if let Some((reply, _)) = round_trip(&c, to, "x").await {
                assert_eq!(reply, "a:x");
                answered = true;
                break;
            }
        }
        assert!(answered, "a retry reaches the live backend");
    })
    .await;
}

/// Removing a backend (not draining it with weight 0) ends its UDP sessions
/// at once: once `apply` returns, a client that keeps sending from the same
/// source port never reaches it again, even with every core busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_gets_no_datagram_after_apply() {
    within(120, async {
        let _load = CpuLoad::start(2);
        for round in 0..20u8 {
            let (a, b) = (UdpBackend::start("a").await, UdpBackend::start("b").await);
            let dp = dataplane();
            let vip = vip(FILE, 10 + round);
            let both = listener(5310, Transport::Udp)
                .backends(&[a.addr, b.addr])
                .build();
            dp.apply(balancer("lb-removal", vip, vec![both]))
                .await
                .expect("apply");
            let to = SocketAddr::new(vip, 5310);
            let c = client("127.0.0.1").await;
            let (reply, _) = round_trip(&c, to, "hello").await.expect("a reply");
            let (first, _) = reply.split_once(':').expect("name:payload");
            let (gone, stays) = if first == "a" { (&a, &b) } else { (&b, &a) };
            let remaining = listener(5310, Transport::Udp)
                .backends(&[stays.addr])
                .build();
            dp.apply(balancer("lb-removal", vip, vec![remaining]))
                .await
                .expect("apply");
            let before = gone.received.load(std::sync::atomic::Ordering::SeqCst);
            let mut answered = 0;
            for i in 0..30 {
                if let Some((reply, _)) = round_trip(&c, to, &format!("m{i}")).await {
                    assert!(
                        !reply.starts_with(first),
                        "round {round}: the removed backend answered {reply}"
                    );
                    answered += 1;
                }
            }
            assert_eq!(
                gone.received.load(std::sync::atomic::Ordering::SeqCst),
                before,
                "round {round}: a datagram reached the removed backend after apply returned"
            );
            assert!(
                answered >= 25,
                "round {round}: the remaining backend serves ({answered}/30)"
            );
        }
    })
    .await;
}

/// Draining (weight 0) is not removal: an open UDP session stays on its
/// backend until the drain timeout, then ends, and the client's next
/// datagram opens a session to a weighted backend.
#[tokio::test]
async fn a_draining_backend_keeps_its_udp_sessions_until_the_timeout() {
    within(30, async {
        let (a, b) = (UdpBackend::start("a").await, UdpBackend::start("b").await);
        let dp = dataplane();
        let vip = vip(FILE, 40);
        let drain = Duration::from_millis(800);
        let both = listener(5311, Transport::Udp)
            .backends(&[a.addr, b.addr])
            .drain(drain)
            .build();
        dp.apply(balancer("lb-drain", vip, vec![both]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5311);
        let c = client("127.0.0.1").await;
        let (reply, _) = round_trip(&c, to, "hello").await.expect("a reply");
        let (first, _) = reply.split_once(':').expect("name:payload");
        let (draining, other) = if first == "a" { (&a, &b) } else { (&b, &a) };
        let weighted = listener(5311, Transport::Udp)
            .backend(draining.addr, 0)
            .backend(other.addr, 100)
            .drain(drain)
            .build();
        dp.apply(balancer("lb-drain", vip, vec![weighted]))
            .await
            .expect("apply");
        let weighted_down = tokio::time::Instant::now();
        for i in 0..3 {
            let (reply, _) = round_trip(&c, to, &format!("m{i}")).await.expect("a reply");
            assert!(
                reply.starts_with(first),
                "the session stays while draining: {reply}"
            );
        }
        // A new client goes to the weighted backend only.
        let fresh = client("127.0.0.1").await;
        let (reply, _) = round_trip(&fresh, to, "new").await.expect("a reply");
        assert!(
            !reply.starts_with(first),
            "no new session on a draining backend: {reply}"
        );

        tokio::time::sleep_until(weighted_down + drain + Duration::from_millis(200)).await;
        let before = draining.received.load(std::sync::atomic::Ordering::SeqCst);
        for i in 0..3 {
            let (reply, _) = round_trip(&c, to, &format!("late{i}"))
                .await
                .expect("a reply");
            assert!(
                !reply.starts_with(first),
                "the drain ran out: the session moved on ({reply})"
            );
        }
        assert_eq!(
            draining.received.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "no datagram reached the drained backend after the timeout"
        );
    })
    .await;
}

/// A listener keeps at most `max_udp_sessions` clients; the next client's
/// datagrams are dropped and counted, and it gets in once a session ends.
#[tokio::test]
async fn udp_sessions_are_capped_per_listener() {
    use portico_slb::dataplane::{DataPlane, DataPlaneConfig};
    within(30, async {
        let a = UdpBackend::start("a").await;
        let dp = DataPlane::new(DataPlaneConfig {
            udp_idle_timeout: Duration::from_millis(600),
            max_udp_sessions: 2,
            ..DataPlaneConfig::default()
        });
        let mut registry = prometheus_client::registry::Registry::default();
        dp.register_metrics(&mut registry);
        let vip = vip(FILE, 41);
        let l = listener(5312, Transport::Udp).backends(&[a.addr]).build();
        dp.apply(balancer("lb-cap", vip, vec![l]))
            .await
            .expect("apply");
        let to = SocketAddr::new(vip, 5312);
        let (one, two, three) = (
            client("127.0.0.1").await,
            client("127.0.0.1").await,
            client("127.0.0.1").await,
        );
        assert!(round_trip(&one, to, "1").await.is_some());
        assert!(round_trip(&two, to, "2").await.is_some());
        assert!(
            round_trip(&three, to, "3").await.is_none(),
            "the third client is over the cap"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.lines()
                .any(|l| l.starts_with("slb_dataplane_udp_session_limit_total{")
                    && l.ends_with(" 1")),
            "the drop is counted:\n{text}"
        );
        // Once the first two go idle, the third gets in.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(round_trip(&three, to, "3 again").await.is_some());
    })
    .await;
}
