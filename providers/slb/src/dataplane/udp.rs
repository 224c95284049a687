//! UDP listener: one session per client address, each with its own
//! connected socket to the chosen backend; replies go back to the client
//! from the VIP socket. Sessions end after `udp_idle_timeout` without
//! traffic either way, when their backend is removed from the configuration
//! (at once, as kube-proxy flushes conntrack for a removed endpoint: the
//! client's next datagram opens a session to a configured backend), when a
//! draining (weight 0) backend's drain ends, or when the backend refuses
//! (ICMP port unreachable). A listener keeps at most
//! [`DataPlaneConfig::max_udp_sessions`](super::DataPlaneConfig) sessions;
//! sessions hold no buffer of their own.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, trace};

use super::backend::{ActiveGuard, Backend};
use super::listener::ListenerShared;

/// Largest UDP payload.
const DATAGRAM: usize = 65_536;

thread_local! {
    /// One receive buffer per worker thread, shared by every session's
    /// reply path (used only between awaits).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; DATAGRAM]);
}

#[derive(Debug)]
struct Session {
    id: u64,
    upstream: Arc<UdpSocket>,
    backend: Arc<Backend>,
    /// Milliseconds since the listener's epoch of the last datagram.
    last: Arc<AtomicU64>,
    stop: CancellationToken,
    /// Cancelled when the backend's drain runs out.
    ends: CancellationToken,
}

impl Session {
    /// Whether the session may carry no more datagrams: its backend left
    /// the configuration, or drained (weight 0) until the timeout.
    fn is_over(&self) -> bool {
        self.backend.is_removed() || self.ends.is_cancelled()
    }
}

/// Milliseconds since the listener started, shared by the listener loop
/// (client→backend traffic) and the reply tasks (backend→client).
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(self) -> u64 {
        millis(self.0.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) async fn serve(shared: Arc<ListenerShared>, socket: Arc<UdpSocket>) {
    let idle = shared.settings.udp_idle_timeout;
    let idle_ms = millis(idle);
    let clock = Clock(Instant::now());
    let now_ms = move || clock.now_ms();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut next_id = 0u64;
    let sweep_every = (idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(sweep_every);
    let mut buf = vec![0u8; DATAGRAM];

    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = sweep.tick() => {
                let now = now_ms();
                sessions.retain(|client, s| {
                    let alive = now.saturating_sub(s.last.load(Ordering::Relaxed)) < idle_ms;
                    if !alive {
                        trace!(%client, backend = %s.backend.addr, "udp session idle, closed");
                        s.stop.cancel();
                    }
                    alive
                });
            }
            Some((client, id)) = ended_rx.recv() => {
                if sessions.get(&client).is_some_and(|s| s.id == id) {
                    sessions.remove(&client);
                }
            }
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "udp receive failed");
                        continue;
                    }
                };
                if !shared.permits(client.ip()) {
                    shared.metrics.rejected.inc();
                    trace!(%client, "datagram refused by access control");
                    continue;
                }
                let at_cap = sessions.len() >= shared.settings.max_udp_sessions;
                let session = match sessions.entry(client) {
                    // A session to a removed (or drained) backend ends
                    // here, before its next datagram could reach it; the
                    // client moves to a configured backend.
                    Entry::Occupied(mut e) if e.get().is_over() => {
                        trace!(%client, backend = %e.get().backend.addr, "udp session to a removed or drained backend ended");
                        e.get().stop.cancel();
                        next_id += 1;
                        match open(&shared, &socket, client, next_id, &ended_tx, clock) {
                            Some(s) => {
                                e.insert(s);
                                e.into_mut()
                            }
                            None => {
                                e.remove();
                                continue;
                            }
                        }
                    }
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(_) if at_cap => {
                        shared.metrics.udp_session_limit.inc();
                        trace!(%client, "udp session cap reached; datagram dropped");
                        continue;
                    }
                    Entry::Vacant(v) => {
                        next_id += 1;
                        match open(&shared, &socket, client, next_id, &ended_tx, clock) {
                            Some(s) => v.insert(s),
                            None => continue,
                        }
                    }
                };
                // Counted in flight, then checked again: a change that takes
                // the backend out either shows here, or waits until this
                // datagram has left (so none leaves once `apply` returned).
                let flight = session.backend.enter_flight();
                if session.is_over() {
                    trace!(%client, backend = %session.backend.addr, "backend taken out just now; datagram dropped, the next opens a new session");
                    session.stop.cancel();
                    sessions.remove(&client);
                    continue;
                }
                session.last.store(now_ms(), Ordering::Relaxed);
                let sent = session.upstream.send(&buf[..n]).await;
                drop(flight);
                match sent {
                    Ok(sent) => {
                        session.backend.metrics.bytes_in.inc_by(sent as u64);
                    }
                    Err(e) => {
                        debug!(%client, backend = %session.backend.addr, error = %e, "udp send to backend failed");
                        session.backend.metrics.connect_failures.inc();
                        if session.backend.record_failure(shared.settings.outlier) {
                            info!(backend = %session.backend.addr, "udp sessions keep failing: backend ejected (passive health check)");
                        }
                        session.stop.cancel();
                        sessions.remove(&client);
                    }
                }
            }
        }
        shared.udp_sessions.store(sessions.len(), Ordering::Relaxed);
    }
    for s in sessions.values() {
        s.stop.cancel();
    }
    shared.udp_sessions.store(0, Ordering::Relaxed);
    debug!("udp listener closed");
}

