//! The whole chain: the provider's `ensure` → the cloud's API over HTTP →
//! the real data plane → traffic from clients to nodes on loopback. What a
//! Service's spec says (nodes leaving, nodes labelled to drain) is what
//! traffic does once `ensure` returns.

mod dataplane_support;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane_support::within;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    ClusterName, Listener as SpecListener, LoadBalancerKey, LoadBalancerSpec, Protocol,
    ProviderError, Target,
};
use portico_slb::cloud::{CloudConfig, CloudServer};
use portico_slb::dataplane::{DataPlane, DataPlaneConfig};
use portico_slb::provider::options::DRAIN_NODE_LABEL;
use portico_slb::provider::{SlbProvider, SlbProviderConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const TCP_PORT: u16 = 18080;
const UDP_PORT: u16 = 15353;

/// One node: a TCP and a UDP server on the same NodePort of its own
/// loopback address. TCP greets with the node's name, then echoes lines;
/// UDP answers `name:payload`. Both record the sequence numbers clients
/// put in what they send (`seq N` lines, `N` datagrams).
struct Node {
    name: String,
    ip: IpAddr,
    tcp_seqs: Arc<Mutex<Vec<u64>>>,
    udp_seqs: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Node {
    fn target(&self, drain: bool) -> Target {
        let mut labels = BTreeMap::new();
        if drain {
            labels.insert(DRAIN_NODE_LABEL.to_string(), "true".to_string());
        }
        Target {
            node_name: self.name.clone(),
            addresses: vec![self.ip],
            provider_id: None,
            labels,
        }
    }

    fn tcp_seqs(&self) -> Vec<u64> {
        self.tcp_seqs.lock().expect("seqs").clone()
    }

    fn udp_seqs(&self) -> Vec<u64> {
        self.udp_seqs.lock().expect("seqs").clone()
    }
}

fn record(seqs: &Mutex<Vec<u64>>, text: &str) {
    if let Ok(n) = text.trim().parse::<u64>() {
        seqs.lock().expect("seqs").push(n);
    }
}

/// Nodes `127.0.0.{first}`, `127.0.0.{first+1}`, ... sharing one NodePort
/// (for TCP and UDP alike), as kube-proxy opens it on every node.
async fn nodes(names: &[&str], first: u8) -> (Vec<Node>, u16) {
    let ips: Vec<IpAddr> = (0..names.len())
        .map(|i| {
            let last = first + u8::try_from(i).expect("few nodes");
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
        })
        .collect();
    'attempt: for _ in 0..20 {
        let probe = TcpListener::bind(SocketAddr::new(ips[0], 0))
            .await
            .expect("bind");
        let port = probe.local_addr().expect("addr").port();
        let mut sockets = vec![(probe, UdpSocket::bind(SocketAddr::new(ips[0], port)).await)];
        for ip in &ips[1..] {
            let addr = SocketAddr::new(*ip, port);
            match TcpListener::bind(addr).await {
                Ok(t) => sockets.push((t, UdpSocket::bind(addr).await)),
                Err(_) => continue 'attempt,
            }
        }
        let mut out = Vec::new();
        for ((tcp, udp), (name, ip)) in sockets.into_iter().zip(names.iter().zip(&ips)) {
            let Ok(udp) = udp else { continue 'attempt };
            out.push(serve_node(name, *ip, tcp, udp));
        }
        return (out, port);
    }
    panic!("no port free on every node address");
}

fn serve_node(name: &str, ip: IpAddr, tcp: TcpListener, udp: UdpSocket) -> Node {
    let tcp_seqs = Arc::new(Mutex::new(Vec::new()));
    let udp_seqs = Arc::new(Mutex::new(Vec::new()));
    let (n, seqs) = (name.to_string(), Arc::clone(&tcp_seqs));
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                return;
            };
            let (n, seqs) = (n.clone(), Arc::clone(&seqs));
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                if w.write_all(format!("{n}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(seq) = line.strip_prefix("seq ") {
                        record(&seqs, seq);
                    }
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (n, seqs) = (name.to_string(), Arc::clone(&udp_seqs));
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                return;
            };
            let payload = String::from_utf8_lossy(&buf[..len]).into_owned();
            record(&seqs, &payload);
            let _ = udp.send_to(format!("{n}:{payload}").as_bytes(), from).await;
        }
    });
    Node {
        name: name.to_string(),
        ip,
        tcp_seqs,
        udp_seqs,
        tasks: vec![tcp_task, udp_task],
    }
}

