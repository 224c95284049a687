//! AWS call behaviour against the endpoint in `AWS_ENDPOINT_URL` (moto):
//! exactly which calls a change makes. Skips when it is not set.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::AwsHarness;
use portico_aws::CallStats;
use portico_provider::{
    Annotations, ClusterName, HealthCheck, Listener, LoadBalancerKey, LoadBalancerProvider,
    LoadBalancerSpec, Protocol, TrafficPolicy,
};

const A: &str = "service.beta.kubernetes.io/aws-load-balancer-";

fn key(cluster: &ClusterName, name: &str) -> LoadBalancerKey {
    let uid = uuid::Uuid::new_v4().to_string();
    LoadBalancerKey::new(cluster.clone(), "calls", format!("{name}-{}", &uid[..8]), uid)
}

fn tcp(port: u16, node_port: u16) -> Listener {
    Listener {
        port,
        protocol: Protocol::Tcp,
        node_port,
        name: None,
    }
}

fn udp(port: u16, node_port: u16) -> Listener {
    Listener {
        protocol: Protocol::Udp,
        ..tcp(port, node_port)
    }
}

async fn spec(h: &AwsHarness, name: &str, targets: usize) -> LoadBalancerSpec {
    let mut s = LoadBalancerSpec::new(key(&h.cluster, name));
    s.listeners = vec![tcp(80, 30080)];
    s.targets = h.target_list(targets).await;
    s
}

fn annotate(s: &mut LoadBalancerSpec, pairs: &[(&str, &str)]) {
    let mut map: BTreeMap<String, String> = s.annotations.iter().map(|(k, v)| (k.into(), v.into())).collect();
    for (k, v) in pairs {
        map.insert(format!("{A}{k}"), v.to_string());
    }
    s.annotations = Annotations::new(map);
}

/// Run `f` and return the AWS calls it made.
async fn calls<F, T>(h: &AwsHarness, f: F) -> (T, CallStats)
where
    F: std::future::Future<Output = T>,
{
    let before = h.provider.calls().stats();
    let out = f.await;
    (out, h.provider.calls().stats().since(&before))
}

async fn ensure(h: &AwsHarness, s: &LoadBalancerSpec) -> CallStats {
    let (r, stats) = calls(h, h.provider.ensure(s)).await;
    r.unwrap_or_else(|e| panic!("ensure {}: {e}", s.key));
    stats
}

macro_rules! aws_test {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if common::skip() {
                return;
            }
            tokio::time::timeout(Duration::from_secs(180), async {
                let h = AwsHarness::start().await;
                #[allow(clippy::redundant_closure_call)]
                ($body)(h).await
            })
            .await
            .expect("timed out");
        }
    };
}

aws_test!(reensure_makes_no_mutating_call, |h: AwsHarness| async move {
    let mut s = spec(&h, "steady", 3).await;
    s.listeners = vec![tcp(80, 30080), udp(53, 30053), tcp(443, 30443)];
    annotate(&mut s, &[("additional-resource-tags", "team=web"), ("cross-zone-load-balancing-enabled", "true")]);
    let created = ensure(&h, &s).await;
    eprintln!("create: {created:?}");
    let again = ensure(&h, &s).await;
    eprintln!("re-ensure: {again:?}");
    assert_eq!(again.mutations, 0, "re-ensure mutated: {again:?}");
    h.provider.delete(&s.key).await.expect("delete");
});

aws_test!(node_port_change_replaces_the_target_group, |h: AwsHarness| async move {
    let mut s = spec(&h, "nodeport", 2).await;
    s.listeners = vec![udp(53, 30053), tcp(80, 30080)];
    ensure(&h, &s).await;
    s.listeners.push(tcp(443, 30443));
    ensure(&h, &s).await;
    s.listeners = vec![udp(53, 30053), tcp(80, 31080), tcp(443, 30443)];
    let changed = ensure(&h, &s).await;
    eprintln!("changed: {changed:?}");
    let lb = h
        .elb
        .describe_load_balancers()
        .names(portico_aws::load_balancer_name(&s.key))
        .send()
        .await
        .expect("describe");
    let arn = lb.load_balancers()[0].load_balancer_arn().expect("arn").to_string();
    let listeners = h.elb.describe_listeners().load_balancer_arn(&arn).send().await.expect("listeners");
    eprintln!("listeners: {:?}", listeners.listeners());
    let tgs = h.elb.describe_target_groups().load_balancer_arn(&arn).send().await;
    eprintln!("tgs: {:?}", tgs.map(|t| t.target_groups().iter().map(|g| (g.target_group_name().map(String::from), g.port())).collect::<Vec<_>>()));
    let again = ensure(&h, &s).await;
    assert_eq!(again.mutations, 0, "re-ensure mutated: {again:?}");
    h.provider.delete(&s.key).await.expect("delete");
});
