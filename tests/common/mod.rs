//! Shared set-up for controller tests: a Kubernetes API stand-in over real
//! HTTP, a real kube::Client, the real controller, a recording provider.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use kube_standin::ApiServer;
use kube_standin::control_plane::ControlPlane;
use portico::config::ControllerConfig;
use portico::leader::LeaseConfig;
use portico::runtime::{ReplicaOptions, run_replica};
use portico_provider::ClusterName;
use portico_provider::testing::{Op, RecordingProvider};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod partition;

pub const CLASS: &str = "portico.io/test";

/// Fast timings so tests run in seconds.
pub fn test_config() -> ControllerConfig {
    ControllerConfig {
        cluster: ClusterName::new("test-cluster"),
        class: CLASS.into(),
        claim_classless: true,
        workers: 4,
        resync: Duration::from_secs(60),
        node_debounce: Duration::from_millis(100),
        gc: true,
        gc_interval: Duration::from_millis(300),
        gc_grace: Duration::from_millis(500),
        gc_max_per_pass: 10,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
    }
}

/// One controller replica running in this process.
pub struct Replica {
    pub provider: RecordingProvider,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), portico::Error>>,
}

impl Replica {
    pub fn start(
        client: Client,
        provider: RecordingProvider,
        config: ControllerConfig,
        lease: Option<LeaseConfig>,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let identity = lease
            .as_ref()
            .map(|l| l.identity.clone())
            .unwrap_or_else(|| "test".into());
        let options = ReplicaOptions {
            config,
            lease,
            http_addr: None,
            identity,
        };
        let task = tokio::spawn(run_replica(
            client,
            Arc::new(provider.clone()),
            options,
            Registry::default(),
            shutdown.clone(),
        ));
        Self {
            provider,
            shutdown,
            task,
        }
    }

    /// SIGTERM: finish in-flight work, release the lease.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// A crash: no graceful shutdown, no lease release.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Which Kubernetes API a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `kube-standin` in this process: fast, and it can be inspected.
    StandIn,
    /// etcd + kube-apiserver from `scripts/control-plane.sh`: the judge.
    Real,
}

/// The API server behind an [`Env`].
pub enum Cluster {
    StandIn(ApiServer),
    Real(Box<ControlPlane>),
}

/// A point in the API server's request record (see [`Env::controller_writes_since`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

/// The RBAC manifest the controller runs under on the real control plane.
pub fn rbac_manifest() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml")
}

pub struct Env {
    pub cluster: Cluster,
    /// What the test acts as: a user with every right.
    pub client: Client,
    /// What the controller acts as: on the real control plane, the
    /// ServiceAccount of `deploy/rbac.yaml` with a TokenRequest token.
    pub controller_client: Client,
    /// How `controller_client` was made (to reach the server another way).
    pub controller_config: kube::Config,
    /// How `client` was made.
    pub admin_config: kube::Config,
    pub replica: Option<Replica>,
}

