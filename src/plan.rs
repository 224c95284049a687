//! Decide, without I/O, what one Service needs: a balancer built to a spec,
//! a balancer torn down, a complaint about the Service, or nothing.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use portico_provider::{
    DynProvider, LoadBalancerKey, LoadBalancerSpec, PreparedSpec, ProviderError, Targets,
};

use crate::config::ControllerConfig;
use crate::k8s::{LAST_APPLIED_ANNOTATION, LB_FINALIZER, ResourceExt, Service};
pub use crate::service_spec::{Rejection, build_spec};

/// What to do about one Service.
#[derive(Debug)]
pub enum Plan {
    /// Not ours and holding nothing of ours.
    Ignore(IgnoreReason),
    /// Converge the balancer to this spec, as the provider prepared it.
    Ensure(Box<EnsurePlan>),
    /// The Service asks for something that cannot be built; touch no cloud
    /// state (an existing balancer is left as it is) and tell the user.
    Reject(Rejection),
    /// Remove the balancer and release the Service.
    Cleanup(CleanupPlan),
    /// Another controller already serves this Service: build nothing,
    /// overwrite nothing, say so.
    Conflict(Conflict),
}

/// Why portico believes another controller serves a Service it would claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub message: String,
}

/// The condition reason portico writes on a Service another controller serves.
pub const CONFLICT_REASON: &str = "ConflictingController";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    NotLoadBalancer,
    OtherClass,
    BeingDeletedWithoutFinalizer,
}

#[derive(Debug)]
pub struct EnsurePlan {
    /// The spec with the provider's options parsed from it (once).
    pub prepared: PreparedSpec,
    /// The cleanup finalizer must be added before the first cloud call.
    pub add_finalizer: bool,
}

impl EnsurePlan {
    pub fn spec(&self) -> &LoadBalancerSpec {
        self.prepared.spec()
    }

    /// No node can receive traffic (upstream's `UnAvailableLoadBalancer`).
    pub fn no_eligible_nodes(&self) -> bool {
        self.spec().targets.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupReason {
    ServiceDeleted,
    NoLongerLoadBalancer,
    ClassChanged,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    pub key: LoadBalancerKey,
    pub reason: CleanupReason,
    /// Clear `status.loadBalancer` (not when the Service is going away, nor
    /// when another controller now owns its status).
    pub clear_status: bool,
    /// Remove the cleanup finalizer afterwards. Only from a Service portico
    /// owns: the finalizer is upstream's name, shared by every controller,
    /// and on anyone else's Service it guards their balancer.
    pub release_finalizer: bool,
    /// Whether portico may act at once, or only once the cloud shows this
    /// cluster built a balancer for the key.
    pub ownership: Ownership,
}

/// How portico knows a Service it is cleaning up is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Its class, or portico's own condition on the Service.
    Claimed,
    /// Nothing on the Service proves it portico's (another class, no class
    /// any more, or class-less without portico's condition): act only if
    /// the provider finds a balancer tagged with this cluster for the key.
    IfBalancerFound,
}

/// Whether portico answers for this Service's balancer.
pub fn is_ours(svc: &Service, config: &ControllerConfig, provider: &dyn DynProvider) -> bool {
    matches!(
        class_of(svc, config, provider),
        ClassClaim::Ours | ClassClaim::ByDefault
    )
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// What the Service's class says about whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClassClaim {
    /// portico's class, set explicitly: proof.
    Ours,
    /// No class, and portico claims class-less Services that the provider
    /// does not leave to another controller: portico's to serve, but the
    /// shared finalizer on it may be another default controller's.
    ByDefault,
    /// Another class, or no class while portico does not claim those.
    NotOurs,
    /// Not of type LoadBalancer: the API server cleared the class, so it
    /// says nothing.
    Unknown,
}

fn class_of(svc: &Service, config: &ControllerConfig, provider: &dyn DynProvider) -> ClassClaim {
    if !is_load_balancer(svc) {
        return ClassClaim::Unknown;
    }
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
    {
        Some(class) if class == config.class => ClassClaim::Ours,
        Some(_) => ClassClaim::NotOurs,
        None if config.claim_classless && provider.declines(svc.annotations()).is_none() => {
            ClassClaim::ByDefault
        }
        None => ClassClaim::NotOurs,
    }
}

/// What the Service shows of portico's past work on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// portico's condition, with any reason but `ConflictingController`.
    Served,
    /// portico's `ConflictingController` condition, or another
    /// controller's address without any condition of portico's.
    StoodBack,
    /// Nothing of portico's.
    Nothing,
}

