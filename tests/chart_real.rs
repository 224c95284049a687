//! The chart installed for real: `helm install`, `upgrade` and `uninstall`
//! into the real control plane. No kubelet runs there, so pods do not start;
//! the controller runs as the pod would: the `portico` binary with the
//! Deployment's rendered arguments and a token of the chart's
//! ServiceAccount, against a `portico slb-server` cloud.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube_standin::control_plane::ControlPlane;
use portico::builders::svc;

const RELEASE: &str = "chart-test";
const NAMESPACE: &str = "portico-chart";
const FULLNAME: &str = "chart-test-portico";

async fn helm(args: &[&str]) -> String {
    on_real_cluster("helm", args).await
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// A process that is killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubeconfig with the admin one's server and CA, and `token`.
fn kubeconfig_with_token(dir: &Path, token: &str) -> PathBuf {
    let admin = std::env::var("PORTICO_REAL_KUBECONFIG").expect("PORTICO_REAL_KUBECONFIG");
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin).expect("read kubeconfig"))
            .expect("kubeconfig YAML");
    config["users"][0]["user"] = serde_yaml::from_str(&format!("token: {token}")).expect("user");
    let path = dir.join("controller.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write");
    path
}

/// Run what the chart's pod would run: the Deployment's arguments, as its
/// ServiceAccount (the HTTP address moved to a free loopback port).
async fn run_as_the_pod(plane: &ControlPlane, dir: &Path) -> Running {
    let deployments: Api<Deployment> = Api::namespaced(plane.admin.clone(), NAMESPACE);
    let deployment = deployments.get(FULLNAME).await.expect("Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &pod.containers[0];
    let account = pod.service_account_name.expect("serviceAccountName");
    let token = plane
        .service_account_token(NAMESPACE, &account)
        .await
        .expect("token");
    let kubeconfig = kubeconfig_with_token(dir, &token);
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--http-addr=") {
                format!("--http-addr={}", free_addr())
            } else {
                a
            }
        })
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", format!("{FULLNAME}-0"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start portico");
    Running(child)
}

async fn owned_balancers(plane: &ControlPlane, cloud: &str) -> usize {
    let cluster = portico::app::cluster_identity(&plane.admin, None)
        .await
        .expect("identity");
    let provider = portico::providers::slb_provider(cloud.to_string(), cluster).expect("provider");
    provider.list_owned().await.expect("list").len()
}

async fn install_upgrade_uninstall(backend: Backend) {
    within(240, async {
        let env = Env::api_only(backend, 2).await;
        let Cluster::Real(plane) = &env.cluster else {
            panic!("the real control plane only")
        };
        let plane = plane.as_ref().clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = helm(&[
            "uninstall",
            RELEASE,
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "--wait",
        ])
        .await;

        // The cloud, as its own server (the chart points at it).
        let cloud_addr = free_addr();
        let cloud = format!("http://{cloud_addr}");
        let _cloud = Running(
            Command::new(env!("CARGO_BIN_EXE_portico"))
                .args([
                    "slb-server",
                    "--listen",
                    &cloud_addr.to_string(),
                    "--vip-range",
                    "127.246.0.0/24",
                ])
                .arg("--state")
                .arg(dir.path().join("cloud.json"))
                .stdout(Stdio::null())
                .spawn()
                .expect("start slb-server"),
        );
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico");
        let chart = chart.to_str().expect("utf-8");
        let endpoint = format!("slb.endpoint={cloud}");
        helm(&[
            "install",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &endpoint,
        ])
        .await;

        // Every object was accepted by the real API server, as rendered.
        let admin = &plane.admin;
        let sa = Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
            .get(FULLNAME)
            .await
            .expect("ServiceAccount");
        assert_eq!(sa.metadata.name.as_deref(), Some(FULLNAME));
        let role = Api::<ClusterRole>::all(admin.clone())
            .get(FULLNAME)
            .await
            .expect("ClusterRole");
        assert!(!role.rules.unwrap_or_default().is_empty());
        Api::<ClusterRoleBinding>::all(admin.clone())
            .get(FULLNAME)
            .await
            .expect("ClusterRoleBinding");
        Api::<PodDisruptionBudget>::namespaced(admin.clone(), NAMESPACE)
            .get(FULLNAME)
            .await
            .expect("PodDisruptionBudget");
        Api::<Service>::namespaced(admin.clone(), NAMESPACE)
            .get(&format!("{FULLNAME}-metrics"))
            .await
            .expect("metrics Service");

        // The controller as the pod would run it serves a Service.
        let controller = run_as_the_pod(&plane, dir.path()).await;
        env.create(
            svc("default", "web")
                .lb()
                .port_without_node_port(80)
                .build(),
        )
        .await;
        let ready = eventually("EXTERNAL-IP", 60, || async {
            env.get("web").await.filter(|s| ingress_ip(s).is_some())
        })
        .await;
        let address = ingress_ip(&ready).expect("ip");
        assert_eq!(owned_balancers(&plane, &cloud).await, 1);

        // Upgrade: new arguments, a restarted controller, the same balancer.
        helm(&[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "workers=8",
        ])
        .await;
        drop(controller);
        let args = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
            .get(FULLNAME)
            .await
            .expect("Deployment")
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].args.clone().unwrap_or_default())
            .unwrap_or_default();
        assert!(args.contains(&"--workers=8".to_string()), "{args:?}");
        let controller = run_as_the_pod(&plane, dir.path()).await;
        let events_before = env.events("web").await.len();
        env.add_node("node-late", "10.0.0.42").await;
        eventually("the upgraded controller serves web", 30, || async {
            (env.events("web").await.len() > events_before).then_some(())
        })
        .await;
        let after = env.get("web").await.expect("web");
        assert_eq!(
            ingress_ip(&after).as_deref(),
            Some(address.as_str()),
            "same address"
        );
        assert_eq!(
            owned_balancers(&plane, &cloud).await,
            1,
            "no second balancer"
        );

        // Uninstall: the controller goes; a LoadBalancer Service deleted
        // afterwards waits on its finalizer, and its balancer stays.
        helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]).await;
        drop(controller);
        assert!(
            Api::<ClusterRole>::all(admin.clone())
                .get_opt(FULLNAME)
                .await
                .expect("get")
                .is_none(),
            "RBAC removed"
        );
        env.delete("web").await;
        let stuck = env.get("web").await.expect("still there");
        assert!(stuck.metadata.deletion_timestamp.is_some() && has_finalizer(&stuck));
        assert_eq!(owned_balancers(&plane, &cloud).await, 1, "balancer kept");

        // As NOTES.txt says: installing again finishes the clean-up.
        helm(&[
            "install", RELEASE, chart, "-n", NAMESPACE, "--set", &endpoint,
        ])
        .await;
        let controller = run_as_the_pod(&plane, dir.path()).await;
        eventually("Service deleted once portico is back", 60, || async {
            env.get("web").await.is_none().then_some(())
        })
        .await;
        assert_eq!(owned_balancers(&plane, &cloud).await, 0, "cloud empty");
        drop(controller);
        helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]).await;
    })
    .await;
}

mod real {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn helm_install_upgrade_uninstall() {
        super::install_upgrade_uninstall(super::Backend::Real).await
    }
}
