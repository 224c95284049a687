//! The thin async half: read what AWS has, run the plan's steps.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::operation::register_targets::RegisterTargetsError;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, IpAddressType as SdkIpAddressType, LoadBalancerAttribute,
    LoadBalancerSchemeEnum, LoadBalancerTypeEnum, ProtocolEnum, SubnetMapping, Tag,
    TargetDescription, TargetTypeEnum,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use futures::future::try_join_all;
use portico_provider::{
    Annotations, Declined, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, Prepared, ProviderError, ServiceAnnotations,
};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::counter::CallCounter;
use crate::errors::{from_sdk, gone_is_ok};
use crate::names::{self, key_from_tags, owned_by};
use crate::options::{AwsOptions, Scheme, SubnetSelector};
use crate::plan::{
    Desired, GroupRef, HealthSettings, Observed, ObservedGroup, ObservedHealth, ObservedLb,
    ObservedListener, Step, TgProtocol, plan,
};
use crate::subnets::{self, SubnetInfo};

const CROSS_ZONE: &str = "load_balancing.cross_zone.enabled";
/// DescribeTags takes at most this many ARNs.
const TAGS_BATCH: usize = 20;

/// How the provider reaches AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsProviderConfig {
    /// Written into ownership tags; several clusters may share an account.
    pub cluster: portico_provider::ClusterName,
    /// Defaults to the SDK's region chain (`AWS_REGION`, profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// An emulator (moto, LocalStack); `AWS_ENDPOINT_URL` works too.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Restrict subnet discovery to this VPC.
    #[serde(default)]
    pub vpc_id: Option<String>,
}

impl AwsProviderConfig {
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: portico_provider::ClusterName::new(cluster),
            region: None,
            endpoint_url: None,
            vpc_id: None,
        }
    }
}

/// One Network Load Balancer per Service, instance targets on the NodePort.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    config: AwsProviderConfig,
    elb: elb::Client,
    ec2: ec2::Client,
    calls: CallCounter,
}

type Result<T, E = ProviderError> = std::result::Result<T, E>;
type TagsByArn = BTreeMap<String, BTreeMap<String, String>>;

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn observed_lb(lb: &elb::types::LoadBalancer) -> Option<ObservedLb> {
    Some(ObservedLb {
        arn: lb.load_balancer_arn()?.to_string(),
        name: lb.load_balancer_name().unwrap_or_default().to_string(),
        dns_name: lb.dns_name().unwrap_or_default().to_string(),
        scheme: lb.scheme().map(|s| s.as_str().to_string()),
        ip_address_type: lb.ip_address_type().map(|t| t.as_str().to_string()),
        vpc_id: lb.vpc_id().map(String::from),
    })
}

/// Whether AWS says `lb` is a Network Load Balancer. Decided by `Type`, not
/// by the `net/` in the ARN (emulators write `app/` for every type).
fn is_network(lb: &elb::types::LoadBalancer) -> bool {
    lb.r#type() == Some(&LoadBalancerTypeEnum::Network)
}

/// The load balancer an ensure works on.
enum Found {
    /// Made by this ensure, with the desired tags.
    Created(ObservedLb),
    /// Already there: whose it is must be read from its tags.
    Existing(ObservedLb),
}

/// `Conflict` unless `tags` (`None`: the balancer vanished) name `key`.
fn check_owned(
    key: &LoadBalancerKey,
    lb: &ObservedLb,
    tags: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let message = match tags {
        Some(t) if owned_by(key, t) => return Ok(()),
        Some(_) => format!(
            "load balancer {} exists but its tags do not name this Service",
            lb.name
        ),
        None => format!("load balancer {} vanished while it was read", lb.name),
    };
    Err(ProviderError::Conflict { message })
}

fn forward_target(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| {
        a.target_group_arn().map(String::from).or_else(|| {
            a.forward_config()?
                .target_groups()
                .first()?
                .target_group_arn()
                .map(String::from)
        })
    })
}

impl AwsProvider {
    /// Credentials and region from the SDK's default chain (environment,
    /// profile, web identity/IRSA, instance metadata), with the config's
    /// overrides; the SDK retries throttling and 5xx itself (standard mode).
    pub async fn new(config: AwsProviderConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(config, &sdk)
    }

