//! Watch: the bounded history of changes, replay from a resourceVersion (a
//! watch resumed after a disconnect) and the fan-out of every change to the
//! open watches of its resource.
//!
//! What a stream then sends (namespace and selector filtering through
//! [`StoredEvent::project`], BOOKMARKs, timeouts) is the HTTP layer's job.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use super::{Inner, Store, rv_of};
use crate::StandinError;
use crate::resources::{ResourceKey, ResourceType};
use crate::selectors::Selectors;

/// Events kept for watch replay before the oldest are forgotten.
pub const HISTORY_LIMIT: usize = 10_000;
/// Events buffered per watcher; a watcher that falls this far behind is
/// disconnected (it must re-list, as with a real server).
pub const WATCH_BUFFER: usize = 1_024;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created (or started matching the watch's selectors).
    Added,
    /// Object changed.
    Modified,
    /// Object removed (or stopped matching the watch's selectors).
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// Which resource.
    pub resource: ResourceKey,
    /// The object after the change (for deletions: the last state).
    pub object: Value,
    /// The object before the change, for MODIFIED.
    pub previous: Option<Value>,
}

impl StoredEvent {
    /// The event as a watch with namespace `ns` and `selectors` sees it:
    /// changes that make an object start or stop matching become ADDED or
    /// DELETED, changes of objects that never match are skipped.
    pub fn project(&self, ns: Option<&str>, selectors: &Selectors) -> Option<(EventType, &Value)> {
        let in_ns =
            |o: &Value| ns.is_none_or(|n| o["metadata"]["namespace"].as_str().unwrap_or("") == n);
        let now = in_ns(&self.object) && selectors.matches(&self.object);
        let before = self
            .previous
            .as_ref()
            .map(|p| in_ns(p) && selectors.matches(p));
        match (self.kind, before, now) {
            (EventType::Modified, Some(true), true) => Some((EventType::Modified, &self.object)),
            (EventType::Modified, Some(false), true) => Some((EventType::Added, &self.object)),
            (EventType::Modified, Some(true), false) => Some((EventType::Deleted, &self.object)),
            (EventType::Modified, _, _) => None,
            (kind, _, true) => Some((kind, &self.object)),
            (_, _, false) => None,
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// Replay every event after this resourceVersion.
    Rv(u64),
    /// Send the current objects as ADDED first (resourceVersion unset or `0`,
    /// or `sendInitialEvents=true`).
    Current,
}

/// An open watch.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to deliver before live ones.
    pub initial: Vec<Arc<StoredEvent>>,
    /// Live events of the resource (unfiltered). Ends when the watcher is
    /// disconnected (it lagged, or [`Store::disconnect_watches`]).
    pub live: mpsc::Receiver<Arc<StoredEvent>>,
    /// The resourceVersion when the watch was registered.
    pub rv: u64,
}

#[derive(Debug)]
struct Watcher {
    resource: ResourceKey,
    tx: mpsc::Sender<Arc<StoredEvent>>,
}

/// The event history and the open watches.
#[derive(Debug, Default)]
pub(super) struct Feed {
    history: VecDeque<Arc<StoredEvent>>,
    /// Watches and continue tokens at or after this resourceVersion are
    /// served; older ones get 410 Gone.
    compacted_rv: u64,
    watchers: Vec<Watcher>,
}

impl Feed {
    /// The oldest resourceVersion a watch or a continue token may start from.
    pub(super) fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    /// Keep `ev` for replay and send it to every watch of its resource; a
    /// watch whose buffer is full is disconnected.
    fn publish(&mut self, ev: StoredEvent) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = self.compacted_rv.max(old.rv);
            }
        }
        self.watchers.retain(|w| {
            if w.tx.is_closed() {
                return false;
            }
            if w.resource != ev.resource {
                return true;
            }
            match w.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(_) => {
                    tracing::info!(resource = ?w.resource, "watcher lagged or closed; disconnecting it");
                    false
                }
            }
        });
    }

    /// End every watch of `resource` (its CRD was deleted).
    pub(super) fn close(&mut self, resource: &ResourceKey) {
        self.watchers.retain(|w| w.resource != *resource);
    }
}

impl Inner {
    /// Record a change at the current resourceVersion and send it to the
    /// watches of its resource.
    pub(super) fn emit(
        &mut self,
        kind: EventType,
        resource: ResourceKey,
        object: Value,
        previous: Option<Value>,
    ) {
        self.feed.publish(StoredEvent {
            rv: self.rv,
            kind,
            resource,
            object,
            previous,
        });
    }
}

