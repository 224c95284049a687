//! The speaker on a real layer-2 segment: three node namespaces, a client
//! and the API server on a bridge (see `support`), one speaker process per
//! node. Needs root; skipped with a printed reason otherwise.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use portico_arp::ranking::{self, NodeFacts, TrafficPolicy};
use support::{
    ArpWatch, NODES, Testbed, VIP4, VIP6, ask, cluster, eventually, kernel_neighbour, root_or_skip,
    run_in_netns,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const START: Duration = Duration::from_secs(30);
const ASK: Duration = Duration::from_millis(300);

#[test]
fn ipv4_vip_moves_when_its_speaker_is_killed_and_never_has_two_answers() {
    let Some(()) = root_or_skip("ipv4_vip_moves_when_its_speaker_is_killed") else {
        return;
    };
    let bed = Testbed::new();
    let vip = IpAddr::V4(VIP4);
    run_in_netns(&bed.client_ns, || {
        let rt = runtime();
        let client = rt.block_on(cluster::client(&bed.kubeconfig));
        rt.block_on(cluster::seed(&client, &bed.nodes));
        rt.block_on(cluster::service(&client, "web", &[vip], false));
        for i in 0..NODES {
            bed.start_speaker(i);
        }
        let watch = ArpWatch::start();

        // The client's kernel resolves the VIP to the announcer, whose node answers.
        let first = eventually("a node answers on the VIP", START, || ask(vip, ASK));
        let first_i = bed.node_index(&first);
        assert_eq!(
            kernel_neighbour(&bed.client_ns, vip),
            Some(bed.nodes[first_i].mac),
            "the client's ARP entry is the announcing node's MAC"
        );
        assert_eq!(
            watch.who_has(Duration::from_millis(200)),
            vec![bed.nodes[first_i].mac],
            "exactly one node answers an ARP request for the VIP"
        );
        let announced = eventually("the VipAnnouncement names the node", START, || {
            rt.block_on(cluster::announced_node(&client, "web", vip))
        });
        assert_eq!(announced, first);
        let events = eventually("an Announcing event", START, || {
            let notes = rt.block_on(cluster::announcing_events(&client, "web"));
            (!notes.is_empty()).then_some(notes)
        });
        assert!(
            events
                .iter()
                .any(|n| n.contains(&first) && n.contains(&vip.to_string())),
            "the event names node and VIP: {events:?}"
        );

        // SIGKILL the announcer: another node takes the VIP over.
        bed.kill_speaker(first_i);
        let killed_at = Instant::now();
        let second = eventually(
            "another node answers on the VIP",
            Duration::from_secs(10),
            || ask(vip, ASK).filter(|n| *n != first),
        );
        let failover = killed_at.elapsed();
        let second_i = bed.node_index(&second);
        assert_eq!(
            kernel_neighbour(&bed.client_ns, vip),
            Some(bed.nodes[second_i].mac),
            "the client's next resolution gets the new node's MAC"
        );
        assert_eq!(
            watch.who_has(Duration::from_millis(200)),
            vec![bed.nodes[second_i].mac],
            "only the new announcer answers"
        );
        let announced = eventually("the VipAnnouncement follows", START, || {
            rt.block_on(cluster::announced_node(&client, "web", vip))
                .filter(|n| *n == second)
        });
        assert_eq!(announced, second);

        // Restart it: whoever ends up announcing, never two at once.
        bed.start_speaker(first_i);
        let until = Instant::now() + Duration::from_secs(5);
        let mut answered_by = BTreeSet::new();
        while Instant::now() < until {
            let macs = watch.who_has(Duration::from_millis(10));
            assert!(
                macs.len() <= 1,
                "two nodes answered one ARP request for the VIP: {macs:?}"
            );
            answered_by.extend(macs);
        }
        let settled = watch.who_has(Duration::from_millis(200));
        assert_eq!(settled.len(), 1, "one announcer after the restart");
        let owner = bed
            .node_by_mac(settled[0])
            .expect("a node's MAC")
            .name
            .clone();
        eventually(
            "requests reach the announcer",
            Duration::from_secs(10),
            || ask(vip, ASK).filter(|n| *n == owner),
        );
        println!(
            "failover after SIGKILL: {failover:?}; announcers seen across the restart: {}",
            answered_by.len()
        );
    });
}

#[test]
fn ipv6_vip_is_answered_by_neighbour_discovery_and_fails_over() {
    let Some(()) = root_or_skip("ipv6_vip_is_answered_by_neighbour_discovery") else {
        return;
    };
    let bed = Testbed::new();
    let vip = IpAddr::V6(VIP6);
    run_in_netns(&bed.client_ns, || {
        let rt = runtime();
        let client = rt.block_on(cluster::client(&bed.kubeconfig));
        rt.block_on(cluster::seed(&client, &bed.nodes));
        rt.block_on(cluster::service(&client, "web6", &[vip], false));
        for i in 0..NODES {
            bed.start_speaker(i);
        }
        let first = eventually("a node answers on the IPv6 VIP", START, || ask(vip, ASK));
        let first_i = bed.node_index(&first);
        assert_eq!(
            kernel_neighbour(&bed.client_ns, vip),
            Some(bed.nodes[first_i].mac),
            "the client's neighbour entry is the announcing node's MAC"
        );
        bed.kill_speaker(first_i);
        let second = eventually(
            "another node answers on the IPv6 VIP",
            Duration::from_secs(10),
            || ask(vip, ASK).filter(|n| *n != first),
        );
        assert_eq!(
            kernel_neighbour(&bed.client_ns, vip),
            Some(bed.nodes[bed.node_index(&second)].mac),
            "the unsolicited advertisement moved the client's entry"
        );
    });
}

#[test]
fn local_traffic_policy_is_announced_only_by_a_node_with_endpoints() {
    let Some(()) = root_or_skip("local_traffic_policy_is_announced_only_by_a_node_with_endpoints")
    else {
        return;
    };
    let bed = Testbed::new();
    let vip = IpAddr::V4(VIP4);
    // The node that would win without endpoints must not be the one chosen:
    // put the endpoints elsewhere.
    let facts: Vec<NodeFacts> = bed
        .nodes
        .iter()
        .map(|n| NodeFacts {
            name: n.name.clone(),
            excluded: false,
            alive: true,
        })
        .collect();
    let natural = ranking::announcer(vip, &[TrafficPolicy::Cluster], &facts)
        .expect("a winner")
        .to_string();
    let with_endpoints = bed
        .nodes
        .iter()
        .find(|n| n.name != natural)
        .expect("another node")
        .clone();
    run_in_netns(&bed.client_ns, || {
        let rt = runtime();
        let client = rt.block_on(cluster::client(&bed.kubeconfig));
        rt.block_on(cluster::seed(&client, &bed.nodes));
        rt.block_on(cluster::endpoints_on(
            &client,
            "local",
            &[&with_endpoints.name],
        ));
        rt.block_on(cluster::service(&client, "local", &[vip], true));
        for i in 0..NODES {
            bed.start_speaker(i);
        }
        let watch = ArpWatch::start();
        let macs = eventually("an ARP answer", START, || {
            let macs = watch.who_has(Duration::from_millis(100));
            (!macs.is_empty()).then_some(macs)
        });
        assert_eq!(
            macs,
            vec![with_endpoints.mac],
            "only the node with a ready endpoint announces (not {natural})"
        );
        assert_eq!(ask(vip, ASK), Some(with_endpoints.name.clone()));
    });
}
