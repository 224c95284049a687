//! The object store: objects as JSON, one global resourceVersion, a bounded
//! event history and the watch fan-out. No HTTP here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::StandinError;
use crate::defaults;
use crate::patch::{self, Owners, PatchType};
use crate::resources::{Registry, ResourceKey, ResourceType};
use crate::selectors::Selectors;

/// Events kept for watch replay before the oldest are forgotten.
pub const HISTORY_LIMIT: usize = 10_000;
/// Events buffered per watcher; a watcher that falls this far behind is
/// disconnected (it must re-list, as with a real server).
pub const WATCH_BUFFER: usize = 1_024;
/// Namespaces that exist from the start.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

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

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The items.
    pub items: Vec<Value>,
    /// The list's resourceVersion.
    pub rv: u64,
    /// The continue token, when there are more items.
    pub continue_token: Option<String>,
}

/// List parameters.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// Selectors.
    pub selectors: Selectors,
    /// Page size (`None` or 0: everything).
    pub limit: Option<usize>,
    /// A continue token from a previous page.
    pub continue_token: Option<String>,
    /// The `resourceVersion` parameter.
    pub resource_version: Option<String>,
    /// The `resourceVersionMatch` parameter.
    pub resource_version_match: Option<String>,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and compute, do not store.
    pub dry_run: bool,
    /// Write the status subresource.
    pub status: bool,
    /// The field manager (server-side apply).
    pub field_manager: Option<String>,
    /// `force` (server-side apply).
    pub force: bool,
    /// Strip `.status` on create for resources with a status subresource
    /// (what the HTTP API does; direct store writes keep it).
    pub reset_status_on_create: bool,
    /// Require the namespace to exist on create.
    pub require_namespace: bool,
}

/// Preconditions of a delete.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// Required `metadata.uid`.
    pub uid: Option<String>,
    /// Required `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

type ObjName = (String, String);

#[derive(Debug)]
struct Watcher {
    resource: ResourceKey,
    tx: mpsc::Sender<Arc<StoredEvent>>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rv: u64,
    /// Watches and continue tokens at or after this RV are served; older → 410.
    compacted_rv: u64,
    objects: BTreeMap<ResourceKey, BTreeMap<ObjName, Value>>,
    owners: HashMap<(ResourceKey, String, String), Owners>,
    history: VecDeque<Arc<StoredEvent>>,
    watchers: Vec<Watcher>,
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

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn parse_rv(s: &str) -> Result<u64, StandinError> {
    s.parse::<u64>()
        .map_err(|_| StandinError::BadRequest(format!("invalid resource version {s:?}")))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Drop empty metadata lists/maps (the real server omits them) and
/// `managedFields` (not tracked).
pub fn normalise(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.retain(|k, v| {
            let empty = match v {
                Value::Null => true,
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::String(s) => s.is_empty() && k != "name",
                _ => false,
            };
            !empty
        });
    }
}

/// Whether two stored objects differ, ignoring `metadata.resourceVersion`.
fn differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        v
    };
    strip(a) != strip(b)
}

/// Whether anything besides metadata and status changed (bumps generation).
fn spec_differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(a) != strip(b)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `metadata.generation` is kept: for resources with a status
/// subresource, except the core kinds whose real strategy sets none.
fn tracks_generation(rt: &ResourceType) -> bool {
    rt.has_status
        && !(rt.group.is_empty()
            && matches!(rt.plural.as_str(), "services" | "nodes" | "namespaces"))
}

fn meta_invalid(rt: &ResourceType, name: &str, field: &str, msg: &str) -> StandinError {
    StandinError::Invalid {
        kind: rt.kind.clone(),
        name: name.to_string(),
        causes: vec![(field.to_string(), msg.to_string())],
    }
}

fn not_found(rt: &ResourceType, name: &str) -> StandinError {
    StandinError::NotFound {
        resource: rt.qualified_name(),
        name: name.to_string(),
    }
}

fn conflict(rt: &ResourceType, name: &str) -> StandinError {
    StandinError::Conflict(format!(
        "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
        rt.qualified_name()
    ))
}

impl Inner {
    fn bucket(&mut self, key: &ResourceKey) -> &mut BTreeMap<ObjName, Value> {
        self.objects.entry(key.clone()).or_default()
    }

