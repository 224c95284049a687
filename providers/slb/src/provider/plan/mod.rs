//! Decide, then act: which balancer a Service uses and the calls that turn
//! what the cloud holds ([`Observed`]) into what the spec asks
//! ([`Desired`]) ([`plan`]), and the calls that remove the Service's part
//! of the cloud ([`teardown`]). Pure; `execute` carries the steps out.
//!
//! The decisions, in the order their calls are made:
//! 1. the balancer: the one the `id` annotation names (tagged as the
//!    Service's and as reused), else the oldest carrying the Service's
//!    tags, else a new one; an address or address type cannot change in
//!    place, the size can;
//! 2. the ACL: the user's, or portico's own holding the source ranges
//!    (created or rewritten before the listeners point at it);
//! 3. groups and listeners ([`listener_steps`]);
//! 4. portico's ACLs no listener needs any more.

mod listeners;

use std::collections::BTreeMap;

use portico_provider::{Annotations, LoadBalancerKey, ProviderError, tag};

pub use listeners::{group_name, listener_steps, release_steps, server_diff};

use super::REUSED_TAG;
use super::desired::{Desired, DesiredAcl, DesiredListener};
use super::observe::{Found, Observed, ObservedBalancer, Owned};
use super::options::{ForeignListeners, annotation, keys};
use crate::cloud::model::*;

/// How much of a balancer's listeners portico may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Portico made the balancer: every listener and group is its own.
    Owned,
    /// A balancer reused through the `id` annotation. With
    /// [`ForeignListeners::Override`], listeners on the Service's ports are
    /// taken over and portico's own are removed when no longer wanted; with
    /// [`ForeignListeners::Keep`], listeners are only added (and portico's
    /// own updated), and a foreign listener on a wanted port is an error.
    Reused(ForeignListeners),
}

/// A group a step refers to: one that exists, or one an earlier step of
/// the plan creates (by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Id(String),
    Created(String),
}

/// The ACL a listener carries: one that exists (the user's or portico's),
/// or portico's own that an earlier step of the plan creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRef {
    Existing(ListenerAcl),
    Created,
}

/// A listener's settings as planned, before the ids of the group and ACL
/// an earlier step creates are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSettings {
    pub group: GroupRef,
    pub acl: Option<AclRef>,
    pub health_check: HealthCheck,
    pub scheduler: SchedulerKind,
    pub sticky_session: Option<StickySession>,
    /// Portico's marker: whose listener this is.
    pub description: String,
}

impl PlannedSettings {
    fn new(d: &DesiredListener, group: GroupRef, acl: Option<AclRef>, marker: &str) -> Self {
        Self {
            group,
            acl,
            health_check: d.health_check.clone(),
            scheduler: d.scheduler,
            sticky_session: d.sticky_session,
            description: marker.to_string(),
        }
    }

    /// The settings the cloud takes, with the group's and ACL's ids.
    pub fn resolve(self, group_id: String, acl: Option<ListenerAcl>) -> ListenerSettings {
        ListenerSettings {
            backend_server_group_id: group_id,
            health_check: self.health_check,
            scheduler: self.scheduler,
            acl,
            sticky_session: self.sticky_session,
            description: self.description,
        }
    }

    /// Whether a listener already has these settings (never while its
    /// group or ACL is still to be created).
    fn matches(&self, have: &ListenerSettings) -> bool {
        let GroupRef::Id(group_id) = &self.group else {
            return false;
        };
        let acl = match &self.acl {
            None => None,
            Some(AclRef::Existing(acl)) => Some(acl.clone()),
            Some(AclRef::Created) => return false,
        };
        have == &self.clone().resolve(group_id.clone(), acl)
    }
}

/// One cloud call, in the order a plan makes them. Balancer, group and
/// listener calls act on the plan's balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add these tags to the balancer.
    TagBalancer {
        tags: BTreeMap<String, String>,
    },
    /// Change the balancer's size.
    ResizeBalancer {
        spec: String,
    },
    /// Create portico's ACL (one per Service, so no id is needed later).
    CreateAcl(CreateAclRequest),
    UpdateAcl {
        acl_id: String,
        entries: Vec<AclEntry>,
    },
    CreateGroup {
        name: String,
        servers: Vec<BackendServer>,
    },
    AddServers {
        group_id: String,
        servers: Vec<BackendServer>,
    },
    RemoveServers {
        group_id: String,
        servers: Vec<BackendServer>,
    },
    CreateListener {
        port: u16,
        protocol: ListenerProtocol,
        settings: PlannedSettings,
    },
    UpdateListener {
        listener_id: String,
        settings: PlannedSettings,
    },
    DeleteListener {
        listener_id: String,
    },
    DeleteGroup {
        group_id: String,
    },
    DeleteAcl {
        acl_id: String,
    },
}

