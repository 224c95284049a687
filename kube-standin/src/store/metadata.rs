//! Object metadata every resource shares, as upstream's `BeforeCreate` and
//! `BeforeUpdate`: the namespace from the URL, names and `generateName`, the
//! fields only the server sets (`uid`, `creationTimestamp`, `generation`,
//! the deletion marks), empty fields dropped, and no new finalizers on an
//! object being deleted.

use serde_json::{Value, json};

use super::{meta_invalid, strategy};
use crate::StandinError;
use crate::resources::ResourceType;

/// A timestamp as the API writes them (RFC 3339, seconds, UTC).
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A body must be a JSON object.
pub(super) fn check_object(obj: &Value) -> Result<(), StandinError> {
    if obj.is_object() {
        Ok(())
    } else {
        Err(StandinError::BadRequest(
            "the object must be a JSON object".into(),
        ))
    }
}

pub(super) fn namespace_mismatch() -> StandinError {
    StandinError::BadRequest(
        "the namespace of the provided object does not match the namespace sent on the request"
            .into(),
    )
}

/// Give a new object its `metadata`, and the namespace of the request `ns`
/// when the resource is namespaced (a different one in the body is refused;
/// a cluster-scoped object loses any). Returns the object's namespace, `""`
/// when cluster-scoped.
pub(super) fn assign_namespace<'a>(
    rt: &ResourceType,
    ns: &'a str,
    obj: &mut Value,
) -> Result<&'a str, StandinError> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if !rt.namespaced {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        return Ok("");
    }
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if !n.is_empty() && n != ns => Err(namespace_mismatch()),
        _ => {
            obj["metadata"]["namespace"] = json!(ns);
            Ok(ns)
        }
    }
}

/// The name of a new object: `metadata.name`, or `generateName` plus a
/// random suffix; it must be a lowercase RFC 1123 subdomain.
pub(super) fn assign_name(rt: &ResourceType, obj: &mut Value) -> Result<String, StandinError> {
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
    Ok(name)
}

/// A lowercase RFC 1123 subdomain.
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

/// Set what the server owns on a new object: `apiVersion`, `kind`, a fresh
/// `uid` and `creationTimestamp`, `generation` 1 where it is kept; whatever
/// the client sent for the deletion marks and `resourceVersion` goes.
pub(super) fn stamp_created(rt: &ResourceType, obj: &mut Value) {
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("resourceVersion");
        if strategy::tracks_generation(rt) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
}

/// The server-managed fields of an update come from the stored `old`
/// object, whatever the client sent; then empty fields are dropped.
pub(super) fn carry_over(old: &Value, new: &mut Value) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
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
    normalise(new);
}

/// An object being deleted may lose finalizers but gain none.
pub(super) fn check_finalizers(
    rt: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), StandinError> {
    if !old["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
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
    Ok(())
}

/// Drop empty metadata lists/maps (the real server omits them) and
/// `managedFields` (not tracked).
pub(super) fn normalise(obj: &mut Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let long = "a".repeat(254);
        let cases = [
            ("plain", "web", true),
            ("dotted", "ippools.portico.io", true),
            ("digits first", "0web", true),
            ("empty", "", false),
            ("upper case", "Web", false),
            ("underscore", "my_web", false),
            ("trailing dash", "web-", false),
            ("dot", ".", false),
            ("too long", long.as_str(), false),
        ];
        for (desc, name, want) in cases {
            assert_eq!(valid_name(name), want, "{desc}");
        }
    }

    #[test]
    fn generate_name_gets_a_suffix() {
        let rt = crate::resources::Registry::default()
            .resolve("configmaps")
            .cloned()
            .expect("configmaps");
        let mut obj = json!({"metadata": {"generateName": "web-"}});
        let name = assign_name(&rt, &mut obj).expect("named");
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 5,
            "{name}"
        );
        assert_eq!(obj["metadata"]["name"], json!(name));
        let mut nameless = json!({"metadata": {}});
        assert!(matches!(
            assign_name(&rt, &mut nameless),
            Err(StandinError::Invalid { .. })
        ));
    }
}
