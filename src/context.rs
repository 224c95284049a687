//! What every reconcile shares: the Kubernetes client, the provider, the
//! target snapshot, the Event recorder, metrics, and what the executor
//! remembers per Service (failures for backoff, the spec last ensured).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use portico_provider::{DynProvider, ProviderError};
use rand::Rng;
use tokio::sync::watch;
use tracing::{Instrument, info_span, warn};

use crate::backlog::Backlog;
use crate::config::ControllerConfig;
use crate::controller::Error;
use crate::k8s::{Api, Client, ObjectRef, Patch, PatchParams, ResourceExt, Service, Timestamp};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::nodes::TargetSnapshot;
use crate::outcome::{Memo, SpecHashes};
use crate::status::{self, StatusUpdate};

/// What the executor remembers between reconciles of a Service.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Failed attempts in a row, for exponential backoff.
    failures: HashMap<ObjectRef<Service>, u32>,
    /// Hashes of the last spec ensured (whole, and without targets), so a
    /// resync of an unchanged Service emits no events.
    ensured: HashMap<ObjectRef<Service>, SpecHashes>,
}

/// Shared state of one controller run.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) provider: Arc<dyn DynProvider>,
    pub(crate) config: ControllerConfig,
    pub(crate) targets: watch::Receiver<Option<TargetSnapshot>>,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) backlog: Arc<Backlog>,
    pub(crate) memory: Mutex<Memory>,
    /// Shared with the orphan collector: one provider caller per Service.
    pub(crate) locks: Arc<KeyLocks>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl Context {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exponential backoff (base doubling per failure in a row, up to the
    /// cap), jittered to between half and all of it ("equal jitter", so a
    /// retry never comes much sooner than planned), and at least `floor`.
    pub(crate) fn backoff(&self, obj: &ObjectRef<Service>, floor: Duration) -> Duration {
        let failures = {
            let mut memory = self.memory();
            let n = memory.failures.entry(obj.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << failures.min(16).saturating_sub(1));
        let capped = exp.min(self.config.backoff_max);
        let jittered = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(floor)
    }

    /// The periodic re-ensure, spread by ±10% so Services created together
    /// are not all re-ensured in the same instant forever.
    pub(crate) fn resync_after(&self) -> Duration {
        spread(self.config.resync, rand::rng().random_range(0.0..=1.0))
    }

    /// The hashes of the spec last ensured for `obj`, if remembered.
    pub(crate) fn last_ensured(&self, obj: &ObjectRef<Service>) -> Option<SpecHashes> {
        self.memory().ensured.get(obj).copied()
    }

    /// Carry out what an outcome says to remember.
    pub(crate) fn remember(&self, obj: &ObjectRef<Service>, memo: Memo) {
        let mut memory = self.memory();
        match memo {
            Memo::Keep => {}
            Memo::Ensured(hashes) => {
                memory.ensured.insert(obj.clone(), hashes);
            }
            Memo::ForgetSpec => {
                memory.ensured.remove(obj);
            }
            Memo::ForgetAll => {
                memory.ensured.remove(obj);
                memory.failures.remove(obj);
            }
        }
    }

    pub(crate) fn succeeded(&self, obj: &ObjectRef<Service>) {
        self.memory().failures.remove(obj);
    }

    pub(crate) async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            // The API server refuses (and so loses) an Event whose note is
            // over 1 KiB; provider errors can be longer. The log keeps it all.
            note: Some(truncate_note(note)),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(error = %err, reason, "could not publish event");
        }
    }

    /// Run a provider call with a span, timing and a metric.
    pub(crate) async fn provider_call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let start = Instant::now();
        let span = info_span!("provider", provider = self.provider.name(), op);
        let result = fut.instrument(span).await;
        self.metrics.provider_call(
            self.provider.name(),
            op,
            result.as_ref().map(|_| ()).map_err(|e| e.metric_label()),
            start,
        );
        result
    }

    /// Write `update` unless the Service shows it already; whether it wrote.
    pub(crate) async fn patch_status(
        &self,
        api: &Api<Service>,
        svc: &Service,
        update: &StatusUpdate,
    ) -> Result<bool, Error> {
        let Some(patch) = status::status_patch(svc, update, Timestamp::now()) else {
            return Ok(false);
        };
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::kube("patching Service status"))?;
        Ok(true)
    }

    /// Wait for the first node list, then hand out the eligible targets.
    pub(crate) async fn eligible_targets(&self) -> Result<TargetSnapshot, Error> {
        let mut rx = self.targets.clone();
        let ready = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NodesUnavailable)?;
        ready.clone().ok_or(Error::NodesUnavailable)
    }
}

