//! The wire types of the mock cloud's HTTP/JSON API, shared by the server
//! and the provider's client. Request bodies reject unknown fields. Their
//! JSON schemas (in `/openapi.json`) are derived from these types, with the
//! server's rules as `schemars` attributes, so the document cannot drift.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;

pub use super::limits::MAX_TAGS;
use super::limits::{
    self, Bounds, DESCRIPTION_MAX_CHARS, HEALTH_INTERVAL_SECONDS, HEALTH_PATH_MAX_CHARS,
    HEALTH_PATH_PATTERN, HEALTH_THRESHOLD, HEALTH_TIMEOUT_SECONDS, NAME_MAX_CHARS, NAME_PATTERN,
    PORT, STICKY_SECONDS, TAG_KEY_MAX_CHARS, TAG_VALUE_MAX_CHARS, WEIGHT,
};
use serde::{Deserialize, Serialize};

/// Balancer specs (sizes) the cloud sells.
pub const BALANCER_SPECS: &[&str] = &[
    "slb.s1.small",
    "slb.s2.small",
    "slb.s2.medium",
    "slb.s3.small",
    "slb.s3.medium",
    "slb.s3.large",
];

/// The spec a balancer gets when the request names none.
pub const DEFAULT_BALANCER_SPEC: &str = "slb.s1.small";

/// Header carrying the idempotency token of a create call.
pub const CLIENT_TOKEN_HEADER: &str = "x-client-token";
/// Header carrying the id of every request, also in error bodies.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Millisecond variant of `Retry-After` on throttled responses.
pub const RETRY_AFTER_MS_HEADER: &str = "retry-after-ms";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressType {
    #[default]
    Internet,
    Intranet,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internet => "internet",
            Self::Intranet => "intranet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LoadBalancer {
    pub id: String,
    pub name: String,
    pub address: IpAddr,
    pub address_type: AddressType,
    pub spec: String,
    pub tags: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLoadBalancerRequest {
    #[schemars(length(min = 1, max = NAME_MAX_CHARS), regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub address_type: AddressType,
    #[serde(default)]
    #[schemars(schema_with = "spec_schema")]
    pub spec: Option<String>,
    /// A wanted VIP; must be inside the cloud's range and free.
    #[serde(default)]
    #[schemars(schema_with = "optional_ip_schema")]
    pub address: Option<IpAddr>,
    #[serde(default)]
    #[schemars(schema_with = "tags_schema")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLoadBalancerRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX_CHARS), regex(pattern = NAME_PATTERN))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "spec_schema")]
    pub spec: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "tags_schema")]
    pub add_tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `page_token` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[serde(alias = "TCP")]
    Tcp,
    #[serde(alias = "UDP")]
    Udp,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    #[default]
    Tcp,
    Http,
}

fn default_true() -> bool {
    true
}
fn default_interval() -> u32 {
    2
}
fn default_timeout() -> u32 {
    5
}
fn default_threshold() -> u32 {
    3
}

/// A listener's active health check of its backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Off: every backend counts as healthy.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,
    /// The port probed by an `http` check (required for it); `tcp` checks
    /// connect to each backend's own port and take no port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path of an `http` check, starting with `/` (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// [`HEALTH_INTERVAL_SECONDS`].
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// [`HEALTH_TIMEOUT_SECONDS`].
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// [`HEALTH_THRESHOLD`].
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// [`HEALTH_THRESHOLD`].
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            kind: HealthCheckType::Tcp,
            port: None,
            path: None,
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    #[default]
    Wrr,
    Wlc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclMode {
    /// Only the ACL's entries may connect.
    #[default]
    White,
    /// Everyone but the ACL's entries may connect.
    Black,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerAcl {
    pub acl_id: String,
    #[serde(default)]
    pub mode: AclMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySession {
    /// Client-IP stickiness, 1..=86400 seconds.
    #[schemars(range(min = STICKY_SECONDS.min, max = STICKY_SECONDS.max))]
    pub timeout_seconds: u32,
}

/// The settings of a listener that can change in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    pub backend_server_group_id: String,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<ListenerAcl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_MAX_CHARS))]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Listener {
    pub id: String,
    pub load_balancer_id: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    #[serde(flatten)]
    pub settings: ListenerSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateListenerRequest {
    /// 1..=65535 (validated by the server so the error names the field).
    #[schemars(range(min = PORT.min, max = PORT.max))]
    pub port: u32,
    pub protocol: ListenerProtocol,
    pub backend_server_group_id: String,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<ListenerAcl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_MAX_CHARS))]
    pub description: String,
}

impl CreateListenerRequest {
    pub fn new(port: u16, protocol: ListenerProtocol, settings: ListenerSettings) -> Self {
        Self {
            port: port.into(),
            protocol,
            backend_server_group_id: settings.backend_server_group_id,
            health_check: settings.health_check,
            scheduler: settings.scheduler,
            acl: settings.acl,
            sticky_session: settings.sticky_session,
            description: settings.description,
        }
    }

