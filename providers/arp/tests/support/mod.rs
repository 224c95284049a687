//! A layer-2 test bed in network namespaces, shared by the netns tests and
//! the failover benchmark.
//!
//! ```text
//!  ns <p>-br: bridge br0 ─┬─ <p>-api  eth0 10.77.0.2    kube-standin API server
//!                         ├─ <p>-cl   eth0 10.77.0.100  the client (and the test body)
//!                         ├─ <p>-n0   eth0 10.77.0.10   speaker + kube-proxy stand-in
//!                         ├─ <p>-n1   eth0 10.77.0.11   ...
//!                         └─ <p>-n2   eth0 10.77.0.12   ...
//! ```
//!
//! Every participant lives in a namespace created here, the bridge too, so
//! no packet ever leaves them; the namespaces are removed on drop (and ones
//! left by a test process that died are removed by the next run). Each
//! node holds the VIPs on its loopback with `arp_ignore=1`, as
//! kube-proxy in IPVS mode does: the node's kernel accepts traffic for a VIP
//! but never answers ARP for it; only the speaker does.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnet_datalink::MacAddr;
use portico_arp::announce::arp;

pub const NODES: usize = 3;
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x200);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const CLIENT_MAC: MacAddr = MacAddr(0x02, 0x77, 0, 0, 0, 0x64);
pub const API4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PORT: u16 = 80;
pub const GOSSIP_PORT: u16 = 7946;
pub const SPEAKER_NAMESPACE: &str = "portico-system";

/// `None` (and a printed reason) when this process cannot build the bed.
pub fn root_or_skip(test: &str) -> Option<()> {
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED {test}: network namespaces need root (run the tests as root)");
        return None;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        println!("SKIPPED {test}: the `ip` command (iproute2) is not installed");
        return None;
    }
    Some(())
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    let mut all = vec!["ip"];
    all.extend_from_slice(args);
    sh(&all);
}

/// Run `f` on a new thread inside network namespace `ns`: sockets it
/// creates belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Namespaces of test processes that are gone (a crash skips Drop).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("parp") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct TestNode {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub mac: MacAddr,
}

