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
    /// Its class (or class-less while portico claims those).
    Claimed,
    /// Not claimed, yet it carries the shared finalizer: act only if the
    /// provider finds a balancer tagged with this cluster for the key.
    IfBalancerFound,
}

/// Whether portico answers for this Service's balancer.
pub fn is_ours(svc: &Service, config: &ControllerConfig, provider: &dyn DynProvider) -> bool {
    is_load_balancer(svc) && claims(svc, config, provider)
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Whether the Service's class (whatever its type) is portico's: the
/// configured class, or none while portico claims class-less Services that
/// the provider does not leave to another controller.
fn claims(svc: &Service, config: &ControllerConfig, provider: &dyn DynProvider) -> bool {
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
    {
        Some(class) => class == config.class,
        None => config.claim_classless && provider.declines(svc.annotations()).is_none(),
    }
}

/// Another controller's work on a Service portico would claim: an address
/// in status that portico never wrote (its condition is missing, or says it
/// stood back before).
fn conflict(svc: &Service) -> Option<Conflict> {
    let status = svc.status.as_ref()?;
    let ingress = status.load_balancer.as_ref()?.ingress.as_deref()?;
    let first = ingress.first()?;
    let ours = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == crate::status::CONDITION_TYPE && c.reason != CONFLICT_REASON);
    if ours {
        return None;
    }
    let address = first
        .ip
        .clone()
        .or_else(|| first.hostname.clone())
        .unwrap_or_default();
    Some(Conflict {
        message: format!(
            "status.loadBalancer.ingress ({address}) was written by another controller; portico leaves this Service alone. Set spec.loadBalancerClass to choose one controller"
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
    let claimed = claims(svc, config, provider);
    let ownership = if claimed {
        Ownership::Claimed
    } else {
        Ownership::IfBalancerFound
    };
    let cleanup = |reason, clear_status, release_finalizer| {
        Plan::Cleanup(CleanupPlan {
            key: key_of(svc, config),
            reason,
            clear_status,
            release_finalizer,
            ownership,
        })
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return match (finalized, claimed) {
            (false, _) => Plan::Ignore(IgnoreReason::BeingDeletedWithoutFinalizer),
            (true, true) => cleanup(CleanupReason::ServiceDeleted, false, true),
            // Someone else's Service: remove a balancer portico may have made
            // for it, but the finalizer is theirs to release.
            (true, false) => cleanup(CleanupReason::ServiceDeleted, false, false),
        };
    }
    if !is_load_balancer(svc) {
        // Leaving type LoadBalancer clears the class, so a balancer found
        // for the key is the evidence that the Service was portico's.
        return if finalized {
            cleanup(CleanupReason::NoLongerLoadBalancer, true, true)
        } else {
            Plan::Ignore(IgnoreReason::NotLoadBalancer)
        };
    }
    if !claimed {
        // Another class's Service carrying the shared finalizer: remove a
        // balancer this cluster may hold for it, leave the rest to its owner.
        return if finalized {
            cleanup(CleanupReason::ClassChanged, false, false)
        } else {
            Plan::Ignore(IgnoreReason::OtherClass)
        };
    }
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
mod tests {
    use super::*;
    use crate::builders::{node, svc};
    use crate::nodes::node_target;
    use portico_provider::ClusterName;
    use portico_provider::testing::{DECLINE_ANNOTATION, RecordingProvider};

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

    fn plan_of(s: &Service) -> Plan {
        plan(s, &targets(), &config(), &RecordingProvider::new())
    }

    fn kind(p: &Plan) -> String {
        match p {
            Plan::Ignore(r) => format!("ignore:{r:?}"),
            Plan::Ensure(e) => format!("ensure:finalizer={}", e.add_finalizer),
            Plan::Reject(r) => format!("reject:{}", r.field),
            Plan::Cleanup(c) => {
                format!(
                    "cleanup:{:?}:clear={}:release={}:{:?}",
                    c.reason, c.clear_status, c.release_finalizer, c.ownership
                )
            }
            Plan::Conflict(_) => "conflict".into(),
        }
    }

    /// `s` with an address in status and, if given, portico's condition.
    fn served(mut s: Service, condition_reason: Option<&str>) -> Service {
        use crate::k8s::{Condition, K8sLoadBalancerStatus, LoadBalancerIngress, Time, Timestamp};
        let status = s.status.get_or_insert_with(Default::default);
        status.load_balancer = Some(K8sLoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("203.0.113.9".into()),
                ..Default::default()
            }]),
        });
        status.conditions = condition_reason.map(|reason| {
            vec![Condition {
                type_: crate::status::CONDITION_TYPE.into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }]
        });
        s
    }

    #[test]
    fn ownership_and_lifecycle() {
        let lb = || svc("default", "web").lb().port(80, 30080);
        let cases = [
            (
                "ClusterIP Service is ignored",
                svc("default", "web").port(80, 30080).build(),
                "ignore:NotLoadBalancer",
            ),
            (
                "NodePort Service is ignored",
                svc("d", "w").type_("NodePort").port(80, 30080).build(),
                "ignore:NotLoadBalancer",
            ),
            (
                "new LB Service gets the finalizer first",
                lb().build(),
                "ensure:finalizer=true",
            ),
            (
                "finalized LB Service is ensured",
                lb().finalizer(LB_FINALIZER).build(),
                "ensure:finalizer=false",
            ),
            (
                "our class is ours",
                lb().class(crate::config::DEFAULT_CLASS).build(),
                "ensure:finalizer=true",
            ),
            (
                "another class is not ours",
                lb().class("example.com/lb").build(),
                "ignore:OtherClass",
            ),
            (
                "a class-less Service the provider declines is left alone",
                lb().annotation(DECLINE_ANNOTATION, "aws-lb-controller")
                    .build(),
                "ignore:OtherClass",
            ),
            (
                "our class wins over what the provider would decline",
                lb().class(crate::config::DEFAULT_CLASS)
                    .annotation(DECLINE_ANNOTATION, "aws-lb-controller")
                    .build(),
                "ensure:finalizer=true",
            ),
            (
                "deleted with finalizer is cleaned up, status kept",
                lb().finalizer(LB_FINALIZER).deleting().build(),
                "cleanup:ServiceDeleted:clear=false:release=true:Claimed",
            ),
            (
                "another class's Service being deleted: only a balancer found for it goes; its finalizer stays",
                lb().class("example.com/lb")
                    .finalizer(LB_FINALIZER)
                    .deleting()
                    .build(),
                "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
            ),
            (
                "an address portico never wrote: another controller serves it",
                served(lb().build(), None),
                "conflict",
            ),
            (
                "portico's own address and condition: ensured",
                served(lb().finalizer(LB_FINALIZER).build(), Some("Ready")),
                "ensure:finalizer=false",
            ),
            (
                "portico stood back before and the other address is still there",
                served(lb().build(), Some(CONFLICT_REASON)),
                "conflict",
            ),
            (
                "deleted without finalizer is ignored",
                lb().deleting().build(),
                "ignore:BeingDeletedWithoutFinalizer",
            ),
            (
                "type changed away from LB cleans up and clears status",
                svc("default", "web")
                    .type_("ClusterIP")
                    .port(80, 30080)
                    .finalizer(LB_FINALIZER)
                    .build(),
                "cleanup:NoLongerLoadBalancer:clear=true:release=true:Claimed",
            ),
            (
                "another class's finalized Service: our balancer goes, its status and finalizer stay",
                lb().class("example.com/lb").finalizer(LB_FINALIZER).build(),
                "cleanup:ClassChanged:clear=false:release=false:IfBalancerFound",
            ),
        ];
        for (desc, s, want) in cases {
            assert_eq!(kind(&plan_of(&s)), want, "{desc}");
        }
    }

    #[test]
    fn classless_services_only_when_configured() {
        let s = svc("default", "web").lb().port(80, 30080).build();
        let cfg = ControllerConfig {
            claim_classless: false,
            ..config()
        };
        assert_eq!(
            kind(&plan(&s, &targets(), &cfg, &RecordingProvider::new())),
            "ignore:OtherClass"
        );
        let deleting = svc("default", "web")
            .lb()
            .port(80, 30080)
            .finalizer(LB_FINALIZER)
            .deleting()
            .build();
        assert_eq!(
            kind(&plan(
                &deleting,
                &targets(),
                &cfg,
                &RecordingProvider::new()
            )),
            "cleanup:ServiceDeleted:clear=false:release=false:IfBalancerFound",
            "a class-less Service portico does not claim keeps its (shared) finalizer"
        );
        let left_lb = svc("default", "web")
            .type_("ClusterIP")
            .port(80, 30080)
            .finalizer(LB_FINALIZER)
            .build();
        assert_eq!(
            kind(&plan(&left_lb, &targets(), &cfg, &RecordingProvider::new())),
            "cleanup:NoLongerLoadBalancer:clear=true:release=true:IfBalancerFound",
            "after a type change only a balancer found for the key proves it was ours"
        );
    }

    #[test]
    fn provider_validation_rejects_before_any_cloud_call() {
        let s = svc("default", "web")
            .lb()
            .port(80, 30080)
            .annotation("test.portico.io/weight", "heavy")
            .build();
        match plan_of(&s) {
            Plan::Reject(r) => {
                assert_eq!(r.field, "metadata.annotations[test.portico.io/weight]");
                assert!(r.reason.contains("heavy"), "{}", r.reason);
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn no_eligible_nodes_still_ensures() {
        let s = svc("default", "web").lb().port(80, 30080).build();
        let Plan::Ensure(e) = plan(
            &s,
            &Targets::default(),
            &config(),
            &RecordingProvider::new(),
        ) else {
            panic!("expected ensure")
        };
        assert!(e.no_eligible_nodes());
    }

    #[test]
    fn fingerprint_tracks_exactly_the_sync_fields() {
        let base = svc("default", "web").lb().port(80, 30080).build();
        let fp = sync_fingerprint(&base);
        let mut status_only = base.clone();
        status_only.status = Some(Default::default());
        status_only.metadata.resource_version = Some("42".into());
        assert_eq!(
            sync_fingerprint(&status_only),
            fp,
            "status and resourceVersion do not matter"
        );
        let finalized = svc("default", "web")
            .lb()
            .port(80, 30080)
            .finalizer(LB_FINALIZER)
            .build();
        assert_eq!(
            sync_fingerprint(&finalized),
            fp,
            "adding the finalizer does not trigger a second ensure"
        );
        assert_ne!(
            sync_fingerprint(&served(base.clone(), Some(CONFLICT_REASON))),
            fp,
            "standing back for another controller is seen"
        );
        let mut selector = base.clone();
        if let Some(spec) = selector.spec.as_mut() {
            spec.selector = Some([("app".to_string(), "x".to_string())].into());
        }
        assert_eq!(
            sync_fingerprint(&selector),
            fp,
            "selector does not matter to the balancer"
        );
        let changed = [
            ("port", svc("default", "web").lb().port(81, 30080).build()),
            (
                "annotation",
                svc("default", "web")
                    .lb()
                    .port(80, 30080)
                    .annotation("k", "v")
                    .build(),
            ),
            (
                "type",
                svc("default", "web")
                    .type_("NodePort")
                    .port(80, 30080)
                    .build(),
            ),
            (
                "uid",
                svc("default", "web")
                    .lb()
                    .port(80, 30080)
                    .uid("other")
                    .build(),
            ),
            (
                "source ranges",
                svc("default", "web")
                    .lb()
                    .port(80, 30080)
                    .source_range("10.0.0.0/8")
                    .build(),
            ),
            (
                "traffic policy",
                svc("default", "web")
                    .lb()
                    .port(80, 30080)
                    .local(32000)
                    .build(),
            ),
            (
                "deleting",
                svc("default", "web")
                    .lb()
                    .port(80, 30080)
                    .deleting()
                    .build(),
            ),
        ];
        for (desc, s) in changed {
            assert_ne!(sync_fingerprint(&s), fp, "{desc} changes the fingerprint");
        }
    }
}
