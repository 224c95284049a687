//! The leadership rules of the controller-safety issue, tested on the leader
//! election itself (`portico::leader`), on the stand-in and on the real
//! control plane:
//! - another holder's lease is judged expired on this replica's monotonic
//!   clock, from when it saw the record change, never by comparing renewTime
//!   with the local wall clock (a peer whose clock is off proves it);
//! - a leader cut off from the API server stops before anyone else leads;
//! - a deposed leader stops at once and writes nothing more;
//! - a graceful stop releases the lease.
//!
//! Issue 11 asked whether kube-lease-manager could replace `src/leader.rs`.
//! The `kube_lease_manager_*` scenarios run it through the same situations
//! and assert the breach each shows (see the top of `src/leader.rs`): if an
//! upgrade fixes it, they fail, and the question is worth asking again.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use portico::leader::run_election;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "portico-controller";
const NAMESPACE: &str = "kube-system";
/// `fast_lease`'s duration; kube-lease-manager gets the same.
const DURATION: Duration = Duration::from_secs(3);

fn leases(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), NAMESPACE)
}

/// The implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `portico::leader`, as the controller runs it.
    Ours,
    /// kube-lease-manager 0.13 with the same timings (3 s lease, renewed 1 s
    /// before it runs out).
    LeaseManager,
}

