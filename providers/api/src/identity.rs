//! Who owns a cloud object: the tags every provider writes on what it
//! creates for a Service, the way back from those tags to the Service's key,
//! and the deterministic names and hashes derived from the key. Providers
//! use these and keep no copy of their own, so every cloud answers "is this
//! ours, and whose?" the same way.

use std::collections::BTreeMap;

use crate::{ClusterName, Listener, LoadBalancerKey, PortStatus, short_hash};

/// The ownership tag keys, written on every balancer (and every other cloud
/// object a provider makes for one Service).
pub mod tag {
    /// The cluster identity (`--cluster-name` or `k8s-<kube-system UID>`).
    pub const CLUSTER: &str = "portico.io/cluster";
    pub const NAMESPACE: &str = "portico.io/service-namespace";
    pub const NAME: &str = "portico.io/service-name";
    /// The Service UID: a re-created Service is a different owner.
    pub const UID: &str = "portico.io/service-uid";
}

/// The tags that select everything a cluster owns, for listing.
pub fn cluster_tags(cluster: &ClusterName) -> BTreeMap<String, String> {
    BTreeMap::from([(tag::CLUSTER.to_string(), cluster.as_str().to_string())])
}

impl LoadBalancerKey {
    /// The ownership tags of every cloud object made for this key.
    pub fn owner_tags(&self) -> BTreeMap<String, String> {
        [
            (tag::CLUSTER, self.cluster.as_str()),
            (tag::NAMESPACE, self.namespace.as_str()),
            (tag::NAME, self.name.as_str()),
            (tag::UID, self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The smallest tag set that finds this key's objects: cluster and UID
    /// (a renamed namespace or name cannot happen; a new UID is a new owner).
    pub fn lookup_tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (tag::CLUSTER.to_string(), self.cluster.as_str().to_string()),
            (tag::UID.to_string(), self.uid.clone()),
        ])
    }

    /// The key that `tags` name as owner, if they carry `cluster`'s identity
    /// and every ownership tag.
    pub fn from_tags(cluster: &ClusterName, tags: &BTreeMap<String, String>) -> Option<Self> {
        if tags.get(tag::CLUSTER).map(String::as_str) != Some(cluster.as_str()) {
            return None;
        }
        Some(Self::new(
            cluster.clone(),
            tags.get(tag::NAMESPACE)?,
            tags.get(tag::NAME)?,
            tags.get(tag::UID)?,
        ))
    }

    /// Whether `tags` mark an object as this key's.
    pub fn owns(&self, tags: &BTreeMap<String, String>) -> bool {
        Self::from_tags(&self.cluster, tags).as_ref() == Some(self)
    }

    /// The first `len` hex digits of a hash over the key and `extra` (for
    /// idempotency tokens and names of the key's sub-objects).
    pub fn hash(&self, extra: &[&str], len: usize) -> String {
        let mut parts = vec![
            self.cluster.as_str(),
            self.namespace.as_str(),
            self.name.as_str(),
            self.uid.as_str(),
        ];
        parts.extend_from_slice(extra);
        short_hash(&parts, len)
    }

    /// A deterministic cloud name `prefix-<hash>` of at most `max_len` characters.
    pub fn cloud_name(&self, prefix: &str, max_len: usize) -> String {
        crate::owned_name(
            prefix,
            &[
                self.cluster.as_str(),
                &self.namespace,
                &self.name,
                &self.uid,
            ],
            max_len,
        )
    }
}

impl PortStatus {
    /// One served port per listener, sorted by port and protocol.
    pub fn of_listeners(listeners: &[Listener]) -> Vec<Self> {
        let mut ports: Vec<Self> = listeners
            .iter()
            .map(|l| Self {
                port: l.port,
                protocol: l.protocol,
                error: None,
            })
            .collect();
        ports.sort_by_key(|p| (p.port, p.protocol));
        ports.dedup_by_key(|p| (p.port, p.protocol));
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn key(cluster: &str, uid: &str) -> LoadBalancerKey {
        LoadBalancerKey::new(ClusterName::new(cluster), "team-a", "web", uid)
    }

    #[test]
    fn tags_name_their_owner_and_nobody_else() {
        let k = key("prod", "u1");
        let tags = k.owner_tags();
        let cases = [
            ("own tags", &k, &tags, true),
            ("another uid", &key("prod", "u2"), &tags, false),
            ("another cluster", &key("dev", "u1"), &tags, false),
        ];
        for (desc, who, tags, owns) in cases {
            assert_eq!(who.owns(tags), owns, "{desc}");
        }
        assert_eq!(
            LoadBalancerKey::from_tags(&k.cluster, &tags),
            Some(k.clone())
        );
        let mut partial = tags.clone();
        partial.remove(tag::NAME);
        assert_eq!(
            LoadBalancerKey::from_tags(&k.cluster, &partial),
            None,
            "a missing tag names no owner"
        );
        assert!(
            k.lookup_tags().iter().all(|(t, v)| tags.get(t) == Some(v)),
            "lookup tags are a subset of the owner tags"
        );
        assert_eq!(
            cluster_tags(&k.cluster)
                .get(tag::CLUSTER)
                .map(String::as_str),
            Some("prod")
        );
    }

    #[test]
    fn hashes_and_names_follow_the_key() {
        let a = key("prod", "u1");
        assert_eq!(a.hash(&["x"], 16), a.hash(&["x"], 16));
        assert_ne!(a.hash(&["x"], 16), a.hash(&["y"], 16));
        assert_ne!(a.hash(&[], 16), key("prod", "u2").hash(&[], 16));
        assert_eq!(a.hash(&[], 12).len(), 12);
        let name = a.cloud_name("k8s", 32);
        assert!(name.starts_with("k8s-") && name.len() <= 32, "{name}");
        assert_ne!(name, key("prod", "u2").cloud_name("k8s", 32));
    }

    #[test]
    fn port_statuses_are_sorted_and_unique() {
        let listener = |port, protocol| Listener {
            port,
            protocol,
            node_port: 30000 + port,
            name: None,
        };
        let ports = PortStatus::of_listeners(&[
            listener(443, Protocol::Tcp),
            listener(53, Protocol::Udp),
            listener(53, Protocol::Tcp),
            listener(443, Protocol::Tcp),
        ]);
        let got: Vec<(u16, Protocol)> = ports.iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(
            got,
            vec![
                (53, Protocol::Tcp),
                (53, Protocol::Udp),
                (443, Protocol::Tcp)
            ]
        );
        assert!(ports.iter().all(|p| p.error.is_none()));
    }
}
