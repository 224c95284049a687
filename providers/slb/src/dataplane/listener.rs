//! State shared by one listener's socket task, its connections and its
//! health checks: the backend set (swapped in place on reconfiguration),
//! the scheduler's memory, sticky sessions and draining backends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info};

use super::backend::{Backend, HealthState, InFlight};
use super::metrics::{BackendLabels, ListenerMetrics, Metrics};
use super::scheduler::{self, Candidate};
use super::{BackendSnapshot, DataPlaneConfig, ListenerSnapshot, acl, health};
use crate::forwarding::{ListenerConfig, Scheduler, Transport};

/// Identity of a listener within a balancer; a change of either means a
/// different socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListenerKey {
    pub port: u16,
    pub transport: Transport,
}

impl ListenerKey {
    pub(crate) fn of(config: &ListenerConfig) -> Self {
        ListenerKey {
            port: config.port,
            transport: config.transport,
        }
    }

    /// `port/proto`, the `listener` metric label.
    pub(crate) fn label(&self) -> String {
        let proto = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        format!("{}/{}", self.port, proto)
    }
}

#[derive(Debug)]
pub(crate) struct ListenerShared {
    pub balancer_id: String,
    pub key: ListenerKey,
    pub local_addr: SocketAddr,
    pub settings: Arc<DataPlaneConfig>,
    pub metrics: ListenerMetrics,
    all_metrics: Metrics,
    /// Cancelled when the listener is removed: stop accepting.
    pub stop: CancellationToken,
    /// Cancelled when the whole data plane goes away: end everything now.
    pub hard_stop: CancellationToken,
    /// UDP sessions currently open (0 for TCP).
    pub udp_sessions: AtomicUsize,
    pub span: Span,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: ListenerConfig,
    /// Backends that may take new connections, in config order.
    backends: Vec<Arc<Backend>>,
    /// Smooth-WRR running weights, parallel to `backends`.
    wrr: Vec<i64>,
    /// Tie-break rotation for least connections.
    cursor: usize,
    /// Removed backends whose connections may still finish.
    draining: Vec<Draining>,
    sticky: HashMap<IpAddr, Sticky>,
    picks: u64,
}

#[derive(Debug)]
struct Draining {
    backend: Arc<Backend>,
    /// Cancelled when the backend comes back before its drain ends.
    revived: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    backend: SocketAddr,
    last: Instant,
}

