//! What the NLB of a spec should look like ([`Desired`]): listeners and
//! target groups, health checks, tags and security groups. Pure: built from
//! the spec and its parsed options alone.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use portico_provider::{
    HealthCheck, IngressStatus, Listener, LoadBalancerKey, LoadBalancerSpec, LoadBalancerStatus,
    PortStatus, Protocol, ProviderError,
};

use crate::adopt::AdoptRef;
use crate::names;
use crate::options::{
    AwsOptions, HealthOverrides, HealthPort, HealthProtocol, IpAddressType, Scheme, TlsPorts,
};
use crate::security::{self, NodePortRange, Rule};

/// AWS accepts at most this many targets per RegisterTargets/DeregisterTargets call.
pub const TARGET_BATCH: usize = 100;

/// kube-proxy's health endpoint on every node: 200 while the node can proxy
/// traffic, 503 once it is being deleted or drained, so a Cluster-policy
/// Service's balancer stops sending new connections to a leaving node.
pub const KUBE_PROXY_HEALTH_PORT: u16 = 10256;
pub const KUBE_PROXY_HEALTH_PATH: &str = "/healthz";

/// What an NLB's HTTP health check accepts when no codes are annotated (AWS's own default).
pub const DEFAULT_SUCCESS_CODES: &str = "200-399";

/// A target group's (and its listener's) protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TgProtocol {
    Tcp,
    Udp,
    /// TCP and UDP on the same port: one listener and target group for both.
    TcpUdp,
    /// TLS terminated by the NLB (a listener), or TLS to the targets (a group).
    Tls,
}

impl TgProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::TcpUdp => "TCP_UDP",
            Self::Tls => "TLS",
        }
    }

    fn protocols(self) -> &'static [Protocol] {
        match self {
            Self::Tcp | Self::Tls => &[Protocol::Tcp],
            Self::Udp => &[Protocol::Udp],
            Self::TcpUdp => &[Protocol::Tcp, Protocol::Udp],
        }
    }
}

/// Where a health check connects: the target group's own port, or another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPort {
    TrafficPort,
    Port(u16),
}

/// A target group's health check, every field explicit so that what AWS
/// reports back compares equal in the steady state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub protocol: HealthProtocol,
    pub port: CheckPort,
    /// Only for HTTP and HTTPS.
    pub path: Option<String>,
    /// Only for HTTP and HTTPS.
    pub success_codes: Option<String>,
    pub interval: i32,
    pub timeout: i32,
    pub healthy: i32,
    pub unhealthy: i32,
}

pub const DEFAULT_INTERVAL: i32 = 10;
pub const DEFAULT_TIMEOUT: i32 = 6;
pub const DEFAULT_THRESHOLD: i32 = 2;

/// A health check as AWS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedHealth {
    pub protocol: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
    pub success_codes: Option<String>,
    pub interval: Option<i32>,
    pub timeout: Option<i32>,
    pub healthy: Option<i32>,
    pub unhealthy: Option<i32>,
}

impl HealthSettings {
    /// The check a spec asks for, with the annotations' overrides applied.
    ///
    /// `externalTrafficPolicy: Cluster` checks kube-proxy's `/healthz` on
    /// 10256 over HTTP, as cloud-provider-aws does: nothing answers a TCP or
    /// UDP check on a UDP NodePort, and kube-proxy fails its check on a
    /// leaving node. `Local` checks `healthCheckNodePort`. An overridden port
    /// with neither protocol nor path annotated is checked over TCP.
    ///
    /// # Errors
    /// `InvalidSpec` on `healthcheck-port` naming a Service port that does not exist.
    pub fn new(
        check: &HealthCheck,
        overrides: &HealthOverrides,
        listeners: &[Listener],
    ) -> Result<Self, ProviderError> {
        let (base_protocol, base_port, base_path) = match check {
            HealthCheck::TrafficPort => (
                HealthProtocol::Http,
                CheckPort::Port(KUBE_PROXY_HEALTH_PORT),
                Some(KUBE_PROXY_HEALTH_PATH.to_string()),
            ),
            HealthCheck::Http { port, path } => (
                HealthProtocol::Http,
                CheckPort::Port(*port),
                Some(path.clone()),
            ),
        };
        let port = match &overrides.port {
            None => base_port,
            Some(HealthPort::TrafficPort) => CheckPort::TrafficPort,
            Some(HealthPort::Port(p)) => CheckPort::Port(*p),
            Some(HealthPort::Named(name)) => {
                let l = listeners
                    .iter()
                    .find(|l| l.name.as_deref() == Some(name.as_str()))
                    .ok_or_else(|| {
                        ProviderError::invalid(
                            portico_provider::Annotations::field(&format!(
                                "{}healthcheck-port",
                                crate::options::PREFIX
                            )),
                            format!("no Service port is named {name:?}"),
                        )
                    })?;
                CheckPort::Port(l.node_port)
            }
        };
        let protocol =
            overrides
                .protocol
                .unwrap_or(if overrides.port.is_some() && overrides.path.is_none() {
                    HealthProtocol::Tcp
                } else {
                    base_protocol
                });
        let http = protocol != HealthProtocol::Tcp;
        let path = http.then(|| {
            overrides
                .path
                .clone()
                .or(base_path)
                .unwrap_or_else(|| "/".to_string())
        });
        let success_codes = http.then(|| {
            overrides
                .success_codes
                .clone()
                .unwrap_or_else(|| DEFAULT_SUCCESS_CODES.to_string())
        });
        let interval = overrides.interval.unwrap_or_else(|| {
            overrides
                .timeout
                .map_or(DEFAULT_INTERVAL, |t| DEFAULT_INTERVAL.max(t + 1))
        });
        let timeout = overrides
            .timeout
            .unwrap_or_else(|| DEFAULT_TIMEOUT.min(interval - 1));
        Ok(Self {
            protocol,
            port,
            path,
            success_codes,
            interval,
            timeout,
            healthy: overrides.healthy_threshold.unwrap_or(DEFAULT_THRESHOLD),
            unhealthy: overrides.unhealthy_threshold.unwrap_or(DEFAULT_THRESHOLD),
        })
    }

