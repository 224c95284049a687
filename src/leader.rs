//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: read the Lease, then take or renew it with an update guarded by
//! its resourceVersion, so two replicas can never both win.
//!
//! (kube-lease-manager relies on server-side-apply conflicts instead; this
//! loop works with any API server that honours resourceVersion.)

use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
use tokio::sync::watch;
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
    loop {
        let outcome = try_acquire_or_renew(&api, &config).await;
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

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed
        .checked_add(duration)
        .map(|until| until < now)
        .unwrap_or(true)
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
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
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    if !ours && !free && !expired(spec, now) {
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
    fn expiry() {
        let now = Timestamp::now();
        let at = |secs_ago: i64| LeaseSpec {
            renew_time: Some(MicroTime(
                now.checked_sub(SignedDuration::from_secs(secs_ago))
                    .expect("time"),
            )),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&at(5), now), "renewed 5s ago is valid");
        assert!(expired(&at(20), now), "renewed 20s ago has expired");
        assert!(
            expired(&LeaseSpec::default(), now),
            "never renewed counts as expired"
        );
    }
}
