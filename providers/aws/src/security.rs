//! Security groups, decided with no I/O: the rules of the NLB's own group
//! (who may connect), the rules on the nodes' cluster groups (the NLB may
//! reach the NodePorts and the health-check port), which of a node's groups
//! is its cluster group, and the difference between what is and what should be.
//!
//! ```text
//!  clients ──(source ranges, listener ports)──► [own group] NLB
//!                                                   │
//!        (NodePorts + health-check port, from the own group)
//!                                                   ▼
//!                                  [nodes' cluster group] instances
//! ```
//!
//! Every rule on a node group whose peer is the NLB's own group is this
//! NLB's: the own group belongs to one Service, so no rule is shared with
//! another Service and removing them on delete touches nobody else's.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

/// The tag prefix that marks a resource as a cluster's (`kubernetes.io/cluster/<name>`).
pub const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";

/// The peer of a rule: clients by address, or members of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Cidr(IpNet),
    Group(String),
}

/// One ingress permission as EC2 keeps it: an IP protocol (`tcp`, `udp`,
/// `icmp`, `-1`...), a port range and one peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub peer: Peer,
}

impl Rule {
    /// `protocol` (`tcp` or `udp`) on one `port` from `peer`.
    pub fn port(protocol: &str, port: u16, peer: Peer) -> Self {
        Self {
            protocol: protocol.to_string(),
            from: i32::from(port),
            to: i32::from(port),
            peer,
        }
    }

    /// A rule as EC2 reports it, with the protocol in EC2's spelling
    /// normalised (`6` is `tcp`, `17` is `udp`, numbers otherwise kept).
    pub fn observed(protocol: &str, from: Option<i32>, to: Option<i32>, peer: Peer) -> Self {
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "6" => "tcp".to_string(),
            "17" => "udp".to_string(),
            other => other.to_string(),
        };
        Self {
            protocol,
            from: from.unwrap_or(-1),
            to: to.unwrap_or(-1),
            peer,
        }
    }
}

/// The protocols (`tcp`, `udp`) a listener of `protocol` needs rules for.
pub fn ip_protocols(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "UDP" => &["udp"],
        "TCP_UDP" => &["tcp", "udp"],
        // TCP and TLS both ride on TCP.
        _ => &["tcp"],
    }
}

/// The own group's rules: every listener port from every range.
pub fn frontend_rules(ports: &[(u16, &str)], ranges: &[IpNet]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for (port, protocol) in ports {
        for ip in ip_protocols(protocol) {
            for range in ranges {
                out.insert(Rule::port(ip, *port, Peer::Cidr(*range)));
            }
        }
    }
    out
}

/// A node group's rules for this NLB: each (protocol, port) from the own group.
pub fn backend_rules(own_group: &str, ports: &BTreeSet<(&'static str, u16)>) -> BTreeSet<Rule> {
    ports
        .iter()
        .map(|(ip, port)| Rule::port(ip, *port, Peer::Group(own_group.to_string())))
        .collect()
}

/// An EC2 instance as far as security groups and VPCs care.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceInfo {
    pub id: String,
    pub vpc_id: Option<String>,
    /// The groups of every network interface of the instance.
    pub groups: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
}

/// Which of `instance`'s groups to open for the NLB, as cloud-provider-aws
/// picks: the groups tagged for the cluster (`kubernetes.io/cluster/<name>`
/// for portico's cluster tag `own_cluster_tag`, or for the cluster the
/// instance itself is tagged for, as EKS tags its nodes), else the only group
/// the instance has. `Err` says why none can be chosen.
pub fn node_groups(
    instance: &InstanceInfo,
    group_tags: &BTreeMap<String, BTreeMap<String, String>>,
    own_cluster_tag: &str,
) -> Result<BTreeSet<String>, String> {
    let mut cluster_keys: BTreeSet<&str> = instance
        .tags
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with(CLUSTER_TAG_PREFIX))
        .collect();
    cluster_keys.insert(own_cluster_tag);
    let tagged: BTreeSet<String> = instance
        .groups
        .iter()
        .filter(|g| {
            group_tags
                .get(*g)
                .is_some_and(|tags| tags.keys().any(|k| cluster_keys.contains(k.as_str())))
        })
        .cloned()
        .collect();
    if !tagged.is_empty() {
        return Ok(tagged);
    }
    match instance.groups.len() {
        1 => Ok(instance.groups.clone()),
        0 => Err(format!("instance {} has no security group", instance.id)),
        n => Err(format!(
            "instance {} has {n} security groups and none is tagged {own_cluster_tag}: tag the one the load balancer should open",
            instance.id
        )),
    }
}

