//! Turn a Service into the provider's [`LoadBalancerSpec`], naming the
//! Kubernetes field of any problem (`spec.ports[1].protocol`), with no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use portico_provider::{
    Annotations, HealthCheck, IpFamily, Listener, LoadBalancerSpec, Protocol, SessionAffinity,
    Targets, TrafficPolicy,
};

use crate::config::ControllerConfig;
use crate::k8s::{
    LAST_APPLIED_ANNOTATION, ResourceExt, SOURCE_RANGES_ANNOTATION, Service, ServiceSpec,
};
use crate::plan::key_of;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The Kubernetes field path to fix, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub reason: String,
    /// Provider errors of kind Unsupported are reported as such.
    pub unsupported: bool,
}

impl Rejection {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            unsupported: false,
        }
    }

    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.reason)
    }
}

/// Turn the Service into the provider's spec, naming the field of any problem.
pub fn build_spec(
    svc: &Service,
    targets: &Targets,
    config: &ControllerConfig,
) -> Result<LoadBalancerSpec, Rejection> {
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| Rejection::new("spec", "missing"))?;
    if svc.uid().is_none() {
        return Err(Rejection::new(
            "metadata.uid",
            "missing; the API server sets it",
        ));
    }
    let listeners = listeners(spec)?;
    let health_check = health_check(spec)?;
    let mut out = LoadBalancerSpec::new(key_of(svc, config));
    out.traffic_policy = match health_check {
        HealthCheck::TrafficPort => TrafficPolicy::Cluster,
        HealthCheck::Http { .. } => TrafficPolicy::Local,
    };
    out.listeners = listeners;
    out.targets = Targets::clone(targets);
    out.health_check = health_check;
    out.source_ranges = source_ranges(svc, spec)?;
    out.requested_ips = requested_ips(spec)?;
    out.ip_families = ip_families(spec)?;
    out.session_affinity = session_affinity(spec)?;
    out.annotations = Annotations::new(
        svc.annotations()
            .iter()
            .filter(|(k, _)| k.as_str() != LAST_APPLIED_ANNOTATION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    );
    Ok(out)
}

fn port_number(value: i32, field: &str) -> Result<u16, Rejection> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Rejection::new(field, format!("{value} is not a port number (1-65535)")))
}

fn listeners(spec: &ServiceSpec) -> Result<Vec<Listener>, Rejection> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err(Rejection::new(
            "spec.ports",
            "a LoadBalancer Service needs at least one port",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let protocol: Protocol = p
            .protocol
            .as_deref()
            .unwrap_or("TCP")
            .parse()
            .map_err(|e: String| Rejection::new(format!("spec.ports[{i}].protocol"), e))?;
        let port = port_number(p.port, &format!("spec.ports[{i}].port"))?;
        let node_port = match p.node_port {
            Some(np) => port_number(np, &format!("spec.ports[{i}].nodePort"))?,
            None => {
                return Err(Rejection::new(
                    format!("spec.ports[{i}].nodePort"),
                    "missing; portico forwards to NodePorts, so allocateLoadBalancerNodePorts must not be false",
                ));
            }
        };
        if !seen.insert((port, protocol)) {
            return Err(Rejection::new(
                format!("spec.ports[{i}]"),
                format!("port {port}/{protocol} is listed twice"),
            ));
        }
        out.push(Listener {
            port,
            protocol,
            node_port,
            name: p.name.clone(),
        });
    }
    out.sort();
    Ok(out)
}

fn health_check(spec: &ServiceSpec) -> Result<HealthCheck, Rejection> {
    match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => Ok(HealthCheck::TrafficPort),
        Some("Local") => match spec.health_check_node_port {
            Some(port) => Ok(HealthCheck::Http {
                port: port_number(port, "spec.healthCheckNodePort")?,
                path: "/healthz".into(),
            }),
            None => Err(Rejection::new(
                "spec.healthCheckNodePort",
                "missing for externalTrafficPolicy: Local",
            )),
        },
        Some(other) => Err(Rejection::new(
            "spec.externalTrafficPolicy",
            format!("{other:?} is neither Cluster nor Local"),
        )),
    }
}

