//! Objects: create, get, replace, patch and delete with the semantics every
//! resource shares: one resourceVersion bump per stored change, optimistic
//! concurrency, writes that change nothing are not stored, `generation`
//! follows the spec, the status subresource, finalizers and
//! `deletionTimestamp`, server-side apply ownership, `dryRun`.
//!
//! The metadata rules are in `metadata`; what single resources add
//! (Service defaulting, CRDs, Leases, Events) is in `strategy`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Inner, ObjName, Store, metadata, rv_of, strategy};
use crate::StandinError;
use crate::patch::{self, Owners, PatchType};
use crate::resources::{ResourceKey, ResourceType};
use crate::store::EventType;

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
    /// Strip `.status` on create for resources with a status subresource, as
    /// the real server does (the HTTP layer sets it; a test seeding an object
    /// with its status leaves it unset).
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

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// What the object must still be.
    pub preconditions: Preconditions,
    /// `dryRun=All`: check, do not delete.
    pub dry_run: bool,
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

/// The key of an object's field ownership.
fn owners_key(rt: &ResourceType, ns: &str, name: &str) -> (ResourceKey, String, String) {
    (rt.key(), ns.to_string(), name.to_string())
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

    fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        metadata::check_object(&obj)?;
        let ns = metadata::assign_namespace(rt, ns, &mut obj)?;
        if rt.namespaced && opts.require_namespace {
            let nsrt = self.registry.find("", "v1", "namespaces").cloned();
            if let Some(nsrt) = nsrt
                && self.lookup(&nsrt, "", ns).is_none()
            {
                return Err(not_found(&nsrt, ns));
            }
        }
        let name = metadata::assign_name(rt, &mut obj)?;
        strategy::validate_create(rt, ns, &obj)?;
        if self.lookup(rt, ns, &name).is_some() {
            return Err(StandinError::AlreadyExists {
                resource: rt.qualified_name(),
                name,
            });
        }
        metadata::stamp_created(rt, &mut obj);
        if opts.reset_status_on_create
            && strategy::resets_status_on_create(rt)
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        metadata::normalise(&mut obj);
        self.prepare_create(rt, &mut obj)?;
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
        metadata::check_object(&new)?;
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
        metadata::carry_over(&old, &mut new);
        metadata::check_finalizers(rt, name, &old, &new)?;
        let key: ObjName = (ns.to_string(), name.to_string());
        self.prepare_update(rt, &key, &old, &mut new, opts.status)?;
        if !differs(&old, &new) {
            return Ok(old);
        }
        if strategy::tracks_generation(rt) && spec_differs(&old, &new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if opts.dry_run {
            return Ok(new);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        // the last finalizer of an object being deleted is gone: so is it
        let finalizing = new["metadata"]["deletionTimestamp"].is_string()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if finalizing {
            self.bucket(&rt.key()).remove(&key);
            self.owners.remove(&owners_key(rt, ns, name));
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

impl Store {
    /// Create an object in namespace `ns` (ignored for cluster-scoped
    /// resources).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, StandinError> {
        self.lock().create(rt, ns, obj, opts)
    }

    /// Get an object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        self.lock()
            .lookup(rt, ns, name)
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }

    /// Replace (PUT) an object, or its `.status` with
    /// [`WriteOptions::status`]. Without it, the `.status` of a resource
    /// with a status subresource is kept as stored.
    pub fn replace(
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
            return Err(metadata::namespace_mismatch());
        }
        strategy::validate_replace(rt, name, &obj)?;
        let before = old.clone();
        let out = inner.write(rt, ns, name, old, obj, opts)?;
        if !opts.dry_run
            && let Some(o) = inner.owners.get_mut(&owners_key(rt, ns, name))
        {
            patch::disown_changed(o, &before, &out);
        }
        Ok(out)
    }

    /// Patch an object or its status. Returns the object and whether it was
    /// created (server-side apply of a missing object).
    pub fn patch(
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
        let okey = owners_key(rt, ns, name);
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
                return Err(StandinError::ApplyConflict(conflicts));
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
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, StandinError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.lock();
        let old = inner
            .lookup(rt, ns, name)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        let pre = &opts.preconditions;
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
            if old["metadata"]["deletionTimestamp"].is_string() || opts.dry_run {
                return Ok(old);
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(metadata::now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            inner.rv += 1;
            new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            inner
                .bucket(&rt.key())
                .insert((ns.to_string(), name.to_string()), new.clone());
            inner.emit(EventType::Modified, rt.key(), new.clone(), Some(old));
            return Ok(new);
        }
        if opts.dry_run {
            return Ok(old);
        }
        let mut gone = old;
        inner.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner
            .bucket(&rt.key())
            .remove(&(ns.to_string(), name.to_string()));
        inner.owners.remove(&owners_key(rt, ns, name));
        inner.emit(EventType::Deleted, rt.key(), gone.clone(), None);
        inner.after_write(rt, None, name);
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": name}},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    fn merge_patch(
        s: &Store,
        rt: &ResourceType,
        name: &str,
        body: Value,
    ) -> Result<Value, StandinError> {
        s.patch(
            rt,
            "default",
            name,
            PatchType::Merge,
            &body,
            &WriteOptions::default(),
        )
        .map(|(object, _)| object)
    }

    #[test]
    fn rv_bumps_only_on_change() {
        let s = Store::new();
        let services = s.resolve("services").expect("services");
        let write = WriteOptions::default();
        let created = s
            .create(&services, "default", svc("a"), &write)
            .expect("create");
        let rv0 = s.resource_version();
        assert_eq!(
            created["metadata"]["resourceVersion"],
            json!(rv0.to_string())
        );
        // same content: no bump
        let same = s
            .replace(&services, "default", "a", created.clone(), &write)
            .expect("update");
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        assert_eq!(s.resource_version(), rv0);
        let p = merge_patch(
            &s,
            &services,
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
        let p = merge_patch(
            &s,
            &services,
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
        let configmaps = s.resolve("configmaps").expect("configmaps");
        let write = WriteOptions::default();
        let created = s
            .create(
                &configmaps,
                "default",
                json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
                &write,
            )
            .expect("create");
        let mut upd = created.clone();
        upd["data"]["a"] = json!("2");
        s.replace(&configmaps, "default", "c", upd.clone(), &write)
            .expect("first update");
        assert!(matches!(
            s.replace(&configmaps, "default", "c", upd, &write),
            Err(StandinError::Conflict(_))
        ));
    }

    #[test]
    fn finalizers_delay_delete() {
        let s = Store::new();
        let services = s.resolve("services").expect("services");
        let mut o = svc("f");
        o["metadata"]["finalizers"] = json!(["x/y"]);
        s.create(&services, "default", o, &WriteOptions::default())
            .expect("create");
        let d = s
            .delete(&services, "default", "f", &DeleteOptions::default())
            .expect("delete");
        assert!(d["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&services, "default", "f").is_ok());
        // adding a finalizer now is forbidden
        assert!(
            merge_patch(
                &s,
                &services,
                "f",
                json!({"metadata": {"finalizers": ["x/y", "z"]}})
            )
            .is_err()
        );
        merge_patch(
            &s,
            &services,
            "f",
            json!({"metadata": {"finalizers": null}}),
        )
        .expect("patch");
        assert!(matches!(
            s.get(&services, "default", "f"),
            Err(StandinError::NotFound { .. })
        ));
    }
}
