//! EC2 for the network around an NLB: the nodes' instances (cached), their
//! cluster groups, the cluster's VPC, the zones and subnets of a new NLB.
//! Security groups portico makes and their rules are in `groups.rs`; the
//! `ec2:*` actions of the IAM policy are these two files' calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Tag};
use portico_provider::{Annotations, ProviderError};
use tracing::warn;

use crate::errors::from_sdk;
use crate::names;
use crate::options::{AwsOptions, PREFIX, Scheme, SubnetSelector};
use crate::provider::{AwsProvider, Result};
use crate::security::{self, CLUSTER_TAG_PREFIX, InstanceInfo};
use crate::subnets::{self, Discovery, RouteTableInfo, SubnetInfo};

/// How long what EC2 said about an instance or a group's tags is trusted:
/// they change rarely, and re-reading them on every ensure would cost a call
/// per Service at rest.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(600);
/// Ids per DescribeInstances / DescribeSecurityGroups filter.
pub(crate) const FILTER_BATCH: usize = 200;

pub(crate) type Tags = BTreeMap<String, String>;

/// Instances and group tags by id, and the backend group by VPC, with when
/// they were read.
#[derive(Debug, Default)]
pub(crate) struct Ec2Cache {
    instances: Mutex<HashMap<String, (Instant, InstanceInfo)>>,
    group_tags: Mutex<HashMap<String, (Instant, Tags)>>,
    pub(crate) backend_groups: Mutex<HashMap<String, (Instant, String)>>,
    /// Zone name → zone type: they never change.
    zone_types: Mutex<HashMap<String, String>>,
}

pub(crate) fn fresh<T: Clone>(map: &Mutex<HashMap<String, (Instant, T)>>, id: &str) -> Option<T> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.get(id)
        .filter(|(at, _)| at.elapsed() < CACHE_TTL)
        .map(|(_, v)| v.clone())
}

pub(crate) fn remember<T>(map: &Mutex<HashMap<String, (Instant, T)>>, id: String, value: T) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.insert(id, (Instant::now(), value));
}

pub(crate) fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

