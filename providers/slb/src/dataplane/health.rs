//! Active health checks: the rise/fall state machine (no I/O), the probes,
//! and the per-backend task that runs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info};

use super::backend::{Backend, HealthState};
use crate::forwarding::{HealthCheckConfig, ProbeKind, Transport};

/// Rise/fall bookkeeping of one backend.
///
/// - `Unknown` (never probed) takes the verdict of the first probe, so a new
///   backend serves after one good probe and a dead one is excluded after
///   one failed probe.
/// - Until a backend has been healthy once, one good probe is enough (as
///   Envoy does at startup): a balancer created a moment before kube-proxy
///   opened the NodePort must not wait `healthy_threshold` intervals.
/// - After that, `Healthy` becomes `Unhealthy` after `unhealthy_threshold`
///   consecutive failures; `Unhealthy` becomes `Healthy` after
///   `healthy_threshold` consecutive successes. Thresholds of 0 count as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tracker {
    state: HealthState,
    streak: u32,
    /// Whether the backend has ever been healthy.
    proven: bool,
}

impl Tracker {
    pub(crate) fn new(state: HealthState) -> Self {
        Tracker {
            state,
            streak: 0,
            // A backend handed over already probed (a restarted task) is
            // treated as proven: the conservative choice.
            proven: state != HealthState::Unknown,
        }
    }

    pub(crate) fn state(&self) -> HealthState {
        self.state
    }

    /// Record one probe result and return the (possibly new) state.
    pub(crate) fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> HealthState {
        let (rise, fall) = (rise.max(1), fall.max(1));
        match (self.state, ok) {
            (HealthState::Unknown, true) => self.move_to(HealthState::Healthy),
            (HealthState::Unknown, false) => self.move_to(HealthState::Unhealthy),
            (HealthState::Healthy, true) | (HealthState::Unhealthy, false) => self.streak = 0,
            (HealthState::Healthy, false) => self.count(fall, HealthState::Unhealthy),
            (HealthState::Unhealthy, true) if !self.proven => self.move_to(HealthState::Healthy),
            (HealthState::Unhealthy, true) => self.count(rise, HealthState::Healthy),
        }
        self.proven |= self.state == HealthState::Healthy;
        self.state
    }

    fn count(&mut self, threshold: u32, next: HealthState) {
        self.streak += 1;
        if self.streak >= threshold {
            self.move_to(next);
        }
    }

    fn move_to(&mut self, next: HealthState) {
        self.state = next;
        self.streak = 0;
    }
}

/// The probe a listener really runs: UDP cannot be checked with a TCP
/// connect, so a UDP listener with `TcpConnect` runs no check (like
/// `Disabled`); an `Http` probe works for both transports.
pub(crate) fn effective_probe(transport: Transport, probe: &ProbeKind) -> Option<&ProbeKind> {
    match (transport, probe) {
        (_, ProbeKind::Disabled) | (Transport::Udp, ProbeKind::TcpConnect) => None,
        (_, p) => Some(p),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect to {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http exchange with {addr} failed")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http status line {0:?} is not 200")]
    Status(String),
}