/// `period` moved by up to ±10%: `unit` in [0, 1] picks where.
fn spread(period: Duration, unit: f64) -> Duration {
    period.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// The most an Event's note may hold (events.k8s.io validation).
const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to [`EVENT_NOTE_LIMIT`] bytes on a character boundary, with
/// an ellipsis when cut.
fn truncate_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    const ELLIPSIS: &str = "…";
    let mut end = EVENT_NOTE_LIMIT - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &note[..end])
}

/// A Context for unit tests: `client` (the stand-in's, or one that is
/// never called), `provider`, `config`, and a target snapshot of `targets`.
#[cfg(test)]
pub(crate) fn for_tests(
    client: Client,
    provider: Arc<dyn DynProvider>,
    config: ControllerConfig,
    targets: portico_provider::Targets,
) -> Context {
    use kube::runtime::events::Reporter;
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    let (_tx, rx) = watch::channel(Some(TargetSnapshot {
        targets,
        fingerprint: 0,
    }));
    Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "portico".into(),
                instance: Some("test".into()),
            },
        ),
        client,
        provider,
        config,
        targets: rx,
        backlog: Arc::new(Backlog::new(metrics.queued.clone())),
        metrics,
        memory: Mutex::default(),
        locks: Arc::new(KeyLocks::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_to_its_cap_with_jitter_and_never_undercuts_the_floor() {
        let client = Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client (never called)");
        let config = ControllerConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..ControllerConfig::default()
        };
        let ctx = for_tests(
            client,
            Arc::new(portico_provider::testing::RecordingProvider::new()),
            config,
            portico_provider::Targets::default(),
        );
        let web = ObjectRef::new("web").within("default");
        let ms = Duration::from_millis;
        // The n-th failure in a row waits between half and all of
        // base * 2^(n-1), capped at backoff_max.
        let steps = [
            (1, ms(100)),
            (2, ms(200)),
            (3, ms(400)),
            (4, ms(800)),
            (5, ms(1600)),
            (6, ms(2000)),
            (30, ms(2000)),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            ctx.succeeded(&web);
            let mut failures = 0;
            for (n, ceiling) in steps {
                let mut delay = Duration::ZERO;
                while failures < n {
                    delay = ctx.backoff(&web, Duration::ZERO);
                    failures += 1;
                }
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "failure {n}: {delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
                if n == 1 {
                    seen.insert(delay);
                }
            }
        }
        assert!(seen.len() > 1, "jittered: {seen:?}");
        // Another Service has its own count.
        let api = ObjectRef::new("api").within("default");
        assert!(ctx.backoff(&api, Duration::ZERO) <= ms(100));
        // A floor above the cap wins; below it, the backoff does.
        assert_eq!(
            ctx.backoff(&web, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        ctx.succeeded(&web);
        let first = ctx.backoff(&web, ms(10));
        assert!(
            first >= ms(50),
            "a low floor does not shorten it: {first:?}"
        );
        ctx.succeeded(&web);
        assert_eq!(
            ctx.backoff(&web, ms(150)),
            ms(150),
            "a floor above the first step lifts it"
        );
    }

    #[test]
    fn resyncs_are_spread_by_ten_percent() {
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(spread(ten_minutes, 0.0), Duration::from_secs(540));
        assert_eq!(spread(ten_minutes, 1.0), Duration::from_secs(660));
        assert_eq!(spread(ten_minutes, 0.5), ten_minutes);
        let mut seen: Vec<Duration> = (0..50)
            .map(|_| spread(ten_minutes, rand::rng().random_range(0.0..=1.0)))
            .collect();
        seen.dedup();
        assert!(
            seen.len() > 1,
            "Services created together do not resync together"
        );
    }

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_keeps() {
        let cases = [
            ("short note kept", "ok".to_string(), "ok".to_string()),
            ("exactly 1 KiB kept", "x".repeat(1024), "x".repeat(1024)),
        ];
        for (desc, note, want) in cases {
            assert_eq!(truncate_note(note), want, "{desc}");
        }
        let cut = truncate_note("é".repeat(1000));
        assert!(
            cut.len() <= 1024 && cut.ends_with('…'),
            "multi-byte text cut on a char boundary"
        );
    }
}