/// The cloud (VIPs from `vips`, connections to a drained or removed
/// backend closed after `drain`), its data plane, and the provider.
struct Chain {
    cloud: CloudServer,
    _dataplane: DataPlane,
    provider: SlbProvider,
}

impl Chain {
    async fn start(vips: &str, drain: Duration) -> Chain {
        let dataplane = DataPlane::new(DataPlaneConfig {
            connect_timeout: Duration::from_millis(500),
            ..DataPlaneConfig::default()
        });
        let cloud = CloudServer::start(
            CloudConfig {
                vip_range: vips.parse().expect("vip range"),
                drain_timeout: drain,
                ..CloudConfig::default()
            },
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(dataplane.clone()),
        )
        .await
        .expect("cloud");
        let provider = SlbProvider::new(SlbProviderConfig::new(cloud.url(), ClusterName::new("c")))
            .expect("provider");
        Chain {
            cloud,
            _dataplane: dataplane,
            provider,
        }
    }

    /// Ensure the Service `web` with a TCP and a UDP port on `targets`;
    /// returns its VIP.
    async fn ensure(&self, node_port: u16, targets: Vec<Target>) -> IpAddr {
        let spec = web(node_port, targets);
        let status = self.provider.ensure_spec(&spec).await.expect("ensure");
        status.ingress[0].ip.expect("a vip")
    }
}

/// The Service `web`: TCP and UDP ports to `node_port` on `targets`.
fn web(node_port: u16, targets: Vec<Target>) -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(LoadBalancerKey::new(
        ClusterName::new("c"),
        "ns",
        "web",
        "uid-web",
    ));
    spec.listeners = vec![
        SpecListener {
            port: TCP_PORT,
            protocol: Protocol::Tcp,
            node_port,
            name: None,
        },
        SpecListener {
            port: UDP_PORT,
            protocol: Protocol::Udp,
            node_port,
            name: None,
        },
    ];
    spec.targets = targets.into();
    spec
}

