//! Spec and target builders shared by the unit tests of `desired.rs` and
//! `plan.rs`.

use portico_provider::{
    ClusterName, Listener, LoadBalancerKey, LoadBalancerSpec, Protocol, Target,
};

use crate::desired::Desired;
use crate::options::AwsOptions;

pub fn key() -> LoadBalancerKey {
    LoadBalancerKey::new(ClusterName::new("c1"), "ns", "web", "uid-1")
}

pub fn target(i: usize, labels: &[(&str, &str)]) -> Target {
    Target {
        node_name: format!("node-{i}"),
        addresses: vec![],
        provider_id: Some(format!("aws:///us-east-1a/i-{i:05x}")),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn listener(port: u16, protocol: Protocol, node_port: u16) -> Listener {
    Listener {
        port,
        protocol,
        node_port,
        name: None,
    }
}

pub fn spec(listeners: Vec<Listener>, targets: usize) -> LoadBalancerSpec {
    let mut s = LoadBalancerSpec::new(key());
    s.listeners = listeners;
    s.targets = (0..targets).map(|i| target(i, &[])).collect();
    s
}

pub fn desired(spec: &LoadBalancerSpec) -> Desired {
    let opts = AwsOptions::parse(spec).expect("options");
    Desired::new(spec, &opts).expect("desired")
}