/// One replica's leader election, running in this process, and each change
/// of its "am I leading" as it published it.
struct Elector {
    leading: watch::Receiver<bool>,
    history: Arc<Mutex<Vec<(Instant, bool)>>>,
    recorder: JoinHandle<()>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Elector {
    /// Start an elector as `id`. Ours runs as the controller's
    /// ServiceAccount; kube-lease-manager as an admin, since it needs the
    /// `patch` verb `deploy/rbac.yaml` does not grant.
    async fn start(kind: Kind, env: &Env, id: &str) -> Elector {
        let client = match kind {
            Kind::Ours => env.controller_client.clone(),
            Kind::LeaseManager => env.client.clone(),
        };
        Elector::start_with(kind, client, id).await
    }

    async fn start_with(kind: Kind, client: Client, id: &str) -> Elector {
        let stop = CancellationToken::new();
        let (leading, task) = match kind {
            Kind::Ours => {
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(run_election(client, fast_lease(id), tx, stop.clone()));
                (rx, task)
            }
            Kind::LeaseManager => {
                let manager = kube_lease_manager::LeaseManagerBuilder::new(client, LEASE)
                    .with_namespace(NAMESPACE)
                    .with_identity(id)
                    .with_duration(DURATION.as_secs())
                    .with_grace(1)
                    .build()
                    .await
                    .expect("lease manager");
                let (rx, handle) = manager.watch().await;
                // It releases the lease and ends once every receiver is gone.
                let stop = stop.clone();
                let task = tokio::spawn(async move {
                    stop.cancelled().await;
                    let _ = handle.await;
                });
                (rx, task)
            }
        };
        let history = Arc::new(Mutex::new(Vec::new()));
        let recorder = {
            let (mut rx, history) = (leading.clone(), history.clone());
            tokio::spawn(async move {
                loop {
                    let now = *rx.borrow_and_update();
                    {
                        let mut h = history.lock().expect("history");
                        if h.last().map(|(_, l)| *l) != Some(now) {
                            h.push((Instant::now(), now));
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        Elector {
            leading,
            history,
            recorder,
            stop,
            task,
        }
    }

    fn history(&self) -> Vec<(Instant, bool)> {
        self.history.lock().expect("history").clone()
    }

    /// Wait until it leads; when it started to.
    async fn leads(&self, what: &str, secs: u64) -> Instant {
        eventually(what, secs, || async {
            self.history()
                .into_iter()
                .find_map(|(at, leading)| leading.then_some(at))
        })
        .await
    }

    /// Wait until it has stopped leading; when it stopped.
    async fn stepped_down(&self, what: &str, secs: u64) -> Instant {
        eventually(what, secs, || async {
            let history = self.history();
            let led = history.iter().position(|(_, l)| *l)?;
            history[led..]
                .iter()
                .find_map(|(at, leading)| (!leading).then_some(*at))
        })
        .await
    }

    /// A graceful stop (SIGTERM): ours releases a held lease before it
    /// returns; kube-lease-manager once its receivers are dropped.
    async fn stop(self) {
        self.recorder.abort();
        let _ = self.recorder.await;
        drop(self.leading);
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("elector stops")
            .expect("elector task");
    }

    /// A crash: nothing released.
    fn kill(self) {
        self.recorder.abort();
        self.task.abort();
    }
}

/// Another replica holding the Lease as client-go would (every 200 ms, an
/// update guarded by resourceVersion), whose wall clock is `skew` off ours:
/// the renewTime it writes is its own "now". It stops when told to, or once
/// it finds that someone else holds the lease.
struct SkewedHolder {
    /// Each renewal that went through: (sent, answered).
    renewals: Arc<Mutex<Vec<(Instant, Instant)>>>,
    /// When it found someone else holding its lease.
    deposed: Arc<Mutex<Option<Instant>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SkewedHolder {
    async fn start(client: Client, skew: SignedDuration) -> SkewedHolder {
        let api = leases(&client);
        let _ = api.delete(LEASE, &DeleteParams::default()).await;
        let skewed_now = move || MicroTime(Timestamp::now().checked_add(skew).expect("time"));
        let spec = |renew: MicroTime| LeaseSpec {
            holder_identity: Some("skewed-peer".into()),
            lease_duration_seconds: Some(i32::try_from(DURATION.as_secs()).expect("secs")),
            acquire_time: Some(renew.clone()),
            renew_time: Some(renew),
            lease_transitions: Some(0),
            ..Default::default()
        };
        let sent = Instant::now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE.into()),
                ..Default::default()
            },
            spec: Some(spec(skewed_now())),
        };
        api.create(&PostParams::default(), &lease)
            .await
            .expect("the skewed peer takes the lease");
        let renewals = Arc::new(Mutex::new(vec![(sent, Instant::now())]));
        let deposed = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        let task = {
            let (renewals, deposed, stop) = (renewals.clone(), deposed.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let sent = Instant::now();
                    let Ok(mut lease) = api.get(LEASE).await else {
                        continue;
                    };
                    let spec = lease.spec.get_or_insert_with(Default::default);
                    if spec.holder_identity.as_deref() != Some("skewed-peer") {
                        *deposed.lock().expect("deposed") = Some(Instant::now());
                        return;
                    }
                    spec.renew_time = Some(skewed_now());
                    if api
                        .replace(LEASE, &PostParams::default(), &lease)
                        .await
                        .is_ok()
                    {
                        renewals
                            .lock()
                            .expect("renewals")
                            .push((sent, Instant::now()));
                    }
                }
            })
        };
        SkewedHolder {
            renewals,
            deposed,
            stop,
            task,
        }
    }

    fn renewals(&self) -> Vec<(Instant, Instant)> {
        self.renewals.lock().expect("renewals").clone()
    }

    fn deposed(&self) -> Option<Instant> {
        *self.deposed.lock().expect("deposed")
    }

    /// Wait until it has renewed `n` times in all, or was deposed.
    async fn renewed(&self, n: usize, secs: u64) {
        eventually(
            &format!("{n} renewals by the skewed peer"),
            secs,
            || async { (self.renewals().len() >= n || self.deposed().is_some()).then_some(()) },
        )
        .await;
    }

    /// It crashes: no more renewals, nothing released.
    async fn crash(self) -> Vec<(Instant, Instant)> {
        self.stop.cancel();
        let renewals = self.renewals.clone();
        let _ = self.task.await;
        renewals.lock().expect("renewals").clone()
    }
}

/// What happened when a holder whose clock is `skew` off renewed its lease
/// 20 times (4 s, longer than the lease) beside an elector, then crashed.
struct SkewedTakeover {
    /// When the holder found the elector had taken its lease, if it did.
    deposed: Option<Instant>,
    /// Every renewal of the holder that went through: (sent, answered).
    renewals: Vec<(Instant, Instant)>,
    /// When the elector started to lead.
    led: Instant,
}

async fn beside_a_skewed_holder(env: &Env, kind: Kind, skew: SignedDuration) -> SkewedTakeover {
    let holder = SkewedHolder::start(env.client.clone(), skew).await;
    let elector = Elector::start(kind, env, "replica-a").await;
    holder.renewed(20, 20).await;
    let deposed = holder.deposed();
    let renewals = holder.crash().await;
    let led = elector.leads("the elector leads", 20).await;
    elector.stop().await;
    SkewedTakeover {
        deposed,
        renewals,
        led,
    }
}

/// A holder whose clock runs an hour behind writes a renewTime that looks
/// an hour stale to us: it is live all the same, and is not taken while it
/// is renewed, only a lease duration after the last renewal.
async fn lease_of_a_slow_clocked_holder_is_not_taken_while_renewed(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let seen = beside_a_skewed_holder(&env, Kind::Ours, SignedDuration::from_hours(-1)).await;
        assert_eq!(seen.deposed, None, "the live holder was deposed");
        assert!(
            seen.renewals.len() >= 20,
            "{} renewals",
            seen.renewals.len()
        );
        // The last renewal was written after it was sent: the lease ran
        // at least a duration from then.
        let (last_sent, _) = *seen.renewals.last().expect("renewals");
        assert!(
            seen.led >= last_sent + DURATION,
            "took the lease {:?} after its holder's last renewal; the lease runs {DURATION:?}",
            seen.led.saturating_duration_since(last_sent)
        );
    })
    .await;
}

/// A holder whose clock runs an hour ahead writes a renewTime an hour in our
/// future: once it stops renewing, the lease is taken a lease duration
/// later, not an hour later.
async fn lease_of_a_fast_clocked_holder_is_taken_once_it_stops(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let seen = beside_a_skewed_holder(&env, Kind::Ours, SignedDuration::from_hours(1)).await;
        assert_eq!(seen.deposed, None, "the live holder was deposed");
        let (last_sent, _) = *seen.renewals.last().expect("renewals");
        assert!(seen.led >= last_sent + DURATION);
    })
    .await;
}