    /// Use an SDK configuration built elsewhere (tests pass static
    /// credentials and a short retry backoff).
    pub fn from_sdk_config(config: AwsProviderConfig, sdk: &SdkConfig) -> Self {
        let calls = CallCounter::new();
        let mut elb_conf = elb::config::Builder::from(sdk).interceptor(calls.clone());
        let mut ec2_conf = ec2::config::Builder::from(sdk).interceptor(calls.clone());
        if let Some(url) = &config.endpoint_url {
            elb_conf = elb_conf.endpoint_url(url.clone());
            ec2_conf = ec2_conf.endpoint_url(url.clone());
        }
        Self {
            config,
            elb: elb::Client::from_conf(elb_conf.build()),
            ec2: ec2::Client::from_conf(ec2_conf.build()),
            calls,
        }
    }

    pub fn config(&self) -> &AwsProviderConfig {
        &self.config
    }

    /// The AWS calls this provider made (and the fault injector).
    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// The NLB named `name`, if any. A load balancer of another type by that
    /// name is not ours to touch and counts as none (creating then fails with
    /// `DuplicateLoadBalancerName`). With duplicates (which only an emulator
    /// allows) the lowest ARN wins, so every call picks the same one.
    async fn find_lb(&self, name: &str) -> Result<Option<ObservedLb>> {
        let out = match self.elb.describe_load_balancers().names(name).send().await {
            Ok(out) => out,
            Err(e) => {
                return match from_sdk("DescribeLoadBalancers", e) {
                    ProviderError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let mut found: Vec<ObservedLb> = out
            .load_balancers()
            .iter()
            .filter(|lb| lb.load_balancer_name() == Some(name) && is_network(lb))
            .filter_map(observed_lb)
            .collect();
        found.sort_by(|a, b| a.arn.cmp(&b.arn));
        Ok(found.into_iter().next())
    }

    /// Tags of `arns`, 20 per DescribeTags call. A resource deleted since it
    /// was listed is left out of the map: AWS fails the whole call for it
    /// (`LoadBalancerNotFound`), so that batch is asked again one ARN at a time.
    async fn tags(&self, arns: &[String]) -> Result<TagsByArn> {
        let batches = arns.chunks(TAGS_BATCH).map(|chunk| async move {
            match self.describe_tags(chunk).await {
                Err(ProviderError::NotFound { what }) if chunk.len() > 1 => {
                    debug!(%what, "a resource vanished before DescribeTags; asking one by one");
                    let singles = chunk.iter().map(|arn| async move {
                        gone_is_ok(self.describe_tags(std::slice::from_ref(arn)).await)
                    });
                    Ok(try_join_all(singles).await?.into_iter().flatten().collect())
                }
                other => gone_is_ok(other),
            }
        });
        Ok(try_join_all(batches).await?.into_iter().flatten().collect())
    }

    /// One DescribeTags call.
    async fn describe_tags(&self, arns: &[String]) -> Result<TagsByArn> {
        let out = self
            .elb
            .describe_tags()
            .set_resource_arns(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| from_sdk("DescribeTags", e))?;
        Ok(out
            .tag_descriptions()
            .iter()
            .filter_map(|d| Some((d.resource_arn()?.to_string(), tags_of(d.tags()))))
            .collect())
    }

    async fn listeners(&self, lb_arn: &str) -> Result<Vec<ObservedListener>> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .elb
                .describe_listeners()
                .load_balancer_arn(lb_arn)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeListeners", e))?;
            for l in page.listeners() {
                let (Some(arn), Some(port)) = (l.listener_arn(), l.port()) else {
                    continue;
                };
                out.push(ObservedListener {
                    arn: arn.to_string(),
                    port: u16::try_from(port).unwrap_or(0),
                    protocol: l
                        .protocol()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    target_group_arn: forward_target(l.default_actions()),
                });
            }
            marker = page.next_marker().map(String::from);
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Target groups attached to `lb_arn`, or (with `None`) every target group of the account.
    async fn target_groups(&self, lb_arn: Option<&str>) -> Result<Vec<elb::types::TargetGroup>> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .elb
                .describe_target_groups()
                .set_load_balancer_arn(lb_arn.map(String::from))
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeTargetGroups", e))?;
            out.extend(page.target_groups().iter().cloned());
            marker = page.next_marker().map(String::from);
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn registered(&self, tg_arn: &str) -> Result<BTreeSet<String>> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(tg_arn)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeTargetHealth", e))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target()?.id().map(String::from))
            .collect())
    }

    async fn cross_zone(&self, lb_arn: &str) -> Result<Option<bool>> {
        let out = self
            .elb
            .describe_load_balancer_attributes()
            .load_balancer_arn(lb_arn)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeLoadBalancerAttributes", e))?;
        Ok(out
            .attributes()
            .iter()
            .find(|a| a.key() == Some(CROSS_ZONE))
            .and_then(|a| a.value())
            .map(|v| v == "true"))
    }

    /// Everything AWS has for the NLB `lb`.
    async fn observe(
        &self,
        key: &LoadBalancerKey,
        lb: ObservedLb,
        desired: &Desired,
    ) -> Result<Observed> {
        let cross_zone = async {
            match desired.cross_zone {
                Some(_) => self.cross_zone(&lb.arn).await,
                None => Ok(None),
            }
        };
        let groups = async {
            match self.target_groups(Some(&lb.arn)).await {
                // AWS answers an empty list; moto fails when a listener once
                // pointed at a since-deleted group. Fall back to the key's
                // name prefix, which also finds groups left unattached.
                Err(ProviderError::NotFound { what }) => {
                    debug!(%what, "target groups by load balancer not found; listing by name prefix");
                    let prefix = names::target_group_prefix(key);
                    Ok(self
                        .target_groups(None)
                        .await?
                        .into_iter()
                        .filter(|g| {
                            g.target_group_name()
                                .is_some_and(|n| n.starts_with(&prefix))
                        })
                        .collect())
                }
                other => other,
            }
        };
        let (listeners, mut groups, cross_zone) =
            tokio::try_join!(self.listeners(&lb.arn), groups, cross_zone)?;
        // Groups a listener forwards to must be observed too; AWS lists them
        // with the load balancer, moto forgets those set by ModifyListener.
        let known: BTreeSet<&str> = groups.iter().filter_map(|g| g.target_group_arn()).collect();
        let missing: BTreeSet<String> = listeners
            .iter()
            .filter_map(|l| l.target_group_arn.clone())
            .filter(|arn| !known.contains(arn.as_str()))
            .collect();
        if !missing.is_empty() {
            let found = self
                .elb
                .describe_target_groups()
                .set_target_group_arns(Some(missing.into_iter().collect()))
                .send()
                .await
                .map_err(|e| from_sdk("DescribeTargetGroups", e));
            match found {
                Ok(out) => groups.extend(out.target_groups().iter().cloned()),
                Err(ProviderError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut arns = vec![lb.arn.clone()];
        arns.extend(
            groups
                .iter()
                .filter_map(|g| g.target_group_arn().map(String::from)),
        );
        let registered = try_join_all(
            groups
                .iter()
                .filter_map(|g| g.target_group_arn())
                .map(|arn| self.registered(arn)),
        );
        let (mut tags, registered) = tokio::try_join!(self.tags(&arns), registered)?;
        let observed_groups = groups
            .iter()
            .filter(|g| g.target_group_arn().is_some())
            .zip(registered)
            .map(|(g, targets)| {
                let arn = g.target_group_arn().unwrap_or_default().to_string();
                ObservedGroup {
                    name: g.target_group_name().unwrap_or_default().to_string(),
                    health: ObservedHealth {
                        protocol: g.health_check_protocol().map(|p| p.as_str().to_string()),
                        port: g.health_check_port().map(String::from),
                        path: g.health_check_path().map(String::from),
                        interval: g.health_check_interval_seconds(),
                        timeout: g.health_check_timeout_seconds(),
                        healthy: g.healthy_threshold_count(),
                        unhealthy: g.unhealthy_threshold_count(),
                    },
                    targets,
                    tags: tags.remove(&arn).unwrap_or_default(),
                    arn,
                }
            })
            .collect();
        Ok(Observed {
            tags: tags.remove(&lb.arn).unwrap_or_default(),
            lb,
            cross_zone,
            listeners,
            groups: observed_groups,
        })
    }

    async fn describe_subnets(
        &self,
        ids: Option<Vec<String>>,
        filters: Vec<ec2::types::Filter>,
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
                    ProviderError::NotFound { what } => ProviderError::invalid(
                        Annotations::field(&format!("{}subnets", crate::options::PREFIX)),
                        what,
                    ),
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
                    tags: s
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect(),
                });
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    fn filter(name: &str, values: impl IntoIterator<Item = String>) -> ec2::types::Filter {
        ec2::types::Filter::builder()
            .name(name)
            .set_values(Some(values.into_iter().collect()))
            .build()
    }

    /// Subnet ids for a new NLB: the annotation's, in its order, or one
    /// per zone discovered by tags.
    async fn resolve_subnets(&self, opts: &AwsOptions) -> Result<Vec<String>> {
        let field = Annotations::field(&format!("{}subnets", crate::options::PREFIX));
        let vpc_filter: Vec<_> = self
            .config
            .vpc_id
            .iter()
            .map(|v| Self::filter("vpc-id", [v.clone()]))
            .collect();
        match &opts.subnets {
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
                    filters.push(Self::filter("tag:Name", tag_names));
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
                        Some(s) => out.push(s.id.clone()),
                        None => {
                            return Err(ProviderError::invalid(
                                field,
                                format!("subnet {item:?} not found (by id or Name tag)"),
                            ));
                        }
                    }
                }
                Ok(out)
            }
            SubnetSelector::Discover => {
                let role = subnets::role_tag(opts.scheme);
                let mut filters = vpc_filter;
                filters.push(Self::filter("tag-key", [role.to_string()]));
                let all = self.describe_subnets(None, filters).await?;
                let chosen = subnets::choose(&all, &self.config.cluster, opts.scheme);
                if chosen.is_empty() {
                    return Err(ProviderError::invalid(
                        field,
                        format!(
                            "no subnet found for a{} load balancer: tag subnets with {role}=1 (and {}=owned|shared), or list them in this annotation",
                            if opts.scheme == Scheme::Internal {
                                "n internal"
                            } else {
                                "n internet-facing"
                            },
                            names::cluster_tag(&self.config.cluster)
                        ),
                    ));
                }
                Ok(chosen.into_iter().map(|s| s.id).collect())
            }
        }
    }

