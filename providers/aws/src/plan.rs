//! Decide, then act: what AWS has ([`Observed`]) and the exact calls that
//! turn it into what a spec asks for ([`plan`]). No I/O here; `execute.rs`
//! carries the steps out.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::desired::ObservedHealth;
use crate::desired::{Desired, HealthSettings, ListenerTls, TARGET_BATCH, TgProtocol};
use crate::names;
use crate::options::IpAddressType;
use crate::security::{self, Rule};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLb {
    pub arn: String,
    pub name: String,
    pub dns_name: String,
    pub scheme: Option<String>,
    pub ip_address_type: Option<String>,
    pub vpc_id: Option<String>,
    /// Its security groups; none on an NLB created without any (AWS lets
    /// groups be added only to an NLB created with at least one).
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedListener {
    pub arn: String,
    pub port: u16,
    pub protocol: String,
    pub target_group_arn: Option<String>,
    /// The default certificate of a TLS listener.
    pub certificate: Option<String>,
    pub ssl_policy: Option<String>,
    pub alpn: Option<String>,
}

impl ObservedListener {
    /// Whether this listener has `tls` (or none, as a plain listener).
    fn tls_matches(&self, tls: Option<&ListenerTls>) -> bool {
        match tls {
            None => true,
            Some(t) => {
                self.certificate.as_deref() == Some(t.certificate.as_str())
                    && self.ssl_policy.as_deref() == Some(t.policy.as_str())
                    && self.alpn.as_deref().filter(|a| *a != "None") == t.alpn.as_deref()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedGroup {
    pub arn: String,
    pub name: String,
    pub health: ObservedHealth,
    /// Registered and not draining: a draining target is on its way out and
    /// must be registered again if it is still wanted.
    pub targets: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
    /// Its attributes; empty when not read (the spec manages none).
    pub attributes: BTreeMap<String, String>,
}

/// What AWS has for one NLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub lb: ObservedLb,
    pub tags: BTreeMap<String, String>,
    /// The NLB's attributes; empty when not read (the spec manages none).
    pub lb_attributes: BTreeMap<String, String>,
    pub listeners: Vec<ObservedListener>,
    pub groups: Vec<ObservedGroup>,
    pub security: ObservedSecurity,
}

/// Portico's own security group of one NLB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnGroup {
    pub id: String,
    /// Its ingress rules.
    pub rules: BTreeSet<Rule>,
}

/// The security groups around one NLB, as EC2 reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedSecurity {
    /// Portico's own group of this key, if it exists.
    pub own: Option<OwnGroup>,
    /// The user's groups (annotated by id or name) as ids.
    pub user_groups: Vec<String>,
    /// The rules whose peer is the own group, by the group that holds them.
    pub node_rules: BTreeMap<String, BTreeSet<Rule>>,
    /// The cluster's backend group in the NLB's VPC, when the spec wants it
    /// (found, or made by this ensure).
    pub backend: Option<String>,
    /// The rules whose peer is the backend group, by the group that holds them.
    pub shared_rules: BTreeMap<String, BTreeSet<Rule>>,
    /// Rules naming the own or the backend group that someone else added
    /// (not described as portico's), by the group that holds them: they
    /// count as present and are never revoked by an ensure.
    pub foreign_rules: BTreeMap<String, BTreeSet<Rule>>,
    /// The cluster groups of the instances the NLB targets.
    pub node_groups: BTreeSet<String>,
}

impl Observed {
    /// A just-created NLB: tagged at creation, nothing else yet.
    pub fn fresh(
        lb: ObservedLb,
        tags: BTreeMap<String, String>,
        security: ObservedSecurity,
    ) -> Self {
        Self {
            lb,
            tags,
            lb_attributes: BTreeMap::new(),
            listeners: Vec::new(),
            groups: Vec::new(),
            security,
        }
    }
}

/// Why the NLB must be deleted and made again, if it must: what AWS cannot
/// change in place. Its DNS name changes, so this is only done when the
/// Service asks for something the old NLB cannot be.
pub fn replacement(observed: &ObservedLb, desired: &Desired) -> Option<String> {
    match observed.scheme.as_deref() {
        Some(scheme) if scheme != desired.scheme.as_str() => Some(format!(
            "scheme {scheme} cannot be changed to {} in place",
            desired.scheme.as_str()
        )),
        _ => None,
    }
}

/// A target group known by ARN, or one this plan creates (by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Arn(String),
    Created(String),
}

/// One AWS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    SetIpAddressType(IpAddressType),
    /// Set these NLB attributes.
    SetLbAttributes(BTreeMap<String, String>),
    SetGroupAttributes {
        group: GroupRef,
        attributes: BTreeMap<String, String>,
    },
    AddTags {
        resource: GroupRef,
        tags: BTreeMap<String, String>,
    },
    RemoveTags {
        resource: GroupRef,
        keys: Vec<String>,
    },
    /// Create `Desired::groups[index]`.
    CreateGroup(usize),
    ModifyHealth {
        arn: String,
        health: HealthSettings,
    },
    Register {
        group: GroupRef,
        ids: Vec<String>,
    },
    Deregister {
        arn: String,
        ids: Vec<String>,
    },
    CreateListener {
        port: u16,
        protocol: TgProtocol,
        group: GroupRef,
        tls: Option<ListenerTls>,
    },
    ModifyListener {
        arn: String,
        protocol: TgProtocol,
        group: GroupRef,
        tls: Option<ListenerTls>,
    },
    DeleteListener {
        arn: String,
    },
    DeleteGroup {
        arn: String,
    },
    /// Give the NLB exactly these security groups.
    SetSecurityGroups(Vec<String>),
    Authorize {
        group: String,
        rules: Vec<Rule>,
        scope: RuleScope,
    },
    Revoke {
        group: String,
        rules: Vec<Rule>,
        scope: RuleScope,
    },
    DeleteSecurityGroup(String),
}

