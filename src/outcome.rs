//! What the result of a reconcile means, decided without I/O: the Events
//! to post, the status to write, what to remember of the spec, and when to
//! look at the Service again. The executor (`reconcile.rs`) only carries an
//! [`Outcome`] out, so every branch of the controller's behaviour is
//! table-tested here, like `plan`.

use std::borrow::Cow;

use portico_provider::{LoadBalancerStatus, Notice, ProviderError};

use crate::plan::{CONFLICT_REASON, CleanupPlan, Conflict, Rejection};
use crate::status::{self, ConditionChange, Readiness, StatusUpdate};

/// An Event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// One Event to post about the Service, with upstream's reasons
/// (`EnsuringLoadBalancer`, `SyncLoadBalancerFailed`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    /// Ours are fixed; a provider's notice brings its own.
    pub reason: Cow<'static, str>,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Normal,
            reason: Cow::Borrowed(reason),
            message: message.into(),
        }
    }

    fn warning(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// When the Events of an outcome are posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    Always,
    /// Only when the status write changed the Service: the condition is the
    /// record that the Event was sent, so a resync does not repeat it.
    IfStatusChanged,
}

/// Hashes of the spec last ensured: whole, and without its targets.
pub type SpecHashes = (u64, u64);

/// What the executor remembers of the Service afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memo {
    Keep,
    /// The spec with these hashes is what the Service shows now.
    Ensured(SpecHashes),
    /// Forget the spec (the next ensure is a change again).
    ForgetSpec,
    /// Forget the Service (its balancer is gone).
    ForgetAll,
}

/// When to reconcile the Service again.
#[derive(Debug)]
pub enum Next {
    /// After the (jittered) resync period.
    Resync,
    /// Only when the Service or the node set changes.
    AwaitChange,
    /// With backoff, never sooner than the error's floor: the one failure
    /// path, shared with Kubernetes API errors.
    Retry(ProviderError),
}

/// Everything a reconcile does after its provider call.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<StatusUpdate>,
    /// Take portico's finalizer off the Service.
    pub release_finalizer: bool,
    pub events: Vec<Note>,
    pub announce: Announce,
    pub memo: Memo,
    pub next: Next,
    /// `portico_reconciles_total{result}`.
    pub result: &'static str,
    /// `portico_errors_total{kind}`, when something failed.
    pub error_kind: Option<&'static str>,
}

impl Outcome {
    /// A failure to retry with backoff, counted by the error's kind.
    fn retry(err: ProviderError) -> Self {
        let mut out = Self::new("failed", Next::Resync);
        out.error_kind = Some(err.metric_label());
        out.next = Next::Retry(err);
        out
    }

    fn new(result: &'static str, next: Next) -> Self {
        Self {
            status: None,
            release_finalizer: false,
            events: Vec::new(),
            announce: Announce::Always,
            memo: Memo::Keep,
            next,
            result,
            error_kind: None,
        }
    }
}

/// How the spec to ensure differs from the one last ensured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecChange {
    /// The same spec: a resync, which posts no Events.
    Unchanged,
    /// Only the node set changed (upstream: `UpdatedLoadBalancer`).
    TargetsOnly,
    /// Anything else, or nothing remembered.
    Changed,
}

pub fn spec_change(previous: Option<SpecHashes>, now: SpecHashes) -> SpecChange {
    match previous {
        Some(p) if p == now => SpecChange::Unchanged,
        Some((_, rest)) if rest == now.1 => SpecChange::TargetsOnly,
        _ => SpecChange::Changed,
    }
}

/// Events posted before the provider is called to ensure.
pub fn before_ensure(change: SpecChange) -> Vec<Note> {
    match change {
        SpecChange::Changed => vec![Note::normal(
            "EnsuringLoadBalancer",
            "Ensuring load balancer",
        )],
        SpecChange::Unchanged | SpecChange::TargetsOnly => Vec::new(),
    }
}

/// What the controller knows of the spec it asked to ensure.
#[derive(Debug, Clone, Copy)]
pub struct EnsureFacts<'a> {
    pub change: SpecChange,
    pub hashes: SpecHashes,
    /// Eligible nodes in the spec.
    pub hosts: usize,
    /// What the provider accepts but does not enforce.
    pub unenforced: &'a [String],
    /// What the provider noticed while ensuring (see `Notice`).
    pub notices: &'a [Notice],
}

