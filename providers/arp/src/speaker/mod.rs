//! The speaker: watches Services of our load-balancer class, their
//! EndpointSlices, Nodes and the speaker pods (kube-runtime reflectors),
//! combines them with gossip membership, and tells the announcer which
//! VIPs this node owns. Decide (`world::decide`, pure), then act
//! (`Announcer::set_owned`, then publish).

pub mod publish;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::announce::{AnnounceMetrics, Announcer, Interface};
use crate::membership::{self, GossipConfig, MemberView};
use publish::Publisher;
use world::{Inputs, ServiceRef, VipDecision};

/// The load-balancer class the speaker serves unless told otherwise.
pub const DEFAULT_CLASS: &str = "portico.io/arp";

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration such as 100ms or 1s: {e}"))
}

/// `portico speaker` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SpeakerArgs {
    /// Kubeconfig to use; otherwise KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node this speaker runs on (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Interface to announce on; default: the one holding the node's InternalIP.
    #[arg(long, env = "PORTICO_SPEAKER_INTERFACE")]
    pub interface: Option<String>,
    /// The spec.loadBalancerClass whose VIPs are announced.
    #[arg(long, default_value = DEFAULT_CLASS, env = "PORTICO_LOAD_BALANCER_CLASS")]
    pub load_balancer_class: String,
    /// Address the gossip socket binds to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED), env = "PORTICO_GOSSIP_BIND")]
    pub gossip_bind: IpAddr,
    /// UDP port of gossip between speakers (the same on every node).
    #[arg(long, default_value_t = 7946, env = "PORTICO_GOSSIP_PORT")]
    pub gossip_port: u16,
    /// Address other speakers reach this one at; default: the node's InternalIP.
    #[arg(long, env = "PORTICO_GOSSIP_ADVERTISE")]
    pub gossip_advertise: Option<IpAddr>,
    /// One gossip probe of a random speaker per interval.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, env = "PORTICO_GOSSIP_PROBE_INTERVAL")]
    pub gossip_probe_interval: Duration,
    /// A suspected speaker that does not answer within this is down.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, env = "PORTICO_GOSSIP_SUSPECT_TIMEOUT")]
    pub gossip_suspect_timeout: Duration,
    /// A starting speaker announces nothing for this long, while gossip
    /// tells the others it is back (so a VIP moving to it is never answered
    /// by two nodes).
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "PORTICO_SPEAKER_SETTLE")]
    pub settle: Duration,
    /// Namespace of the speaker pods (the Kubernetes view of live speakers); default: all.
    #[arg(long, env = "POD_NAMESPACE")]
    pub speaker_namespace: Option<String>,
    /// Label selector of the speaker pods.
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=portico,app.kubernetes.io/component=speaker",
        env = "PORTICO_SPEAKER_SELECTOR"
    )]
    pub speaker_selector: String,
    /// Address of /metrics, /healthz and /readyz ("off" for none).
    #[arg(long, default_value = "0.0.0.0:7473", value_parser = parse_http_addr, env = "PORTICO_SPEAKER_HTTP_ADDR")]
    pub http_addr: HttpAddr,
}

/// Where the health server listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

fn parse_http_addr(raw: &str) -> Result<HttpAddr, String> {
    if raw == "off" {
        return Ok(HttpAddr(None));
    }
    raw.parse()
        .map(|a| HttpAddr(Some(a)))
        .map_err(|e| format!("{raw:?} is not an address such as 0.0.0.0:7473 or off: {e}"))
}

/// `portico speaker`: run until SIGTERM or Ctrl-C.
pub async fn run(args: SpeakerArgs) -> Result<(), Error> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let shutdown = shutdown_on_signal();
    run_with(client, args, shutdown).await
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: handing the VIPs over"),
                    _ = tokio::signal::ctrl_c() => info!("interrupted: handing the VIPs over"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        trigger.cancel();
    });
    token
}

