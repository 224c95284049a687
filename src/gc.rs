//! Orphan garbage collection: balancers this cluster owns whose Service no
//! longer exists (deleted while the controller was down, finalizer removed
//! by hand, or re-created under a new UID) are deleted, carefully: only
//! after the Service cache has synced, only balancers tagged with this
//! cluster's identity, only after a balancer has stayed orphaned for
//! `gc_grace` across passes, at most `gc_max_per_pass` per pass, and never
//! while the reconciler works on the same Service. `--gc=false` turns it off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_provider::{DynProvider, LoadBalancerKey};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ControllerConfig;
use crate::k8s::{ObjectRef, ResourceExt, Service, Store};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::plan;

/// Whether `key`'s balancer has no Service that still wants it.
pub fn is_orphan(
    key: &LoadBalancerKey,
    services: &Store<Service>,
    config: &ControllerConfig,
    provider: &dyn DynProvider,
) -> bool {
    if key.cluster != config.cluster {
        return false;
    }
    let Some(svc) = services.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
        return true;
    };
    if svc.uid().as_deref() != Some(key.uid.as_str()) {
        return true;
    }
    // A Service still holding our finalizer is the reconciler's to clean up.
    !plan::is_ours(&svc, config, provider) && !plan::has_finalizer(&svc)
}

/// Balancers seen orphaned, and since when. A balancer is deleted only
/// once it has been seen orphaned on passes at least `gc_grace` apart, so a
/// Service cache that is briefly wrong (a relist, a slow watch) never costs
/// a balancer.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    first_seen: HashMap<LoadBalancerKey, Instant>,
}

impl OrphanTracker {
    /// Record this pass's orphans and return the ones due for deletion:
    /// seen orphaned for at least `grace`, oldest first, at most `max`.
    /// Balancers no longer orphaned are forgotten.
    pub fn due(
        &mut self,
        orphans: impl IntoIterator<Item = LoadBalancerKey>,
        now: Instant,
        grace: Duration,
        max: usize,
    ) -> Vec<LoadBalancerKey> {
        let orphans: HashSet<LoadBalancerKey> = orphans.into_iter().collect();
        self.first_seen.retain(|key, _| orphans.contains(key));
        for key in orphans {
            self.first_seen.entry(key).or_insert(now);
        }
        let mut due: Vec<(Instant, LoadBalancerKey)> = self
            .first_seen
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= grace)
            .map(|(key, seen)| (*seen, key.clone()))
            .collect();
        due.sort();
        due.into_iter().take(max).map(|(_, key)| key).collect()
    }

    /// `key` was deleted (or is no longer an orphan).
    pub fn forget(&mut self, key: &LoadBalancerKey) {
        self.first_seen.remove(key);
    }

    /// Orphans waiting out their grace period.
    pub fn waiting(&self) -> usize {
        self.first_seen.len()
    }
}

/// What one collection pass needs.
pub struct Collector<'a> {
    pub services: &'a Store<Service>,
    pub provider: &'a dyn DynProvider,
    pub config: &'a ControllerConfig,
    pub metrics: &'a Metrics,
    pub locks: &'a KeyLocks,
}

impl std::fmt::Debug for Collector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl Collector<'_> {
    /// One pass: list what this cluster owns, delete what has been nobody's
    /// for the grace period, at most `gc_max_per_pass` of them.
    pub async fn collect_once(&self, tracker: &mut OrphanTracker) -> usize {
        let owned = match self.provider.list_owned().await {
            Ok(owned) => owned,
            Err(err) => {
                warn!(error = %err, "listing owned balancers failed");
                return 0;
            }
        };
        let orphans = owned
            .into_iter()
            .filter(|k| is_orphan(k, self.services, self.config, self.provider));
        let due = tracker.due(
            orphans,
            Instant::now(),
            self.config.gc_grace,
            self.config.gc_max_per_pass,
        );
        debug!(
            waiting = tracker.waiting(),
            due = due.len(),
            "orphaned balancers"
        );
        let mut deleted = 0;
        for key in due {
            // The reconciler may be working on this Service right now, and
            // the Service may have come back while we waited for it.
            let _guard = self.locks.lock(&key.namespace, &key.name).await;
            if !is_orphan(&key, self.services, self.config, self.provider) {
                tracker.forget(&key);
                continue;
            }
            match self.provider.delete(&key).await {
                Ok(()) => {
                    info!(
                        service = %key,
                        uid = %key.uid,
                        cluster = %key.cluster,
                        reason = "OrphanedLoadBalancerDeleted",
                        "deleted a balancer of this cluster whose Service is gone"
                    );
                    self.metrics.orphans_deleted.inc();
                    tracker.forget(&key);
                    deleted += 1;
                }
                Err(err) => {
                    warn!(service = %key, error = %err, "deleting orphaned balancer failed")
                }
            }
        }
        deleted
    }
}