    pub fn settings(&self) -> ListenerSettings {
        ListenerSettings {
            backend_server_group_id: self.backend_server_group_id.clone(),
            health_check: self.health_check.clone(),
            scheduler: self.scheduler,
            acl: self.acl.clone(),
            sticky_session: self.sticky_session,
            description: self.description.clone(),
        }
    }
}

/// A server's weight when the request gives none: the highest.
fn default_weight() -> u32 {
    WEIGHT.max
}

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct BackendServer {
    #[schemars(schema_with = "ip_schema")]
    pub address: IpAddr,
    /// 1..=65535.
    #[schemars(range(min = PORT.min, max = PORT.max))]
    pub port: u32,
    /// 0..=100; 0 takes no new traffic: open connections drain until the
    /// cloud's drain timeout.
    #[serde(default = "default_weight")]
    #[schemars(range(min = WEIGHT.min, max = WEIGHT.max))]
    pub weight: u32,
    /// Free text, e.g. the node's name.
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_MAX_CHARS))]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackendServerGroup {
    pub id: String,
    pub load_balancer_id: String,
    pub name: String,
    pub servers: Vec<BackendServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackendServerGroupRequest {
    #[schemars(length(min = 1, max = NAME_MAX_CHARS), regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub servers: Vec<BackendServer>,
}

/// Body of set (replace all), add (insert or update weight/description) and
/// remove (by address and port; absent ones are ignored) server calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServersRequest {
    pub servers: Vec<BackendServer>,
}

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// An IPv4 or IPv6 CIDR such as `10.0.0.0/8`.
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_MAX_CHARS))]
    pub description: String,
}

impl AclEntry {
    pub fn new(net: IpNet) -> Self {
        Self {
            cidr: net.to_string(),
            description: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Acl {
    pub id: String,
    pub name: String,
    pub entries: Vec<AclEntry>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAclRequest {
    #[schemars(length(min = 1, max = NAME_MAX_CHARS), regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub entries: Vec<AclEntry>,
    #[serde(default)]
    #[schemars(schema_with = "tags_schema")]
    pub tags: BTreeMap<String, String>,
}

/// Replaces the name (when given) and the whole entry list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAclRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX_CHARS), regex(pattern = NAME_PATTERN))]
    pub name: Option<String>,
    pub entries: Vec<AclEntry>,
}

/// Every error response's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

// Schemas of what the derive cannot say: the server's rules as JSON Schema
// (OpenAPI 3.1), so a request the document allows is one the server takes.

fn ip_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
        "examples": ["10.0.0.1"]
    })
}

fn optional_ip_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            {"type": "string", "format": "ipv4"},
            {"type": "string", "format": "ipv6"},
            {"type": "null"}
        ]
    })
}

/// IPv4 and IPv6 CIDRs, as the server parses them (see
/// [`limits::cidr_pattern`]).
fn cidr_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": limits::cidr_pattern(),
        "examples": ["10.0.0.0/8", "fd00::/8"]
    })
}

fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_TAGS,
        "propertyNames": {"minLength": 1, "maxLength": TAG_KEY_MAX_CHARS},
        "additionalProperties": {"type": "string", "maxLength": TAG_VALUE_MAX_CHARS}
    })
}

fn spec_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{"type": "string", "enum": BALANCER_SPECS}, {"type": "null"}]
    })
}

impl JsonSchema for HealthCheck {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HealthCheck".into()
    }

    /// Either a `tcp` check (no port, no path) or an `http` one (a port, a
    /// path starting with `/`), as the server insists.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let range = |b: Bounds, default: u32| serde_json::json!({"type": "integer", "minimum": b.min, "maximum": b.max, "default": default});
        let common = serde_json::json!({
            "enabled": {"type": "boolean", "default": true},
            "interval_seconds": range(HEALTH_INTERVAL_SECONDS, default_interval()),
            "timeout_seconds": range(HEALTH_TIMEOUT_SECONDS, default_timeout()),
            "healthy_threshold": range(HEALTH_THRESHOLD, default_threshold()),
            "unhealthy_threshold": range(HEALTH_THRESHOLD, default_threshold())
        });
        let mut tcp = common.clone();
        tcp["type"] = serde_json::json!({"type": "string", "enum": ["tcp"], "default": "tcp"});
        let mut http = common;
        http["type"] = serde_json::json!({"type": "string", "enum": ["http"]});
        http["port"] =
            serde_json::json!({"type": "integer", "minimum": PORT.min, "maximum": PORT.max});
        http["path"] = serde_json::json!({
            "type": "string",
            "pattern": HEALTH_PATH_PATTERN,
            "maxLength": HEALTH_PATH_MAX_CHARS
        });
        schemars::json_schema!({
            "description": "Active health check: tcp connects to each backend's own port; http GETs `path` on `port`.",
            "oneOf": [
                {"type": "object", "additionalProperties": false, "properties": tcp},
                {"type": "object", "additionalProperties": false, "required": ["type", "port"], "properties": http}
            ]
        })
    }
}
