//! What a spec asks of the cloud ([`Desired`]): the balancer, its ACL and
//! its listeners, computed from the spec and its parsed options. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portico_provider::{
    HealthCheck as SpecHealthCheck, IpFamily, LoadBalancerKey, LoadBalancerSpec, Protocol,
    ProviderError, SessionAffinity,
};

use super::marker;
use super::options::{Reuse, SlbOptions, drains};
use crate::cloud::limits::{NAME_MAX_CHARS, STICKY_SECONDS};
use crate::cloud::model::*;

/// The ACL every listener should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredAcl {
    /// None: portico's own ACLs of the Service are deleted.
    None,
    /// The user's (`acl-status: on`); portico's own ACLs are left alone.
    User(ListenerAcl),
    /// Portico's own whitelist of `loadBalancerSourceRanges` (sorted, unique).
    SourceRanges(Vec<AclEntry>),
}

/// One listener as it should be; its group and ACL are the plan's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredListener {
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Sorted by address and port.
    pub servers: Vec<BackendServer>,
    pub health_check: HealthCheck,
    pub scheduler: SchedulerKind,
    pub sticky_session: Option<StickySession>,
}

/// The balancer a spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub key: LoadBalancerKey,
    /// Marks portico's listeners (description) and groups (name prefix).
    pub marker: String,
    /// The name of a balancer portico creates.
    pub name: String,
    /// An existing balancer to use instead (`id` annotation).
    pub reuse: Option<Reuse>,
    /// The requested address, if any (see [`requested_address`]).
    pub address: Option<IpAddr>,
    pub address_type: AddressType,
    /// The balancer's size (`spec` annotation); `None` leaves it as it is.
    pub spec: Option<String>,
    pub acl: DesiredAcl,
    pub listeners: Vec<DesiredListener>,
}

impl Desired {
    /// # Errors
    /// As [`desired_listeners`].
    pub fn new(spec: &LoadBalancerSpec, opts: &SlbOptions) -> Result<Self, ProviderError> {
        let key = spec.key.clone();
        Ok(Self {
            marker: marker(&key),
            name: key.cloud_name("portico", NAME_MAX_CHARS),
            key,
            reuse: opts.reuse.clone(),
            address: requested_address(spec, opts),
            address_type: opts.address_type,
            spec: opts.spec.clone(),
            acl: desired_acl(spec, opts),
            listeners: desired_listeners(spec, opts)?,
        })
    }
}

/// The user's ACL when one is configured, else portico's own from the
/// source ranges (none when there are none).
pub fn desired_acl(spec: &LoadBalancerSpec, opts: &SlbOptions) -> DesiredAcl {
    if let Some(user) = &opts.acl {
        return DesiredAcl::User(ListenerAcl {
            acl_id: user.id.clone(),
            mode: user.mode,
        });
    }
    if spec.source_ranges.is_empty() {
        return DesiredAcl::None;
    }
    let entries: BTreeSet<AclEntry> = spec
        .source_ranges
        .iter()
        .map(|n| AclEntry::new(*n))
        .collect();
    DesiredAcl::SourceRanges(entries.into_iter().collect())
}

/// Check the listeners of `spec`: SCTP is unsupported, (port, protocol) unique.
///
/// # Errors
/// `Unsupported` for SCTP, `InvalidSpec` naming the port otherwise.
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
                timeout_seconds: timeout_seconds.clamp(STICKY_SECONDS.min, STICKY_SECONDS.max),
            }),
        },
    }
}

/// The listeners `spec` asks for, in the spec's order.
///
/// # Errors
/// As [`check_listeners`].
pub fn desired_listeners(
    spec: &LoadBalancerSpec,
    opts: &SlbOptions,
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
                    weight: if drains(t) { 0 } else { opts.weight },
                    description: t.node_name.clone(),
                });
        }
        out.push(DesiredListener {
            port: l.port,
            protocol,
            servers: servers.into_values().collect(),
            health_check: health_check(spec, opts, protocol, l.node_port),
            scheduler: opts.scheduler,
            sticky_session: sticky(spec, opts),
        });
    }
    Ok(out)
}
