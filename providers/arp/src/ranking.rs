//! Which node announces each VIP: a pure function that every speaker
//! computes the same way from the same facts, so they agree without talking.
//!
//! Among the eligible nodes of a VIP, the one with the lowest
//! `sha256(node + "#" + vip)` announces it (MetalLB's layer-2 rule). Hashing
//! node and VIP together spreads VIPs over the nodes, and when a node goes
//! only its own VIPs move: every other VIP keeps its announcer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// What ranking needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Node's name.
    pub name: String,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    pub excluded: bool,
    /// Its speaker is alive (gossip, or the Kubernetes view as fallback).
    pub alive: bool,
}

/// How a Service sends traffic that arrives on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// `externalTrafficPolicy: Cluster`: any node forwards.
    Cluster,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint of
    /// the Service (from its EndpointSlices) may receive traffic.
    Local {
        /// Nodes that run at least one ready endpoint.
        ready_nodes: BTreeSet<String>,
    },
}

impl TrafficPolicy {
    fn admits(&self, node: &str) -> bool {
        match self {
            TrafficPolicy::Cluster => true,
            TrafficPolicy::Local { ready_nodes } => ready_nodes.contains(node),
        }
    }
}

/// Why no node announces a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnnouncer {
    /// No node is alive and not excluded.
    NoEligibleNode,
    /// Nodes are up, but none has a ready endpoint of every Service
    /// (`externalTrafficPolicy: Local`) on this VIP.
    NoReadyEndpoints,
}

/// The announcing node of `vip`, served by Services with `policies` (more
/// than one when Services share the IP: a node must suit all of them).
pub fn announcer<'a>(
    vip: IpAddr,
    policies: &[TrafficPolicy],
    nodes: &'a [NodeFacts],
) -> Result<&'a str, NoAnnouncer> {
    let mut up = nodes.iter().filter(|n| n.alive && !n.excluded).peekable();
    if up.peek().is_none() {
        return Err(NoAnnouncer::NoEligibleNode);
    }
    up.filter(|n| policies.iter().all(|p| p.admits(&n.name)))
        .map(|n| (score(&n.name, vip), n.name.as_str()))
        .min()
        .map(|(_, name)| name)
        .ok_or(NoAnnouncer::NoReadyEndpoints)
}

/// A node's rank for a VIP: lower wins; the name breaks (impossible) ties.
fn score(node: &str, vip: IpAddr) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(node.as_bytes());
    hash.update(b"#");
    hash.update(vip.to_string().as_bytes());
    hash.finalize().into()
}

