//! What a provider is asked to build, and what it answers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ProviderError;

/// The cluster's name, written into ownership tags so several clusters can
/// share one cloud account without touching each other's balancers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies the balancer of one Service. The UID makes a re-created
/// Service with the same name a different balancer, as upstream does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoadBalancerKey {
    pub cluster: ClusterName,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl LoadBalancerKey {
    pub fn new(
        cluster: ClusterName,
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            cluster,
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

impl fmt::Display for LoadBalancerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(format!(
                "unknown protocol {other:?}, expected TCP, UDP or SCTP"
            )),
        }
    }
}

/// One Service port: traffic to `port` on the balancer goes to `node_port` on every target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: u16,
    /// The Service port's name, when it has one.
    pub name: Option<String>,
}

/// A node the balancer sends traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub node_name: String,
    /// InternalIP addresses first, then ExternalIP; never empty for an eligible node.
    pub addresses: Vec<IpAddr>,
    /// `Node.spec.providerID`, e.g. `aws:///us-east-1a/i-0123`.
    pub provider_id: Option<String>,
    /// Node labels, for providers that select targets by label.
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// The first address of the wanted family.
    pub fn address(&self, family: IpFamily) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| IpFamily::of(a) == family)
    }
}

/// How the balancer decides a target is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthCheck {
    /// Connect to the listener's node port (externalTrafficPolicy: Cluster).
    TrafficPort,
    /// HTTP GET on a dedicated port (externalTrafficPolicy: Local: kube-proxy
    /// answers `/healthz` on `spec.healthCheckNodePort` with 200 only on nodes
    /// that run a ready endpoint).
    Http { port: u16, path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

/// The Service annotations a provider may read. Providers parse them into
/// typed options in `validate`/`ensure`; the helpers here produce errors that
/// name the annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Annotations(BTreeMap<String, String>);

impl Annotations {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The field path Kubernetes users recognise, for errors and Events.
    pub fn field(key: &str) -> String {
        format!("metadata.annotations[{key}]")
    }

    /// Parse `key` with `FromStr`; absent is `Ok(None)`.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, ProviderError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|e| ProviderError::invalid(Self::field(key), format!("{raw:?}: {e}"))),
        }
    }

    /// Parse an integer in `min..=max`.
    pub fn parse_in_range(
        &self,
        key: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, ProviderError> {
        let Some(value) = self.parse::<i64>(key)? else {
            return Ok(None);
        };
        if (min..=max).contains(&value) {
            Ok(Some(value))
        } else {
            Err(ProviderError::invalid(
                Self::field(key),
                format!("{value} is out of range {min}..={max}"),
            ))
        }
    }

    /// `"true"`/`"false"` (any case).
    pub fn parse_bool(&self, key: &str) -> Result<Option<bool>, ProviderError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => match raw.to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(ProviderError::invalid(
                    Self::field(key),
                    format!("{raw:?} is not a boolean (true or false)"),
                )),
            },
        }
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.get(key).map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }

    /// `k1=v1,k2=v2` pairs.
    pub fn key_values(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, ProviderError> {
        let Some(items) = self.list(key) else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        for item in items {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                ProviderError::invalid(Self::field(key), format!("{item:?} is not key=value"))
            })?;
            let k = k.trim();
            if k.is_empty() {
                return Err(ProviderError::invalid(
                    Self::field(key),
                    format!("{item:?} has an empty key"),
                ));
            }
            out.insert(k.to_string(), v.trim().to_string());
        }
        Ok(Some(out))
    }
}

/// The eligible nodes, shared: the controller hands every Service the same
/// snapshot, so a node change costs a pointer copy per Service, not a copy
/// of every node (10,000 Services × 1,000 nodes would be ten million).
pub type Targets = std::sync::Arc<[Target]>;