/// Whose a rule is, which its description says (and moto matches a
/// revoke by description).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    /// This Service's: on its own group, or naming its own group.
    Service,
    /// The cluster's: naming the shared backend group.
    Cluster,
}

impl Step {
    /// The AWS operation this step calls.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::SetIpAddressType(_) => "SetIpAddressType",
            Self::SetLbAttributes(_) => "ModifyLoadBalancerAttributes",
            Self::SetGroupAttributes { .. } => "ModifyTargetGroupAttributes",
            Self::AddTags { .. } => "AddTags",
            Self::RemoveTags { .. } => "RemoveTags",
            Self::CreateGroup(_) => "CreateTargetGroup",
            Self::ModifyHealth { .. } => "ModifyTargetGroup",
            Self::Register { .. } => "RegisterTargets",
            Self::Deregister { .. } => "DeregisterTargets",
            Self::CreateListener { .. } => "CreateListener",
            Self::ModifyListener { .. } => "ModifyListener",
            Self::DeleteListener { .. } => "DeleteListener",
            Self::DeleteGroup { .. } => "DeleteTargetGroup",
            Self::SetSecurityGroups(_) => "SetSecurityGroups",
            Self::Authorize { .. } => "ec2:AuthorizeSecurityGroupIngress",
            Self::Revoke { .. } => "ec2:RevokeSecurityGroupIngress",
            Self::DeleteSecurityGroup(_) => "ec2:DeleteSecurityGroup",
        }
    }
}

