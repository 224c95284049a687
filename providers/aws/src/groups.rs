//! Security groups through EC2: find and make portico's groups (each NLB's
//! own group, the cluster's backend group), read the rules that name them
//! (portico's, told apart from anyone else's by their description),
//! authorize and revoke, delete. What the rules should be is decided in
//! `security.rs` and `plan.rs`, with no I/O.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use ipnet::IpNet;
use portico_provider::{Annotations, ClusterName, LoadBalancerKey, ProviderError};
use tracing::{info, warn};

use crate::errors::{from_sdk, gone_is_ok};
use crate::names::{self, owned_by};
use crate::network::{Tags, ec2_tags, filter, fresh, remember};
use crate::options::PREFIX;
use crate::plan::OwnGroup;
use crate::provider::{AwsProvider, Result};
use crate::security::{Peer, Rule};

/// A security group to make: its name (unique per VPC), description, tags,
/// and whose it is (for the conflict message).
struct NewGroup<'a> {
    name: String,
    description: String,
    tags: &'a Tags,
    whose: &'static str,
}

/// A group made, or found made by someone with the right tags.
struct MadeGroup {
    id: String,
    rules: BTreeSet<Rule>,
}

/// The cluster's backend group in one VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendGroup {
    pub id: String,
    /// Made by this call: no rule can name it yet.
    pub new: bool,
}

/// Every ingress rule of `group`, one per peer.
fn rules_of(group: &ec2::types::SecurityGroup) -> BTreeSet<Rule> {
    described_rules_of(group).into_keys().collect()
}

/// Every ingress rule of `group` with its description (empty if none).
fn described_rules_of(group: &ec2::types::SecurityGroup) -> BTreeMap<Rule, String> {
    let mut out = BTreeMap::new();
    for p in group.ip_permissions() {
        let proto = p.ip_protocol().unwrap_or("-1");
        let rule = |peer| Rule::observed(proto, p.from_port(), p.to_port(), peer);
        let text = |d: Option<&str>| d.unwrap_or_default().to_string();
        for r in p.ip_ranges() {
            if let Some(net) = r.cidr_ip().and_then(|c| c.parse::<IpNet>().ok()) {
                out.insert(rule(Peer::Cidr(net)), text(r.description()));
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(net) = r.cidr_ipv6().and_then(|c| c.parse::<IpNet>().ok()) {
                out.insert(rule(Peer::Cidr(net)), text(r.description()));
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                out.insert(rule(Peer::Group(id.to_string())), text(g.description()));
            }
        }
    }
    out
}

/// Rules on another group (a node group) that name one of portico's groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NamingRules {
    /// Described as portico's: added by portico, so an ensure may revoke them.
    pub ours: BTreeSet<Rule>,
    /// Added by someone else, with their descriptions: they count as
    /// present, and only the deletion of the group they name removes them.
    pub foreign: BTreeMap<Rule, String>,
}

impl NamingRules {
    fn add(&mut self, rule: Rule, description: String) {
        if description.starts_with(RULE_DESCRIPTION_PREFIX) {
            self.ours.insert(rule);
        } else {
            self.foreign.insert(rule, description);
        }
    }
}

/// Every description portico gives a rule starts with this.
const RULE_DESCRIPTION_PREFIX: &str = "portico: ";

/// EC2's form of `rules`, each described as `description`.
fn permissions(rules: &[Rule], description: &str) -> Vec<IpPermission> {
    rules
        .iter()
        .map(|r| {
            let p = IpPermission::builder()
                .ip_protocol(&r.protocol)
                .from_port(r.from)
                .to_port(r.to);
            match &r.peer {
                Peer::Cidr(IpNet::V4(net)) => p.ip_ranges(
                    IpRange::builder()
                        .cidr_ip(net.to_string())
                        .description(description)
                        .build(),
                ),
                Peer::Cidr(IpNet::V6(net)) => p.ipv6_ranges(
                    Ipv6Range::builder()
                        .cidr_ipv6(net.to_string())
                        .description(description)
                        .build(),
                ),
                Peer::Group(id) => p.user_id_group_pairs(
                    UserIdGroupPair::builder()
                        .group_id(id)
                        .description(description)
                        .build(),
                ),
            }
            .build()
        })
        .collect()
}

/// How portico describes the rules it adds for `key`.
pub(crate) fn rule_description(key: &LoadBalancerKey) -> String {
    format!("{RULE_DESCRIPTION_PREFIX}{}/{}", key.namespace, key.name)
}

