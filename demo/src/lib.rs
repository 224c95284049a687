//! `portico demo`: the whole path on one machine, no cluster, no cloud
//! account. A Kubernetes API stand-in with simulated nodes, the embedded
//! SLB-style cloud with its real data plane, and the real controller talking
//! to both over HTTP; then a guided tour with real traffic.
//!
//! This crate sits below the `portico` binary, which runs the tour with its
//! controller ([`run`] takes the controller as an argument): the production
//! build leaves the crate out, and with it the API stand-in.

mod examples;
mod nodes;
mod table;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use kube_standin::ApiServer;
use portico_provider::{ClusterName, DynProvider};
use portico_slb::embedded::EmbeddedSlb;
use portico_slb::provider::{CloudClient, SlbProvider, SlbProviderConfig};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use examples::{examples, load_examples};
pub use nodes::{KubeProxySim, SimNode, Tally};

/// `portico demo`'s arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep everything running after the tour (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
    /// Simulated nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub nodes: u8,
    /// Directory of example Service manifests to apply (default: the
    /// examples built into the binary, the same as `examples/`).
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Where to write the demo cluster's kubeconfig.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
}

/// Why the tour stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the tour failed.
    #[error("demo: {0}")]
    Step(String),
    /// The embedded cloud or its provider could not be set up.
    #[error("provider setup failed: {0}")]
    Provider(String),
    /// The controller under demonstration failed; its own error, as it is.
    #[error(transparent)]
    Controller(Box<dyn std::error::Error + Send + Sync>),
}

/// What the demo hands the controller it runs.
pub struct Stage {
    /// A client for the API stand-in, which holds the simulated nodes.
    pub client: Client,
    /// The provider for the embedded cloud.
    pub provider: Arc<dyn DynProvider>,
    /// The cluster identity the provider tags balancers with.
    pub cluster: ClusterName,
    /// How long node changes may be gathered before balancers follow them:
    /// short, so the tour's node removal shows quickly.
    pub node_debounce: Duration,
    /// Already holds the data plane's metrics.
    pub registry: Registry,
    /// Cancelled when the tour ends; the controller then returns.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("provider", &self.provider.name())
            .field("cluster", &self.cluster)
            .field("node_debounce", &self.node_debounce)
            .finish_non_exhaustive()
    }
}

const REQUESTS_PER_PORT: usize = 30;

fn demo_err(context: &str) -> impl Fn(kube::Error) -> Error + '_ {
    move |e| Error::Step(format!("{context}: {e}"))
}

/// Everything the demo runs.
struct Demo {
    api: ApiServer,
    client: Client,
    nodes: Vec<SimNode>,
    kube_proxy: KubeProxySim,
    cloud: EmbeddedSlb,
    /// The cloud's API, as any of its users reaches it.
    cloud_api: CloudClient,
    provider: Arc<dyn DynProvider>,
    controller: tokio::task::JoinHandle<Result<(), Error>>,
    shutdown: CancellationToken,
    kubeconfig: PathBuf,
}

