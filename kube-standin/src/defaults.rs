//! Service defaulting, allocation and (partial) validation, as the real
//! server's Service strategy and allocators do.
//!
//! What is done: `spec.type`, `sessionAffinity`, `internalTrafficPolicy`,
//! `externalTrafficPolicy`, `allocateLoadBalancerNodePorts`, IP family
//! fields, port `protocol`/`targetPort` defaults; ClusterIP allocation from
//! 10.96.0.0/12; NodePort (30000-32767) and `healthCheckNodePort` allocation
//! with clash detection; on update, allocated values the client omitted are
//! kept (as upstream's `patchAllocatedValues`), and type-dependent fields are
//! dropped when the type changes to ClusterIP/ExternalName.
//!
//! As upstream: `spec.loadBalancerClass` may not change while the Service
//! stays a LoadBalancer, and leaving type LoadBalancer clears
//! `status.loadBalancer`. Status writes ([`service_status`]) default
//! `ipMode` to `VIP` where an `ip` is set and are validated as upstream's
//! `ValidateLoadBalancerStatus`.
//!
//! `loadBalancerSourceRanges` must be CIDRs; a new ClusterIP Service may not
//! name a `nodePort`.
//!
//! Port names are validated as upstream (required with more than one port,
//! DNS labels, unique).
//!
//! What is not validated: selectors, `externalIPs`,
//! dual-stack settings, `clusterIP` immutability (a changed value is
//! accepted).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::StandinError;

/// First NodePort.
pub const NODE_PORT_MIN: u64 = 30000;
/// Last NodePort.
pub const NODE_PORT_MAX: u64 = 32767;
const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const CLUSTER_IP_SIZE: u32 = 1 << 20;

fn invalid(obj: &Value, field: &str, msg: String) -> StandinError {
    StandinError::Invalid {
        kind: "Service".into(),
        name: obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
        causes: vec![(field.to_string(), msg)],
    }
}

fn set_default(map: &mut Value, key: &str, v: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map[key] = v;
    }
}

/// Values already allocated by other services.
#[derive(Debug, Default)]
pub struct Allocated {
    /// Cluster IPs in use.
    pub cluster_ips: BTreeSet<String>,
    /// Node ports (including health-check node ports) in use.
    pub node_ports: BTreeSet<u64>,
}

impl Allocated {
    /// Collect the allocations of `services`.
    pub fn from_services<'a>(services: impl IntoIterator<Item = &'a Value>) -> Allocated {
        let mut a = Allocated::default();
        for s in services {
            if let Some(ip) = s["spec"]["clusterIP"].as_str() {
                a.cluster_ips.insert(ip.to_string());
            }
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_u64() {
                    a.node_ports.insert(np);
                }
            }
            if let Some(hc) = s["spec"]["healthCheckNodePort"].as_u64() {
                a.node_ports.insert(hc);
            }
        }
        a
    }

    fn next_cluster_ip(&mut self) -> Option<String> {
        // skip .0 (network) and .1 (the `kubernetes` service upstream)
        (10..CLUSTER_IP_SIZE - 1)
            .map(|off| Ipv4Addr::from(CLUSTER_IP_BASE + off).to_string())
            .find(|ip| !self.cluster_ips.contains(ip))
            .inspect(|ip| {
                self.cluster_ips.insert(ip.clone());
            })
    }

    fn next_node_port(&mut self) -> Option<u64> {
        (NODE_PORT_MIN..=NODE_PORT_MAX)
            .find(|p| !self.node_ports.contains(p))
            .inspect(|p| {
                self.node_ports.insert(*p);
            })
    }
}

