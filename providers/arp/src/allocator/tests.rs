//! Table tests: each row is one described step against one allocator,
//! checked before the next row runs (MetalLB's allocator tests read the
//! same way). One file on purpose, though long: the tables share one small
//! step language (`Op`, `Want`, `run`) and read top to bottom.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use portico_provider::{ClusterName, IpFamily, LoadBalancerKey, Protocol, TrafficPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::pool::{AddressBlock, IpPool, IpPoolSpec};
use crate::pools::{ServiceFacts, validate};

fn key(name: &str) -> LoadBalancerKey {
    LoadBalancerKey::new(
        ClusterName::new("c"),
        "default",
        name,
        format!("uid-{name}"),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A request of `name` in namespace `default`, IPv4, TCP/80, not shared.
#[derive(Clone)]
struct R(Request);

fn req(name: &str) -> R {
    R(Request {
        key: key(name),
        facts: ServiceFacts {
            namespace: "default".into(),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "default".into(),
            )]),
        },
        families: vec![IpFamily::V4],
        family_policy: FamilyPolicy::SingleStack,
        ips: Vec::new(),
        pool: None,
        ports: BTreeSet::from([(Protocol::Tcp, 80)]),
        sharing: Sharing::exclusive(),
    })
}

impl R {
    fn ip(mut self, ips: &[&str]) -> Self {
        self.0.ips = ips.iter().map(|s| ip(s)).collect();
        self
    }
    fn ports(mut self, ports: &[(Protocol, u16)]) -> Self {
        self.0.ports = ports.iter().copied().collect();
        self
    }
    fn share(mut self, key: &str) -> Self {
        self.0.sharing.key = Some(key.into());
        self
    }
    fn local(mut self) -> Self {
        self.0.sharing.traffic = TrafficPolicy::Local;
        self
    }
    fn pool(mut self, pool: &str) -> Self {
        self.0.pool = Some(pool.into());
        self
    }
    fn namespace(mut self, ns: &str) -> Self {
        self.0.key.namespace = ns.into();
        self.0.facts.namespace = ns.into();
        self.0.facts.namespace_labels =
            BTreeMap::from([("kubernetes.io/metadata.name".into(), ns.into())]);
        self
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.0.facts.labels.insert(k.into(), v.into());
        self
    }
    fn families(mut self, families: &[IpFamily], policy: FamilyPolicy) -> Self {
        self.0.families = families.to_vec();
        self.0.family_policy = policy;
        self
    }
}

fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..LabelSelector::default()
    }
}

/// A pool object; `tweak` sets the optional fields.
fn pool(name: &str, addresses: &[&str], tweak: impl FnOnce(&mut IpPoolSpec)) -> IpPool {
    let mut spec = IpPoolSpec {
        addresses: addresses.iter().map(|a| AddressBlock::from(*a)).collect(),
        auto_assign: true,
        avoid_buggy_ips: false,
        namespace_selector: None,
        service_selector: None,
    };
    tweak(&mut spec);
    IpPool::new(name, spec)
}

fn allocator(pools: &[IpPool]) -> Allocator {
    let mut a = Allocator::new();
    a.set_pools(&validate(pools));
    a
}

