//! The subcommands, wired from their arguments.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use portico_provider::ClusterName;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Error;
use crate::cli::{RunArgs, SlbServerArgs};
use crate::config::ControllerConfig;
use crate::k8s::{Api, Client, Namespace};
use crate::leader::LeaseConfig;
use crate::providers::{ProviderContext, build_provider, start_embedded_slb};
use crate::runtime::{ReplicaOptions, run_replica, run_replica_with};

/// A client from an explicit kubeconfig, or the usual inference.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                path: path.display().to_string(),
                source: Box::new(source),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source: Box::new(source),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| Error::NoKubeconfig {
                source: Box::new(source),
            })?,
    };
    Client::try_from(config).map_err(|source| Error::Client {
        source: Box::new(source),
    })
}

/// Cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
                        _ = tokio::signal::ctrl_c() => info!("interrupted: finishing in-flight work"),
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        trigger.cancel();
    });
    token
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let suffix: u32 = rand::random();
    format!(
        "{}-{suffix:08x}",
        if host.is_empty() { "portico" } else { &host }
    )
}

/// This cluster's identity in ownership tags: `--cluster-name` when given,
/// else derived from the `kube-system` namespace's UID, which is unique per
/// cluster and stable for its life (the default of `kubernetes` that many
/// controllers use makes two clusters in one account delete each other's
/// balancers).
pub async fn cluster_identity(client: &Client, given: Option<&str>) -> Result<ClusterName, Error> {
    if let Some(name) = given.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(ClusterName::new(name));
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube_system = namespaces
        .get("kube-system")
        .await
        .map_err(|source| match source {
            kube::Error::Api(status) => Error::Config(format!(
                "cannot read the kube-system namespace to derive this cluster's identity ({}); set --cluster-name",
                status.message
            )),
            other => Error::ApiUnreachable {
                source: Box::new(other),
            },
        })?;
    let uid = kube_system.metadata.uid.unwrap_or_default();
    let short: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    if short.len() < 16 {
        return Err(Error::Config(format!(
            "the kube-system namespace has no usable UID ({uid:?}); set --cluster-name"
        )));
    }
    Ok(ClusterName::new(format!("k8s-{short}")))
}

/// `portico run`.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let cluster = cluster_identity(&client, args.cluster_name.as_deref()).await?;
    info!(cluster = %cluster, "cluster identity (written into every balancer's ownership tags)");
    let mut registry = Registry::default();
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let config = ControllerConfig {
        cluster,
        class: args
            .load_balancer_class
            .clone()
            .unwrap_or_else(|| args.provider.default_class()),
        claim_classless: args
            .claim_classless
            .unwrap_or_else(|| args.provider.claims_classless_by_default()),
        workers: args.workers,
        resync: args.resync,
        node_debounce: args.node_debounce,
        gc: args.gc,
        ..ControllerConfig::default()
    };
    let context = ProviderContext {
        client: &client,
        config: &config,
        identity: &identity,
    };
    let built = build_provider(args.provider, context, &args.slb, &args.aws, &mut registry).await?;
    let options = ReplicaOptions {
        config,
        lease: args
            .leader_elect
            .then(|| LeaseConfig::new(&args.lease_namespace, identity.clone())),
        http_addr: Some(args.http_addr),
        identity,
    };
    let shutdown = shutdown_on_signal();
    let result = run_replica_with(
        client,
        built.provider.clone(),
        options,
        registry,
        shutdown,
        built.leader_task.clone(),
    )
    .await;
    if let Some(embedded) = built.embedded {
        embedded.shutdown().await;
    }
    result
}

/// `portico demo`: the tour of `portico-demo` around this controller, one
/// replica without leader election.
#[cfg(feature = "demo")]
pub async fn demo(args: portico_demo::DemoArgs) -> Result<(), Error> {
    portico_demo::run(args, |stage| {
        let options = ReplicaOptions {
            config: ControllerConfig {
                cluster: stage.cluster,
                node_debounce: stage.node_debounce,
                ..ControllerConfig::default()
            },
            lease: None,
            http_addr: None,
            identity: "portico-demo".into(),
        };
        run_replica(
            stage.client,
            stage.provider,
            options,
            stage.registry,
            stage.shutdown,
        )
    })
    .await?;
    Ok(())
}

/// `portico speaker`: the bare-metal announcer on this node.
pub async fn speaker(args: portico_arp::speaker::SpeakerArgs) -> Result<(), Error> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    portico_arp::speaker::run_with(client, args, shutdown_on_signal())
        .await
        .map_err(Error::Speaker)
}

/// `portico slb-server`.
pub async fn slb_server(args: SlbServerArgs) -> Result<(), Error> {
    let mut registry = Registry::default();
    let cloud = start_embedded_slb(
        args.vip_range,
        args.state.clone(),
        args.listen,
        &mut registry,
    )
    .await?;
    println!(
        "SLB mock cloud API on {} (OpenAPI at {}/openapi.json), VIPs from {}",
        cloud.url(),
        cloud.url(),
        args.vip_range
    );
    let shutdown = shutdown_on_signal();
    let metrics_task = match args.metrics_addr {
        Some(addr) => {
            let listener = crate::server::bind(addr).await?;
            let health = crate::server::Health::new(registry);
            health.set_ready(true);
            Some(tokio::spawn(crate::server::serve(
                listener,
                health,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    shutdown.cancelled().await;
    cloud.shutdown().await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(())
}