impl Step {
    /// The cloud operation this step calls.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::TagBalancer { .. } | Self::ResizeBalancer { .. } => "ModifyLoadBalancer",
            Self::CreateAcl(_) => "CreateAcl",
            Self::UpdateAcl { .. } => "ModifyAcl",
            Self::CreateGroup { .. } => "CreateBackendServerGroup",
            Self::AddServers { .. } => "AddBackendServers",
            Self::RemoveServers { .. } => "RemoveBackendServers",
            Self::CreateListener { .. } => "CreateListener",
            Self::UpdateListener { .. } => "ModifyListener",
            Self::DeleteListener { .. } => "DeleteListener",
            Self::DeleteGroup { .. } => "DeleteBackendServerGroup",
            Self::DeleteAcl { .. } => "DeleteAcl",
        }
    }
}

/// The balancer a plan's steps act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    Existing(LoadBalancer),
    /// None exists: create this one first.
    Create(CreateLoadBalancerRequest),
}

/// What `ensure` does: on which balancer, which calls, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub balancer: Balancer,
    pub mode: Mode,
    pub steps: Vec<Step>,
}

/// Balancers order by creation time, then id, so that every reader picks
/// the same one of several.
fn age(lb: &LoadBalancer) -> (u64, &str) {
    (lb.created_at, &lb.id)
}

/// The oldest of `items` by their balancer's creation time, then id.
pub fn oldest<T>(items: &[T], balancer: impl Fn(&T) -> &LoadBalancer) -> Option<&T> {
    items.iter().min_by_key(|item| age(balancer(item)))
}

/// Whether portico reused the balancer (through the `id` annotation)
/// rather than made it: then it is never deleted, only released.
fn is_reused(balancer: &LoadBalancer) -> bool {
    balancer.tags.contains_key(REUSED_TAG)
}

/// The tags that mark a balancer reused for `key`.
fn reused_tags(key: &LoadBalancerKey) -> BTreeMap<String, String> {
    let mut tags = key.owner_tags();
    tags.insert(REUSED_TAG.into(), "true".into());
    tags
}

/// The chosen balancer, how much of it is portico's, what is on it, and
/// the calls that bring its own attributes in line.
struct Chosen<'a> {
    balancer: Balancer,
    mode: Mode,
    on_it: Option<&'a ObservedBalancer>,
    steps: Vec<Step>,
}

fn choose<'a>(found: &'a Found, desired: &Desired) -> Result<Chosen<'a>, ProviderError> {
    match found {
        Found::Named { id, balancer: None } => Err(ProviderError::NotFound {
            what: format!(
                "load balancer {id} named by annotation {}",
                annotation(keys::ID)
            ),
        }),
        Found::Named {
            id,
            balancer: Some(observed),
        } => {
            let lb = &observed.balancer;
            if let Some(uid) = lb.tags.get(tag::UID)
                && uid != &desired.key.uid
            {
                return Err(ProviderError::invalid(
                    Annotations::field(&annotation(keys::ID)),
                    format!("balancer {id} already belongs to another Service"),
                ));
            }
            let missing: BTreeMap<String, String> = reused_tags(&desired.key)
                .into_iter()
                .filter(|(k, v)| lb.tags.get(k) != Some(v))
                .collect();
            let steps = if missing.is_empty() {
                Vec::new()
            } else {
                vec![Step::TagBalancer { tags: missing }]
            };
            // Observed by `id` only when the spec names one; Keep is the safe reading otherwise.
            let foreign = desired
                .reuse
                .as_ref()
                .map_or(ForeignListeners::Keep, |r| r.foreign_listeners);
            Ok(Chosen {
                balancer: Balancer::Existing(lb.clone()),
                mode: Mode::Reused(foreign),
                on_it: Some(observed),
                steps,
            })
        }
        Found::Tagged(tagged) => {
            if tagged.len() > 1 {
                tracing::warn!(
                    count = tagged.len(),
                    "several balancers carry this Service's tags; using the oldest"
                );
            }
            match oldest(tagged, |o| &o.balancer) {
                None => Ok(Chosen {
                    balancer: Balancer::Create(CreateLoadBalancerRequest {
                        name: desired.name.clone(),
                        address_type: desired.address_type,
                        spec: desired.spec.clone(),
                        address: desired.address,
                        tags: desired.key.owner_tags(),
                    }),
                    mode: Mode::Owned,
                    on_it: None,
                    steps: Vec::new(),
                }),
                // Reused before, and the `id` annotation since removed: still not ours to change.
                Some(observed) if is_reused(&observed.balancer) => Ok(Chosen {
                    balancer: Balancer::Existing(observed.balancer.clone()),
                    mode: Mode::Reused(ForeignListeners::Keep),
                    on_it: Some(observed),
                    steps: Vec::new(),
                }),
                Some(observed) => Ok(Chosen {
                    balancer: Balancer::Existing(observed.balancer.clone()),
                    mode: Mode::Owned,
                    on_it: Some(observed),
                    steps: converge_owned(&observed.balancer, desired)?,
                }),
            }
        }
    }
}

