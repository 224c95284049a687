//! Reading what AWS has: the NLB, its listeners, target groups with their
//! health checks and registered targets, and tags.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_elasticloadbalancingv2 as elb;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, LoadBalancerTypeEnum, Tag, TargetHealthStateEnum,
};
use futures::future::try_join_all;
use portico_provider::{LoadBalancerKey, ProviderError};
use tracing::debug;

use crate::adopt::AdoptRef;
use crate::desired::Desired;
use crate::errors::{from_sdk, gone_is_ok};
use crate::names;
use crate::plan::{
    Observed, ObservedGroup, ObservedHealth, ObservedLb, ObservedListener, ObservedSecurity,
};
use crate::provider::{AwsProvider, Result};

/// DescribeTags takes at most this many ARNs.
const TAGS_BATCH: usize = 20;

pub(crate) type TagsByArn = BTreeMap<String, BTreeMap<String, String>>;

pub(crate) fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

pub(crate) fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub(crate) fn observed_lb(lb: &elb::types::LoadBalancer) -> Option<ObservedLb> {
    Some(ObservedLb {
        arn: lb.load_balancer_arn()?.to_string(),
        name: lb.load_balancer_name().unwrap_or_default().to_string(),
        dns_name: lb.dns_name().unwrap_or_default().to_string(),
        scheme: lb.scheme().map(|s| s.as_str().to_string()),
        ip_address_type: lb.ip_address_type().map(|t| t.as_str().to_string()),
        vpc_id: lb.vpc_id().map(String::from),
        security_groups: lb.security_groups().to_vec(),
    })
}

/// Whether AWS says `lb` is a Network Load Balancer. Decided by `Type`, not
/// by the `net/` in the ARN (emulators write `app/` for every type).
pub(crate) fn is_network(lb: &elb::types::LoadBalancer) -> bool {
    lb.r#type() == Some(&LoadBalancerTypeEnum::Network)
}

