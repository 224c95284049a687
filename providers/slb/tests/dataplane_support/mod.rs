//! Fixtures for the data-plane tests: backends on loopback that answer with
//! their name, echo, or report health over HTTP; a listener-config builder;
//! clients that pick their source address.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use portico_slb::dataplane::{BalancerSnapshot, DataPlane, DataPlaneConfig, HealthState};
use portico_slb::forwarding::{
    AccessControl, BackendConfig, BalancerForwarding, HealthCheckConfig, ListenerConfig, ProbeKind,
    Scheduler, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Every test runs under this.
pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

pub fn vip(file: u8, test: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 241, file, test))
}

pub fn dataplane() -> DataPlane {
    DataPlane::new(DataPlaneConfig {
        connect_timeout: Duration::from_millis(500),
        udp_idle_timeout: Duration::from_secs(2),
        ..DataPlaneConfig::default()
    })
}

/// Builder of a [`ListenerConfig`] with test-friendly defaults: fast TCP
/// health checks (100 ms, rise 2, fall 2), allow all, WRR, 5 s drain.
#[derive(Debug, Clone)]
pub struct Listener(ListenerConfig);

pub fn listener(port: u16, transport: Transport) -> Listener {
    Listener(ListenerConfig {
        port,
        transport,
        backends: Vec::new(),
        health_check: HealthCheckConfig {
            probe: ProbeKind::TcpConnect,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        },
        access: AccessControl::AllowAll,
        scheduler: Scheduler::Wrr,
        drain_timeout: Duration::from_secs(5),
        sticky_timeout: None,
    })
}

impl Listener {
    pub fn backend(mut self, addr: SocketAddr, weight: u32) -> Self {
        self.0.backends.push(BackendConfig { addr, weight });
        self
    }
    pub fn backends(mut self, addrs: &[SocketAddr]) -> Self {
        for a in addrs {
            self = self.backend(*a, 1);
        }
        self
    }
    pub fn probe(mut self, probe: ProbeKind) -> Self {
        self.0.health_check.probe = probe;
        self
    }
    pub fn access(mut self, access: AccessControl) -> Self {
        self.0.access = access;
        self
    }
    pub fn scheduler(mut self, s: Scheduler) -> Self {
        self.0.scheduler = s;
        self
    }
    pub fn drain(mut self, d: Duration) -> Self {
        self.0.drain_timeout = d;
        self
    }
    pub fn sticky(mut self, d: Duration) -> Self {
        self.0.sticky_timeout = Some(d);
        self
    }
    pub fn build(self) -> ListenerConfig {
        self.0
    }
}

pub fn balancer(id: &str, vip: IpAddr, listeners: Vec<ListenerConfig>) -> BalancerForwarding {
    BalancerForwarding {
        balancer_id: id.into(),
        vip,
        listeners,
    }
}

/// A TCP backend on `127.0.0.1:0` that can be stopped and started again on
/// the same port. `handler` serves each connection.
pub struct Backend {
    pub addr: SocketAddr,
    kind: Kind,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
enum Kind {
    /// Reads one line (or to EOF), answers with the name and closes.
    Name(Arc<str>),
    /// Echoes until EOF.
    Echo,
}

impl Backend {
    pub async fn name(name: &str) -> Backend {
        Self::start(
            Kind::Name(name.into()),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
    }

    /// Like [`Backend::name`], listening on `ip` (e.g. 127.0.0.3).
    pub async fn name_on(ip: IpAddr, name: &str) -> Backend {
        Self::start(Kind::Name(name.into()), SocketAddr::new(ip, 0)).await
    }

    pub async fn echo() -> Backend {
        Self::start(Kind::Echo, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn start(kind: Kind, addr: SocketAddr) -> Backend {
        let l = TcpListener::bind(addr).await.expect("bind backend");
        let addr = l.local_addr().expect("backend address");
        let k = kind.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                tokio::spawn(serve(k.clone(), s));
            }
        });
        Backend {
            addr,
            kind,
            task: Some(task),
        }
    }