/// What to authorize and revoke on one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleChanges {
    pub authorize: Vec<Rule>,
    pub revoke: Vec<Rule>,
}

/// The changes that make `observed` equal `desired`.
pub fn diff(observed: &BTreeSet<Rule>, desired: &BTreeSet<Rule>) -> RuleChanges {
    RuleChanges {
        authorize: desired.difference(observed).cloned().collect(),
        revoke: observed.difference(desired).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn frontend_rules_cover_every_port_protocol_and_range() {
        let rules = frontend_rules(
            &[(80, "TCP"), (53, "TCP_UDP")],
            &[net("10.0.0.0/8"), net("::/0")],
        );
        assert_eq!(rules.len(), 6, "{rules:?}");
        assert!(rules.contains(&Rule::port("udp", 53, Peer::Cidr(net("::/0")))));
        assert!(!rules.contains(&Rule::port("udp", 80, Peer::Cidr(net("::/0")))));
    }

    #[test]
    fn observed_protocols_are_normalised() {
        let p = Peer::Group("sg-1".into());
        assert_eq!(
            Rule::observed("6", Some(80), Some(80), p.clone()),
            Rule::port("tcp", 80, p.clone())
        );
        assert_eq!(Rule::observed("-1", None, None, p.clone()).from, -1);
    }

    #[test]
    fn node_group_choice() {
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let group_tags: BTreeMap<String, BTreeMap<String, String>> = [
            ("sg-ours", tags(&[("kubernetes.io/cluster/c1", "owned")])),
            (
                "sg-eks",
                tags(&[("kubernetes.io/cluster/prod-eks", "owned")]),
            ),
            ("sg-plain", tags(&[])),
            ("sg-other", tags(&[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let instance = |groups: &[&str], itags: &[(&str, &str)]| InstanceInfo {
            id: "i-1".into(),
            vpc_id: Some("vpc-1".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            tags: tags(itags),
        };
        let own = "kubernetes.io/cluster/c1";
        type Case = (
            &'static str,
            InstanceInfo,
            Result<Vec<&'static str>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "tagged for portico's cluster",
                instance(&["sg-plain", "sg-ours"], &[]),
                Ok(vec!["sg-ours"]),
            ),
            (
                "tagged for the cluster the instance names (EKS)",
                instance(
                    &["sg-plain", "sg-eks"],
                    &[("kubernetes.io/cluster/prod-eks", "owned")],
                ),
                Ok(vec!["sg-eks"]),
            ),
            (
                "another cluster's tag is not ours",
                instance(&["sg-eks", "sg-plain"], &[]),
                Err("none is tagged"),
            ),
            (
                "the only group",
                instance(&["sg-plain"], &[]),
                Ok(vec!["sg-plain"]),
            ),
            ("no group", instance(&[], &[]), Err("no security group")),
        ];
        for (desc, inst, want) in cases {
            let got = node_groups(&inst, &group_tags, own);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(
                    g.iter().map(String::as_str).collect::<Vec<_>>(),
                    w,
                    "{desc}"
                ),
                (Err(e), Err(w)) => assert!(e.contains(w), "{desc}: {e}"),
                (got, want) => panic!("{desc}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn diff_authorizes_missing_and_revokes_extra_only() {
        let g = |p| Rule::port("tcp", p, Peer::Group("sg-lb".into()));
        let observed: BTreeSet<Rule> = [g(30080), g(30443)].into();
        let desired: BTreeSet<Rule> = [g(30080), g(10256)].into();
        let changes = diff(&observed, &desired);
        assert_eq!(changes.authorize, vec![g(10256)]);
        assert_eq!(changes.revoke, vec![g(30443)]);
        assert_eq!(diff(&desired, &desired), RuleChanges::default());
    }
}
