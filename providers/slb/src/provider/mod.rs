//! The portico provider for the SLB-style cloud, over HTTP: the contract's
//! calls, each read the same way.
//!
//! - `ensure`: what the spec asks ([`desired`]), what the cloud holds
//!   ([`observe`]), the calls between them ([`plan::plan`], pure), carried
//!   out in order (`execute`). An unchanged spec makes no mutating call.
//! - `delete`: what the Service owns ([`observe::owned`]), what to delete
//!   or give back ([`plan::teardown`], pure), carried out.
//!
//! A Service's balancer is found by ownership tags (cluster + Service UID)
//! before anything is created; creates carry client tokens derived from the
//! key, so a create retried after a lost answer makes one balancer.

mod client;
pub mod desired;
mod execute;
pub mod observe;
pub mod options;
pub mod plan;

use std::time::Duration;

use async_trait::async_trait;
use portico_provider::{
    ClusterName, IngressStatus, IpMode, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, PortStatus, Prepared, Protocol, ProviderError, ServiceAnnotations,
    cluster_tags,
};
use tracing::Instrument;

pub use client::{ClientError, CloudClient};
use desired::Desired;
pub use execute::Unresolved;
pub use options::SlbOptions;
use plan::Step;

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

    /// Observe, plan, execute.
    async fn ensure_inner(
        &self,
        prepared: &Prepared<SlbOptions>,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let (spec, opts) = (&prepared.spec, &prepared.options);
        let desired = Desired::new(spec, opts)?;
        let observed = observe::for_ensure(&self.client, &desired).await?;
        let plan = plan::plan(&observed, &desired)?;
        if !plan.steps.is_empty() {
            tracing::info!(
                mode = ?plan.mode,
                steps = plan.steps.len(),
                operations = ?plan.steps.iter().map(Step::operation).collect::<Vec<_>>(),
                "converging load balancer"
            );
        }
        let lb = execute::ensure(&self.client, &desired.key, plan).await?;
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
        desired::check_listeners(spec)?;
        SlbOptions::parse(spec)
    }

    async fn delete_inner(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        let owned = observe::owned(&self.client, key).await?;
        let plan = plan::teardown(key, &marker(key), &owned);
        execute::teardown(&self.client, key, plan).await
    }

    async fn get_inner(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        let tagged = self.client.balancers(&key.lookup_tags()).await?;
        let Some(lb) = plan::oldest(&tagged, |lb| lb) else {
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
        Ok(Some(status(lb, port_status(&ours))))
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

    /// Always: a node's [`options::DRAIN_NODE_LABEL`] weighs its backends
    /// down to 0 in every Service, so a change of labels alone must reach
    /// them (an unchanged Service's re-ensure only reads).
    fn selects_targets_by_node_labels(&self, _annotations: &ServiceAnnotations) -> bool {
        true
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
