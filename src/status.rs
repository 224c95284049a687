//! What the Service's status should say, computed without I/O, and the
//! patch that gets it there (none when it already says it).

use portico_provider::{LoadBalancerStatus, ProviderError};
use serde_json::{Value, json};

use crate::k8s::{Condition, K8sPortStatus, LoadBalancerIngress, Service, Time, Timestamp};

/// The condition portico keeps on each Service it manages.
pub const CONDITION_TYPE: &str = "portico.io/LoadBalancerReady";

/// Whether the balancer serves, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// CamelCase: `Ready`, `NoEligibleNodes`, `InvalidSpec`, `QuotaExceeded`, ...
    pub reason: String,
    pub message: String,
}

impl Readiness {
    pub fn ready() -> Self {
        Self {
            ready: true,
            reason: "Ready".into(),
            message: "the load balancer serves every eligible node".into(),
        }
    }

    pub fn no_eligible_nodes() -> Self {
        Self {
            ready: false,
            reason: "NoEligibleNodes".into(),
            message: "no node is eligible for load balancer traffic; the balancer has no targets"
                .into(),
        }
    }

    pub fn invalid(message: String, unsupported: bool) -> Self {
        let reason = if unsupported {
            "Unsupported"
        } else {
            "InvalidSpec"
        };
        Self {
            ready: false,
            reason: reason.into(),
            message,
        }
    }

    /// Another controller serves the Service (see `plan::Conflict`).
    pub fn conflict(message: String) -> Self {
        Self {
            ready: false,
            reason: crate::plan::CONFLICT_REASON.into(),
            message,
        }
    }

    pub fn failed(err: &ProviderError) -> Self {
        Self {
            ready: false,
            reason: err.condition_reason().into(),
            message: err.to_string(),
        }
    }
}

/// `status.loadBalancer.ingress` for a provider status.
pub fn ingress_of(status: &LoadBalancerStatus) -> Vec<LoadBalancerIngress> {
    status
        .ingress
        .iter()
        .map(|i| LoadBalancerIngress {
            ip: i.ip.map(|ip| ip.to_string()),
            hostname: i.hostname.clone(),
            // Spelled out: the API server defaults it to VIP when an ip is
            // set, and a status that left it out would differ on every read.
            ip_mode: match (i.ip, i.ip_mode) {
                (Some(_), Some(mode)) => Some(mode.as_str().to_string()),
                (Some(_), None) => Some("VIP".to_string()),
                (None, _) => None,
            },
            ports: (!i.ports.is_empty()).then(|| {
                i.ports
                    .iter()
                    .map(|p| K8sPortStatus {
                        port: i32::from(p.port),
                        protocol: p.protocol.as_str().to_string(),
                        error: p.error.clone(),
                    })
                    .collect()
            }),
        })
        .collect()
}

fn current_ingress(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

fn current_conditions(svc: &Service) -> Vec<Condition> {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// Whether the Service shows an address.
pub fn has_ingress(svc: &Service) -> bool {
    !current_ingress(svc).is_empty()
}

/// What to change in the Service's status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// `Some(vec![])` clears the ingress; `None` leaves it.
    pub ingress: Option<Vec<LoadBalancerIngress>>,
    pub condition: ConditionChange,
}

/// What to do with portico's condition on the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionChange {
    /// Leave it as it is.
    Keep,
    Set(Readiness),
    /// Take it off (the Service is no longer portico's).
    Remove,
}