/// The outcome of an ensure.
pub fn ensured(
    facts: EnsureFacts<'_>,
    result: Result<LoadBalancerStatus, ProviderError>,
) -> Outcome {
    match result {
        Ok(lb) => {
            let readiness = if facts.hosts == 0 {
                Readiness::no_eligible_nodes()
            } else {
                Readiness::ready()
            };
            let mut out = Outcome::new("ensured", Next::Resync);
            out.status = Some(StatusUpdate {
                ingress: Some(status::ingress_of(&lb)),
                condition: ConditionChange::Set(readiness),
            });
            if facts.hosts == 0 {
                out.events.push(Note::warning(
                    "UnAvailableLoadBalancer",
                    "There are no available nodes for LoadBalancer",
                ));
            }
            match facts.change {
                SpecChange::Unchanged => {}
                SpecChange::TargetsOnly => out.events.push(Note::normal(
                    "UpdatedLoadBalancer",
                    format!(
                        "Updated load balancer with new hosts ({} eligible)",
                        facts.hosts
                    ),
                )),
                SpecChange::Changed => {
                    out.events
                        .push(Note::normal("EnsuredLoadBalancer", "Ensured load balancer"));
                    out.events.extend(
                        facts
                            .unenforced
                            .iter()
                            .map(|note| Note::warning("UnenforcedField", note.clone())),
                    );
                }
            }
            // Every time, not only on a change: it can stay true at rest
            // (an instance refused until someone fixes it).
            out.events.extend(
                facts
                    .notices
                    .iter()
                    .map(|n| Note::warning(n.reason.clone(), n.message.clone())),
            );
            // Remembered only once the Service shows it: an outcome whose
            // status write fails repeats its Events next time.
            out.memo = Memo::Ensured(facts.hashes);
            out
        }
        Err(err) => {
            let status = StatusUpdate {
                ingress: None,
                condition: ConditionChange::Set(Readiness::failed(&err)),
            };
            let note = Note::warning(
                "SyncLoadBalancerFailed",
                format!("Error syncing load balancer: {err}"),
            );
            // Whatever the cloud said, try again: only the pure validation
            // in `prepare` waits for the Service to change.
            let mut out = Outcome::retry(err);
            out.status = Some(status);
            out.events.push(note);
            out.memo = Memo::ForgetSpec;
            out
        }
    }
}

/// The outcome of a Service the controller or the provider refused.
pub fn rejected(rejection: &Rejection) -> Outcome {
    let message = rejection.message();
    let mut out = Outcome::new("invalid", Next::AwaitChange);
    out.events.push(Note::warning(
        "SyncLoadBalancerFailed",
        format!("Error syncing load balancer: {message}"),
    ));
    out.status = Some(StatusUpdate {
        ingress: None,
        condition: ConditionChange::Set(Readiness::invalid(message, rejection.unsupported)),
    });
    out.error_kind = Some(if rejection.unsupported {
        "unsupported"
    } else {
        "invalid_spec"
    });
    out
}

/// The outcome of standing back for another controller.
pub fn stood_back(conflict: &Conflict) -> Outcome {
    let mut out = Outcome::new("conflict", Next::Resync);
    out.status = Some(StatusUpdate {
        ingress: None,
        condition: ConditionChange::Set(Readiness::conflict(conflict.message.clone())),
    });
    out.events
        .push(Note::warning(CONFLICT_REASON, conflict.message.clone()));
    out.announce = Announce::IfStatusChanged;
    out
}

/// For a Service portico does not claim: what looking for this cluster's
/// balancer found. `None`: one exists, go on and delete it.
pub fn looked_up(found: Result<Option<LoadBalancerStatus>, ProviderError>) -> Option<Outcome> {
    match found {
        Ok(Some(_)) => None,
        Ok(None) => Some(Outcome::new("ignored", Next::AwaitChange)),
        Err(err) => Some(Outcome::retry(err)),
    }
}

/// Events posted before the provider is called to delete.
pub fn before_delete() -> Vec<Note> {
    vec![Note::normal(
        "DeletingLoadBalancer",
        "Deleting load balancer",
    )]
}

