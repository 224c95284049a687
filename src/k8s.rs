//! The one place that names Kubernetes API types, so moving to a newer
//! Kubernetes version (the `k8s-openapi` feature in the workspace manifest) is
//! one edit.

pub use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
pub use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus as K8sLoadBalancerStatus, Namespace, Node, NodeAddress,
    NodeSpec, NodeStatus, PortStatus as K8sPortStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, Taint,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
pub use k8s_openapi::jiff::Timestamp;
pub use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
pub use kube::runtime::reflector::{ObjectRef, Store};
pub use kube::runtime::{WatchStreamExt, controller, reflector, watcher};
pub use kube::{Client, ResourceExt};

/// The finalizer upstream's service controller uses; kept so clusters can
/// move between controllers without orphaning balancers.
pub const LB_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// Nodes with this label never receive balancer traffic (unless its value parses as false).
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Cluster autoscaler taints nodes it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Karpenter's taint on a node it is about to remove.
pub const KARPENTER_DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
/// Upstream's annotation form of `spec.loadBalancerSourceRanges`.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// kubectl's copy of the last applied object: large and never read by us.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
