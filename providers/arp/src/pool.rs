//! The `IPPool` custom resource (`portico.io/v1alpha1`, cluster-scoped):
//! where the controller takes load-balancer addresses from on bare metal.
//!
//! ```yaml
//! apiVersion: portico.io/v1alpha1
//! kind: IPPool
//! metadata: {name: office}
//! spec:
//!   addresses: ["192.0.2.0/28", "192.0.2.100-192.0.2.120", "2001:db8::/120"]
//!   autoAssign: true          # false: only Services that name the pool or an address get one
//!   avoidBuggyIPs: false      # true: never hand out IPv4 addresses ending in .0 or .255
//!   namespaceSelector: {matchLabels: {team: web}}   # only Services in these namespaces
//!   serviceSelector: {matchLabels: {exposed: "yes"}} # only Services with these labels
//! ```
//!
//! The CRD the chart ships (`charts/portico/crds/ippool.yaml`) is generated
//! from these types; a test fails when the file and the types differ.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The condition every pool carries: whether the allocator uses it.
pub const CONDITION_ACCEPTED: &str = "Accepted";

/// Why a pool is (not) accepted: the `reason` of [`CONDITION_ACCEPTED`] and
/// of the Warning Event on a rejected pool.
pub mod reason {
    /// The pool is in use.
    pub const VALID: &str = "Valid";
    /// An address block or a selector cannot be read.
    pub const INVALID: &str = "Invalid";
    /// Its addresses overlap an older pool's (the older one keeps them).
    pub const OVERLAPPING: &str = "Overlapping";
}

/// The CEL rule the API server checks on every address block, so a typo
/// is refused at `kubectl apply` (what CEL cannot check, such as a range
/// whose end comes before its start, the controller reports in the pool's
/// `Accepted` condition).
pub const ADDRESS_RULE: &str = "isCIDR(self) || isIP(self) || (self.split('-').size() == 2 && isIP(self.split('-')[0].trim()) && isIP(self.split('-')[1].trim()) && ip(self.split('-')[0].trim()).family() == ip(self.split('-')[1].trim()).family())";

/// One block of addresses: a CIDR (`192.0.2.0/28`, `2001:db8::/120`), a
/// range of one family (`192.0.2.10-192.0.2.20`) or a single address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AddressBlock(pub String);

impl From<&str> for AddressBlock {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for AddressBlock {
    fn schema_name() -> Cow<'static, str> {
        "AddressBlock".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A CIDR (192.0.2.0/28, 2001:db8::/120), a range of one family (192.0.2.10-192.0.2.20) or one address.",
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "x-kubernetes-validations": [{
                "rule": ADDRESS_RULE,
                "message": "must be a CIDR (192.0.2.0/28), a range of one IP family (192.0.2.10-192.0.2.20) or an IP address",
            }],
        })
    }
}

fn yes() -> bool {
    true
}

/// Where load-balancer addresses come from.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portico.io",
    version = "v1alpha1",
    kind = "IPPool",
    root = "IpPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ippool",
    category = "portico",
    status = "IpPoolStatus",
    derive = "PartialEq",
    doc = "A pool of addresses portico hands to Services of type LoadBalancer on bare metal (the arp provider).",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Auto","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".status.capacity"}"#,
    printcolumn = r#"{"name":"In use","type":"integer","jsonPath":".status.inUse"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's addresses. Pools must not overlap: a pool whose addresses
    /// overlap an older pool's is not used (its `Accepted` condition says
    /// which).
    #[schemars(length(min = 1, max = 64))]
    pub addresses: Vec<AddressBlock>,
    /// Hand addresses from this pool to any Service that matches it; when
    /// false, only to Services that ask for the pool by name or for one of
    /// its addresses.
    #[serde(default = "yes")]
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in `.0` or `.255` (some
    /// routers drop traffic to them).
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Only Services in namespaces with these labels get addresses from the
    /// pool. A pool with a selector is preferred over pools without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Only Services with these labels get addresses from the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
}

/// What the controller reports about a pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolStatus {
    /// Addresses the pool can hand out (after `avoidBuggyIPs`; saturates
    /// at 2^63-1 for very large IPv6 pools).
    #[serde(default)]
    pub capacity: i64,
    /// Addresses in use by Services (an address shared by several Services
    /// counts once).
    #[serde(default)]
    pub in_use: i64,
    /// `capacity - inUse`.
    #[serde(default)]
    pub available: i64,
    /// `Accepted`: whether the allocator uses the pool, and if not why
    /// (`Invalid`, `Overlapping`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kube::CustomResourceExt;

    use super::*;

    /// The CRD as the chart ships it.
    fn crd_yaml() -> Result<String, serde_yaml::Error> {
        let body = serde_yaml::to_string(&IpPool::crd())?;
        Ok(format!(
            "# Generated from providers/arp/src/pool.rs: do not edit. Rewrite it with\n#   PORTICO_WRITE_CRDS=1 cargo nextest run -p portico-arp -E 'test(crd)'\n{body}"
        ))
    }

    fn chart_crd() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/portico/crds/ippool.yaml")
    }

    #[test]
    fn crd_in_the_chart_is_generated_from_the_types() {
        let want = crd_yaml().expect("serialize the CRD");
        let path = chart_crd();
        if std::env::var_os("PORTICO_WRITE_CRDS").is_some() {
            std::fs::write(&path, &want).expect("write the CRD");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} differs from the IPPool types: rewrite it with PORTICO_WRITE_CRDS=1 cargo nextest run -p portico-arp -E 'test(crd)'",
            path.display()
        );
    }

    #[test]
    fn crd_is_cluster_scoped_with_status_and_validated_addresses() {
        let crd = IpPool::crd();
        assert_eq!(crd.spec.group, "portico.io");
        assert_eq!(crd.spec.names.kind, "IPPool");
        assert_eq!(crd.spec.scope, "Cluster");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "status is a subresource (only the controller writes it)"
        );
        let schema = serde_json::to_value(&version.schema).expect("schema");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["addresses"]));
        let item = &spec["properties"]["addresses"]["items"];
        assert_eq!(
            item["x-kubernetes-validations"][0]["rule"], ADDRESS_RULE,
            "{item}"
        );
        assert_eq!(spec["properties"]["autoAssign"]["default"], true);
        assert_eq!(spec["properties"]["avoidBuggyIPs"]["default"], false);
    }

    #[test]
    fn defaults_apply_when_fields_are_left_out() {
        let spec: IpPoolSpec =
            serde_json::from_value(serde_json::json!({"addresses": ["192.0.2.0/28"]}))
                .expect("minimal pool");
        assert!(spec.auto_assign, "autoAssign defaults to true");
        assert!(!spec.avoid_buggy_ips);
        assert_eq!(spec.addresses, vec![AddressBlock::from("192.0.2.0/28")]);
        let written = serde_json::to_value(&spec).expect("serialize");
        assert!(
            written.get("avoidBuggyIPs").is_some(),
            "MetalLB's spelling: {written}"
        );
    }
}