impl Demo {
    async fn start<C, F, E>(
        node_count: u8,
        kubeconfig_out: Option<PathBuf>,
        controller: C,
    ) -> Result<Demo, Error>
    where
        C: FnOnce(Stage) -> F,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let api = ApiServer::start()
            .await
            .map_err(|e| Error::Step(format!("starting the API stand-in: {e}")))?;
        let client = api
            .client()
            .await
            .map_err(|e| Error::Step(format!("client for the API stand-in: {e}")))?;
        let kubeconfig = kubeconfig_out.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("portico-demo-{}.kubeconfig", std::process::id()))
        });
        api.write_kubeconfig(&kubeconfig)
            .map_err(|e| Error::Step(format!("writing {}: {e}", kubeconfig.display())))?;

        let nodes: Vec<SimNode> = (1..=node_count)
            .map(|i| SimNode {
                name: format!("node-{i}"),
                ip: IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)),
            })
            .collect();
        let node_api: Api<Node> = Api::all(client.clone());
        for n in &nodes {
            node_api
                .create(&PostParams::default(), &n.object())
                .await
                .map_err(demo_err("creating a node"))?;
        }
        let kube_proxy = KubeProxySim::start(client.clone(), nodes.clone());

        let mut registry = Registry::default();
        let cloud = EmbeddedSlb::start(
            portico_slb::cloud::default_vip_range(),
            None,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &mut registry,
        )
        .await
        .map_err(|e| Error::Provider(format!("starting the embedded SLB cloud: {e}")))?;
        let cloud_api = CloudClient::new(&cloud.url(), Duration::from_secs(10), 2)
            .map_err(|e| Error::Provider(format!("slb client: {e}")))?;
        let cluster = ClusterName::new("demo");
        let provider: Arc<dyn DynProvider> = Arc::new(
            SlbProvider::new(SlbProviderConfig::new(cloud.url(), cluster.clone()))
                .map_err(|e| Error::Provider(format!("slb: {e}")))?,
        );
        let shutdown = CancellationToken::new();
        let running = controller(Stage {
            client: client.clone(),
            provider: provider.clone(),
            cluster,
            node_debounce: Duration::from_millis(200),
            registry,
            shutdown: shutdown.clone(),
        });
        let controller =
            tokio::spawn(async move { running.await.map_err(|e| Error::Controller(Box::new(e))) });
        Ok(Demo {
            api,
            client,
            nodes,
            kube_proxy,
            cloud,
            cloud_api,
            provider,
            controller,
            shutdown,
            kubeconfig,
        })
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn apply(&self, services: &[Service]) -> Result<(), Error> {
        for svc in services {
            let ns = svc.namespace().unwrap_or_else(|| "default".into());
            let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
            api.create(&PostParams::default(), svc)
                .await
                .map_err(demo_err("creating a Service"))?;
            println!("service/{} created", svc.name_any());
        }
        Ok(())
    }

    /// Print the table whenever it changes, until every Service has an address.
    async fn watch_until_ready(&self, names: &[String], limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut last = String::new();
        let mut ready_at: BTreeMap<String, Duration> = BTreeMap::new();
        loop {
            let list = self
                .services()
                .list(&Default::default())
                .await
                .map_err(demo_err("listing Services"))?;
            let rendered = table::render(&list.items);
            if rendered != last {
                println!(
                    "\n$ kubectl get svc        # t+{:.2}s",
                    start.elapsed().as_secs_f64()
                );
                print!("{rendered}");
                last = rendered;
            }
            for svc in &list.items {
                if table::external_ip(svc).is_some() {
                    ready_at
                        .entry(svc.name_any())
                        .or_insert_with(|| start.elapsed());
                }
            }
            if names.iter().all(|n| ready_at.contains_key(n)) {
                println!();
                for (name, at) in &ready_at {
                    println!(
                        "  {name}: EXTERNAL-IP after {:.0} ms",
                        at.as_secs_f64() * 1000.0
                    );
                }
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Step(format!(
                    "Services did not all get an EXTERNAL-IP within {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Send real requests through every balancer and tally the nodes that answered.
    async fn send_traffic(&self) -> Result<BTreeMap<String, Tally>, Error> {
        let list = self
            .services()
            .list(&Default::default())
            .await
            .map_err(demo_err("listing Services"))?;
        let mut out = BTreeMap::new();
        for svc in &list.items {
            let Some(ip) = table::external_ip(svc).and_then(|ip| ip.parse::<IpAddr>().ok()) else {
                continue;
            };
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let udp = p.protocol.as_deref() == Some("UDP");
                let tally = Tally::default();
                let mut failures = 0usize;
                for _ in 0..REQUESTS_PER_PORT {
                    let answer = if udp {
                        udp_request(SocketAddr::new(ip, port)).await
                    } else {
                        http_request(SocketAddr::new(ip, port)).await
                    };
                    match answer {
                        Some(node) => tally.add(&node),
                        None => failures += 1,
                    }
                }
                let label = format!(
                    "{}  {}:{}/{}",
                    svc.name_any(),
                    ip,
                    port,
                    if udp { "UDP" } else { "TCP" }
                );
                println!(
                    "  {label:<34} {}{}",
                    table::bars(&tally.counts(), REQUESTS_PER_PORT),
                    if failures > 0 {
                        format!("  ({failures} failed)")
                    } else {
                        String::new()
                    }
                );
                // Every node the balancer targets serves, and nothing changes
                // while the requests run: each one must be answered.
                if failures > 0 {
                    return Err(Error::Step(format!(
                        "{failures} of {REQUESTS_PER_PORT} requests through {label} were not answered"
                    )));
                }
                out.insert(label, tally);
            }
        }
        Ok(out)
    }

    /// Remove a node from the cluster and wait until the cloud's API shows
    /// no balancer targeting it. That is enough: the cloud changes what its
    /// API shows only once its data plane forwards accordingly
    /// (read-your-writes), so from then on no request reaches the node.
    async fn remove_node(&self, name: &str, limit: Duration) -> Result<(), Error> {
        let node_api: Api<Node> = Api::all(self.client.clone());
        node_api
            .delete(name, &DeleteParams::default())
            .await
            .map_err(demo_err("deleting a node"))?;
        let start = Instant::now();
        let gone_ip = self.nodes.iter().find(|n| n.name == name).map(|n| n.ip);
        loop {
            let still_targeted = self.cloud_targets(gone_ip).await?;
            if !still_targeted {
                println!(
                    "  {name} left every balancer after {:.0} ms",
                    start.elapsed().as_secs_f64() * 1000.0
                );
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Step(format!(
                    "{name} was still a target after {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether a backend server group of any balancer lists `ip`, as the
    /// cloud's API says.
    async fn cloud_targets(&self, ip: Option<IpAddr>) -> Result<bool, Error> {
        let Some(ip) = ip else { return Ok(false) };
        let asking = |e: portico_slb::provider::ClientError| {
            Error::Step(format!("asking the cloud's API: {e}"))
        };
        for lb in self
            .cloud_api
            .balancers(&BTreeMap::new())
            .await
            .map_err(asking)?
        {
            let groups = self.cloud_api.groups(&lb.id).await.map_err(asking)?;
            if groups
                .iter()
                .flat_map(|g| &g.servers)
                .any(|s| s.address == ip)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn delete_all(&self, limit: Duration) -> Result<(), Error> {
        let list = self
            .services()
            .list(&Default::default())
            .await
            .map_err(demo_err("listing Services"))?;
        for svc in &list.items {
            self.services()
                .delete(&svc.name_any(), &DeleteParams::default())
                .await
                .map_err(demo_err("deleting a Service"))?;
            println!("service/{} deleted", svc.name_any());
        }
        let start = Instant::now();
        loop {
            let left = self
                .services()
                .list(&Default::default())
                .await
                .map_err(demo_err("listing Services"))?;
            let owned = self
                .provider
                .list_owned()
                .await
                .map_err(|e| Error::Step(format!("asking the cloud: {e}")))?;
            if left.items.is_empty()
                && owned.is_empty()
                && self.cloud.dataplane.all_snapshots().is_empty()
            {
                println!(
                    "  all Services gone after {:.0} ms; the cloud holds 0 balancers and forwards nothing",
                    start.elapsed().as_secs_f64() * 1000.0
                );
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Step(format!(
                    "cleanup incomplete after {limit:?}: {} Services, {} balancers left",
                    left.items.len(),
                    owned.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        let result = self
            .controller
            .await
            .map_err(|e| Error::Step(format!("controller task: {e}")))?;
        self.kube_proxy.stop().await;
        self.cloud.shutdown().await;
        self.api.shutdown().await;
        let _ = std::fs::remove_file(&self.kubeconfig);
        result
    }
}

async fn http_request(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        body.lines()
            .last()
            .and_then(|l| l.strip_prefix("hello from "))
            .map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

async fn udp_request(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        socket.send_to(b"who?", addr).await.ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buf).await.ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .trim()
            .strip_prefix("hello from ")
            .map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Run the tour around `controller`, which is started once with the
/// [`Stage`] and must return when its `shutdown` is cancelled; `Ok` means
/// every step worked.
pub async fn run<C, F, E>(args: DemoArgs, controller: C) -> Result<(), Error>
where
    C: FnOnce(Stage) -> F,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let examples = examples(args.examples.as_deref())?;
    let names: Vec<String> = examples.iter().map(|s| s.name_any()).collect();
    println!(
        "portico demo: Kubernetes API stand-in + {} simulated nodes + embedded SLB cloud + the real controller\n",
        args.nodes
    );
    let demo = Demo::start(args.nodes, args.kubeconfig_out.clone(), controller).await?;
    println!("kubeconfig: {}", demo.kubeconfig.display());
    println!(
        "  try: KUBECONFIG={} kubectl get svc,nodes",
        demo.kubeconfig.display()
    );
    println!(
        "SLB cloud API: {} (OpenAPI at /openapi.json)",
        demo.cloud.url()
    );
    for n in &demo.nodes {
        println!(
            "node {} at {} (its NodePorts answer \"hello from {}\")",
            n.name, n.ip, n.name
        );
    }
    let outcome = tour(&demo, &args, &names).await;
    let stopped = demo.stop().await;
    outcome?;
    stopped?;
    println!("\ndemo finished: every step worked");
    Ok(())
}

async fn tour(demo: &Demo, args: &DemoArgs, names: &[String]) -> Result<(), Error> {
    let source = args.examples.as_ref().map_or_else(
        || "the built-in examples".to_string(),
        |d| d.display().to_string(),
    );
    println!("\n== 1. apply {source}");
    demo.apply(&examples(args.examples.as_deref())?).await?;
    demo.watch_until_ready(names, Duration::from_secs(60))
        .await?;

    println!(
        "\n== 2. real requests through each VIP ({REQUESTS_PER_PORT} per port): which node answered"
    );
    demo.send_traffic().await?;

    if let Some(last) = demo.nodes.last().filter(|_| demo.nodes.len() > 1) {
        println!("\n== 3. node {} leaves the cluster", last.name);
        demo.remove_node(&last.name, Duration::from_secs(30))
            .await?;
        let after = demo.send_traffic().await?;
        if after.values().any(|t| t.counts().contains_key(&last.name)) {
            return Err(Error::Step(format!(
                "traffic still reached {} after it left",
                last.name
            )));
        }
    }

    if args.keep_running {
        println!(
            "\n== running: KUBECONFIG={} kubectl get svc   (Ctrl-C to clean up and exit)",
            demo.kubeconfig.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }

    println!("\n== 4. delete the Services");
    demo.delete_all(Duration::from_secs(30)).await
}
