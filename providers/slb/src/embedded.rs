//! The mock cloud and its data plane in one process: what `portico run
//! --provider slb` (without `--slb-endpoint`), `portico slb-server` and the
//! demo start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use prometheus_client::registry::Registry;
use tracing::info;

use crate::cloud::{CloudConfig, CloudError, CloudServer};
use crate::dataplane::{DataPlane, DataPlaneConfig};

/// The SLB-style mock cloud running inside this process: its HTTP API on
/// `listen` and its data plane forwarding VIP traffic to NodePorts.
#[derive(Debug)]
pub struct EmbeddedSlb {
    pub cloud: CloudServer,
    pub dataplane: DataPlane,
}

impl EmbeddedSlb {
    /// Start the data plane (its metrics go to `registry`), then the API.
    ///
    /// # Errors
    /// As [`CloudServer::start`].
    pub async fn start(
        vip_range: IpNet,
        state_file: Option<PathBuf>,
        listen: SocketAddr,
        registry: &mut Registry,
    ) -> Result<Self, CloudError> {
        let dataplane = DataPlane::new(DataPlaneConfig::default());
        dataplane.register_metrics(registry);
        let config = CloudConfig {
            vip_range,
            state_file,
            ..CloudConfig::default()
        };
        let cloud = CloudServer::start(config, listen, Arc::new(dataplane.clone())).await?;
        info!(api = %cloud.url(), %vip_range, "embedded SLB cloud running");
        Ok(Self { cloud, dataplane })
    }

    /// The API's endpoint, `http://ip:port`.
    pub fn url(&self) -> String {
        self.cloud.url()
    }

    /// As [`CloudServer::shutdown`].
    pub async fn shutdown(self) {
        self.cloud.shutdown().await;
    }
}
