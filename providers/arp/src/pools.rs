//! From `IPPool` objects to the pools the allocator uses: each pool is
//! parsed and checked on its own (address blocks, selectors), then against
//! the others (no address in two pools). A rejected pool is left out with
//! the reason, and the rest keep working. Pure: the same objects give the
//! same verdicts on every replica.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use portico_provider::IpFamily;

use crate::addresses::{IpRange, is_buggy};
use crate::pool::{IpPool, reason};

/// What a pool's selectors are matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    pub namespace: String,
    /// The Service's labels.
    pub labels: BTreeMap<String, String>,
    /// Its namespace's labels (`kubernetes.io/metadata.name` included, so a
    /// selector can name namespaces).
    pub namespace_labels: BTreeMap<String, String>,
}

/// A checked pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Sorted, no two overlapping.
    pub ranges: Vec<IpRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub namespaces: Option<Selector>,
    pub services: Option<Selector>,
}

impl Pool {
    /// Whether `ip` lies in the pool's blocks (avoided or not).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// Whether the pool may hand `ip` out.
    pub fn offers(&self, ip: IpAddr) -> bool {
        self.holds(ip) && !(self.avoid_buggy_ips && is_buggy(ip))
    }

    /// The pool's ranges of one family.
    pub fn ranges_of(&self, family: IpFamily) -> impl Iterator<Item = &IpRange> {
        self.ranges.iter().filter(move |r| r.family() == family)
    }

    pub fn has_family(&self, family: IpFamily) -> bool {
        self.ranges_of(family).next().is_some()
    }

    /// Addresses it can hand out (saturating).
    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .map(|r| {
                r.size()
                    .saturating_sub(if self.avoid_buggy_ips { r.buggy() } else { 0 })
            })
            .fold(0u128, u128::saturating_add)
    }

    /// A pool with a selector serves only the Services it selects, and is
    /// preferred for them over pools without one.
    pub fn pinned(&self) -> bool {
        self.namespaces.is_some() || self.services.is_some()
    }

    /// Whether the pool's selectors let `service` take its addresses.
    pub fn admits(&self, service: &ServiceFacts) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|s| s.matches(&service.namespace_labels))
            && self
                .services
                .as_ref()
                .is_none_or(|s| s.matches(&service.labels))
    }
}

/// Why a pool is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Something in it cannot be read.
    Invalid(String),
    /// Its addresses overlap those of `with`, an older pool.
    Overlapping { with: String, message: String },
}

impl Rejection {
    /// The condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => reason::INVALID,
            Self::Overlapping { .. } => reason::OVERLAPPING,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Invalid(message) | Self::Overlapping { message, .. } => message,
        }
    }
}

/// The verdict on every pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSet {
    /// The pools in use, by name.
    pub accepted: Vec<Pool>,
    /// The pools left out, by name, and why.
    pub rejected: BTreeMap<String, Rejection>,
}

fn selector(field: &str, selector: Option<&LabelSelector>) -> Result<Option<Selector>, String> {
    selector
        .map(|s| Selector::try_from(s.clone()).map_err(|e| format!("{field}: {}", e.0)))
        .transpose()
}

/// Parse and check one pool on its own.
pub fn parse(pool: &IpPool) -> Result<Pool, String> {
    let spec = &pool.spec;
    if spec.addresses.is_empty() {
        return Err("spec.addresses is empty".into());
    }
    let mut ranges: Vec<(usize, IpRange)> = Vec::with_capacity(spec.addresses.len());
    for (i, block) in spec.addresses.iter().enumerate() {
        let range: IpRange = block
            .0
            .parse()
            .map_err(|e| format!("spec.addresses[{i}]: {e}"))?;
        ranges.push((i, range));
    }
    ranges.sort_by_key(|(_, r)| *r);
    for pair in ranges.windows(2) {
        let ((i, a), (j, b)) = (&pair[0], &pair[1]);
        if a.overlaps(b) {
            let (first, second) = if i < j { (i, j) } else { (j, i) };
            return Err(format!(
                "spec.addresses[{first}] and spec.addresses[{second}] overlap ({a} and {b})"
            ));
        }
    }
    Ok(Pool {
        name: pool.name_any(),
        ranges: ranges.into_iter().map(|(_, r)| r).collect(),
        auto_assign: spec.auto_assign,
        avoid_buggy_ips: spec.avoid_buggy_ips,
        namespaces: selector("spec.namespaceSelector", spec.namespace_selector.as_ref())?,
        services: selector("spec.serviceSelector", spec.service_selector.as_ref())?,
    })
}

