//! Object builders for Services and Nodes, used by tests and the demo:
//! `svc("ns", "web").lb().port(80, 30080).build()`.

use std::collections::BTreeMap;

use crate::k8s::{
    Node, NodeAddress, NodeSpec, NodeStatus, ObjectMeta, Service, ServicePort, ServiceSpec, Taint,
    Time, Timestamp,
};
use k8s_openapi::api::core::v1::NodeCondition;

/// Start building a Service of type ClusterIP.
pub fn svc(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder {
        svc: Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{namespace}-{name}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ..Default::default()
            }),
            status: None,
        },
    }
}

#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    svc: Service,
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.svc.spec.get_or_insert_with(Default::default)
    }

    /// `type: LoadBalancer`.
    pub fn lb(mut self) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        self
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.svc.metadata.uid = Some(uid.into());
        self
    }

    /// A TCP port with its node port.
    pub fn port(self, port: i32, node_port: i32) -> Self {
        self.port_proto(port, node_port, "TCP")
    }

    pub fn port_proto(mut self, port: i32, node_port: i32, protocol: &str) -> Self {
        let ports = self.spec().ports.get_or_insert_with(Vec::new);
        ports.push(ServicePort {
            name: Some(format!("{}-{port}", protocol.to_ascii_lowercase())),
            port,
            node_port: Some(node_port),
            protocol: Some(protocol.into()),
            ..Default::default()
        });
        self
    }

    /// A port without a node port (allocateLoadBalancerNodePorts: false).
    pub fn port_without_node_port(mut self, port: i32) -> Self {
        let ports = self.spec().ports.get_or_insert_with(Vec::new);
        ports.push(ServicePort {
            port,
            protocol: Some("TCP".into()),
            ..Default::default()
        });
        self
    }

    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn source_range(mut self, cidr: &str) -> Self {
        self.spec()
            .load_balancer_source_ranges
            .get_or_insert_with(Vec::new)
            .push(cidr.into());
        self
    }

    pub fn load_balancer_ip(mut self, ip: &str) -> Self {
        self.spec().load_balancer_ip = Some(ip.into());
        self
    }

    /// `externalTrafficPolicy: Local` with the given health check node port.
    pub fn local(mut self, health_check_node_port: i32) -> Self {
        let spec = self.spec();
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(health_check_node_port);
        self
    }

    pub fn finalizer(mut self, finalizer: &str) -> Self {
        self.svc
            .metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(finalizer.into());
        self
    }

    pub fn deleting(mut self) -> Self {
        self.svc.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }

    pub fn build(self) -> Service {
        self.svc
    }
}

/// Start building a Node.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder {
        node: Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        },
    }
}

#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    fn address(mut self, kind: &str, ip: &str) -> Self {
        let status = self.node.status.get_or_insert_with(Default::default);
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                type_: kind.into(),
                address: ip.into(),
            });
        self
    }

    /// An InternalIP address.
    pub fn ip(self, ip: &str) -> Self {
        self.address("InternalIP", ip)
    }

    pub fn external_ip(self, ip: &str) -> Self {
        self.address("ExternalIP", ip)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.node
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn taint(mut self, key: &str) -> Self {
        let spec = self.node.spec.get_or_insert_with(Default::default);
        spec.taints.get_or_insert_with(Vec::new).push(Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        self
    }

    pub fn provider_id(mut self, id: &str) -> Self {
        self.node
            .spec
            .get_or_insert_with(Default::default)
            .provider_id = Some(id.into());
        self
    }

    pub fn not_ready(mut self) -> Self {
        if let Some(conditions) = self
            .node
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
        {
            for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
                c.status = "False".into();
            }
        }
        self
    }

    pub fn deleting(mut self) -> Self {
        self.node.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}