fn record_of(svc: &Service) -> Record {
    let ours = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == crate::status::CONDITION_TYPE);
    match ours {
        Some(c) if c.reason == CONFLICT_REASON => Record::StoodBack,
        Some(_) => Record::Served,
        None if crate::status::has_ingress(svc) => Record::StoodBack,
        None => Record::Nothing,
    }
}

/// Finalizers other load-balancer controllers put on the Services they
/// serve, and portico never writes (matched as prefixes), with their owner.
/// The shared `service.kubernetes.io/load-balancer-cleanup` is not one:
/// portico adds it too, before its first cloud call, so on a Service without
/// portico's condition it may be portico's own from a run that stopped
/// between that write and the status write.
pub const FOREIGN_FINALIZERS: &[(&str, &str)] = &[
    (
        "service.k8s.aws/resources",
        "the AWS Load Balancer Controller",
    ),
    ("gke.networking.io/l4-", "GKE's L4 load-balancer controller"),
];

/// Another controller's work on a Service portico would claim, unless
/// portico served it already: an address in status that portico never wrote
/// (its condition is missing, or says it stood back before), or another
/// load-balancer controller's own finalizer.
fn conflict(svc: &Service) -> Option<Conflict> {
    if record_of(svc) == Record::Served {
        return None;
    }
    let first = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .and_then(<[_]>::first);
    if let Some(first) = first {
        let address = first
            .ip
            .clone()
            .or_else(|| first.hostname.clone())
            .unwrap_or_default();
        return Some(Conflict {
            message: format!(
                "status.loadBalancer.ingress ({address}) was written by another controller; portico leaves this Service alone. Set spec.loadBalancerClass to choose one controller"
            ),
        });
    }
    let (finalizer, owner) = svc.finalizers().iter().find_map(|f| {
        FOREIGN_FINALIZERS
            .iter()
            .find(|(prefix, _)| f.starts_with(prefix))
            .map(|(_, owner)| (f, owner))
    })?;
    Some(Conflict {
        message: format!(
            "the finalizer {finalizer} shows that {owner} serves this Service; portico leaves it alone. Set spec.loadBalancerClass to choose one controller"
        ),
    })
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.finalizers().iter().any(|f| f == LB_FINALIZER)
}

/// The key of the Service's balancer.
pub fn key_of(svc: &Service, config: &ControllerConfig) -> LoadBalancerKey {
    LoadBalancerKey::new(
        config.cluster.clone(),
        svc.namespace().unwrap_or_default(),
        svc.name_any(),
        svc.uid().unwrap_or_default(),
    )
}

/// Decide what `svc` needs, given the eligible nodes. The provider answers
/// only pure questions here: does it decline the Service, and does the
/// spec parse (`prepare`).
pub fn plan(
    svc: &Service,
    targets: &Targets,
    config: &ControllerConfig,
    provider: &dyn DynProvider,
) -> Plan {
    let finalized = has_finalizer(svc);
    let class = class_of(svc, config, provider);
    if svc.metadata.deletion_timestamp.is_some() {
        return if finalized {
            cleanup(svc, config, class, CleanupReason::ServiceDeleted)
        } else {
            Plan::Ignore(IgnoreReason::BeingDeletedWithoutFinalizer)
        };
    }
    match class {
        ClassClaim::Unknown if finalized => {
            cleanup(svc, config, class, CleanupReason::NoLongerLoadBalancer)
        }
        ClassClaim::Unknown => Plan::Ignore(IgnoreReason::NotLoadBalancer),
        ClassClaim::NotOurs if finalized => {
            cleanup(svc, config, class, CleanupReason::ClassChanged)
        }
        ClassClaim::NotOurs => Plan::Ignore(IgnoreReason::OtherClass),
        ClassClaim::Ours | ClassClaim::ByDefault => {
            if let Some(conflict) = conflict(svc) {
                return Plan::Conflict(conflict);
            }
            match build_spec(svc, targets, config) {
                Err(rejection) => Plan::Reject(rejection),
                Ok(spec) => match provider.prepare(spec) {
                    Err(err) => Plan::Reject(rejection_from(err)),
                    Ok(prepared) => Plan::Ensure(Box::new(EnsurePlan {
                        prepared,
                        add_finalizer: !finalized,
                    })),
                },
            }
        }
    }
}

