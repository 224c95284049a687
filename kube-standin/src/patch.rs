//! PATCH bodies: JSON merge patch, JSON patch, strategic merge patch and
//! server-side apply.
//!
//! Strategic merge patch is implemented as a merge patch plus the list
//! behaviour of the fields portico and kubectl touch (see [`merge_key`]):
//! lists with a known merge key merge element-wise, `metadata.finalizers`
//! merges as a set of strings (as `patchStrategy: merge` does upstream; use
//! `$deleteFromPrimitiveList/finalizers` or a JSON patch to remove one), every
//! other list is replaced. The directives `$patch` (`replace`, `delete`,
//! `merge`), `$retainKeys`, `$deleteFromPrimitiveList/…` and
//! `$setElementOrder/…` are understood (the last one is ignored).

use std::collections::{BTreeMap, BTreeSet};

use json_patch::PatchOperation;
use serde_json::{Map, Value};

use crate::StandinError;

/// The patch flavours of the Kubernetes API, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Parse a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }

    /// A short name: `json`, `merge`, `strategic`, `apply`.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchType::Json => "json",
            PatchType::Merge => "merge",
            PatchType::Strategic => "strategic",
            PatchType::Apply => "apply",
        }
    }
}

/// Parse a patch body (`apply` bodies may be YAML).
pub fn parse_body(ty: PatchType, body: &[u8]) -> Result<Value, StandinError> {
    let parsed = match ty {
        PatchType::Apply => serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string()),
        _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| StandinError::BadRequest(format!("invalid patch body: {e}")))
}

/// Apply a patch of type `ty` (not `Apply`, see [`apply_config`]) to `doc`.
pub fn apply_patch(ty: PatchType, doc: &mut Value, patch: &Value) -> Result<(), StandinError> {
    match ty {
        PatchType::Merge => {
            json_patch::merge(doc, patch);
            Ok(())
        }
        PatchType::Json => json_patch_lenient(doc, patch),
        PatchType::Strategic | PatchType::Apply => {
            strategic_merge(doc, patch, "");
            Ok(())
        }
    }
}

fn is_emptyish(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// RFC 6902 with one leniency the real server has: a `test` that expects
/// `null` (or an empty list/map) succeeds against an absent path, because the
/// server omits empty lists such as `metadata.finalizers`.
pub fn json_patch_lenient(doc: &mut Value, patch: &Value) -> Result<(), StandinError> {
    let ops: Vec<PatchOperation> = serde_json::from_value(patch.clone())
        .map_err(|e| StandinError::BadRequest(format!("invalid json patch: {e}")))?;
    let mut work = doc.clone();
    for op in &ops {
        if let PatchOperation::Test(t) = op
            && is_emptyish(&t.value)
            && work.pointer(t.path.as_str()).is_none_or(is_emptyish)
        {
            continue;
        }
        // As upstream: a plain 422 naming no field.
        json_patch::patch(&mut work, std::slice::from_ref(op)).map_err(|e| {
            StandinError::Invalid {
                kind: String::new(),
                name: String::new(),
                causes: vec![(
                    String::new(),
                    format!("the json patch could not be applied: {e}"),
                )],
            }
        })?;
    }
    *doc = work;
    Ok(())
}

/// The merge key of a list field at `path` (dotted, list indices dropped),
/// if strategic merge merges it element-wise.
pub fn merge_key(path: &str) -> Option<&'static [&'static str]> {
    match path {
        "status.conditions" | "status.addresses" => Some(&["type"]),
        // `port` alone, as upstream's `patchMergeKey` (a patch of 53/UDP
        // merges into the first port 53, whatever its protocol).
        "spec.ports" => Some(&["port"]),
        "metadata.ownerReferences" => Some(&["uid"]),
        "spec.taints" => Some(&["key", "effect"]),
        "spec.containers"
        | "spec.initContainers"
        | "spec.template.spec.containers"
        | "spec.template.spec.initContainers"
        | "spec.volumes"
        | "spec.template.spec.volumes" => Some(&["name"]),
        _ => None,
    }
}

