//! Decide, then act: what the balancer's listeners and backends should be,
//! and which cloud calls get there from what exists. Pure functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portico_provider::{
    HealthCheck as SpecHealthCheck, IpFamily, LoadBalancerSpec, Protocol, ProviderError,
    SessionAffinity,
};

use super::options::{SlbOptions, annotation, keys};
use crate::cloud::model::*;

/// How much of an existing balancer's listeners portico may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Portico made the balancer: every listener and group is its own.
    Owned,
    /// A reused balancer (`id` annotation) with `force-override-listeners`:
    /// listeners on the Service's ports are taken over, portico's own
    /// listeners are removed when no longer wanted, others are left alone.
    ReuseOverride,
    /// A reused balancer without override: listeners are only added (and
    /// portico's own updated); a foreign listener on a wanted port is an error.
    ReuseAddOnly,
}

/// One listener as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredListener {
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Sorted by address and port.
    pub servers: Vec<BackendServer>,
    pub health_check: HealthCheck,
    pub scheduler: SchedulerKind,
    pub acl: Option<ListenerAcl>,
    pub sticky_session: Option<StickySession>,
}

impl DesiredListener {
    fn settings(&self, group_id: String, marker: &str) -> ListenerSettings {
        ListenerSettings {
            backend_server_group_id: group_id,
            health_check: self.health_check.clone(),
            scheduler: self.scheduler,
            acl: self.acl.clone(),
            sticky_session: self.sticky_session,
            description: marker.to_string(),
        }
    }
}

/// The name of portico's group for one listener of the balancer of `marker`.
pub fn group_name(marker: &str, port: u16, protocol: ListenerProtocol) -> String {
    format!("{marker}-{port}-{}", protocol.as_str())
}

/// Check the listeners of `spec`: SCTP is unsupported, (port, protocol) unique.
pub fn check_listeners(spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
    let mut seen = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        if l.protocol == Protocol::Sctp {
            return Err(ProviderError::Unsupported {
                what: format!(
                    "SCTP listener on port {} (slb forwards TCP and UDP)",
                    l.port
                ),
            });
        }
        if l.port == 0 || l.node_port == 0 {
            return Err(ProviderError::invalid(
                format!("spec.ports[{i}]"),
                "port and nodePort must be set",
            ));
        }
        if !seen.insert((l.port, l.protocol)) {
            return Err(ProviderError::invalid(
                format!("spec.ports[{i}]"),
                format!("port {}/{} is listed twice", l.port, l.protocol),
            ));
        }
    }
    Ok(())
}

/// The requested address: the `ip` annotation, else `spec.loadBalancerIP`.
pub fn requested_address(spec: &LoadBalancerSpec, opts: &SlbOptions) -> Option<IpAddr> {
    opts.ip.or_else(|| spec.requested_ips.first().copied())
}

fn health_check(
    spec: &LoadBalancerSpec,
    opts: &SlbOptions,
    protocol: ListenerProtocol,
    node_port: u16,
) -> HealthCheck {
    let h = &opts.health;
    let defaults = HealthCheck::default();
    let kind = h.kind.unwrap_or(match spec.health_check {
        SpecHealthCheck::TrafficPort => HealthCheckType::Tcp,
        SpecHealthCheck::Http { .. } => HealthCheckType::Http,
    });
    let (port, path, enabled) = match kind {
        // A TCP connect says nothing about a UDP port: UDP listeners go unchecked.
        HealthCheckType::Tcp => (None, None, protocol == ListenerProtocol::Tcp),
        HealthCheckType::Http => {
            let (spec_port, spec_path) = match &spec.health_check {
                SpecHealthCheck::Http { port, path } => (Some(*port), Some(path.clone())),
                SpecHealthCheck::TrafficPort => (None, None),
            };
            let port = h.connect_port.or(spec_port).unwrap_or(node_port);
            let path = h
                .uri
                .clone()
                .or(spec_path)
                .unwrap_or_else(|| "/".to_string());
            (Some(port), Some(path), true)
        }
    };
    HealthCheck {
        enabled,
        kind,
        port,
        path,
        interval_seconds: h.interval_seconds.unwrap_or(defaults.interval_seconds),
        timeout_seconds: h.timeout_seconds.unwrap_or(defaults.timeout_seconds),
        healthy_threshold: h.healthy_threshold.unwrap_or(defaults.healthy_threshold),
        unhealthy_threshold: h
            .unhealthy_threshold
            .unwrap_or(defaults.unhealthy_threshold),
    }
}