/// Pick a backend for a new client and start its session.
fn open(
    shared: &Arc<ListenerShared>,
    vip: &Arc<UdpSocket>,
    client: SocketAddr,
    id: u64,
    ended: &mpsc::UnboundedSender<(SocketAddr, u64)>,
    clock: Clock,
) -> Option<Session> {
    // The pick's in-flight count ends here: the datagram is counted again
    // (and the session checked) just before it is sent.
    let Some((backend, _flight)) = shared.pick(client.ip(), &[]) else {
        shared.metrics.no_backend.inc();
        debug!(%client, "no backend for a new udp session");
        return None;
    };
    let upstream = match connect(backend.addr) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            debug!(%client, backend = %backend.addr, error = %e, "cannot open a udp socket to the backend");
            backend.metrics.connect_failures.inc();
            if backend.record_failure(shared.settings.outlier) {
                info!(backend = %backend.addr, "udp sessions keep failing: backend ejected (passive health check)");
            }
            return None;
        }
    };
    let session = Session {
        id,
        upstream: Arc::clone(&upstream),
        backend: Arc::clone(&backend),
        last: Arc::new(AtomicU64::new(clock.now_ms())),
        stop: shared.hard_stop.child_token(),
        ends: backend.connections_end(),
    };
    backend.metrics.connections.inc();
    let active = ActiveGuard::udp(backend);
    let task = Replies {
        active,
        upstream,
        vip: Arc::clone(vip),
        client,
        last: Arc::clone(&session.last),
        stop: session.stop.clone(),
        ends: session.ends.clone(),
        ended: ended.clone(),
        id,
        clock,
        outlier: shared.settings.outlier,
    }
    .run();
    let span = tracing::debug_span!("udp_session", %client);
    tokio::spawn(task.instrument(span));
    trace!(%client, backend = %session.backend.addr, "udp session opened");
    Some(session)
}

fn connect(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match backend {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(backend)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// The reply half of a session: carries the backend's datagrams back to the
/// client from the VIP socket.
#[derive(Debug)]
struct Replies {
    active: ActiveGuard,
    upstream: Arc<UdpSocket>,
    vip: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
    ends: CancellationToken,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    id: u64,
    clock: Clock,
    outlier: super::OutlierDetection,
}

impl Replies {
    async fn run(self) {
        let Replies {
            active,
            upstream,
            vip,
            client,
            last,
            stop,
            ends,
            ended,
            id,
            clock,
            outlier,
        } = self;
        let backend = Arc::clone(active.backend());
        'session: loop {
            let ready = tokio::select! {
                _ = stop.cancelled() => break,
                _ = ends.cancelled() => {
                    debug!(backend = %backend.addr, "udp session closed at the end of the drain");
                    break;
                }
                _ = backend.removal.notified() => {
                    if backend.is_removed() {
                        debug!(backend = %backend.addr, "udp session closed: backend removed");
                        break;
                    }
                    continue;
                }
                // ICMP port unreachable shows up as a socket error alone
                // (EPOLLERR without EPOLLIN), so wait for errors too.
                r = upstream.ready(Interest::READABLE | Interest::ERROR) => r,
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    debug!(backend = %backend.addr, error = %e, "udp backend socket failed");
                    break;
                }
            };
            if ready.is_error() {
                match upstream.take_error() {
                    Ok(Some(e)) => {
                        debug!(backend = %backend.addr, error = %e, "udp backend unreachable");
                        backend.metrics.connect_failures.inc();
                        if backend.record_failure(outlier) {
                            info!(backend = %backend.addr, "udp sessions keep failing: backend ejected (passive health check)");
                        }
                        break;
                    }
                    // Already taken by a send: forget the readiness, or the
                    // wait above would return at once forever.
                    Ok(None) => {
                        let _ = upstream.try_io(Interest::ERROR, || {
                            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                        });
                    }
                    Err(e) => {
                        debug!(backend = %backend.addr, error = %e, "udp backend socket failed");
                        break;
                    }
                }
            }
            // Move every datagram waiting, without an await in between, so
            // the sessions share one buffer per thread instead of holding
            // 64 KiB each. A reply the VIP socket cannot take at once is
            // dropped, as a congested UDP path would.
            loop {
                let moved = SCRATCH.with_borrow_mut(|buf| {
                    let n = upstream.try_recv(buf)?;
                    Ok::<_, io::Error>(vip.try_send_to(&buf[..n], client))
                });
                match moved {
                    Ok(Ok(sent)) => {
                        last.store(clock.now_ms(), Ordering::Relaxed);
                        backend.metrics.bytes_out.inc_by(sent as u64);
                        // The backend answered: for passive health checking
                        // that is a success, so only failures in a row count.
                        backend.record_success();
                    }
                    Ok(Err(e)) => {
                        last.store(clock.now_ms(), Ordering::Relaxed);
                        backend.record_success();
                        debug!(error = %e, "udp reply to client dropped");
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ICMP port unreachable shows up here as ConnectionRefused.
                        debug!(backend = %backend.addr, error = %e, "udp backend unreachable");
                        backend.metrics.connect_failures.inc();
                        if backend.record_failure(outlier) {
                            info!(backend = %backend.addr, "udp sessions keep failing: backend ejected (passive health check)");
                        }
                        break 'session;
                    }
                }
            }
        }
        drop(active);
        // The listener may be gone already; then there is nobody to tell.
        let _ = ended.send((client, id));
    }
}