    fn lookup(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt.key())
            .and_then(|b| b.get(&(ns.to_string(), name.to_string())))
    }

    fn emit(
        &mut self,
        kind: EventType,
        resource: ResourceKey,
        object: Value,
        previous: Option<Value>,
    ) {
        let ev = Arc::new(StoredEvent {
            rv: self.rv,
            kind,
            resource,
            object,
            previous,
        });
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

    fn services_allocated(&self, except: Option<&ObjName>) -> defaults::Allocated {
        let key = ResourceKey {
            group: String::new(),
            plural: "services".into(),
        };
        let svcs = self.objects.get(&key);
        defaults::Allocated::from_services(
            svcs.into_iter()
                .flat_map(|b| b.iter())
                .filter(|(k, _)| Some(*k) != except)
                .map(|(_, v)| v),
        )
    }

    /// Hooks that run on every stored write of special resources.
    fn after_write(&mut self, rt: &ResourceType, obj: Option<&Value>, name: &str) {
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            match obj {
                Some(crd) => {
                    let rows = ResourceType::from_crd(crd);
                    self.registry.set_crd(name, rows);
                }
                None => {
                    if let Some((plural, group)) = name.split_once('.') {
                        let key = ResourceKey {
                            group: group.to_string(),
                            plural: plural.to_string(),
                        };
                        self.objects.remove(&key);
                        self.watchers.retain(|w| w.resource != key);
                    }
                    self.registry.remove_crd(name);
                }
            }
        }
    }

    fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        if !obj.is_object() {
            return Err(StandinError::BadRequest(
                "the object must be a JSON object".into(),
            ));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let ns = if rt.namespaced { ns } else { "" };
        if rt.namespaced {
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(StandinError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
            if opts.require_namespace {
                let nsrt = self.registry.find("", "v1", "namespaces").cloned();
                if let Some(nsrt) = nsrt
                    && self.lookup(&nsrt, "", ns).is_none()
                {
                    return Err(not_found(&nsrt, ns));
                }
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|s| !s.is_empty())
            else {
                return Err(meta_invalid(
                    rt,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            };
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            name = format!("{prefix}{suffix}");
            obj["metadata"]["name"] = json!(name);
        }
        if !valid_name(&name) {
            return Err(meta_invalid(
                rt,
                &name,
                "metadata.name",
                &format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if rt.group == "events.k8s.io" && rt.plural == "events" {
            defaults::event(ns, &obj)?;
        }
        if self.lookup(rt, ns, &name).is_some() {
            return Err(StandinError::AlreadyExists {
                resource: rt.qualified_name(),
                name,
            });
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            if tracks_generation(rt) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if rt.has_status
            && opts.reset_status_on_create
            && rt.plural != "nodes"
            && rt.plural != "namespaces"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        normalise(&mut obj);
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "services") => {
                let alloc = self.services_allocated(None);
                defaults::service(&mut obj, None, alloc)?;
            }
            ("", "namespaces") => {
                obj["status"] = json!({"phase": "Active"});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => crd_status(&mut obj),
            _ => {}
        }
        if opts.dry_run {
            return Ok(obj);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.bucket(&rt.key())
            .insert((ns.to_string(), name.clone()), obj.clone());
        self.emit(EventType::Added, rt.key(), obj.clone(), None);
        self.after_write(rt, Some(&obj), &name);
        Ok(obj)
    }

    /// Store `new` as the next state of the existing `old` object.
    fn write(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        if !new.is_object() {
            return Err(StandinError::BadRequest(
                "the object must be a JSON object".into(),
            ));
        }
        if let Some(want) = rv_of(&new)
            && Some(want) != rv_of(&old)
        {
            return Err(conflict(rt, name));
        }
        if let Some(n) = new["metadata"]["name"].as_str()
            && n != name
        {
            return Err(StandinError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if opts.status {
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if merged["status"].is_null()
                && let Some(m) = merged.as_object_mut()
            {
                m.remove("status");
            }
            new = merged;
        } else if rt.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        // server-managed fields come from the stored object
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
            "resourceVersion",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        normalise(&mut new);
        if old["metadata"]["deletionTimestamp"].is_string() {
            let before: Vec<&Value> = old["metadata"]["finalizers"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let added = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| !before.contains(&f));
            if added {
                return Err(meta_invalid(
                    rt,
                    name,
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        let key: ObjName = (ns.to_string(), name.to_string());
        if rt.group.is_empty() && rt.plural == "services" && opts.status {
            defaults::service_status(&mut new)?;
        }
        if rt.group.is_empty() && rt.plural == "services" && !opts.status {
            // A metadata-only write (finalizers, labels) keeps the spec, so
            // nothing can clash: skip the scan of every Service's allocations,
            // which made a controller's finalizer patches O(Services) each.
            let alloc = if new["spec"] == old["spec"] {
                defaults::Allocated::default()
            } else {
                self.services_allocated(Some(&key))
            };
            defaults::service(&mut new, Some(&old), alloc)?;
        }
        if rt.group == "apiextensions.k8s.io"
            && rt.plural == "customresourcedefinitions"
            && !opts.status
        {
            crd_status(&mut new);
        }
        if !differs(&old, &new) {
            return Ok(old);
        }
        if tracks_generation(rt) && spec_differs(&old, &new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if opts.dry_run {
            return Ok(new);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let finalizing = new["metadata"]["deletionTimestamp"].is_string()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if finalizing {
            self.bucket(&rt.key()).remove(&key);
            self.owners
                .remove(&(rt.key(), ns.to_string(), name.to_string()));
            self.emit(EventType::Deleted, rt.key(), new.clone(), None);
            self.after_write(rt, None, name);
        } else {
            self.bucket(&rt.key()).insert(key, new.clone());
            self.emit(EventType::Modified, rt.key(), new.clone(), Some(old));
            self.after_write(rt, Some(&new), name);
        }
        Ok(new)
    }
}

fn crd_status(obj: &mut Value) {
    let names = obj["spec"]["names"].clone();
    let stored: Vec<Value> = obj["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": obj["metadata"]["creationTimestamp"]},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": obj["metadata"]["creationTimestamp"]},
        ],
    });
}

impl Store {
    /// An empty store with the initial namespaces.
    pub fn new() -> Store {
        let store = Store {
            inner: Arc::new(Mutex::new(Inner {
                registry: Registry::default(),
                rv: 0,
                compacted_rv: 0,
                objects: BTreeMap::new(),
                owners: HashMap::new(),
                history: VecDeque::new(),
                watchers: Vec::new(),
            })),
        };
        for ns in INITIAL_NAMESPACES {
            if let Err(e) = store.create("namespaces", "", json!({"metadata": {"name": ns}})) {
                tracing::error!(error = %e, "creating initial namespace");
            }
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
    /// `leases.coordination.k8s.io`).
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

    /// Close every open watch stream.
    pub fn disconnect_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Forget the event history: watches (and continue tokens) from any
    /// resourceVersion older than the current one get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted_rv = inner.rv;
    }

    /// Number of open watches (for tests).
    pub fn watch_count(&self) -> usize {
        let mut inner = self.lock();
        inner.watchers.retain(|w| !w.tx.is_closed());
        inner.watchers.len()
    }

    // ---- direct access for tests (kubectl-style resource names) ----

    /// Create an object (status is kept as given).
    pub fn create(
        &self,
        resource: &str,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, StandinError> {
        let rt = self.resolve(resource)?;
        self.create_typed(&rt, namespace, obj, &WriteOptions::default())
    }

    /// Get an object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = self.resolve(resource).ok()?;
        self.get_typed(&rt, namespace, name).ok()
    }

    /// All objects of a resource, optionally in one namespace.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(rt) = self.resolve(resource) else {
            return Vec::new();
        };
        let params = ListParams {
            namespace: namespace.map(str::to_string),
            ..ListParams::default()
        };
        self.list_typed(&rt, &params)
            .map(|p| p.items)
            .unwrap_or_default()
    }

    /// Replace an object (its `.status` is ignored for resources with a
    /// status subresource; use [`Store::update_status`]).
    pub fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, StandinError> {
        let rt = self.resolve(resource)?;
        self.replace_typed(&rt, namespace, name, obj, &WriteOptions::default())
    }

    /// Replace an object's `.status`.
    pub fn update_status(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, StandinError> {
        let rt = self.resolve(resource)?;
        let opts = WriteOptions {
            status: true,
            ..WriteOptions::default()
        };
        self.replace_typed(&rt, namespace, name, obj, &opts)
    }

    /// Merge-patch an object (RFC 7386).
    pub fn merge_patch(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, StandinError> {
        let rt = self.resolve(resource)?;
        self.patch_typed(
            &rt,
            namespace,
            name,
            PatchType::Merge,
            &patch,
            &WriteOptions::default(),
        )
        .map(|(v, _)| v)
    }

    /// Delete an object (sets `deletionTimestamp` if it has finalizers).
    pub fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StandinError> {
        let rt = self.resolve(resource)?;
        self.delete_typed(&rt, namespace, name, &Preconditions::default(), false)
    }

    // ---- typed API used by the HTTP layer ----

    /// Create.
    pub fn create_typed(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        self.lock().create(rt, ns, obj, opts)
    }

    /// Get.
    pub fn get_typed(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<Value, StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        self.lock()
            .lookup(rt, ns, name)
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }

    /// List one page.
    pub fn list_typed(&self, rt: &ResourceType, p: &ListParams) -> Result<ListPage, StandinError> {
        let inner = self.lock();
        let (rv, after) = match &p.continue_token {
            Some(tok) if !tok.is_empty() => {
                let decoded = unhex(tok)
                    .ok_or_else(|| StandinError::BadRequest("invalid continue token".into()))?;
                let mut parts = decoded.splitn(3, '/');
                let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(StandinError::BadRequest("invalid continue token".into()));
                };
                let rv = parse_rv(rv)?;
                if rv < inner.compacted_rv {
                    return Err(StandinError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                    ));
                }
                (rv, Some((ns.to_string(), name.to_string())))
            }
            _ => {
                if let Some(want) = p.resource_version.as_deref().filter(|s| !s.is_empty()) {
                    let want = parse_rv(want)?;
                    if p.resource_version_match.as_deref() == Some("Exact") && want != inner.rv {
                        return Err(StandinError::Expired(format!(
                            "too old resource version: {want} ({})",
                            inner.rv
                        )));
                    }
                }
                (inner.rv, None)
            }
        };
        let ns = if rt.namespaced {
            p.namespace.as_deref()
        } else {
            None
        };
        let limit = p.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = None;
        if let Some(bucket) = inner.objects.get(&rt.key()) {
            let iter = bucket.iter().filter(|(k, _)| match &after {
                Some(a) => *k > a,
                None => true,
            });
            for ((ons, oname), obj) in iter {
                if ns.is_some_and(|n| n != ons) || !p.selectors.matches(obj) {
                    continue;
                }
                if items.len() == limit {
                    more = Some((ons.clone(), oname.clone()));
                    break;
                }
                items.push(obj.clone());
            }
        }
        let continue_token = more.and_then(|_| {
            let last = items.last()?;
            let lns = last["metadata"]["namespace"].as_str().unwrap_or("");
            let lname = last["metadata"]["name"].as_str().unwrap_or("");
            Some(hex(&format!("{rv}/{lns}/{lname}")))
        });
        Ok(ListPage {
            items,
            rv,
            continue_token,
        })
    }

    /// Replace (PUT) an object or its status.
    pub fn replace_typed(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.lock();
        let old = inner
            .lookup(rt, ns, name)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        if rt.namespaced
            && let Some(n) = obj["metadata"]["namespace"].as_str()
            && !n.is_empty()
            && n != ns
        {
            return Err(StandinError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        // Leases (like most objects whose strategy refuses unconditional
        // updates) must name the resourceVersion they replace.
        if rt.group == "coordination.k8s.io" && rt.plural == "leases" && rv_of(&obj).is_none() {
            return Err(meta_invalid(
                rt,
                name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            ));
        }
        let before = old.clone();
        let out = inner.write(rt, ns, name, old, obj, opts)?;
        if !opts.dry_run
            && let Some(o) = inner
                .owners
                .get_mut(&(rt.key(), ns.to_string(), name.to_string()))
        {
            patch::disown_changed(o, &before, &out);
        }
        Ok(out)
    }

    /// Patch an object or its status. Returns the object and whether it was
    /// created (server-side apply of a missing object).
    pub fn patch_typed(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &Value,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.lock();
        let okey = (rt.key(), ns.to_string(), name.to_string());
        let Some(old) = inner.lookup(rt, ns, name).cloned() else {
            if ty != PatchType::Apply || opts.status {
                return Err(not_found(rt, name));
            }
            let mut obj = body.clone();
            if !obj.is_object() {
                return Err(StandinError::BadRequest(
                    "apply configuration must be an object".into(),
                ));
            }
            obj["metadata"]["name"] = json!(name);
            let mut owners = Owners::new();
            let mut scratch = json!({});
            let manager = opts.field_manager.clone().unwrap_or_default();
            patch::apply_config(&mut scratch, &mut owners, body, &manager, true);
            let created = inner.create(rt, ns, obj, opts)?;
            if !opts.dry_run {
                inner.owners.insert(okey, owners);
            }
            return Ok((created, true));
        };
        let mut new = old.clone();
        let mut owners = inner.owners.get(&okey).cloned().unwrap_or_default();
        if ty == PatchType::Apply {
            let manager = opts
                .field_manager
                .clone()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| StandinError::BadRequest("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into()))?;
            for (field, want) in [
                ("apiVersion", body.get("apiVersion")),
                ("kind", body.get("kind")),
            ] {
                if want.is_none_or(|v| v.as_str().is_none_or(str::is_empty)) {
                    return Err(StandinError::BadRequest(format!(
                        "{field} must be set in an apply configuration"
                    )));
                }
            }
            let conflicts = patch::apply_config(&mut new, &mut owners, body, &manager, opts.force);
            if !conflicts.is_empty() {
                return Err(StandinError::Conflict(format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                )));
            }
        } else {
            patch::apply_patch(ty, &mut new, body)?;
            patch::disown_changed(&mut owners, &old, &new);
        }
        let out = inner.write(rt, ns, name, old, new, opts)?;
        if !opts.dry_run && inner.lookup(rt, ns, name).is_some() {
            inner.owners.insert(okey, owners);
        }
        Ok((out, false))
    }

    /// Delete an object; with finalizers it is only marked. Returns the
    /// object's last (or current) state.
    pub fn delete_typed(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.lock();
        let old = inner
            .lookup(rt, ns, name)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        if let Some(uid) = pre.uid.as_deref()
            && old["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(StandinError::Conflict(format!(
                "Operation cannot be fulfilled on {} {name:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                rt.qualified_name(),
                old["metadata"]["uid"].as_str().unwrap_or("")
            )));
        }
        if let Some(want) = pre.resource_version.as_deref()
            && rv_of(&old) != Some(want)
        {
            return Err(conflict(rt, name));
        }
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if has_finalizers {
            if old["metadata"]["deletionTimestamp"].is_string() || dry_run {
                return Ok(old);
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            inner.rv += 1;
            new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            inner
                .bucket(&rt.key())
                .insert((ns.to_string(), name.to_string()), new.clone());
            inner.emit(EventType::Modified, rt.key(), new.clone(), Some(old));
            return Ok(new);
        }
        if dry_run {
            return Ok(old);
        }
        let mut gone = old;
        inner.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner
            .bucket(&rt.key())
            .remove(&(ns.to_string(), name.to_string()));
        inner
            .owners
            .remove(&(rt.key(), ns.to_string(), name.to_string()));
        inner.emit(EventType::Deleted, rt.key(), gone.clone(), None);
        inner.after_write(rt, None, name);
        Ok(gone)
    }

    /// Open a watch on a resource. Filtering by namespace and selectors is
    /// the caller's job ([`StoredEvent::project`]).
    pub fn watch_typed(
        &self,
        rt: &ResourceType,
        from: WatchFrom,
    ) -> Result<WatchStart, StandinError> {
        let mut inner = self.lock();
        let key = rt.key();
        let initial: Vec<Arc<StoredEvent>> = match from {
            WatchFrom::Rv(rv) => {
                if rv < inner.compacted_rv {
                    return Err(StandinError::Expired(format!(
                        "too old resource version: {rv} ({})",
                        inner.compacted_rv
                    )));
                }
                inner
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
        inner.watchers.push(Watcher { resource: key, tx });
        Ok(WatchStart {
            initial,
            live,
            rv: inner.rv,
        })
    }
}

/// A `{kind: XList}` body for a page.
pub fn list_body(rt: &ResourceType, page: ListPage) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(page.rv.to_string()));
    if let Some(c) = page.continue_token {
        meta.insert("continue".into(), json!(c));
    }
    json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": meta,
        "items": page.items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": name}},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    #[test]
    fn rv_bumps_only_on_change() {
        let s = Store::new();
        let created = s.create("services", "default", svc("a")).expect("create");
        let rv0 = s.resource_version();
        assert_eq!(
            created["metadata"]["resourceVersion"],
            json!(rv0.to_string())
        );
        // same content: no bump
        let same = s
            .update("services", "default", "a", created.clone())
            .expect("update");
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        assert_eq!(s.resource_version(), rv0);
        let p = s
            .merge_patch(
                "services",
                "default",
                "a",
                json!({"metadata": {"labels": {"x": "y"}}}),
            )
            .expect("patch");
        assert_eq!(s.resource_version(), rv0 + 1);
        assert_eq!(
            p["metadata"]["generation"],
            Value::Null,
            "Services carry no generation, as on the real server"
        );
        let p = s
            .merge_patch(
                "services",
                "default",
                "a",
                json!({"spec": {"sessionAffinity": "ClientIP"}}),
            )
            .expect("patch");
        assert_eq!(p["metadata"]["generation"], Value::Null);
        assert_eq!(s.resource_version(), rv0 + 2);
    }

    #[test]
    fn stale_rv_conflicts() {
        let s = Store::new();
        let created = s
            .create(
                "configmaps",
                "default",
                json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            )
            .expect("create");
        let mut upd = created.clone();
        upd["data"]["a"] = json!("2");
        s.update("configmaps", "default", "c", upd.clone())
            .expect("first update");
        assert!(matches!(
            s.update("configmaps", "default", "c", upd),
            Err(StandinError::Conflict(_))
        ));
    }

    #[test]
    fn finalizers_delay_delete() {
        let s = Store::new();
        let mut o = svc("f");
        o["metadata"]["finalizers"] = json!(["x/y"]);
        s.create("services", "default", o).expect("create");
        let d = s.delete("services", "default", "f").expect("delete");
        assert!(d["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get("services", "default", "f").is_some());
        // adding a finalizer now is forbidden
        assert!(
            s.merge_patch(
                "services",
                "default",
                "f",
                json!({"metadata": {"finalizers": ["x/y", "z"]}})
            )
            .is_err()
        );
        s.merge_patch(
            "services",
            "default",
            "f",
            json!({"metadata": {"finalizers": null}}),
        )
        .expect("patch");
        assert!(s.get("services", "default", "f").is_none());
    }

    #[test]
    fn pagination_and_continue() {
        let s = Store::new();
        for i in 0..7 {
            s.create(
                "configmaps",
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .expect("create");
        }
        let rt = s.resolve("cm").expect("rt");
        let mut params = ListParams {
            namespace: Some("default".into()),
            limit: Some(3),
            ..ListParams::default()
        };
        let mut names = Vec::new();
        let mut first_rv = None;
        loop {
            let page = s.list_typed(&rt, &params).expect("list");
            first_rv.get_or_insert(page.rv);
            assert_eq!(Some(page.rv), first_rv);
            names.extend(
                page.items
                    .iter()
                    .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string()),
            );
            // a change between pages does not change the list RV
            s.create(
                "configmaps",
                "other",
                json!({"metadata": {"name": format!("x{}", names.len())}}),
            )
            .ok();
            match page.continue_token {
                Some(c) => params.continue_token = Some(c),
                None => break,
            }
        }
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    }

    #[test]
    fn watch_replay_and_compaction() {
        let s = Store::new();
        let rt = s.resolve("svc").expect("rt");
        let a = s.create("services", "default", svc("a")).expect("create");
        let rv_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        s.create("services", "default", svc("b")).expect("create");
        s.delete("services", "default", "a").expect("delete");
        let w = s.watch_typed(&rt, WatchFrom::Rv(rv_a)).expect("watch");
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
            s.watch_typed(&rt, WatchFrom::Rv(rv_a)),
            Err(StandinError::Expired(_))
        ));
        assert!(
            s.watch_typed(&rt, WatchFrom::Rv(s.resource_version()))
                .is_ok()
        );
    }

    #[test]
    fn lagging_watcher_is_disconnected() {
        let s = Store::new();
        let rt = s.resolve("cm").expect("rt");
        let mut w = s
            .watch_typed(&rt, WatchFrom::Rv(s.resource_version()))
            .expect("watch");
        for i in 0..(WATCH_BUFFER + 5) {
            s.create(
                "configmaps",
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
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
