//! Label and field selectors, parsed from the query string.

use serde_json::Value;

use crate::StandinError;
use crate::resources::ResourceType;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

/// Split at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn bad(sel: &str, why: &str) -> StandinError {
    StandinError::BadRequest(format!("unable to parse requirement {sel:?}: {why}"))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, StandinError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(whole, "expected a parenthesised set"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parse a selector string; an empty string selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, StandinError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_string(), parse_set(rest, part)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelReq::In(k.trim().to_string(), parse_set(rest, part)?)
            } else if part.contains(' ') || part.contains('(') {
                return Err(bad(part, "unknown operator"));
            } else {
                LabelReq::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether the object's `metadata.labels` match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector (`metadata.name=x,spec.type!=ClusterIP`).
///
/// Parsing takes any dotted path into the object; the fields a real server
/// refuses are refused by [`FieldSelector::check_supported`]. A missing field
/// compares as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parse a selector string; an empty string selects everything.
    pub fn parse(s: &str) -> Result<FieldSelector, StandinError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad(part, "field selectors need = or !="));
            };
            reqs.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// Refuse a field the real server cannot select on for this resource
    /// (`400 BadRequest`), as its per-resource field label conversion does.
    /// Every resource takes `metadata.name` and `metadata.namespace`; the
    /// extra fields are listed for the resources the stand-in knows well,
    /// and any field is accepted on the others.
    pub fn check_supported(&self, rt: &ResourceType) -> Result<(), StandinError> {
        let extra: &[&str] = match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "services") => &["spec.clusterIP", "spec.type"],
            ("", "nodes") => &["spec.unschedulable"],
            ("", "namespaces") => &["status.phase"],
            ("", "configmaps") | ("coordination.k8s.io", "leases") => &[],
            _ => return Ok(()),
        };
        for (field, _, _) in &self.reqs {
            let known = field == "metadata.name"
                || field == "metadata.namespace"
                || extra.contains(&field.as_str());
            if !known {
                return Err(StandinError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, eq, want)| {
            let mut cur = obj;
            for seg in path.split('.') {
                cur = &cur[seg];
            }
            let have = match cur {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

/// Both selectors of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// The label selector.
    pub labels: LabelSelector,
    /// The field selector.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Parse both from optional query values.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selectors, StandinError> {
        Ok(Selectors {
            labels: LabelSelector::parse(labels.unwrap_or(""))?,
            fields: FieldSelector::parse(fields.unwrap_or(""))?,
        })
    }

    /// Whether the object matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}});
        let cases = [
            ("empty selects all", "", true),
            ("equality", "app=web", true),
            ("double equals", "app==web", true),
            ("equality miss", "app=db", false),
            ("inequality", "app!=db", true),
            ("inequality on missing key", "zone!=a", true),
            ("in", "app in (web, db)", true),
            ("in miss", "app in (db)", false),
            ("notin", "tier notin (be)", true),
            ("notin hit", "tier notin (fe,be)", false),
            ("notin missing key", "zone notin (a)", true),
            ("exists", "app", true),
            ("not exists", "!app", false),
            ("not exists missing", "!zone", true),
            ("conjunction", "app=web,tier in (fe),!zone", true),
            ("conjunction miss", "app=web,tier=be", false),
        ];
        for (desc, sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{desc}: {e}"));
            assert_eq!(s.matches(&obj), want, "{desc}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"type": "LoadBalancer"}});
        let cases = [
            ("name", "metadata.name=a", true),
            ("name miss", "metadata.name=b", false),
            (
                "namespace and type",
                "metadata.namespace=ns,spec.type!=ClusterIP",
                true,
            ),
            ("missing field equals empty", "spec.nodeName=", true),
        ];
        for (desc, sel, want) in cases {
            let s = FieldSelector::parse(sel).unwrap_or_else(|e| panic!("{desc}: {e}"));
            assert_eq!(s.matches(&obj), want, "{desc}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