impl Env {
    /// An API server with `nodes` nodes (node-0 ... at 10.0.0.x), no controller yet.
    pub async fn api_only(backend: Backend, nodes: usize) -> Env {
        // RUST_LOG=portico=debug shows the controller's logs of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let env = match backend {
            Backend::StandIn => {
                let server = ApiServer::start().await.expect("stand-in starts");
                let client = server.client().await.expect("client");
                let controller_config =
                    kube::Config::new(server.url().parse().expect("stand-in URL"));
                Env {
                    cluster: Cluster::StandIn(server),
                    controller_client: client.clone(),
                    admin_config: controller_config.clone(),
                    controller_config,
                    client,
                    replica: None,
                }
            }
            Backend::Real => {
                let plane = ControlPlane::connect().await.expect("real control plane");
                plane.reset().await.expect("reset the real control plane");
                let controller_config = plane
                    .controller_config(&rbac_manifest())
                    .await
                    .expect("controller ServiceAccount");
                let controller_client =
                    Client::try_from(controller_config.clone()).expect("controller client");
                Env {
                    client: plane.admin.clone(),
                    admin_config: plane.admin_config(),
                    cluster: Cluster::Real(Box::new(plane)),
                    controller_client,
                    controller_config,
                    replica: None,
                }
            }
        };
        for i in 0..nodes {
            env.add_node(&format!("node-{i}"), &format!("10.0.0.{}", i + 1))
                .await;
        }
        env
    }

    /// API server, nodes and one controller replica with a recording provider.
    pub async fn start(backend: Backend, nodes: usize) -> Env {
        let mut env = Env::api_only(backend, nodes).await;
        env.replica = Some(env.replica(RecordingProvider::new(), test_config(), None));
        env
    }

    /// A controller replica running as the controller's identity.
    pub fn replica(
        &self,
        provider: RecordingProvider,
        config: ControllerConfig,
        lease: Option<LeaseConfig>,
    ) -> Replica {
        Replica::start(self.controller_client.clone(), provider, config, lease)
    }

    pub fn backend(&self) -> Backend {
        match self.cluster {
            Cluster::StandIn(_) => Backend::StandIn,
            Cluster::Real(_) => Backend::Real,
        }
    }

    /// The stand-in, for the scenarios that inspect it directly.
    pub fn stand_in(&self) -> &ApiServer {
        match &self.cluster {
            Cluster::StandIn(server) => server,
            Cluster::Real(_) => panic!("this scenario needs the stand-in"),
        }
    }

    /// Now, in the API server's record of requests.
    pub fn mark(&self) -> Mark {
        match &self.cluster {
            Cluster::StandIn(server) => Mark(server.requests().len() as u64),
            Cluster::Real(plane) => Mark(plane.audit_mark().expect("audit log")),
        }
    }

    /// The writes the controller made since `mark`, as "verb resource name"
    /// (on the stand-in, which does not know users: every write).
    pub fn controller_writes_since(&self, mark: Mark) -> Vec<String> {
        match &self.cluster {
            Cluster::StandIn(server) => server
                .requests()
                .into_iter()
                .skip(mark.0 as usize)
                .filter(|r| r.is_write())
                .map(|r| format!("{} {} {}", r.verb, r.resource_path(), r.path))
                .collect(),
            Cluster::Real(plane) => {
                let user = ControlPlane::service_account_user(
                    kube_standin::control_plane::CONTROLLER_NAMESPACE,
                    kube_standin::control_plane::CONTROLLER_ACCOUNT,
                );
                plane
                    .audit_since(mark.0)
                    .expect("audit log")
                    .into_iter()
                    .filter(|e| e.user.username == user && e.is_write())
                    .map(|e| format!("{} {} {}", e.verb, e.resource(), e.request_uri))
                    .collect()
            }
        }
    }

    /// The writes the controller made since `mark` that the API server
    /// answered with `code`, as "verb resource name".
    pub fn controller_writes_answered_since(&self, mark: Mark, code: u16) -> Vec<String> {
        match &self.cluster {
            Cluster::StandIn(server) => server
                .requests()
                .into_iter()
                .skip(mark.0 as usize)
                .filter(|r| r.is_write() && r.status == code)
                .map(|r| format!("{} {} {}", r.verb, r.resource_path(), r.path))
                .collect(),
            Cluster::Real(plane) => {
                let user = ControlPlane::service_account_user(
                    kube_standin::control_plane::CONTROLLER_NAMESPACE,
                    kube_standin::control_plane::CONTROLLER_ACCOUNT,
                );
                plane
                    .audit_since(mark.0)
                    .expect("audit log")
                    .into_iter()
                    .filter(|e| e.user.username == user && e.is_write() && e.code() == Some(code))
                    .map(|e| format!("{} {} {}", e.verb, e.resource(), e.request_uri))
                    .collect()
            }
        }
    }

    /// Who holds the controller's Lease in `kube-system` now, if anyone.
    pub async fn lease_holder(&self) -> Option<String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-system");
        leases
            .get_opt("portico-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    }

    /// Break every open watch: the stand-in closes them; the real control
    /// plane restarts kube-apiserver (etcd keeps the state).
    pub async fn break_watches(&self) {
        match &self.cluster {
            Cluster::StandIn(server) => server.disconnect_watches(),
            Cluster::Real(plane) => plane
                .restart_apiserver()
                .await
                .expect("restart kube-apiserver"),
        }
    }

    pub fn provider(&self) -> &RecordingProvider {
        &self.replica.as_ref().expect("replica running").provider
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    pub async fn add_node(&self, name: &str, ip: &str) {
        let node = portico::builders::node(name).ip(ip).build();
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }

    pub async fn create(&self, svc: Service) -> Service {
        self.services()
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service")
    }

    pub async fn get(&self, name: &str) -> Option<Service> {
        self.services().get_opt(name).await.expect("get service")
    }

    pub async fn delete(&self, name: &str) {
        self.services()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete service");
    }

    /// Events about Service `name` (events.k8s.io/v1), as (type, reason, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Wait for an Event of `type_` and `reason` about Service `name`, and
    /// return its note. Events are posted beside the status write, not
    /// before it, so a test that saw the status must still wait for them.
    pub async fn event(&self, name: &str, type_: &str, reason: &str) -> String {
        eventually(&format!("{type_} {reason} event on {name}"), 20, || async {
            self.events(name)
                .await
                .into_iter()
                .find(|(t, r, _)| t == type_ && r == reason)
                .map(|(_, _, note)| note)
        })
        .await
    }

    /// Wait until Service `name` shows an EXTERNAL-IP, and return it.
    pub async fn ready(&self, name: &str) -> Service {
        eventually(&format!("{name} has an EXTERNAL-IP"), 20, || async {
            self.get(name).await.filter(|s| ingress_ip(s).is_some())
        })
        .await
    }

    pub async fn has_event(&self, name: &str, reason: &str) -> bool {
        self.events(name).await.iter().any(|(_, r, _)| r == reason)
    }

    /// A positive barrier after a change that should do nothing: create
    /// Service `name` (portico's class) and wait until `provider` has
    /// ensured it and the controller has made its last write for it (the
    /// `EnsuredLoadBalancer` Event). The controller handles watch events in
    /// the order they arrive, and this Service's ensure waits for its
    /// finalizer write first, so whatever an earlier event made the
    /// controller do has reached the provider by then.
    pub async fn barrier(&self, provider: &RecordingProvider, name: &str) {
        let port = 31000 + i32::from(name.bytes().fold(0u8, |h, b| h.wrapping_mul(31) ^ b));
        self.create(
            portico::builders::svc("default", name)
                .lb()
                .class(CLASS)
                .port(80, port)
                .build(),
        )
        .await;
        eventually(&format!("barrier {name} ensured"), 20, || async {
            provider
                .calls()
                .iter()
                .any(|c| c.op == Op::Ensure && c.key.as_ref().is_some_and(|k| k.name == name))
                .then_some(())
        })
        .await;
        self.ready(name).await;
        self.event(name, "Normal", "EnsuredLoadBalancer").await;
    }

    /// Wait until the Lease has been renewed `n` more times: as many retry
    /// periods in which a standby looked at it too.
    pub async fn lease_renewals(&self, n: usize) {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-system");
        let renew_time = || async {
            leases
                .get_opt("portico-controller")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.renew_time)
        };
        let mut last = renew_time().await;
        for i in 0..n {
            last = eventually(&format!("lease renewal {}", i + 1), 10, || async {
                let now = renew_time().await;
                (now.is_some() && now != last).then_some(now)
            })
            .await;
        }
    }
}