fn sticky(spec: &LoadBalancerSpec, opts: &SlbOptions) -> Option<StickySession> {
    match opts.persistence_timeout {
        Some(0) => None,
        Some(t) => Some(StickySession { timeout_seconds: t }),
        None => match spec.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(StickySession {
                timeout_seconds: timeout_seconds.clamp(1, 86_400),
            }),
        },
    }
}

/// The listeners `spec` asks for, with `acl` (already resolved to an id)
/// attached to each.
pub fn desired_listeners(
    spec: &LoadBalancerSpec,
    opts: &SlbOptions,
    acl: Option<ListenerAcl>,
) -> Result<Vec<DesiredListener>, ProviderError> {
    check_listeners(spec)?;
    let mut out = Vec::with_capacity(spec.listeners.len());
    for l in &spec.listeners {
        let protocol = match l.protocol {
            Protocol::Tcp => ListenerProtocol::Tcp,
            Protocol::Udp => ListenerProtocol::Udp,
            Protocol::Sctp => {
                return Err(ProviderError::Unsupported {
                    what: "SCTP listeners".into(),
                });
            }
        };
        let mut servers: BTreeMap<(IpAddr, u32), BackendServer> = BTreeMap::new();
        for t in spec.targets.iter() {
            let Some(address) = t.address(IpFamily::V4) else {
                tracing::debug!(node = %t.node_name, service = %spec.key, "node has no IPv4 address; not a backend");
                continue;
            };
            servers
                .entry((address, l.node_port.into()))
                .or_insert_with(|| BackendServer {
                    address,
                    port: l.node_port.into(),
                    weight: opts.weight,
                    description: t.node_name.clone(),
                });
        }
        out.push(DesiredListener {
            port: l.port,
            protocol,
            servers: servers.into_values().collect(),
            health_check: health_check(spec, opts, protocol, l.node_port),
            scheduler: opts.scheduler,
            acl: acl.clone(),
            sticky_session: sticky(spec, opts),
        });
    }
    Ok(out)
}

/// A group a call refers to: one that exists, or one made earlier in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Id(String),
    New(String),
}

/// One cloud call of a plan, in the order they are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateGroup {
        name: String,
        servers: Vec<BackendServer>,
    },
    AddServers {
        group_id: String,
        servers: Vec<BackendServer>,
    },
    RemoveServers {
        group_id: String,
        servers: Vec<BackendServer>,
    },
    CreateListener {
        port: u16,
        protocol: ListenerProtocol,
        group: GroupRef,
        settings: ListenerSettings,
    },
    UpdateListener {
        listener_id: String,
        group: GroupRef,
        settings: ListenerSettings,
    },
    DeleteListener {
        listener_id: String,
    },
    DeleteGroup {
        group_id: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateGroup { .. } => "CreateBackendServerGroup",
            Self::AddServers { .. } => "AddBackendServers",
            Self::RemoveServers { .. } => "RemoveBackendServers",
            Self::CreateListener { .. } => "CreateListener",
            Self::UpdateListener { .. } => "ModifyListener",
            Self::DeleteListener { .. } => "DeleteListener",
            Self::DeleteGroup { .. } => "DeleteBackendServerGroup",
        }
    }
}

/// Servers to add (new, or changed weight/description) and to remove, so that
/// `have` becomes `want`. Additions come first in the plan.
pub fn server_diff(
    have: &[BackendServer],
    want: &[BackendServer],
) -> (Vec<BackendServer>, Vec<BackendServer>) {
    let key = |s: &BackendServer| (s.address, s.port);
    let have_by: BTreeMap<_, _> = have.iter().map(|s| (key(s), s)).collect();
    let want_keys: BTreeSet<_> = want.iter().map(key).collect();
    let add = want
        .iter()
        .filter(|w| have_by.get(&key(w)) != Some(w))
        .cloned()
        .collect();
    let remove = have
        .iter()
        .filter(|h| !want_keys.contains(&key(h)))
        .cloned()
        .collect();
    (add, remove)
}

