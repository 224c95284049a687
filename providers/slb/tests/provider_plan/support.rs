//! Fixtures shared by the plan tests: a two-listener spec, the cloud after
//! a perfect convergence of it (balancers of the Service's, reused ones,
//! someone else's), and a check that every plan refers only to what exists
//! or what an earlier step creates.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portico_provider::{
    Annotations, ClusterName, Listener as SpecListener, LoadBalancerKey, LoadBalancerSpec,
    Protocol, Target,
};
use portico_slb::cloud::model::*;
use portico_slb::provider::desired::{Desired, DesiredListener, desired_listeners};
use portico_slb::provider::observe::{Found, ObservedBalancer};
use portico_slb::provider::options::PREFIX;
use portico_slb::provider::plan::{AclRef, GroupRef, Step, group_name};
use portico_slb::provider::{REUSED_TAG, SlbOptions, marker};

pub const MARK: &str = "portico-0123456789abcdef";

pub fn target(name: &str, addrs: &[&str]) -> Target {
    Target {
        node_name: name.into(),
        addresses: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
        provider_id: None,
        labels: BTreeMap::new(),
    }
}

pub fn key() -> LoadBalancerKey {
    LoadBalancerKey::new(ClusterName::new("c"), "ns", "web", "uid")
}

/// UDP 53 and TCP 80 to two IPv4 nodes (and one IPv6-only node).
pub fn base_spec() -> LoadBalancerSpec {
    let mut spec = LoadBalancerSpec::new(key());
    spec.listeners = vec![
        SpecListener {
            port: 53,
            protocol: Protocol::Udp,
            node_port: 30053,
            name: None,
        },
        SpecListener {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: 30080,
            name: None,
        },
    ];
    spec.targets = vec![
        target("a", &["10.0.0.1"]),
        target("b", &["fd00::2", "10.0.0.2"]),
        target("v6-only", &["fd00::3"]),
    ]
    .into();
    spec
}

pub fn annotate(spec: &mut LoadBalancerSpec, pairs: &[(&str, &str)]) {
    spec.annotations = Annotations::new(
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect(),
    );
}

pub fn desired(spec: &LoadBalancerSpec) -> Vec<DesiredListener> {
    let opts = SlbOptions::parse(spec).expect("options");
    desired_listeners(spec, &opts).expect("desired")
}

pub fn desired_of(spec: &LoadBalancerSpec) -> Desired {
    let opts = SlbOptions::parse(spec).expect("options");
    Desired::new(spec, &opts).expect("desired")
}

pub fn server(addr: &str, port: u32) -> BackendServer {
    BackendServer {
        address: addr.parse::<IpAddr>().expect("ip"),
        port,
        weight: 100,
        description: String::new(),
    }
}

/// What a balancer holds after a perfect convergence of `want` with
/// `acl` on every listener, `mark` marking them.
pub fn converged_with(
    mark: &str,
    want: &[DesiredListener],
    acl: Option<ListenerAcl>,
) -> (Vec<Listener>, Vec<BackendServerGroup>) {
    let mut listeners = Vec::new();
    let mut groups = Vec::new();
    for (i, d) in want.iter().enumerate() {
        let gid = format!("sg-{i}");
        groups.push(BackendServerGroup {
            id: gid.clone(),
            load_balancer_id: "lb-1".into(),
            name: group_name(mark, d.port, d.protocol),
            servers: d.servers.clone(),
        });
        listeners.push(Listener {
            id: format!("lsn-{i}"),
            load_balancer_id: "lb-1".into(),
            port: d.port,
            protocol: d.protocol,
            settings: ListenerSettings {
                backend_server_group_id: gid,
                health_check: d.health_check.clone(),
                scheduler: d.scheduler,
                acl: acl.clone(),
                sticky_session: d.sticky_session,
                description: mark.into(),
            },
        });
    }
    (listeners, groups)
}

/// [`converged_with`] under [`MARK`] and no ACL.
pub fn converged(want: &[DesiredListener]) -> (Vec<Listener>, Vec<BackendServerGroup>) {
    converged_with(MARK, want, None)
}