/// The calls that bring a balancer portico made in line with `desired`.
///
/// # Errors
/// `InvalidSpec` for an address or address type change: neither can
/// change in place.
fn converge_owned(lb: &LoadBalancer, desired: &Desired) -> Result<Vec<Step>, ProviderError> {
    if let Some(addr) = desired.address
        && addr != lb.address
    {
        return Err(ProviderError::invalid(
            "spec.loadBalancerIP",
            format!(
                "the balancer has address {}; an address cannot change in place (re-create the Service)",
                lb.address
            ),
        ));
    }
    if desired.address_type != lb.address_type {
        return Err(ProviderError::invalid(
            Annotations::field(&annotation(keys::ADDRESS_TYPE)),
            format!(
                "the balancer is {}; the address type cannot change in place (re-create the Service)",
                lb.address_type.as_str()
            ),
        ));
    }
    Ok(match &desired.spec {
        Some(want) if want != &lb.spec => vec![Step::ResizeBalancer { spec: want.clone() }],
        _ => Vec::new(),
    })
}

/// The ACL the listeners carry, the calls before the listeners point at it,
/// and the calls once none uses portico's old ones.
struct AclPlan {
    attach: Option<AclRef>,
    before: Vec<Step>,
    after: Vec<Step>,
}

fn plan_acl(acls: &[Acl], desired: &Desired) -> AclPlan {
    let none = || AclPlan {
        attach: None,
        before: Vec::new(),
        after: Vec::new(),
    };
    match &desired.acl {
        DesiredAcl::User(acl) => AclPlan {
            attach: Some(AclRef::Existing(acl.clone())),
            ..none()
        },
        DesiredAcl::None => AclPlan {
            after: acls
                .iter()
                .map(|a| Step::DeleteAcl {
                    acl_id: a.id.clone(),
                })
                .collect(),
            ..none()
        },
        // The first of portico's ACLs is the Service's; any other stays
        // until the Service is deleted.
        DesiredAcl::SourceRanges(want) => match acls.first() {
            None => AclPlan {
                attach: Some(AclRef::Created),
                before: vec![Step::CreateAcl(CreateAclRequest {
                    name: desired.marker.clone(),
                    entries: want.clone(),
                    tags: desired.key.owner_tags(),
                })],
                ..none()
            },
            Some(acl) => {
                let mut have = acl.entries.clone();
                have.sort();
                let before = if &have == want {
                    Vec::new()
                } else {
                    vec![Step::UpdateAcl {
                        acl_id: acl.id.clone(),
                        entries: want.clone(),
                    }]
                };
                AclPlan {
                    attach: Some(AclRef::Existing(ListenerAcl {
                        acl_id: acl.id.clone(),
                        mode: AclMode::White,
                    })),
                    before,
                    ..none()
                }
            }
        },
    }
}

/// The balancer `desired` uses and the calls that make the cloud hold
/// exactly what it asks; no step when it already does.
///
/// # Errors
/// `NotFound` for an `id` naming no balancer; `InvalidSpec` for an `id`
/// naming another Service's balancer, an address or address type change,
/// or a clash with a foreign listener on a reused balancer.
pub fn plan(observed: &Observed, desired: &Desired) -> Result<Plan, ProviderError> {
    let chosen = choose(&observed.found, desired)?;
    let acl = plan_acl(&observed.acls, desired);
    let (listeners, groups) = chosen
        .on_it
        .map_or((&[][..], &[][..]), |o| (&o.listeners[..], &o.groups[..]));
    let listener_steps = listener_steps(
        chosen.mode,
        &desired.marker,
        &desired.listeners,
        acl.attach.as_ref(),
        listeners,
        groups,
    )?;
    let mut steps = chosen.steps;
    steps.extend(acl.before);
    steps.extend(listener_steps);
    steps.extend(acl.after);
    Ok(Plan {
        balancer: chosen.balancer,
        mode: chosen.mode,
        steps,
    })
}

/// What `delete` does with one balancer carrying the Service's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teardown {
    /// Portico made it: deleting it removes everything on it.
    Delete { balancer_id: String },
    /// Reused: remove portico's listeners and groups (`steps`), then the
    /// tags that say it was the Service's.
    Release {
        balancer_id: String,
        steps: Vec<Step>,
        untag: Vec<String>,
    },
}

/// What `delete` does: each balancer, oldest first, then portico's ACLs
/// (once no listener of the Service uses them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TeardownPlan {
    pub balancers: Vec<Teardown>,
    pub acls: Vec<String>,
}

/// The calls that remove everything `key` owns and give back what it reused.
pub fn teardown(key: &LoadBalancerKey, marker: &str, owned: &Owned) -> TeardownPlan {
    let mut balancers: Vec<&ObservedBalancer> = owned.balancers.iter().collect();
    balancers.sort_by_key(|o| age(&o.balancer));
    TeardownPlan {
        balancers: balancers
            .into_iter()
            .map(|o| {
                let balancer_id = o.balancer.id.clone();
                if is_reused(&o.balancer) {
                    Teardown::Release {
                        balancer_id,
                        steps: release_steps(marker, &o.listeners, &o.groups),
                        untag: reused_tags(key).into_keys().collect(),
                    }
                } else {
                    Teardown::Delete { balancer_id }
                }
            })
            .collect(),
        acls: owned.acls.iter().map(|a| a.id.clone()).collect(),
    }
}