/// Primitive lists that merge as sets (`patchStrategy: merge` on a `[]string`).
fn is_set_list(path: &str) -> bool {
    path == "metadata.finalizers"
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn same_key(a: &Value, b: &Value, keys: &[&str]) -> bool {
    keys.iter().all(|k| a[*k] == b[*k])
}

/// Strategic merge of `patch` into `doc`; `path` is the dotted path of `doc`.
pub fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) {
    let Some(pmap) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    match pmap.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = pmap.clone();
            m.remove("$patch");
            *doc = Value::Object(m);
            return;
        }
        Some("delete") => {
            *doc = Value::Null;
            return;
        }
        _ => {}
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(dmap) = doc.as_object_mut() else {
        return;
    };
    for (k, pv) in pmap {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (dmap.get_mut(field), pv.as_array()) {
                list.retain(|v| !del.contains(v));
            }
            continue;
        }
        let sub = join(path, k);
        if pv.is_null() {
            dmap.remove(k);
            continue;
        }
        match (dmap.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(dv, pv, &sub);
                if dv.is_null() {
                    dmap.remove(k);
                }
            }
            (Some(Value::Array(dl)), Value::Array(pl)) => {
                if let Some(keys) = merge_key(&sub) {
                    merge_list(dl, pl, keys, &sub);
                } else if is_set_list(&sub) {
                    for v in pl {
                        if !dl.contains(v) {
                            dl.push(v.clone());
                        }
                    }
                } else {
                    *dl = pl.clone();
                }
            }
            (_, _) => {
                let mut fresh = Value::Null;
                if pv.is_object() {
                    strategic_merge(&mut fresh, pv, &sub);
                } else if let Value::Array(pl) = pv {
                    // directives inside a fresh list: drop deletions
                    fresh = Value::Array(
                        pl.iter()
                            .filter(|e| e.get("$patch").is_none())
                            .cloned()
                            .collect(),
                    );
                } else {
                    fresh = pv.clone();
                }
                if !fresh.is_null() {
                    dmap.insert(k.clone(), fresh);
                }
            }
        }
    }
    if let Some(Value::Array(retain)) = pmap.get("$retainKeys") {
        let keep: BTreeSet<&str> = retain.iter().filter_map(Value::as_str).collect();
        dmap.retain(|k, _| keep.contains(k.as_str()));
    }
}

fn merge_list(dl: &mut Vec<Value>, pl: &[Value], keys: &[&str], path: &str) {
    if pl
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *dl = pl
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect();
        return;
    }
    for pe in pl {
        let pos = dl.iter().position(|de| same_key(de, pe, keys));
        let delete = pe.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                dl.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut dl[i], pe, path),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, pe, path);
                dl.push(fresh);
            }
        }
    }
}

/// A field an apply would take from another manager without `force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    /// Who owns it now.
    pub manager: String,
    /// The field, spelt as upstream's field paths (`.data.b`).
    pub field: String,
}

/// Field ownership of server-side apply: manager name → owned leaf paths
/// (JSON pointers). Lists are owned atomically.
pub type Owners = BTreeMap<String, BTreeSet<String>>;

fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

/// The leaf JSON pointers of an apply configuration, skipping identity fields.
pub fn leaf_paths(cfg: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    walk(c, &format!("{prefix}/{}", escape(k)), out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(cfg, "", &mut out);
    for skip in [
        "/apiVersion",
        "/kind",
        "/metadata/name",
        "/metadata/namespace",
        "/metadata/resourceVersion",
        "/metadata/uid",
        "",
    ] {
        out.remove(skip);
    }
    out
}

/// Remove the value at a JSON pointer, if present.
pub fn remove_pointer(doc: &mut Value, ptr: &str) {
    let Some((parent, last)) = ptr.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
        m.remove(&last);
    }
}

