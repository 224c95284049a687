//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: read the Lease, then take or renew it with an update guarded by
//! its resourceVersion, so two replicas can never both win one write.
//!
//! The rules (issue 9), and the tests in `tests/leadership.rs` that hold them
//! on the stand-in and on the real control plane:
//! - Another holder's lease has lapsed only once *this* replica has watched
//!   its record (holder, renewTime) stay unchanged for the lease duration on
//!   its own monotonic clock. renewTime is never compared with the local wall
//!   clock, so replicas whose clocks disagree cannot both lead
//!   (`lease_of_a_slow_clocked_holder_is_not_taken_while_renewed`,
//!   `lease_of_a_fast_clocked_holder_is_taken_once_it_stops`).
//! - A leader stops acting once `renew_deadline` has passed since it *sent*
//!   its last successful renewal, even while a request hangs; the deadline is
//!   shorter than the lease duration, so it has stopped before any replica may
//!   judge its lease lapsed (`partitioned_leader_steps_down_before_another_leads`,
//!   `stalled_leader_steps_down_before_another_leads`).
//! - A leader that finds another holder steps down at once and writes nothing
//!   to that Lease (`deposed_leader_writes_nothing_to_the_new_holders_lease`).
//! - A graceful stop releases the lease, so a standby takes over without
//!   waiting for it to expire (`stopped_leader_releases_the_lease`).
//!
//! Why not kube-lease-manager 0.13 (issue 11 asked): the same tests show it
//! breaks the first three rules, and its tests there assert the breach, so an
//! upgrade that fixes one fails them and prompts a second look.
//! - It judges expiry as `renewTime + leaseDurationSeconds` against the local
//!   `SystemTime::now()` (`state.rs`, `LeaseState::sync`/`is_expired`): it
//!   force-releases and takes a lease whose holder renewed it a moment ago
//!   when that holder's clock runs behind, and waits for hours when it runs
//!   ahead.
//! - A leader that cannot reach the API server never reports losing the
//!   lease (`manager.rs`, `LeaseManager::watch` logs the error and retries
//!   with `true` still published), so it leads on beside its successor.
//! - Renewal is a strategic-merge patch with no precondition, sent before it
//!   re-reads the holder: a deposed leader writes its renewTime into its
//!   successor's Lease before it notices.
//!
//! It also needs the `patch` verb on Leases, which `deploy/rbac.yaml` does
//! not grant.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::k8s::{Api, Client, Lease, LeaseSpec, MicroTime, ObjectMeta, PostParams, Timestamp};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name + random suffix).
    pub identity: String,
    /// How long a lease stays valid without renewal (whole seconds).
    pub duration: Duration,
    /// A leader that has not renewed for this long stops acting. Shorter
    /// than `duration`, so it has stopped before anyone may take over.
    pub renew_deadline: Duration,
    /// How often the holder renews and others retry.
    pub retry_period: Duration,
}

