//! Decide, then act: what the NLB of a spec should look like ([`Desired`]),
//! what AWS has ([`Observed`]), and the exact calls that turn one into the
//! other ([`plan`]). No I/O here; `provider.rs` carries the steps out.

use std::collections::{BTreeMap, BTreeSet};

use portico_provider::{
    HealthCheck, IngressStatus, LoadBalancerSpec, LoadBalancerStatus, PortStatus, Protocol,
    ProviderError,
};

use crate::names;
use crate::options::{
    AwsOptions, HealthOverrides, HealthPort, HealthProtocol, IpAddressType, Scheme,
};

/// AWS accepts at most this many targets per RegisterTargets/DeregisterTargets call.
pub const TARGET_BATCH: usize = 100;

/// A target group's (and its listener's) protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TgProtocol {
    Tcp,
    Udp,
    /// TCP and UDP on the same port: one listener and target group for both.
    TcpUdp,
}

impl TgProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::TcpUdp => "TCP_UDP",
        }
    }

    fn protocols(self) -> &'static [Protocol] {
        match self {
            Self::Tcp => &[Protocol::Tcp],
            Self::Udp => &[Protocol::Udp],
            Self::TcpUdp => &[Protocol::Tcp, Protocol::Udp],
        }
    }
}

/// A target group's health check, every field explicit so that what AWS
/// reports back compares equal in the steady state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub protocol: HealthProtocol,
    pub port: HealthPort,
    /// Only for HTTP and HTTPS.
    pub path: Option<String>,
    pub interval: i32,
    pub timeout: i32,
    pub healthy: i32,
    pub unhealthy: i32,
}

pub const DEFAULT_INTERVAL: i32 = 10;
pub const DEFAULT_TIMEOUT: i32 = 6;
pub const DEFAULT_THRESHOLD: i32 = 2;

impl HealthSettings {
    /// The check a spec asks for, with the annotations' overrides applied.
    pub fn new(check: &HealthCheck, overrides: &HealthOverrides) -> Self {
        let (base_protocol, base_port, base_path) = match check {
            HealthCheck::TrafficPort => (HealthProtocol::Tcp, HealthPort::TrafficPort, None),
            HealthCheck::Http { port, path } => (
                HealthProtocol::Http,
                HealthPort::Port(*port),
                Some(path.clone()),
            ),
        };
        let protocol = overrides.protocol.unwrap_or(base_protocol);
        let path = match protocol {
            HealthProtocol::Tcp => None,
            HealthProtocol::Http | HealthProtocol::Https => Some(
                overrides
                    .path
                    .clone()
                    .or(base_path)
                    .unwrap_or_else(|| "/".to_string()),
            ),
        };
        let interval = overrides.interval.unwrap_or_else(|| {
            overrides
                .timeout
                .map_or(DEFAULT_INTERVAL, |t| DEFAULT_INTERVAL.max(t + 1))
        });
        let timeout = overrides
            .timeout
            .unwrap_or_else(|| DEFAULT_TIMEOUT.min(interval - 1));
        Self {
            protocol,
            port: overrides.port.unwrap_or(base_port),
            path,
            interval,
            timeout,
            healthy: overrides.healthy_threshold.unwrap_or(DEFAULT_THRESHOLD),
            unhealthy: overrides.unhealthy_threshold.unwrap_or(DEFAULT_THRESHOLD),
        }
    }

    pub fn port_string(&self) -> String {
        match self.port {
            HealthPort::TrafficPort => "traffic-port".to_string(),
            HealthPort::Port(p) => p.to_string(),
        }
    }

    /// Whether what AWS reports is this check.
    pub fn matches(&self, observed: &ObservedHealth) -> bool {
        let path_ok = match self.protocol {
            HealthProtocol::Tcp => true,
            _ => observed.path == self.path,
        };
        observed.protocol.as_deref() == Some(self.protocol.as_str())
            && observed.port.as_deref() == Some(self.port_string().as_str())
            && path_ok
            && observed.interval == Some(self.interval)
            && observed.timeout == Some(self.timeout)
            && observed.healthy == Some(self.healthy)
            && observed.unhealthy == Some(self.unhealthy)
    }
}

