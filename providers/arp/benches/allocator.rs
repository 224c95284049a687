//! How the allocator's cost grows with the addresses in use: a fresh
//! allocation walks the held addresses of a pool (never every address), so
//! it grows with use; asking again for a holding is a lookup. Prints each
//! against the re-ask measured in the same run.
//!
//!   cargo bench -p portico-arp --bench allocator

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use portico_arp::allocator::{Allocator, FamilyPolicy, Request, Sharing};
use portico_arp::pool::{AddressBlock, IpPool, IpPoolSpec};
use portico_arp::pools::{ServiceFacts, validate};
use portico_provider::{ClusterName, IpFamily, LoadBalancerKey, Protocol};

fn request(i: usize) -> Request {
    Request {
        key: LoadBalancerKey::new(
            ClusterName::new("bench"),
            "default",
            format!("s{i}"),
            format!("u{i}"),
        ),
        facts: ServiceFacts {
            namespace: "default".into(),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
        },
        families: vec![IpFamily::V4],
        family_policy: FamilyPolicy::SingleStack,
        ips: Vec::new(),
        pool: None,
        ports: BTreeSet::from([(Protocol::Tcp, 80)]),
        sharing: Sharing::exclusive(),
    }
}

fn per_call(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let pool = IpPool::new(
        "bench",
        IpPoolSpec {
            addresses: vec![AddressBlock::from("10.0.0.0/16")],
            auto_assign: true,
            avoid_buggy_ips: true,
            namespace_selector: None,
            service_selector: None,
        },
    );
    let mut allocator = Allocator::new();
    allocator.set_pools(&validate(&[pool]));
    println!("allocator: one /16 pool (avoidBuggyIPs), Services allocated one after another");
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "in use", "fresh µs/call", "re-ask µs/call", "ratio"
    );
    let batch = 500;
    let mut next = 0;
    for target in [1_000usize, 5_000, 10_000, 20_000] {
        while next + batch < target {
            allocator.allocate(&request(next)).expect("room");
            next += 1;
        }
        let start = Instant::now();
        for i in next..next + batch {
            allocator.allocate(&request(i)).expect("room");
        }
        let fresh = start.elapsed();
        next += batch;
        let start = Instant::now();
        for i in next - batch..next {
            let again = allocator.allocate(&request(i)).expect("held");
            assert!(!again.changed);
        }
        let reask = start.elapsed();
        println!(
            "{:>8} {:>16.2} {:>16.2} {:>7.1}x",
            next,
            per_call(fresh, batch),
            per_call(reask, batch),
            fresh.as_secs_f64() / reask.as_secs_f64()
        );
    }
}