    pub fn port_string(&self) -> String {
        match self.port {
            CheckPort::TrafficPort => "traffic-port".to_string(),
            CheckPort::Port(p) => p.to_string(),
        }
    }

    /// Whether what AWS reports is this check.
    pub fn matches(&self, observed: &ObservedHealth) -> bool {
        let http_ok = match self.protocol {
            HealthProtocol::Tcp => true,
            // An answer without a matcher is not compared: AWS always
            // reports one for an HTTP check, moto drops it when a TCP
            // group's check is modified to HTTP.
            _ => {
                observed.path == self.path
                    && (observed.success_codes.is_none()
                        || observed.success_codes == self.success_codes)
            }
        };
        observed.protocol.as_deref() == Some(self.protocol.as_str())
            && observed.port.as_deref() == Some(self.port_string().as_str())
            && http_ok
            && observed.interval == Some(self.interval)
            && observed.timeout == Some(self.timeout)
            && observed.healthy == Some(self.healthy)
            && observed.unhealthy == Some(self.unhealthy)
    }
}

/// A TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificate: String,
    pub policy: String,
    pub alpn: Option<String>,
}

/// One listener and its target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGroup {
    pub name: String,
    pub port: u16,
    /// The target group's protocol.
    pub protocol: TgProtocol,
    /// The listener's protocol (TLS where the NLB terminates TLS).
    pub listener: TgProtocol,
    pub tls: Option<ListenerTls>,
    pub node_port: u16,
    pub health: HealthSettings,
    /// Instance ids.
    pub targets: BTreeSet<String>,
}

/// The security groups a spec asks for (see `security.rs` for the model).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredSecurity {
    /// Whether the NLB carries portico's own group: always, unless the user
    /// gives groups and leaves the nodes' rules alone.
    pub own_group: bool,
    /// The own group's ingress rules; empty when the user's groups decide
    /// who may connect.
    pub frontend: BTreeSet<Rule>,
    /// The user's groups as annotated (ids or names).
    pub user_groups: Vec<String>,
    /// (protocol, port) the nodes' cluster groups must accept from this
    /// NLB; empty when those rules are not portico's to manage. Most are
    /// covered by the cluster's shared rules (see [`Self::own_node_ports`]).
    pub backend_ports: BTreeSet<(&'static str, u16)>,
    /// The cluster's NodePort range, which the shared rules open.
    pub node_port_range: NodePortRange,
}

impl DesiredSecurity {
    /// Whether the NLB carries the cluster's backend group and the nodes
    /// hold the shared rules for it.
    pub fn shared_backend(&self) -> bool {
        !self.backend_ports.is_empty()
    }

    /// The ports the shared rules do not cover: opened from the own group,
    /// for this NLB alone. Usually none.
    pub fn own_node_ports(&self) -> BTreeSet<(&'static str, u16)> {
        self.backend_ports
            .iter()
            .filter(|(ip, port)| !security::shared_rules_cover(self.node_port_range, ip, *port))
            .copied()
            .collect()
    }
}

