//! The portico provider for the SLB-style cloud, over HTTP.
//!
//! A Service's balancer is found by ownership tags (cluster + Service UID)
//! before anything is created; creates carry client tokens derived from the
//! key, so a create retried after a lost answer makes one balancer. Each
//! `ensure` reads what exists, plans the calls with pure functions
//! ([`plan`]), and makes only those: an unchanged spec makes no mutating call.

mod client;
pub mod options;
pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use portico_provider::{
    ClusterName, IngressStatus, IpMode, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, PortStatus, Prepared, Protocol, ProviderError, cluster_tags,
};
use tracing::Instrument;

pub use client::{ClientError, CloudClient};
pub use options::SlbOptions;
use plan::{Action, GroupRef, Mode};

use crate::cloud::model::*;

/// The SLB-only tag beside the contract's ownership tags
/// ([`portico_provider::tag`]): on a balancer reused through the `id`
/// annotation, which portico must never delete.
pub const REUSED_TAG: &str = "portico.io/reused";

/// How to reach the cloud.
#[derive(Debug, Clone)]
pub struct SlbProviderConfig {
    /// Base URL of the cloud API, e.g. `http://127.0.0.1:8480`.
    pub endpoint: String,
    pub cluster: ClusterName,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Retries of one call on 5xx, 429 and connection errors.
    pub max_retries: usize,
}

impl SlbProviderConfig {
    pub fn new(endpoint: impl Into<String>, cluster: ClusterName) -> Self {
        Self {
            endpoint: endpoint.into(),
            cluster,
            request_timeout: Duration::from_secs(10),
            max_retries: 4,
        }
    }
}

/// The provider.
#[derive(Debug, Clone)]
pub struct SlbProvider {
    config: SlbProviderConfig,
    client: CloudClient,
}

const _: () = {
    const fn assert_provider<P: LoadBalancerProvider>() {}
    assert_provider::<SlbProvider>();
};

/// Marks portico's listeners (description) and groups (name prefix) of one key.
pub fn marker(key: &LoadBalancerKey) -> String {
    key.cloud_name("portico", 24)
}

/// The idempotency token of creating `what` for `key`.
fn token(key: &LoadBalancerKey, what: &str) -> String {
    format!("portico-{}", key.hash(&[what], 40))
}

fn status(lb: &LoadBalancer, ports: Vec<PortStatus>) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: vec![IngressStatus {
            ip: Some(lb.address),
            hostname: None,
            ip_mode: Some(IpMode::Proxy),
            ports,
        }],
    }
}

fn port_status(listeners: &[Listener]) -> Vec<PortStatus> {
    let mut ports: Vec<PortStatus> = listeners
        .iter()
        .map(|l| PortStatus {
            port: l.port,
            protocol: match l.protocol {
                ListenerProtocol::Tcp => Protocol::Tcp,
                ListenerProtocol::Udp => Protocol::Udp,
            },
            error: None,
        })
        .collect();
    ports.sort_by_key(|p| (p.port, p.protocol));
    ports
}

impl SlbProvider {
    /// # Errors
    /// `Transient` when the HTTP client cannot be built.
    pub fn new(config: SlbProviderConfig) -> Result<Self, ProviderError> {
        let client =
            CloudClient::new(&config.endpoint, config.request_timeout, config.max_retries)?;
        Ok(Self { config, client })
    }

    pub fn config(&self) -> &SlbProviderConfig {
        &self.config
    }

    /// Balancers owned by `key`, oldest first.
    async fn owned(&self, key: &LoadBalancerKey) -> Result<Vec<LoadBalancer>, ClientError> {
        let mut found = self.client.balancers(&key.lookup_tags()).await?;
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(found)
    }