/// A reflector whose every event wakes `changed`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task = async move {
        stream
            .for_each(|event| {
                if let Err(err) = event {
                    debug!(error = %err, "watch error (retrying)");
                }
                changed.notify_one();
                futures::future::ready(())
            })
            .await;
    };
    (reader, task)
}

/// Run the speaker with `client` until `shutdown` fires.
pub async fn run_with(
    client: Client,
    args: SpeakerArgs,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let me = args.node_name.clone();
    let node = wait_for_node(&client, &me, &shutdown).await?;
    let advertise_ip = args
        .gossip_advertise
        .or_else(|| world::internal_ip(&node))
        .ok_or_else(|| Error::Node {
            node: me.clone(),
            problem: "has no InternalIP address; set --gossip-advertise".into(),
        })?;
    let iface = match &args.interface {
        Some(name) => Interface::named(name)?,
        None => Interface::holding(advertise_ip)?,
    };

    let mut registry = Registry::with_prefix("");
    let metrics = AnnounceMetrics::default();
    metrics.register(&mut registry);
    let announcer = Announcer::start(iface.clone(), metrics)?;
    let publisher = Publisher::new(client.clone(), &me, &iface.name, &iface.mac.to_string());
    let ready = Arc::new(AtomicBool::new(false));
    let health = match args.http_addr.0 {
        Some(addr) => Some(serve_health(addr, registry, ready.clone(), shutdown.clone()).await?),
        None => None,
    };

    let changed = Arc::new(Notify::new());
    let (services, services_task) = reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let (slices, slices_task) = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let (nodes, nodes_task) = reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods_api = match &args.speaker_namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
        None => Api::<Pod>::all(client.clone()),
    };
    let (pods, pods_task) = reflect(
        pods_api,
        watcher::Config::default().labels(&args.speaker_selector),
        changed.clone(),
    );
    let watches = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::join!(services_task, slices_task, nodes_task, pods_task);
    }));
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = async {
            let _ = services.wait_until_ready().await;
            let _ = slices.wait_until_ready().await;
            let _ = nodes.wait_until_ready().await;
            let _ = pods.wait_until_ready().await;
        } => {}
    }
    info!(node = %me, iface = %iface.name, mac = %iface.mac, "caches synced");

    let (peers_tx, peers) =
        watch::channel(world::gossip_peers(&nodes.state(), &me, args.gossip_port));
    let gossip_config = GossipConfig {
        probe_period: args.gossip_probe_interval,
        probe_rtt: args.gossip_probe_interval * 2 / 5,
        suspect_timeout: args.gossip_suspect_timeout,
        ..GossipConfig::fast(
            me.clone(),
            SocketAddr::new(args.gossip_bind, args.gossip_port),
            SocketAddr::new(advertise_ip, args.gossip_port),
        )
    };
    let gossip_stop = CancellationToken::new();
    let membership = membership::start(gossip_config, peers, gossip_stop.clone()).await?;
    let mut view = membership.view.clone();

    let settle = tokio::time::sleep(args.settle);
    tokio::pin!(settle);
    let mut settled = false;
    // VIPs this speaker published, to remove their objects if the VIP goes.
    let mut published: BTreeMap<IpAddr, Vec<ServiceRef>> = BTreeMap::new();
    let mut last: BTreeMap<IpAddr, VipDecision> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changed.notified() => {}
            res = view.changed() => if res.is_err() { break },
            _ = &mut settle, if !settled => {
                settled = true;
                ready.store(true, Ordering::Relaxed);
                info!(node = %me, "settled: announcing from now on");
            }
        }
        let node_list = nodes.state();
        peers_tx.send_if_modified(|current| {
            let now = world::gossip_peers(&node_list, &me, args.gossip_port);
            let differs = *current != now;
            *current = now;
            differs
        });
        let gossip: MemberView = view.borrow_and_update().clone();
        let decisions = world::decide(Inputs {
            me: &me,
            class: &args.load_balancer_class,
            services: &services.state(),
            slices: &slices.state(),
            nodes: &node_list,
            speaker_pods: &pods.state(),
            gossip: &gossip,
        });
        let mine: BTreeSet<IpAddr> = if settled {
            decisions
                .iter()
                .filter(|(_, d)| d.announcer.as_deref() == Ok(me.as_str()))
                .map(|(ip, _)| *ip)
                .collect()
        } else {
            BTreeSet::new()
        };
        let (taken, _released) = announcer.set_owned(mine);
        for ip in taken {
            let services = decisions[&ip].services.clone();
            for service in &services {
                let (publisher, service) = (publisher.clone(), service.clone());
                tokio::spawn(async move { publisher.took(&service, ip).await });
            }
            published.insert(ip, services);
        }
        published.retain(|ip, services| {
            let keep = decisions.contains_key(ip);
            if !keep {
                for service in services.iter() {
                    let (publisher, service, ip) = (publisher.clone(), service.clone(), *ip);
                    tokio::spawn(async move { publisher.gone(&service, ip).await });
                }
            }
            keep
        });
        log_changes(&last, &decisions);
        last = decisions;
    }
    announcer.set_owned(BTreeSet::new());
    gossip_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), membership.task).await;
    drop(watches);
    if let Some(task) = health {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    info!(node = %me, "speaker stopped");
    Ok(())
}