/// The cleanup of a Service carrying the shared finalizer. portico acts on
/// what proves the Service its own (its class, its condition), else only on
/// a balancer of this cluster found for the key; the finalizer and status
/// of a Service of another class, or of one portico stood back from, are
/// never its to change.
fn cleanup(
    svc: &Service,
    config: &ControllerConfig,
    class: ClassClaim,
    reason: CleanupReason,
) -> Plan {
    let (ownership, release_finalizer) = match (class, record_of(svc)) {
        // Another controller serves it, or another class names its owner:
        // that finalizer guards someone else's balancer.
        (_, Record::StoodBack) | (ClassClaim::NotOurs, _) => (Ownership::IfBalancerFound, false),
        (ClassClaim::Ours, _) | (ClassClaim::ByDefault | ClassClaim::Unknown, Record::Served) => {
            (Ownership::Claimed, true)
        }
        // No class to go by and nothing of portico's on it: a balancer of
        // this cluster for the key is the evidence.
        (ClassClaim::ByDefault | ClassClaim::Unknown, Record::Nothing) => {
            (Ownership::IfBalancerFound, true)
        }
    };
    Plan::Cleanup(CleanupPlan {
        key: key_of(svc, config),
        reason,
        // Only a Service that stays to be described, and is portico's.
        clear_status: release_finalizer && reason == CleanupReason::NoLongerLoadBalancer,
        release_finalizer,
        ownership,
    })
}

fn rejection_from(err: ProviderError) -> Rejection {
    match err {
        ProviderError::InvalidSpec { field, reason } => Rejection::new(field, reason),
        ProviderError::Unsupported { what } => Rejection {
            field: "spec".into(),
            reason: format!("not supported by this provider: {what}"),
            unsupported: true,
        },
        other => Rejection::new("spec", other.to_string()),
    }
}

/// A hash of exactly the Service fields a sync depends on (upstream's
/// `needsUpdate` list). Watch events that leave it unchanged (our own status
/// writes, selector edits, unrelated metadata) trigger no reconcile.
pub fn sync_fingerprint(svc: &Service) -> u64 {
    let mut h = DefaultHasher::new();
    let spec = svc.spec.as_ref();
    spec.map(|s| &s.type_).hash(&mut h);
    spec.map(|s| &s.load_balancer_class).hash(&mut h);
    for p in spec.and_then(|s| s.ports.as_deref()).unwrap_or_default() {
        (&p.name, &p.protocol, p.port, p.node_port, &p.app_protocol).hash(&mut h);
        serde_json::to_string(&p.target_port)
            .unwrap_or_default()
            .hash(&mut h);
    }
    spec.map(|s| &s.load_balancer_source_ranges).hash(&mut h);
    spec.map(|s| &s.load_balancer_ip).hash(&mut h);
    spec.map(|s| &s.session_affinity).hash(&mut h);
    spec.and_then(|s| s.session_affinity_config.as_ref())
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .hash(&mut h);
    spec.map(|s| &s.external_ips).hash(&mut h);
    spec.map(|s| &s.external_traffic_policy).hash(&mut h);
    spec.map(|s| s.health_check_node_port).hash(&mut h);
    spec.map(|s| &s.ip_families).hash(&mut h);
    for (k, v) in svc
        .annotations()
        .iter()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED_ANNOTATION)
    {
        (k, v).hash(&mut h);
    }
    svc.metadata.uid.hash(&mut h);
    svc.metadata.deletion_timestamp.is_some().hash(&mut h);
    // Not the finalizer: adding it would trigger a second, identical ensure
    // of every new Service. A finalizer someone removes is re-added at resync.
    // Whether portico stood back for another controller is seen.
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == crate::status::CONDITION_TYPE && c.reason == CONFLICT_REASON)
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
