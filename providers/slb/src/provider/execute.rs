//! Carry out a plan: each step one cloud call, in order, with no decision
//! of its own beyond filling in the ids of what earlier steps created.
//! Creates carry idempotency tokens derived from the key, so a create
//! retried after a lost answer makes one object.

use std::collections::BTreeMap;

use portico_provider::{LoadBalancerKey, ProviderError};

use super::client::{CloudClient, gone_ok};
use super::plan::{AclRef, Balancer, GroupRef, Plan, Step, Teardown, TeardownPlan};
use crate::cloud::model::*;

/// A step refers to a group or ACL that no earlier step created: the plan
/// is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum Unresolved {
    #[error("group {0} is used before any step created it")]
    Group(String),
    #[error("the Service's ACL is used before any step created it")]
    Acl,
}

impl From<Unresolved> for ProviderError {
    fn from(err: Unresolved) -> Self {
        ProviderError::transient_from("inconsistent plan", err)
    }
}

/// The idempotency token of creating `what` for `key`.
fn token(key: &LoadBalancerKey, what: &str) -> String {
    format!("portico-{}", key.hash(&[what], 40))
}

/// The steps on one balancer, and the ids of what they created so far.
struct Run<'a> {
    client: &'a CloudClient,
    key: &'a LoadBalancerKey,
    lb: &'a str,
    groups: BTreeMap<String, String>,
    acl: Option<String>,
}

impl<'a> Run<'a> {
    fn new(client: &'a CloudClient, key: &'a LoadBalancerKey, lb: &'a str) -> Self {
        Self {
            client,
            key,
            lb,
            groups: BTreeMap::new(),
            acl: None,
        }
    }

    fn group(&self, group: GroupRef) -> Result<String, Unresolved> {
        match group {
            GroupRef::Id(id) => Ok(id),
            GroupRef::Created(name) => self
                .groups
                .get(&name)
                .cloned()
                .ok_or(Unresolved::Group(name)),
        }
    }

    fn acl(&self, acl: Option<AclRef>) -> Result<Option<ListenerAcl>, Unresolved> {
        match acl {
            None => Ok(None),
            Some(AclRef::Existing(acl)) => Ok(Some(acl)),
            Some(AclRef::Created) => self
                .acl
                .clone()
                .map(|acl_id| {
                    Some(ListenerAcl {
                        acl_id,
                        mode: AclMode::White,
                    })
                })
                .ok_or(Unresolved::Acl),
        }
    }

    async fn step(&mut self, step: Step) -> Result<(), ProviderError> {
        let (client, lb) = (self.client, self.lb);
        tracing::debug!(operation = step.operation(), balancer = lb, "cloud call");
        match step {
            Step::TagBalancer { tags } => {
                let request = UpdateLoadBalancerRequest {
                    add_tags: tags,
                    ..UpdateLoadBalancerRequest::default()
                };
                client.update_balancer(lb, &request).await?;
            }
            Step::ResizeBalancer { spec } => {
                let request = UpdateLoadBalancerRequest {
                    spec: Some(spec),
                    ..UpdateLoadBalancerRequest::default()
                };
                client.update_balancer(lb, &request).await?;
            }
            Step::CreateAcl(request) => {
                let acl = client.create_acl(&request, &token(self.key, "acl")).await?;
                self.acl = Some(acl.id);
            }
            Step::UpdateAcl { acl_id, entries } => {
                let request = UpdateAclRequest {
                    name: None,
                    entries,
                };
                client.update_acl(&acl_id, &request).await?;
            }
            Step::CreateGroup { name, servers } => {
                let token = token(self.key, &format!("group/{lb}/{name}"));
                let request = CreateBackendServerGroupRequest {
                    name: name.clone(),
                    servers,
                };
                let group = client.create_group(lb, &request, &token).await?;
                self.groups.insert(name, group.id);
            }
            Step::AddServers { group_id, servers } => {
                client.add_servers(lb, &group_id, servers).await?;
            }
            Step::RemoveServers { group_id, servers } => {
                client.remove_servers(lb, &group_id, servers).await?;
            }
            Step::CreateListener {
                port,
                protocol,
                settings,
            } => {
                let group_id = self.group(settings.group.clone())?;
                let acl = self.acl(settings.acl.clone())?;
                let request =
                    CreateListenerRequest::new(port, protocol, settings.resolve(group_id, acl));
                let token = token(
                    self.key,
                    &format!("listener/{lb}/{port}/{}", protocol.as_str()),
                );
                client.create_listener(lb, &request, &token).await?;
            }
            Step::UpdateListener {
                listener_id,
                settings,
            } => {
                let group_id = self.group(settings.group.clone())?;
                let acl = self.acl(settings.acl.clone())?;
                client
                    .update_listener(lb, &listener_id, &settings.resolve(group_id, acl))
                    .await?;
            }
            Step::DeleteListener { listener_id } => {
                gone_ok(client.delete_listener(lb, &listener_id).await)?;
            }
            Step::DeleteGroup { group_id } => {
                gone_ok(client.delete_group(lb, &group_id).await)?;
            }
            Step::DeleteAcl { acl_id } => {
                gone_ok(client.delete_acl(&acl_id).await)?;
            }
        }
        Ok(())
    }
}

/// Carry out `plan` for `key`: create the balancer first when the plan
/// says so, then every step in order.
///
/// # Errors
/// The first failed call; the steps before it stay done.
pub async fn ensure(
    client: &CloudClient,
    key: &LoadBalancerKey,
    plan: Plan,
) -> Result<LoadBalancer, ProviderError> {
    let lb = match plan.balancer {
        Balancer::Existing(lb) => lb,
        Balancer::Create(request) => {
            let lb = client
                .create_balancer(&request, &token(key, "balancer"))
                .await?;
            tracing::info!(balancer = %lb.id, address = %lb.address, "created load balancer");
            lb
        }
    };
    let mut run = Run::new(client, key, &lb.id);
    for step in plan.steps {
        run.step(step).await?;
    }
    Ok(lb)
}

/// Carry out `plan`: delete or release each balancer, then delete ACLs.
/// What is already gone counts as done.
///
/// # Errors
/// The first failed call; calling `delete` again finishes the job.
pub async fn teardown(
    client: &CloudClient,
    key: &LoadBalancerKey,
    plan: TeardownPlan,
) -> Result<(), ProviderError> {
    for balancer in plan.balancers {
        match balancer {
            Teardown::Delete { balancer_id } => {
                gone_ok(client.delete_balancer(&balancer_id).await)?;
                tracing::info!(balancer = %balancer_id, "deleted load balancer");
            }
            Teardown::Release {
                balancer_id,
                steps,
                untag,
            } => {
                let mut run = Run::new(client, key, &balancer_id);
                for step in steps {
                    run.step(step).await?;
                }
                let request = UpdateLoadBalancerRequest {
                    remove_tags: untag,
                    ..UpdateLoadBalancerRequest::default()
                };
                let untagged = client.update_balancer(&balancer_id, &request).await;
                gone_ok(untagged.map(|_| ()))?;
                tracing::info!(balancer = %balancer_id, "released reused load balancer");
            }
        }
    }
    for acl_id in plan.acls {
        gone_ok(client.delete_acl(&acl_id).await)?;
    }
    Ok(())
}
