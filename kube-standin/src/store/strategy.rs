//! Per-resource rules, what the real server's registry strategies add to the
//! shared object semantics: Services are defaulted and allocated
//! ([`crate::defaults`]), `events.k8s.io` Events and Lease updates are
//! checked, Namespaces get their phase, a CustomResourceDefinition gets its
//! status and makes its resources served; which kinds keep
//! `metadata.generation` and which lose `.status` on create.

use serde_json::{Value, json};

use super::{Inner, ObjName, meta_invalid, rv_of};
use crate::StandinError;
use crate::defaults;
use crate::resources::{ResourceKey, ResourceType};

fn is(rt: &ResourceType, group: &str, plural: &str) -> bool {
    rt.group == group && rt.plural == plural
}

fn is_crd(rt: &ResourceType) -> bool {
    is(rt, "apiextensions.k8s.io", "customresourcedefinitions")
}

/// Whether `metadata.generation` is kept: for resources with a status
/// subresource, except the core kinds whose real strategy sets none.
pub(super) fn tracks_generation(rt: &ResourceType) -> bool {
    rt.has_status
        && !(rt.group.is_empty()
            && matches!(rt.plural.as_str(), "services" | "nodes" | "namespaces"))
}

/// Whether a create through the API drops the `.status` it was sent (Nodes
/// and Namespaces keep theirs, as upstream).
pub(super) fn resets_status_on_create(rt: &ResourceType) -> bool {
    rt.has_status && rt.plural != "nodes" && rt.plural != "namespaces"
}

/// Checks of a new object before its name is looked up.
pub(super) fn validate_create(
    rt: &ResourceType,
    ns: &str,
    obj: &Value,
) -> Result<(), StandinError> {
    if is(rt, "events.k8s.io", "events") {
        event(ns, obj)?;
    }
    Ok(())
}

/// Checks of a replace (PUT) before it is merged with the stored object.
pub(super) fn validate_replace(
    rt: &ResourceType,
    name: &str,
    obj: &Value,
) -> Result<(), StandinError> {
    // Leases (like most objects whose strategy refuses unconditional
    // updates) must name the resourceVersion they replace.
    if is(rt, "coordination.k8s.io", "leases") && rv_of(obj).is_none() {
        return Err(meta_invalid(
            rt,
            name,
            "metadata.resourceVersion",
            "Invalid value: 0x0: must be specified for an update",
        ));
    }
    Ok(())
}

impl Inner {
    /// Defaults of a new object, once its metadata is set.
    pub(super) fn prepare_create(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
    ) -> Result<(), StandinError> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "services") => {
                let alloc = self.services_allocated(None);
                defaults::service(obj, None, alloc)?;
            }
            ("", "namespaces") => {
                obj["status"] = json!({"phase": "Active"});
            }
            _ if is_crd(rt) => crd_status(obj),
            _ => {}
        }
        Ok(())
    }

    /// Defaults and checks of the next state `new` of the stored object
    /// `old` at `key`; `status` for a write of the status subresource.
    pub(super) fn prepare_update(
        &self,
        rt: &ResourceType,
        key: &ObjName,
        old: &Value,
        new: &mut Value,
        status: bool,
    ) -> Result<(), StandinError> {
        if is(rt, "", "services") {
            if status {
                defaults::service_status(new)?;
            } else {
                // A metadata-only write (finalizers, labels) keeps the spec, so
                // nothing can clash: skip the scan of every Service's allocations,
                // which made a controller's finalizer patches O(Services) each.
                let alloc = if new["spec"] == old["spec"] {
                    defaults::Allocated::default()
                } else {
                    self.services_allocated(Some(key))
                };
                defaults::service(new, Some(old), alloc)?;
            }
        }
        if is_crd(rt) && !status {
            crd_status(new);
        }
        Ok(())
    }

    /// The cluster IPs and node ports of every Service but `except`.
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

    /// After every stored write of `name` (`obj` is `None` once it is
    /// gone): a CRD serves its resources while it exists; when it goes, so
    /// do their objects and watches.
    pub(super) fn after_write(&mut self, rt: &ResourceType, obj: Option<&Value>, name: &str) {
        if !is_crd(rt) {
            return;
        }
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
                    self.feed.close(&key);
                }
                self.registry.remove_crd(name);
            }
        }
    }
}

