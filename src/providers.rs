//! Building the configured provider, including the embedded mock cloud.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use portico_arp::provider::Ownership;
use portico_arp::{ArpProvider, ArpProviderConfig};
use portico_aws::{AwsProvider, AwsProviderConfig};
use portico_provider::{ClusterName, DynProvider};
pub use portico_slb::embedded::EmbeddedSlb;
use portico_slb::provider::{SlbProvider, SlbProviderConfig};
use prometheus_client::registry::Registry;

use crate::Error;
use crate::cli::{AwsArgs, ProviderKind, SlbArgs};
use crate::config::ControllerConfig;
use crate::k8s::Client;
use crate::runtime::LeaderTask;

/// Start the embedded mock cloud, its failure as a provider setup error.
pub async fn start_embedded_slb(
    vip_range: IpNet,
    state_file: Option<PathBuf>,
    listen: SocketAddr,
    registry: &mut Registry,
) -> Result<EmbeddedSlb, Error> {
    EmbeddedSlb::start(vip_range, state_file, listen, registry)
        .await
        .map_err(|source| Error::EmbeddedSlb { source })
}

/// A provider and whatever must live as long as it.
pub struct BuiltProvider {
    pub provider: Arc<dyn DynProvider>,
    pub embedded: Option<EmbeddedSlb>,
    /// What must run beside the controller while leading (arp: the pool sync).
    pub leader_task: Option<LeaderTask>,
}

impl std::fmt::Debug for BuiltProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltProvider")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

pub fn slb_provider(endpoint: String, cluster: ClusterName) -> Result<Arc<dyn DynProvider>, Error> {
    let provider = SlbProvider::new(SlbProviderConfig::new(endpoint, cluster))
        .map_err(|e| Error::Provider(format!("slb: {e}")))?;
    Ok(Arc::new(provider))
}

/// The arp provider for the controller configured by `config`, and its
/// leader task (IPPool and Service watches through `client`).
pub fn arp_provider(client: &Client, config: &ControllerConfig, identity: &str) -> BuiltProvider {
    let provider = ArpProvider::new(ArpProviderConfig::new(
        config.cluster.clone(),
        Ownership {
            class: config.class.clone(),
            claim_classless: config.claim_classless,
        },
        identity,
    ));
    let (sync, client) = (provider.clone(), client.clone());
    let leader_task: LeaderTask = Arc::new(move |stop| {
        let (provider, client) = (sync.clone(), client.clone());
        Box::pin(async move { provider.sync(client, stop).await })
    });
    BuiltProvider {
        provider: Arc::new(provider),
        embedded: None,
        leader_task: Some(leader_task),
    }
}

/// How the provider reaches the cluster and which Services are the controller's.
#[derive(Clone, Copy)]
pub struct ProviderContext<'a> {
    pub client: &'a Client,
    pub config: &'a ControllerConfig,
    /// This replica's name (in the provider's Events).
    pub identity: &'a str,
}

impl std::fmt::Debug for ProviderContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderContext")
            .field("config", self.config)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

pub async fn build_provider(
    kind: ProviderKind,
    context: ProviderContext<'_>,
    slb: &SlbArgs,
    aws: &AwsArgs,
    registry: &mut Registry,
) -> Result<BuiltProvider, Error> {
    let cluster = &context.config.cluster;
    match kind {
        ProviderKind::Slb => match &slb.slb_endpoint {
            Some(endpoint) => Ok(BuiltProvider {
                provider: slb_provider(endpoint.clone(), cluster.clone())?,
                embedded: None,
                leader_task: None,
            }),
            None => {
                let embedded = start_embedded_slb(
                    slb.slb_vip_range,
                    slb.slb_state.clone(),
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    registry,
                )
                .await?;
                let provider = slb_provider(embedded.url(), cluster.clone())?;
                Ok(BuiltProvider {
                    provider,
                    embedded: Some(embedded),
                    leader_task: None,
                })
            }
        },
        ProviderKind::Aws => {
            let config = AwsProviderConfig {
                cluster: cluster.clone(),
                region: aws.aws_region.clone(),
                endpoint_url: aws.aws_endpoint_url.clone(),
                vpc_id: aws.aws_vpc_id.clone(),
                node_port_range: aws.aws_node_port_range,
            };
            let provider = AwsProvider::new(config).await;
            provider.register_metrics(registry);
            Ok(BuiltProvider {
                provider: Arc::new(provider),
                embedded: None,
                leader_task: None,
            })
        }
        ProviderKind::Arp => Ok(arp_provider(
            context.client,
            context.config,
            context.identity,
        )),
    }
}