/// Calls about Service `name` among `calls`.
pub fn calls_for(
    calls: &[portico_provider::testing::Call],
    name: &str,
) -> Vec<portico_provider::testing::Call> {
    calls
        .iter()
        .filter(|c| c.key.as_ref().is_some_and(|k| k.name == name))
        .cloned()
        .collect()
}

/// A loopback address with a free port, for a replica's HTTP server.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// The value of `series` (a metric name with its labels, as `/metrics`
/// prints it) served at `addr`, if it is there.
pub async fn scrape(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

fn first_ingress(svc: &Service) -> Option<&LoadBalancerIngress> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()
}

/// The external address the Service shows, if any.
pub fn ingress_ip(svc: &Service) -> Option<String> {
    first_ingress(svc)?.ip.clone()
}

/// The external hostname the Service shows, if any (AWS: the NLB's DNS name).
pub fn ingress_hostname(svc: &Service) -> Option<String> {
    first_ingress(svc)?.hostname.clone()
}

pub fn condition(svc: &Service, type_: &str) -> Option<(String, String)> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.finalizers()
        .iter()
        .any(|f| f == "service.kubernetes.io/load-balancer-cleanup")
}

/// Poll `check` until it returns `Some`, or panic after `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `kubectl` or `helm` from `scripts/tools.sh` ($PORTICO_TOOLS/bin,
/// on PATH in `scripts/test.sh`), else from PATH.
pub fn tool(name: &str) -> std::path::PathBuf {
    let tools = std::env::var_os("PORTICO_TOOLS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/portico-tools"))
        });
    if let Some(bin) = tools
        .map(|t| t.join("bin").join(name))
        .filter(|p| p.exists())
    {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!("{name}: run scripts/tools.sh (scripts/test.sh does) to install it")
        })
}