/// Run one probe against `backend`.
pub(crate) async fn probe(
    kind: &ProbeKind,
    backend: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let run = async {
        match kind {
            ProbeKind::Disabled => Ok(()),
            ProbeKind::TcpConnect => {
                TcpStream::connect(backend)
                    .await
                    .map(drop)
                    .map_err(|source| ProbeError::Connect {
                        addr: backend,
                        source,
                    })
            }
            ProbeKind::Http { port, path } => {
                http_get(SocketAddr::new(backend.ip(), *port), path).await
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let slash = if path.starts_with('/') { "" } else { "/" };
    let request = format!(
        "GET {slash}{path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portico-slb-healthcheck\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let http = |source| ProbeError::Http { addr, source };
    stream.write_all(request.as_bytes()).await.map_err(http)?;
    // Only the status line matters; read until its end (bounded).
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await.map_err(http)?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => Err(ProbeError::Status(line.to_owned())),
    }
}

/// Start probing `backend` every `hc.interval` (the first probe at once)
/// until `stop` is cancelled, publishing state changes on the backend.
pub(crate) fn spawn(
    backend: Arc<Backend>,
    kind: ProbeKind,
    hc: HealthCheckConfig,
    stop: CancellationToken,
    span: Span,
) {
    let task = async move {
        let mut tracker = Tracker::new(backend.health());
        let mut tick = tokio::time::interval(hc.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = probe(&kind, backend.addr, hc.timeout) => r,
            };
            let before = tracker.state();
            let after =
                tracker.observe(result.is_ok(), hc.healthy_threshold, hc.unhealthy_threshold);
            if before != after {
                backend.set_health(after);
                match &result {
                    Ok(()) => info!(backend = %backend.addr, ?before, ?after, "health changed"),
                    Err(e) => info!(
                        backend = %backend.addr, ?before, ?after, error = %e,
                        "health changed"
                    ),
                }
            } else if let Err(e) = &result {
                debug!(backend = %backend.addr, error = %e, "probe failed");
            }
        }
    };
    tokio::spawn(task.instrument(span));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_table() {
        use HealthState::*;
        struct Case {
            desc: &'static str,
            start: HealthState,
            probes: &'static [bool],
            rise: u32,
            fall: u32,
            want: HealthState,
        }
        let cases = [
            Case {
                desc: "unknown takes the first success",
                start: Unknown,
                probes: &[true],
                rise: 3,
                fall: 3,
                want: Healthy,
            },
            Case {
                desc: "unknown takes the first failure",
                start: Unknown,
                probes: &[false],
                rise: 3,
                fall: 3,
                want: Unhealthy,
            },
            Case {
                desc: "never healthy: one success is enough",
                start: Unknown,
                probes: &[false, false, true],
                rise: 3,
                fall: 3,
                want: Healthy,
            },
            Case {
                desc: "once proven, a fallen backend needs rise successes",
                start: Unknown,
                probes: &[true, false, false, true],
                rise: 2,
                fall: 2,
                want: Unhealthy,
            },
            Case {
                desc: "healthy survives fall-1 failures",
                start: Healthy,
                probes: &[false, false],
                rise: 2,
                fall: 3,
                want: Healthy,
            },
            Case {
                desc: "healthy falls after fall failures",
                start: Healthy,
                probes: &[false, false, false],
                rise: 2,
                fall: 3,
                want: Unhealthy,
            },
            Case {
                desc: "a success resets the failure streak",
                start: Healthy,
                probes: &[false, false, true, false, false],
                rise: 2,
                fall: 3,
                want: Healthy,
            },
            Case {
                desc: "unhealthy rises after rise successes",
                start: Unhealthy,
                probes: &[true, true],
                rise: 2,
                fall: 3,
                want: Healthy,
            },
            Case {
                desc: "a failure resets the success streak",
                start: Unhealthy,
                probes: &[true, false, true],
                rise: 2,
                fall: 3,
                want: Unhealthy,
            },
            Case {
                desc: "zero thresholds count as one",
                start: Healthy,
                probes: &[false],
                rise: 0,
                fall: 0,
                want: Unhealthy,
            },
        ];
        for case in cases {
            let mut t = Tracker::new(case.start);
            for ok in case.probes {
                t.observe(*ok, case.rise, case.fall);
            }
            assert_eq!(t.state(), case.want, "{}", case.desc);
        }
    }

    #[test]
    fn udp_tcp_connect_runs_no_probe() {
        assert_eq!(
            effective_probe(Transport::Udp, &ProbeKind::TcpConnect),
            None
        );
        assert_eq!(
            effective_probe(Transport::Tcp, &ProbeKind::TcpConnect),
            Some(&ProbeKind::TcpConnect)
        );
        let http = ProbeKind::Http {
            port: 10256,
            path: "/healthz".into(),
        };
        assert_eq!(effective_probe(Transport::Udp, &http), Some(&http));
        assert_eq!(effective_probe(Transport::Tcp, &ProbeKind::Disabled), None);
    }
}