    /// Find (or make) the balancer for `spec`, with how much of it is ours.
    async fn balancer_for(
        &self,
        spec: &LoadBalancerSpec,
        opts: &SlbOptions,
    ) -> Result<(LoadBalancer, Mode), ProviderError> {
        let key = &spec.key;
        if let Some(id) = &opts.reuse_id {
            let lb = match self.client.balancer(id).await {
                Ok(lb) => lb,
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::NotFound {
                        what: format!(
                            "load balancer {id} named by annotation {}",
                            options::annotation(options::keys::ID)
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(uid) = lb.tags.get(portico_provider::tag::UID)
                && uid != &key.uid
            {
                return Err(ProviderError::invalid(
                    portico_provider::Annotations::field(&options::annotation(options::keys::ID)),
                    format!("balancer {id} already belongs to another Service"),
                ));
            }
            let mut want = key.owner_tags();
            want.insert(REUSED_TAG.into(), "true".into());
            let missing: BTreeMap<String, String> = want
                .into_iter()
                .filter(|(k, v)| lb.tags.get(k) != Some(v))
                .collect();
            let lb = if missing.is_empty() {
                lb
            } else {
                self.client
                    .update_balancer(
                        id,
                        &UpdateLoadBalancerRequest {
                            add_tags: missing,
                            ..UpdateLoadBalancerRequest::default()
                        },
                    )
                    .await?
            };
            let mode = if opts.force_override_listeners {
                Mode::ReuseOverride
            } else {
                Mode::ReuseAddOnly
            };
            return Ok((lb, mode));
        }

        let found = self.owned(key).await?;
        if found.len() > 1 {
            tracing::warn!(
                count = found.len(),
                "several balancers carry this Service's tags; using the oldest"
            );
        }
        if let Some(lb) = found.into_iter().next() {
            let mode = if lb.tags.contains_key(REUSED_TAG) {
                Mode::ReuseAddOnly
            } else {
                Mode::Owned
            };
            return Ok((lb, mode));
        }
        let request = CreateLoadBalancerRequest {
            name: key.cloud_name("portico", 80),
            address_type: opts.address_type,
            spec: opts.spec.clone(),
            address: plan::requested_address(spec, opts),
            tags: key.owner_tags(),
        };
        let lb = self
            .client
            .create_balancer(&request, &token(key, "balancer"))
            .await?;
        tracing::info!(balancer = %lb.id, address = %lb.address, "created load balancer");
        Ok((lb, Mode::Owned))
    }

    /// Bring the balancer's own attributes in line (spec); report what
    /// cannot change in place.
    async fn converge_balancer(
        &self,
        lb: LoadBalancer,
        mode: Mode,
        spec: &LoadBalancerSpec,
        opts: &SlbOptions,
    ) -> Result<LoadBalancer, ProviderError> {
        if mode != Mode::Owned {
            return Ok(lb);
        }
        if let Some(addr) = plan::requested_address(spec, opts)
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
        if opts.address_type != lb.address_type {
            return Err(ProviderError::invalid(
                portico_provider::Annotations::field(&options::annotation(
                    options::keys::ADDRESS_TYPE,
                )),
                format!(
                    "the balancer is {}; the address type cannot change in place (re-create the Service)",
                    lb.address_type.as_str()
                ),
            ));
        }
        match &opts.spec {
            Some(want) if want != &lb.spec => Ok(self
                .client
                .update_balancer(
                    &lb.id,
                    &UpdateLoadBalancerRequest {
                        spec: Some(want.clone()),
                        ..UpdateLoadBalancerRequest::default()
                    },
                )
                .await?),
            _ => Ok(lb),
        }
    }

    /// The ACL the listeners should carry: the user's, or portico's own made
    /// from `loadBalancerSourceRanges` (created or updated here).
    async fn resolve_acl(
        &self,
        spec: &LoadBalancerSpec,
        opts: &SlbOptions,
    ) -> Result<Option<ListenerAcl>, ProviderError> {
        if let Some(user) = &opts.acl {
            return Ok(Some(ListenerAcl {
                acl_id: user.id.clone(),
                mode: user.mode,
            }));
        }
        if spec.source_ranges.is_empty() {
            return Ok(None);
        }
        let mut want: Vec<AclEntry> = spec
            .source_ranges
            .iter()
            .map(|n| AclEntry::new(*n))
            .collect();
        want.sort();
        want.dedup();
        let key = &spec.key;
        let existing = self.client.acls(&key.lookup_tags()).await?;
        let acl = match existing.into_iter().next() {
            Some(acl) => {
                let mut have = acl.entries.clone();
                have.sort();
                if have == want {
                    acl
                } else {
                    self.client
                        .update_acl(
                            &acl.id,
                            &UpdateAclRequest {
                                name: None,
                                entries: want,
                            },
                        )
                        .await?
                }
            }
            None => {
                self.client
                    .create_acl(
                        &CreateAclRequest {
                            name: marker(key),
                            entries: want,
                            tags: key.owner_tags(),
                        },
                        &token(key, "acl"),
                    )
                    .await?
            }
        };
        Ok(Some(ListenerAcl {
            acl_id: acl.id,
            mode: AclMode::White,
        }))
    }

    /// Delete portico's ACLs of `key` (once no listener uses them).
    async fn delete_managed_acls(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        for acl in self.client.acls(&key.lookup_tags()).await? {
            client::gone_ok(self.client.delete_acl(&acl.id).await)?;
        }
        Ok(())
    }

    async fn execute(
        &self,
        lb: &str,
        key: &LoadBalancerKey,
        actions: Vec<Action>,
    ) -> Result<(), ProviderError> {
        let mut new_groups: BTreeMap<String, String> = BTreeMap::new();
        let resolve = |g: &GroupRef, new_groups: &BTreeMap<String, String>| match g {
            GroupRef::Id(id) => Ok(id.clone()),
            GroupRef::New(name) => new_groups
                .get(name)
                .cloned()
                .ok_or_else(|| ProviderError::transient(format!("group {name} was not created"))),
        };
        for action in actions {
            tracing::debug!(action = action.name(), balancer = lb, "cloud call");
            match action {
                Action::CreateGroup { name, servers } => {
                    let group = self
                        .client
                        .create_group(
                            lb,
                            &CreateBackendServerGroupRequest {
                                name: name.clone(),
                                servers,
                            },
                            &token(key, &format!("group/{lb}/{name}")),
                        )
                        .await?;
                    new_groups.insert(name, group.id);
                }
                Action::AddServers { group_id, servers } => {
                    self.client.add_servers(lb, &group_id, servers).await?;
                }
                Action::RemoveServers { group_id, servers } => {
                    self.client.remove_servers(lb, &group_id, servers).await?;
                }
                Action::CreateListener {
                    port,
                    protocol,
                    group,
                    mut settings,
                } => {
                    settings.backend_server_group_id = resolve(&group, &new_groups)?;
                    self.client
                        .create_listener(
                            lb,
                            &CreateListenerRequest::new(port, protocol, settings),
                            &token(key, &format!("listener/{lb}/{port}/{}", protocol.as_str())),
                        )
                        .await?;
                }
                Action::UpdateListener {
                    listener_id,
                    group,
                    mut settings,
                } => {
                    settings.backend_server_group_id = resolve(&group, &new_groups)?;
                    self.client
                        .update_listener(lb, &listener_id, &settings)
                        .await?;
                }
                Action::DeleteListener { listener_id } => {
                    client::gone_ok(self.client.delete_listener(lb, &listener_id).await)?;
                }
                Action::DeleteGroup { group_id } => {
                    client::gone_ok(self.client.delete_group(lb, &group_id).await)?;
                }
            }
        }
        Ok(())
    }

    async fn ensure_inner(
        &self,
        prepared: &Prepared<SlbOptions>,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let (spec, opts) = (&prepared.spec, &prepared.options);
        let key = &spec.key;
        let mark = marker(key);
        let (lb, mode) = self.balancer_for(spec, opts).await?;
        let lb = self.converge_balancer(lb, mode, spec, opts).await?;
        let acl = self.resolve_acl(spec, opts).await?;
        let desired = plan::desired_listeners(spec, opts, acl.clone())?;
        let listeners = self.client.listeners(&lb.id).await?;
        let groups = self.client.groups(&lb.id).await?;
        let actions = plan::plan(mode, &mark, &desired, &listeners, &groups)?;
        if !actions.is_empty() {
            tracing::info!(balancer = %lb.id, calls = actions.len(), "converging listeners");
        }
        self.execute(&lb.id, key, actions).await?;
        if acl.is_none() && opts.acl.is_none() {
            self.delete_managed_acls(key).await?;
        }
        Ok(status(&lb, PortStatus::of_listeners(&spec.listeners)))
    }

    fn check(&self, spec: &LoadBalancerSpec) -> Result<SlbOptions, ProviderError> {
        if spec.key.cluster != self.config.cluster {
            return Err(ProviderError::invalid(
                "cluster",
                format!(
                    "key belongs to cluster {}, this provider serves {}",
                    spec.key.cluster, self.config.cluster
                ),
            ));
        }
        plan::check_listeners(spec)?;
        SlbOptions::parse(spec)
    }

    async fn delete_inner(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        let mark = marker(key);
        for lb in self.owned(key).await? {
            if lb.tags.contains_key(REUSED_TAG) {
                let listeners = match self.client.listeners(&lb.id).await {
                    Err(e) if e.is_not_found() => continue,
                    other => other?,
                };
                let groups = match self.client.groups(&lb.id).await {
                    Err(e) if e.is_not_found() => continue,
                    other => other?,
                };
                let actions = plan::cleanup_reused(&mark, &listeners, &groups);
                self.execute(&lb.id, key, actions).await?;
                let mut remove: Vec<String> = key.owner_tags().into_keys().collect();
                remove.push(REUSED_TAG.into());
                let untag = self
                    .client
                    .update_balancer(
                        &lb.id,
                        &UpdateLoadBalancerRequest {
                            remove_tags: remove,
                            ..UpdateLoadBalancerRequest::default()
                        },
                    )
                    .await;
                match untag {
                    Err(e) if e.is_not_found() => {}
                    other => {
                        other?;
                    }
                }
                tracing::info!(balancer = %lb.id, "released reused load balancer");
            } else {
                client::gone_ok(self.client.delete_balancer(&lb.id).await)?;
                tracing::info!(balancer = %lb.id, "deleted load balancer");
            }
        }
        self.delete_managed_acls(key).await
    }

    async fn get_inner(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        let Some(lb) = self.owned(key).await?.into_iter().next() else {
            return Ok(None);
        };
        let listeners = match self.client.listeners(&lb.id).await {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let mark = marker(key);
        let ours: Vec<Listener> = listeners
            .into_iter()
            .filter(|l| l.settings.description == mark)
            .collect();
        Ok(Some(status(&lb, port_status(&ours))))
    }
}

#[async_trait]
impl LoadBalancerProvider for SlbProvider {
    type Options = SlbOptions;

    fn name(&self) -> &str {
        "slb"
    }

    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<SlbOptions>, ProviderError> {
        let options = self.check(&spec)?;
        Ok(Prepared::new(spec, options))
    }

    async fn ensure(
        &self,
        prepared: &Prepared<SlbOptions>,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let key = &prepared.spec.key;
        let span = tracing::info_span!("slb.ensure", service = %key, uid = %key.uid);
        self.ensure_inner(prepared).instrument(span).await
    }

    async fn get(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        let span = tracing::debug_span!("slb.get", service = %key, uid = %key.uid);
        self.get_inner(key).instrument(span).await
    }

    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        let span = tracing::info_span!("slb.delete", service = %key, uid = %key.uid);
        self.delete_inner(key).instrument(span).await
    }

    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
        let span = tracing::debug_span!("slb.list_owned", cluster = %self.config.cluster);
        async {
            let cluster = &self.config.cluster;
            let mut keys: Vec<LoadBalancerKey> = self
                .client
                .balancers(&cluster_tags(cluster))
                .await?
                .iter()
                .filter_map(|lb| LoadBalancerKey::from_tags(cluster, &lb.tags))
                .collect();
            keys.sort();
            keys.dedup();
            Ok(keys)
        }
        .instrument(span)
        .await
    }
}