/// `announcer` for every VIP at once.
pub fn assign<'a>(
    vips: &BTreeMap<IpAddr, Vec<TrafficPolicy>>,
    nodes: &'a [NodeFacts],
) -> BTreeMap<IpAddr, Result<&'a str, NoAnnouncer>> {
    vips.iter()
        .map(|(vip, policies)| (*vip, announcer(*vip, policies, nodes)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            excluded: false,
            alive: true,
        }
    }

    fn dead(name: &str) -> NodeFacts {
        NodeFacts {
            alive: false,
            ..node(name)
        }
    }

    fn excluded(name: &str) -> NodeFacts {
        NodeFacts {
            excluded: true,
            ..node(name)
        }
    }

    fn local(ready: &[&str]) -> TrafficPolicy {
        TrafficPolicy::Local {
            ready_nodes: ready.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    /// The winner among all three nodes, found by the rule itself so the
    /// rows below do not hard-code hash results.
    fn first_choice(vip: IpAddr) -> String {
        let all = [node("a"), node("b"), node("c")];
        announcer(vip, &[TrafficPolicy::Cluster], &all)
            .expect("three live nodes")
            .to_string()
    }

    #[test]
    fn table() {
        let vip = ip("192.0.2.10");
        let winner = first_choice(vip);
        let others: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|n| *n != winner)
            .collect();
        let with = |f: &dyn Fn(&str) -> NodeFacts| -> Vec<NodeFacts> {
            ["a", "b", "c"]
                .iter()
                .map(|n| if *n == winner { f(n) } else { node(n) })
                .collect()
        };
        type Row = (
            &'static str,
            Vec<NodeFacts>,
            Vec<TrafficPolicy>,
            Box<dyn Fn(Result<&str, NoAnnouncer>) -> bool>,
        );
        let w = winner.clone();
        let w2 = winner.clone();
        let (o0, o1) = (others[0].to_string(), others[1].to_string());
        let rows: Vec<Row> = vec![
            (
                "all alive: the winner announces",
                with(&node),
                vec![TrafficPolicy::Cluster],
                Box::new(move |r| r == Ok(w.as_str())),
            ),
            (
                "the winner's speaker is dead: another node announces",
                with(&dead),
                vec![TrafficPolicy::Cluster],
                Box::new(move |r| r.is_ok_and(|n| n != w2)),
            ),
            (
                "the winner is excluded by label: another node announces",
                with(&excluded),
                vec![TrafficPolicy::Cluster],
                Box::new({
                    let w = winner.clone();
                    move |r| r.is_ok_and(|n| n != w)
                }),
            ),
            (
                "Local: only a node with ready endpoints may announce",
                with(&node),
                vec![local(&[&o1])],
                Box::new({
                    let o1 = o1.clone();
                    move |r| r == Ok(o1.as_str())
                }),
            ),
            (
                "Local with no ready endpoint anywhere: nobody announces",
                with(&node),
                vec![local(&[])],
                Box::new(|r| r == Err(NoAnnouncer::NoReadyEndpoints)),
            ),
            (
                "Local: endpoints only on a dead node: nobody announces",
                vec![dead(&o0), node(&o1), node(&winner)],
                vec![local(&[&o0])],
                Box::new(|r| r == Err(NoAnnouncer::NoReadyEndpoints)),
            ),
            (
                "no node alive: nobody announces",
                vec![dead("a"), dead("b"), dead("c")],
                vec![TrafficPolicy::Cluster],
                Box::new(|r| r == Err(NoAnnouncer::NoEligibleNode)),
            ),
            (
                "every node excluded: nobody announces",
                vec![excluded("a"), excluded("b"), excluded("c")],
                vec![TrafficPolicy::Cluster],
                Box::new(|r| r == Err(NoAnnouncer::NoEligibleNode)),
            ),
            (
                "shared IP: a node must suit every Service on it",
                with(&node),
                vec![TrafficPolicy::Cluster, local(&[&o0]), local(&[&o0, &o1])],
                Box::new({
                    let o0 = o0.clone();
                    move |r| r == Ok(o0.as_str())
                }),
            ),
            (
                "shared IP: Local Services with disjoint endpoints: nobody",
                with(&node),
                vec![local(&[&o0]), local(&[&o1])],
                Box::new(|r| r == Err(NoAnnouncer::NoReadyEndpoints)),
            ),
            (
                "no nodes at all: nobody",
                vec![],
                vec![TrafficPolicy::Cluster],
                Box::new(|r| r == Err(NoAnnouncer::NoEligibleNode)),
            ),
        ];
        for (desc, nodes, policies, check) in rows {
            let got = announcer(vip, &policies, &nodes);
            assert!(check(got), "{desc}: got {got:?}");
        }
    }

    #[test]
    fn every_speaker_agrees_whatever_order_it_lists_nodes_in() {
        let nodes = [node("a"), node("b"), node("c"), node("d")];
        for i in 0..50u8 {
            let vip = ip(&format!("198.51.100.{i}"));
            let forward = announcer(vip, &[TrafficPolicy::Cluster], &nodes);
            let mut reversed = nodes.to_vec();
            reversed.reverse();
            let backward = announcer(vip, &[TrafficPolicy::Cluster], &reversed);
            assert_eq!(forward, backward, "{vip}");
        }
    }

    #[test]
    fn vips_spread_over_nodes_and_a_death_moves_only_its_own() {
        let all = [node("node-a"), node("node-b"), node("node-c")];
        let vips: BTreeMap<IpAddr, Vec<TrafficPolicy>> = (0..300u32)
            .map(|i| {
                let v4 = ip(&format!("10.{}.{}.1", i / 256, i % 256));
                (v4, vec![TrafficPolicy::Cluster])
            })
            .chain((0..60u32).map(|i| (ip(&format!("fd00::{i:x}")), vec![TrafficPolicy::Cluster])))
            .collect();
        let before = assign(&vips, &all);
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for owner in before.values() {
            *per_node.entry(owner.expect("all alive")).or_default() += 1;
        }
        for name in ["node-a", "node-b", "node-c"] {
            let share = per_node.get(name).copied().unwrap_or(0);
            assert!(
                share >= 80,
                "{name} announces {share} of 360 VIPs: the hash does not spread ({per_node:?})"
            );
        }
        let without_b = [node("node-a"), dead("node-b"), node("node-c")];
        let after = assign(&vips, &without_b);
        for (vip, owner) in &before {
            let owner = owner.expect("all alive");
            let now = after[vip].expect("two alive");
            if owner == "node-b" {
                assert_ne!(now, "node-b", "{vip} left the dead node");
            } else {
                assert_eq!(now, owner, "{vip} stays where it was");
            }
        }
    }
}