/// kube-lease-manager, beside the same slow-clocked holder, takes its lease
/// while it is being renewed: it judges renewTime + duration against its
/// own wall clock. The holder (a client-go replica) still leads: two leaders.
async fn kube_lease_manager_takes_the_lease_of_a_slow_clocked_holder(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let seen =
            beside_a_skewed_holder(&env, Kind::LeaseManager, SignedDuration::from_hours(-1)).await;
        assert!(
            seen.deposed.is_some(),
            "kube-lease-manager left a live lease alone: it may judge expiry on its own clock now; re-evaluate it for src/leader.rs (issue 11)"
        );
        // The renewal was written after it was sent: the lease was still
        // valid for a while when it was taken.
        let (last_sent, _) = *seen
            .renewals
            .iter()
            .rev()
            .find(|(sent, _)| *sent < seen.led)
            .expect("a renewal before the takeover");
        assert!(
            seen.led < last_sent + DURATION,
            "it took the lease {:?} after the holder's last renewal, not within the lease's {DURATION:?}",
            seen.led.saturating_duration_since(last_sent)
        );
    })
    .await;
}

/// Leader `a` reaches the API server through a relay that the test breaks
/// (`cut`: connections refused; `stall`: requests hang); `b` then takes over
/// once the lease has lapsed. Returns (when `a` stepped down, if it did
/// before `b` led; when `b` led).
async fn a_leader_is_cut_off(env: &Env, kind: Kind, stall: bool) -> (Option<Instant>, Instant) {
    let link = partition(env).await;
    let config = match kind {
        Kind::Ours => &env.controller_config,
        Kind::LeaseManager => &env.admin_config,
    };
    let a = Elector::start_with(kind, config_through(config, &link), "replica-a").await;
    a.leads("a leads", 20).await;
    if stall {
        link.stall();
    } else {
        link.cut();
    }
    let b = Elector::start(kind, env, "replica-b").await;
    let b_led = b.leads("b takes over", 30).await;
    let a_stepped_down = a
        .history()
        .into_iter()
        .skip_while(|(_, leading)| !leading)
        .find_map(|(at, leading)| (!leading).then_some(at))
        .filter(|at| *at <= b_led);
    assert_eq!(
        env.lease_holder().await.as_deref(),
        Some("replica-b"),
        "b holds the lease"
    );
    a.kill();
    b.stop().await;
    (a_stepped_down, b_led)
}

/// A leader whose connections to the API server are refused stops leading
/// before another replica starts.
async fn partitioned_leader_steps_down_before_another_leads(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let (a_stopped, b_led) = a_leader_is_cut_off(&env, Kind::Ours, false).await;
        let a_stopped = a_stopped.expect("a still led when b took over: two leaders");
        assert!(a_stopped < b_led);
    })
    .await;
}

/// A leader whose requests hang (no error, no answer) stops leading at its
/// renew deadline, before another replica starts.
async fn stalled_leader_steps_down_before_another_leads(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let (a_stopped, b_led) = a_leader_is_cut_off(&env, Kind::Ours, true).await;
        let a_stopped = a_stopped.expect("a still led when b took over: two leaders");
        assert!(a_stopped < b_led);
    })
    .await;
}