/// The marker of the fixtures' [`key`] (what the provider uses).
pub fn key_marker() -> String {
    marker(&key())
}

pub fn operations(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(Step::operation).collect()
}

/// Every group or ACL a step uses either exists (an id) or an earlier step
/// of the same plan creates it, so the executor can always fill in ids.
pub fn assert_refs_resolve(desc: &str, steps: &[Step]) {
    let mut groups = BTreeSet::new();
    let mut acl = false;
    for step in steps {
        match step {
            Step::CreateGroup { name, .. } => {
                groups.insert(name.clone());
            }
            Step::CreateAcl(_) => acl = true,
            Step::CreateListener { settings, .. } | Step::UpdateListener { settings, .. } => {
                if let GroupRef::Created(name) = &settings.group {
                    assert!(
                        groups.contains(name),
                        "{desc}: group {name} used before it is created: {steps:?}"
                    );
                }
                if settings.acl == Some(AclRef::Created) {
                    assert!(acl, "{desc}: ACL used before it is created: {steps:?}");
                }
            }
            _ => {}
        }
    }
}

pub const ADDRESS: &str = "127.240.0.10";

pub fn balancer(id: &str, created_at: u64, tags: BTreeMap<String, String>) -> LoadBalancer {
    LoadBalancer {
        id: id.into(),
        name: "some-name".into(),
        address: ADDRESS.parse().expect("ip"),
        address_type: AddressType::Internet,
        spec: DEFAULT_BALANCER_SPEC.into(),
        tags,
        created_at,
    }
}

pub fn reused_tags() -> BTreeMap<String, String> {
    let mut tags = key().owner_tags();
    tags.insert(REUSED_TAG.into(), "true".into());
    tags
}

/// A balancer holding exactly what `d` asks, with `tags` and `acl` on its listeners.
pub fn holding(
    id: &str,
    created_at: u64,
    tags: BTreeMap<String, String>,
    d: &Desired,
    acl: Option<ListenerAcl>,
) -> ObservedBalancer {
    let (listeners, groups) = converged_with(&d.marker, &d.listeners, acl);
    ObservedBalancer {
        balancer: balancer(id, created_at, tags),
        listeners,
        groups,
    }
}

pub fn ours(id: &str, created_at: u64, d: &Desired) -> ObservedBalancer {
    holding(id, created_at, key().owner_tags(), d, None)
}

/// Someone else's balancer with one listener of theirs on port 9000.
pub fn bare(id: &str) -> ObservedBalancer {
    let group = BackendServerGroup {
        id: "sg-theirs".into(),
        load_balancer_id: id.into(),
        name: "theirs".into(),
        servers: Vec::new(),
    };
    let listener = Listener {
        id: "lsn-theirs".into(),
        load_balancer_id: id.into(),
        port: 9000,
        protocol: ListenerProtocol::Tcp,
        settings: ListenerSettings {
            backend_server_group_id: group.id.clone(),
            health_check: HealthCheck::default(),
            scheduler: SchedulerKind::Wrr,
            acl: None,
            sticky_session: None,
            description: "made by hand".into(),
        },
    };
    ObservedBalancer {
        balancer: balancer(id, 1, BTreeMap::new()),
        listeners: vec![listener],
        groups: vec![group],
    }
}

pub fn named(id: &str, balancer: Option<ObservedBalancer>) -> Found {
    Found::Named {
        id: id.into(),
        balancer: balancer.map(Box::new),
    }
}

pub fn acl(id: &str, cidrs: &[&str]) -> Acl {
    Acl {
        id: id.into(),
        name: key_marker(),
        entries: cidrs
            .iter()
            .map(|c| AclEntry::new(c.parse().expect("cidr")))
            .collect(),
        tags: key().owner_tags(),
    }
}

pub fn whitelist(id: &str) -> Option<ListenerAcl> {
    Some(ListenerAcl {
        acl_id: id.into(),
        mode: AclMode::White,
    })
}
