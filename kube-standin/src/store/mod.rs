//! The object store: every object as JSON in memory under one global
//! resourceVersion. No HTTP here.
//!
//! [`Store`] is the handle; each verb lives beside the rules it follows:
//! `objects` (create, get, replace, patch, delete), `metadata` (what the
//! server sets on every object), `list` (selectors and pagination), `watch`
//! (event history, replay and fan-out) and `strategy` (what single resources
//! add, such as Service defaulting).

mod list;
mod metadata;
mod objects;
mod strategy;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::StandinError;
use crate::patch::Owners;
use crate::resources::{Registry, ResourceKey, ResourceType};

pub use list::{ListPage, ListParams, list_body};
pub use objects::{DeleteOptions, Preconditions, WriteOptions};
pub use watch::{EventType, HISTORY_LIMIT, StoredEvent, WATCH_BUFFER, WatchFrom, WatchStart};

/// Namespaces that exist from the start.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Where an object lives in its resource's bucket: (namespace, name), the
/// namespace empty for cluster-scoped resources. Buckets are ordered by it,
/// which is the order of lists and continue tokens.
type ObjName = (String, String);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rv: u64,
    objects: BTreeMap<ResourceKey, BTreeMap<ObjName, Value>>,
    /// Server-side apply field ownership, per object.
    owners: HashMap<(ResourceKey, String, String), Owners>,
    feed: watch::Feed,
}

/// The object store. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store with the initial namespaces.
    pub fn new() -> Store {
        let store = Store {
            inner: Arc::new(Mutex::new(Inner {
                registry: Registry::default(),
                rv: 0,
                objects: BTreeMap::new(),
                owners: HashMap::new(),
                feed: watch::Feed::default(),
            })),
        };
        match store.resolve("namespaces") {
            Ok(namespaces) => {
                for ns in INITIAL_NAMESPACES {
                    let obj = json!({"metadata": {"name": ns}});
                    if let Err(e) = store.create(&namespaces, "", obj, &WriteOptions::default()) {
                        tracing::error!(error = %e, namespace = ns, "creating an initial namespace");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "no namespaces resource"),
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic while holding the lock leaves consistent-enough data
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the resource table.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Resolve a kubectl-style resource name (`services`, `svc`,
    /// `leases.coordination.k8s.io`) to the resource every other method takes.
    pub fn resolve(&self, resource: &str) -> Result<ResourceType, StandinError> {
        self.lock()
            .registry
            .resolve(resource)
            .cloned()
            .ok_or_else(|| StandinError::UnknownResource(resource.to_string()))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }
}

/// `metadata.resourceVersion`, when set and not empty.
fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// A `resourceVersion` from a request.
pub(crate) fn parse_rv(s: &str) -> Result<u64, StandinError> {
    s.parse::<u64>()
        .map_err(|_| StandinError::BadRequest(format!("invalid resource version {s:?}")))
}

/// A 422 naming one field of the object `name`.
fn meta_invalid(rt: &ResourceType, name: &str, field: &str, msg: &str) -> StandinError {
    StandinError::Invalid {
        kind: rt.kind.clone(),
        name: name.to_string(),
        causes: vec![(field.to_string(), msg.to_string())],
    }
}