/// How portico describes the rules every NLB of `cluster` shares.
pub(crate) fn shared_rule_description(cluster: &ClusterName) -> String {
    format!("{RULE_DESCRIPTION_PREFIX}load balancers of cluster {cluster}")
}

impl AwsProvider {
    /// DescribeSecurityGroups with `filters`, every page.
    pub(crate) async fn security_groups(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<ec2::types::SecurityGroup>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ec2
                .describe_security_groups()
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| from_sdk("ec2:DescribeSecurityGroups", e))?;
            out.extend(page.security_groups().iter().cloned());
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Portico's own group of `key`, found by its ownership tags.
    pub(crate) async fn own_group(&self, key: &LoadBalancerKey) -> Result<Option<OwnGroup>> {
        let mut found = self
            .security_groups(vec![
                filter(
                    &format!("tag:{}", portico_provider::tag::CLUSTER),
                    [key.cluster.to_string()],
                ),
                filter(
                    &format!("tag:{}", portico_provider::tag::UID),
                    [key.uid.clone()],
                ),
            ])
            .await?;
        found.retain(|g| owned_by(key, &ec2_tags(g.tags())));
        found.sort_by(|a, b| a.group_id().cmp(&b.group_id()));
        Ok(found.first().and_then(|g| {
            Some(OwnGroup {
                id: g.group_id()?.to_string(),
                rules: rules_of(g),
            })
        }))
    }

    /// Create `key`'s own group in `vpc` (found again by name after an
    /// interrupted ensure, if its tags are `key`'s).
    pub(crate) async fn create_own_group(
        &self,
        key: &LoadBalancerKey,
        vpc: &str,
        tags: &Tags,
    ) -> Result<OwnGroup> {
        let made = self
            .create_security_group(
                NewGroup {
                    name: names::load_balancer_name(key),
                    description: format!(
                        "portico: clients of the load balancer of {}/{}",
                        key.namespace, key.name
                    ),
                    tags,
                    whose: "this Service",
                },
                vpc,
                |found| owned_by(key, found),
            )
            .await?;
        Ok(OwnGroup {
            id: made.id,
            rules: made.rules,
        })
    }

    /// Create a group in `vpc`. When a group of its name exists already
    /// (another replica or an interrupted ensure made it), take it if
    /// `ours` says its tags are right, else report a conflict.
    async fn create_security_group(
        &self,
        group: NewGroup<'_>,
        vpc: &str,
        ours: impl Fn(&Tags) -> bool,
    ) -> Result<MadeGroup> {
        let NewGroup {
            name,
            description,
            tags,
            whose,
        } = group;
        let tag_spec = TagSpecification::builder()
            .resource_type(ResourceType::SecurityGroup)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build();
        info!(%name, vpc, "creating a security group: {description}");
        let out = self
            .ec2
            .create_security_group()
            .group_name(&name)
            .description(description)
            .vpc_id(vpc)
            .tag_specifications(tag_spec)
            .send()
            .await;
        let message = match out {
            Ok(out) => {
                return Ok(MadeGroup {
                    id: out.group_id().unwrap_or_default().to_string(),
                    rules: BTreeSet::new(),
                });
            }
            Err(e) => match from_sdk("ec2:CreateSecurityGroup", e) {
                ProviderError::Conflict { message } => message,
                other => return Err(other),
            },
        };
        let found = self
            .security_groups(vec![
                filter("group-name", [name.clone()]),
                filter("vpc-id", [vpc.to_string()]),
            ])
            .await?;
        match found.first() {
            Some(g) if ours(&ec2_tags(g.tags())) => Ok(MadeGroup {
                id: g.group_id().unwrap_or_default().to_string(),
                rules: rules_of(g),
            }),
            _ => Err(ProviderError::Conflict {
                message: format!(
                    "security group {name} exists in {vpc} but its tags do not name {whose}: {message}"
                ),
            }),
        }
    }

    /// The rules that name `peer`, by the group holding them.
    pub(crate) async fn rules_referencing(
        &self,
        peer: &str,
    ) -> Result<BTreeMap<String, NamingRules>> {
        Ok(self
            .rules_naming(&[peer])
            .await?
            .remove(peer)
            .unwrap_or_default())
    }