/// Tag changes that make `observed` carry `desired`. Only tags portico
/// manages are removed: additional tags it applied before (recorded in
/// [`names::TAG_ADDITIONAL_KEYS`]) that the annotation no longer lists.
fn tag_steps(
    resource: GroupRef,
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    out: &mut Vec<Step>,
) {
    let add: BTreeMap<String, String> = desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut managed: BTreeSet<&str> = observed
        .get(names::TAG_ADDITIONAL_KEYS)
        .map(|keys| keys.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    managed.insert(names::TAG_ADDITIONAL_KEYS);
    let remove: Vec<String> = managed
        .into_iter()
        .filter(|k| observed.contains_key(*k) && !desired.contains_key(*k))
        .map(String::from)
        .collect();
    if !add.is_empty() {
        out.push(Step::AddTags {
            resource: resource.clone(),
            tags: add,
        });
    }
    if !remove.is_empty() {
        out.push(Step::RemoveTags {
            resource,
            keys: remove,
        });
    }
}

/// The desired attributes whose value AWS does not have (values compared
/// without regard to case: AWS answers `true` to `True`).
fn differing(
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    desired
        .iter()
        .filter(|(k, v)| !observed.get(*k).is_some_and(|o| o.eq_ignore_ascii_case(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn batches(group: &GroupRef, ids: &BTreeSet<String>, register: bool, out: &mut Vec<Step>) {
    let ids: Vec<String> = ids.iter().cloned().collect();
    for chunk in ids.chunks(TARGET_BATCH) {
        out.push(match (register, group) {
            (true, g) => Step::Register {
                group: g.clone(),
                ids: chunk.to_vec(),
            },
            (false, GroupRef::Arn(arn)) => Step::Deregister {
                arn: arn.clone(),
                ids: chunk.to_vec(),
            },
            // A group created by this plan has nothing to deregister.
            (false, GroupRef::Created(_)) => return,
        });
    }
}

/// The calls that turn `observed` into `desired`, in a safe order: create
/// target groups and register targets, then deregister, then point
/// listeners at the right groups, and only then delete what is left over.
/// Empty when they already match.
pub fn plan(observed: &Observed, desired: &Desired) -> Vec<Step> {
    let lb = GroupRef::Arn(observed.lb.arn.clone());
    let mut lb_steps = Vec::new();
    if observed
        .lb
        .ip_address_type
        .as_deref()
        .is_some_and(|t| t != desired.ip_address_type.as_str())
    {
        lb_steps.push(Step::SetIpAddressType(desired.ip_address_type));
    }
    let lb_attributes = differing(&observed.lb_attributes, &desired.lb_attributes);
    if !lb_attributes.is_empty() {
        lb_steps.push(Step::SetLbAttributes(lb_attributes));
    }
    tag_steps(lb, &observed.tags, &desired.tags, &mut lb_steps);
    let (security_first, security_last) = security_steps(observed, desired);
    lb_steps.extend(security_first);

    let by_name: BTreeMap<&str, &ObservedGroup> = observed
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();
    let mut creates = Vec::new();
    let mut modifies = Vec::new();
    let mut registers = Vec::new();
    let mut deregisters = Vec::new();
    let mut refs = Vec::new();
    for (i, g) in desired.groups.iter().enumerate() {
        match by_name.get(g.name.as_str()) {
            None => {
                let r = GroupRef::Created(g.name.clone());
                creates.push(Step::CreateGroup(i));
                if !desired.group_attributes.is_empty() {
                    creates.push(Step::SetGroupAttributes {
                        group: r.clone(),
                        attributes: desired.group_attributes.clone(),
                    });
                }
                batches(&r, &g.targets, true, &mut registers);
                refs.push(r);
            }
            Some(o) => {
                let r = GroupRef::Arn(o.arn.clone());
                if !g.health.matches(&o.health) {
                    modifies.push(Step::ModifyHealth {
                        arn: o.arn.clone(),
                        health: g.health.clone(),
                    });
                }
                tag_steps(r.clone(), &o.tags, &desired.tags, &mut modifies);
                let attributes = differing(&o.attributes, &desired.group_attributes);
                if !attributes.is_empty() {
                    modifies.push(Step::SetGroupAttributes {
                        group: r.clone(),
                        attributes,
                    });
                }
                let add = g.targets.difference(&o.targets).cloned().collect();
                let remove = o.targets.difference(&g.targets).cloned().collect();
                batches(&r, &add, true, &mut registers);
                batches(&r, &remove, false, &mut deregisters);
                refs.push(r);
            }
        }
    }

    let mut listener_steps = Vec::new();
    let mut listener_deletes = Vec::new();
    let mut by_port: BTreeMap<u16, Vec<&ObservedListener>> = BTreeMap::new();
    for l in &observed.listeners {
        by_port.entry(l.port).or_default().push(l);
    }
    for list in by_port.values_mut() {
        list.sort_by(|a, b| a.arn.cmp(&b.arn));
    }
    for (g, r) in desired.groups.iter().zip(&refs) {
        let existing = by_port.remove(&g.port).unwrap_or_default();
        let mut existing = existing.into_iter();
        match existing.next() {
            None => listener_steps.push(Step::CreateListener {
                port: g.port,
                protocol: g.listener,
                group: r.clone(),
                tls: g.tls.clone(),
            }),
            Some(l) => {
                let points_right = match r {
                    GroupRef::Arn(arn) => l.target_group_arn.as_deref() == Some(arn.as_str()),
                    GroupRef::Created(_) => false,
                };
                if l.protocol != g.listener.as_str()
                    || !points_right
                    || !l.tls_matches(g.tls.as_ref())
                {
                    listener_steps.push(Step::ModifyListener {
                        arn: l.arn.clone(),
                        protocol: g.listener,
                        group: r.clone(),
                        tls: g.tls.clone(),
                    });
                }
            }
        }
        // A second listener on one port: never made by portico, but an emulator may allow it.
        for extra in existing {
            listener_deletes.push(Step::DeleteListener {
                arn: extra.arn.clone(),
            });
        }
    }
    for extra in by_port.into_values().flatten() {
        listener_deletes.push(Step::DeleteListener {
            arn: extra.arn.clone(),
        });
    }

    // Only this Service's groups go: an adopted NLB's old groups are the
    // old controller's, left alone once no listener uses them.
    let wanted: BTreeSet<&str> = desired.groups.iter().map(|g| g.name.as_str()).collect();
    let group_deletes = observed
        .groups
        .iter()
        .filter(|g| !wanted.contains(g.name.as_str()) && names::owned_by(&desired.key, &g.tags))
        .map(|g| Step::DeleteGroup { arn: g.arn.clone() });

    let mut steps = lb_steps;
    steps.extend(creates);
    steps.extend(modifies);
    steps.extend(registers);
    steps.extend(deregisters);
    steps.extend(listener_steps);
    steps.extend(listener_deletes);
    steps.extend(group_deletes);
    steps.extend(security_last);
    steps
}

/// The security-group calls: what opens goes first (before targets are
/// registered, so health checks can pass at once), what closes goes last
/// (after listeners stopped using it).
///
/// The shared rules for the backend group are only added or corrected on
/// the groups of this NLB's nodes, never removed from other groups:
/// other NLBs (other nodes, by `target-node-labels`) may rely on them. They
/// go with the backend group when the cluster's last NLB is deleted.
///
/// An NLB created without security groups can never get one: nothing is
/// planned for it (the provider says so in its log).
fn security_steps(observed: &Observed, desired: &Desired) -> (Vec<Step>, Vec<Step>) {
    let (mut first, mut last) = (Vec::new(), Vec::new());
    let sec = &observed.security;
    let want = &desired.security;
    if observed.lb.security_groups.is_empty() {
        return (first, last);
    }
    let mut lb_groups: BTreeSet<String> = sec.user_groups.iter().cloned().collect();
    if want.own_group
        && let Some(own) = &sec.own
    {
        lb_groups.insert(own.id.clone());
    }
    let backend = sec.backend.as_ref().filter(|_| want.shared_backend());
    lb_groups.extend(backend.cloned());
    let have: BTreeSet<String> = observed.lb.security_groups.iter().cloned().collect();
    // Attached once their rules are in: an NLB switching groups (adopted,
    // or moving to the backend group) never carries one that lets no one in.
    let attach = (!lb_groups.is_empty() && lb_groups != have)
        .then(|| Step::SetSecurityGroups(lb_groups.into_iter().collect()));
    let empty = BTreeSet::new();
    let mut rule_changes =
        |group: &str, observed: &BTreeSet<Rule>, desired: &BTreeSet<Rule>, scope| {
            let mut changes = security::diff(observed, desired);
            let foreign = sec.foreign_rules.get(group).unwrap_or(&empty);
            changes.authorize.retain(|r| !foreign.contains(r));
            if !changes.authorize.is_empty() {
                first.push(Step::Authorize {
                    group: group.to_string(),
                    rules: changes.authorize,
                    scope,
                });
            }
            if !changes.revoke.is_empty() {
                last.push(Step::Revoke {
                    group: group.to_string(),
                    rules: changes.revoke,
                    scope,
                });
            }
        };
    if let Some(backend) = backend {
        let shared = security::shared_backend_rules(backend, want.node_port_range);
        for group in &sec.node_groups {
            let observed = sec.shared_rules.get(group).unwrap_or(&empty);
            rule_changes(group, observed, &shared, RuleScope::Cluster);
        }
    }
    let Some(own) = &sec.own else {
        first.extend(attach);
        return (first, last);
    };
    if want.own_group {
        rule_changes(&own.id, &own.rules, &want.frontend, RuleScope::Service);
    }
    let own_node_rules = if want.own_group {
        security::backend_rules(&own.id, &want.own_node_ports())
    } else {
        BTreeSet::new()
    };
    let node_groups: BTreeSet<&String> = sec
        .node_groups
        .iter()
        .filter(|_| !own_node_rules.is_empty())
        .chain(sec.node_rules.keys())
        .collect();
    for group in node_groups {
        let desired = if sec.node_groups.contains(group) {
            &own_node_rules
        } else {
            &empty
        };
        let observed = sec.node_rules.get(group).unwrap_or(&empty);
        rule_changes(group, observed, desired, RuleScope::Service);
    }
    if !want.own_group {
        last.push(Step::DeleteSecurityGroup(own.id.clone()));
    }
    first.extend(attach);
    (first, last)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
