//! Security groups, decided with no I/O: the rules of the NLB's own group
//! (who may connect), the rules on the nodes' cluster groups (the NLBs may
//! reach the NodePorts and the health-check port), which of a node's groups
//! is its cluster group, and the difference between what is and what should be.
//!
//! ```text
//!  clients ──(source ranges, listener ports)──► [own group] NLB [backend group]
//!                                                                    │
//!          (the NodePort range and kube-proxy's health port, from the backend group)
//!                                                                    ▼
//!                                               [nodes' cluster group] instances
//! ```
//!
//! Two groups per NLB, as the AWS Load Balancer Controller does it:
//! - the **own group** is one Service's: its rules say who may connect;
//! - the **backend group** is the cluster's, one per VPC, attached to every
//!   NLB. The nodes' groups accept the NodePort range from it, so their
//!   rules stay three however many Services there are (AWS allows 60 rules
//!   per group; a rule per NodePort ran out at about 20 Services).
//!
//! A port the shared rules do not cover (a health-check port set by number
//! outside the range) is opened from the own group instead: that rule is
//! the Service's alone and goes with it.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

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

/// kube-proxy's health endpoint (`/healthz`), checked for `externalTrafficPolicy: Cluster`.
pub const KUBE_PROXY_HEALTH_PORT: u16 = 10256;

/// The cluster's NodePort range (`--service-node-port-range` of the API server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodePortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for NodePortRange {
    /// Kubernetes' default range.
    fn default() -> Self {
        Self {
            first: 30000,
            last: 32767,
        }
    }
}

impl NodePortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::str::FromStr for NodePortRange {
    type Err = String;

    /// `first-last` (`30000-32767`), as the API server's flag spells it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a port range like 30000-32767");
        let (first, last) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!(
                "{s:?}: the first port must be at least 1 and not above the last"
            ));
        }
        Ok(Self { first, last })
    }
}

impl TryFrom<String> for NodePortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodePortRange> for String {
    fn from(r: NodePortRange) -> Self {
        r.to_string()
    }
}

impl std::fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The rules every node group holds for the cluster's backend group: TCP
/// and UDP on the whole NodePort range, and kube-proxy's health port. The
/// same for every Service, so they are shared and never per Service.
pub fn shared_backend_rules(backend_group: &str, range: NodePortRange) -> BTreeSet<Rule> {
    let peer = Peer::Group(backend_group.to_string());
    let span = |protocol: &str| Rule {
        protocol: protocol.to_string(),
        from: i32::from(range.first),
        to: i32::from(range.last),
        peer: peer.clone(),
    };
    [
        span("tcp"),
        span("udp"),
        Rule::port("tcp", KUBE_PROXY_HEALTH_PORT, peer.clone()),
    ]
    .into()
}

/// Whether the shared rules let (`protocol`, `port`) through.
pub fn shared_rules_cover(range: NodePortRange, protocol: &str, port: u16) -> bool {
    (matches!(protocol, "tcp" | "udp") && range.contains(port))
        || (protocol == "tcp" && port == KUBE_PROXY_HEALTH_PORT)
}

/// A node group's rules for this NLB alone: each (protocol, port) from the own group.
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
    fn node_port_ranges_parse_or_say_why() {
        type Case = (&'static str, Result<(u16, u16), &'static str>);
        let cases: [Case; 6] = [
            ("30000-32767", Ok((30000, 32767))),
            (" 20000 - 22767 ", Ok((20000, 22767))),
            ("30000", Err("not a port range")),
            ("30000-99999", Err("not a port range")),
            ("32767-30000", Err("not above the last")),
            ("0-100", Err("at least 1")),
        ];
        for (input, want) in cases {
            match (input.parse::<NodePortRange>(), want) {
                (Ok(r), Ok((first, last))) => {
                    assert_eq!((r.first, r.last), (first, last), "{input}");
                    assert_eq!(r.to_string().parse::<NodePortRange>(), Ok(r));
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn shared_rules_are_three_and_cover_the_range_and_kube_proxy() {
        let range = NodePortRange::default();
        let rules = shared_backend_rules("sg-backend", range);
        assert_eq!(rules.len(), 3, "{rules:?}");
        for (protocol, port, covered) in [
            ("tcp", 30000, true),
            ("udp", 32767, true),
            ("tcp", 10256, true),
            ("udp", 10256, false),
            ("tcp", 8080, false),
            ("tcp", 29999, false),
            ("icmp", 30001, false),
        ] {
            assert_eq!(
                shared_rules_cover(range, protocol, port),
                covered,
                "{protocol}/{port}"
            );
            let by_rule = rules.iter().any(|r| {
                r.protocol == protocol && r.from <= i32::from(port) && i32::from(port) <= r.to
            });
            assert_eq!(by_rule, covered, "the rules agree for {protocol}/{port}");
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