impl ListenerShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        balancer_id: &str,
        config: ListenerConfig,
        local_addr: SocketAddr,
        settings: Arc<DataPlaneConfig>,
        metrics: Metrics,
        hard_stop: CancellationToken,
        span: Span,
    ) -> Arc<Self> {
        let key = ListenerKey::of(&config);
        let listener_metrics = metrics.listener(super::metrics::ListenerLabels {
            balancer: balancer_id.to_owned(),
            listener: key.label(),
        });
        let empty = ListenerConfig {
            backends: Vec::new(),
            ..config.clone()
        };
        let shared = Arc::new(ListenerShared {
            balancer_id: balancer_id.to_owned(),
            key,
            local_addr,
            settings,
            metrics: listener_metrics,
            all_metrics: metrics,
            stop: hard_stop.child_token(),
            hard_stop,
            udp_sessions: AtomicUsize::new(0),
            span,
            state: Mutex::new(State {
                config: empty,
                backends: Vec::new(),
                wrr: Vec::new(),
                cursor: 0,
                draining: Vec::new(),
                sticky: HashMap::new(),
                picks: 0,
            }),
        });
        shared.reconfigure(config);
        shared
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> ListenerConfig {
        self.state().config.clone()
    }

    pub(crate) fn permits(&self, source: IpAddr) -> bool {
        acl::permits(&self.state().config.access, source)
    }

    /// Choose the backend for a new connection from `client`, skipping the
    /// backends in `exclude` (already tried).
    ///
    /// Eligible: weight > 0, healthy, not ejected by passive health
    /// checking. When no such backend is left the
    /// listener fails open and uses every backend with weight > 0 whatever
    /// its health (this is also how a fresh listener serves before its first
    /// probes complete).
    ///
    /// The pick is counted as in flight (under the lock, so a change taking
    /// the backend out waits for it) until the returned guard drops: hold it
    /// until the connect is done.
    pub(crate) fn pick(
        &self,
        client: IpAddr,
        exclude: &[SocketAddr],
    ) -> Option<(Arc<Backend>, InFlight)> {
        let mut st = self.state();
        let st = &mut *st;
        let usable = |b: &Backend| b.weight() > 0 && !exclude.contains(&b.addr);
        // Healthy: the active checks say so and real traffic has not just
        // failed on it too often (passive checks).
        let healthy = |b: &Backend| b.health() == HealthState::Healthy && !b.is_ejected();
        let any_healthy = st.backends.iter().any(|b| usable(b) && healthy(b));
        let candidates: Vec<Candidate> = st
            .backends
            .iter()
            .map(|b| Candidate {
                weight: b.weight(),
                active: b.active(),
                eligible: usable(b) && (!any_healthy || healthy(b)),
            })
            .collect();

        let now = Instant::now();
        let sticky_timeout = st.config.sticky_timeout;
        if let Some(timeout) = sticky_timeout
            && let Some(s) = st.sticky.get_mut(&client)
            && now.duration_since(s.last) < timeout
            && let Some(i) = st
                .backends
                .iter()
                .zip(&candidates)
                .position(|(b, c)| b.addr == s.backend && c.eligible)
        {
            s.last = now;
            let backend = Arc::clone(&st.backends[i]);
            let flight = backend.enter_flight();
            return Some((backend, flight));
        }

        let chosen = match st.config.scheduler {
            Scheduler::Wrr => scheduler::smooth_wrr(&candidates, &mut st.wrr),
            Scheduler::Wlc => {
                st.cursor = st.cursor.wrapping_add(1);
                scheduler::least_connections(&candidates, st.cursor)
            }
        }?;
        let backend = Arc::clone(&st.backends[chosen]);
        let flight = backend.enter_flight();

        if let Some(timeout) = sticky_timeout {
            st.sticky.insert(
                client,
                Sticky {
                    backend: backend.addr,
                    last: now,
                },
            );
            st.picks += 1;
            if st.picks.is_multiple_of(1024) {
                st.sticky
                    .retain(|_, s| now.duration_since(s.last) < timeout);
            }
        }
        Some((backend, flight))
    }

    /// Converge this listener to `config` (same port and transport) without
    /// touching its socket or the connections to backends that stay.
    /// Returns the backends taken out of new traffic (removed, or weighted
    /// down to 0), whose forwarding decisions under way the caller may wait
    /// for ([`Backend::settle`]).
    pub(crate) fn reconfigure(self: &Arc<Self>, config: ListenerConfig) -> Vec<Arc<Backend>> {
        let mut taken_out = Vec::new();
        let mut st = self.state();
        let probe_changed = st.config.health_check != config.health_check;
        let old: Vec<Arc<Backend>> = std::mem::take(&mut st.backends);
        let old_wrr: Vec<i64> = std::mem::take(&mut st.wrr);

        let mut next = Vec::with_capacity(config.backends.len());
        let mut next_wrr = Vec::with_capacity(config.backends.len());
        for want in &config.backends {
            if next.iter().any(|b: &Arc<Backend>| b.addr == want.addr) {
                debug!(backend = %want.addr, "duplicate backend ignored");
                continue;
            }
            if let Some(i) = old.iter().position(|b| b.addr == want.addr) {
                // Staying: same object, so its connections and health carry on.
                let b = Arc::clone(&old[i]);
                if b.weight() > 0 && want.weight == 0 {
                    taken_out.push(Arc::clone(&b));
                }
                b.set_weight(want.weight);
                if probe_changed {
                    self.start_health(&b, &config);
                }
                next.push(b);
                next_wrr.push(old_wrr.get(i).copied().unwrap_or(0));
            } else if let Some(i) = st.draining.iter().position(|d| d.backend.addr == want.addr) {
                // Removed recently and back before its drain ended.
                let d = st.draining.swap_remove(i);
                d.revived.cancel();
                d.backend.mark_restored();
                d.backend.set_weight(want.weight);
                self.start_health(&d.backend, &config);
                info!(backend = %want.addr, "backend back before its drain ended");
                next.push(d.backend);
                next_wrr.push(0);
            } else {
                let has_probe =
                    health::effective_probe(config.transport, &config.health_check.probe).is_some();
                let initial = if has_probe {
                    HealthState::Unknown
                } else {
                    HealthState::Healthy
                };
                let metrics = self.all_metrics.backend(BackendLabels {
                    balancer: self.balancer_id.clone(),
                    listener: self.key.label(),
                    backend: want.addr.to_string(),
                });
                let b = Arc::new(Backend::new(want.addr, want.weight, initial, metrics));
                self.start_health(&b, &config);
                info!(backend = %want.addr, weight = want.weight, "backend added");
                next.push(b);
                next_wrr.push(0);
            }
        }
        let drain_timeout = config.drain_timeout;
        for b in &next {
            self.follow_weight(b, drain_timeout);
        }
        for b in old {
            if !next.iter().any(|n| n.addr == b.addr) {
                info!(backend = %b.addr, ?drain_timeout, "backend removed: its UDP sessions end, its TCP connections drain");
                b.mark_removed();
                taken_out.push(Arc::clone(&b));
                self.drain(&mut st, b, drain_timeout);
            }
        }
        st.backends = next;
        st.wrr = next_wrr;
        if st.config.sticky_timeout != config.sticky_timeout {
            st.sticky.clear();
        }
        st.config = config;
        taken_out
    }

    /// Stop accepting and drain every backend (the listener was removed);
    /// returns them, as [`ListenerShared::reconfigure`] does.
    pub(crate) fn shutdown(self: &Arc<Self>) -> Vec<Arc<Backend>> {
        self.stop.cancel();
        let mut st = self.state();
        let drain_timeout = st.config.drain_timeout;
        st.wrr.clear();
        let backends = std::mem::take(&mut st.backends);
        for b in &backends {
            self.drain(&mut st, Arc::clone(b), drain_timeout);
        }
        self.all_metrics.forget_listener(&self.metrics);
        backends
    }

    fn start_health(self: &Arc<Self>, backend: &Arc<Backend>, config: &ListenerConfig) {
        match health::effective_probe(config.transport, &config.health_check.probe) {
            None => {
                backend.replace_health_task(None);
                backend.set_health(HealthState::Healthy);
            }
            Some(kind) => {
                let token = self.hard_stop.child_token();
                backend.replace_health_task(Some(token.clone()));
                health::spawn(
                    Arc::clone(backend),
                    kind.clone(),
                    config.health_check.clone(),
                    token,
                    self.span.clone(),
                );
            }
        }
    }

    /// A configured backend weighted to 0 drains: it takes no new
    /// connection (the scheduler skips it), its open connections and UDP
    /// sessions carry on until `timeout`, then they end. A weight above 0
    /// stops the drain; a drain that ran out leaves the backend configured,
    /// so it serves again once weighted up.
    fn follow_weight(self: &Arc<Self>, backend: &Arc<Backend>, timeout: Duration) {
        if backend.weight() > 0 {
            if backend.stop_weight_drain() {
                info!(backend = %backend.addr, "weighted up again: drain stopped, connections kept");
            }
            return;
        }
        let drain = CancellationToken::new();
        if !backend.start_weight_drain(&drain) {
            return;
        }
        info!(backend = %backend.addr, ?timeout, "weighted to 0: no new connections, open ones drain");
        let hard_stop = self.hard_stop.clone();
        let backend = Arc::clone(backend);
        let task = async move {
            tokio::select! {
                _ = drain.cancelled() => return,
                _ = hard_stop.cancelled() => return,
                _ = tokio::time::sleep(timeout) => {}
            }
            if backend.finish_weight_drain(&drain) {
                if backend.active() > 0 {
                    info!(backend = %backend.addr, open = backend.active(), "drain timeout at weight 0, closing connections");
                }
                backend.end_connections();
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, self.span.clone()));
    }

    /// No new connections for `backend`; its open ones may finish within
    /// `timeout`, then they are closed.
    fn drain(self: &Arc<Self>, st: &mut State, backend: Arc<Backend>, timeout: Duration) {
        backend.replace_health_task(None);
        // The removal's drain takes over from one at weight 0.
        backend.stop_weight_drain();
        let revived = CancellationToken::new();
        st.draining.push(Draining {
            backend: Arc::clone(&backend),
            revived: revived.clone(),
        });
        let shared = Arc::clone(self);
        let task = async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut poll = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = revived.cancelled() => return,
                    _ = shared.hard_stop.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = poll.tick() => {
                        if backend.active() == 0 {
                            break;
                        }
                    }
                }
            }
            let mut st = shared.state();
            if revived.is_cancelled() {
                return;
            }
            st.draining.retain(|d| !Arc::ptr_eq(&d.backend, &backend));
            drop(st);
            if backend.active() > 0 {
                info!(backend = %backend.addr, open = backend.active(), "drain timeout, closing connections");
            } else {
                debug!(backend = %backend.addr, "drained");
            }
            backend.end_connections();
            shared.all_metrics.forget_backend(&backend.metrics);
        };
        tokio::spawn(tracing::Instrument::instrument(task, self.span.clone()));
    }

    pub(crate) fn snapshot(&self) -> ListenerSnapshot {
        let st = self.state();
        let row = |b: &Backend, draining: bool| BackendSnapshot {
            addr: b.addr,
            weight: b.weight(),
            health: b.health(),
            draining,
            active_connections: b.active(),
            ejected: b.is_ejected(),
        };
        let mut backends: Vec<BackendSnapshot> =
            st.backends.iter().map(|b| row(b, false)).collect();
        backends.extend(st.draining.iter().map(|d| row(&d.backend, true)));
        ListenerSnapshot {
            port: self.key.port,
            transport: self.key.transport,
            local_addr: self.local_addr,
            backends,
            udp_sessions: self.udp_sessions.load(Ordering::Relaxed),
        }
    }
}
