//! Data-plane benchmark on loopback: direct client→backend, through the
//! portico data plane, and through HAProxy (if installed), configured the
//! same way (TCP mode, one backend, round robin, no health check).
//!
//! Figures: bulk throughput (parallel streams each sending a block to a
//! sink), small request/response latency on one persistent connection, and
//! on a new connection per request (connect + one exchange).
//!
//! `cargo bench -p portico-slb --bench dataplane`; knobs in the environment:
//! `BENCH_STREAMS` (8), `BENCH_MB` per stream (64), `BENCH_RTT` round trips
//! (5000), `BENCH_CONNS` new connections (1000), `BENCH_REPEAT` (3, the
//! median is reported). Prints a table, then a Markdown table after the line
//! `=== markdown ===` (used by `scripts/bench-dataplane.sh`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_slb::dataplane::{CopyMode, DataPlane, DataPlaneConfig};
use portico_slb::forwarding::{
    AccessControl, BackendConfig, BalancerForwarding, ForwardingSink, HealthCheckConfig,
    ListenerConfig, ProbeKind, Scheduler, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MSG: usize = 64;
const BLOCK: usize = 256 * 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    streams: usize,
    mb: usize,
    rtt: usize,
    conns: usize,
    repeat: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    mbps: f64,
    persistent_p50: f64,
    persistent_p99: f64,
    new_p50: f64,
    new_p99: f64,
}

/// The backend: first byte `S` = sink (read to EOF, answer the byte count
/// as u64), `E` = echo until EOF. A connection that sends nothing is a
/// health probe and is just closed.
async fn backend(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut kind = [0u8; 1];
            if s.read_exact(&mut kind).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; BLOCK];
            match kind[0] {
                b'S' => {
                    let mut total = 0u64;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => total += n as u64,
                            Err(_) => return,
                        }
                    }
                    let _ = s.write_all(&total.to_be_bytes()).await;
                }
                _ => loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                },
            }
        });
    }
}

async fn bulk_stream(addr: SocketAddr, bytes: usize) -> io::Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"S").await?;
    let block = vec![0x5au8; BLOCK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK);
        s.write_all(&block[..n]).await?;
        left -= n;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    Ok(u64::from_be_bytes(count))
}

async fn bulk(addr: SocketAddr, k: Knobs) -> io::Result<f64> {
    let bytes = k.mb * 1024 * 1024;
    let start = Instant::now();
    let tasks: Vec<_> = (0..k.streams)
        .map(|_| tokio::spawn(bulk_stream(addr, bytes)))
        .collect();
    let mut total = 0u64;
    for t in tasks {
        total += t.await.map_err(io::Error::other)??;
    }
    let secs = start.elapsed().as_secs_f64();
    if total != (bytes * k.streams) as u64 {
        return Err(io::Error::other(format!("sink counted {total} bytes")));
    }
    Ok(total as f64 / (1024.0 * 1024.0) / secs)
}

async fn round_trip(s: &mut TcpStream, msg: &[u8; MSG], back: &mut [u8; MSG]) -> io::Result<()> {
    s.write_all(msg).await?;
    s.read_exact(back).await?;
    Ok(())
}

async fn persistent(addr: SocketAddr, n: usize) -> io::Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"E").await?;
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    for _ in 0..50 {
        round_trip(&mut s, &msg, &mut back).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        round_trip(&mut s, &msg, &mut back).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

async fn new_connections(addr: SocketAddr, n: usize) -> io::Result<Vec<Duration>> {
    // The mode byte and the request in one segment.
    let mut first = [7u8; MSG + 1];
    first[0] = b'E';
    let mut back = [0u8; MSG];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(&first).await?;
        s.read_exact(&mut back).await?;
        lat.push(t.elapsed());
        drop(s);
    }
    Ok(lat)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn measure(addr: SocketAddr, k: Knobs) -> io::Result<Figures> {
    let mut mbps = Vec::new();
    let mut pers = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..k.repeat {
        mbps.push(bulk(addr, k).await?);
        pers.extend(persistent(addr, k.rtt).await?);
        fresh.extend(new_connections(addr, k.conns).await?);
    }
    pers.sort();
    fresh.sort();
    Ok(Figures {
        mbps: median(mbps),
        persistent_p50: percentile(&pers, 0.5),
        persistent_p99: percentile(&pers, 0.99),
        new_p50: percentile(&fresh, 0.5),
        new_p99: percentile(&fresh, 0.99),
    })
}

fn haproxy_binary() -> Option<String> {
    let candidates = ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"];
    candidates.iter().find_map(|c| {
        Command::new(c)
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| (*c).to_owned())
    })
}

struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    version: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_haproxy(bin: &str, listen: SocketAddr, backend: SocketAddr) -> io::Result<Haproxy> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\n  nbthread 2\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind {listen}\n  default_backend be\n\
             backend be\n  balance roundrobin\n  server s1 {backend}\n"
        ),
    )?;
    let version = Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    let log = dir.path().join("haproxy.log");
    let mut child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    // Wait for it to listen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(io::Error::other(format!(
                "haproxy did not start listening: {said}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Haproxy {
        child,
        _dir: dir,
        version,
    })
}

fn forwarding(vip: IpAddr, port: u16, backend: SocketAddr) -> BalancerForwarding {
    BalancerForwarding {
        balancer_id: format!("bench-{vip}"),
        vip,
        listeners: vec![ListenerConfig {
            port,
            transport: Transport::Tcp,
            backends: vec![BackendConfig {
                addr: backend,
                weight: 1,
            }],
            health_check: HealthCheckConfig {
                probe: ProbeKind::Disabled,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                healthy_threshold: 2,
                unhealthy_threshold: 2,
            },
            access: AccessControl::AllowAll,
            scheduler: Scheduler::Wrr,
            drain_timeout: Duration::from_secs(1),
            sticky_timeout: None,
        }],
    }
}