/// kube-lease-manager, cut off from the API server, goes on reporting that
/// it leads after another replica has taken the lease: it logs the failed
/// renewal and retries, and never publishes `false`.
async fn kube_lease_manager_leads_on_when_cut_off(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let (a_stopped, _) = a_leader_is_cut_off(&env, Kind::LeaseManager, false).await;
        assert_eq!(
            a_stopped, None,
            "kube-lease-manager stepped down when cut off: re-evaluate it for src/leader.rs (issue 11)"
        );
    })
    .await;
}

/// Leader `a` loses its lease to a replica that writes itself in (as one
/// that judged it lapsed would). Returns the Lease as that replica wrote it,
/// and as it is once `a` has stepped down.
async fn a_leader_is_deposed(env: &Env, kind: Kind) -> (Lease, Lease) {
    let a = Elector::start(kind, env, "replica-a").await;
    a.leads("a leads", 20).await;
    let api = leases(&env.client);
    let usurped = eventually("the lease is taken from a", 10, || async {
        let mut lease = api.get(LEASE).await.ok()?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("usurper".into());
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        // Guarded by the resourceVersion just read: a's renewal may win.
        api.replace(LEASE, &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;
    a.stepped_down("a steps down", 20).await;
    let now = api.get(LEASE).await.expect("lease");
    a.kill();
    (usurped, now)
}

/// A leader that finds another holder steps down and leaves that holder's
/// Lease alone: not one write after it lost.
async fn deposed_leader_writes_nothing_to_the_new_holders_lease(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let (usurped, now) = a_leader_is_deposed(&env, Kind::Ours).await;
        assert_eq!(
            now.metadata.resource_version, usurped.metadata.resource_version,
            "the deposed leader wrote to the Lease: {:?}",
            now.spec
        );
    })
    .await;
}

/// kube-lease-manager learns it was deposed only by renewing: its renewal (a
/// patch with no precondition) lands in the new holder's Lease first.
async fn kube_lease_manager_renews_a_lease_it_lost(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let (usurped, now) = a_leader_is_deposed(&env, Kind::LeaseManager).await;
        let spec = now.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("usurper"));
        assert_ne!(
            spec.renew_time,
            usurped.spec.expect("spec").renew_time,
            "kube-lease-manager no longer writes into a lease it lost: re-evaluate it for src/leader.rs (issue 11)"
        );
    })
    .await;
}

/// A graceful stop releases the lease: the standby leads well before the
/// lease would have run out.
async fn stopped_leader_releases_the_lease(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let a = Elector::start(Kind::Ours, &env, "replica-a").await;
        a.leads("a leads", 20).await;
        let b = Elector::start(Kind::Ours, &env, "replica-b").await;
        let stopping = Instant::now();
        a.stop().await;
        let free = env.lease_holder().await;
        assert!(
            free.as_deref().is_none_or(|h| h == "replica-b"),
            "a still holds the lease after stopping: {free:?}"
        );
        let b_led = b.leads("b takes over", 20).await;
        assert!(
            b_led < stopping + DURATION,
            "b waited {:?} for the lease to expire",
            b_led - stopping
        );
        b.stop().await;
        assert_eq!(env.lease_holder().await, None, "b released it too");
    })
    .await;
}

/// kube-lease-manager releases the lease on a graceful stop too.
async fn kube_lease_manager_releases_the_lease_on_stop(backend: Backend) {
    within(60, async {
        let env = Env::api_only(backend, 0).await;
        let a = Elector::start(Kind::LeaseManager, &env, "replica-a").await;
        a.leads("a leads", 20).await;
        a.stop().await;
        assert_eq!(env.lease_holder().await, None);
    })
    .await;
}

on_both_backends!(
    lease_of_a_slow_clocked_holder_is_not_taken_while_renewed,
    lease_of_a_fast_clocked_holder_is_taken_once_it_stops,
    kube_lease_manager_takes_the_lease_of_a_slow_clocked_holder,
    partitioned_leader_steps_down_before_another_leads,
    stalled_leader_steps_down_before_another_leads,
    kube_lease_manager_leads_on_when_cut_off,
    deposed_leader_writes_nothing_to_the_new_holders_lease,
    kube_lease_manager_renews_a_lease_it_lost,
    stopped_leader_releases_the_lease,
    kube_lease_manager_releases_the_lease_on_stop,
);
