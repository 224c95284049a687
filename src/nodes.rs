//! Which nodes receive balancer traffic (upstream's "stable node set"), kept
//! as a compact index so reconciles never walk Node objects.
//!
//! Readiness is deliberately not a criterion: a flapping node would otherwise
//! churn every balancer; the balancers' health checks take care of it.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use portico_provider::{Target, Targets};

use crate::k8s::{EXCLUDE_LB_LABEL, Node, ResourceExt};

/// Why a node receives no balancer traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    Deleting,
    ExcludedByLabel,
    NoAddress,
}

/// Go's `strconv.ParseBool`, which upstream uses for the exclude label.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The balancer target a node makes, or why it makes none.
///
/// Scale-down taints (the cluster autoscaler's `ToBeDeletedByClusterAutoscaler`,
/// Karpenter's `karpenter.sh/disrupted`) deliberately keep the node: as
/// upstream, the balancer's health check drains it as its pods go, instead of
/// cutting its connections the moment the taint lands.
pub fn node_target(node: &Node) -> Result<Target, Ineligible> {
    if node.metadata.deletion_timestamp.is_some() {
        return Err(Ineligible::Deleting);
    }
    // Upstream: excluded unless the value parses (ParseBool) as false.
    if let Some(value) = node.labels().get(EXCLUDE_LB_LABEL)
        && parse_go_bool(value) != Some(false)
    {
        return Err(Ineligible::ExcludedByLabel);
    }
    let addresses = node_addresses(node);
    if addresses.is_empty() {
        return Err(Ineligible::NoAddress);
    }
    Ok(Target {
        node_name: node.name_any(),
        addresses,
        provider_id: node.spec.as_ref().and_then(|s| s.provider_id.clone()),
        labels: node.labels().clone(),
    })
}

/// InternalIP addresses first, then ExternalIP; unparsable entries skipped.
fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let all = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |kind: &str| -> Vec<IpAddr> {
        all.iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.trim().parse().ok())
            .collect()
    };
    let mut out = of_type("InternalIP");
    out.extend(of_type("ExternalIP"));
    out.dedup();
    out
}

/// How an index update changed the eligible target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// A node joined or left, or its addresses or provider id changed.
    pub targets: bool,
    /// Only labels of an eligible node changed (matters to label-selecting Services).
    pub labels_only: bool,
}

impl Change {
    pub fn any(self) -> bool {
        self.targets || self.labels_only
    }
    pub fn merge(self, other: Change) -> Change {
        let targets = self.targets || other.targets;
        Change {
            targets,
            labels_only: !targets && (self.labels_only || other.labels_only),
        }
    }
}

/// One published set of eligible targets, shared by every reconcile until
/// the next node change, and a hash of it computed once, so a reconcile
/// compares target sets without walking them.
#[derive(Debug, Clone)]
pub struct TargetSnapshot {
    pub targets: Targets,
    pub fingerprint: u64,
}

/// Eligible targets by node name. Holds only what a balancer needs, not
/// the Node objects (which carry image lists and managedFields).
#[derive(Debug, Default, Clone)]
pub struct NodeIndex {
    targets: BTreeMap<String, Target>,
}

impl NodeIndex {
    /// Record the current state of `node`.
    pub fn apply(&mut self, node: &Node) -> Change {
        let name = node.name_any();
        match node_target(node) {
            Ok(target) => {
                let change = match self.targets.get(&name) {
                    None => Change {
                        targets: true,
                        labels_only: false,
                    },
                    Some(old) if old == &target => Change::default(),
                    Some(old) => {
                        let same_but_labels = old.addresses == target.addresses
                            && old.provider_id == target.provider_id;
                        Change {
                            targets: !same_but_labels,
                            labels_only: same_but_labels,
                        }
                    }
                };
                if change.any() {
                    self.targets.insert(name, target);
                }
                change
            }
            Err(_) => self.remove(&name),
        }
    }

    pub fn remove(&mut self, name: &str) -> Change {
        Change {
            targets: self.targets.remove(name).is_some(),
            labels_only: false,
        }
    }