/// The bed: namespaces, API server, kube-proxy stand-ins, speakers.
pub struct Testbed {
    pub prefix: String,
    pub client_ns: String,
    pub nodes: Vec<TestNode>,
    pub kubeconfig: PathBuf,
    pub api_url: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    speakers: Mutex<Vec<Option<Child>>>,
    api_stop: Option<tokio::sync::oneshot::Sender<()>>,
    api_thread: Option<JoinHandle<()>>,
    proxies_stop: Arc<AtomicBool>,
    proxy_threads: Vec<JoinHandle<()>>,
    extra_args: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Build the network and start the API server and kube-proxy stand-ins
    /// (no speaker yet; see [`Testbed::start_speaker`]).
    pub fn new() -> Testbed {
        remove_stale_namespaces();
        let prefix = format!(
            "parp{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bed = Testbed {
            client_ns: format!("{prefix}-cl"),
            nodes: (0..NODES)
                .map(|i| TestNode {
                    name: format!("node-{i}"),
                    ns: format!("{prefix}-n{i}"),
                    ip: Ipv4Addr::new(10, 77, 0, 10 + i as u8),
                    ip6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10 + i as u16),
                    mac: MacAddr(0x02, 0x77, 0, 0, 0, 0x10 + i as u8),
                })
                .collect(),
            kubeconfig: dir.path().join("kubeconfig"),
            api_url: String::new(),
            dir,
            namespaces: Vec::new(),
            speakers: Mutex::new((0..NODES).map(|_| None).collect()),
            api_stop: None,
            api_thread: None,
            proxies_stop: Arc::new(AtomicBool::new(false)),
            proxy_threads: Vec::new(),
            extra_args: Vec::new(),
            prefix,
        };
        bed.build_network();
        bed.start_api();
        bed.start_proxies();
        bed
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Attach `ns` to the bridge as `eth0` with `addrs` (and a fixed MAC).
    fn attach(&self, ns: &str, port: &str, mac: Option<MacAddr>, addrs: &[&str]) {
        let br = format!("{}-br", self.prefix);
        ip(&[
            "-n", &br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["-n", &br, "link", "set", port, "master", "br0", "up"]);
        if let Some(mac) = mac {
            ip(&["-n", ns, "link", "set", "eth0", "address", &mac.to_string()]);
        }
        for addr in addrs {
            if addr.contains(':') {
                ip(&["-n", ns, "addr", "add", addr, "dev", "eth0", "nodad"]);
            } else {
                ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            }
        }
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    fn build_network(&mut self) {
        let p = self.prefix.clone();
        let br = format!("{p}-br");
        self.add_ns(&br);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        let api = format!("{p}-api");
        self.add_ns(&api);
        self.attach(&api, "p-api", None, &["10.77.0.2/24"]);
        let cl = self.client_ns.clone();
        self.add_ns(&cl);
        self.attach(
            &cl,
            "p-cl",
            Some(CLIENT_MAC),
            &["10.77.0.100/24", "fd77::100/64"],
        );
        for node in self.nodes.clone() {
            self.add_ns(&node.ns);
            let v4 = format!("{}/24", node.ip);
            let v6 = format!("{}/64", node.ip6);
            self.attach(
                &node.ns,
                &format!("p-{}", node.name),
                Some(node.mac),
                &[&v4, &v6],
            );
            // kube-proxy in IPVS mode holds VIPs on a dummy device (this
            // kernel may lack the dummy module: loopback works the same);
            // strict ARP keeps the kernel from answering for them on eth0.
            ip(&[
                "-n",
                &node.ns,
                "addr",
                "add",
                &format!("{VIP4}/32"),
                "dev",
                "lo",
            ]);
            ip(&[
                "-n",
                &node.ns,
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
            for (key, value) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &node.ns,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ]);
            }
        }
    }

    fn start_api(&mut self) {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = in_netns(&format!("{}-api", self.prefix), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = kube_standin::ApiServer::start_with(kube_standin::ApiServerOptions {
                    addr: SocketAddr::new(API4.into(), 0),
                    ..kube_standin::ApiServerOptions::default()
                })
                .await
                .expect("API server starts in its namespace");
                url_tx.send(server.url()).expect("test alive");
                let _ = stop_rx.await;
                server.shutdown().await;
            });
        });
        self.api_url = url_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("API server URL");
        self.api_stop = Some(stop_tx);
        self.api_thread = Some(thread);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {}\ncontexts:\n- name: bed\n  context:\n    cluster: bed\n    user: bed\n    namespace: default\ncurrent-context: bed\nusers:\n- name: bed\n  user: {{}}\n",
            self.api_url
        );
        std::fs::write(&self.kubeconfig, kubeconfig).expect("kubeconfig");
    }

    /// In every node, answer TCP on both VIPs' port with the node's name,
    /// as kube-proxy would forward to a backend there.
    fn start_proxies(&mut self) {
        for node in self.nodes.clone() {
            for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
                let stop = self.proxies_stop.clone();
                let name = node.name.clone();
                self.proxy_threads.push(in_netns(&node.ns, move || {
                    let listener =
                        TcpListener::bind(SocketAddr::new(vip, PORT)).expect("bind VIP on node");
                    listener.set_nonblocking(true).expect("nonblocking");
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut conn, _)) => {
                                let _ = conn.write_all(format!("{name}\n").as_bytes());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                }));
            }
        }
    }

    /// Extra flags for every speaker started from now on.
    pub fn speaker_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Start (or restart) node `i`'s speaker as its own process.
    pub fn start_speaker(&self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(env!("CARGO_BIN_EXE_arp-testbed-speaker"))
            .args(["--node-name", &node.name, "--interface", "eth0"])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--gossip-port", &GOSSIP_PORT.to_string()])
            .args([
                "--http-addr",
                "off",
                "--speaker-namespace",
                SPEAKER_NAMESPACE,
            ])
            .args(&self.extra_args)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("speaker starts");
        let mut speakers = self.speakers.lock().expect("speakers");
        assert!(
            speakers[i].is_none(),
            "{} already runs a speaker",
            node.name
        );
        speakers[i] = Some(child);
    }

    /// SIGKILL node `i`'s speaker (`ip netns exec` execs, so the child is
    /// the speaker itself), and reap it.
    pub fn kill_speaker(&self, i: usize) {
        let mut speakers = self.speakers.lock().expect("speakers");
        let mut child = speakers[i].take().expect("speaker running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    pub fn node_by_mac(&self, mac: MacAddr) -> Option<&TestNode> {
        self.nodes.iter().find(|n| n.mac == mac)
    }

    pub fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The speakers' logs, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            let path = self.dir.path().join(format!("{}.log", node.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            all.push_str(&format!("===== {} =====\n{text}\n", node.name));
        }
        all
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Ok(mut speakers) = self.speakers.lock() {
            for child in speakers.iter_mut().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.proxies_stop.store(true, Ordering::Relaxed);
        for t in self.proxy_threads.drain(..) {
            let _ = t.join();
        }
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.api_thread.take() {
            let _ = t.join();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The node name a TCP request to `vip` gets back, from inside the client
/// namespace (the caller's thread must be in it), or `None` on failure.
pub fn ask(vip: IpAddr, timeout: Duration) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::new(vip, PORT), timeout).ok()?;
    conn.set_read_timeout(Some(timeout)).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let answer = answer.trim().to_string();
    (!answer.is_empty()).then_some(answer)
}