/// The calls that turn `listeners`/`groups` (what exists on the balancer)
/// into `desired`. `marker` identifies portico's listeners and groups.
///
/// Order: groups and backends first (additions before removals), then
/// listeners created or changed in place, then unwanted listeners deleted,
/// then portico's groups nothing uses any more.
pub fn plan(
    mode: Mode,
    marker: &str,
    desired: &[DesiredListener],
    listeners: &[Listener],
    groups: &[BackendServerGroup],
) -> Result<Vec<Action>, ProviderError> {
    let mut actions = Vec::new();
    let mut listener_actions = Vec::new();
    let groups_by_id: BTreeMap<&str, &BackendServerGroup> =
        groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let groups_by_name: BTreeMap<&str, &BackendServerGroup> =
        groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut used_groups: BTreeSet<String> = BTreeSet::new();
    let wanted: BTreeSet<(u16, ListenerProtocol)> =
        desired.iter().map(|d| (d.port, d.protocol)).collect();

    for d in desired {
        let name = group_name(marker, d.port, d.protocol);
        let existing = listeners
            .iter()
            .find(|l| l.port == d.port && l.protocol == d.protocol);
        if let Some(l) = existing
            && l.settings.description != marker
            && mode == Mode::ReuseAddOnly
        {
            return Err(ProviderError::invalid(
                portico_provider::Annotations::field(&annotation(keys::FORCE_OVERRIDE_LISTENERS)),
                format!(
                    "the reused balancer already has a listener on {}/{}; set force-override-listeners to \"true\" to take it over",
                    d.port,
                    d.protocol.as_str()
                ),
            ));
        }
        // Which group serves this listener: its current one when it is ours
        // by name, else ours by name, else a new one.
        let current = existing
            .and_then(|l| groups_by_id.get(l.settings.backend_server_group_id.as_str()))
            .filter(|g| g.name == name || (mode == Mode::Owned && g.name.starts_with(marker)))
            .copied()
            .or_else(|| groups_by_name.get(name.as_str()).copied());
        let group = match current {
            Some(g) => {
                let (add, remove) = server_diff(&g.servers, &d.servers);
                if !add.is_empty() {
                    actions.push(Action::AddServers {
                        group_id: g.id.clone(),
                        servers: add,
                    });
                }
                if !remove.is_empty() {
                    actions.push(Action::RemoveServers {
                        group_id: g.id.clone(),
                        servers: remove,
                    });
                }
                used_groups.insert(g.id.clone());
                GroupRef::Id(g.id.clone())
            }
            None => {
                actions.push(Action::CreateGroup {
                    name: name.clone(),
                    servers: d.servers.clone(),
                });
                GroupRef::New(name.clone())
            }
        };
        match existing {
            None => listener_actions.push(Action::CreateListener {
                port: d.port,
                protocol: d.protocol,
                settings: d.settings(String::new(), marker),
                group,
            }),
            Some(l) => {
                let same = match &group {
                    GroupRef::Id(id) => l.settings == d.settings(id.clone(), marker),
                    GroupRef::New(_) => false,
                };
                if !same {
                    listener_actions.push(Action::UpdateListener {
                        listener_id: l.id.clone(),
                        settings: d.settings(String::new(), marker),
                        group,
                    });
                }
            }
        }
    }
    actions.extend(listener_actions);

    for l in listeners {
        if wanted.contains(&(l.port, l.protocol)) {
            continue;
        }
        let ours = l.settings.description == marker;
        let delete = match mode {
            Mode::Owned => true,
            Mode::ReuseOverride => ours,
            Mode::ReuseAddOnly => false,
        };
        if delete {
            actions.push(Action::DeleteListener {
                listener_id: l.id.clone(),
            });
        } else {
            used_groups.insert(l.settings.backend_server_group_id.clone());
        }
    }

    for g in groups {
        let ours = mode == Mode::Owned || g.name.starts_with(&format!("{marker}-"));
        if ours && !used_groups.contains(&g.id) {
            actions.push(Action::DeleteGroup {
                group_id: g.id.clone(),
            });
        }
    }
    Ok(actions)
}

/// The calls that remove portico's part of a reused balancer on delete.
pub fn cleanup_reused(
    marker: &str,
    listeners: &[Listener],
    groups: &[BackendServerGroup],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut kept_groups = BTreeSet::new();
    for l in listeners {
        if l.settings.description == marker {
            actions.push(Action::DeleteListener {
                listener_id: l.id.clone(),
            });
        } else {
            kept_groups.insert(l.settings.backend_server_group_id.as_str());
        }
    }
    for g in groups {
        if g.name.starts_with(&format!("{marker}-")) && !kept_groups.contains(g.id.as_str()) {
            actions.push(Action::DeleteGroup {
                group_id: g.id.clone(),
            });
        }
    }
    actions
}
