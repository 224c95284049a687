//! Carrying out a plan: the mutating AWS calls, one per step.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::operation::register_targets::RegisterTargetsError;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, IpAddressType as SdkIpAddressType, LoadBalancerAttribute,
    LoadBalancerSchemeEnum, LoadBalancerTypeEnum, Matcher, ProtocolEnum, SubnetMapping,
    TargetDescription, TargetGroupAttribute, TargetTypeEnum,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use portico_provider::{Annotations, LoadBalancerKey, Notice, ProviderError};
use tracing::{debug, info, warn};

use crate::desired::{Desired, HealthSettings, ListenerTls};
use crate::errors::{from_sdk, gone_is_ok};
use crate::names::{self, owned_by};
use crate::options::AwsOptions;
use crate::plan::{GroupRef, ObservedLb, Step};
use crate::provider::{AwsProvider, Found, Result};
use crate::read::{observed_lb, sdk_tags};

impl AwsProvider {
    /// Create the NLB in `subnet_ids` with `security_groups`; when its name
    /// is taken, the NLB that has it (which the caller must check is ours:
    /// it may be anyone's).
    pub(crate) async fn create_lb(
        &self,
        desired: &Desired,
        opts: &AwsOptions,
        subnet_ids: &[String],
        security_groups: &[String],
    ) -> Result<Found> {
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
        info!(name = %desired.name, subnets = ?subnet_ids, ?security_groups, "creating network load balancer");
        let out = self
            .elb
            .create_load_balancer()
            .name(&desired.name)
            .r#type(LoadBalancerTypeEnum::Network)
            .scheme(LoadBalancerSchemeEnum::from(desired.scheme.as_str()))
            .ip_address_type(SdkIpAddressType::from(desired.ip_address_type.as_str()))
            .set_subnet_mappings(Some(mappings))
            .set_security_groups((!security_groups.is_empty()).then(|| security_groups.to_vec()))
            .set_tags(Some(sdk_tags(&desired.tags)))
            .send()
            .await;
        match out {
            Ok(out) => out
                .load_balancers()
                .first()
                .and_then(observed_lb)
                .map(|mut lb| {
                    // What it was created with, whether or not the answer repeats it.
                    lb.security_groups = security_groups.to_vec();
                    Found::Created(lb)
                })
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

    pub(crate) async fn create_group(
        &self,
        key: &LoadBalancerKey,
        vpc_id: Option<&str>,
        g: &crate::desired::DesiredGroup,
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
            .set_matcher(
                h.success_codes
                    .as_ref()
                    .map(|codes| Matcher::builder().http_code(codes).build()),
            )
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

    pub(crate) async fn modify_health(&self, arn: &str, h: &HealthSettings) -> Result<()> {
        self.elb
            .modify_target_group()
            .target_group_arn(arn)
            .health_check_enabled(true)
            .health_check_protocol(ProtocolEnum::from(h.protocol.as_str()))
            .health_check_port(h.port_string())
            .set_health_check_path(h.path.clone())
            .set_matcher(
                h.success_codes
                    .as_ref()
                    .map(|codes| Matcher::builder().http_code(codes).build()),
            )
            .health_check_interval_seconds(h.interval)
            .health_check_timeout_seconds(h.timeout)
            .healthy_threshold_count(h.healthy)
            .unhealthy_threshold_count(h.unhealthy)
            .send()
            .await
            .map_err(|e| from_sdk("ModifyTargetGroup", e))?;
        Ok(())
    }

    pub(crate) fn forward(arn: &str) -> Action {
        Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(arn)
            .build()
    }

    /// Carry out `steps` on `lb`; target groups created here are tracked by name.
    pub(crate) async fn execute(
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
        let mut steps: std::collections::VecDeque<Step> = steps.into();
        let mut refused = BTreeSet::new();
        while let Some(step) = steps.pop_front() {
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
                Step::SetLbAttributes(attributes) => {
                    self.elb
                        .modify_load_balancer_attributes()
                        .load_balancer_arn(&lb.arn)
                        .set_attributes(Some(
                            attributes
                                .iter()
                                .map(|(k, v)| {
                                    LoadBalancerAttribute::builder().key(k).value(v).build()
                                })
                                .collect(),
                        ))
                        .send()
                        .await
                        .map_err(|e| from_sdk("ModifyLoadBalancerAttributes", e))?;
                }
                Step::SetGroupAttributes { group, attributes } => {
                    let arn = resolve(&group, &created)?;
                    self.elb
                        .modify_target_group_attributes()
                        .target_group_arn(arn)
                        .set_attributes(Some(
                            attributes
                                .iter()
                                .map(|(k, v)| {
                                    TargetGroupAttribute::builder().key(k).value(v).build()
                                })
                                .collect(),
                        ))
                        .send()
                        .await
                        .map_err(|e| from_sdk("ModifyTargetGroupAttributes", e))?;
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
                    let left_out = match self.register(&arn, &ids).await {
                        // At the group's target quota: make room first (the
                        // plan deregisters after registering, so that no
                        // moment has fewer targets than needed), then again.
                        Err(ProviderError::QuotaExceeded { .. })
                            if steps.iter().any(|s| deregisters_from(s, &arn)) =>
                        {
                            info!(target_group = %arn, "target quota reached: deregistering before registering");
                            let (room, rest): (Vec<Step>, Vec<Step>) =
                                steps.drain(..).partition(|s| deregisters_from(s, &arn));
                            steps.extend(rest);
                            for s in room {
                                if let Step::Deregister { arn, ids } = s {
                                    self.deregister(&arn, &ids).await?;
                                }
                            }
                            self.register(&arn, &ids).await?
                        }
                        other => other?,
                    };
                    refused.extend(left_out);
                }
                Step::Deregister { arn, ids } => self.deregister(&arn, &ids).await?,
                Step::CreateListener {
                    port,
                    protocol,
                    group,
                    tls,
                } => {
                    let arn = resolve(&group, &created)?;
                    self.elb
                        .create_listener()
                        .load_balancer_arn(&lb.arn)
                        .port(i32::from(port))
                        .protocol(ProtocolEnum::from(protocol.as_str()))
                        .set_certificates(certificates(tls.as_ref()))
                        .set_ssl_policy(tls.as_ref().map(|t| t.policy.clone()))
                        .set_alpn_policy(tls.as_ref().and_then(|t| t.alpn.clone()).map(|a| vec![a]))
                        .default_actions(Self::forward(&arn))
                        .send()
                        .await
                        .map_err(|e| from_sdk("CreateListener", e))?;
                }
                Step::ModifyListener {
                    arn,
                    protocol,
                    group,
                    tls,
                } => {
                    let tg = resolve(&group, &created)?;
                    self.elb
                        .modify_listener()
                        .listener_arn(arn)
                        .protocol(ProtocolEnum::from(protocol.as_str()))
                        .set_certificates(certificates(tls.as_ref()))
                        .set_ssl_policy(tls.as_ref().map(|t| t.policy.clone()))
                        .set_alpn_policy(tls.as_ref().and_then(|t| t.alpn.clone()).map(|a| vec![a]))
                        .default_actions(Self::forward(&tg))
                        .send()
                        .await
                        .map_err(|e| from_sdk("ModifyListener", e))?;
                }
                Step::DeleteListener { arn } => self.delete_listener(&arn).await?,
                Step::DeleteGroup { arn } => self.delete_group(&arn).await?,
                Step::SetSecurityGroups(groups) => {
                    self.elb
                        .set_security_groups()
                        .load_balancer_arn(&lb.arn)
                        .set_security_groups(Some(groups))
                        .send()
                        .await
                        .map_err(|e| from_sdk("SetSecurityGroups", e))?;
                }
                Step::Authorize {
                    group,
                    rules,
                    scope,
                } => {
                    let description = self.describe_rule(key, scope);
                    self.authorize(&group, &rules, &description).await?;
                }
                Step::Revoke {
                    group,
                    rules,
                    scope,
                } => {
                    let description = self.describe_rule(key, scope);
                    self.revoke(&group, &rules, &description).await?;
                }
                Step::DeleteSecurityGroup(id) => self.delete_security_group(&id).await?,
            }
        }
        if !refused.is_empty() {
            let ids: Vec<String> = refused.into_iter().collect();
            self.notice(
                key,
                Notice::new(
                    "TargetRefused",
                    format!(
                        "AWS refused instance(s) {} as targets (stopped or terminated while the Node remains?); \
                         the other nodes are registered and these are tried again on the next sync",
                        ids.join(", ")
                    ),
                ),
            );
        }
        Ok(())
    }

    pub(crate) async fn deregister(&self, arn: &str, ids: &[String]) -> Result<()> {
        gone_is_ok(
            self.elb
                .deregister_targets()
                .target_group_arn(arn)
                .set_targets(Some(target_descriptions(ids)))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk("DeregisterTargets", e)),
        )
    }

    pub(crate) async fn delete_listener(&self, arn: &str) -> Result<()> {
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

    pub(crate) async fn delete_group(&self, arn: &str) -> Result<()> {
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

    pub(crate) async fn delete_lb(&self, key: &LoadBalancerKey, lb: &ObservedLb) -> Result<()> {
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

    pub(crate) async fn sweep_groups(&self, key: &LoadBalancerKey) -> Result<()> {
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

    /// Register `ids` in one call. When AWS refuses the batch because some
    /// instance cannot be a target (stopped or terminated while its Node
    /// still exists), register them one by one and leave out the refused:
    /// one broken node must not hold back every other node's change. The
    /// refused are returned (for an Event) and tried again on the next ensure.
    pub(crate) async fn register(&self, arn: &str, ids: &[String]) -> Result<Vec<String>> {
        let refused = match self.register_batch(arn, ids).await {
            Err(e) if is_invalid_target(&e) => e,
            other => {
                return other
                    .map(|()| Vec::new())
                    .map_err(|e| from_sdk("RegisterTargets", e));
            }
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
        Ok(left_out.into_iter().map(String::from).collect())
    }

    pub(crate) async fn register_batch(
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

fn certificates(tls: Option<&ListenerTls>) -> Option<Vec<Certificate>> {
    tls.map(|t| {
        vec![
            Certificate::builder()
                .certificate_arn(&t.certificate)
                .build(),
        ]
    })
}

fn deregisters_from(step: &Step, group: &str) -> bool {
    matches!(step, Step::Deregister { arn, .. } if arn == group)
}

fn target_descriptions(ids: &[String]) -> Vec<TargetDescription> {
    ids.iter()
        .map(|id| TargetDescription::builder().id(id).build())
        .collect()
}

fn is_invalid_target(err: &SdkError<RegisterTargetsError, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("InvalidTarget")
}