/// A CRD's status: its names accepted, its storage versions, Established.
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

/// A new `events.k8s.io/v1` Event in namespace `ns`, checked as upstream's
/// `ValidateEventCreate` does for what controllers get wrong: the regarding
/// object's namespace, the reporting fields, `type` (Normal or Warning),
/// `reason`, and the size limits (the real server names the fields by their
/// core/v1 names, as here).
fn event(ns: &str, obj: &Value) -> Result<(), StandinError> {
    let mut causes = Vec::new();
    let regarding_ns = obj["regarding"]["namespace"].as_str().unwrap_or("");
    // An Event about a cluster-scoped object (no namespace) lives in
    // `default`; one about a namespaced object may live anywhere.
    if regarding_ns.is_empty() && !(ns.is_empty() || ns == "default") {
        causes.push((
            "involvedObject.namespace".to_string(),
            format!("Invalid value: {regarding_ns:?}: does not match event.namespace"),
        ));
    }
    let event_type = obj["type"].as_str().unwrap_or("");
    if event_type != "Normal" && event_type != "Warning" {
        causes.push((
            "type".to_string(),
            format!("Invalid value: \"\": has invalid value: {event_type}"),
        ));
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
        "eventTime",
    ] {
        if obj[field].as_str().unwrap_or("").is_empty() {
            causes.push((field.to_string(), "Required value".to_string()));
        }
    }
    for (field, json_field, limit) in [
        ("reportingInstance", "reportingInstance", 128),
        ("reason", "reason", 128),
        ("action", "action", 128),
        ("message", "note", 1024),
    ] {
        let len = obj[json_field].as_str().map_or(0, str::len);
        if len > limit {
            causes.push((
                field.to_string(),
                format!("Too long: may not be more than {limit} bytes"),
            ));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(StandinError::Invalid {
        kind: "Event".into(),
        name: obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
        causes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `base` with the merge patch `patch` applied.
    fn with(base: &Value, patch: Value) -> Value {
        let mut out = base.clone();
        json_patch::merge(&mut out, &patch);
        out
    }

    #[test]
    fn event_checks_name_the_core_fields() {
        let good = json!({"metadata": {"name": "e"}, "regarding": {"namespace": "apps"},
            "reportingController": "portico.io/controller", "reportingInstance": "p-0",
            "action": "Ensure", "reason": "Ensuring", "type": "Normal",
            "eventTime": "2025-01-01T00:00:00.000000Z", "note": "ok"});
        let cluster_scoped = json!({"regarding": {"namespace": null}});
        let cases = [
            ("complete", good.clone(), "apps", vec![]),
            (
                "cluster-scoped subject outside default",
                with(&good, cluster_scoped.clone()),
                "apps",
                vec!["involvedObject.namespace"],
            ),
            (
                "cluster-scoped subject in default",
                with(&good, cluster_scoped),
                "default",
                vec![],
            ),
            (
                "no reporting fields",
                with(
                    &good,
                    json!({"reportingController": null, "reportingInstance": null}),
                ),
                "apps",
                vec!["reportingController", "reportingInstance"],
            ),
            (
                "type must be Normal or Warning, reason is required",
                with(&good, json!({"type": "Info", "reason": null})),
                "apps",
                vec!["type", "reason"],
            ),
            (
                "reportingInstance of 129 bytes",
                with(&good, json!({"reportingInstance": "i".repeat(129)})),
                "apps",
                vec!["reportingInstance"],
            ),
            (
                "a note too long is named message",
                with(&good, json!({"note": "x".repeat(1025)})),
                "apps",
                vec!["message"],
            ),
        ];
        for (desc, obj, ns, want) in cases {
            let named: Vec<String> = match event(ns, &obj) {
                Ok(()) => Vec::new(),
                Err(StandinError::Invalid { causes, .. }) => {
                    causes.into_iter().map(|(f, _)| f).collect()
                }
                Err(other) => panic!("{desc}: {other:?}"),
            };
            assert_eq!(named, want, "{desc}");
        }
    }
}