    /// Close the listening socket (established connections stay).
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let again = Self::start(self.kind.clone(), self.addr).await;
        *self = again;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve(kind: Kind, mut s: TcpStream) {
    match kind {
        Kind::Name(name) => {
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.contains(&b'\n') {
                            break;
                        }
                    }
                }
            }
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Kind::Echo => {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    }
}

/// One short request: connect, send a line, read the answer to EOF.
pub async fn ask(addr: SocketAddr) -> io::Result<String> {
    let s = TcpStream::connect(addr).await?;
    exchange(s).await
}

/// Like [`ask`], with the client socket bound to `source` first.
pub async fn ask_from(source: IpAddr, addr: SocketAddr) -> io::Result<String> {
    let sock = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(source, 0))?;
    let s = sock.connect(addr).await?;
    exchange(s).await
}

async fn exchange(mut s: TcpStream) -> io::Result<String> {
    s.write_all(b"hello\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    if out.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty answer"));
    }
    Ok(out)
}

/// An echo round trip on an open connection.
pub async fn echo_once(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
    if back != msg {
        return Err(io::Error::other("echo differs"));
    }
    Ok(())
}

/// An HTTP health endpoint answering 200 or 503 on `GET /healthz`.
pub struct Healthz {
    pub addr: SocketAddr,
    pub ok: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Healthz {
    pub async fn start(ok: bool) -> Healthz {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), ok).await
    }

    pub async fn start_on(addr: SocketAddr, ok: bool) -> Healthz {
        let l = TcpListener::bind(addr).await.expect("bind healthz");
        let addr = l.local_addr().expect("healthz address");
        let flag = Arc::new(AtomicBool::new(ok));
        let f = Arc::clone(&flag);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let f = Arc::clone(&f);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => n += m,
                        }
                    }
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let good = req.starts_with("GET /healthz HTTP/1.1\r\n")
                        && req.to_ascii_lowercase().contains("\r\nhost: ");
                    let resp = if good && f.load(Ordering::SeqCst) {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    } else {
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Healthz {
            addr,
            ok: flag,
            task,
        }
    }
}

impl Drop for Healthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP backend that answers each datagram with `name:payload`, and
/// counts what it received.
pub struct UdpBackend {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl UdpBackend {
    pub async fn start(name: &str) -> UdpBackend {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name)
            .await
            .expect("bind udp backend")
    }

    /// Like [`UdpBackend::start`], on `addr` (e.g. a port another backend
    /// uses on another loopback address).
    pub async fn start_on(addr: SocketAddr, name: &str) -> io::Result<UdpBackend> {
        let s = UdpSocket::bind(addr).await?;
        let addr = s.local_addr().expect("udp backend address");
        let name = name.to_owned();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from).await;
            }
        });
        Ok(UdpBackend {
            addr,
            received,
            task,
        })
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `snapshot` until `cond` holds (or panic after `secs`).
pub async fn wait_for<F>(dp: &DataPlane, id: &str, secs: u64, what: &str, cond: F)
where
    F: Fn(&BalancerSnapshot) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = dp.snapshot(id)
            && cond(&s)
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: {:#?}", dp.snapshot(id));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Health of `backend` in the first listener of the snapshot.
pub fn health_of(s: &BalancerSnapshot, backend: SocketAddr) -> Option<HealthState> {
    s.listeners
        .iter()
        .flat_map(|l| &l.backends)
        .find(|b| b.addr == backend && !b.draining)
        .map(|b| b.health)
}

/// A port not otherwise used by the tests of one file.
pub fn port(base: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Spin `threads` busy threads until the guard drops (bounded: at most 60 s
/// by default), so races between reconfiguration and forwarding have a
/// chance to show. [`CpuLoad::running`] tells a test whether the load
/// lasted as long as it did.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    pub fn start(threads: usize) -> CpuLoad {
        Self::start_for(threads, Duration::from_secs(60))
    }

    /// Like [`CpuLoad::start`], spinning at most `bound`.
    pub fn start_for(threads: usize, bound: Duration) -> CpuLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + bound;
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && std::time::Instant::now() < until
                    {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }

    /// Whether every thread still spins (none reached its bound).
    pub fn running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