impl Store {
    /// Open a watch on a resource. Filtering by namespace and selectors is
    /// the caller's job ([`StoredEvent::project`]).
    pub fn watch(&self, rt: &ResourceType, from: WatchFrom) -> Result<WatchStart, StandinError> {
        let mut inner = self.lock();
        let key = rt.key();
        let initial: Vec<Arc<StoredEvent>> = match from {
            WatchFrom::Rv(rv) => {
                if rv < inner.feed.compacted_rv {
                    return Err(StandinError::Expired(format!(
                        "too old resource version: {rv} ({})",
                        inner.feed.compacted_rv
                    )));
                }
                inner
                    .feed
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.resource == key)
                    .cloned()
                    .collect()
            }
            WatchFrom::Current => inner
                .objects
                .get(&key)
                .into_iter()
                .flat_map(|b| b.values())
                .map(|o| {
                    Arc::new(StoredEvent {
                        rv: rv_of(o).and_then(|r| r.parse().ok()).unwrap_or(0),
                        kind: EventType::Added,
                        resource: key.clone(),
                        object: o.clone(),
                        previous: None,
                    })
                })
                .collect(),
        };
        let (tx, live) = mpsc::channel(WATCH_BUFFER);
        inner.feed.watchers.push(Watcher { resource: key, tx });
        Ok(WatchStart {
            initial,
            live,
            rv: inner.rv,
        })
    }

    /// Close every open watch stream.
    pub fn disconnect_watches(&self) {
        self.lock().feed.watchers.clear();
    }

    /// Forget the event history: watches (and continue tokens) from any
    /// resourceVersion older than the current one get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.feed.history.clear();
        inner.feed.compacted_rv = inner.rv;
    }

    /// Number of open watches (for tests).
    pub fn watch_count(&self) -> usize {
        let mut inner = self.lock();
        inner.feed.watchers.retain(|w| !w.tx.is_closed());
        inner.feed.watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{DeleteOptions, WriteOptions};

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": name}},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    #[test]
    fn watch_replay_and_compaction() {
        let s = Store::new();
        let rt = s.resolve("svc").expect("rt");
        let write = WriteOptions::default();
        let a = s.create(&rt, "default", svc("a"), &write).expect("create");
        let rv_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        s.create(&rt, "default", svc("b"), &write).expect("create");
        s.delete(&rt, "default", "a", &DeleteOptions::default())
            .expect("delete");
        let w = s.watch(&rt, WatchFrom::Rv(rv_a)).expect("watch");
        let kinds: Vec<_> = w
            .initial
            .iter()
            .map(|e| (e.kind, e.object["metadata"]["name"].clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Added, json!("b")),
                (EventType::Deleted, json!("a"))
            ]
        );
        s.compact();
        assert!(matches!(
            s.watch(&rt, WatchFrom::Rv(rv_a)),
            Err(StandinError::Expired(_))
        ));
        assert!(s.watch(&rt, WatchFrom::Rv(s.resource_version())).is_ok());
    }

    #[test]
    fn lagging_watcher_is_disconnected() {
        let s = Store::new();
        let rt = s.resolve("cm").expect("rt");
        let mut w = s
            .watch(&rt, WatchFrom::Rv(s.resource_version()))
            .expect("watch");
        for i in 0..(WATCH_BUFFER + 5) {
            s.create(
                &rt,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
                &WriteOptions::default(),
            )
            .expect("create");
        }
        let mut n = 0;
        while w.live.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, WATCH_BUFFER);
        assert!(matches!(
            w.live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn projection_by_selector() {
        let sel = Selectors::parse(Some("app=a"), None).expect("selector");
        let a = json!({"metadata": {"name": "s", "namespace": "default", "labels": {"app": "a"}}});
        let b = json!({"metadata": {"name": "s", "namespace": "default", "labels": {"app": "b"}}});
        let ev = |kind, object: &Value, previous: Option<&Value>| StoredEvent {
            rv: 1,
            kind,
            resource: ResourceKey {
                group: String::new(),
                plural: "services".into(),
            },
            object: object.clone(),
            previous: previous.cloned(),
        };
        let cases = [
            (
                "stays matching",
                ev(EventType::Modified, &a, Some(&a)),
                Some(EventType::Modified),
            ),
            (
                "starts matching",
                ev(EventType::Modified, &a, Some(&b)),
                Some(EventType::Added),
            ),
            (
                "stops matching",
                ev(EventType::Modified, &b, Some(&a)),
                Some(EventType::Deleted),
            ),
            ("never matches", ev(EventType::Modified, &b, Some(&b)), None),
            (
                "added",
                ev(EventType::Added, &a, None),
                Some(EventType::Added),
            ),
            ("deleted other", ev(EventType::Deleted, &b, None), None),
        ];
        for (desc, e, want) in cases {
            assert_eq!(
                e.project(Some("default"), &sel).map(|(k, _)| k),
                want,
                "{desc}"
            );
            assert_eq!(
                e.project(Some("other"), &Selectors::default())
                    .map(|(k, _)| k),
                None,
                "{desc}: namespace"
            );
        }
    }
}
