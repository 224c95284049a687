//! Failover time of the layer-2 speaker: from SIGKILL of the announcing
//! speaker to the client's first successful TCP request to the VIP through
//! another node, on the network-namespace test bed (three nodes, a client
//! and the API server on a bridge; see `tests/support`). Needs root.
//!
//!   cargo bench -p portico-arp --features testbed --bench failover
//!
//! `PORTICO_FAILOVER_RUNS` sets the number of runs (default 20).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use support::{NODES, Testbed, VIP4, ask, cluster, eventually, root_or_skip, run_in_netns};

/// How long to let a restarted speaker settle and gossip converge before
/// the next kill (the speaker's `--settle` is 1 s).
const BETWEEN_RUNS: Duration = Duration::from_millis(2500);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if root_or_skip("failover benchmark").is_none() {
        return;
    }
    let runs: usize = std::env::var("PORTICO_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let bed = Testbed::new();
    let vip = IpAddr::V4(VIP4);
    let ask_timeout = Duration::from_millis(100);
    let samples = run_in_netns(&bed.client_ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(cluster::client(&bed.kubeconfig));
        rt.block_on(cluster::seed(&client, &bed.nodes));
        rt.block_on(cluster::service(&client, "web", &[vip], false));
        for i in 0..NODES {
            bed.start_speaker(i);
        }
        let mut samples = Vec::with_capacity(runs);
        for run in 1..=runs {
            std::thread::sleep(BETWEEN_RUNS);
            let announcer = eventually("the VIP answers", Duration::from_secs(30), || {
                ask(vip, ask_timeout)
            });
            let victim = bed.node_index(&announcer);
            bed.kill_speaker(victim);
            let killed_at = Instant::now();
            let taker = eventually(
                "another node answers on the VIP",
                Duration::from_secs(30),
                || ask(vip, ask_timeout).filter(|n| *n != announcer),
            );
            let took = killed_at.elapsed();
            println!(
                "run {run:>2}: killed {announcer}'s speaker, {taker} answered after {}",
                ms(took)
            );
            samples.push(took);
            bed.start_speaker(victim);
        }
        samples
    });
    let mut sorted = samples.clone();
    sorted.sort();
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    println!();
    println!(
        "failover, SIGKILL of the announcing speaker -> first TCP answer through another node ({} runs)",
        sorted.len()
    );
    println!(
        "  portico speaker:  p50 {}  p90 {}  p99 {}  min {}  max {}  mean {}",
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 90.0)),
        ms(percentile(&sorted, 99.0)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        ms(mean),
    );
    println!("  goal:             p99 < 1000 ms");
    println!("  baselines (documented, not measured here):");
    println!("    MetalLB layer 2 with memberlist: \"a few seconds\" (minutes without memberlist)");
    println!("    kube-vip ARP mode: about 3 s");
    let p99 = percentile(&sorted, 99.0);
    println!(
        "  p99 vs a 3 s failover: {:.1}x faster",
        3.0 / p99.as_secs_f64().max(f64::EPSILON)
    );
}