fn log_changes(before: &BTreeMap<IpAddr, VipDecision>, after: &BTreeMap<IpAddr, VipDecision>) {
    for (ip, decision) in after {
        if before.get(ip).map(|d| &d.announcer) != Some(&decision.announcer) {
            match &decision.announcer {
                Ok(node) => info!(%ip, %node, services = ?decision.services, "announcer chosen"),
                Err(reason) => {
                    warn!(%ip, ?reason, services = ?decision.services, "nobody can announce this VIP")
                }
            }
        }
    }
}

/// The speaker's own Node (it needs the node's address); waits while the
/// Node does not exist yet, as on a node that is still registering.
async fn wait_for_node(
    client: &Client,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut delay = Duration::from_millis(200);
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node)) => return Ok(node),
            Ok(None) => warn!(node = %name, "this speaker's Node does not exist (yet)"),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(Error::Node {
                    node: name.into(),
                    problem: format!("cannot read it: {}", status.message),
                });
            }
            Err(err) => {
                warn!(node = %name, error = %err, "cannot read this speaker's Node (retrying)")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Node {
                node: name.into(),
                problem: "stopped before the Node could be read".into(),
            }),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn serve_health(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::HealthBind { addr, source })?;
    let registry = Arc::new(registry);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "settling")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut text = String::new();
                let result = prometheus_client::encoding::text::encode(&mut text, &registry);
                async move {
                    match result {
                        Ok(()) => (StatusCode::OK, text),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        );
    Ok(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = serve.await {
            warn!(error = %err, "health server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SpeakerArgs,
    }

    #[test]
    fn flags_default_to_fast_gossip_and_read_the_downward_api() {
        let cli = Cli::try_parse_from(["speaker", "--node-name", "n1"]).expect("parses");
        assert_eq!(cli.args.node_name, "n1");
        assert_eq!(cli.args.gossip_port, 7946);
        assert!(
            cli.args.gossip_probe_interval + cli.args.gossip_suspect_timeout
                < Duration::from_millis(500),
            "a dead speaker is declared down well under a second"
        );
        assert_eq!(cli.args.load_balancer_class, DEFAULT_CLASS);
        let off = Cli::try_parse_from(["speaker", "--node-name", "n1", "--http-addr", "off"])
            .expect("parses");
        assert_eq!(off.args.http_addr, HttpAddr(None));
        let bad = Cli::try_parse_from(["speaker", "--node-name", "n1", "--settle", "soon"]);
        assert!(
            bad.is_err(),
            "a bad duration is refused with the flag named"
        );
    }
}