/// The NLB a spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The Service's key: whose the NLB and its target groups are.
    pub key: LoadBalancerKey,
    /// The generated name, `load-balancer-name`'s, or the adopted NLB's.
    pub name: String,
    /// The NLB the Service opted in to taking over, if any.
    pub adopt: Option<AdoptRef>,
    pub scheme: Scheme,
    pub ip_address_type: IpAddressType,
    /// NLB attributes portico manages (only these keys).
    pub lb_attributes: BTreeMap<String, String>,
    /// Target-group attributes portico manages, the same on every group.
    pub group_attributes: BTreeMap<String, String>,
    /// Tags of the NLB, of every target group and of the own security group.
    pub tags: BTreeMap<String, String>,
    /// By port.
    pub groups: Vec<DesiredGroup>,
    pub security: DesiredSecurity,
}

/// The EC2 instance id in a node's `providerID` (`aws:///us-east-1a/i-0abc`).
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    let valid =
        id.len() > 2 && id.starts_with("i-") && id[2..].chars().all(|c| c.is_ascii_alphanumeric());
    valid.then_some(id)
}

/// Who may connect: `loadBalancerSourceRanges` (or the source-ranges
/// annotation, which the controller folds into them), else everyone on the
/// NLB's address families.
///
/// # Errors
/// `InvalidSpec` for an IPv6 range on an IPv4-only NLB.
fn client_ranges(
    spec: &LoadBalancerSpec,
    family: IpAddressType,
) -> Result<Vec<IpNet>, ProviderError> {
    if let Some(v6) = spec
        .source_ranges
        .iter()
        .find(|r| matches!(r, IpNet::V6(_)))
        && family == IpAddressType::Ipv4
    {
        return Err(ProviderError::invalid(
            "spec.loadBalancerSourceRanges",
            format!(
                "{v6} is IPv6 but the load balancer is IPv4 only (set {}ip-address-type: dualstack)",
                crate::options::PREFIX
            ),
        ));
    }
    if !spec.source_ranges.is_empty() {
        return Ok(spec.source_ranges.clone());
    }
    let mut all = vec![IpNet::V4(ipnet::Ipv4Net::default())];
    if family == IpAddressType::Dualstack {
        all.push(IpNet::V6(ipnet::Ipv6Net::default()));
    }
    Ok(all)
}

