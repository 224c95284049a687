//! One backend of one listener: its address, weight, health verdict, open
//! connections, metric series, and the token that ends its connections when
//! a drain runs out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::OutlierDetection;
use super::metrics::BackendMetrics;

/// Health-check verdict of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not probed yet. Takes traffic only while no backend of the listener
    /// is [`Healthy`](HealthState::Healthy) (see the module docs).
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => HealthState::Healthy,
            2 => HealthState::Unhealthy,
            _ => HealthState::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            HealthState::Unknown => 0,
            HealthState::Healthy => 1,
            HealthState::Unhealthy => 2,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Backend {
    pub addr: SocketAddr,
    weight: AtomicU32,
    health: AtomicU8,
    active: AtomicU64,
    pub metrics: BackendMetrics,
    /// The token the connections opened now watch; cancelled (and replaced
    /// by a fresh one) when a drain runs out, so every connection open then
    /// closes while later ones (after the weight comes back) are unaffected.
    ends: Mutex<CancellationToken>,
    /// The running drain of a configured backend weighted to 0, if any.
    weight_drain: Mutex<Option<CancellationToken>>,
    /// The running health-check task, if any.
    pub health_task: Mutex<Option<CancellationToken>>,
    /// Out of the listener's configuration (not merely weighted to zero).
    /// Its UDP sessions end at once, as kube-proxy flushes the conntrack
    /// entries of a removed endpoint; TCP connections drain.
    removed: AtomicBool,
    /// Woken when `removed` is set.
    pub removal: Notify,
    /// Forwarding decisions for this backend not on the wire yet: a TCP
    /// connect under way, a datagram being sent. A change that takes the
    /// backend out waits for them ([`Backend::settle`]).
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to 0.
    settled: Notify,
    /// Real connections that failed in a row (passive health checking).
    consecutive_failures: AtomicU32,
    /// Out of the pick until this instant (milliseconds on [`EPOCH`]), after
    /// too many failures in a row; 0 when not ejected.
    ejected_until: AtomicU64,
}