/// The merge patch for the status subresource, or `None` if the Service
/// already shows this (so a steady state writes nothing). A patch that
/// writes conditions carries the resourceVersion `svc` was read at.
pub fn status_patch(svc: &Service, update: &StatusUpdate, now: Timestamp) -> Option<Value> {
    let mut patch = serde_json::Map::new();
    if let Some(want) = &update.ingress
        && *want != current_ingress(svc)
    {
        let value = if want.is_empty() {
            Value::Null
        } else {
            json!(want)
        };
        patch.insert("loadBalancer".into(), json!({ "ingress": value }));
    }

    let want = match &update.condition {
        ConditionChange::Keep => None,
        ConditionChange::Set(readiness) => Some(Some(readiness)),
        ConditionChange::Remove => Some(None),
    };
    if let Some(want) = want {
        let conditions = current_conditions(svc);
        let ours = conditions.iter().find(|c| c.type_ == CONDITION_TYPE);
        let next: Option<Condition> = want.map(|r| {
            let status = if r.ready { "True" } else { "False" };
            let transition = match ours {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: CONDITION_TYPE.into(),
                status: status.into(),
                reason: r.reason.clone(),
                message: r.message.clone(),
                last_transition_time: transition,
                observed_generation: svc.metadata.generation,
            }
        });
        let unchanged = match (ours, &next) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.status == b.status && a.reason == b.reason && a.message == b.message
            }
            _ => false,
        };
        if !unchanged {
            // Merge patches replace lists whole: keep other controllers' conditions.
            let mut all: Vec<Condition> = conditions
                .iter()
                .filter(|c| c.type_ != CONDITION_TYPE)
                .cloned()
                .collect();
            all.extend(next);
            patch.insert(
                "conditions".into(),
                if all.is_empty() {
                    Value::Null
                } else {
                    json!(all)
                },
            );
        }
    }
    if patch.is_empty() {
        return None;
    }
    // A merge patch replaces the conditions list whole, and it was built from
    // the cache: guard it with the resourceVersion it was built from, so a
    // condition another controller added meanwhile is never lost (the write
    // fails with 409 and the reconcile retries on a fresh copy).
    let guard = patch
        .contains_key("conditions")
        .then_some(svc.metadata.resource_version.as_deref())
        .flatten();
    let mut body = json!({ "status": Value::Object(patch) });
    if let Some(rv) = guard {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::svc;
    use portico_provider::{IngressStatus, IpMode, PortStatus, Protocol};

    fn provider_status() -> LoadBalancerStatus {
        LoadBalancerStatus {
            ingress: vec![IngressStatus {
                ip: Some("127.240.0.1".parse().expect("ip")),
                hostname: None,
                ip_mode: Some(IpMode::Proxy),
                ports: vec![PortStatus {
                    port: 80,
                    protocol: Protocol::Tcp,
                    error: None,
                }],
            }],
        }
    }

    fn apply(svc: &mut Service, patch: &Value) {
        let mut current = serde_json::to_value(&*svc).expect("serialize");
        json_patch::merge(&mut current, patch);
        *svc = serde_json::from_value(current).expect("deserialize");
    }

    #[test]
    fn steady_state_writes_nothing() {
        let mut s = svc("default", "web").lb().port(80, 30080).build();
        let update = StatusUpdate {
            ingress: Some(ingress_of(&provider_status())),
            condition: ConditionChange::Set(Readiness::ready()),
        };
        let first = status_patch(&s, &update, Timestamp::UNIX_EPOCH).expect("first write");
        apply(&mut s, &first);
        assert!(has_ingress(&s));
        assert_eq!(
            status_patch(&s, &update, Timestamp::now()),
            None,
            "second identical update is a no-op"
        );
    }

    #[test]
    fn ip_mode_is_spelled_out() {
        let mut status = provider_status();
        status.ingress[0].ip_mode = None;
        let ingress = ingress_of(&status);
        assert_eq!(
            ingress[0].ip_mode.as_deref(),
            Some("VIP"),
            "what the API server would default, so a re-read matches"
        );
        status.ingress[0].ip = None;
        status.ingress[0].hostname = Some("lb.example.com".into());
        status.ingress[0].ip_mode = Some(IpMode::Vip);
        assert_eq!(
            ingress_of(&status)[0].ip_mode,
            None,
            "no ipMode without an ip (the API server refuses it)"
        );
    }

    #[test]
    fn condition_writes_are_guarded_by_the_resource_version_read() {
        let mut s = svc("default", "web").lb().port(80, 30080).build();
        s.metadata.resource_version = Some("41".into());
        let with_condition = StatusUpdate {
            ingress: Some(ingress_of(&provider_status())),
            condition: ConditionChange::Set(Readiness::ready()),
        };
        let patch = status_patch(&s, &with_condition, Timestamp::UNIX_EPOCH).expect("write");
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        let ingress_only = StatusUpdate {
            ingress: Some(ingress_of(&provider_status())),
            condition: ConditionChange::Keep,
        };
        let patch = status_patch(&s, &ingress_only, Timestamp::UNIX_EPOCH).expect("write");
        assert!(
            patch.get("metadata").is_none(),
            "the ingress list is portico's alone: no precondition"
        );
    }

    #[test]
    fn condition_transition_time_moves_only_on_status_change() {
        let mut s = svc("default", "web").lb().port(80, 30080).build();
        let failing = |msg: &str| StatusUpdate {
            ingress: None,
            condition: ConditionChange::Set(Readiness::failed(&ProviderError::transient(msg))),
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let p = status_patch(&s, &failing("a"), t0).expect("write");
        apply(&mut s, &p);
        let t1 = Timestamp::now();
        let patch = status_patch(&s, &failing("b"), t1).expect("message changed");
        apply(&mut s, &patch);
        let cond = current_conditions(&s)
            .into_iter()
            .find(|c| c.type_ == CONDITION_TYPE)
            .expect("ours");
        assert_eq!(
            cond.last_transition_time,
            Time(t0),
            "still False: transition time kept"
        );
        assert_eq!(cond.reason, "ProviderError");
    }

    #[test]
    fn keeps_other_conditions_and_clears_ours() {
        let mut s = svc("default", "web").lb().port(80, 30080).build();
        s.status = Some(crate::k8s::ServiceStatus {
            conditions: Some(vec![Condition {
                type_: "example.com/Other".into(),
                status: "True".into(),
                reason: "X".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }]),
            load_balancer: None,
        });
        let set = StatusUpdate {
            ingress: None,
            condition: ConditionChange::Set(Readiness::no_eligible_nodes()),
        };
        let p = status_patch(&s, &set, Timestamp::now()).expect("write");
        apply(&mut s, &p);
        assert_eq!(current_conditions(&s).len(), 2);
        let clear = StatusUpdate {
            ingress: Some(vec![]),
            condition: ConditionChange::Remove,
        };
        let p = status_patch(&s, &clear, Timestamp::now()).expect("clear");
        apply(&mut s, &p);
        let left: Vec<String> = current_conditions(&s)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(left, ["example.com/Other"]);
        assert_eq!(
            status_patch(&s, &clear, Timestamp::now()),
            None,
            "already clear"
        );
    }
}