/// A TCP connection through the VIP: the node's name, then echoed lines.
struct Conn {
    node: String,
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(vip: IpAddr) -> io::Result<Conn> {
        let s = TcpStream::connect(SocketAddr::new(vip, TCP_PORT)).await?;
        let (r, w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        let node = next_line(&mut lines).await?;
        Ok(Conn { node, lines, w })
    }

    async fn echo(&mut self, line: &str) -> io::Result<()> {
        self.w.write_all(format!("{line}\n").as_bytes()).await?;
        let back = next_line(&mut self.lines).await?;
        if back == line {
            Ok(())
        } else {
            Err(io::Error::other(format!("echo {back:?} for {line:?}")))
        }
    }
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
) -> io::Result<String> {
    match tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await {
        Ok(Ok(Some(l))) => Ok(l),
        Ok(Ok(None)) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no line")),
    }
}

/// Send `msg` from `client` to the VIP's UDP port; the answering node.
async fn udp_ask(client: &UdpSocket, vip: IpAddr, msg: &str) -> Option<String> {
    client
        .send_to(msg.as_bytes(), SocketAddr::new(vip, UDP_PORT))
        .await
        .expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply.split_once(':').map(|(node, _)| node.to_string())
}

/// A node labelled `portico.io/slb-drain` drains through the whole chain:
/// its open TCP connection and UDP session carry on, new ones go to the
/// other node, and at the cloud's drain timeout the old ones end; the
/// label taken off, it serves new connections again.
#[tokio::test]
async fn a_node_labelled_to_drain_keeps_its_connections_until_the_timeout() {
    within(60, async {
        let drain = Duration::from_millis(1500);
        let chain = Chain::start("127.243.1.0/24", drain).await;
        let (nodes, port) = nodes(&["node-a", "node-b"], 2).await;
        let vip = chain
            .ensure(port, vec![nodes[0].target(false), nodes[1].target(false)])
            .await;

        let mut old = Conn::open(vip).await.expect("connect");
        old.echo("hello").await.expect("echo");
        let drained = nodes
            .iter()
            .position(|n| n.name == old.node)
            .expect("a node");
        let other = &nodes[1 - drained].name;
        // A UDP client whose session lands on the node to drain (sessions
        // alternate between the two nodes).
        let mut udp_on_drained = None;
        for _ in 0..4 {
            let c = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            if udp_ask(&c, vip, "0").await.as_deref() == Some(old.node.as_str()) {
                udp_on_drained = Some(c);
                break;
            }
        }
        let udp = udp_on_drained.expect("a UDP session on the node to drain");

        let labelled: Vec<Target> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.target(i == drained))
            .collect();
        chain.ensure(port, labelled).await;
        let drained_at = tokio::time::Instant::now();
        let weights: Vec<u32> = chain
            .cloud
            .snapshot()
            .groups
            .values()
            .flat_map(|g| g.servers.iter())
            .filter(|s| s.description == old.node)
            .map(|s| s.weight)
            .collect();
        assert_eq!(
            weights,
            [0, 0],
            "the drained node weighs 0 on both listeners"
        );

        for i in 0..4 {
            let c = Conn::open(vip).await.expect("connect");
            assert_eq!(&c.node, other, "new connection {i} avoids the drained node");
        }
        let fresh = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(udp_ask(&fresh, vip, "1").await.as_ref(), Some(other));
        tokio::time::sleep(drain / 2).await;
        old.echo("seq 7")
            .await
            .expect("the open connection carries on while draining");
        assert_eq!(nodes[drained].tcp_seqs(), [7], "it still reaches the node");
        assert_eq!(
            udp_ask(&udp, vip, "2").await.as_deref(),
            Some(old.node.as_str()),
            "the open UDP session carries on while draining"
        );

        tokio::time::sleep_until(drained_at + drain + Duration::from_millis(300)).await;
        assert!(
            old.echo("after").await.is_err(),
            "the connection ends at the drain timeout"
        );
        assert_eq!(
            udp_ask(&udp, vip, "3").await.as_ref(),
            Some(other),
            "the UDP session moved on at the drain timeout"
        );
        assert!(
            !nodes[drained].udp_seqs().contains(&3),
            "no datagram reached the drained node after the timeout"
        );

        chain
            .ensure(port, vec![nodes[0].target(false), nodes[1].target(false)])
            .await;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(Conn::open(vip).await.expect("connect").node);
        }
        assert_eq!(
            seen.len(),
            2,
            "without the label both nodes serve: {seen:?}"
        );
    })
    .await;
}

/// `ensure` returns Ok only when traffic follows: while another process
/// holds the VIP's TCP port on the host, the cloud refuses the listener
/// (409 ForwardingFailed, nothing made) and `ensure` fails with a conflict
/// the controller retries; once the port is free, `ensure` succeeds and
/// the VIP serves.
#[tokio::test]
async fn ensure_fails_while_the_data_plane_cannot_listen() {
    within(60, async {
        let chain = Chain::start("127.243.2.0/24", Duration::from_secs(1)).await;
        let (nodes, port) = nodes(&["node-a"], 4).await;
        let vip: IpAddr = "127.243.2.10".parse().expect("ip");
        let mut spec = web(port, vec![nodes[0].target(false)]);
        spec.requested_ips = vec![vip];

        let squatter = std::net::TcpListener::bind(SocketAddr::new(vip, TCP_PORT)).expect("bind");
        match chain.provider.ensure_spec(&spec).await {
            Err(ProviderError::Conflict { message }) => {
                assert!(message.contains("cannot listen on"), "{message}");
            }
            other => panic!("ensure must fail while the port is taken: {other:?}"),
        }
        let tcp_listeners = chain
            .cloud
            .snapshot()
            .listeners
            .values()
            .filter(|l| l.port == TCP_PORT)
            .count();
        assert_eq!(
            tcp_listeners, 0,
            "the cloud did not record a listener it cannot serve"
        );

        drop(squatter);
        let status = chain.provider.ensure_spec(&spec).await.expect("ensure");
        assert_eq!(status.ingress[0].ip, Some(vip));
        let mut conn = Conn::open(vip)
            .await
            .expect("the VIP serves once ensure returned");
        assert_eq!(conn.node, "node-a");
        conn.echo("seq 1").await.expect("echo");
        assert_eq!(nodes[0].tcp_seqs(), [1]);
    })
    .await;
}