pub(crate) fn ec2_tags(tags: &[Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

fn subnets_field() -> String {
    Annotations::field(&format!("{PREFIX}subnets"))
}

impl AwsProvider {
    /// The instances `ids`, from the cache when it knows them. Ids EC2 does
    /// not know are left out (a filter, not `InstanceIds`, so one stale
    /// providerID does not fail the call).
    pub(crate) async fn instances(&self, ids: &BTreeSet<String>) -> Result<Vec<InstanceInfo>> {
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for id in ids {
            match fresh(&self.cache.instances, id) {
                Some(i) => out.push(i),
                None => unknown.push(id.clone()),
            }
        }
        for chunk in unknown.chunks(FILTER_BATCH) {
            let mut token = None;
            loop {
                let page = self
                    .ec2
                    .describe_instances()
                    .filters(filter("instance-id", chunk.iter().cloned()))
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| from_sdk("ec2:DescribeInstances", e))?;
                for i in page.reservations().iter().flat_map(|r| r.instances()) {
                    let Some(id) = i.instance_id() else { continue };
                    let mut groups: BTreeSet<String> = i
                        .security_groups()
                        .iter()
                        .filter_map(|g| g.group_id().map(String::from))
                        .collect();
                    groups.extend(
                        i.network_interfaces()
                            .iter()
                            .flat_map(|n| n.groups())
                            .filter_map(|g| g.group_id().map(String::from)),
                    );
                    let info = InstanceInfo {
                        id: id.to_string(),
                        vpc_id: i.vpc_id().map(String::from),
                        groups,
                        tags: ec2_tags(i.tags()),
                    };
                    remember(&self.cache.instances, id.to_string(), info.clone());
                    out.push(info);
                }
                token = page.next_token().map(String::from);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The `kubernetes.io/cluster/<name>` keys that mean this cluster:
    /// portico's own and those its nodes are tagged with (EKS tags nodes with
    /// the EKS cluster's name, which need not be portico's cluster name).
    pub(crate) fn cluster_keys(&self, instances: &[InstanceInfo]) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = instances
            .iter()
            .flat_map(|i| i.tags.keys())
            .filter(|k| k.starts_with(CLUSTER_TAG_PREFIX))
            .cloned()
            .collect();
        keys.insert(names::cluster_tag(&self.config.cluster));
        keys
    }

    /// The cluster's VPC: configured, else the one most of the nodes' instances are in.
    pub(crate) fn vpc(&self, instances: &[InstanceInfo]) -> Result<String> {
        if let Some(vpc) = &self.config.vpc_id {
            return Ok(vpc.clone());
        }
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for vpc in instances.iter().filter_map(|i| i.vpc_id.as_deref()) {
            *count.entry(vpc).or_default() += 1;
        }
        count
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(vpc, _)| vpc.to_string())
            .ok_or_else(|| {
                ProviderError::transient(
                    "no node has an EC2 instance (providerID aws:///zone/i-...) to learn the VPC from; \
                     set --aws-vpc-id or the subnets annotation",
                )
            })
    }

    /// The cluster groups of `instances` (see [`security::node_groups`]);
    /// instances with none are logged and skipped.
    pub(crate) async fn node_groups(&self, instances: &[InstanceInfo]) -> Result<BTreeSet<String>> {
        let all: BTreeSet<String> = instances.iter().flat_map(|i| i.groups.clone()).collect();
        let tags = self.group_tags(&all).await?;
        let own = names::cluster_tag(&self.config.cluster);
        let mut out = BTreeSet::new();
        for i in instances {
            match security::node_groups(i, &tags, &own) {
                Ok(groups) => out.extend(groups),
                Err(why) => {
                    warn!(instance = %i.id, "not opening a security group to the load balancer: {why}")
                }
            }
        }
        Ok(out)
    }

    /// Tags of `ids`, from the cache when it knows them.
    async fn group_tags(&self, ids: &BTreeSet<String>) -> Result<BTreeMap<String, Tags>> {
        let mut out = BTreeMap::new();
        let mut unknown = Vec::new();
        for id in ids {
            match fresh(&self.cache.group_tags, id) {
                Some(t) => {
                    out.insert(id.clone(), t);
                }
                None => unknown.push(id.clone()),
            }
        }
        for chunk in unknown.chunks(FILTER_BATCH) {
            for g in self
                .security_groups(vec![filter("group-id", chunk.iter().cloned())])
                .await?
            {
                if let Some(id) = g.group_id() {
                    let tags = ec2_tags(g.tags());
                    remember(&self.cache.group_tags, id.to_string(), tags.clone());
                    out.insert(id.to_string(), tags);
                }
            }
        }
        Ok(out)
    }

    async fn describe_subnets(
        &self,
        ids: Option<Vec<String>>,
        filters: Vec<Filter>,
    ) -> Result<Vec<SubnetInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ec2
                .describe_subnets()
                .set_subnet_ids(ids.clone())
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| match from_sdk("ec2:DescribeSubnets", e) {
                    ProviderError::NotFound { what } => {
                        ProviderError::invalid(subnets_field(), what)
                    }
                    other => other,
                })?;
            for s in page.subnets() {
                let (Some(id), Some(az), Some(vpc)) =
                    (s.subnet_id(), s.availability_zone(), s.vpc_id())
                else {
                    continue;
                };
                out.push(SubnetInfo {
                    id: id.to_string(),
                    az: az.to_string(),
                    vpc_id: vpc.to_string(),
                    tags: ec2_tags(s.tags()),
                });
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// The type of each zone in `zones` (`availability-zone`, `local-zone`,
    /// `wavelength-zone`), from the cache when it knows them.
    async fn zone_types(&self, zones: BTreeSet<String>) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut unknown = Vec::new();
        {
            let cache = self
                .cache
                .zone_types
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for z in zones {
                match cache.get(&z) {
                    Some(t) => {
                        out.insert(z, t.clone());
                    }
                    None => unknown.push(z),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(out);
        }
        let found = self
            .ec2
            .describe_availability_zones()
            .all_availability_zones(true)
            .filters(filter("zone-name", unknown))
            .send()
            .await
            .map_err(|e| from_sdk("ec2:DescribeAvailabilityZones", e))?;
        let mut cache = self
            .cache
            .zone_types
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for z in found.availability_zones() {
            if let (Some(name), Some(kind)) = (z.zone_name(), z.zone_type()) {
                cache.insert(name.to_string(), kind.to_string());
                out.insert(name.to_string(), kind.to_string());
            }
        }
        Ok(out)
    }

    async fn route_tables(&self, vpc: &str) -> Result<Vec<RouteTableInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ec2
                .describe_route_tables()
                .filters(filter("vpc-id", [vpc.to_string()]))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| from_sdk("ec2:DescribeRouteTables", e))?;
            for t in page.route_tables() {
                out.push(RouteTableInfo {
                    main: t.associations().iter().any(|a| a.main() == Some(true)),
                    subnets: t
                        .associations()
                        .iter()
                        .filter_map(|a| a.subnet_id().map(String::from))
                        .collect(),
                    to_internet: t
                        .routes()
                        .iter()
                        .any(|r| r.gateway_id().is_some_and(|g| g.starts_with("igw"))),
                });
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Subnet ids for a new NLB and their VPC: the annotation's, in its
    /// order, or one per zone discovered in `vpc` (see `subnets::choose`).
    pub(crate) async fn resolve_subnets(
        &self,
        opts: &AwsOptions,
        vpc: Option<&str>,
        cluster_keys: &BTreeSet<String>,
    ) -> Result<(Vec<String>, String)> {
        let vpc_filter: Vec<Filter> = vpc
            .iter()
            .map(|v| filter("vpc-id", [v.to_string()]))
            .collect();
        let chosen = match &opts.subnets {
            SubnetSelector::Listed(items) => {
                let (ids, tag_names): (Vec<String>, Vec<String>) = items
                    .iter()
                    .cloned()
                    .partition(|s| s.starts_with("subnet-"));
                let mut found = Vec::new();
                if !ids.is_empty() {
                    found.extend(self.describe_subnets(Some(ids), Vec::new()).await?);
                }
                if !tag_names.is_empty() {
                    let mut filters = vpc_filter.clone();
                    filters.push(filter("tag:Name", tag_names));
                    found.extend(self.describe_subnets(None, filters).await?);
                }
                let mut out = Vec::new();
                for item in items {
                    let mut matching: Vec<&SubnetInfo> = found
                        .iter()
                        .filter(|s| s.id == *item || s.tags.get("Name") == Some(item))
                        .collect();
                    matching.sort_by(|a, b| a.id.cmp(&b.id));
                    match matching.first() {
                        Some(s) => out.push((*s).clone()),
                        None => {
                            return Err(ProviderError::invalid(
                                subnets_field(),
                                format!("subnet {item:?} not found (by id or Name tag)"),
                            ));
                        }
                    }
                }
                out
            }
            SubnetSelector::Discover => {
                let Some(vpc) = vpc else {
                    return Err(ProviderError::transient("no VPC to discover subnets in"));
                };
                let all = self.describe_subnets(None, vpc_filter).await?;
                let zones: BTreeSet<String> = all.iter().map(|s| s.az.clone()).collect();
                let all = subnets::in_regular_zones(all, &self.zone_types(zones).await?);
                let found = match subnets::choose(&all, cluster_keys, opts.scheme, None) {
                    Discovery::Chosen(found) => found,
                    Discovery::NeedsRoutes => {
                        let tables = self.route_tables(vpc).await?;
                        let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
                        let public = subnets::public_subnets(&tables, &ids);
                        match subnets::choose(&all, cluster_keys, opts.scheme, Some(&public)) {
                            Discovery::Chosen(found) => found,
                            Discovery::NeedsRoutes => Vec::new(),
                        }
                    }
                };
                if found.is_empty() {
                    let role = subnets::role_tag(opts.scheme);
                    return Err(ProviderError::invalid(
                        subnets_field(),
                        format!(
                            "no subnet of {vpc} fits a{} load balancer: tag subnets with {role}=1 (and {}=owned|shared), or list them in this annotation",
                            if opts.scheme == Scheme::Internal {
                                "n internal"
                            } else {
                                "n internet-facing (none is tagged or routes to an internet gateway)"
                            },
                            names::cluster_tag(&self.config.cluster)
                        ),
                    ));
                }
                found
            }
        };
        let vpc = chosen.first().map(|s| s.vpc_id.clone()).unwrap_or_default();
        if let Some(other) = chosen.iter().find(|s| s.vpc_id != vpc) {
            return Err(ProviderError::invalid(
                subnets_field(),
                format!(
                    "subnet {} is in {}, not in {vpc} with the others",
                    other.id, other.vpc_id
                ),
            ));
        }
        Ok((chosen.into_iter().map(|s| s.id).collect(), vpc))
    }
}