/// Port names, as upstream's `validateServicePort`: required when there is
/// more than one port, each a DNS-1123 label, no two alike. Every problem is
/// named, as upstream lists them all.
fn port_name_causes(ports: &[Value]) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}].name");
        let name = p["name"].as_str().unwrap_or("");
        if name.is_empty() {
            if ports.len() > 1 {
                causes.push((field, "Required value".into()));
            }
            continue;
        }
        if !is_dns_label(name) {
            causes.push((
                field.clone(),
                format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if !names.insert(name) {
            causes.push((field, format!("Duplicate value: {name:?}")));
        }
    }
    causes
}

/// A lowercase RFC 1123 label (at most 63 characters).
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Default, allocate and validate a Service being created (`old` is `None`)
/// or updated. `others` are the allocations of every other Service (the
/// store passes none when an update keeps the spec: nothing new can clash).
pub fn service(
    obj: &mut Value,
    old: Option<&Value>,
    mut others: Allocated,
) -> Result<(), StandinError> {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let snapshot = obj.clone();
    let spec = &mut obj["spec"];
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].as_str().unwrap_or("").to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
        return Err(invalid(
            &snapshot,
            "spec.type",
            format!(
                "Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ),
        ));
    }
    let old_spec = old.map(|o| &o["spec"]);
    if ty == "LoadBalancer"
        && let Some(os) = old_spec
        && os["type"].as_str() == Some("LoadBalancer")
        && os["loadBalancerClass"] != spec["loadBalancerClass"]
    {
        return Err(invalid(
            &snapshot,
            "spec.loadBalancerClass",
            format!(
                "Invalid value: {}: may not change once set",
                spec["loadBalancerClass"]
            ),
        ));
    }
    let external_name = ty == "ExternalName";
    let node_ports = ty == "NodePort" || ty == "LoadBalancer";

    // On update the real server allocates node ports before it validates:
    // two ports asking for one (protocol, nodePort) fail there, with a 500.
    if node_ports && old.is_some() {
        let mut claimed = BTreeSet::new();
        for p in spec["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_u64().filter(|np| *np != 0) {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                if !claimed.insert((proto, np)) {
                    return Err(StandinError::Internal(format!(
                        "duplicate nodePort: {{{proto} {np}}}"
                    )));
                }
            }
        }
    }

    let name_causes = port_name_causes(spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]));
    if !name_causes.is_empty() {
        return Err(StandinError::Invalid {
            kind: "Service".into(),
            name: snapshot["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            causes: name_causes,
        });
    }

    // ports: defaults and validation
    let mut seen = BTreeSet::new();
    let allocate_lb_ports =
        ty != "LoadBalancer" || spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false);
    let ports = spec["ports"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut out_ports = Vec::with_capacity(ports.len());
    for (i, mut p) in ports.into_iter().enumerate() {
        let port = p["port"].as_u64().unwrap_or(0);
        if port == 0 || port > 65535 {
            let message = format!(
                "Invalid value: {}: must be between 1 and 65535, inclusive",
                p["port"]
            );
            let mut causes = vec![(format!("spec.ports[{i}].port"), message.clone())];
            // The targetPort defaults to the port, so it is invalid too.
            if p["targetPort"].is_null() {
                causes.push((format!("spec.ports[{i}].targetPort"), message));
            }
            return Err(StandinError::Invalid {
                kind: "Service".into(),
                name: snapshot["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                causes,
            });
        }
        set_default(&mut p, "protocol", json!("TCP"));
        let proto = p["protocol"].as_str().unwrap_or("").to_string();
        if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
            return Err(invalid(
                &snapshot,
                &format!("spec.ports[{i}].protocol"),
                format!(
                    "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        if !seen.insert((port, proto.clone())) {
            return Err(invalid(
                &snapshot,
                &format!("spec.ports[{i}]"),
                format!("Duplicate value: {{port: {port}, protocol: {proto}}}"),
            ));
        }
        if !external_name {
            set_default(&mut p, "targetPort", json!(port));
        }
        if node_ports {
            match p["nodePort"].as_u64() {
                Some(np) if np != 0 => {
                    let kept = old_spec.is_some_and(|os| {
                        os["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|op| op["nodePort"].as_u64() == Some(np))
                    });
                    if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&np) {
                        return Err(invalid(
                            &snapshot,
                            &format!("spec.ports[{i}].nodePort"),
                            format!(
                                "Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"
                            ),
                        ));
                    }
                    if !kept && !others.node_ports.insert(np) {
                        return Err(invalid(
                            &snapshot,
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {np}: provided port is already allocated"),
                        ));
                    }
                    others.node_ports.insert(np);
                }
                _ => {
                    let reuse = old_spec.and_then(|os| {
                        os["ports"].as_array().into_iter().flatten().find_map(|op| {
                            let same = op["port"].as_u64() == Some(port)
                                && op["protocol"].as_str().unwrap_or("TCP") == proto;
                            if same { op["nodePort"].as_u64() } else { None }
                        })
                    });
                    // As upstream: TCP and UDP on one port number share a nodePort.
                    let sibling = out_ports.iter().find_map(|op: &Value| {
                        (op["port"].as_u64() == Some(port))
                            .then(|| op["nodePort"].as_u64())
                            .flatten()
                    });
                    let np = match reuse.or(sibling) {
                        Some(np) => Some(np),
                        None if allocate_lb_ports => {
                            Some(others.next_node_port().ok_or_else(|| {
                                invalid(
                                    &snapshot,
                                    &format!("spec.ports[{i}].nodePort"),
                                    "no node ports left".into(),
                                )
                            })?)
                        }
                        None => None,
                    };
                    if let Some(np) = np {
                        others.node_ports.insert(np);
                        p["nodePort"] = json!(np);
                    }
                }
            }
        } else {
            // A new ClusterIP Service may not ask for a nodePort; one that
            // changes type away from NodePort/LoadBalancer loses them.
            if old.is_none() && p["nodePort"].as_u64().is_some_and(|np| np != 0) {
                return Err(invalid(
                    &snapshot,
                    &format!("spec.ports[{i}].nodePort"),
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                ));
            }
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
        out_ports.push(p);
    }
    let headless = spec["clusterIP"].as_str() == Some("None")
        || old_spec.is_some_and(|os| {
            os["clusterIP"].as_str() == Some("None") && spec["clusterIP"].is_null()
        });
    if out_ports.is_empty() && !external_name && !headless {
        return Err(invalid(&snapshot, "spec.ports", "Required value".into()));
    }
    spec["ports"] = Value::Array(out_ports);
    if external_name
        && spec["ports"].as_array().is_some_and(Vec::is_empty)
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("ports");
    }

    for (i, range) in spec["loadBalancerSourceRanges"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = range.as_str().unwrap_or("");
        if !is_cidr(text) {
            // The real server spells the field this way.
            return Err(invalid(
                &snapshot,
                &format!("spec.LoadBalancerSourceRanges[{i}]"),
                format!(
                    "Invalid value: {text:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
                ),
            ));
        }
    }
    // The annotation form is checked too, for LoadBalancer Services.
    let annotation = "service.beta.kubernetes.io/load-balancer-source-ranges";
    if ty == "LoadBalancer"
        && let Some(raw) = snapshot["metadata"]["annotations"][annotation].as_str()
        && let Some(bad) = raw.split(',').map(str::trim).find(|r| !is_cidr(r))
    {
        return Err(invalid(
            &snapshot,
            &format!("metadata.annotations[{annotation}]"),
            format!(
                "Invalid value: {bad:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            ),
        ));
    }
    set_default(spec, "sessionAffinity", json!("None"));
    if external_name {
        if spec["externalName"].as_str().unwrap_or("").is_empty() {
            return Err(invalid(
                &snapshot,
                "spec.externalName",
                "Required value".into(),
            ));
        }
    } else {
        // cluster IP: keep, reuse the old one, or allocate
        let requested = spec["clusterIP"].as_str().unwrap_or("").to_string();
        let old_ip = old_spec
            .and_then(|os| os["clusterIP"].as_str())
            .map(str::to_string);
        let ip = if !requested.is_empty() {
            if requested != "None" && old_ip.as_deref() != Some(requested.as_str()) {
                if requested.parse::<Ipv4Addr>().is_err() {
                    return Err(invalid(
                        &snapshot,
                        "spec.clusterIPs[0]",
                        format!("Invalid value: {requested:?}: must be a valid IP address"),
                    ));
                }
                if others.cluster_ips.contains(&requested) {
                    return Err(invalid(
                        &snapshot,
                        "spec.clusterIPs",
                        format!(
                            "Invalid value: [{requested:?}]: failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    ));
                }
            }
            requested
        } else if let Some(old_ip) = old_ip.filter(|s| !s.is_empty()) {
            old_ip
        } else {
            others
                .next_cluster_ip()
                .ok_or_else(|| invalid(&snapshot, "spec.clusterIP", "no cluster IPs left".into()))?
        };
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }

    if node_ports {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    } else if let Some(m) = spec.as_object_mut() {
        m.remove("externalTrafficPolicy");
        m.remove("healthCheckNodePort");
        m.remove("allocateLoadBalancerNodePorts");
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
        if spec["externalTrafficPolicy"].as_str() == Some("Local") {
            let hc = match spec["healthCheckNodePort"].as_u64() {
                Some(hc) if hc != 0 => hc,
                _ => match old_spec.and_then(|os| os["healthCheckNodePort"].as_u64()) {
                    Some(hc) => hc,
                    None => others.next_node_port().ok_or_else(|| {
                        invalid(
                            &snapshot,
                            "spec.healthCheckNodePort",
                            "no node ports left".into(),
                        )
                    })?,
                },
            };
            spec["healthCheckNodePort"] = json!(hc);
        } else if let Some(m) = spec.as_object_mut() {
            m.remove("healthCheckNodePort");
        }
    } else if let Some(m) = spec.as_object_mut() {
        m.remove("healthCheckNodePort");
        m.remove("allocateLoadBalancerNodePorts");
        m.remove("loadBalancerClass");
    }
    if !obj["status"].is_object() {
        obj["status"] = json!({"loadBalancer": {}});
    } else if obj["status"]["loadBalancer"].is_null() || ty != "LoadBalancer" {
        obj["status"]["loadBalancer"] = json!({});
    }
    Ok(())
}

/// A Service status write: `ipMode` defaults to `VIP` where an `ip` is set,
/// then the load-balancer status is validated as upstream does.
pub fn service_status(obj: &mut Value) -> Result<(), StandinError> {
    let snapshot = obj.clone();
    let load_balancer = obj["spec"]["type"].as_str() == Some("LoadBalancer");
    let Some(ingress) = obj["status"]["loadBalancer"]["ingress"].as_array_mut() else {
        return Ok(());
    };
    if !ingress.is_empty() && !load_balancer {
        return Err(invalid(
            &snapshot,
            "status.loadBalancer.ingress",
            "Forbidden: may only be used when `spec.type` is 'LoadBalancer'".into(),
        ));
    }
    for (i, entry) in ingress.iter_mut().enumerate() {
        let field = |name: &str| format!("status.loadBalancer.ingress[{i}].{name}");
        let ip = entry["ip"].as_str().unwrap_or("").to_string();
        if !ip.is_empty() {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    &snapshot,
                    &field("ip"),
                    format!("Invalid value: {ip:?}: must be a valid IP address"),
                ));
            }
            set_default(entry, "ipMode", json!("VIP"));
        }
        match entry["ipMode"].as_str() {
            None => {}
            Some(_) if ip.is_empty() => {
                return Err(invalid(
                    &snapshot,
                    &field("ipMode"),
                    "Forbidden: may not be specified when `ip` is not set".into(),
                ));
            }
            Some("VIP" | "Proxy") => {}
            Some(other) => {
                return Err(invalid(
                    &snapshot,
                    &field("ipMode"),
                    format!("Unsupported value: {other:?}: supported values: \"Proxy\", \"VIP\""),
                ));
            }
        }
        let hostname = entry["hostname"].as_str().unwrap_or("");
        if hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(invalid(
                &snapshot,
                &field("hostname"),
                format!("Invalid value: {hostname:?}: must be a DNS name, not an IP address"),
            ));
        }
    }
    Ok(())
}

/// `a.b.c.d/n` or `x::/n` with a prefix length the family allows.
fn is_cidr(text: &str) -> bool {
    let Some((addr, len)) = text.trim().split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
#[path = "defaults_tests.rs"]
mod tests;
