//! Building the configured provider, including the embedded mock cloud.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use portico_aws::{AwsProvider, AwsProviderConfig};
use portico_provider::{ClusterName, DynProvider};
pub use portico_slb::embedded::EmbeddedSlb;
use portico_slb::provider::{SlbProvider, SlbProviderConfig};
use prometheus_client::registry::Registry;

use crate::Error;
use crate::cli::{AwsArgs, ProviderKind, SlbArgs};

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

pub async fn build_provider(
    kind: ProviderKind,
    cluster: &ClusterName,
    slb: &SlbArgs,
    aws: &AwsArgs,
    registry: &mut Registry,
) -> Result<BuiltProvider, Error> {
    match kind {
        ProviderKind::Slb => match &slb.slb_endpoint {
            Some(endpoint) => Ok(BuiltProvider {
                provider: slb_provider(endpoint.clone(), cluster.clone())?,
                embedded: None,
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
                })
            }
        },
        ProviderKind::Aws => {
            let config = AwsProviderConfig {
                cluster: cluster.clone(),
                region: aws.aws_region.clone(),
                endpoint_url: aws.aws_endpoint_url.clone(),
                vpc_id: aws.aws_vpc_id.clone(),
            };
            let provider = AwsProvider::new(config).await;
            provider.register_metrics(registry);
            Ok(BuiltProvider {
                provider: Arc::new(provider),
                embedded: None,
            })
        }
    }
}