/// Server-side apply of `cfg` by `manager` onto `doc`, with minimal field
/// ownership: a field another manager applied with a different value is a
/// conflict unless `force`; fields the manager applied before and no longer
/// applies are removed when nobody else owns them. Returns the conflicting
/// paths (empty on success, in which case `doc` and `owners` are updated).
pub fn apply_config(
    doc: &mut Value,
    owners: &mut Owners,
    cfg: &Value,
    manager: &str,
    force: bool,
) -> Vec<ApplyConflict> {
    let paths = leaf_paths(cfg);
    let mut conflicts = Vec::new();
    for p in &paths {
        let cur = doc.pointer(p);
        let want = cfg.pointer(p);
        if cur.is_none() || cur == want {
            continue;
        }
        for (m, owned) in owners.iter() {
            if m != manager && owned.contains(p) {
                conflicts.push(ApplyConflict {
                    manager: m.clone(),
                    field: p.replace('/', "."),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return conflicts;
    }
    let previous = owners.get(manager).cloned().unwrap_or_default();
    for (m, owned) in owners.iter_mut() {
        if m != manager {
            for p in &paths {
                if doc.pointer(p) != cfg.pointer(p) {
                    owned.remove(p);
                }
            }
        }
    }
    strategic_merge(doc, cfg, "");
    for p in previous.difference(&paths) {
        let shared = owners
            .iter()
            .any(|(m, owned)| m != manager && owned.contains(p));
        if !shared {
            remove_pointer(doc, p);
        }
    }
    owners.insert(manager.to_string(), paths);
    owners.retain(|_, owned| !owned.is_empty());
    Vec::new()
}

/// After a non-apply write, drop ownership of every owned leaf whose value
/// changed (it now belongs to the writer, which is not tracked).
pub fn disown_changed(owners: &mut Owners, before: &Value, after: &Value) {
    for owned in owners.values_mut() {
        owned.retain(|p| before.pointer(p) == after.pointer(p));
    }
    owners.retain(|_, owned| !owned.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_null_on_absent_finalizers() {
        let mut doc = json!({"metadata": {"name": "a"}});
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}
        ]);
        json_patch_lenient(&mut doc, &patch).expect("patch applies");
        assert_eq!(doc["metadata"]["finalizers"], json!(["x"]));
        // index test and remove
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "x"},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ]);
        json_patch_lenient(&mut doc, &patch).expect("patch applies");
        assert_eq!(doc["metadata"]["finalizers"], json!([]));
        // a failing test leaves the document alone
        let before = doc.clone();
        let patch = json!([
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
            {"op": "test", "path": "/metadata/name", "value": "zzz"}
        ]);
        assert!(json_patch_lenient(&mut doc, &patch).is_err());
        assert_eq!(doc, before);
    }

    #[test]
    fn strategic_merge_table() {
        let cases = [
            (
                "conditions merge by type",
                json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}}),
                json!({"status": {"conditions": [{"type": "B", "status": "True"}, {"type": "C", "status": "True"}]}}),
                json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}, {"type": "C", "status": "True"}]}}),
            ),
            (
                "ports merge element-wise, other ports kept",
                json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}}),
                json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
                json!({"spec": {"ports": [{"port": 80, "nodePort": 30080, "name": "http"}, {"port": 443}]}}),
            ),
            (
                "the ports' merge key is the port alone: 53/UDP merges into the first 53 (TCP)",
                json!({"spec": {"ports": [{"port": 53, "protocol": "TCP", "name": "dns-tcp"}, {"port": 53, "protocol": "UDP", "name": "dns-udp"}]}}),
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP", "name": "dns"}]}}),
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP", "name": "dns"}, {"port": 53, "protocol": "UDP", "name": "dns-udp"}]}}),
            ),
            (
                "a port of another protocol is not added beside it",
                json!({"spec": {"ports": [{"port": 53, "protocol": "TCP"}]}}),
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}),
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}),
            ),
            (
                "delete directive in list",
                json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}}),
                json!({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}),
                json!({"spec": {"ports": [{"port": 443}]}}),
            ),
            (
                "finalizers union",
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": ["b", "a"]}}),
                json!({"metadata": {"finalizers": ["a", "b"]}}),
            ),
            (
                "deleteFromPrimitiveList",
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": ["b"]}}),
            ),
            (
                "other lists replace, null deletes",
                json!({"spec": {"externalIPs": ["1.1.1.1"], "x": 1}}),
                json!({"spec": {"externalIPs": ["2.2.2.2"], "x": null, "$setElementOrder/ports": []}}),
                json!({"spec": {"externalIPs": ["2.2.2.2"]}}),
            ),
            (
                "map replace directive",
                json!({"spec": {"selector": {"a": "1", "b": "2"}}}),
                json!({"spec": {"selector": {"c": "3", "$patch": "replace"}}}),
                json!({"spec": {"selector": {"c": "3"}}}),
            ),
        ];
        for (desc, mut doc, patch, want) in cases {
            strategic_merge(&mut doc, &patch, "");
            assert_eq!(doc, want, "{desc}");
        }
    }

    #[test]
    fn apply_conflicts_and_force() {
        let mut owners = Owners::new();
        let mut doc = json!({"metadata": {"name": "l"}, "spec": {}});
        let a = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}});
        assert!(apply_config(&mut doc, &mut owners, &a, "a", false).is_empty());
        // same values from another manager: shared, no conflict
        assert!(apply_config(&mut doc, &mut owners, &a, "c", false).is_empty());
        let b = json!({"spec": {"holderIdentity": "b"}});
        let conflicts = apply_config(&mut doc, &mut owners, &b, "b", false);
        let named: Vec<_> = conflicts
            .iter()
            .map(|c| (c.manager.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(
            named,
            [("a", ".spec.holderIdentity"), ("c", ".spec.holderIdentity")]
        );
        assert_eq!(doc["spec"]["holderIdentity"], "a");
        assert!(apply_config(&mut doc, &mut owners, &b, "b", true).is_empty());
        assert_eq!(doc["spec"]["holderIdentity"], "b");
        // a stops applying leaseDurationSeconds, but c still owns it
        let a2 = json!({"spec": {}});
        assert!(apply_config(&mut doc, &mut owners, &a2, "a", false).is_empty());
        assert_eq!(doc["spec"]["leaseDurationSeconds"], 10);
        // non-apply writes take ownership away
        let before = doc.clone();
        doc["spec"]["holderIdentity"] = json!(null);
        disown_changed(&mut owners, &before, &doc);
        let d = json!({"spec": {"holderIdentity": "d"}});
        assert!(apply_config(&mut doc, &mut owners, &d, "d", false).is_empty());
    }
}