/// Everything a provider needs to build one Service's balancer.
///
/// The controller builds it in a canonical order (listeners by port and
/// protocol, targets by node name), so two specs for the same Service state
/// compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadBalancerSpec {
    pub key: LoadBalancerKey,
    pub listeners: Vec<Listener>,
    pub targets: Targets,
    pub health_check: HealthCheck,
    /// `spec.loadBalancerSourceRanges`; empty means everyone.
    pub source_ranges: Vec<IpNet>,
    /// `spec.loadBalancerIP` or a provider's address annotation.
    pub requested_ips: Vec<IpAddr>,
    pub ip_families: Vec<IpFamily>,
    pub traffic_policy: TrafficPolicy,
    pub session_affinity: SessionAffinity,
    pub annotations: Annotations,
}

impl LoadBalancerSpec {
    /// A spec with one TCP listener and defaults elsewhere; handy in tests.
    pub fn new(key: LoadBalancerKey) -> Self {
        Self {
            key,
            listeners: Vec::new(),
            targets: Targets::default(),
            health_check: HealthCheck::TrafficPort,
            source_ranges: Vec::new(),
            requested_ips: Vec::new(),
            ip_families: vec![IpFamily::V4],
            traffic_policy: TrafficPolicy::Cluster,
            session_affinity: SessionAffinity::None,
            annotations: Annotations::default(),
        }
    }
}

/// How traffic to an ingress IP reaches the Service (KEP-1860).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpMode {
    /// The balancer delivers packets with the VIP as destination (kube-proxy may short-circuit).
    Vip,
    /// The balancer proxies: packets arrive at the node addressed to the node.
    Proxy,
}

impl IpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vip => "VIP",
            Self::Proxy => "Proxy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub protocol: Protocol,
    /// A CamelCase reason when this port could not be served.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct IngressStatus {
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    pub ip_mode: Option<IpMode>,
    pub ports: Vec<PortStatus>,
}

/// What the controller writes into `status.loadBalancer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LoadBalancerStatus {
    pub ingress: Vec<IngressStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        Annotations::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn annotation_parsers_name_the_field() {
        let a = annotations(&[("x/interval", "ten"), ("x/flag", "yes"), ("x/kv", "a=1,b")]);
        let cases: [(&str, Result<(), ProviderError>); 3] = [
            ("number", a.parse::<u32>("x/interval").map(|_| ())),
            ("bool", a.parse_bool("x/flag").map(|_| ())),
            ("key=value", a.key_values("x/kv").map(|_| ())),
        ];
        for (desc, result) in cases {
            let err = result.expect_err(desc);
            assert!(
                err.to_string().contains("metadata.annotations[x/"),
                "{desc}: {err}"
            );
        }
    }

    #[test]
    fn annotation_parsers_accept_good_values() {
        let a = annotations(&[
            ("n", " 7 "),
            ("b", "TRUE"),
            ("l", "a, b,,c"),
            ("kv", "a=1, b = 2"),
        ]);
        assert_eq!(a.parse_in_range("n", 1, 10).expect("in range"), Some(7));
        assert!(a.parse_in_range("n", 8, 10).is_err());
        assert_eq!(a.parse_bool("b").expect("bool"), Some(true));
        assert_eq!(a.list("l"), Some(vec!["a".into(), "b".into(), "c".into()]));
        let kv = a.key_values("kv").expect("kv").expect("present");
        assert_eq!(kv.get("b").map(String::as_str), Some("2"));
        assert_eq!(a.parse::<u8>("missing").expect("absent is fine"), None);
    }

    #[test]
    fn target_picks_family() {
        let t = Target {
            node_name: "n".into(),
            addresses: vec![
                "fd00::1".parse().expect("v6"),
                "10.0.0.1".parse().expect("v4"),
            ],
            provider_id: None,
            labels: BTreeMap::new(),
        };
        assert_eq!(
            t.address(IpFamily::V4),
            Some("10.0.0.1".parse().expect("v4"))
        );
        assert_eq!(
            t.address(IpFamily::V6),
            Some("fd00::1".parse().expect("v6"))
        );
    }
}