/// Collect once the Service cache is complete, then every `gc_interval`.
pub async fn run_gc(
    services: Store<Service>,
    provider: Arc<dyn DynProvider>,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    locks: Arc<KeyLocks>,
    shutdown: CancellationToken,
) {
    // Re-poll with a timeout: kube-runtime's readiness future wakes only its
    // latest waiter, and the Controller waits on the same store.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = tokio::time::timeout(Duration::from_millis(500), services.wait_until_ready()) => match ready {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => continue,
            },
        }
    }
    let collector = Collector {
        services: &services,
        provider: provider.as_ref(),
        config: &config,
        metrics: &metrics,
        locks: &locks,
    };
    let mut tracker = OrphanTracker::default();
    loop {
        collector.collect_once(&mut tracker).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.gc_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::svc;
    use crate::k8s::{LB_FINALIZER, reflector};
    use kube::runtime::watcher;
    use portico_provider::testing::{Op, RecordingProvider};
    use portico_provider::{ClusterName, LoadBalancerSpec};
    use prometheus_client::registry::Registry;

    fn gc_config() -> ControllerConfig {
        ControllerConfig {
            cluster: ClusterName::new("c"),
            gc_interval: Duration::from_millis(10),
            gc_grace: Duration::ZERO,
            ..ControllerConfig::default()
        }
    }

    /// A Service store that has (or, with `None`, has not yet) listed.
    fn store(listed: Option<Vec<Service>>) -> (Store<Service>, reflector::store::Writer<Service>) {
        let (reader, mut writer) = reflector::store();
        if let Some(services) = listed {
            writer.apply_watcher_event(&watcher::Event::Init);
            for s in services {
                writer.apply_watcher_event(&watcher::Event::InitApply(s));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        (reader, writer)
    }

    fn list_passes(provider: &RecordingProvider) -> usize {
        provider
            .calls()
            .iter()
            .filter(|c| c.op == Op::ListOwned)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn collection_waits_for_the_service_cache() {
        let config = gc_config();
        let web = svc("default", "web")
            .lb()
            .port(80, 30080)
            .finalizer(LB_FINALIZER)
            .build();
        let provider = RecordingProvider::new();
        let key = plan::key_of(&web, &config);
        provider.insert(LoadBalancerSpec::new(key.clone()));
        let (services, mut writer) = store(None);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_gc(
            services,
            Arc::new(provider.clone()),
            config,
            Metrics::register(&mut Registry::default()),
            Arc::new(KeyLocks::default()),
            shutdown.clone(),
        ));
        // Time runs on while nothing else can happen: hundreds of intervals.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            list_passes(&provider),
            0,
            "no pass before the cache lists (an empty cache makes every balancer an orphan)"
        );
        assert!(provider.balancers().contains(&key));
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(web));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(list_passes(&provider) > 0, "passes run once it has listed");
        assert!(
            provider.balancers().contains(&key),
            "a balancer whose Service is in the cache stays"
        );
        shutdown.cancel();
        task.await.expect("gc task");
    }

    /// Everything a tracing subscriber writes, for asserting on log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }
    }

    #[tokio::test]
    async fn each_deletion_is_counted_and_logged() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let config = gc_config();
        let provider = RecordingProvider::new();
        let gone = key("gone");
        provider.insert(LoadBalancerSpec::new(gone.clone()));
        let (services, _writer) = store(Some(Vec::new()));
        let metrics = Metrics::register(&mut Registry::default());
        let locks = KeyLocks::default();
        let collector = Collector {
            services: &services,
            provider: &provider,
            config: &config,
            metrics: &metrics,
            locks: &locks,
        };
        let mut tracker = OrphanTracker::default();
        assert_eq!(collector.collect_once(&mut tracker).await, 1);
        assert!(provider.balancers().is_empty());
        assert_eq!(
            metrics.orphans_deleted.get(),
            1,
            "portico_orphans_deleted_total"
        );
        let text = logs.text();
        let line = text
            .lines()
            .find(|l| l.contains("OrphanedLoadBalancerDeleted"))
            .unwrap_or_else(|| panic!("no deletion line in:\n{text}"));
        for field in ["service=", "default/gone", "uid=uid-gone", "cluster=c"] {
            assert!(line.contains(field), "{field} missing from: {line}");
        }
        assert_eq!(
            collector.collect_once(&mut tracker).await,
            0,
            "nothing left to delete"
        );
        assert_eq!(metrics.orphans_deleted.get(), 1);
    }

    #[tokio::test]
    async fn the_collector_calls_the_provider_only_under_the_services_lock() {
        let config = gc_config();
        let provider = RecordingProvider::new();
        provider.insert(LoadBalancerSpec::new(key("gone")));
        provider.set_latency(Duration::from_millis(300));
        let (services, _writer) = store(Some(Vec::new()));
        let metrics = Metrics::register(&mut Registry::default());
        let locks = KeyLocks::default();
        let collector = Collector {
            services: &services,
            provider: &provider,
            config: &config,
            metrics: &metrics,
            locks: &locks,
        };
        let mut tracker = OrphanTracker::default();
        let pass = collector.collect_once(&mut tracker);
        let check = async {
            // list_owned, then the delete: in flight now.
            while provider.started() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                locks.is_held("default", "gone"),
                "the delete runs without the Service's lock"
            );
        };
        let (deleted, ()) = tokio::join!(pass, check);
        assert_eq!(deleted, 1);
    }

    fn key(name: &str) -> LoadBalancerKey {
        LoadBalancerKey::new(
            ClusterName::new("c"),
            "default",
            name,
            format!("uid-{name}"),
        )
    }

    #[test]
    fn orphans_wait_out_the_grace_period_and_are_bounded_per_pass() {
        let grace = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut tracker = OrphanTracker::default();
        // (what happens, orphans this pass, seconds since t0, max per pass, deleted)
        type Step<'a> = (&'a str, Vec<&'a str>, Duration, usize, Vec<&'a str>);
        let steps: Vec<Step<'_>> = vec![
            (
                "first sight deletes nothing",
                vec!["a", "b", "c"],
                Duration::ZERO,
                10,
                vec![],
            ),
            (
                "before the grace period, nothing",
                vec!["a", "b", "c"],
                Duration::from_secs(120),
                10,
                vec![],
            ),
            (
                "b came back (its Service reappeared): forgotten",
                vec!["a", "c"],
                Duration::from_secs(200),
                10,
                vec![],
            ),
            (
                "after the grace period, at most 1 per pass, oldest first",
                vec!["a", "c", "d"],
                Duration::from_secs(301),
                1,
                vec!["a"],
            ),
            (
                "b is orphaned again: its clock starts over",
                vec!["a", "b", "c", "d"],
                Duration::from_secs(400),
                10,
                vec!["a", "c"],
            ),
            (
                "d's grace ends later",
                vec!["b", "d"],
                Duration::from_secs(601),
                10,
                vec!["d"],
            ),
            ("then b", vec!["b"], Duration::from_secs(700), 10, vec!["b"]),
        ];
        for (desc, orphans, at, max, want) in steps {
            let due = tracker.due(orphans.iter().map(|n| key(n)), t0 + at, grace, max);
            let got: Vec<String> = due.iter().map(|k| k.name.clone()).collect();
            assert_eq!(got, want, "{desc}");
        }
    }
}
