//! The resource table: which kinds the stand-in serves, and how.
//!
//! Everything the HTTP layer, the store and discovery need to know about a
//! resource lives in one [`ResourceType`] row. Built-in rows come from
//! [`builtin`]; rows for custom resources are added at run time from
//! `CustomResourceDefinition` objects ([`ResourceType::from_crd`]).

use serde_json::Value;

/// One served resource (one group/version/plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version inside the group, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Plural resource name used in URLs, e.g. `services`.
    pub plural: String,
    /// Singular name, e.g. `service`.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the resource has a `status` subresource.
    pub has_status: bool,
    /// Short names for kubectl, e.g. `svc`.
    pub short_names: Vec<String>,
    /// Categories for kubectl, e.g. `all`.
    pub categories: Vec<String>,
}

/// The storage identity of a resource: objects of all served versions of a
/// group/plural share one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// API group.
    pub group: String,
    /// Plural resource name.
    pub plural: String,
}

/// Verbs every resource supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Verbs of a status subresource.
pub const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

impl ResourceType {
    #[allow(clippy::too_many_arguments)]
    fn row(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        has_status: bool,
        short_names: &[&str],
        categories: &[&str],
    ) -> ResourceType {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            namespaced,
            has_status,
            short_names: short_names.iter().map(|s| s.to_string()).collect(),
            categories: categories.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key of this resource.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `plural` for core resources, `plural.group` otherwise (kubectl's
    /// fully-qualified resource name).
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `name` (a plural, singular, short name or kind, optionally
    /// qualified with `.group`) names this resource.
    pub fn matches_name(&self, name: &str) -> bool {
        let (base, group) = match name.split_once('.') {
            Some((b, g)) => (b, Some(g)),
            None => (name, None),
        };
        if let Some(g) = group
            && g != self.group
        {
            return false;
        }
        base == self.plural
            || base == self.singular
            || base.eq_ignore_ascii_case(&self.kind)
            || self.short_names.iter().any(|s| s == base)
    }

    /// The served resources of a `CustomResourceDefinition` object (one per
    /// served version). Returns an empty list for a malformed CRD.
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            return Vec::new();
        };
        let singular = spec["names"]["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let mut out = Vec::new();
        for v in spec["versions"].as_array().into_iter().flatten() {
            let Some(version) = v["name"].as_str() else {
                continue;
            };
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            out.push(ResourceType {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: singular.clone(),
                namespaced,
                has_status: v["subresources"]["status"].is_object(),
                short_names: strings(&spec["names"]["shortNames"]),
                categories: strings(&spec["names"]["categories"]),
            });
        }
        out
    }
}

/// The built-in resource table.
pub fn builtin() -> Vec<ResourceType> {
    use ResourceType as R;
    vec![
        R::row(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            true,
            &["ns"],
            &[],
        ),
        R::row(
            "",
            "v1",
            "Service",
            "services",
            true,
            true,
            &["svc"],
            &["all"],
        ),
        R::row("", "v1", "Node", "nodes", false, true, &["no"], &[]),
        R::row(
            "",
            "v1",
            "Endpoints",
            "endpoints",
            true,
            false,
            &["ep"],
            &[],
        ),
        R::row("", "v1", "Event", "events", true, false, &["ev"], &[]),
        R::row(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            false,
            &["cm"],
            &[],
        ),
        R::row("", "v1", "Secret", "secrets", true, false, &[], &[]),
        R::row(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            false,
            &["sa"],
            &[],
        ),
        R::row("", "v1", "Pod", "pods", true, true, &["po"], &["all"]),
        R::row(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            false,
            &[],
            &[],
        ),
        R::row(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            false,
            &[],
            &[],
        ),
        R::row(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            false,
            &["ev"],
            &[],
        ),
        R::row(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            true,
            &["crd", "crds"],
            &["api-extensions"],
        ),
    ]
}

/// The set of resources currently served: built-ins plus registered CRDs.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { types: builtin() }
    }
}

impl Registry {
    /// The resource served at `group`/`version`/`plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Resolve a kubectl-style name (`services`, `svc`, `leases.coordination.k8s.io`),
    /// preferring the core group.
    pub fn resolve(&self, name: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group.is_empty() && t.matches_name(name))
            .or_else(|| self.types.iter().find(|t| t.matches_name(name)))
    }

    /// Groups in table order, each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// Resources served at one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&ResourceType> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect()
    }

    /// Replace the rows of the CRD named `crd_name` (`plural.group`) with `rows`.
    pub fn set_crd(&mut self, crd_name: &str, rows: Vec<ResourceType>) {
        self.remove_crd(crd_name);
        self.types.extend(rows);
    }

    /// Remove the rows registered for the CRD named `crd_name`.
    pub fn remove_crd(&mut self, crd_name: &str) {
        let builtin = builtin();
        self.types
            .retain(|t| builtin.contains(t) || format!("{}.{}", t.plural, t.group) != crd_name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolve_names() {
        let r = Registry::default();
        let cases = [
            ("plural", "services", "Service", ""),
            ("short name", "svc", "Service", ""),
            ("core preferred for events", "events", "Event", ""),
            (
                "qualified",
                "events.events.k8s.io",
                "Event",
                "events.k8s.io",
            ),
            ("lease", "leases", "Lease", "coordination.k8s.io"),
            ("kind", "Node", "Node", ""),
        ];
        for (desc, name, kind, group) in cases {
            let t = r
                .resolve(name)
                .unwrap_or_else(|| panic!("{desc}: not found"));
            assert_eq!((t.kind.as_str(), t.group.as_str()), (kind, group), "{desc}");
        }
        assert!(r.resolve("widgets").is_none());
    }

    #[test]
    fn crd_rows() {
        let crd = json!({"spec": {"group": "portico.dev", "scope": "Cluster",
            "names": {"plural": "ippools", "kind": "IPPool", "shortNames": ["ipp"]},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                          "subresources": {"status": {}}},
                         {"name": "v0", "served": false}]}});
        let rows = ResourceType::from_crd(&crd);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].namespaced && rows[0].has_status);
        let mut r = Registry::default();
        r.set_crd("ippools.portico.dev", rows);
        assert!(r.find("portico.dev", "v1alpha1", "ippools").is_some());
        assert!(r.resolve("ipp").is_some());
        r.remove_crd("ippools.portico.dev");
        assert!(r.resolve("ipp").is_none());
    }
}