/// A Lease for replica `id` with fast timings (3 s, a leader that could not
/// renew for 2 s stops, renewed every 200 ms).
pub fn fast_lease(id: &str) -> LeaseConfig {
    let mut lease = LeaseConfig::new("kube-system", id.into());
    lease.duration = Duration::from_secs(3);
    lease.renew_deadline = Duration::from_secs(2);
    lease.retry_period = Duration::from_millis(200);
    lease
}

/// Run the real `kubectl` or `helm` against the real control plane; its
/// stdout, or a panic with what it said.
pub async fn on_real_cluster(name: &str, args: &[&str]) -> String {
    let kubeconfig =
        std::env::var("PORTICO_REAL_KUBECONFIG").expect("PORTICO_REAL_KUBECONFIG (control plane)");
    let output = tokio::process::Command::new(tool(name))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A relay to the API server the test can cut (see [`client_through`]).
pub async fn partition(env: &Env) -> partition::Partition {
    let url = &env.controller_config.cluster_url;
    let host = url.host().unwrap_or("127.0.0.1");
    let port = url.port_u16().unwrap_or(443);
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .expect("resolve the API server")
        .next()
        .expect("an API server address");
    partition::Partition::start(upstream).await
}

/// A controller client whose connections to the API server go through
/// `partition` (which the test can cut, as a network partition would).
pub fn client_through(env: &Env, partition: &partition::Partition) -> Client {
    config_through(&env.controller_config, partition)
}

/// A client made from `config` whose connections go through `partition`.
pub fn config_through(config: &kube::Config, partition: &partition::Partition) -> Client {
    let mut config = config.clone();
    let scheme = config
        .cluster_url
        .scheme_str()
        .unwrap_or("http")
        .to_string();
    config.cluster_url = format!("{scheme}://{}", partition.addr())
        .parse()
        .expect("proxy URL");
    Client::try_from(config).expect("client through the partition")
}

/// Each scenario as a test on the stand-in (`standin::NAME`) and on the real
/// control plane (`real::NAME`, run one at a time: `.config/nextest.toml`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod standin {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Backend::StandIn).await
            })*
        }
        mod real {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Backend::Real).await
            })*
        }
    };
}

/// Run a test body under a timeout.
pub async fn within<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("test timed out");
}