/// Check every pool, oldest first: a pool overlapping an older accepted
/// pool is rejected, so adding a pool never takes addresses from one in use.
pub fn validate(pools: &[IpPool]) -> PoolSet {
    let mut ordered: Vec<&IpPool> = pools.iter().collect();
    ordered.sort_by(|a, b| {
        (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
    });
    let mut set = PoolSet::default();
    for object in ordered {
        let name = object.name_any();
        let pool = match parse(object) {
            Ok(pool) => pool,
            Err(message) => {
                set.rejected.insert(name, Rejection::Invalid(message));
                continue;
            }
        };
        let clash = set.accepted.iter().find_map(|other| {
            pool.ranges.iter().find_map(|mine| {
                other
                    .ranges
                    .iter()
                    .find(|theirs| mine.overlaps(theirs))
                    .map(|theirs| (other.name.clone(), *mine, *theirs))
            })
        });
        match clash {
            Some((with, mine, theirs)) => {
                let message = format!(
                    "{mine} overlaps {theirs} of IPPool {with:?}, which is older and keeps its addresses"
                );
                set.rejected
                    .insert(name, Rejection::Overlapping { with, message });
            }
            None => set.accepted.push(pool),
        }
    }
    set.accepted.sort_by(|a, b| a.name.cmp(&b.name));
    set
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::pool::{AddressBlock, IpPoolSpec};

    fn pool(name: &str, age: i64, addresses: &[&str]) -> IpPool {
        let mut p = IpPool::new(
            name,
            IpPoolSpec {
                addresses: addresses.iter().map(|a| AddressBlock::from(*a)).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                namespace_selector: None,
                service_selector: None,
            },
        );
        p.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 - age).expect("time"),
        ));
        p
    }

    #[test]
    fn pools_are_checked_alone_then_against_older_ones() {
        let mut bad_selector = pool("bad-selector", 1, &["10.9.0.0/24"]);
        bad_selector.spec.service_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        });
        let pools = vec![
            pool("old", 100, &["10.0.0.0/24"]),
            pool(
                "new-overlapping",
                10,
                &["10.1.0.0/24", "10.0.0.200-10.0.1.10"],
            ),
            pool("typo", 5, &["10.2.0.0/24", "10.3.0.0/33"]),
            pool("reversed", 4, &["10.4.0.20-10.4.0.10"]),
            pool("self-overlap", 3, &["10.5.0.0/24", "10.5.0.128/25"]),
            pool("empty", 2, &[]),
            bad_selector,
            pool("v6", 1, &["2001:db8::/120", "10.6.0.1"]),
        ];
        let set = validate(&pools);
        let accepted: Vec<&str> = set.accepted.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(accepted, vec!["old", "v6"], "{:#?}", set.rejected);
        let rows: &[(&str, &str, &str)] = &[
            (
                "an overlap with an older pool names it",
                "new-overlapping",
                "overlaps 10.0.0.0/24 of IPPool \"old\"",
            ),
            ("a bad CIDR names its index", "typo", "spec.addresses[1]"),
            ("a reversed range", "reversed", "ends before it starts"),
            (
                "blocks of one pool may not overlap",
                "self-overlap",
                "spec.addresses[0] and spec.addresses[1] overlap",
            ),
            ("no addresses", "empty", "spec.addresses is empty"),
            (
                "a selector with an unknown operator",
                "bad-selector",
                "spec.serviceSelector",
            ),
        ];
        for (desc, name, words) in rows {
            let rejection = set.rejected.get(*name).unwrap_or_else(|| panic!("{desc}"));
            assert!(
                rejection.message().contains(words),
                "{desc}: {}",
                rejection.message()
            );
        }
        assert_eq!(set.rejected["new-overlapping"].reason(), "Overlapping");
        assert_eq!(set.rejected["typo"].reason(), "Invalid");
    }

    #[test]
    fn the_older_pool_wins_whatever_the_names() {
        let set = validate(&[
            pool("a-new", 1, &["10.0.0.0/24"]),
            pool("z-old", 9, &["10.0.0.0/25"]),
        ]);
        assert_eq!(set.accepted.len(), 1);
        assert_eq!(set.accepted[0].name, "z-old");
        assert!(set.rejected.contains_key("a-new"));
    }

    #[test]
    fn capacity_and_offers_follow_avoid_buggy_ips() {
        let mut p = pool("p", 1, &["10.0.0.0/24", "2001:db8::/126"]);
        let plain = parse(&p).expect("valid");
        assert_eq!(plain.capacity(), 256 + 4);
        p.spec.avoid_buggy_ips = true;
        let careful = parse(&p).expect("valid");
        assert_eq!(careful.capacity(), 254 + 4);
        let zero: IpAddr = "10.0.0.0".parse().expect("ip");
        assert!(plain.offers(zero) && !careful.offers(zero) && careful.holds(zero));
    }

    #[test]
    fn selectors_decide_which_services_a_pool_admits() {
        let mut p = pool("team", 1, &["10.0.0.0/24"]);
        p.spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "web".into(),
            )])),
            ..LabelSelector::default()
        });
        p.spec.service_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "exposed".into(),
                operator: "Exists".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        });
        let pool = parse(&p).expect("valid");
        assert!(pool.pinned());
        let facts = |ns: &str, labels: &[(&str, &str)]| ServiceFacts {
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                ns.to_string(),
            )]),
        };
        let rows = [
            (
                "right namespace and label",
                facts("web", &[("exposed", "")]),
                true,
            ),
            ("right namespace, no label", facts("web", &[]), false),
            (
                "label in another namespace",
                facts("db", &[("exposed", "")]),
                false,
            ),
        ];
        for (desc, service, want) in rows {
            assert_eq!(pool.admits(&service), want, "{desc}");
        }
    }
}
