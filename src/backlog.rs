//! The work queue's depth: Services handed to the controller (a Service
//! change that needs a sync, or a node change that moves its targets) and
//! not yet picked up by a worker. kube-runtime keeps its scheduler private,
//! so the controller counts what goes in and what workers take out.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;

use crate::k8s::{ObjectRef, Service, Store};

/// Services waiting for a worker, published on a gauge.
#[derive(Debug)]
pub struct Backlog {
    waiting: Mutex<HashSet<ObjectRef<Service>>>,
    gauge: Gauge,
}

impl Backlog {
    pub fn new(gauge: Gauge) -> Self {
        Self {
            waiting: Mutex::default(),
            gauge,
        }
    }

    /// A trigger for `service` went into the queue (kube-runtime merges
    /// repeated triggers, so a set counts it once, as the queue does).
    pub fn queued(&self, service: ObjectRef<Service>) {
        self.update(|waiting| {
            waiting.insert(service);
        });
    }

    /// A worker started reconciling `service`.
    pub fn started(&self, service: &ObjectRef<Service>) {
        self.update(|waiting| {
            waiting.remove(service);
        });
    }

    /// Forget Services deleted while they waited: the controller drops
    /// their triggers without a reconcile.
    pub fn forget_deleted(&self, store: &Store<Service>) {
        self.update(|waiting| waiting.retain(|s| store.get(s).is_some()));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectRef<Service>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut HashSet<ObjectRef<Service>>)) {
        let mut waiting = self.lock();
        change(&mut waiting);
        self.gauge
            .set(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::reflector;
    use kube::runtime::watcher::Event;

    fn svc_ref(name: &str) -> ObjectRef<Service> {
        ObjectRef::new(name).within("default")
    }

    #[test]
    fn counts_distinct_waiting_services() {
        let gauge = Gauge::default();
        let backlog = Backlog::new(gauge.clone());
        backlog.queued(svc_ref("a"));
        backlog.queued(svc_ref("a"));
        backlog.queued(svc_ref("b"));
        assert_eq!(gauge.get(), 2, "a repeated trigger is one queue entry");
        backlog.started(&svc_ref("a"));
        assert_eq!(gauge.get(), 1);
        backlog.started(&svc_ref("a"));
        assert_eq!(
            gauge.get(),
            1,
            "a requeue that was never counted changes nothing"
        );
    }

    #[test]
    fn deleted_services_are_forgotten() {
        let (store, mut writer) = reflector::store::<Service>();
        let kept = crate::builders::svc("default", "kept").lb().build();
        writer.apply_watcher_event(&Event::Apply(kept));
        let backlog = Backlog::new(Gauge::default());
        backlog.queued(svc_ref("kept"));
        backlog.queued(svc_ref("deleted"));
        backlog.forget_deleted(&store);
        assert_eq!(backlog.len(), 1);
        backlog.started(&svc_ref("kept"));
        assert!(backlog.is_empty());
    }
}
