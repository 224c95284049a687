//! The `service.beta.kubernetes.io/aws-load-balancer-*` annotations, parsed
//! once into typed [`AwsOptions`] (no raw strings past this module).
//!
//! Longer than most files on purpose: one parser per annotation, all in
//! one place, so what users can write is read in one file (the README's
//! table follows it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use portico_provider::{Annotations, LoadBalancerSpec, ProviderError};

/// The annotation prefix every option here shares.
pub const PREFIX: &str = "service.beta.kubernetes.io/aws-load-balancer-";

fn key(suffix: &str) -> String {
    format!("{PREFIX}{suffix}")
}

/// The annotation naming the Service's target nodes by label.
pub const TARGET_NODE_LABELS: &str =
    "service.beta.kubernetes.io/aws-load-balancer-target-node-labels";

/// Whether a class-less Service belongs to the AWS Load Balancer Controller
/// by its `aws-load-balancer-type` (`external`, or the older `nlb-ip`), as
/// that controller decides. (A Service with the controller's class
/// `service.k8s.aws/nlb` is another class, which portico never claims.)
pub fn declined_for_aws_lb_controller(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<portico_provider::Declined> {
    let key = key("type");
    let value = annotations.get(&key)?.trim().to_ascii_lowercase();
    matches!(value.as_str(), "external" | "nlb-ip").then(|| portico_provider::Declined {
        reason: format!("{key}: {value} belongs to the AWS Load Balancer Controller"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    InternetFacing,
    Internal,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InternetFacing => "internet-facing",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAddressType {
    Ipv4,
    Dualstack,
}

impl IpAddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Dualstack => "dualstack",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProtocol {
    Tcp,
    Http,
    Https,
}

impl HealthProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthPort {
    TrafficPort,
    Port(u16),
    /// A Service port's name: the health check goes to that port's NodePort.
    Named(String),
}

/// How subnets are chosen for a new NLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetSelector {
    /// Discover by `kubernetes.io/role/(internal-)elb` and cluster tags.
    Discover,
    /// Subnet ids (`subnet-...`) or `Name` tag values, as listed.
    Listed(Vec<String>),
}

/// Health-check overrides from annotations; `None` keeps the default that
/// follows from the Service's traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthOverrides {
    pub protocol: Option<HealthProtocol>,
    pub port: Option<HealthPort>,
    pub path: Option<String>,
    pub interval: Option<i32>,
    pub timeout: Option<i32>,
    pub healthy_threshold: Option<i32>,
    pub unhealthy_threshold: Option<i32>,
    /// HTTP codes of a healthy answer (`200`, `200,202`, `200-399`).
    pub success_codes: Option<String>,
}

/// Which Service ports a TLS certificate serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsPorts {
    All,
    /// Port numbers or Service port names.
    Listed(Vec<String>),
}

/// TLS termination on the NLB (`ssl-cert` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The ACM (or IAM) certificate ARN of the listeners.
    pub certificate: String,
    pub ports: TlsPorts,
    pub policy: String,
    /// `HTTP1Only`, `HTTP2Only`, `HTTP2Optional`, `HTTP2Preferred` or `None`.
    pub alpn: Option<String>,
    /// TLS to the targets too (`backend-protocol: ssl`/`tls`/`https`).
    pub to_targets: bool,
}

/// What cloud-provider-aws uses for NLB TLS listeners when no policy is annotated.
pub const DEFAULT_TLS_POLICY: &str = "ELBSecurityPolicy-2016-08";

/// Every AWS-specific option of one Service, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsOptions {
    pub scheme: Scheme,
    pub subnets: SubnetSelector,
    /// `None`: leave the attribute as AWS has it.
    pub cross_zone: Option<bool>,
    /// `aws-load-balancer-attributes` (with `cross-zone-load-balancing-enabled`
    /// folded in when the map does not name it): only these keys are managed.
    pub load_balancer_attributes: BTreeMap<String, String>,
    /// `target-group-attributes`, plus `proxy_protocol_v2.enabled=true` for
    /// `proxy-protocol: "*"`: only these keys are managed.
    pub target_group_attributes: BTreeMap<String, String>,
    pub health: HealthOverrides,
    pub additional_tags: BTreeMap<String, String>,
    /// Labels a target node must carry; `None`: any value (`k=` or bare `k`).
    pub target_node_labels: BTreeMap<String, Option<String>>,
    pub eip_allocations: Vec<String>,
    pub private_ipv4_addresses: Vec<Ipv4Addr>,
    pub ip_address_type: IpAddressType,
    /// Groups the user gives the NLB (ids or names) instead of portico's
    /// own frontend group; empty: portico's group filters clients.
    pub security_groups: Vec<String>,
    /// Whether portico opens the nodes' cluster group to the NLB.
    pub manage_backend_rules: bool,
    pub tls: Option<TlsOptions>,
    /// `load-balancer-name`: the NLB's name instead of the generated one.
    pub name: Option<String>,
    /// `portico.io/adopt-load-balancer`: an NLB portico did not create, to take over.
    pub adopt: Option<crate::adopt::AdoptRef>,
}