/// The outcome of a delete.
pub fn deleted(plan: &CleanupPlan, result: Result<(), ProviderError>) -> Outcome {
    match result {
        Ok(()) => {
            let mut out = Outcome::new("deleted", Next::AwaitChange);
            out.status = plan.clear_status.then(|| StatusUpdate {
                ingress: Some(Vec::new()),
                condition: ConditionChange::Remove,
            });
            out.release_finalizer = plan.release_finalizer;
            out.events
                .push(Note::normal("DeletedLoadBalancer", "Deleted load balancer"));
            out.memo = Memo::ForgetAll;
            out
        }
        Err(err) => {
            // The finalizer stays: the Service cannot go before its balancer.
            let note = Note::warning(
                "SyncLoadBalancerFailed",
                format!("Error deleting load balancer: {err}"),
            );
            let mut out = Outcome::retry(err);
            out.events.push(note);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{CleanupReason, Ownership};
    use portico_provider::{ClusterName, IngressStatus, LoadBalancerKey};

    fn lb_status() -> LoadBalancerStatus {
        LoadBalancerStatus {
            ingress: vec![IngressStatus {
                ip: Some("192.0.2.1".parse().expect("ip")),
                ..IngressStatus::default()
            }],
        }
    }

    fn reasons(out: &Outcome) -> Vec<&str> {
        out.events.iter().map(|n| n.reason.as_ref()).collect()
    }

    fn next(out: &Outcome) -> &'static str {
        match out.next {
            Next::Resync => "resync",
            Next::AwaitChange => "await-change",
            Next::Retry(_) => "retry",
        }
    }

    #[test]
    fn spec_changes_are_told_apart_by_their_hashes() {
        let cases = [
            ("nothing remembered", None, (1, 2), SpecChange::Changed),
            ("same spec", Some((1, 2)), (1, 2), SpecChange::Unchanged),
            (
                "only the nodes",
                Some((1, 2)),
                (3, 2),
                SpecChange::TargetsOnly,
            ),
            ("the spec itself", Some((1, 2)), (3, 4), SpecChange::Changed),
        ];
        for (desc, previous, now, want) in cases {
            assert_eq!(spec_change(previous, now), want, "{desc}");
        }
        assert_eq!(
            reasons_of(&before_ensure(SpecChange::Changed)),
            ["EnsuringLoadBalancer"]
        );
        assert!(before_ensure(SpecChange::Unchanged).is_empty());
        assert!(before_ensure(SpecChange::TargetsOnly).is_empty());
    }

    fn reasons_of(notes: &[Note]) -> Vec<&str> {
        notes.iter().map(|n| n.reason.as_ref()).collect()
    }

    #[test]
    fn ensure_outcomes() {
        let unenforced = ["spec.loadBalancerSourceRanges is not enforced".to_string()];
        let refused = [Notice::new("TargetRefused", "i-0abc was refused")];
        let facts = |change, hosts| EnsureFacts {
            change,
            hashes: (7, 8),
            hosts,
            unenforced: &unenforced,
            notices: &[],
        };
        let noticed = |change| EnsureFacts {
            notices: &refused,
            ..facts(change, 2)
        };
        // (what, facts, did the provider succeed, events, result, next)
        type Case<'a> = (
            &'a str,
            EnsureFacts<'a>,
            bool,
            Vec<&'a str>,
            &'a str,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "a new spec: ensured, with the unenforced notes",
                facts(SpecChange::Changed, 2),
                true,
                vec!["EnsuredLoadBalancer", "UnenforcedField"],
                "ensured",
                "resync",
            ),
            (
                "a resync: no Event at all",
                facts(SpecChange::Unchanged, 2),
                true,
                vec![],
                "ensured",
                "resync",
            ),
            (
                "nodes changed: upstream's UpdatedLoadBalancer",
                facts(SpecChange::TargetsOnly, 3),
                true,
                vec!["UpdatedLoadBalancer"],
                "ensured",
                "resync",
            ),
            (
                "a resync that noticed something: it is posted even at rest",
                noticed(SpecChange::Unchanged),
                true,
                vec!["TargetRefused"],
                "ensured",
                "resync",
            ),
            (
                "a change that noticed something: after the ensured Events",
                noticed(SpecChange::Changed),
                true,
                vec!["EnsuredLoadBalancer", "UnenforcedField", "TargetRefused"],
                "ensured",
                "resync",
            ),
            (
                "a failed ensure posts no notice",
                noticed(SpecChange::Changed),
                false,
                vec!["SyncLoadBalancerFailed"],
                "failed",
                "retry",
            ),
            (
                "no eligible node: a warning, still ensured",
                facts(SpecChange::Unchanged, 0),
                true,
                vec!["UnAvailableLoadBalancer"],
                "ensured",
                "resync",
            ),
            (
                "the cloud failed: a warning, and a retry",
                facts(SpecChange::Changed, 2),
                false,
                vec!["SyncLoadBalancerFailed"],
                "failed",
                "retry",
            ),
        ];
        for (desc, facts, ok, want_events, want_result, want_next) in cases {
            let result = if ok {
                Ok(lb_status())
            } else {
                Err(ProviderError::transient("cloud down"))
            };
            let out = ensured(facts, result);
            assert_eq!(reasons(&out), want_events, "{desc}: events");
            assert_eq!(out.result, want_result, "{desc}: result");
            assert_eq!(next(&out), want_next, "{desc}: next");
            let status = out.status.as_ref().expect("an ensure always writes status");
            match (ok, &status.condition) {
                (true, ConditionChange::Set(r)) => {
                    assert_eq!(r.ready, facts.hosts > 0, "{desc}: readiness");
                    assert!(status.ingress.is_some(), "{desc}: ingress written");
                    assert_eq!(out.memo, Memo::Ensured((7, 8)), "{desc}: remembered");
                }
                (false, ConditionChange::Set(r)) => {
                    assert!(!r.ready, "{desc}");
                    assert!(status.ingress.is_none(), "{desc}: the address stays");
                    assert_eq!(
                        out.memo,
                        Memo::ForgetSpec,
                        "{desc}: Events repeat next time"
                    );
                    assert_eq!(out.error_kind, Some("transient"), "{desc}");
                }
                (_, other) => panic!("{desc}: condition {other:?}"),
            }
        }
    }

    #[test]
    fn refusals_and_conflicts() {
        let invalid = rejected(&Rejection::new("spec.ports[0].port", "out of range"));
        assert_eq!(reasons(&invalid), ["SyncLoadBalancerFailed"]);
        assert!(invalid.events[0].message.contains("spec.ports[0].port"));
        assert_eq!(
            next(&invalid),
            "await-change",
            "nothing to retry until the Service changes"
        );
        assert_eq!(invalid.error_kind, Some("invalid_spec"));

        let conflict = stood_back(&Conflict {
            message: "another controller".into(),
        });
        assert_eq!(reasons(&conflict), [CONFLICT_REASON]);
        assert_eq!(
            conflict.announce,
            Announce::IfStatusChanged,
            "said once, not on every resync"
        );
        assert_eq!(next(&conflict), "resync");
    }

    #[test]
    fn cleanup_outcomes() {
        let plan = |clear_status, release_finalizer| CleanupPlan {
            key: LoadBalancerKey::new(ClusterName::new("c"), "default", "web", "u1"),
            reason: CleanupReason::ServiceDeleted,
            clear_status,
            release_finalizer,
            ownership: Ownership::Claimed,
        };
        let gone = deleted(&plan(true, true), Ok(()));
        assert_eq!(reasons(&gone), ["DeletedLoadBalancer"]);
        assert!(gone.release_finalizer);
        assert_eq!(gone.memo, Memo::ForgetAll);
        let cleared = gone.status.expect("status cleared");
        assert_eq!(cleared.ingress, Some(Vec::new()));
        assert_eq!(cleared.condition, ConditionChange::Remove);

        let kept = deleted(&plan(false, false), Ok(()));
        assert!(
            kept.status.is_none(),
            "a deleted Service's status is left alone"
        );
        assert!(!kept.release_finalizer, "another owner's finalizer stays");

        let failed = deleted(&plan(true, true), Err(ProviderError::transient("x")));
        assert!(
            !failed.release_finalizer,
            "the finalizer stays until the balancer is gone"
        );
        assert!(failed.status.is_none());
        assert_eq!(next(&failed), "retry");
        assert_eq!(reasons_of(&before_delete()), ["DeletingLoadBalancer"]);

        assert!(
            looked_up(Ok(Some(lb_status()))).is_none(),
            "found: go on and delete"
        );
        let nothing = looked_up(Ok(None)).expect("nothing to do");
        assert_eq!(
            (nothing.result, next(&nothing)),
            ("ignored", "await-change")
        );
        assert!(
            nothing.events.is_empty(),
            "no Events on a Service that is not portico's"
        );
        let error = looked_up(Err(ProviderError::transient("x"))).expect("retry");
        assert_eq!(next(&error), "retry");
    }
}