fn main() -> io::Result<()> {
    let k = Knobs {
        streams: env("BENCH_STREAMS", 8),
        mb: env("BENCH_MB", 64),
        rtt: env("BENCH_RTT", 5000),
        conns: env("BENCH_CONNS", 1000),
        repeat: env("BENCH_REPEAT", 3).max(1),
    };
    // Clients and the backend on one runtime, the data plane on its own, so
    // that each side has its threads like HAProxy has its process.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let backend_addr = clients.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        tokio::spawn(backend(l));
        io::Result::Ok(addr)
    })?;

    // The default data plane (splice on Linux) and the buffered copy, each
    // on its own VIP.
    let defaults = DataPlaneConfig::default();
    let buffer_size = env("BENCH_BUF", defaults.buffer_size);
    let portico_port = 18080;
    let mut planes = Vec::new();
    for (last, copy) in [(1u8, defaults.copy), (3, CopyMode::Buffered)] {
        let vip = IpAddr::V4(Ipv4Addr::new(127, 242, 0, last));
        let dp = DataPlane::new(DataPlaneConfig {
            buffer_size,
            copy,
            ..defaults.clone()
        });
        proxy_rt
            .block_on(dp.apply(forwarding(vip, portico_port, backend_addr)))
            .map_err(io::Error::other)?;
        planes.push((SocketAddr::new(vip, portico_port), dp));
    }

    println!(
        "data-plane benchmark: {} streams x {} MiB bulk, {} round trips of {MSG} B, {} new connections, median/pooled of {} runs",
        k.streams, k.mb, k.rtt, k.conns, k.repeat
    );
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    println!("load average (1 min) at start: {load}");
    let started = Instant::now();
    let mut rows: Vec<(String, Figures)> = Vec::new();

    let direct = clients.block_on(measure(backend_addr, k))?;
    rows.push(("direct".into(), direct));
    let portico = clients.block_on(measure(planes[0].0, k))?;
    rows.push(("portico".into(), portico));
    let buffered = clients.block_on(measure(planes[1].0, k))?;
    rows.push(("portico-buffered".into(), buffered));

    let mut haproxy_version = None;
    match haproxy_binary() {
        None => println!("haproxy not found, skipped"),
        Some(bin) => {
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 242, 0, 2)), 18080);
            let hp = start_haproxy(&bin, listen, backend_addr)?;
            let figures = clients.block_on(measure(listen, k))?;
            haproxy_version = Some(hp.version.clone());
            drop(hp);
            rows.push(("haproxy".into(), figures));
        }
    }
    drop(planes);
    drop(proxy_rt);

    println!();
    println!(
        "{:<16} {:>12} {:>14} {:>14} {:>14} {:>14}",
        "path", "bulk MiB/s", "persist p50us", "persist p99us", "newconn p50us", "newconn p99us"
    );
    for (name, f) in &rows {
        println!(
            "{:<16} {:>12.0} {:>14.1} {:>14.1} {:>14.1} {:>14.1}",
            name, f.mbps, f.persistent_p50, f.persistent_p99, f.new_p50, f.new_p99
        );
    }
    let hp = rows.iter().find(|(n, _)| n == "haproxy").map(|(_, f)| *f);
    println!();
    println!(
        "portico / direct: throughput {:.2}x, persistent p50 {:.2}x, new-conn p50 {:.2}x",
        portico.mbps / direct.mbps,
        portico.persistent_p50 / direct.persistent_p50,
        portico.new_p50 / direct.new_p50
    );
    if let Some(h) = hp {
        println!(
            "portico / haproxy: throughput {:.2}x, persistent p50 {:.2}x, new-conn p50 {:.2}x",
            portico.mbps / h.mbps,
            portico.persistent_p50 / h.persistent_p50,
            portico.new_p50 / h.new_p50
        );
    }
    println!("elapsed {:.1}s", started.elapsed().as_secs_f64());

    println!();
    println!("=== markdown ===");
    println!(
        "Workload: {} parallel streams x {} MiB to a sink; {} round trips of {MSG} B on one connection; {} new connections with one {MSG} B exchange each; median throughput / pooled latencies of {} runs; 1-min load average at start {load}.{}",
        k.streams,
        k.mb,
        k.rtt,
        k.conns,
        k.repeat,
        haproxy_version
            .map(|v| format!(" HAProxy: {v} (nbthread 2, mode tcp, roundrobin, no check)."))
            .unwrap_or_else(|| " HAProxy: not found, skipped.".into())
    );
    println!();
    println!(
        "| path | bulk MiB/s | persistent p50 µs | persistent p99 µs | new conn p50 µs | new conn p99 µs |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            f.mbps, f.persistent_p50, f.persistent_p99, f.new_p50, f.new_p99
        );
    }
    println!();
    println!(
        "portico vs direct: throughput **{:.2}x**, persistent p50 {:.2}x, new-connection p50 {:.2}x.",
        portico.mbps / direct.mbps,
        portico.persistent_p50 / direct.persistent_p50,
        portico.new_p50 / direct.new_p50
    );
    if let Some(h) = hp {
        println!(
            "portico vs HAProxy: throughput **{:.2}x**, persistent p50 {:.2}x, new-connection p50 {:.2}x.",
            portico.mbps / h.mbps,
            portico.persistent_p50 / h.persistent_p50,
            portico.new_p50 / h.new_p50
        );
    }
    Ok(())
}