pub(crate) fn forward_target(actions: &[Action]) -> Option<String> {
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
    /// Every Network Load Balancer in the region, every page.
    pub(crate) async fn network_load_balancers(&self) -> Result<Vec<elb::types::LoadBalancer>> {
        let mut out = Vec::new();
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
            out.extend(
                page.load_balancers()
                    .iter()
                    .filter(|lb| is_network(lb))
                    .cloned(),
            );
            marker = page.next_marker().map(String::from);
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// The NLB named `name`, if any. A load balancer of another type by that
    /// name is not ours to touch and counts as none (creating then fails with
    /// `DuplicateLoadBalancerName`). With duplicates (which only an emulator
    /// allows) the lowest ARN wins, so every call picks the same one.
    pub(crate) async fn find_lb(&self, name: &str) -> Result<Option<ObservedLb>> {
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

    /// The NLB with ARN `arn`, if there is one and it is a Network Load Balancer.
    pub(crate) async fn find_lb_by_arn(&self, arn: &str) -> Result<Option<ObservedLb>> {
        match self
            .elb
            .describe_load_balancers()
            .load_balancer_arns(arn)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .load_balancers()
                .iter()
                .filter(|lb| is_network(lb))
                .find_map(observed_lb)),
            Err(e) => match from_sdk("DescribeLoadBalancers", e) {
                ProviderError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The NLB `desired` names, and whether it is the one the Service's
    /// opt-in names (so that it may be adopted). An NLB adopted by ARN and
    /// since replaced (a scheme change) is found by its name, as ours only.
    pub(crate) async fn find_wanted(
        &self,
        desired: &Desired,
    ) -> Result<(Option<ObservedLb>, bool)> {
        let by_arn = match &desired.adopt {
            Some(AdoptRef::Arn { arn, .. }) => Some(self.find_lb_by_arn(arn).await?),
            _ => None,
        };
        match by_arn {
            Some(Some(lb)) => Ok((Some(lb), true)),
            Some(None) => Ok((self.find_lb(&desired.name).await?, false)),
            None => Ok((self.find_lb(&desired.name).await?, desired.adopt.is_some())),
        }
    }

    /// The NLBs whose names pass `candidate`, each with the key its tags
    /// name (this cluster's, `owned`): one listing of every NLB, then
    /// DescribeTags for the candidates only.
    pub(crate) async fn owned_lbs(
        &self,
        candidate: impl Fn(&str) -> bool,
    ) -> Result<Vec<(ObservedLb, LoadBalancerKey)>> {
        let lbs: Vec<ObservedLb> = self
            .network_load_balancers()
            .await?
            .iter()
            .filter(|lb| lb.load_balancer_name().is_some_and(&candidate))
            .filter_map(observed_lb)
            .collect();
        let arns: Vec<String> = lbs.iter().map(|lb| lb.arn.clone()).collect();
        let tags = self.tags(&arns).await?;
        Ok(lbs
            .into_iter()
            .filter_map(|lb| {
                let key = names::key_from_tags(&self.config.cluster, tags.get(&lb.arn)?)?;
                Some((lb, key))
            })
            .collect())
    }

    /// `key`'s NLBs under names other than `except`, found by their tags:
    /// its generated name, or one no longer asked for (a `load-balancer-name`
    /// changed or removed). Generated names of other Services are skipped
    /// unread, so this reads tags only of NLBs portico did not name itself.
    pub(crate) async fn lbs_of(
        &self,
        key: &LoadBalancerKey,
        except: &str,
    ) -> Result<Vec<ObservedLb>> {
        let generated = names::load_balancer_name(key);
        let candidate = |name: &str| {
            name != except && (name == generated || !names::is_generated_lb_name(name))
        };
        let mut found: Vec<ObservedLb> = self
            .owned_lbs(candidate)
            .await?
            .into_iter()
            .filter(|(_, k)| k == key)
            .map(|(lb, _)| lb)
            .collect();
        found.sort_by(|a, b| a.arn.cmp(&b.arn));
        Ok(found)
    }

    /// Tags of `arns`, 20 per DescribeTags call. A resource deleted since it
    /// was listed is left out of the map: AWS fails the whole call for it
    /// (`LoadBalancerNotFound`), so that batch is asked again one ARN at a time.
    pub(crate) async fn tags(&self, arns: &[String]) -> Result<TagsByArn> {
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
    pub(crate) async fn describe_tags(&self, arns: &[String]) -> Result<TagsByArn> {
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

    pub(crate) async fn listeners(&self, lb_arn: &str) -> Result<Vec<ObservedListener>> {
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
                    certificate: l
                        .certificates()
                        .iter()
                        .find(|c| c.is_default() != Some(false))
                        .and_then(|c| c.certificate_arn())
                        .map(String::from),
                    ssl_policy: l.ssl_policy().map(String::from),
                    alpn: l.alpn_policy().first().cloned(),
                });
            }
            marker = page.next_marker().map(String::from);
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Target groups attached to `lb_arn`, or (with `None`) every target group of the account.
    pub(crate) async fn target_groups(
        &self,
        lb_arn: Option<&str>,
    ) -> Result<Vec<elb::types::TargetGroup>> {
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

    pub(crate) async fn registered(&self, tg_arn: &str) -> Result<BTreeSet<String>> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(tg_arn)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeTargetHealth", e))?;
        // A draining target is leaving: not registered as far as the plan goes.
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter(|d| {
                d.target_health().and_then(|h| h.state()) != Some(&TargetHealthStateEnum::Draining)
            })
            .filter_map(|d| d.target()?.id().map(String::from))
            .collect())
    }

    pub(crate) async fn lb_attributes(&self, lb_arn: &str) -> Result<BTreeMap<String, String>> {
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
            .filter_map(|a| Some((a.key()?.to_string(), a.value()?.to_string())))
            .collect())
    }

    pub(crate) async fn group_attributes(&self, arn: &str) -> Result<BTreeMap<String, String>> {
        let out = self
            .elb
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeTargetGroupAttributes", e))?;
        Ok(out
            .attributes()
            .iter()
            .filter_map(|a| Some((a.key()?.to_string(), a.value()?.to_string())))
            .collect())
    }

    /// Everything AWS has for the NLB `lb`.
    pub(crate) async fn observe(
        &self,
        key: &LoadBalancerKey,
        lb: ObservedLb,
        desired: &Desired,
    ) -> Result<Observed> {
        // Attributes are read only when the Service manages some.
        let lb_attributes = async {
            if desired.lb_attributes.is_empty() {
                Ok(BTreeMap::new())
            } else {
                self.lb_attributes(&lb.arn).await
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
        let (listeners, mut groups, lb_attributes) =
            tokio::try_join!(self.listeners(&lb.arn), groups, lb_attributes)?;
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
        let group_attributes =
            try_join_all(groups.iter().filter_map(|g| g.target_group_arn()).map(
                |arn| async move {
                    if desired.group_attributes.is_empty() {
                        Ok(BTreeMap::new())
                    } else {
                        self.group_attributes(arn).await
                    }
                },
            ));
        let (mut tags, registered, group_attributes) =
            tokio::try_join!(self.tags(&arns), registered, group_attributes)?;
        let observed_groups = groups
            .iter()
            .filter(|g| g.target_group_arn().is_some())
            .zip(registered.into_iter().zip(group_attributes))
            .map(|(g, (targets, attributes))| {
                let arn = g.target_group_arn().unwrap_or_default().to_string();
                ObservedGroup {
                    name: g.target_group_name().unwrap_or_default().to_string(),
                    health: ObservedHealth {
                        protocol: g.health_check_protocol().map(|p| p.as_str().to_string()),
                        port: g.health_check_port().map(String::from),
                        path: g.health_check_path().map(String::from),
                        success_codes: g.matcher().and_then(|m| m.http_code()).map(String::from),
                        interval: g.health_check_interval_seconds(),
                        timeout: g.health_check_timeout_seconds(),
                        healthy: g.healthy_threshold_count(),
                        unhealthy: g.unhealthy_threshold_count(),
                    },
                    targets,
                    tags: tags.remove(&arn).unwrap_or_default(),
                    attributes,
                    arn,
                }
            })
            .collect();
        Ok(Observed {
            tags: tags.remove(&lb.arn).unwrap_or_default(),
            lb,
            lb_attributes,
            listeners,
            groups: observed_groups,
            security: ObservedSecurity::default(),
        })
    }
}
