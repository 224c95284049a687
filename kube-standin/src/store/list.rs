//! List: one page of a resource's objects, filtered by namespace and
//! selectors, with `limit`/`continue` pagination and the list rules of
//! `resourceVersion`/`resourceVersionMatch`.
//!
//! A continue token carries the list's resourceVersion and the last object
//! served; the next page starts after that object in the current state (see
//! the crate docs on what differs from a real server's snapshot).

use serde_json::{Map, Value, json};

use super::{ObjName, Store, parse_rv};
use crate::StandinError;
use crate::resources::ResourceType;
use crate::selectors::Selectors;

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

/// The opaque `continue` value: `rv/namespace/name` of the last item, hex.
fn encode_continue(rv: u64, (ns, name): (&str, &str)) -> String {
    format!("{rv}/{ns}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The resourceVersion and last item of a continue token.
fn decode_continue(token: &str) -> Result<(u64, ObjName), StandinError> {
    let invalid = || StandinError::BadRequest("invalid continue token".into());
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let decoded = bytes
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let mut parts = decoded.splitn(3, '/');
    let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    Ok((parse_rv(rv)?, (ns.to_string(), name.to_string())))
}

impl Store {
    /// List one page.
    pub fn list(&self, rt: &ResourceType, p: &ListParams) -> Result<ListPage, StandinError> {
        let inner = self.lock();
        let (rv, after) = match &p.continue_token {
            Some(tok) if !tok.is_empty() => {
                let (rv, after) = decode_continue(tok)?;
                if rv < inner.feed.compacted_rv() {
                    return Err(StandinError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                    ));
                }
                (rv, Some(after))
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
        let mut more = false;
        if let Some(bucket) = inner.objects.get(&rt.key()) {
            let iter = bucket.iter().filter(|(k, _)| match &after {
                Some(a) => *k > a,
                None => true,
            });
            for ((ons, _), obj) in iter {
                if ns.is_some_and(|n| n != ons) || !p.selectors.matches(obj) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(obj.clone());
            }
        }
        let continue_token = items.last().filter(|_| more).map(|last| {
            let lns = last["metadata"]["namespace"].as_str().unwrap_or("");
            let lname = last["metadata"]["name"].as_str().unwrap_or("");
            encode_continue(rv, (lns, lname))
        });
        Ok(ListPage {
            items,
            rv,
            continue_token,
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
    use crate::store::WriteOptions;

    #[test]
    fn pagination_and_continue() {
        let s = Store::new();
        let rt = s.resolve("cm").expect("rt");
        let create = |ns: &str, name: String| {
            s.create(
                &rt,
                ns,
                json!({"metadata": {"name": name}}),
                &WriteOptions::default(),
            )
        };
        for i in 0..7 {
            create("default", format!("c{i}")).expect("create");
        }
        let mut params = ListParams {
            namespace: Some("default".into()),
            limit: Some(3),
            ..ListParams::default()
        };
        let mut names = Vec::new();
        let mut first_rv = None;
        loop {
            let page = s.list(&rt, &params).expect("list");
            first_rv.get_or_insert(page.rv);
            assert_eq!(Some(page.rv), first_rv);
            names.extend(
                page.items
                    .iter()
                    .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string()),
            );
            // a change between pages does not change the list RV
            create("other", format!("x{}", names.len())).ok();
            match page.continue_token {
                Some(c) => params.continue_token = Some(c),
                None => break,
            }
        }
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    }

    #[test]
    fn continue_tokens_round_trip_and_refuse_garbage() {
        let token = encode_continue(42, ("default", "a/b"));
        assert_eq!(
            decode_continue(&token).expect("decodes"),
            (42, ("default".to_string(), "a/b".to_string()))
        );
        for (desc, bad) in [
            ("odd length", "abc"),
            ("not hex", "zz"),
            ("too few parts", "312f61"),
            ("rv not a number", "782f612f62"),
        ] {
            assert!(
                matches!(decode_continue(bad), Err(StandinError::BadRequest(_))),
                "{desc}"
            );
        }
    }
}