fn invalid(suffix: &str, reason: impl Into<String>) -> ProviderError {
    ProviderError::invalid(Annotations::field(&key(suffix)), reason)
}

/// Tag keys portico reserves for ownership; users may not set them.
const RESERVED_TAG_PREFIXES: &[&str] = &["kubernetes.io/", "portico.io/", "aws:"];

impl AwsOptions {
    /// Parse the annotations of `spec`. Pure: no I/O.
    ///
    /// # Errors
    /// [`ProviderError::InvalidSpec`] naming the annotation, or
    /// [`ProviderError::Unsupported`] for a load balancer type other than NLB.
    pub fn parse(spec: &LoadBalancerSpec) -> Result<Self, ProviderError> {
        let a = &spec.annotations;

        if let Some(raw) = a.get(&key("type")) {
            match raw.to_ascii_lowercase().as_str() {
                "nlb" => {}
                "external" | "nlb-ip" => {
                    return Err(ProviderError::Unsupported {
                        what: format!(
                            "{}={raw}: this Service belongs to the AWS Load Balancer Controller",
                            key("type")
                        ),
                    });
                }
                _ => {
                    return Err(invalid(
                        "type",
                        format!("{raw:?}: portico builds only Network Load Balancers (nlb)"),
                    ));
                }
            }
        }

        // As cloud-provider-aws reads it: "false" is external, any other
        // value (`true`, or the `0.0.0.0/0` of old manifests) is internal.
        let internal = a.get(&key("internal")).and_then(|v| match v {
            "" => None,
            v if v.eq_ignore_ascii_case("false") => Some(false),
            _ => Some(true),
        });
        let scheme_annotation = match a.get(&key("scheme")) {
            None => None,
            Some("internet-facing") => Some(Scheme::InternetFacing),
            Some("internal") => Some(Scheme::Internal),
            Some(raw) => {
                return Err(invalid(
                    "scheme",
                    format!("{raw:?} is neither internet-facing nor internal"),
                ));
            }
        };
        let scheme = match (internal, scheme_annotation) {
            (Some(true), Some(Scheme::InternetFacing)) => {
                return Err(invalid(
                    "scheme",
                    format!("internet-facing contradicts {}=true", key("internal")),
                ));
            }
            (_, Some(s)) => s,
            (Some(true), None) => Scheme::Internal,
            _ => Scheme::InternetFacing,
        };

        let subnets = match a.list(&key("subnets")) {
            None => SubnetSelector::Discover,
            Some(items) if items.is_empty() => {
                return Err(invalid("subnets", "lists no subnet"));
            }
            Some(items) => SubnetSelector::Listed(items),
        };

        let cross_zone = a.parse_bool(&key("cross-zone-load-balancing-enabled"))?;
        let mut load_balancer_attributes = attributes(a, "attributes")?;
        if let Some(on) = cross_zone {
            load_balancer_attributes
                .entry(CROSS_ZONE_ATTRIBUTE.to_string())
                .or_insert_with(|| on.to_string());
        }
        let mut target_group_attributes = attributes(a, "target-group-attributes")?;
        match a.get(&key("proxy-protocol")) {
            None => {}
            Some("*") => {
                target_group_attributes
                    .insert(PROXY_PROTOCOL_ATTRIBUTE.to_string(), "true".to_string());
            }
            Some(other) => {
                return Err(invalid(
                    "proxy-protocol",
                    format!("{other:?}: only \"*\" (PROXY protocol v2 on every port) is supported"),
                ));
            }
        }

        let protocol = match a
            .get(&key("healthcheck-protocol"))
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => None,
            Some("tcp") => Some(HealthProtocol::Tcp),
            Some("http") => Some(HealthProtocol::Http),
            Some("https") => Some(HealthProtocol::Https),
            Some(other) => {
                return Err(invalid(
                    "healthcheck-protocol",
                    format!("{other:?} is not tcp, http or https"),
                ));
            }
        };
        let port = match a.get(&key("healthcheck-port")) {
            None => None,
            Some("traffic-port") => Some(HealthPort::TrafficPort),
            Some(raw) => match raw.parse::<u16>() {
                Ok(p) if p > 0 => Some(HealthPort::Port(p)),
                _ if is_port_name(raw) => Some(HealthPort::Named(raw.to_string())),
                _ => {
                    return Err(invalid(
                        "healthcheck-port",
                        format!(
                            "{raw:?} is neither a port (1..=65535), traffic-port nor a Service port name"
                        ),
                    ));
                }
            },
        };
        let path = match a.get(&key("healthcheck-path")) {
            None => None,
            Some(p) if p.starts_with('/') && p.len() <= 1024 => Some(p.to_string()),
            Some(p) => {
                return Err(invalid(
                    "healthcheck-path",
                    format!("{p:?} must start with / and be at most 1024 characters"),
                ));
            }
        };
        let range = |suffix: &str, min: i64, max: i64| -> Result<Option<i32>, ProviderError> {
            Ok(a.parse_in_range(&key(suffix), min, max)?
                .and_then(|v| i32::try_from(v).ok()))
        };
        let health = HealthOverrides {
            protocol,
            port,
            path,
            interval: range("healthcheck-interval", 5, 300)?,
            timeout: range("healthcheck-timeout", 2, 120)?,
            healthy_threshold: range("healthcheck-healthy-threshold", 2, 10)?,
            unhealthy_threshold: range("healthcheck-unhealthy-threshold", 2, 10)?,
            success_codes: match a.get(&key("healthcheck-success-codes")) {
                None => None,
                Some(raw) => Some(success_codes(raw).map_err(|reason| {
                    invalid("healthcheck-success-codes", format!("{raw:?}: {reason}"))
                })?),
            },
        };
        if let (Some(interval), Some(timeout)) = (health.interval, health.timeout)
            && timeout >= interval
        {
            return Err(invalid(
                "healthcheck-timeout",
                format!("{timeout}s must be shorter than the interval ({interval}s)"),
            ));
        }
        if health.success_codes.is_some() && health.protocol == Some(HealthProtocol::Tcp) {
            return Err(invalid(
                "healthcheck-success-codes",
                "success codes need healthcheck-protocol http or https, not tcp",
            ));
        }
        if health.path.is_some() && health.protocol == Some(HealthProtocol::Tcp) {
            return Err(invalid(
                "healthcheck-path",
                "a path needs healthcheck-protocol http or https, not tcp",
            ));
        }