/// The MAC the client's kernel holds for `vip` (`ip neigh`), if any.
pub fn kernel_neighbour(client_ns: &str, vip: IpAddr) -> Option<MacAddr> {
    let out = Command::new("ip")
        .args([
            "-n",
            client_ns,
            "neigh",
            "show",
            &vip.to_string(),
            "dev",
            "eth0",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next()?.parse().ok()
}

/// Every ARP reply for the VIP the client sees, with when it arrived;
/// and ARP requests sent from the client on demand.
pub struct ArpWatch {
    pub replies: Arc<Mutex<Vec<(Instant, MacAddr)>>>,
    tx: Mutex<Box<dyn pnet_datalink::DataLinkSender>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ArpWatch {
    /// Must be called on a thread inside the client namespace.
    pub fn start() -> ArpWatch {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == "eth0")
            .expect("client eth0");
        let config = pnet_datalink::Config {
            read_timeout: Some(Duration::from_millis(20)),
            promiscuous: false,
            ..Default::default()
        };
        let (tx, mut rx) = match pnet_datalink::channel(&iface, config).expect("capture socket") {
            pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
            _ => panic!("not ethernet"),
        };
        let replies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let replies = replies.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(frame) = rx.next()
                        && let Some((mac, sender)) = arp::parse_reply(frame)
                        && sender == VIP4
                    {
                        replies.lock().expect("replies").push((Instant::now(), mac));
                    }
                }
            })
        };
        ArpWatch {
            replies,
            tx: Mutex::new(tx),
            stop,
            thread: Some(thread),
        }
    }

    /// Ask who has the VIP, wait `window`, and return the distinct MACs
    /// that answered within it.
    pub fn who_has(&self, window: Duration) -> Vec<MacAddr> {
        let sent = Instant::now();
        let request = arp::request(CLIENT_MAC, CLIENT4, VIP4);
        if let Some(Err(e)) = self.tx.lock().expect("tx").send_to(&request, None) {
            panic!("send ARP request: {e}");
        }
        std::thread::sleep(window);
        let mut macs: Vec<MacAddr> = self
            .replies
            .lock()
            .expect("replies")
            .iter()
            .filter(|(at, _)| *at >= sent && *at < sent + window)
            .map(|(_, mac)| *mac)
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `f` every 10 ms until it returns `Some`, or panic after `within`.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `f` on a thread inside `ns` that may borrow from the caller; a
/// panic in `f` is the caller's panic.
pub fn run_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

pub mod cluster;