/// One step of a table.
enum Op {
    Alloc(R),
    Release(&'static str),
    Foreign(&'static str, &'static [&'static str]),
    /// Adopt a status; the holders named in the last field show their
    /// addresses in their status (they are published).
    Adopt(R, &'static [&'static str], &'static [&'static str]),
    Pools(Vec<IpPool>),
    /// Only check what a Service holds.
    Holds(&'static str),
}

/// What a step must give.
enum Want {
    /// These addresses, and whether the allocator changed.
    Ips(&'static [&'static str], bool),
    /// An error containing these words.
    Fails(&'static str),
    /// Nothing held.
    Nothing,
    Adopted(&'static [&'static str]),
    Conflict,
    Done,
}

fn run(a: &mut Allocator, rows: Vec<(&str, Op, Want)>) {
    for (desc, op, want) in rows {
        match (op, want) {
            (Op::Alloc(r), Want::Ips(ips, changed)) => {
                let got = a
                    .allocate(&r.0)
                    .unwrap_or_else(|e| panic!("{desc}: refused: {e}"));
                let want: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
                assert_eq!(got.ips, want, "{desc}");
                assert_eq!(got.changed, changed, "{desc}: changed");
                assert_eq!(
                    a.get(&r.0.key).map(|h| h.ips.clone()),
                    Some(want),
                    "{desc}: held"
                );
            }
            (Op::Alloc(r), Want::Fails(words)) => {
                let before = a.get(&r.0.key).cloned();
                let generation = a.generation();
                let err = a
                    .allocate(&r.0)
                    .map(|got| got.ips)
                    .expect_err(desc)
                    .to_string();
                assert!(err.contains(words), "{desc}: {err:?} lacks {words:?}");
                assert_eq!(
                    a.get(&r.0.key),
                    before.as_ref(),
                    "{desc}: a refusal keeps the holding"
                );
                if before.is_none() {
                    assert_eq!(
                        a.generation(),
                        generation,
                        "{desc}: a refusal changes nothing"
                    );
                }
            }
            (Op::Release(name), Want::Done) => {
                assert!(
                    a.release(&key(name)).is_some(),
                    "{desc}: {name} held something"
                );
                assert!(
                    a.release(&key(name)).is_none(),
                    "{desc}: releasing twice is a no-op"
                );
            }
            (Op::Foreign(svc, ips), Want::Done) => {
                a.set_foreign(svc, ips.iter().map(|s| ip(s)).collect());
            }
            (Op::Adopt(r, status, published), want) => {
                let claim = Claim {
                    key: r.0.key.clone(),
                    ips: status.iter().map(|s| ip(s)).collect(),
                    ports: r.0.ports.clone(),
                    sharing: r.0.sharing.clone(),
                };
                let published: BTreeSet<LoadBalancerKey> =
                    published.iter().map(|n| key(n)).collect();
                let got = a.adopt(&claim, |k, _| published.contains(k));
                match (got, want) {
                    (Adoption::Adopted { evicted }, Want::Adopted(names)) => {
                        let names: Vec<LoadBalancerKey> = names.iter().map(|n| key(n)).collect();
                        assert_eq!(evicted, names, "{desc}: evicted");
                        assert_eq!(
                            a.get(&claim.key).map(|h| h.ips.clone()),
                            Some(claim.ips),
                            "{desc}"
                        );
                    }
                    (Adoption::Conflict { .. }, Want::Conflict) => {}
                    (Adoption::AlreadyHeld, Want::Done) => {}
                    (got, _) => panic!("{desc}: adoption gave {got:?}"),
                }
            }
            (Op::Pools(pools), Want::Done) => a.set_pools(&validate(&pools)),
            (Op::Holds(name), Want::Ips(ips, _)) => {
                let want: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
                assert_eq!(
                    a.get(&key(name)).map(|h| h.ips.clone()),
                    Some(want),
                    "{desc}"
                );
            }
            (Op::Holds(name), Want::Nothing) => {
                assert_eq!(a.get(&key(name)), None, "{desc}");
            }
            _ => panic!("{desc}: a row pairs an operation with an answer it cannot give"),
        }
        check_invariants(a, desc);
    }
}

/// Never two Services on one address unless they may share it; never one
/// of ours on an address another controller's Service shows.
fn check_invariants(a: &Allocator, desc: &str) {
    for (address, holders) in &a.holders {
        let owned: Vec<&Allocation> = holders
            .owned
            .iter()
            .map(|k| a.allocations.get(k).expect("holder has a holding"))
            .collect();
        assert!(
            holders.foreign.is_empty() || owned.is_empty(),
            "{desc}: {address} is ours and another controller's"
        );
        for (i, x) in owned.iter().enumerate() {
            for y in &owned[i + 1..] {
                assert!(
                    x.sharing.key.is_some()
                        && x.sharing == y.sharing
                        && x.ports.is_disjoint(&y.ports),
                    "{desc}: {address} held by two Services that may not share it"
                );
            }
        }
    }
    for (k, h) in &a.allocations {
        assert_eq!(
            family_set(&h.ips).len(),
            h.ips.len(),
            "{desc}: {k} holds two addresses of one family"
        );
        for ip in &h.ips {
            assert!(a.holders[ip].owned.contains(k), "{desc}: index out of step");
        }
    }
}

#[test]
fn addresses_go_to_one_service_at_a_time() {
    let mut a = allocator(&[pool("p", &["10.0.0.0/30"], |_| {})]);
    run(
        &mut a,
        vec![
            (
                "s1 gets the lowest address",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "s1 asking again gets the same, and nothing changes",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.0"], false),
            ),
            (
                "s2 gets the next",
                Op::Alloc(req("s2")),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "s3 can't take s1's address",
                Op::Alloc(req("s3").ip(&["10.0.0.0"])),
                Want::Fails("10.0.0.0 is in use by default/s1"),
            ),
            (
                "s3 can't have an address outside every pool",
                Op::Alloc(req("s3").ip(&["192.0.2.1"])),
                Want::Fails("192.0.2.1 is outside every accepted IPPool"),
            ),
            (
                "s3 gets the free address it names",
                Op::Alloc(req("s3").ip(&["10.0.0.3"])),
                Want::Ips(&["10.0.0.3"], true),
            ),
            (
                "s4 gets the one left between",
                Op::Alloc(req("s4")),
                Want::Ips(&["10.0.0.2"], true),
            ),
            (
                "s5 finds the pool exhausted",
                Op::Alloc(req("s5")),
                Want::Fails("no free IPv4 address in IPPool(s) p"),
            ),
            ("s1 is deleted", Op::Release("s1"), Want::Done),
            (
                "s5 gets s1's freed address",
                Op::Alloc(req("s5")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "s2 changes its ports and keeps its address",
                Op::Alloc(req("s2").ports(&[(Protocol::Tcp, 443)])),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "s3 asks for a taken address and keeps the one it has",
                Op::Alloc(req("s3").ip(&["10.0.0.2"])),
                Want::Fails("in use by default/s4"),
            ),
            (
                "s3 still holds its address",
                Op::Holds("s3"),
                Want::Ips(&["10.0.0.3"], false),
            ),
            (
                "s3 no longer names an address: it keeps the one it has",
                Op::Alloc(req("s3")),
                Want::Ips(&["10.0.0.3"], false),
            ),
        ],
    );
}

#[test]
fn a_sharing_key_shares_an_address_when_the_ports_do_not_clash() {
    let mut a = allocator(&[pool("p", &["10.0.0.0/29"], |_| {})]);
    let tcp = |p| (Protocol::Tcp, p);
    run(
        &mut a,
        vec![
            (
                "a1 with key k on TCP/80",
                Op::Alloc(req("a1").share("k")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "a2 with key k on TCP/443 joins a1's address",
                Op::Alloc(req("a2").share("k").ports(&[tcp(443)])),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "a3 with key k on TCP/80 would clash, so it gets its own",
                Op::Alloc(req("a3").share("k")),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "a shared key with clashing ports is refused",
                Op::Alloc(req("a4").share("k").ip(&["10.0.0.0"]).ports(&[tcp(443)])),
                Want::Fails("port 443/TCP is taken there"),
            ),
            (
                "no key, no sharing",
                Op::Alloc(req("b1").ip(&["10.0.0.0"]).ports(&[tcp(8080)])),
                Want::Fails("10.0.0.0 is in use by default/a1"),
            ),
            (
                "another key, no sharing",
                Op::Alloc(
                    req("b2")
                        .share("other")
                        .ip(&["10.0.0.0"])
                        .ports(&[tcp(8080)]),
                ),
                Want::Fails("with sharing key \"k\", not \"other\""),
            ),
            (
                "the same key with another traffic policy, no sharing",
                Op::Alloc(
                    req("c1")
                        .share("k")
                        .local()
                        .ip(&["10.0.0.0"])
                        .ports(&[tcp(8080)]),
                ),
                Want::Fails("externalTrafficPolicy"),
            ),
            (
                "DNS: UDP/53 ...",
                Op::Alloc(
                    req("d1")
                        .share("dns")
                        .ip(&["10.0.0.2"])
                        .ports(&[(Protocol::Udp, 53)]),
                ),
                Want::Ips(&["10.0.0.2"], true),
            ),
            (
                "... and TCP/53 share one address",
                Op::Alloc(req("d2").share("dns").ip(&["10.0.0.2"]).ports(&[tcp(53)])),
                Want::Ips(&["10.0.0.2"], true),
            ),
            (
                "a2 moving onto port 80 (a1's and a3's) leaves for a free address",
                Op::Alloc(req("a2").share("k")),
                Want::Ips(&["10.0.0.3"], true),
            ),
            ("a1 is deleted", Op::Release("a1"), Want::Done),
            (
                "the address a1 left is free again",
                Op::Alloc(req("b3").ip(&["10.0.0.0"])),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "a3 widening its ports on an address it holds alone keeps it",
                Op::Alloc(req("a3").share("k").ports(&[tcp(80), tcp(443)])),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "a5 with key k on another port joins the lowest address of key k",
                Op::Alloc(req("a5").share("k").ports(&[tcp(8080)])),
                Want::Ips(&["10.0.0.1"], true),
            ),
        ],
    );
}

#[test]
fn pools_are_chosen_by_selectors_names_and_auto_assign() {
    let mut a = allocator(&[
        pool("open", &["10.0.0.0/31"], |_| {}),
        pool("manual", &["10.1.0.0/31"], |s| s.auto_assign = false),
        pool("team", &["10.2.0.0/31"], |s| {
            s.namespace_selector = Some(labels(&[("kubernetes.io/metadata.name", "web")]));
        }),
        pool("front", &["10.3.0.0/31"], |s| {
            s.service_selector = Some(labels(&[("tier", "front")]));
        }),
    ]);
    run(
        &mut a,
        vec![
            (
                "a Service in web gets its team's pool before the open one",
                Op::Alloc(req("w1").namespace("web")),
                Want::Ips(&["10.2.0.0"], true),
            ),
            (
                "a Service elsewhere gets the open pool",
                Op::Alloc(req("o1")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            (
                "a labelled Service gets the pool selecting it",
                Op::Alloc(req("f1").label("tier", "front")),
                Want::Ips(&["10.3.0.0"], true),
            ),
            (
                "naming a pool without autoAssign gives its address",
                Op::Alloc(req("m1").pool("manual")),
                Want::Ips(&["10.1.0.0"], true),
            ),
            (
                "an address of that pool may be named too",
                Op::Alloc(req("m2").ip(&["10.1.0.1"])),
                Want::Ips(&["10.1.0.1"], true),
            ),
            (
                "naming a pool that does not exist",
                Op::Alloc(req("x1").pool("nope")),
                Want::Fails("\"nope\" does not exist"),
            ),
            (
                "naming a team's pool from another namespace",
                Op::Alloc(req("x2").pool("team")),
                Want::Fails("IPPool \"team\" does not admit this Service"),
            ),
            (
                "naming an address of a team's pool from another namespace",
                Op::Alloc(req("x3").ip(&["10.2.0.1"])),
                Want::Fails("IPPool \"team\" does not admit this Service"),
            ),
            (
                "an address outside the pool it also names",
                Op::Alloc(req("x4").ip(&["10.0.0.1"]).pool("manual")),
                Want::Fails("10.0.0.1 is not in the requested IPPool \"manual\""),
            ),
            (
                "the open pool's last address",
                Op::Alloc(req("o2")),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "a pool without autoAssign is never used unasked",
                Op::Alloc(req("o3")),
                Want::Fails("no free IPv4 address in IPPool(s) open"),
            ),
            (
                "w1 asking again keeps its team pool address",
                Op::Alloc(req("w1").namespace("web")),
                Want::Ips(&["10.2.0.0"], false),
            ),
            (
                "losing the label that chose a pool moves the Service at its next allocation",
                Op::Alloc(req("f1")),
                Want::Fails("no free IPv4 address in IPPool(s) open"),
            ),
            (
                "it keeps its address meanwhile",
                Op::Holds("f1"),
                Want::Ips(&["10.3.0.0"], false),
            ),
        ],
    );
}

#[test]
fn dual_stack_follows_the_families_and_their_policy() {
    let mut a = allocator(&[
        pool("dual", &["10.0.0.0/31", "fd00::/127"], |_| {}),
        pool("v4only", &["10.9.0.0/32"], |_| {}),
    ]);
    let (v4, v6) = (IpFamily::V4, IpFamily::V6);
    let single6 = |name| req(name).families(&[v6], FamilyPolicy::SingleStack);
    let require =
        |name, families: &[IpFamily]| req(name).families(families, FamilyPolicy::RequireDualStack);
    let prefer = |name| req(name).families(&[v4, v6], FamilyPolicy::PreferDualStack);
    run(
        &mut a,
        vec![
            (
                "single-stack IPv6 takes fd00::",
                Op::Alloc(single6("s6a")),
                Want::Ips(&["fd00::"], true),
            ),
            (
                "and fd00::1",
                Op::Alloc(single6("s6b")),
                Want::Ips(&["fd00::1"], true),
            ),
            (
                "RequireDualStack is refused when no pool has both families free",
                Op::Alloc(require("d3", &[v4, v6])),
                Want::Fails("no free IPv4+IPv6 address in IPPool(s) dual, v4only"),
            ),
            (
                "PreferDualStack settles for IPv4 alone, from the first pool that has it",
                Op::Alloc(prefer("d4")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            ("s6b is deleted", Op::Release("s6b"), Want::Done),
            (
                "PreferDualStack gains the missing family from its pool once it is free",
                Op::Alloc(prefer("d4")),
                Want::Ips(&["10.0.0.0", "fd00::1"], true),
            ),
            ("s6a is deleted", Op::Release("s6a"), Want::Done),
            (
                "RequireDualStack gets one of each; IPv6-primary lists IPv6 first",
                Op::Alloc(require("d2", &[v6, v4])),
                Want::Ips(&["fd00::", "10.0.0.1"], true),
            ),
            ("d2 is deleted", Op::Release("d2"), Want::Done),
            (
                "a dual-stack Service may name its pair, in any order",
                Op::Alloc(require("d5", &[v4, v6]).ip(&["fd00::", "10.0.0.1"])),
                Want::Ips(&["10.0.0.1", "fd00::"], true),
            ),
            (
                "a pair split over two pools is refused",
                Op::Alloc(require("d6", &[v4, v6]).ip(&["10.9.0.0", "fd00::1"])),
                Want::Fails("in different IPPools (v4only, dual)"),
            ),
            (
                "single-stack IPv6 finds none left",
                Op::Alloc(single6("s6c")),
                Want::Fails("no free IPv6 address in IPPool(s) dual, v4only"),
            ),
        ],
    );
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut a = allocator(&[pool("p", &["10.0.0.254-10.0.1.1"], |s| {
        s.avoid_buggy_ips = true
    })]);
    run(
        &mut a,
        vec![
            (
                "s1 gets .254",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.254"], true),
            ),
            (
                "s2 skips .255 and .0",
                Op::Alloc(req("s2")),
                Want::Ips(&["10.0.1.1"], true),
            ),
            (
                "then the pool is exhausted",
                Op::Alloc(req("s3")),
                Want::Fails("no free IPv4"),
            ),
            (
                "naming a .255 address is refused with the reason",
                Op::Alloc(req("s4").ip(&["10.0.0.255"])),
                Want::Fails("avoids (avoidBuggyIPs)"),
            ),
        ],
    );
    let usage = a.usage(&a.pools()[0]);
    assert_eq!(
        usage,
        Usage {
            capacity: 2,
            in_use: 2
        }
    );
}

#[test]
fn statuses_are_adopted_after_a_restart() {
    let mut a = allocator(&[pool("p", &["10.0.0.0/30"], |_| {})]);
    run(
        &mut a,
        vec![
            (
                "s2's status address is adopted",
                Op::Adopt(req("s2"), &["10.0.0.0"], &[]),
                Want::Adopted(&[]),
            ),
            (
                "s1's too",
                Op::Adopt(req("s1"), &["10.0.0.1"], &[]),
                Want::Adopted(&[]),
            ),
            (
                "a new Service gets neither",
                Op::Alloc(req("s3")),
                Want::Ips(&["10.0.0.2"], true),
            ),
            (
                "s1's next allocation keeps its adopted address unchanged",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.1"], false),
            ),
            (
                "s4 holds an address its status never showed",
                Op::Alloc(req("s4")),
                Want::Ips(&["10.0.0.3"], true),
            ),
            (
                "a status showing it takes it from the unpublished holding",
                Op::Adopt(req("s5"), &["10.0.0.3"], &[]),
                Want::Adopted(&["s4"]),
            ),
            ("s4 holds nothing now", Op::Holds("s4"), Want::Nothing),
            (
                "two statuses showing one address: the first keeps it",
                Op::Adopt(req("s6"), &["10.0.0.0"], &["s2"]),
                Want::Conflict,
            ),
            (
                "adopting for a Service that holds addresses does nothing",
                Op::Adopt(req("s1"), &["10.0.0.2"], &[]),
                Want::Done,
            ),
            (
                "an address outside every pool is adopted and kept from others",
                Op::Adopt(req("s7"), &["192.0.2.5"], &[]),
                Want::Adopted(&[]),
            ),
            (
                "a pool holding it appears",
                Op::Pools(vec![
                    pool("p", &["10.0.0.0/30"], |_| {}),
                    pool("q", &["192.0.2.4/31"], |_| {}),
                ]),
                Want::Done,
            ),
            (
                "the next Service skips s7's address",
                Op::Alloc(req("s8")),
                Want::Ips(&["192.0.2.4"], true),
            ),
            (
                "a keyed status on an address an unkeyed Service shows is a conflict",
                Op::Adopt(
                    req("k1").share("k").ports(&[(Protocol::Udp, 53)]),
                    &["10.0.0.2"],
                    &["s3"],
                ),
                Want::Conflict,
            ),
        ],
    );
    // A fresh allocator (a restart) adopting a shared address twice.
    let mut b = allocator(&[pool("p", &["10.0.0.0/30"], |_| {})]);
    run(
        &mut b,
        vec![
            (
                "k1 shows 10.0.0.2 under key k",
                Op::Adopt(
                    req("k1").share("k").ports(&[(Protocol::Udp, 53)]),
                    &["10.0.0.2"],
                    &[],
                ),
                Want::Adopted(&[]),
            ),
            (
                "k2 shows it under the same key on other ports",
                Op::Adopt(
                    req("k2").share("k").ports(&[(Protocol::Tcp, 53)]),
                    &["10.0.0.2"],
                    &["k1"],
                ),
                Want::Adopted(&[]),
            ),
            (
                "a new Service with the key joins them",
                Op::Alloc(req("k3").share("k").ports(&[(Protocol::Tcp, 80)])),
                Want::Ips(&["10.0.0.2"], true),
            ),
        ],
    );
}

#[test]
fn addresses_other_controllers_show_are_never_handed_out() {
    let mut a = allocator(&[pool("p", &["10.0.0.0/30"], |_| {})]);
    run(
        &mut a,
        vec![
            (
                "MetalLB's Service shows 10.0.0.0",
                Op::Foreign("legacy/web", &["10.0.0.0"]),
                Want::Done,
            ),
            (
                "ours skips it",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.1"], true),
            ),
            (
                "naming it is refused",
                Op::Alloc(req("s2").ip(&["10.0.0.0"])),
                Want::Fails("in use by legacy/web (a Service of another controller)"),
            ),
            (
                "even with a sharing key",
                Op::Alloc(req("s2").share("k").ip(&["10.0.0.0"])),
                Want::Fails("another controller"),
            ),
            (
                "the other Service lets it go",
                Op::Foreign("legacy/web", &[]),
                Want::Done,
            ),
            (
                "now it can be named",
                Op::Alloc(req("s2").ip(&["10.0.0.0"])),
                Want::Ips(&["10.0.0.0"], true),
            ),
        ],
    );
}

#[test]
fn holdings_follow_pool_changes_at_the_next_allocation() {
    let mut a = allocator(&[pool("old", &["10.0.0.0/31"], |_| {})]);
    run(
        &mut a,
        vec![
            (
                "s1 gets an address of the old pool",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.0.0.0"], true),
            ),
            ("the old pool is deleted", Op::Pools(vec![]), Want::Done),
            (
                "s1 still holds its address",
                Op::Holds("s1"),
                Want::Ips(&["10.0.0.0"], false),
            ),
            (
                "with no pool left its next allocation fails and it keeps the address",
                Op::Alloc(req("s1")),
                Want::Fails("no IPPool is accepted"),
            ),
            (
                "a new pool appears",
                Op::Pools(vec![pool("new", &["10.1.0.0/31"], |_| {})]),
                Want::Done,
            ),
            (
                "s1 moves into it",
                Op::Alloc(req("s1")),
                Want::Ips(&["10.1.0.0"], true),
            ),
            (
                "the old address is free for whoever names it... outside every pool",
                Op::Alloc(req("s2").ip(&["10.0.0.0"])),
                Want::Fails("outside every accepted IPPool"),
            ),
        ],
    );
}

/// A long random walk over allocations, releases, sharing and foreign
/// reservations: the invariants hold after every step.
#[test]
fn random_operations_never_double_book_an_address() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut a = allocator(&[
        pool("a", &["10.0.0.0/28"], |s| s.avoid_buggy_ips = true),
        pool("b", &["10.0.1.0-10.0.1.5", "fd00::/125"], |_| {}),
    ]);
    let names: Vec<String> = (0..24).map(|i| format!("s{i}")).collect();
    let mut held = 0usize;
    for step in 0..4000 {
        let name = &names[rng.random_range(0..names.len())];
        match rng.random_range(0..10) {
            0..=5 => {
                let mut r = req(name);
                if rng.random_bool(0.5) {
                    r = r.share(["x", "y"][rng.random_range(0..2)]);
                }
                r = r.ports(&[(Protocol::Tcp, [80, 443, 53][rng.random_range(0..3)])]);
                if rng.random_bool(0.2) {
                    r = r.families(&[IpFamily::V4, IpFamily::V6], FamilyPolicy::PreferDualStack);
                }
                if rng.random_bool(0.2) {
                    let n = rng.random_range(0..6);
                    let address = format!("10.0.1.{n}");
                    r.0.ips = vec![ip(&address)];
                    r.0.families = vec![IpFamily::V4];
                }
                let before = a.get(&r.0.key).cloned();
                match a.allocate(&r.0) {
                    Ok(_) => held += 1,
                    Err(_) => assert_eq!(a.get(&r.0.key), before.as_ref(), "step {step}"),
                }
            }
            6..=8 => {
                a.release(&key(name));
            }
            _ => {
                let n = rng.random_range(0..16);
                let ips = if rng.random_bool(0.5) {
                    vec![ip(&format!("10.0.0.{n}"))]
                } else {
                    vec![]
                };
                // Only addresses nobody of ours holds, as a real status would.
                if ips
                    .iter()
                    .all(|i| a.holders.get(i).is_none_or(|h| h.owned.is_empty()))
                {
                    a.set_foreign(&format!("other/{name}"), ips);
                }
            }
        }
        check_invariants(&a, &format!("step {step}"));
    }
    assert!(held > 1000, "the walk allocated often enough ({held})");
}