impl Desired {
    /// # Errors
    /// `Unsupported` for SCTP, `InvalidSpec` for a port listed twice, TCP
    /// and UDP on one port with different node ports, a health-check port
    /// naming no Service port, or an IPv6 source range on an IPv4 NLB.
    pub fn new(spec: &LoadBalancerSpec, opts: &AwsOptions) -> Result<Self, ProviderError> {
        let mut by_port: BTreeMap<u16, Vec<(Protocol, u16)>> = BTreeMap::new();
        for l in &spec.listeners {
            if l.protocol == Protocol::Sctp {
                return Err(ProviderError::Unsupported {
                    what: format!("protocol SCTP on port {} (NLBs do not carry SCTP)", l.port),
                });
            }
            let entry = by_port.entry(l.port).or_default();
            if entry.iter().any(|(p, _)| *p == l.protocol) {
                return Err(ProviderError::invalid(
                    "spec.ports",
                    format!("port {} {} is listed twice", l.port, l.protocol),
                ));
            }
            entry.push((l.protocol, l.node_port));
        }

        let mut targets = BTreeSet::new();
        for t in spec.targets.iter() {
            if !opts
                .target_node_labels
                .iter()
                .all(|(k, v)| match (t.labels.get(k), v) {
                    (Some(have), Some(want)) => have == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
            {
                continue;
            }
            match t.provider_id.as_deref().and_then(instance_id) {
                Some(id) => {
                    targets.insert(id.to_string());
                }
                None => tracing::warn!(
                    node = %t.node_name,
                    provider_id = ?t.provider_id,
                    "skipping target without an EC2 instance id in its providerID"
                ),
            }
        }

        let health = HealthSettings::new(&spec.health_check, &opts.health, &spec.listeners)?;
        let mut groups = Vec::new();
        for (port, entries) in by_port {
            let (protocol, node_port) = match entries.as_slice() {
                [(Protocol::Tcp, np)] => (TgProtocol::Tcp, *np),
                [(Protocol::Udp, np)] => (TgProtocol::Udp, *np),
                [(_, a), (_, b)] if a == b => (TgProtocol::TcpUdp, *a),
                _ => {
                    return Err(ProviderError::invalid(
                        "spec.ports",
                        format!(
                            "TCP and UDP on port {port} need the same nodePort to share one TCP_UDP listener"
                        ),
                    ));
                }
            };
            let listener = spec.listeners.iter().find(|l| l.port == port);
            let tls = opts.tls.as_ref().filter(|t| match &t.ports {
                TlsPorts::All => protocol == TgProtocol::Tcp,
                TlsPorts::Listed(ports) => ports.iter().any(|p| {
                    *p == port.to_string()
                        || Some(p.as_str()) == listener.and_then(|l| l.name.as_deref())
                }),
            });
            let (protocol, listener, tls) = match tls {
                None => (protocol, protocol, None),
                Some(t) if protocol == TgProtocol::Tcp => (
                    if t.to_targets {
                        TgProtocol::Tls
                    } else {
                        TgProtocol::Tcp
                    },
                    TgProtocol::Tls,
                    Some(ListenerTls {
                        certificate: t.certificate.clone(),
                        policy: t.policy.clone(),
                        alpn: t.alpn.clone(),
                    }),
                ),
                Some(_) => {
                    return Err(ProviderError::invalid(
                        portico_provider::Annotations::field(&format!(
                            "{}ssl-ports",
                            crate::options::PREFIX
                        )),
                        format!("port {port} carries UDP: TLS needs a TCP-only port"),
                    ));
                }
            };
            groups.push(DesiredGroup {
                name: names::target_group_name(&spec.key, port, protocol.as_str(), node_port),
                port,
                protocol,
                listener,
                tls,
                node_port,
                health: health.clone(),
                targets: targets.clone(),
            });
        }

        let mut tags = names::ownership_tags(&spec.key);
        if !opts.additional_tags.is_empty() {
            let keys: Vec<&str> = opts.additional_tags.keys().map(String::as_str).collect();
            tags.insert(names::TAG_ADDITIONAL_KEYS.to_string(), keys.join(","));
            tags.extend(opts.additional_tags.clone());
        }

        let ranges = client_ranges(spec, opts.ip_address_type)?;
        let security = Self::security(&groups, &health, &ranges, opts);
        Ok(Self {
            key: spec.key.clone(),
            name: match (&opts.adopt, &opts.name) {
                (Some(adopt), _) => adopt.name().to_string(),
                (None, Some(name)) => name.clone(),
                (None, None) => names::load_balancer_name(&spec.key),
            },
            adopt: opts.adopt.clone(),
            scheme: opts.scheme,
            ip_address_type: opts.ip_address_type,
            lb_attributes: opts.load_balancer_attributes.clone(),
            group_attributes: opts.target_group_attributes.clone(),
            tags,
            groups,
            security,
        })
    }

    fn security(
        groups: &[DesiredGroup],
        health: &HealthSettings,
        ranges: &[IpNet],
        opts: &AwsOptions,
    ) -> DesiredSecurity {
        let user_groups = opts.security_groups.clone();
        let own_group = user_groups.is_empty() || opts.manage_backend_rules;
        let frontend = if user_groups.is_empty() {
            let ports: Vec<(u16, &str)> = groups
                .iter()
                .map(|g| (g.port, g.protocol.as_str()))
                .collect();
            security::frontend_rules(&ports, ranges)
        } else {
            BTreeSet::new()
        };
        let mut backend_ports = BTreeSet::new();
        if own_group && opts.manage_backend_rules {
            for g in groups {
                for ip in security::ip_protocols(g.protocol.as_str()) {
                    backend_ports.insert((*ip, g.node_port));
                }
            }
            if let CheckPort::Port(p) = health.port {
                backend_ports.insert(("tcp", p));
            }
        }
        DesiredSecurity {
            own_group,
            frontend,
            user_groups,
            backend_ports,
            node_port_range: NodePortRange::default(),
        }
    }

    /// The status for an NLB reachable at `dns_name`.
    pub fn status(&self, dns_name: &str) -> LoadBalancerStatus {
        let ports: Vec<(u16, TgProtocol)> =
            self.groups.iter().map(|g| (g.port, g.listener)).collect();
        status(dns_name, &ports)
    }
}

/// What the aws provider accepts but does not enforce for `spec`: source
/// ranges when the user's own security groups decide who may connect.
pub fn unenforced_ranges(spec: &LoadBalancerSpec, opts: &AwsOptions) -> Option<String> {
    if spec.source_ranges.is_empty() || opts.security_groups.is_empty() {
        return None;
    }
    let ranges: Vec<String> = spec.source_ranges.iter().map(ToString::to_string).collect();
    Some(format!(
        "spec.loadBalancerSourceRanges ({}) is not enforced: the security groups in {}security-groups decide who may connect",
        ranges.join(", "),
        crate::options::PREFIX
    ))
}

/// `status.loadBalancer` for an NLB at `dns_name` listening on `ports`.
pub fn status(dns_name: &str, ports: &[(u16, TgProtocol)]) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: vec![IngressStatus {
            ip: None,
            hostname: Some(dns_name.to_string()),
            ip_mode: None,
            ports: ports
                .iter()
                .flat_map(|(port, protocol)| {
                    protocol.protocols().iter().map(|p| PortStatus {
                        port: *port,
                        protocol: *p,
                        error: None,
                    })
                })
                .collect(),
        }],
    }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