/// One listener and its target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGroup {
    pub name: String,
    pub port: u16,
    pub protocol: TgProtocol,
    pub node_port: u16,
    pub health: HealthSettings,
    /// Instance ids.
    pub targets: BTreeSet<String>,
}

/// The NLB a spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub scheme: Scheme,
    pub ip_address_type: IpAddressType,
    pub cross_zone: Option<bool>,
    /// Tags of the NLB and of every target group.
    pub tags: BTreeMap<String, String>,
    /// By port.
    pub groups: Vec<DesiredGroup>,
}

/// The EC2 instance id in a node's `providerID` (`aws:///us-east-1a/i-0abc`).
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    let valid =
        id.len() > 2 && id.starts_with("i-") && id[2..].chars().all(|c| c.is_ascii_alphanumeric());
    valid.then_some(id)
}

impl Desired {
    /// # Errors
    /// `Unsupported` for SCTP, `InvalidSpec` for a port listed twice or TCP
    /// and UDP on one port with different node ports.
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
                .all(|(k, v)| t.labels.get(k) == Some(v))
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

        let health = HealthSettings::new(&spec.health_check, &opts.health);
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
            groups.push(DesiredGroup {
                name: names::target_group_name(&spec.key, port, protocol.as_str(), node_port),
                port,
                protocol,
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

        Ok(Self {
            name: names::load_balancer_name(&spec.key),
            scheme: opts.scheme,
            ip_address_type: opts.ip_address_type,
            cross_zone: opts.cross_zone,
            tags,
            groups,
        })
    }

    /// The status for an NLB reachable at `dns_name`.
    pub fn status(&self, dns_name: &str) -> LoadBalancerStatus {
        let ports: Vec<(u16, TgProtocol)> =
            self.groups.iter().map(|g| (g.port, g.protocol)).collect();
        status(dns_name, &ports)
    }
}

/// What the NLB cannot do of `spec`: filter clients by
/// `loadBalancerSourceRanges` (see the crate README for why, and where to
/// filter instead).
pub fn source_ranges_note(spec: &LoadBalancerSpec) -> Option<String> {
    if spec.source_ranges.is_empty() {
        return None;
    }
    let ranges: Vec<String> = spec.source_ranges.iter().map(ToString::to_string).collect();
    Some(format!(
        "spec.loadBalancerSourceRanges ({}) is not enforced by the aws provider: \
         an NLB with instance targets cannot filter clients; allow the NodePorts \
         only from these ranges in the nodes' security groups",
        ranges.join(", ")
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

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLb {
    pub arn: String,
    pub name: String,
    pub dns_name: String,
    pub scheme: Option<String>,
    pub ip_address_type: Option<String>,
    pub vpc_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedListener {
    pub arn: String,
    pub port: u16,
    pub protocol: String,
    pub target_group_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedHealth {
    pub protocol: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
    pub interval: Option<i32>,
    pub timeout: Option<i32>,
    pub healthy: Option<i32>,
    pub unhealthy: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedGroup {
    pub arn: String,
    pub name: String,
    pub health: ObservedHealth,
    pub targets: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
}

/// What AWS has for one NLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub lb: ObservedLb,
    pub tags: BTreeMap<String, String>,
    /// `None` when not read (the spec does not manage it).
    pub cross_zone: Option<bool>,
    pub listeners: Vec<ObservedListener>,
    pub groups: Vec<ObservedGroup>,
}

impl Observed {
    /// A just-created NLB: tagged at creation, nothing else yet.
    pub fn fresh(lb: ObservedLb, tags: BTreeMap<String, String>) -> Self {
        Self {
            lb,
            tags,
            // NLBs start with cross-zone load balancing off.
            cross_zone: Some(false),
            listeners: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// A target group known by ARN, or one this plan creates (by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Arn(String),
    Created(String),
}

/// One AWS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    SetIpAddressType(IpAddressType),
    SetCrossZone(bool),
    AddTags {
        resource: GroupRef,
        tags: BTreeMap<String, String>,
    },
    RemoveTags {
        resource: GroupRef,
        keys: Vec<String>,
    },
    /// Create `Desired::groups[index]`.
    CreateGroup(usize),
    ModifyHealth {
        arn: String,
        health: HealthSettings,
    },
    Register {
        group: GroupRef,
        ids: Vec<String>,
    },
    Deregister {
        arn: String,
        ids: Vec<String>,
    },
    CreateListener {
        port: u16,
        protocol: TgProtocol,
        group: GroupRef,
    },
    ModifyListener {
        arn: String,
        protocol: TgProtocol,
        group: GroupRef,
    },
    DeleteListener {
        arn: String,
    },
    DeleteGroup {
        arn: String,
    },
}

impl Step {
    /// The AWS operation this step calls.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::SetIpAddressType(_) => "SetIpAddressType",
            Self::SetCrossZone(_) => "ModifyLoadBalancerAttributes",
            Self::AddTags { .. } => "AddTags",
            Self::RemoveTags { .. } => "RemoveTags",
            Self::CreateGroup(_) => "CreateTargetGroup",
            Self::ModifyHealth { .. } => "ModifyTargetGroup",
            Self::Register { .. } => "RegisterTargets",
            Self::Deregister { .. } => "DeregisterTargets",
            Self::CreateListener { .. } => "CreateListener",
            Self::ModifyListener { .. } => "ModifyListener",
            Self::DeleteListener { .. } => "DeleteListener",
            Self::DeleteGroup { .. } => "DeleteTargetGroup",
        }
    }
}

/// Tag changes that make `observed` carry `desired`. Only tags portico
/// manages are removed: additional tags it applied before (recorded in
/// [`names::TAG_ADDITIONAL_KEYS`]) that the annotation no longer lists.
fn tag_steps(
    resource: GroupRef,
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    out: &mut Vec<Step>,
) {
    let add: BTreeMap<String, String> = desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut managed: BTreeSet<&str> = observed
        .get(names::TAG_ADDITIONAL_KEYS)
        .map(|keys| keys.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    managed.insert(names::TAG_ADDITIONAL_KEYS);
    let remove: Vec<String> = managed
        .into_iter()
        .filter(|k| observed.contains_key(*k) && !desired.contains_key(*k))
        .map(String::from)
        .collect();
    if !add.is_empty() {
        out.push(Step::AddTags {
            resource: resource.clone(),
            tags: add,
        });
    }
    if !remove.is_empty() {
        out.push(Step::RemoveTags {
            resource,
            keys: remove,
        });
    }
}

fn batches(group: &GroupRef, ids: &BTreeSet<String>, register: bool, out: &mut Vec<Step>) {
    let ids: Vec<String> = ids.iter().cloned().collect();
    for chunk in ids.chunks(TARGET_BATCH) {
        out.push(match (register, group) {
            (true, g) => Step::Register {
                group: g.clone(),
                ids: chunk.to_vec(),
            },
            (false, GroupRef::Arn(arn)) => Step::Deregister {
                arn: arn.clone(),
                ids: chunk.to_vec(),
            },
            // A group created by this plan has nothing to deregister.
            (false, GroupRef::Created(_)) => return,
        });
    }
}

/// The calls that turn `observed` into `desired`, in a safe order: create
/// target groups and register targets, then deregister, then point
/// listeners at the right groups, and only then delete what is left over.
/// Empty when they already match.
pub fn plan(observed: &Observed, desired: &Desired) -> Vec<Step> {
    let lb = GroupRef::Arn(observed.lb.arn.clone());
    let mut lb_steps = Vec::new();
    if observed
        .lb
        .ip_address_type
        .as_deref()
        .is_some_and(|t| t != desired.ip_address_type.as_str())
    {
        lb_steps.push(Step::SetIpAddressType(desired.ip_address_type));
    }
    if let Some(want) = desired.cross_zone
        && observed.cross_zone != Some(want)
    {
        lb_steps.push(Step::SetCrossZone(want));
    }
    tag_steps(lb, &observed.tags, &desired.tags, &mut lb_steps);

    let by_name: BTreeMap<&str, &ObservedGroup> = observed
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();
    let mut creates = Vec::new();
    let mut modifies = Vec::new();
    let mut registers = Vec::new();
    let mut deregisters = Vec::new();
    let mut refs = Vec::new();
    for (i, g) in desired.groups.iter().enumerate() {
        match by_name.get(g.name.as_str()) {
            None => {
                let r = GroupRef::Created(g.name.clone());
                creates.push(Step::CreateGroup(i));
                batches(&r, &g.targets, true, &mut registers);
                refs.push(r);
            }
            Some(o) => {
                let r = GroupRef::Arn(o.arn.clone());
                if !g.health.matches(&o.health) {
                    modifies.push(Step::ModifyHealth {
                        arn: o.arn.clone(),
                        health: g.health.clone(),
                    });
                }
                tag_steps(r.clone(), &o.tags, &desired.tags, &mut modifies);
                let add = g.targets.difference(&o.targets).cloned().collect();
                let remove = o.targets.difference(&g.targets).cloned().collect();
                batches(&r, &add, true, &mut registers);
                batches(&r, &remove, false, &mut deregisters);
                refs.push(r);
            }
        }
    }

    let mut listener_steps = Vec::new();
    let mut listener_deletes = Vec::new();
    let mut by_port: BTreeMap<u16, Vec<&ObservedListener>> = BTreeMap::new();
    for l in &observed.listeners {
        by_port.entry(l.port).or_default().push(l);
    }
    for list in by_port.values_mut() {
        list.sort_by(|a, b| a.arn.cmp(&b.arn));
    }
    for (g, r) in desired.groups.iter().zip(&refs) {
        let existing = by_port.remove(&g.port).unwrap_or_default();
        let mut existing = existing.into_iter();
        match existing.next() {
            None => listener_steps.push(Step::CreateListener {
                port: g.port,
                protocol: g.protocol,
                group: r.clone(),
            }),
            Some(l) => {
                let points_right = match r {
                    GroupRef::Arn(arn) => l.target_group_arn.as_deref() == Some(arn.as_str()),
                    GroupRef::Created(_) => false,
                };
                if l.protocol != g.protocol.as_str() || !points_right {
                    listener_steps.push(Step::ModifyListener {
                        arn: l.arn.clone(),
                        protocol: g.protocol,
                        group: r.clone(),
                    });
                }
            }
        }
        // A second listener on one port: never made by portico, but an emulator may allow it.
        for extra in existing {
            listener_deletes.push(Step::DeleteListener {
                arn: extra.arn.clone(),
            });
        }
    }
    for extra in by_port.into_values().flatten() {
        listener_deletes.push(Step::DeleteListener {
            arn: extra.arn.clone(),
        });
    }

    let wanted: BTreeSet<&str> = desired.groups.iter().map(|g| g.name.as_str()).collect();
    let group_deletes = observed
        .groups
        .iter()
        .filter(|g| !wanted.contains(g.name.as_str()))
        .map(|g| Step::DeleteGroup { arn: g.arn.clone() });

    let mut steps = lb_steps;
    steps.extend(creates);
    steps.extend(modifies);
    steps.extend(registers);
    steps.extend(deregisters);
    steps.extend(listener_steps);
    steps.extend(listener_deletes);
    steps.extend(group_deletes);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_provider::{Annotations, ClusterName, Listener, LoadBalancerKey, Target};

    fn key() -> LoadBalancerKey {
        LoadBalancerKey::new(ClusterName::new("c1"), "ns", "web", "uid-1")
    }

    fn target(i: usize, labels: &[(&str, &str)]) -> Target {
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

    fn listener(port: u16, protocol: Protocol, node_port: u16) -> Listener {
        Listener {
            port,
            protocol,
            node_port,
            name: None,
        }
    }

    fn spec(listeners: Vec<Listener>, targets: usize) -> LoadBalancerSpec {
        let mut s = LoadBalancerSpec::new(key());
        s.listeners = listeners;
        s.targets = (0..targets).map(|i| target(i, &[])).collect();
        s
    }

    #[test]
    fn source_ranges_are_reported_as_unenforced() {
        let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
        assert_eq!(source_ranges_note(&s), None);
        s.source_ranges = vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "192.0.2.0/24".parse().expect("cidr"),
        ];
        let note = source_ranges_note(&s).expect("a note");
        assert!(
            note.contains("loadBalancerSourceRanges") && note.contains("10.0.0.0/8, 192.0.2.0/24"),
            "{note}"
        );
    }

    fn desired(spec: &LoadBalancerSpec) -> Desired {
        let opts = AwsOptions::parse(spec).expect("options");
        Desired::new(spec, &opts).expect("desired")
    }

    /// What AWS would report after carrying out `desired` on a fresh NLB.
    fn converged(d: &Desired) -> Observed {
        let mut o = Observed::fresh(
            ObservedLb {
                arn: "arn:lb".into(),
                name: d.name.clone(),
                dns_name: "lb.example".into(),
                scheme: Some("internet-facing".into()),
                ip_address_type: Some("ipv4".into()),
                vpc_id: Some("vpc-1".into()),
            },
            d.tags.clone(),
        );
        o.cross_zone = d.cross_zone.or(Some(false));
        for g in &d.groups {
            let arn = format!("arn:tg/{}", g.name);
            o.groups.push(ObservedGroup {
                arn: arn.clone(),
                name: g.name.clone(),
                health: ObservedHealth {
                    protocol: Some(g.health.protocol.as_str().into()),
                    port: Some(g.health.port_string()),
                    path: g.health.path.clone(),
                    interval: Some(g.health.interval),
                    timeout: Some(g.health.timeout),
                    healthy: Some(g.health.healthy),
                    unhealthy: Some(g.health.unhealthy),
                },
                targets: g.targets.clone(),
                tags: d.tags.clone(),
            });
            o.listeners.push(ObservedListener {
                arn: format!("arn:listener/{}", g.port),
                port: g.port,
                protocol: g.protocol.as_str().into(),
                target_group_arn: Some(arn),
            });
        }
        o
    }

    fn ops(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(Step::operation).collect()
    }

    #[test]
    fn provider_ids_parse() {
        let cases = [
            ("zonal", "aws:///us-east-1a/i-0abc123", Some("i-0abc123")),
            ("no zone", "aws:////i-0abc", Some("i-0abc")),
            ("not aws", "gce://p/z/i-0abc", None),
            ("not an instance", "aws:///us-east-1a/fargate-ip-10", None),
            ("empty id", "aws:///us-east-1a/i-", None),
            ("garbage", "i-0abc", None),
        ];
        for (desc, raw, want) in cases {
            assert_eq!(instance_id(raw), want, "{desc}");
        }
    }

    #[test]
    fn fresh_nlb_plan_creates_groups_registers_and_listens() {
        let s = spec(
            vec![
                listener(80, Protocol::Tcp, 30080),
                listener(53, Protocol::Udp, 30053),
            ],
            2,
        );
        let d = desired(&s);
        let mut fresh = converged(&d);
        fresh.groups.clear();
        fresh.listeners.clear();
        let steps = plan(&fresh, &d);
        assert_eq!(
            ops(&steps),
            [
                "CreateTargetGroup",
                "CreateTargetGroup",
                "RegisterTargets",
                "RegisterTargets",
                "CreateListener",
                "CreateListener"
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let mut s = spec(
            vec![
                listener(80, Protocol::Tcp, 30080),
                listener(53, Protocol::Udp, 30053),
            ],
            3,
        );
        s.annotations = Annotations::new(
            [
                (
                    "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags",
                    "team=web",
                ),
                (
                    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled",
                    "true",
                ),
                (
                    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol",
                    "http",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let d = desired(&s);
        assert_eq!(plan(&converged(&d), &d), vec![]);
    }

    #[test]
    fn tcp_and_udp_on_one_port_merge() {
        let s = spec(
            vec![
                listener(53, Protocol::Tcp, 30053),
                listener(53, Protocol::Udp, 30053),
            ],
            1,
        );
        let d = desired(&s);
        assert_eq!(d.groups.len(), 1);
        assert_eq!(d.groups[0].protocol, TgProtocol::TcpUdp);
        let ports = &d.status("x").ingress[0].ports;
        assert_eq!(ports.len(), 2, "status reports both protocols");

        let bad = spec(
            vec![
                listener(53, Protocol::Tcp, 30053),
                listener(53, Protocol::Udp, 30054),
            ],
            1,
        );
        let opts = AwsOptions::parse(&bad).expect("options");
        assert!(matches!(
            Desired::new(&bad, &opts),
            Err(ProviderError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn invalid_listeners_are_rejected() {
        let cases = [
            (
                "duplicate",
                vec![
                    listener(80, Protocol::Tcp, 1),
                    listener(80, Protocol::Tcp, 2),
                ],
                "invalid_spec",
            ),
            ("sctp", vec![listener(80, Protocol::Sctp, 1)], "unsupported"),
        ];
        for (desc, listeners, label) in cases {
            let s = spec(listeners, 1);
            let opts = AwsOptions::parse(&s).expect("options");
            let err = Desired::new(&s, &opts).expect_err(desc);
            assert_eq!(err.metric_label(), label, "{desc}");
        }
    }

    #[test]
    fn target_changes_batch_by_100_register_first() {
        let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 250);
        let d = desired(&s);
        let mut o = converged(&d);
        // 250 desired; AWS has 0..50 and 300..420 (120 to go, 200 to add).
        o.groups[0].targets = (0..50)
            .chain(300..420)
            .map(|i| format!("i-{i:05x}"))
            .collect();
        let steps = plan(&o, &d);
        assert_eq!(
            ops(&steps),
            [
                "RegisterTargets",
                "RegisterTargets",
                "DeregisterTargets",
                "DeregisterTargets"
            ]
        );
        let sizes: Vec<usize> = steps
            .iter()
            .map(|s| match s {
                Step::Register { ids, .. } | Step::Deregister { ids, .. } => ids.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [100, 100, 100, 20]);
    }

    #[test]
    fn health_change_modifies_the_group_only() {
        let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 2);
        let d = desired(&s);
        let o = converged(&d);
        let mut local = s.clone();
        local.health_check = HealthCheck::Http {
            port: 32000,
            path: "/healthz".into(),
        };
        let steps = plan(&o, &desired(&local));
        assert_eq!(ops(&steps), ["ModifyTargetGroup"]);
        match &steps[0] {
            Step::ModifyHealth { health, .. } => {
                assert_eq!(health.protocol, HealthProtocol::Http);
                assert_eq!(health.port_string(), "32000");
                assert_eq!(health.path.as_deref(), Some("/healthz"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn node_port_change_replaces_the_group_behind_the_listener() {
        let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 2);
        let o = converged(&desired(&s));
        let moved = spec(vec![listener(80, Protocol::Tcp, 31080)], 2);
        let steps = plan(&o, &desired(&moved));
        assert_eq!(
            ops(&steps),
            [
                "CreateTargetGroup",
                "RegisterTargets",
                "ModifyListener",
                "DeleteTargetGroup"
            ]
        );
    }

    #[test]
    fn protocol_change_to_tcp_udp_modifies_the_listener() {
        let s = spec(vec![listener(53, Protocol::Udp, 30053)], 1);
        let o = converged(&desired(&s));
        let both = spec(
            vec![
                listener(53, Protocol::Tcp, 30053),
                listener(53, Protocol::Udp, 30053),
            ],
            1,
        );
        let steps = plan(&o, &desired(&both));
        assert_eq!(
            ops(&steps),
            [
                "CreateTargetGroup",
                "RegisterTargets",
                "ModifyListener",
                "DeleteTargetGroup"
            ]
        );
        assert!(matches!(
            &steps[2],
            Step::ModifyListener {
                protocol: TgProtocol::TcpUdp,
                ..
            }
        ));
    }

    #[test]
    fn removed_port_deletes_listener_then_group() {
        let s = spec(
            vec![
                listener(80, Protocol::Tcp, 30080),
                listener(443, Protocol::Tcp, 30443),
            ],
            1,
        );
        let o = converged(&desired(&s));
        let fewer = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
        assert_eq!(
            ops(&plan(&o, &desired(&fewer))),
            ["DeleteListener", "DeleteTargetGroup"]
        );
    }

    #[test]
    fn duplicate_listeners_from_an_emulator_are_cleaned() {
        let s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
        let d = desired(&s);
        let mut o = converged(&d);
        let mut dup = o.listeners[0].clone();
        dup.arn = "arn:listener/zz".into();
        o.listeners.push(dup);
        assert_eq!(ops(&plan(&o, &d)), ["DeleteListener"]);
    }

    #[test]
    fn tags_diff_keeps_foreign_tags() {
        let with = |tags: &str| {
            let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 1);
            s.annotations = Annotations::new(
                [(
                    "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags"
                        .to_string(),
                    tags.to_string(),
                )]
                .into_iter()
                .collect(),
            );
            desired(&s)
        };
        let before = with("team=web,env=prod");
        let mut o = converged(&before);
        o.tags.insert("someone-else".into(), "x".into());
        let after = with("team=api");
        let steps = plan(&o, &after);
        let lb_steps: Vec<&Step> = steps
            .iter()
            .filter(|s| {
                matches!(s, Step::AddTags { resource: GroupRef::Arn(a), .. }
                    | Step::RemoveTags { resource: GroupRef::Arn(a), .. } if a == "arn:lb")
            })
            .collect();
        assert_eq!(lb_steps.len(), 2, "{steps:?}");
        match lb_steps[0] {
            Step::AddTags { tags, .. } => {
                assert_eq!(tags.get("team").map(String::as_str), Some("api"));
                assert_eq!(
                    tags.get(names::TAG_ADDITIONAL_KEYS).map(String::as_str),
                    Some("team")
                );
            }
            other => panic!("{other:?}"),
        }
        match lb_steps[1] {
            Step::RemoveTags { keys, .. } => assert_eq!(keys, &vec!["env".to_string()]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn target_node_labels_filter_targets() {
        let mut s = spec(vec![listener(80, Protocol::Tcp, 30080)], 0);
        s.targets = vec![
            target(1, &[("pool", "edge")]),
            target(2, &[("pool", "batch")]),
            target(3, &[]),
            Target {
                provider_id: None,
                ..target(4, &[("pool", "edge")])
            },
        ]
        .into();
        s.annotations = Annotations::new(
            [(
                "service.beta.kubernetes.io/aws-load-balancer-target-node-labels".to_string(),
                "pool=edge".to_string(),
            )]
            .into_iter()
            .collect(),
        );
        let d = desired(&s);
        assert_eq!(
            d.groups[0].targets.iter().collect::<Vec<_>>(),
            vec!["i-00001"]
        );
    }

    #[test]
    fn health_settings_follow_policy_and_overrides() {
        let cluster = HealthSettings::new(&HealthCheck::TrafficPort, &HealthOverrides::default());
        assert_eq!(cluster.protocol, HealthProtocol::Tcp);
        assert_eq!(cluster.port_string(), "traffic-port");
        assert_eq!(cluster.path, None);
        let local = HealthSettings::new(
            &HealthCheck::Http {
                port: 32000,
                path: "/healthz".into(),
            },
            &HealthOverrides::default(),
        );
        assert_eq!(
            (local.protocol, local.port_string(), local.path.as_deref()),
            (HealthProtocol::Http, "32000".to_string(), Some("/healthz"))
        );
        let tuned = HealthSettings::new(
            &HealthCheck::TrafficPort,
            &HealthOverrides {
                protocol: Some(HealthProtocol::Https),
                timeout: Some(20),
                ..Default::default()
            },
        );
        assert_eq!(tuned.path.as_deref(), Some("/"));
        assert!(tuned.timeout < tuned.interval, "{tuned:?}");
        let short = HealthSettings::new(
            &HealthCheck::TrafficPort,
            &HealthOverrides {
                interval: Some(5),
                ..Default::default()
            },
        );
        assert_eq!((short.interval, short.timeout), (5, 4));
    }
}