        let additional_tags = a
            .key_values(&key("additional-resource-tags"))?
            .unwrap_or_default();
        for (k, v) in &additional_tags {
            if RESERVED_TAG_PREFIXES.iter().any(|p| k.starts_with(p)) {
                return Err(invalid(
                    "additional-resource-tags",
                    format!("tag key {k:?} is reserved for ownership tags"),
                ));
            }
            if k.len() > 128 || v.len() > 256 {
                return Err(invalid(
                    "additional-resource-tags",
                    format!("tag {k:?} is too long (keys up to 128, values up to 256 characters)"),
                ));
            }
        }
        let target_node_labels = node_labels(a.list(TARGET_NODE_LABELS).unwrap_or_default())?;

        let eip_allocations = a.list(&key("eip-allocations")).unwrap_or_default();
        if let Some(bad) = eip_allocations.iter().find(|e| !e.starts_with("eipalloc-")) {
            return Err(invalid(
                "eip-allocations",
                format!("{bad:?} is not an allocation id (eipalloc-...)"),
            ));
        }
        if !eip_allocations.is_empty() && scheme == Scheme::Internal {
            return Err(invalid(
                "eip-allocations",
                "elastic IPs need an internet-facing load balancer",
            ));
        }
        let mut private_ipv4_addresses = Vec::new();
        for raw in a.list(&key("private-ipv4-addresses")).unwrap_or_default() {
            let ip: Ipv4Addr = raw.parse().map_err(|_| {
                invalid(
                    "private-ipv4-addresses",
                    format!("{raw:?} is not an IPv4 address"),
                )
            })?;
            private_ipv4_addresses.push(ip);
        }
        if !private_ipv4_addresses.is_empty() && scheme != Scheme::Internal {
            return Err(invalid(
                "private-ipv4-addresses",
                "private addresses need an internal load balancer",
            ));
        }
        if let SubnetSelector::Listed(subnets) = &subnets {
            for (suffix, n) in [
                ("eip-allocations", eip_allocations.len()),
                ("private-ipv4-addresses", private_ipv4_addresses.len()),
            ] {
                if n > 0 && n != subnets.len() {
                    return Err(invalid(
                        suffix,
                        format!(
                            "{n} given for {} subnets: one per subnet is required",
                            subnets.len()
                        ),
                    ));
                }
            }
        }