fn source_ranges(svc: &Service, spec: &ServiceSpec) -> Result<Vec<IpNet>, Rejection> {
    let parse = |raw: &str, field: String| {
        raw.trim()
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| Rejection::new(field, format!("{raw:?} is not a CIDR such as 10.0.0.0/8")))
    };
    let mut out = match spec.load_balancer_source_ranges.as_deref() {
        Some(ranges) if !ranges.is_empty() => ranges
            .iter()
            .enumerate()
            .map(|(i, r)| parse(r, format!("spec.loadBalancerSourceRanges[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        // Upstream honours the annotation when the field is empty.
        _ => match svc.annotations().get(SOURCE_RANGES_ANNOTATION) {
            Some(raw) => raw
                .split(',')
                .filter(|r| !r.trim().is_empty())
                .map(|r| parse(r, Annotations::field(SOURCE_RANGES_ANNOTATION)))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        },
    };
    out.sort();
    out.dedup();
    Ok(out)
}

fn requested_ips(spec: &ServiceSpec) -> Result<Vec<IpAddr>, Rejection> {
    match spec.load_balancer_ip.as_deref().map(str::trim) {
        None | Some("") => Ok(Vec::new()),
        Some(raw) => raw.parse().map(|ip| vec![ip]).map_err(|_| {
            Rejection::new(
                "spec.loadBalancerIP",
                format!("{raw:?} is not an IP address"),
            )
        }),
    }
}

fn ip_families(spec: &ServiceSpec) -> Result<Vec<IpFamily>, Rejection> {
    let Some(families) = spec.ip_families.as_deref().filter(|f| !f.is_empty()) else {
        return Ok(vec![IpFamily::V4]);
    };
    families
        .iter()
        .enumerate()
        .map(|(i, f)| match f.as_str() {
            "IPv4" => Ok(IpFamily::V4),
            "IPv6" => Ok(IpFamily::V6),
            other => Err(Rejection::new(
                format!("spec.ipFamilies[{i}]"),
                format!("{other:?} is neither IPv4 nor IPv6"),
            )),
        })
        .collect()
}

fn session_affinity(spec: &ServiceSpec) -> Result<SessionAffinity, Rejection> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(SessionAffinity::None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10_800);
            let timeout_seconds = u32::try_from(timeout)
                .ok()
                .filter(|t| (1..=86_400).contains(t))
                .ok_or_else(|| {
                    Rejection::new(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{timeout} is outside 1..=86400"),
                    )
                })?;
            Ok(SessionAffinity::ClientIp { timeout_seconds })
        }
        Some(other) => Err(Rejection::new(
            "spec.sessionAffinity",
            format!("{other:?} is neither None nor ClientIP"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::{node, svc};
    use crate::nodes::node_target;
    use portico_provider::ClusterName;

    fn config() -> ControllerConfig {
        ControllerConfig {
            cluster: ClusterName::new("test"),
            ..Default::default()
        }
    }

    fn targets() -> Targets {
        ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                node_target(&node(n).ip(&format!("10.0.0.{}", i + 1)).build()).expect("eligible")
            })
            .collect()
    }

    /// The field a Service is refused for, if it is.
    fn field_of(s: &Service) -> Option<String> {
        build_spec(s, &targets(), &config()).err().map(|r| r.field)
    }

    #[test]
    fn bad_input_names_the_field() {
        let lb = || svc("default", "web").lb();
        let cases = [
            ("no ports", lb().build(), "spec.ports"),
            (
                "bad protocol",
                lb().port(80, 30080).port_proto(81, 30081, "QUIC").build(),
                "spec.ports[1].protocol",
            ),
            (
                "port out of range",
                lb().port(70000, 30080).build(),
                "spec.ports[0].port",
            ),
            (
                "node port zero",
                lb().port(80, 0).build(),
                "spec.ports[0].nodePort",
            ),
            (
                "no node port",
                lb().port_without_node_port(80).build(),
                "spec.ports[0].nodePort",
            ),
            (
                "duplicate port",
                lb().port(80, 30080).port(80, 30081).build(),
                "spec.ports[1]",
            ),
            (
                "bad source range",
                lb().port(80, 30080).source_range("10.0.0.0/33").build(),
                "spec.loadBalancerSourceRanges[0]",
            ),
            (
                "bad loadBalancerIP",
                lb().port(80, 30080).load_balancer_ip("1.2.3").build(),
                "spec.loadBalancerIP",
            ),
            (
                "bad source range annotation",
                lb().port(80, 30080)
                    .annotation(SOURCE_RANGES_ANNOTATION, "10.0.0.0/8,nope")
                    .build(),
                "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]",
            ),
        ];
        for (desc, s, field) in cases {
            assert_eq!(field_of(&s).as_deref(), Some(field), "{desc}");
        }
    }

    #[test]
    fn spec_carries_what_the_service_says() {
        let s = svc("default", "web")
            .lb()
            .port_proto(53, 30053, "UDP")
            .port(80, 30080)
            .local(32000)
            .source_range(" 10.1.2.3/8")
            .load_balancer_ip("192.0.2.10")
            .annotation(LAST_APPLIED_ANNOTATION, "{...}")
            .annotation("a/b", "c")
            .build();
        let spec = build_spec(&s, &targets(), &config()).expect("a valid Service");
        assert_eq!(spec.key.cluster.as_str(), "test");
        assert_eq!(
            spec.listeners
                .iter()
                .map(|l| (l.port, l.protocol, l.node_port))
                .collect::<Vec<_>>(),
            [(53, Protocol::Udp, 30053), (80, Protocol::Tcp, 30080)],
            "listeners sorted by port"
        );
        assert_eq!(
            spec.health_check,
            HealthCheck::Http {
                port: 32000,
                path: "/healthz".into()
            }
        );
        assert_eq!(spec.traffic_policy, TrafficPolicy::Local);
        assert_eq!(
            spec.source_ranges,
            vec!["10.0.0.0/8".parse::<IpNet>().expect("cidr")],
            "host bits truncated"
        );
        assert_eq!(
            spec.requested_ips,
            vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(spec.targets.len(), 2);
        assert_eq!(spec.annotations.get("a/b"), Some("c"));
        assert_eq!(
            spec.annotations.get(LAST_APPLIED_ANNOTATION),
            None,
            "large kubectl annotation dropped"
        );
    }

    #[test]
    fn local_policy_needs_health_check_port() {
        let mut s = svc("default", "web").lb().port(80, 30080).build();
        if let Some(spec) = s.spec.as_mut() {
            spec.external_traffic_policy = Some("Local".into());
        }
        assert_eq!(field_of(&s).as_deref(), Some("spec.healthCheckNodePort"));
    }
}