/// The clock of ejections: milliseconds since the first use in the process.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Backend {
    pub(crate) fn new(
        addr: SocketAddr,
        weight: u32,
        health: HealthState,
        metrics: BackendMetrics,
    ) -> Self {
        let b = Backend {
            addr,
            weight: AtomicU32::new(weight),
            health: AtomicU8::new(HealthState::Unknown.as_u8()),
            active: AtomicU64::new(0),
            metrics,
            ends: Mutex::new(CancellationToken::new()),
            weight_drain: Mutex::new(None),
            health_task: Mutex::new(None),
            removed: AtomicBool::new(false),
            removal: Notify::new(),
            in_flight: AtomicU64::new(0),
            settled: Notify::new(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        };
        b.set_health(health);
        b
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub(crate) fn health(&self) -> HealthState {
        HealthState::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub(crate) fn set_health(&self, state: HealthState) {
        let before = HealthState::from_u8(self.health.swap(state.as_u8(), Ordering::Relaxed));
        // As Envoy: a backend the active checks bring back from unhealthy is
        // trusted again at once, ejected or not.
        if before == HealthState::Unhealthy && state == HealthState::Healthy {
            self.ejected_until.store(0, Ordering::SeqCst);
            self.consecutive_failures.store(0, Ordering::SeqCst);
            self.metrics.ejected.set(0);
        }
        self.metrics
            .healthy
            .set(i64::from(state == HealthState::Healthy));
    }

    /// The backend left the configuration: no datagram goes to it any more.
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.removal.notify_waiters();
    }

    /// The backend is configured again (back before its drain ended).
    pub(crate) fn mark_restored(&self) {
        self.removed.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// A real connection (or UDP session) to the backend failed; after
    /// `outlier.consecutive_failures` in a row (no success between) it is
    /// ejected for `outlier.ejection`. Returns whether this failure ejected
    /// it.
    pub(crate) fn record_failure(self: &Arc<Self>, outlier: OutlierDetection) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1;
        if outlier.consecutive_failures == 0 || failures < outlier.consecutive_failures {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::SeqCst);
        let until = now_ms()
            .saturating_add(u64::try_from(outlier.ejection.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        self.ejected_until.store(until, Ordering::SeqCst);
        self.metrics.ejections.inc();
        self.metrics.ejected.set(1);
        // The gauge follows the cool-down's end (a later ejection moves
        // `ejected_until`, and its own timer clears the gauge).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let backend = Arc::clone(self);
            runtime.spawn(async move {
                tokio::time::sleep(outlier.ejection).await;
                if backend.ejected_until.load(Ordering::SeqCst) == until && !backend.is_ejected() {
                    backend.metrics.ejected.set(0);
                }
            });
        }
        true
    }

    /// A real connection succeeded (for UDP: the backend answered): the
    /// failure count starts over, so only failures in a row eject.
    pub(crate) fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Whether passive health checking has taken the backend out for now.
    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        // The cool-down is over: later picks skip the clock (a concurrent
        // new ejection wins over this reset).
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::SeqCst, Ordering::Relaxed);
        false
    }

    /// Count a forwarding decision for this backend until the guard drops.
    /// Taken under the listener's lock when the backend is picked, or before
    /// checking [`Backend::is_removed`] for a datagram, so a change that takes
    /// the backend out sees every decision made before it.
    pub(crate) fn enter_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Wait (at most `limit`) until no forwarding decision made before now
    /// is still on its way to the backend; returns whether none is.
    pub(crate) async fn settle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let woken = self.settled.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Stop the health-check task (if any) and install `next` in its place.
    pub(crate) fn replace_health_task(&self, next: Option<CancellationToken>) {
        let mut slot = lock(&self.health_task);
        if let Some(old) = slot.take() {
            old.cancel();
        }
        *slot = next;
    }

    /// The token a connection (or UDP session) opened now watches: it is
    /// cancelled when the backend's drain runs out.
    pub(crate) fn connections_end(&self) -> CancellationToken {
        lock(&self.ends).clone()
    }

    /// End every connection and session open now; later ones get a fresh
    /// token (a drained backend may be weighted up again).
    pub(crate) fn end_connections(&self) {
        let old = std::mem::replace(&mut *lock(&self.ends), CancellationToken::new());
        old.cancel();
    }

    /// Install `token` as the backend's weight drain unless one runs
    /// already; returns whether it was installed.
    pub(crate) fn start_weight_drain(&self, token: &CancellationToken) -> bool {
        let mut slot = lock(&self.weight_drain);
        if slot.is_some() {
            return false;
        }
        *slot = Some(token.clone());
        true
    }

    /// Stop the weight drain, if one runs (the weight came back, or the
    /// backend was removed and drains as such); returns whether one ran.
    pub(crate) fn stop_weight_drain(&self) -> bool {
        match lock(&self.weight_drain).take() {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The weight drain `token` ran out: true, and the backend drains no
    /// more, unless the drain was stopped meanwhile. (Stopping cancels under
    /// the same lock, and a new drain starts only on an empty slot, so an
    /// uncancelled `token` is the one in the slot.)
    pub(crate) fn finish_weight_drain(&self, token: &CancellationToken) -> bool {
        let mut slot = lock(&self.weight_drain);
        if token.is_cancelled() {
            return false;
        }
        *slot = None;
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One forwarding decision on its way to a backend (see
/// [`Backend::enter_flight`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Counts one open connection (or UDP session) to a backend for as long as
/// it lives, in the scheduler's count and in the metrics. Taken as soon as
/// the backend is picked, so a burst of accepts sees the connections being
/// set up (weighted least connections).
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    backend: Arc<Backend>,
    udp: bool,
}

impl ActiveGuard {
    pub(crate) fn tcp(backend: Arc<Backend>) -> Self {
        Self::new(backend, false)
    }

    pub(crate) fn udp(backend: Arc<Backend>) -> Self {
        Self::new(backend, true)
    }

    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    fn new(backend: Arc<Backend>, udp: bool) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        backend.metrics.active_connections.inc();
        if udp {
            backend.metrics.udp_sessions.inc();
        }
        ActiveGuard { backend, udp }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.metrics.active_connections.dec();
        if self.udp {
            self.backend.metrics.udp_sessions.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::metrics::{BackendLabels, Metrics};

    fn backend() -> Arc<Backend> {
        let metrics = Metrics::default().backend(BackendLabels {
            balancer: "lb".into(),
            listener: "80/tcp".into(),
            backend: "10.0.0.1:80".into(),
        });
        Arc::new(Backend::new(
            "10.0.0.1:80".parse().expect("addr"),
            1,
            HealthState::Healthy,
            metrics,
        ))
    }

    #[test]
    fn only_failures_in_a_row_eject() {
        let outlier = OutlierDetection {
            consecutive_failures: 3,
            ejection: Duration::from_secs(60),
        };
        let b = backend();
        assert!(!b.record_failure(outlier));
        assert!(!b.record_failure(outlier));
        b.record_success();
        assert!(!b.record_failure(outlier));
        assert!(!b.record_failure(outlier));
        assert!(!b.is_ejected(), "a success between starts the count over");
        assert!(b.record_failure(outlier), "the third in a row ejects");
        assert!(b.is_ejected());
        assert_eq!(b.metrics.ejected.get(), 1);
        b.set_health(HealthState::Unhealthy);
        b.set_health(HealthState::Healthy);
        assert!(
            !b.is_ejected(),
            "an active check bringing it back ends the ejection"
        );
        assert_eq!(b.metrics.ejected.get(), 0);
    }
}