        let ip_address_type = match a
            .get(&key("ip-address-type"))
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("ipv4") => IpAddressType::Ipv4,
            Some("dualstack") => IpAddressType::Dualstack,
            Some(other) => {
                return Err(invalid(
                    "ip-address-type",
                    format!("{other:?} is neither ipv4 nor dualstack"),
                ));
            }
        };

        let security_groups = a.list(&key("security-groups")).unwrap_or_default();
        if a.get(&key("security-groups")).is_some() && security_groups.is_empty() {
            return Err(invalid("security-groups", "lists no security group"));
        }
        // As the AWS Load Balancer Controller: with the user's own groups,
        // portico opens the nodes only when asked to.
        let manage_backend_rules = a
            .parse_bool(&key("manage-backend-security-group-rules"))?
            .unwrap_or(security_groups.is_empty());

        let tls = tls(a)?;

        let name = match a.get(&key("name")) {
            None => None,
            Some(name) => {
                if let Some(problem) = crate::names::lb_name_problem(name) {
                    return Err(invalid("name", problem));
                }
                // Searches by tags skip such names: they are found by name.
                if crate::names::is_generated_lb_name(name) {
                    return Err(invalid(
                        "name",
                        format!(
                            "{name:?} has the form portico keeps for the names it generates (k8s-<28 hex>)"
                        ),
                    ));
                }
                Some(name.to_string())
            }
        };
        let adopt = crate::adopt::AdoptRef::parse(spec)?;
        if let (Some(name), Some(adopt)) = (&name, &adopt)
            && name != adopt.name()
        {
            return Err(invalid(
                "name",
                format!(
                    "{name:?}: the adopted load balancer ({}) keeps its name {}",
                    crate::adopt::ADOPT_ANNOTATION,
                    adopt.name()
                ),
            ));
        }

        Ok(Self {
            scheme,
            subnets,
            cross_zone,
            load_balancer_attributes,
            target_group_attributes,
            health,
            additional_tags,
            target_node_labels,
            eip_allocations,
            private_ipv4_addresses,
            ip_address_type,
            security_groups,
            manage_backend_rules,
            tls,
            name,
            adopt,
        })
    }
}

fn tls(a: &Annotations) -> Result<Option<TlsOptions>, ProviderError> {
    let to_targets = match a
        .get(&key("backend-protocol"))
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("tcp" | "http") => false,
        Some("ssl" | "tls" | "https") => true,
        Some(other) => {
            return Err(invalid(
                "backend-protocol",
                format!("{other:?} is not tcp, ssl (tls), http or https"),
            ));
        }
    };
    let Some(certs) = a.list(&key("ssl-cert")) else {
        for suffix in ["ssl-ports", "ssl-negotiation-policy", "alpn-policy"] {
            if a.get(&key(suffix)).is_some() {
                return Err(invalid(suffix, "needs a certificate in ssl-cert"));
            }
        }
        return Ok(None);
    };
    let Some(certificate) = certs.first().cloned() else {
        return Err(invalid("ssl-cert", "names no certificate"));
    };
    if !certificate.starts_with("arn:") {
        return Err(invalid(
            "ssl-cert",
            format!("{certificate:?} is not a certificate ARN (arn:aws:acm:...)"),
        ));
    }
    let ports = match a.list(&key("ssl-ports")) {
        None => TlsPorts::All,
        Some(p) if p.iter().any(|p| p == "*") => TlsPorts::All,
        Some(p) if p.is_empty() => return Err(invalid("ssl-ports", "lists no port")),
        Some(p) => TlsPorts::Listed(p),
    };
    let alpn = match a.get(&key("alpn-policy")) {
        None => None,
        Some(v @ ("HTTP1Only" | "HTTP2Only" | "HTTP2Optional" | "HTTP2Preferred" | "None")) => {
            Some(v.to_string())
        }
        Some(other) => {
            return Err(invalid(
                "alpn-policy",
                format!(
                    "{other:?} is not HTTP1Only, HTTP2Only, HTTP2Optional, HTTP2Preferred or None"
                ),
            ));
        }
    };
    Ok(Some(TlsOptions {
        certificate,
        ports,
        policy: a
            .get(&key("ssl-negotiation-policy"))
            .unwrap_or(DEFAULT_TLS_POLICY)
            .to_string(),
        alpn,
        to_targets,
    }))
}