    /// Create the NLB; when its name is taken, the NLB that has it (which the
    /// caller must check is ours: it may be anyone's).
    async fn create_lb(&self, desired: &Desired, opts: &AwsOptions) -> Result<Found> {
        let subnet_ids = self.resolve_subnets(opts).await?;
        let eips = &opts.eip_allocations;
        let ips = &opts.private_ipv4_addresses;
        for (what, n) in [
            ("eip-allocations", eips.len()),
            ("private-ipv4-addresses", ips.len()),
        ] {
            if n > 0 && n != subnet_ids.len() {
                return Err(ProviderError::invalid(
                    Annotations::field(&format!("{}{what}", crate::options::PREFIX)),
                    format!(
                        "{n} given for {} subnets: one per subnet is required",
                        subnet_ids.len()
                    ),
                ));
            }
        }
        let mappings = subnet_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                SubnetMapping::builder()
                    .subnet_id(id)
                    .set_allocation_id(eips.get(i).cloned())
                    .set_private_ipv4_address(ips.get(i).map(|ip| ip.to_string()))
                    .build()
            })
            .collect();
        info!(name = %desired.name, subnets = ?subnet_ids, "creating network load balancer");
        let out = self
            .elb
            .create_load_balancer()
            .name(&desired.name)
            .r#type(LoadBalancerTypeEnum::Network)
            .scheme(LoadBalancerSchemeEnum::from(desired.scheme.as_str()))
            .ip_address_type(SdkIpAddressType::from(desired.ip_address_type.as_str()))
            .set_subnet_mappings(Some(mappings))
            .set_tags(Some(sdk_tags(&desired.tags)))
            .send()
            .await;
        match out {
            Ok(out) => out
                .load_balancers()
                .first()
                .and_then(observed_lb)
                .map(Found::Created)
                .ok_or_else(|| {
                    ProviderError::transient("CreateLoadBalancer returned no load balancer")
                }),
            Err(e) => match from_sdk("CreateLoadBalancer", e) {
                // Made in the meantime (by a previous attempt, or by someone
                // else): the caller adopts it only if its tags say it is ours.
                ProviderError::Conflict { message } => match self.find_lb(&desired.name).await? {
                    Some(lb) => Ok(Found::Existing(lb)),
                    None => Err(ProviderError::Conflict {
                        message: format!(
                            "the name {} is taken by a load balancer that is not a network load balancer: {message}",
                            desired.name
                        ),
                    }),
                },
                other => Err(other),
            },
        }
    }

    async fn create_group(
        &self,
        key: &LoadBalancerKey,
        vpc_id: Option<&str>,
        g: &crate::plan::DesiredGroup,
        tags: &BTreeMap<String, String>,
    ) -> Result<String> {
        let h = &g.health;
        let out = self
            .elb
            .create_target_group()
            .name(&g.name)
            .protocol(ProtocolEnum::from(g.protocol.as_str()))
            .port(i32::from(g.node_port))
            .set_vpc_id(vpc_id.map(String::from))
            .target_type(TargetTypeEnum::Instance)
            .health_check_enabled(true)
            .health_check_protocol(ProtocolEnum::from(h.protocol.as_str()))
            .health_check_port(h.port_string())
            .set_health_check_path(h.path.clone())
            .health_check_interval_seconds(h.interval)
            .health_check_timeout_seconds(h.timeout)
            .healthy_threshold_count(h.healthy)
            .unhealthy_threshold_count(h.unhealthy)
            .set_tags(Some(sdk_tags(tags)))
            .send()
            .await;
        match out {
            Ok(out) => out
                .target_groups()
                .first()
                .and_then(|t| t.target_group_arn())
                .map(String::from)
                .ok_or_else(|| {
                    ProviderError::transient("CreateTargetGroup returned no target group")
                }),
            Err(e) => match from_sdk("CreateTargetGroup", e) {
                conflict @ ProviderError::Conflict { .. } => {
                    // Left behind by an interrupted ensure: adopt it if it is ours.
                    let found = self
                        .elb
                        .describe_target_groups()
                        .names(&g.name)
                        .send()
                        .await
                        .map_err(|e| from_sdk("DescribeTargetGroups", e))?;
                    let Some(arn) = found
                        .target_groups()
                        .first()
                        .and_then(|t| t.target_group_arn())
                        .map(String::from)
                    else {
                        return Err(conflict);
                    };
                    let tags = self.tags(std::slice::from_ref(&arn)).await?;
                    if !tags.get(&arn).is_some_and(|t| owned_by(key, t)) {
                        return Err(conflict);
                    }
                    self.modify_health(&arn, h).await?;
                    Ok(arn)
                }
                other => Err(other),
            },
        }
    }

    async fn modify_health(&self, arn: &str, h: &HealthSettings) -> Result<()> {
        self.elb
            .modify_target_group()
            .target_group_arn(arn)
            .health_check_enabled(true)
            .health_check_protocol(ProtocolEnum::from(h.protocol.as_str()))
            .health_check_port(h.port_string())
            .set_health_check_path(h.path.clone())
            .health_check_interval_seconds(h.interval)
            .health_check_timeout_seconds(h.timeout)
            .healthy_threshold_count(h.healthy)
            .unhealthy_threshold_count(h.unhealthy)
            .send()
            .await
            .map_err(|e| from_sdk("ModifyTargetGroup", e))?;
        Ok(())
    }

    fn forward(arn: &str) -> Action {
        Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(arn)
            .build()
    }

    /// Carry out `steps` on `lb`; target groups created here are tracked by name.
    async fn execute(
        &self,
        key: &LoadBalancerKey,
        lb: &ObservedLb,
        desired: &Desired,
        steps: Vec<Step>,
    ) -> Result<()> {
        let mut created: BTreeMap<String, String> = BTreeMap::new();
        let resolve = |r: &GroupRef, created: &BTreeMap<String, String>| -> Result<String> {
            match r {
                GroupRef::Arn(arn) => Ok(arn.clone()),
                GroupRef::Created(name) => created.get(name).cloned().ok_or_else(|| {
                    ProviderError::transient(format!("target group {name} was not created"))
                }),
            }
        };
        for step in steps {
            debug!(op = step.operation(), "aws call");
            match step {
                Step::SetIpAddressType(t) => {
                    self.elb
                        .set_ip_address_type()
                        .load_balancer_arn(&lb.arn)
                        .ip_address_type(SdkIpAddressType::from(t.as_str()))
                        .send()
                        .await
                        .map_err(|e| from_sdk("SetIpAddressType", e))?;
                }
                Step::SetCrossZone(on) => {
                    self.elb
                        .modify_load_balancer_attributes()
                        .load_balancer_arn(&lb.arn)
                        .attributes(
                            LoadBalancerAttribute::builder()
                                .key(CROSS_ZONE)
                                .value(on.to_string())
                                .build(),
                        )
                        .send()
                        .await
                        .map_err(|e| from_sdk("ModifyLoadBalancerAttributes", e))?;
                }
                Step::AddTags { resource, tags } => {
                    let arn = resolve(&resource, &created)?;
                    self.elb
                        .add_tags()
                        .resource_arns(arn)
                        .set_tags(Some(sdk_tags(&tags)))
                        .send()
                        .await
                        .map_err(|e| from_sdk("AddTags", e))?;
                }
                Step::RemoveTags { resource, keys } => {
                    let arn = resolve(&resource, &created)?;
                    self.elb
                        .remove_tags()
                        .resource_arns(arn)
                        .set_tag_keys(Some(keys))
                        .send()
                        .await
                        .map_err(|e| from_sdk("RemoveTags", e))?;
                }
                Step::CreateGroup(i) => {
                    let g = desired.groups.get(i).ok_or_else(|| {
                        ProviderError::transient(format!("plan refers to group {i}"))
                    })?;
                    let arn = self
                        .create_group(key, lb.vpc_id.as_deref(), g, &desired.tags)
                        .await?;
                    created.insert(g.name.clone(), arn);
                }
                Step::ModifyHealth { arn, health } => self.modify_health(&arn, &health).await?,
                Step::Register { group, ids } => {
                    let arn = resolve(&group, &created)?;
                    self.register(&arn, &ids).await?;
                }
                Step::Deregister { arn, ids } => {
                    let result = self
                        .elb
                        .deregister_targets()
                        .target_group_arn(arn)
                        .set_targets(Some(target_descriptions(&ids)))
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| from_sdk("DeregisterTargets", e));
                    gone_is_ok(result)?;
                }
                Step::CreateListener {
                    port,
                    protocol,
                    group,
                } => {
                    let arn = resolve(&group, &created)?;
                    self.elb
                        .create_listener()
                        .load_balancer_arn(&lb.arn)
                        .port(i32::from(port))
                        .protocol(ProtocolEnum::from(protocol.as_str()))
                        .default_actions(Self::forward(&arn))
                        .send()
                        .await
                        .map_err(|e| from_sdk("CreateListener", e))?;
                }
                Step::ModifyListener {
                    arn,
                    protocol,
                    group,
                } => {
                    let tg = resolve(&group, &created)?;
                    self.elb
                        .modify_listener()
                        .listener_arn(arn)
                        .protocol(ProtocolEnum::from(protocol.as_str()))
                        .default_actions(Self::forward(&tg))
                        .send()
                        .await
                        .map_err(|e| from_sdk("ModifyListener", e))?;
                }
                Step::DeleteListener { arn } => self.delete_listener(&arn).await?,
                Step::DeleteGroup { arn } => self.delete_group(&arn).await?,
            }
        }
        Ok(())
    }

    async fn delete_listener(&self, arn: &str) -> Result<()> {
        gone_is_ok(
            self.elb
                .delete_listener()
                .listener_arn(arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("DeleteListener", e)),
        )
    }

    async fn delete_group(&self, arn: &str) -> Result<()> {
        gone_is_ok(
            self.elb
                .delete_target_group()
                .target_group_arn(arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("DeleteTargetGroup", e)),
        )
    }

    async fn delete_lb(&self, key: &LoadBalancerKey, lb: &ObservedLb) -> Result<()> {
        for l in self.listeners(&lb.arn).await? {
            self.delete_listener(&l.arn).await?;
        }
        // Every target group of this key, attached or left over by an
        // interrupted ensure: found by the key's name prefix, confirmed by tags.
        self.sweep_groups(key).await?;
        gone_is_ok(
            self.elb
                .delete_load_balancer()
                .load_balancer_arn(&lb.arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("DeleteLoadBalancer", e)),
        )
    }

    async fn sweep_groups(&self, key: &LoadBalancerKey) -> Result<()> {
        let prefix = names::target_group_prefix(key);
        let candidates: Vec<String> = self
            .target_groups(None)
            .await?
            .iter()
            .filter(|g| {
                g.target_group_name()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .filter_map(|g| g.target_group_arn().map(String::from))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let tags = self.tags(&candidates).await?;
        for arn in candidates {
            if tags.get(&arn).is_some_and(|t| owned_by(key, t)) {
                self.delete_group(&arn).await?;
            }
        }
        Ok(())
    }

    async fn ensure_inner(&self, prepared: &Prepared<AwsPrepared>) -> Result<LoadBalancerStatus> {
        let spec = &prepared.spec;
        let AwsPrepared {
            options: opts,
            desired,
        } = &prepared.options;
        let (opts, desired) = (opts.clone(), desired.clone());
        let mut found = match self.find_lb(&desired.name).await? {
            Some(lb) => Found::Existing(lb),
            None => self.create_lb(&desired, &opts).await?,
        };
        if let Found::Existing(lb) = &found
            && lb
                .scheme
                .as_deref()
                .is_some_and(|s| s != desired.scheme.as_str())
        {
            // Only ours may be deleted: check the tags before replacing.
            let tags = self.tags(std::slice::from_ref(&lb.arn)).await?;
            check_owned(&spec.key, lb, tags.get(&lb.arn))?;
            info!(from = ?lb.scheme, to = desired.scheme.as_str(), "scheme changed: replacing the load balancer");
            self.delete_lb(&spec.key, lb).await?;
            found = self.create_lb(&desired, &opts).await?;
        }
        let (lb, observed) = match found {
            Found::Existing(lb) => {
                let observed = self.observe(&spec.key, lb.clone(), &desired).await?;
                check_owned(&spec.key, &lb, Some(&observed.tags))?;
                (lb, observed)
            }
            Found::Created(lb) => {
                let observed = Observed::fresh(lb.clone(), desired.tags.clone());
                (lb, observed)
            }
        };
        let steps = plan(&observed, &desired);
        if steps.is_empty() {
            debug!("load balancer up to date");
        } else {
            info!(
                steps = steps.len(),
                ops = ?steps.iter().map(Step::operation).collect::<Vec<_>>(),
                "converging load balancer"
            );
        }
        self.execute(&spec.key, &lb, &desired, steps).await?;
        Ok(desired.status(&lb.dns_name))
    }

    /// Register `ids` in one call. When AWS refuses the batch because some
    /// instance cannot be a target (stopped or terminated while its Node
    /// still exists), register them one by one and leave out the refused:
    /// one broken node must not hold back every other node's change. The
    /// refused are tried again on the next ensure.
    async fn register(&self, arn: &str, ids: &[String]) -> Result<()> {
        let refused = match self.register_batch(arn, ids).await {
            Err(e) if is_invalid_target(&e) => e,
            other => return other.map_err(|e| from_sdk("RegisterTargets", e)),
        };
        let mut left_out = Vec::new();
        if ids.len() > 1 {
            for id in ids {
                match self.register_batch(arn, std::slice::from_ref(id)).await {
                    Ok(()) => {}
                    Err(e) if is_invalid_target(&e) => left_out.push(id.as_str()),
                    Err(e) => return Err(from_sdk("RegisterTargets", e)),
                }
            }
        } else {
            left_out.extend(ids.iter().map(String::as_str));
        }
        warn!(
            target_group = arn,
            instances = ?left_out,
            error = %from_sdk("RegisterTargets", refused),
            "AWS refused these instances as targets; registered the others"
        );
        Ok(())
    }

    async fn register_batch(
        &self,
        arn: &str,
        ids: &[String],
    ) -> std::result::Result<(), SdkError<RegisterTargetsError, HttpResponse>> {
        self.elb
            .register_targets()
            .target_group_arn(arn)
            .set_targets(Some(target_descriptions(ids)))
            .send()
            .await
            .map(|_| ())
    }
}

fn target_descriptions(ids: &[String]) -> Vec<TargetDescription> {
    ids.iter()
        .map(|id| TargetDescription::builder().id(id).build())
        .collect()
}

fn is_invalid_target(err: &SdkError<RegisterTargetsError, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("InvalidTarget")
}

/// What `prepare` reads from a spec: the annotations, and the NLB they ask
/// for (computed once, used by `ensure`).
#[derive(Debug, Clone)]
pub struct AwsPrepared {
    options: AwsOptions,
    desired: Desired,
}

#[async_trait]
impl LoadBalancerProvider for AwsProvider {
    type Options = AwsPrepared;

    fn name(&self) -> &str {
        "aws"
    }

    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<AwsPrepared>> {
        let options = AwsOptions::parse(&spec)?;
        let desired = Desired::new(&spec, &options)?;
        let unenforced = crate::plan::source_ranges_note(&spec).into_iter().collect();
        Ok(Prepared {
            spec,
            options: AwsPrepared { options, desired },
            unenforced,
        })
    }

    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        crate::options::declined_for_aws_lb_controller(annotations)
    }

    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        annotations.contains_key(crate::options::TARGET_NODE_LABELS)
    }

    async fn ensure(&self, prepared: &Prepared<AwsPrepared>) -> Result<LoadBalancerStatus> {
        let key = &prepared.spec.key;
        let span = info_span!("aws.ensure", service = %key, uid = %key.uid);
        self.ensure_inner(prepared).instrument(span).await
    }

    async fn get(&self, key: &LoadBalancerKey) -> Result<Option<LoadBalancerStatus>> {
        let span = info_span!("aws.get", service = %key, uid = %key.uid);
        async {
            let Some(lb) = self.find_lb(&names::load_balancer_name(key)).await? else {
                return Ok(None);
            };
            let listeners = self.listeners(&lb.arn).await?;
            let mut ports: Vec<(u16, TgProtocol)> = listeners
                .iter()
                .map(|l| {
                    let p = match l.protocol.as_str() {
                        "UDP" => TgProtocol::Udp,
                        "TCP_UDP" => TgProtocol::TcpUdp,
                        _ => TgProtocol::Tcp,
                    };
                    (l.port, p)
                })
                .collect();
            ports.sort();
            ports.dedup_by_key(|(port, _)| *port);
            Ok(Some(crate::plan::status(&lb.dns_name, &ports)))
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &LoadBalancerKey) -> Result<()> {
        let span = info_span!("aws.delete", service = %key, uid = %key.uid);
        async {
            match self.find_lb(&names::load_balancer_name(key)).await? {
                Some(lb) => {
                    let tags = self.tags(std::slice::from_ref(&lb.arn)).await?;
                    match tags.get(&lb.arn) {
                        // Deleted since it was found: only its target groups may be left.
                        None => self.sweep_groups(key).await,
                        Some(t) if !owned_by(key, t) => {
                            warn!(name = %lb.name, "not deleting a load balancer whose tags do not name this Service");
                            Ok(())
                        }
                        Some(_) => {
                            info!(name = %lb.name, "deleting network load balancer");
                            self.delete_lb(key, &lb).await
                        }
                    }
                }
                // The balancer is gone; its target groups may not be (interrupted delete).
                None => self.sweep_groups(key).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>> {
        let span = info_span!("aws.list_owned", cluster = %self.config.cluster);
        async {
            let mut arns = Vec::new();
            let mut marker = None;
            loop {
                let page = self
                    .elb
                    .describe_load_balancers()
                    .page_size(400)
                    .set_marker(marker)
                    .send()
                    .await
                    .map_err(|e| from_sdk("DescribeLoadBalancers", e))?;
                arns.extend(
                    page.load_balancers()
                        .iter()
                        .filter(|lb| {
                            is_network(lb)
                                && lb
                                    .load_balancer_name()
                                    .is_some_and(|n| n.starts_with(names::NAME_PREFIX))
                        })
                        .filter_map(|lb| lb.load_balancer_arn().map(String::from)),
                );
                marker = page.next_marker().map(String::from);
                if marker.is_none() {
                    break;
                }
            }
            let tags = self.tags(&arns).await?;
            let mut keys: Vec<LoadBalancerKey> = arns
                .iter()
                .filter_map(|arn| key_from_tags(&self.config.cluster, tags.get(arn)?))
                .collect();
            keys.sort();
            keys.dedup();
            Ok(keys)
        }
        .instrument(span)
        .await
    }
}