    /// Replace everything (after a relist), reporting whether anything changed.
    pub fn replace_all<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>) -> Change {
        let mut fresh = NodeIndex::default();
        for node in nodes {
            fresh.apply(node);
        }
        let change = fresh.diff(self);
        *self = fresh;
        change
    }

    fn diff(&self, old: &NodeIndex) -> Change {
        if self.targets == old.targets {
            return Change::default();
        }
        let same_but_labels = self.targets.len() == old.targets.len()
            && self
                .targets
                .iter()
                .zip(old.targets.iter())
                .all(|((n1, t1), (n2, t2))| {
                    n1 == n2 && t1.addresses == t2.addresses && t1.provider_id == t2.provider_id
                });
        Change {
            targets: !same_but_labels,
            labels_only: same_but_labels,
        }
    }

    /// The eligible targets, ordered by node name, with their fingerprint.
    pub fn snapshot(&self) -> TargetSnapshot {
        let targets: Targets = self.targets.values().cloned().collect();
        let mut hasher = DefaultHasher::new();
        targets.hash(&mut hasher);
        TargetSnapshot {
            targets,
            fingerprint: hasher.finish(),
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::node;
    use crate::k8s::{KARPENTER_DISRUPTED_TAINT, TO_BE_DELETED_TAINT};

    #[test]
    fn eligibility_follows_upstream_rules() {
        let cases = [
            (
                "plain node is eligible",
                node("a").ip("10.0.0.1").build(),
                Ok(()),
            ),
            (
                "not-ready node stays eligible",
                node("a").ip("10.0.0.1").not_ready().build(),
                Ok(()),
            ),
            (
                "deleting node is out",
                node("a").ip("10.0.0.1").deleting().build(),
                Err(Ineligible::Deleting),
            ),
            (
                "exclude label is out",
                node("a").ip("10.0.0.1").label(EXCLUDE_LB_LABEL, "").build(),
                Err(Ineligible::ExcludedByLabel),
            ),
            (
                "exclude label 'false' keeps the node",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "false")
                    .build(),
                Ok(()),
            ),
            (
                "exclude label '0' (ParseBool false) keeps the node",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "0")
                    .build(),
                Ok(()),
            ),
            (
                "exclude label 'F' keeps the node",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "F")
                    .build(),
                Ok(()),
            ),
            (
                "exclude label 'FALSE' keeps the node",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "FALSE")
                    .build(),
                Ok(()),
            ),
            (
                "exclude label 'no' does not parse: out",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "no")
                    .build(),
                Err(Ineligible::ExcludedByLabel),
            ),
            (
                "exclude label 'fAlse' does not parse: out",
                node("a")
                    .ip("10.0.0.1")
                    .label(EXCLUDE_LB_LABEL, "fAlse")
                    .build(),
                Err(Ineligible::ExcludedByLabel),
            ),
            (
                "autoscaler scale-down taint keeps the node (health check drains it)",
                node("a").ip("10.0.0.1").taint(TO_BE_DELETED_TAINT).build(),
                Ok(()),
            ),
            (
                "Karpenter's disrupted taint keeps the node",
                node("a")
                    .ip("10.0.0.1")
                    .taint(KARPENTER_DISRUPTED_TAINT)
                    .build(),
                Ok(()),
            ),
            (
                "other taints are fine",
                node("a")
                    .ip("10.0.0.1")
                    .taint("node.kubernetes.io/unschedulable")
                    .build(),
                Ok(()),
            ),
            (
                "no address is out",
                node("a").build(),
                Err(Ineligible::NoAddress),
            ),
        ];
        for (desc, n, want) in cases {
            assert_eq!(node_target(&n).map(|_| ()), want, "{desc}");
        }
    }

    #[test]
    fn internal_addresses_come_first() {
        let n = node("a").external_ip("203.0.113.5").ip("10.0.0.1").build();
        let t = node_target(&n).expect("eligible");
        assert_eq!(
            t.addresses,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("ip"),
                "203.0.113.5".parse().expect("ip")
            ]
        );
    }

    #[test]
    fn heartbeats_and_conditions_change_nothing() {
        let mut index = NodeIndex::default();
        assert!(index.apply(&node("a").ip("10.0.0.1").build()).targets);
        let cases = [
            (
                "same node again",
                node("a").ip("10.0.0.1").build(),
                Change::default(),
            ),
            (
                "readiness flaps",
                node("a").ip("10.0.0.1").not_ready().build(),
                Change::default(),
            ),
            (
                "label added",
                node("a").ip("10.0.0.1").label("zone", "z1").build(),
                Change {
                    targets: false,
                    labels_only: true,
                },
            ),
            (
                "address changed",
                node("a").ip("10.0.0.2").label("zone", "z1").build(),
                Change {
                    targets: true,
                    labels_only: false,
                },
            ),
            (
                "excluded",
                node("a")
                    .ip("10.0.0.2")
                    .label(EXCLUDE_LB_LABEL, "true")
                    .build(),
                Change {
                    targets: true,
                    labels_only: false,
                },
            ),
            (
                "still excluded",
                node("a")
                    .ip("10.0.0.3")
                    .label(EXCLUDE_LB_LABEL, "true")
                    .build(),
                Change::default(),
            ),
        ];
        for (desc, n, want) in cases {
            assert_eq!(index.apply(&n), want, "{desc}");
        }
    }

    #[test]
    fn relist_reports_only_real_changes() {
        let a = node("a").ip("10.0.0.1").build();
        let b = node("b").ip("10.0.0.2").build();
        let mut index = NodeIndex::default();
        assert!(index.replace_all([&a, &b]).targets);
        assert_eq!(index.replace_all([&a, &b]), Change::default());
        assert!(index.replace_all([&a]).targets);
        assert_eq!(index.len(), 1);
        let snapshot = index.snapshot();
        assert_eq!(
            snapshot
                .targets
                .iter()
                .map(|t| t.node_name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
    }
}
