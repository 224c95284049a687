//! Read what the cloud holds for a Service into plain values, before any
//! decision: the balancers the plan may choose from (with their listeners
//! and groups) and portico's ACLs. Reads only; the plan decides.

use portico_provider::LoadBalancerKey;

use super::client::{ClientError, CloudClient};
use super::desired::{Desired, DesiredAcl};
use crate::cloud::model::*;

/// One balancer and what is on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBalancer {
    pub balancer: LoadBalancer,
    pub listeners: Vec<Listener>,
    pub groups: Vec<BackendServerGroup>,
}

/// The balancers that may be the Service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The balancer the `id` annotation names; `None` when the cloud has
    /// no balancer by that id.
    Named {
        id: String,
        balancer: Option<Box<ObservedBalancer>>,
    },
    /// The balancers carrying the Service's ownership tags, as the cloud
    /// lists them (normally one, or none before the first ensure).
    Tagged(Vec<ObservedBalancer>),
}

/// What `ensure` plans from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub found: Found,
    /// Portico's ACLs of the Service (by ownership tags). Not read while a
    /// user's ACL is configured: the plan leaves portico's alone then.
    pub acls: Vec<Acl>,
}

/// What `delete` plans from: everything carrying the Service's tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owned {
    /// Balancers that vanished while being read are left out.
    pub balancers: Vec<ObservedBalancer>,
    pub acls: Vec<Acl>,
}

async fn contents(
    client: &CloudClient,
    balancer: LoadBalancer,
) -> Result<ObservedBalancer, ClientError> {
    let listeners = client.listeners(&balancer.id).await?;
    let groups = client.groups(&balancer.id).await?;
    Ok(ObservedBalancer {
        balancer,
        listeners,
        groups,
    })
}

/// Everything the plan of `desired` may need.
///
/// # Errors
/// Any failed read, except a balancer named by `id` that does not exist
/// (that is an observation: [`Found::Named`] without a balancer).
pub async fn for_ensure(client: &CloudClient, desired: &Desired) -> Result<Observed, ClientError> {
    let found = match &desired.reuse {
        Some(reuse) => {
            let balancer = match client.balancer(&reuse.id).await {
                Ok(lb) => Some(Box::new(contents(client, lb).await?)),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            Found::Named {
                id: reuse.id.clone(),
                balancer,
            }
        }
        None => {
            let mut tagged = Vec::new();
            for lb in client.balancers(&desired.key.lookup_tags()).await? {
                tagged.push(contents(client, lb).await?);
            }
            Found::Tagged(tagged)
        }
    };
    let acls = match desired.acl {
        DesiredAcl::User(_) => Vec::new(),
        DesiredAcl::None | DesiredAcl::SourceRanges(_) => {
            client.acls(&desired.key.lookup_tags()).await?
        }
    };
    Ok(Observed { found, acls })
}

/// Everything `key` owns, for `delete`.
///
/// # Errors
/// Any failed read but "not found" on a balancer's contents (it is gone).
pub async fn owned(client: &CloudClient, key: &LoadBalancerKey) -> Result<Owned, ClientError> {
    let mut balancers = Vec::new();
    for lb in client.balancers(&key.lookup_tags()).await? {
        match contents(client, lb).await {
            Ok(observed) => balancers.push(observed),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let acls = client.acls(&key.lookup_tags()).await?;
    Ok(Owned { balancers, acls })
}