    /// The rules that name each of `peers`, by peer and then by the group
    /// holding them: one call for all of them.
    pub(crate) async fn rules_naming(
        &self,
        peers: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, NamingRules>>> {
        let mut out: BTreeMap<String, BTreeMap<String, NamingRules>> = BTreeMap::new();
        if peers.is_empty() {
            return Ok(out);
        }
        let groups = self
            .security_groups(vec![filter(
                "ip-permission.group-id",
                peers.iter().map(|p| p.to_string()),
            )])
            .await?;
        for g in &groups {
            let Some(holder) = g.group_id() else { continue };
            for (rule, description) in described_rules_of(g) {
                if let Peer::Group(peer) = &rule.peer
                    && peers.contains(&peer.as_str())
                {
                    out.entry(peer.clone())
                        .or_default()
                        .entry(holder.to_string())
                        .or_default()
                        .add(rule, description);
                }
            }
        }
        Ok(out)
    }

    /// Revoke every rule that names a group about to be deleted (AWS keeps
    /// a referenced group): portico's with `ours` as their description,
    /// anyone else's with theirs.
    async fn revoke_all_naming(&self, peer: &str, ours: &str) -> Result<()> {
        for (holder, rules) in self.rules_referencing(peer).await? {
            if !rules.ours.is_empty() {
                let mine: Vec<Rule> = rules.ours.into_iter().collect();
                self.revoke(&holder, &mine, ours).await?;
            }
            for (rule, description) in rules.foreign {
                warn!(group = %holder, ?rule, %description, "revoking a rule someone else added: the group it names is being deleted");
                self.revoke(&holder, std::slice::from_ref(&rule), &description)
                    .await?;
            }
        }
        Ok(())
    }

    /// The cluster's backend groups, by the VPC they are in (at most one per
    /// VPC is made; the lowest id wins if someone made more).
    pub(crate) async fn find_backend_groups(
        &self,
        vpc: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let cluster = &self.config.cluster;
        let mut filters = vec![
            filter(
                &format!("tag:{}", portico_provider::tag::CLUSTER),
                [cluster.to_string()],
            ),
            filter(
                &format!("tag:{}", names::TAG_GROUP_ROLE),
                [names::BACKEND_ROLE.to_string()],
            ),
        ];
        filters.extend(vpc.map(|v| filter("vpc-id", [v.to_string()])));
        let mut found: Vec<(String, String)> = self
            .security_groups(filters)
            .await?
            .iter()
            .filter(|g| names::is_backend_group_of(cluster, &ec2_tags(g.tags())))
            .filter_map(|g| Some((g.vpc_id()?.to_string(), g.group_id()?.to_string())))
            .collect();
        found.sort();
        let mut by_vpc = BTreeMap::new();
        for (vpc, id) in found {
            by_vpc.entry(vpc).or_insert(id);
        }
        Ok(by_vpc)
    }

    /// The cluster's backend group in `vpc`: cached, else found by its
    /// tags, else made. Two replicas never make two: the name is the
    /// cluster's, and a duplicate name finds the first one.
    pub(crate) async fn backend_group(&self, vpc: &str) -> Result<BackendGroup> {
        if let Some(id) = fresh(&self.cache.backend_groups, vpc) {
            return Ok(BackendGroup { id, new: false });
        }
        let (id, new) = match self.find_backend_groups(Some(vpc)).await?.remove(vpc) {
            Some(id) => (id, false),
            None => (self.create_backend_group(vpc).await?, true),
        };
        remember(&self.cache.backend_groups, vpc.to_string(), id.clone());
        Ok(BackendGroup { id, new })
    }

    async fn create_backend_group(&self, vpc: &str) -> Result<String> {
        let cluster = &self.config.cluster;
        let tags = names::backend_group_tags(cluster);
        let made = self
            .create_security_group(
                NewGroup {
                    name: names::backend_group_name(cluster),
                    description: format!(
                        "portico: the load balancers of cluster {cluster}, let in by the nodes"
                    ),
                    tags: &tags,
                    whose: "this cluster's backend group",
                },
                vpc,
                |found| names::is_backend_group_of(cluster, found),
            )
            .await?;
        Ok(made.id)
    }

    /// The cluster's backend groups (by VPC) that no NLB carries any more.
    async fn unused_backend_groups(&self) -> Result<BTreeMap<String, String>> {
        let mut groups = self.find_backend_groups(None).await?;
        if groups.is_empty() {
            return Ok(groups);
        }
        let in_use: BTreeSet<String> = self
            .network_load_balancers()
            .await?
            .iter()
            .flat_map(|lb| lb.security_groups().iter().cloned())
            .collect();
        groups.retain(|_, id| !in_use.contains(id));
        Ok(groups)
    }

    /// Delete the cluster's backend groups that no NLB carries any more:
    /// first the shared rules that name them, then the groups.
    ///
    /// Looked at first without the backend lock, which stops every ensure:
    /// only the delete of a group's last NLB finds one unused and takes the
    /// lock, then looks again (an ensure may have attached it meanwhile).
    pub(crate) async fn release_unused_backend_groups(&self) -> Result<()> {
        if self.unused_backend_groups().await?.is_empty() {
            return Ok(());
        }
        let _alone = self.backend_lock.write().await;
        let description = shared_rule_description(&self.config.cluster);
        for (vpc, id) in self.unused_backend_groups().await? {
            self.revoke_all_naming(&id, &description).await?;
            info!(group = %id, vpc, "deleting the cluster's backend security group: no load balancer carries it");
            self.cache
                .backend_groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&vpc);
            self.delete_security_group(&id).await?;
        }
        Ok(())
    }