/// Timings that would let two replicas lead at once, or none ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("lease duration must be a whole number of seconds from 1 to {max}, not {duration:?}", max = i32::MAX)]
    Duration { duration: Duration },
    #[error(
        "lease renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({duration:?}): a leader cut off from the API server must stop before another may take over"
    )]
    DeadlineNotBeforeExpiry {
        renew_deadline: Duration,
        duration: Duration,
    },
    #[error(
        "lease retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?})"
    )]
    RetryNotBeforeDeadline {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, identity: String) -> Self {
        Self {
            namespace: namespace.into(),
            name: "portico-controller".into(),
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Check that the timings keep the leadership rules.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        let whole_seconds = self.duration.subsec_nanos() == 0
            && self.duration >= Duration::from_secs(1)
            && i32::try_from(self.duration.as_secs()).is_ok();
        if !whole_seconds {
            return Err(LeaseConfigError::Duration {
                duration: self.duration,
            });
        }
        if self.renew_deadline >= self.duration {
            return Err(LeaseConfigError::DeadlineNotBeforeExpiry {
                renew_deadline: self.renew_deadline,
                duration: self.duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(LeaseConfigError::RetryNotBeforeDeadline {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// The lease record as this replica last saw it, and when it first saw it
/// that way (local monotonic clock).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    since: Instant,
}

impl Observed {
    /// Note what the lease says now; the clock restarts when it changed.
    fn update(previous: Option<Observed>, spec: &LeaseSpec, now: Instant) -> Observed {
        let holder = spec.holder_identity.clone();
        let renewed = spec.renew_time.clone();
        match previous {
            Some(p) if p.holder == holder && p.renewed == renewed => p,
            _ => Observed {
                holder,
                renewed,
                since: now,
            },
        }
    }

    /// Whether the holder has let the lease lapse: its record has not
    /// changed for a whole lease duration, as far as this replica has seen.
    fn lapsed(&self, spec: &LeaseSpec, now: Instant) -> bool {
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        );
        now.saturating_duration_since(self.since) > duration
    }
}

/// What to do about the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Ours: write a fresh renewTime.
    Renew,
    /// Free, or its holder let it lapse: write ourselves in.
    Take,
    /// Another replica holds it: leave it alone.
    Follow,
}

/// May I take or renew the lease? `holder` as the Lease names it, `lapsed`
/// as [`Observed::lapsed`] judged it.
fn decide(holder: Option<&str>, me: &str, lapsed: bool) -> Step {
    match holder {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::Take,
        Some(_) if lapsed => Step::Take,
        Some(_) => Step::Follow,
    }
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Our write went through: we hold the lease.
    Leading,
    /// Someone else holds it, or won the race to write.
    Following,
    /// No answer (error or timeout): we do not know.
    Failed,
}

/// Must I step down? Returns when this replica last renewed (when it sent
/// that request) if it may still act as leader after an attempt sent at
/// `sent`, `None` if it must stop now. A failed attempt keeps leadership only
/// until the deadline of the last renewal that went through.
fn leadership(
    renewed: Option<Instant>,
    outcome: Outcome,
    sent: Instant,
    now: Instant,
    renew_deadline: Duration,
) -> Option<Instant> {
    let renewed = match outcome {
        Outcome::Leading => Some(sent),
        Outcome::Following => None,
        Outcome::Failed => renewed,
    };
    renewed.filter(|t| now < *t + renew_deadline)
}

/// Runs the election until `shutdown`, publishing leadership on `leading`.
/// On shutdown, a held lease is released so a standby takes over at once.
pub async fn run_election(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut renewed: Option<Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        let sent = Instant::now();
        // A leader's request may run until its deadline and no longer: a
        // hung API server must not keep it leading.
        let until = renewed.unwrap_or(sent) + config.renew_deadline;
        let attempt = try_acquire_or_renew(&api, &config, &mut observed);
        let outcome = match tokio::time::timeout_at(until, attempt).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => {
                warn!(error = %err, lease = %config.name, "lease request failed");
                Outcome::Failed
            }
            Err(_) => {
                warn!(lease = %config.name, "lease request got no answer in time");
                Outcome::Failed
            }
        };
        renewed = leadership(
            renewed,
            outcome,
            sent,
            Instant::now(),
            config.renew_deadline,
        );
        publish(&leading, renewed.is_some(), &config.identity);
        // Try again after the retry period, or at the deadline if that
        // comes first (the next attempt then steps down).
        let mut next = sent + config.retry_period;
        if let Some(t) = renewed {
            next = next.min(t + config.renew_deadline);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        match tokio::time::timeout(config.renew_deadline, release(&api, &config)).await {
            Ok(Ok(())) => info!(identity = %config.identity, "released the lease"),
            Ok(Err(err)) => {
                warn!(error = %err, "could not release the lease; a standby takes over when it expires");
            }
            Err(_) => {
                warn!("releasing the lease got no answer; a standby takes over when it expires")
            }
        }
    }
}

fn publish(leading: &watch::Sender<bool>, is_leader: bool, identity: &str) {
    leading.send_if_modified(|current| {
        let changed = *current != is_leader;
        if changed {
            info!(identity, leader = is_leader, "leadership changed");
        }
        *current = is_leader;
        changed
    });
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<Outcome, kube::Error> {
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(config.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return written(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let seen = Observed::update(observed.take(), spec, Instant::now());
    let lapsed = seen.lapsed(spec, Instant::now());
    *observed = Some(seen);
    match decide(spec.holder_identity.as_deref(), &config.identity, lapsed) {
        Step::Follow => {
            debug!(holder = ?spec.holder_identity, "lease held by another replica");
            return Ok(Outcome::Following);
        }
        Step::Take => {
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        Step::Renew => {}
    }
    spec.lease_duration_seconds = Some(config.duration_seconds());
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion in `lease` makes this fail if anyone wrote in between.
    written(
        api.replace(&config.name, &PostParams::default(), &lease)
            .await,
    )
}

/// A write that lost the race (409) means someone else holds the lease.
fn written(result: Result<Lease, kube::Error>) -> Result<Outcome, kube::Error> {
    match result {
        Ok(_) => Ok(Outcome::Leading),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Following),
        Err(err) => Err(err),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn expiry_is_judged_on_the_local_clock() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let spec = |holder: &str, renewed_secs_ago: i64| LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                wall.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
                    renewed_secs_ago,
                ))
                .expect("time"),
            )),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        // The holder's clock runs an hour behind: its renewTime looks stale
        // by the local wall clock, but the record is fresh to us.
        let skewed = spec("a", 3600);
        let seen = Observed::update(None, &skewed, t0);
        assert!(
            !seen.lapsed(&skewed, t0 + secs(1)),
            "a just-seen record is live, whatever renewTime says"
        );
        let seen = Observed::update(Some(seen), &skewed, t0 + secs(10));
        assert!(
            !seen.lapsed(&skewed, t0 + secs(10)),
            "unchanged for 10 s of 15"
        );
        assert!(
            seen.lapsed(&skewed, t0 + secs(16)),
            "unchanged for longer than the lease: lapsed"
        );
        // The holder renews (renewTime changes, even to one in our future):
        // the clock starts over.
        let ahead = spec("a", -3600);
        let renewed = Observed::update(Some(seen), &ahead, t0 + secs(16));
        assert!(
            !renewed.lapsed(&ahead, t0 + secs(30)),
            "renewed at 16 s, valid until 31 s"
        );
        assert!(renewed.lapsed(&ahead, t0 + secs(32)));
        // A new holder is a new record.
        let other = spec("b", -3600);
        let taken = Observed::update(Some(renewed), &other, t0 + secs(40));
        assert_eq!(taken.since, t0 + secs(40));
    }

    #[test]
    fn take_renew_or_follow() {
        use Step::*;
        #[rustfmt::skip]
        let cases: [(Option<&str>, bool, Step, &str); 7] = [
            // holder        lapsed  step
            (Some("me"),     false,  Renew,  "ours: renew"),
            (Some("me"),     true,   Renew,  "ours, even if a peer would call it lapsed"),
            (None,           false,  Take,   "no holder: free"),
            (Some(""),       false,  Take,   "released (empty holder): free"),
            (Some("other"),  false,  Follow, "another's live lease is left alone"),
            (Some("other"),  true,   Take,   "another's lapsed lease may be taken"),
            (Some("me-too"), false,  Follow, "a prefix of us is someone else"),
        ];
        for (holder, lapsed, want, why) in cases {
            assert_eq!(decide(holder, "me", lapsed), want, "{why}");
        }
    }

    #[test]
    fn step_down_when_the_deadline_passes() {
        use Outcome::*;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let deadline = secs(10);
        #[rustfmt::skip]
        let cases = [
            // renewed before, outcome, sent, answered, renewed after
            (None,         Leading,   at(0),     at(50),     Some(at(0)),    "took it: lead, counted from when the request was sent"),
            (Some(at(0)),  Leading,   at(2000),  at(2050),   Some(at(2000)), "renewed"),
            (Some(at(0)),  Following, at(2000),  at(2000),   None,           "someone else holds it: stop at once"),
            (None,         Following, at(0),     at(0),      None,           "still a standby"),
            (None,         Failed,    at(0),     at(0),      None,           "no answer: a standby stays one"),
            (Some(at(0)),  Failed,    at(2000),  at(9000),   Some(at(0)),    "no answer before the deadline: keep leading"),
            (Some(at(0)),  Failed,    at(8000),  at(10000),  None,           "no answer by the deadline: stop"),
            (Some(at(0)),  Leading,   at(1000),  at(11000),  None,           "a renewal answered after its own deadline does not count"),
        ];
        for (before, outcome, sent, now, after, why) in cases {
            assert_eq!(
                leadership(before, outcome, sent, now, deadline),
                after,
                "{why}"
            );
        }
    }

    #[test]
    fn timings_that_could_make_two_leaders_are_refused() {
        let ok = LeaseConfig::new("kube-system", "a".into());
        assert_eq!(ok.validate(), Ok(()));
        let with = |f: fn(&mut LeaseConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate()
        };
        assert!(matches!(
            with(|c| c.renew_deadline = c.duration),
            Err(LeaseConfigError::DeadlineNotBeforeExpiry { .. })
        ));
        assert!(matches!(
            with(|c| c.retry_period = c.renew_deadline),
            Err(LeaseConfigError::RetryNotBeforeDeadline { .. })
        ));
        assert!(matches!(
            with(|c| c.duration = Duration::from_millis(1500)),
            Err(LeaseConfigError::Duration { .. })
        ));
        assert!(matches!(
            with(|c| c.duration = Duration::ZERO),
            Err(LeaseConfigError::Duration { .. })
        ));
        let message = with(|c| c.renew_deadline = secs(20))
            .expect_err("refused")
            .to_string();
        assert!(message.contains("renew deadline"), "{message}");
    }
}
