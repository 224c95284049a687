//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: read the Lease, then take or renew it with an update guarded by
//! its resourceVersion, so two replicas can never both win.
//!
//! Whether another holder's lease has expired is judged as client-go judges
//! it: by how long *this* replica has watched the lease record (holder and
//! renewTime) stay unchanged, on its own monotonic clock, never by comparing
//! the holder's `renewTime` with the local wall clock, so clocks that
//! disagree between nodes cannot make two leaders.
//!
//! (kube-lease-manager relies on server-side-apply conflicts instead; this
//! loop works with any API server that honours resourceVersion.)

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
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and others retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, identity: String) -> Self {
        Self {
            namespace: namespace.into(),
            name: "portico-controller".into(),
            identity,
            duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
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
    fn expired(&self, spec: &LeaseSpec, now: Instant) -> bool {
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        );
        now.saturating_duration_since(self.since) > duration
    }
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following,
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
    let mut last_renew: Option<tokio::time::Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        let outcome = try_acquire_or_renew(&api, &config, &mut observed).await;
        let now = tokio::time::Instant::now();
        let is_leader = match outcome {
            Ok(Attempt::Leading) => {
                last_renew = Some(now);
                true
            }
            Ok(Attempt::Following) => false,
            Err(err) => {
                warn!(error = %err, lease = %config.name, "lease update failed");
                // Keep leading only while the lease we last renewed is surely still ours.
                last_renew.is_some_and(|t| now.duration_since(t) < config.duration.mul_f32(0.66))
            }
        };
        if !is_leader {
            last_renew = None;
        }
        leading.send_if_modified(|current| {
            let changed = *current != is_leader;
            if changed {
                info!(identity = %config.identity, leader = is_leader, "leadership changed");
            }
            *current = is_leader;
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(err) = release(&api, &config).await {
            warn!(error = %err, "could not release the lease; a standby takes over when it expires");
        } else {
            info!(identity = %config.identity, "released the lease");
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(config.duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let seen = Observed::update(observed.take(), spec, Instant::now());
    let lapsed = seen.expired(spec, Instant::now());
    *observed = Some(seen);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    if !ours && !free && !lapsed {
        debug!(holder = ?spec.holder_identity, "lease held by another replica");
        return Ok(Attempt::Following);
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion in `lease` makes this fail if anyone wrote in between.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Attempt::Leading),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
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
        let secs = Duration::from_secs;
        // The holder's clock runs an hour behind: its renewTime looks stale
        // by the local wall clock, but the record is fresh to us.
        let skewed = spec("a", 3600);
        let seen = Observed::update(None, &skewed, t0);
        assert!(
            !seen.expired(&skewed, t0 + secs(1)),
            "a just-seen record is live, whatever renewTime says"
        );
        let seen = Observed::update(Some(seen), &skewed, t0 + secs(10));
        assert!(
            !seen.expired(&skewed, t0 + secs(10)),
            "unchanged for 10 s of 15"
        );
        assert!(
            seen.expired(&skewed, t0 + secs(16)),
            "unchanged for longer than the lease: lapsed"
        );
        // The holder renews (renewTime changes, even to one in our future):
        // the clock starts over.
        let ahead = spec("a", -3600);
        let renewed = Observed::update(Some(seen), &ahead, t0 + secs(16));
        assert!(
            !renewed.expired(&ahead, t0 + secs(30)),
            "renewed at 16 s, valid until 31 s"
        );
        assert!(renewed.expired(&ahead, t0 + secs(32)));
        // A new holder is a new record.
        let other = spec("b", -3600);
        let taken = Observed::update(Some(renewed), &other, t0 + secs(40));
        assert_eq!(taken.since, t0 + secs(40));
    }
}