/// Traffic that never stops while a node leaves: one UDP client sending
/// from a single source port, and clients opening new TCP connections, each
/// datagram and connection numbered before it is sent. Every round removes
/// the node the UDP client's session is on (and puts back the one removed
/// before) through `ensure`; whatever is numbered after `ensure` returned
/// must never reach the removed node, and every TCP request must be
/// answered. The cores are kept busy all along, so races get their chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_gets_nothing_sent_after_ensure_returns() {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let load = dataplane_support::CpuLoad::start_for(2, Duration::from_secs(150));
    within(120, async {
        let chain = Chain::start("127.243.3.0/24", Duration::from_secs(10)).await;
        let (nodes, port) = nodes(&["node-a", "node-b", "node-c"], 6).await;
        let all: Vec<Target> = nodes.iter().map(|n| n.target(false)).collect();
        let vip = chain.ensure(port, all.clone()).await;

        let stop = Arc::new(AtomicBool::new(false));
        let udp_seq = Arc::new(AtomicU64::new(0));
        let tcp_seq = Arc::new(AtomicU64::new(0));
        let tcp_failures = Arc::new(AtomicUsize::new(0));
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let mut tasks = Vec::new();
        {
            let (stop, seq, client) = (Arc::clone(&stop), Arc::clone(&udp_seq), Arc::clone(&client));
            tasks.push(tokio::spawn(async move {
                let to = SocketAddr::new(vip, UDP_PORT);
                while !stop.load(Ordering::SeqCst) {
                    let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = client.send_to(n.to_string().as_bytes(), to).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        {
            // Replies are not needed; read them so the socket never fills.
            let (stop, client) = (Arc::clone(&stop), Arc::clone(&client));
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(Duration::from_millis(50), client.recv_from(&mut buf)).await;
                }
            }));
        }
        for _ in 0..2 {
            let (stop, seq, failures) = (Arc::clone(&stop), Arc::clone(&tcp_seq), Arc::clone(&tcp_failures));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                    let answered = match Conn::open(vip).await {
                        Ok(mut c) => c.echo(&format!("seq {n}")).await.is_ok(),
                        Err(_) => false,
                    };
                    if !answered {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }

        let last = |seqs: Vec<u64>| seqs.into_iter().max().unwrap_or(0);
        for round in 0..10 {
            chain.ensure(port, all.clone()).await;
            tokio::time::sleep(Duration::from_millis(80)).await;
            // The node the UDP client's session is on now.
            let gone = (0..nodes.len())
                .max_by_key(|&i| last(nodes[i].udp_seqs()))
                .expect("nodes");
            let remaining: Vec<Target> = nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, n)| n.target(false))
                .collect();
            chain.ensure(port, remaining).await;
            let (udp_mark, tcp_mark) = (udp_seq.load(Ordering::SeqCst), tcp_seq.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(150)).await;

            let name = &nodes[gone].name;
            let late_udp: Vec<u64> = nodes[gone].udp_seqs().into_iter().filter(|&n| n > udp_mark).collect();
            assert!(late_udp.is_empty(), "round {round}: datagrams {late_udp:?} sent after ensure returned reached {name}");
            let late_tcp: Vec<u64> = nodes[gone].tcp_seqs().into_iter().filter(|&n| n > tcp_mark).collect();
            assert!(late_tcp.is_empty(), "round {round}: connections {late_tcp:?} opened after ensure returned reached {name}");
            let others = |seqs: fn(&Node) -> Vec<u64>| {
                nodes.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, n)| last(seqs(n))).max().unwrap_or(0)
            };
            assert!(others(Node::udp_seqs) > udp_mark, "round {round}: the UDP client moved on to a remaining node");
            assert!(others(Node::tcp_seqs) > tcp_mark, "round {round}: new connections reach the remaining nodes");
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("traffic task");
        }
        assert_eq!(tcp_failures.load(Ordering::SeqCst), 0, "every TCP request was answered");
        assert!(udp_seq.load(Ordering::SeqCst) > 100, "the UDP client kept sending");
    })
    .await;
    assert!(load.running(), "the CPU load lasted as long as the test");
}