    /// The user's groups as ids: ids as given, names looked up in `vpc`.
    pub(crate) async fn user_groups(
        &self,
        listed: &[String],
        vpc: Option<&str>,
    ) -> Result<Vec<String>> {
        let (mut ids, names): (Vec<String>, Vec<String>) =
            listed.iter().cloned().partition(|g| g.starts_with("sg-"));
        if !names.is_empty() {
            let mut filters = vec![filter("group-name", names.clone())];
            filters.extend(vpc.map(|v| filter("vpc-id", [v.to_string()])));
            let found = self.security_groups(filters).await?;
            for n in &names {
                match found.iter().find(|g| g.group_name() == Some(n.as_str())) {
                    Some(g) => ids.push(g.group_id().unwrap_or_default().to_string()),
                    None => {
                        return Err(ProviderError::invalid(
                            Annotations::field(&format!("{PREFIX}security-groups")),
                            format!("security group {n:?} not found (by id or name)"),
                        ));
                    }
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    pub(crate) async fn authorize(
        &self,
        group: &str,
        rules: &[Rule],
        description: &str,
    ) -> Result<()> {
        let result = self
            .ec2
            .authorize_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(permissions(rules, description)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Someone (a concurrent ensure) added it meanwhile: it is there.
            Err(e)
                if e.as_service_error()
                    .and_then(|s| ec2::error::ProvideErrorMetadata::code(s))
                    == Some("InvalidPermission.Duplicate") =>
            {
                Ok(())
            }
            Err(e) => Err(from_sdk("ec2:AuthorizeSecurityGroupIngress", e)),
        }
    }

    /// Revoke `rules` (described as they were authorized: AWS matches
    /// without the description, moto with it).
    pub(crate) async fn revoke(
        &self,
        group: &str,
        rules: &[Rule],
        description: &str,
    ) -> Result<()> {
        gone_is_ok(
            self.ec2
                .revoke_security_group_ingress()
                .group_id(group)
                .set_ip_permissions(Some(permissions(rules, description)))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("ec2:RevokeSecurityGroupIngress", e)),
        )
    }

    /// Delete a security group. Right after its NLB is deleted, AWS refuses
    /// for a while (`DependencyViolation`: the NLB's network interfaces
    /// still hold it): a transient error, so the caller tries again later.
    pub(crate) async fn delete_security_group(&self, id: &str) -> Result<()> {
        gone_is_ok(
            self.ec2
                .delete_security_group()
                .group_id(id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("ec2:DeleteSecurityGroup", e)),
        )
    }

    /// Remove every trace of `key`'s own group: its rules on other groups, then the group.
    pub(crate) async fn delete_own_group(&self, key: &LoadBalancerKey) -> Result<()> {
        let Some(own) = self.own_group(key).await? else {
            return Ok(());
        };
        self.revoke_all_naming(&own.id, &rule_description(key))
            .await?;
        info!(group = %own.id, "deleting the load balancer's security group");
        self.delete_security_group(&own.id).await
    }

    /// Every key that owns a security group of this cluster (for `list_owned`).
    pub(crate) async fn keys_of_owned_groups(&self) -> Result<Vec<LoadBalancerKey>> {
        let groups = self
            .security_groups(vec![filter(
                &format!("tag:{}", portico_provider::tag::CLUSTER),
                [self.config.cluster.to_string()],
            )])
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| names::key_from_tags(&self.config.cluster, &ec2_tags(g.tags())))
            .collect())
    }
}