/// The NLB attribute the cross-zone annotation sets.
pub const CROSS_ZONE_ATTRIBUTE: &str = "load_balancing.cross_zone.enabled";
/// The target-group attribute `proxy-protocol: "*"` sets.
pub const PROXY_PROTOCOL_ATTRIBUTE: &str = "proxy_protocol_v2.enabled";

/// `key=value,...` attributes, in the AWS Load Balancer Controller's format.
fn attributes(a: &Annotations, suffix: &str) -> Result<BTreeMap<String, String>, ProviderError> {
    let map = a.key_values(&key(suffix))?.unwrap_or_default();
    if let Some((k, _)) = map.iter().find(|(_, v)| v.is_empty()) {
        return Err(invalid(suffix, format!("attribute {k:?} has no value")));
    }
    Ok(map)
}

/// `k=v` (that value), `k=` or `k` (any value), as cloud-provider-aws reads them.
fn node_labels(items: Vec<String>) -> Result<BTreeMap<String, Option<String>>, ProviderError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim()).filter(|v| !v.is_empty())),
            None => (item.trim(), None),
        };
        if k.is_empty() {
            return Err(ProviderError::invalid(
                Annotations::field(TARGET_NODE_LABELS),
                format!("{item:?} has an empty label key"),
            ));
        }
        out.insert(k.to_string(), v.map(String::from));
    }
    Ok(out)
}

/// A Service port name as Kubernetes allows it (IANA_SVC_NAME: lowercase
/// letters, digits and `-`, at most 15, with a letter).
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `200`, `200,202` or `200-399`: codes AWS accepts for an NLB's HTTP check
/// (200..=599).
fn success_codes(raw: &str) -> Result<String, String> {
    let code = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => Ok(c),
            _ => Err(format!("{s:?} is not an HTTP code in 200..=599")),
        }
    };
    let raw = raw.trim();
    if let Some((lo, hi)) = raw.split_once('-') {
        if code(lo)? > code(hi)? {
            return Err("the range is reversed".into());
        }
    } else {
        for c in raw.split(',') {
            code(c)?;
        }
    }
    Ok(raw.replace(' ', ""))
}

/// Every `aws-load-balancer-*` annotation portico reads; any other one a
/// Service carries is reported as not enforced.
pub const IMPLEMENTED: &[&str] = &[
    "type",
    "internal",
    "scheme",
    "subnets",
    "cross-zone-load-balancing-enabled",
    "healthcheck-protocol",
    "healthcheck-port",
    "healthcheck-path",
    "healthcheck-interval",
    "healthcheck-timeout",
    "healthcheck-healthy-threshold",
    "healthcheck-unhealthy-threshold",
    "healthcheck-success-codes",
    "additional-resource-tags",
    "target-node-labels",
    "eip-allocations",
    "private-ipv4-addresses",
    "ip-address-type",
    "security-groups",
    "manage-backend-security-group-rules",
    "attributes",
    "target-group-attributes",
    "proxy-protocol",
    "ssl-cert",
    "ssl-ports",
    "ssl-negotiation-policy",
    "alpn-policy",
    "backend-protocol",
    "name",
];

/// One note per `aws-load-balancer-*` annotation portico does not implement,
/// naming it, so nothing a user writes is dropped silently.
pub fn unimplemented_notes(annotations: &Annotations) -> Vec<String> {
    annotations
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(PREFIX))
        .filter(|suffix| !IMPLEMENTED.contains(suffix))
        .map(|suffix| {
            format!(
                "metadata.annotations[{PREFIX}{suffix}] is not implemented by the aws provider and has no effect"
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
