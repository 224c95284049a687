//! Telling users which node announces each VIP — MetalLB users' most asked
//! question — in two places:
//!
//! - a Normal Event `Announcing` on the Service when a node takes the VIP
//!   (`kubectl describe svc` shows the history of takeovers);
//! - a `VipAnnouncement` object per (Service, VIP) in the Service's
//!   namespace, rewritten by each new announcer: `kubectl get vipa -A`
//!   lists VIP, Service and node as columns.
//!
//! Why a small resource and not an annotation on the Service: a dual-stack
//! or shared VIP has one announcer per IP, and annotation keys cannot hold
//! an IPv6 address; several speakers writing one annotation would also race
//! on the Service, which the controller writes too. One object per VIP has
//! one writer at a time, printer columns, and an owner reference to the
//! Service so the garbage collector removes it with the Service (MetalLB
//! took the same road with `ServiceL2Status`).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::world::ServiceRef;

/// Field manager of the speaker's writes.
pub const FIELD_MANAGER: &str = "portico-speaker";
/// Event reason when a node takes a VIP over.
pub const ANNOUNCING_REASON: &str = "Announcing";

/// Which node announces one VIP of one Service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "portico.io",
    version = "v1alpha1",
    kind = "VipAnnouncement",
    namespaced,
    shortname = "vipa",
    category = "portico",
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ip"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.interface","priority":1}"#,
    printcolumn = r#"{"name":"MAC","type":"string","jsonPath":".spec.mac","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VipAnnouncementSpec {
    /// The Service's name (same namespace).
    pub service: String,
    /// The VIP.
    pub ip: String,
    /// The node whose speaker answers ARP/NDP for the VIP.
    pub node: String,
    /// The interface it answers on.
    pub interface: String,
    /// The MAC address clients resolve the VIP to.
    pub mac: String,
}

/// The object name for a Service's VIP: the Service name and the address
/// with its separators as dashes (`web-192-0-2-10`, `web-2001-db8--a`,
/// trailing dashes closed with a `0`), valid as a Kubernetes name.
pub fn object_name(service: &str, ip: IpAddr) -> String {
    let mut slug: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if slug.ends_with('-') {
        slug.push('0');
    }
    format!("{service}-{slug}")
}

/// Writes Events and `VipAnnouncement`s for one speaker.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    recorder: Recorder,
    node: String,
    interface: String,
    mac: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("node", &self.node)
            .finish()
    }
}

impl Publisher {
    /// A publisher for the speaker on `node`, announcing on `interface`.
    pub fn new(client: Client, node: &str, interface: &str, mac: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(node.into()),
            },
        );
        Publisher {
            client,
            recorder,
            node: node.into(),
            interface: interface.into(),
            mac: mac.into(),
        }
    }

    /// This node took `ip` of `service`: an Event and the object. Failures
    /// are logged, never fatal: announcing matters more than telling.
    pub async fn took(&self, service: &ServiceRef, ip: IpAddr) {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        let svc = match services.get_opt(&service.name).await {
            Ok(Some(svc)) => svc,
            Ok(None) => return,
            Err(err) => {
                warn!(service = %service, error = %err, "cannot read the Service to publish the announcement");
                return;
            }
        };
        let event = Event {
            type_: EventType::Normal,
            reason: ANNOUNCING_REASON.into(),
            note: Some(format!(
                "node {} announces {ip} on {} ({})",
                self.node, self.interface, self.mac
            )),
            action: "Announce".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &svc.object_ref(&())).await {
            warn!(service = %service, error = %err, "cannot publish the Announcing event");
        }
        let mut object = VipAnnouncement::new(
            &object_name(&service.name, ip),
            VipAnnouncementSpec {
                service: service.name.clone(),
                ip: ip.to_string(),
                node: self.node.clone(),
                interface: self.interface.clone(),
                mac: self.mac.clone(),
            },
        );
        object.metadata.namespace = Some(service.namespace.clone());
        object.metadata.owner_references = svc.controller_owner_ref(&()).map(|mut r| {
            r.controller = Some(false);
            r.block_owner_deletion = Some(false);
            vec![r]
        });
        let api: Api<VipAnnouncement> = Api::namespaced(self.client.clone(), &service.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(err) = api
            .patch(&object.name_any(), &params, &Patch::Apply(&object))
            .await
        {
            warn!(service = %service, %ip, error = %err, "cannot write the VipAnnouncement (is its CRD installed?)");
        }
    }

    /// `ip` is no longer a VIP of `service` (not merely moved to another
    /// node): remove its object.
    pub async fn gone(&self, service: &ServiceRef, ip: IpAddr) {
        let api: Api<VipAnnouncement> = Api::namespaced(self.client.clone(), &service.namespace);
        match api
            .delete(&object_name(&service.name, ip), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                debug!(service = %service, %ip, error = %err, "cannot delete the VipAnnouncement")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn object_names_are_valid_kubernetes_names() {
        let rows = [
            ("IPv4", "192.0.2.10", "web-192-0-2-10"),
            ("IPv6", "2001:db8::a", "web-2001-db8--a"),
            ("IPv6 ending in ::", "2001:db8::", "web-2001-db8--0"),
        ];
        for (desc, ip, want) in rows {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(object_name("web", ip), want, "{desc}");
        }
    }

    /// The chart ships the CRD from this file; it must be what the Rust
    /// type generates. `PORTICO_WRITE_CRDS=1` rewrites it.
    #[test]
    fn the_chart_ships_the_generated_crd() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/portico/crds/vipannouncement.yaml");
        let generated = serde_yaml::to_string(&VipAnnouncement::crd()).expect("yaml");
        if std::env::var_os("PORTICO_WRITE_CRDS").is_some() {
            let header = "# Generated from portico_arp::speaker::publish::VipAnnouncement\n# (PORTICO_WRITE_CRDS=1 cargo test -p portico-arp the_chart_ships_the_generated_crd).\n";
            std::fs::write(&path, format!("{header}{generated}")).expect("write the CRD");
        }
        let shipped = std::fs::read_to_string(&path).expect("the chart's CRD file");
        let shipped: serde_json::Value = serde_yaml::from_str(&shipped).expect("valid YAML");
        let generated: serde_json::Value = serde_yaml::from_str(&generated).expect("valid YAML");
        assert_eq!(
            shipped, generated,
            "charts/portico/crds/vipannouncement.yaml is stale: run PORTICO_WRITE_CRDS=1 cargo test -p portico-arp the_chart_ships_the_generated_crd"
        );
    }

    #[test]
    fn the_crd_prints_ip_service_and_node() {
        let crd = VipAnnouncement::crd();
        assert_eq!(crd.spec.group, "portico.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        for want in ["IP", "Service", "Node"] {
            assert!(columns.iter().any(|c| c == want), "{want} in {columns:?}");
        }
    }
}
