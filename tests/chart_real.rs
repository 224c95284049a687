//! The chart installed for real: `helm install`, `upgrade` and `uninstall`
//! into the real control plane. No kubelet runs there, so pods do not start;
//! the controller runs as the pod would: the `portico` binary with the
//! Deployment's rendered arguments and a token of the chart's
//! ServiceAccount, against a `portico slb-server` cloud. The arp and aws
//! renders go in as releases of their own, every object read back and
//! compared with the render; the arp controller serves from an IPPool.
//! (A little over 600 lines: the three releases share the helpers here.)

mod chart_support;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use chart_support::{held_as_rendered, template};
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube_standin::control_plane::ControlPlane;
use portico::builders::svc;
use serde_json::Value;

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
    run_as_the_pod_of(plane, dir, NAMESPACE, FULLNAME).await
}

/// [`run_as_the_pod`] for the Deployment `name` in `namespace`.
async fn run_as_the_pod_of(
    plane: &ControlPlane,
    dir: &Path,
    namespace: &str,
    name: &str,
) -> Running {
    let deployments: Api<Deployment> = Api::namespaced(plane.admin.clone(), namespace);
    let deployment = deployments.get(name).await.expect("Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &pod.containers[0];
    let account = pod.service_account_name.expect("serviceAccountName");
    let token = plane
        .service_account_token(namespace, &account)
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
        .env("POD_NAME", format!("{name}-0"))
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

/// The documents `helm template` renders for `args` (hooks left out: `helm
/// install` does not create them).
fn rendered(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    template(release, namespace, args)
        .unwrap_or_else(|e| panic!("helm template {args:?}: {e}"))
        .into_iter()
        .filter(|d| d["metadata"]["annotations"]["helm.sh/hook"].is_null())
        .collect()
}

/// `helm install` the chart with `args` as `release` in its own namespace,
/// and check the server holds every rendered object as rendered. Returns
/// the rendered documents.
async fn install_and_compare(
    plane: &ControlPlane,
    release: &str,
    namespace: &str,
    args: &[&str],
) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico");
    let chart = chart.to_str().expect("utf-8");
    let _ = helm(&[
        "uninstall",
        release,
        "-n",
        namespace,
        "--ignore-not-found",
        "--wait",
    ])
    .await;
    let docs = rendered(release, namespace, args);
    let mut install = vec![
        "install",
        release,
        chart,
        "-n",
        namespace,
        "--create-namespace",
    ];
    install.extend(args);
    helm(&install).await;
    for doc in &docs {
        let (group, version) = match doc["apiVersion"].as_str().expect("apiVersion") {
            v if v.contains('/') => v.split_once('/').expect("group/version"),
            v => ("", v),
        };
        let kind = doc["kind"].as_str().expect("kind");
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let name = doc["metadata"]["name"].as_str().expect("name");
        let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(plane.admin.clone(), ns, &resource),
            None => Api::all_with(plane.admin.clone(), &resource),
        };
        let live = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{release}: {kind} {name} on the server: {e}"));
        let live = serde_json::to_value(&live).expect("JSON");
        if let Err(diff) = held_as_rendered(doc, &live, &format!("{kind}/{name}")) {
            panic!("{release}: the server does not hold what was rendered: {diff}");
        }
    }
    println!(
        "{release}: {} objects on the server as rendered",
        docs.len()
    );
    docs
}

fn container_of(docs: &[Value], kind: &str) -> k8s_openapi::api::core::v1::Container {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("a {kind}"));
    serde_json::from_value(doc["spec"]["template"]["spec"]["containers"][0].clone())
        .expect("container")
}

/// provider=arp as a release of its own: the speaker DaemonSet, its RBAC
/// and the controller's IPPool rights accepted by the real server as
/// rendered; the controller, run as the pod would, hands out an address
/// from a pool under the chart's RBAC; `helm uninstall` keeps the CRDs and
/// the objects of their kinds.
async fn arp_release(backend: Backend) {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DeleteParams, PostParams};
    use portico_arp::pool::{AddressBlock, IpPool, IpPoolSpec};
    use portico_arp::speaker::publish::{VipAnnouncement, VipAnnouncementSpec};

    const RELEASE: &str = "chart-arp";
    const NAMESPACE: &str = "portico-chart-arp";
    const FULLNAME: &str = "chart-arp-portico";
    within(180, async {
        let env = Env::api_only(backend, 1).await;
        let Cluster::Real(plane) = &env.cluster else {
            panic!("the real control plane only")
        };
        let plane = plane.as_ref().clone();
        let values =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico/ci/arp-values.yaml");
        let values = values.to_str().expect("utf-8");
        let docs = install_and_compare(&plane, RELEASE, NAMESPACE, &["-f", values]).await;

        let crds: Api<CustomResourceDefinition> = Api::all(plane.admin.clone());
        for crd in ["ippools.portico.io", "vipannouncements.portico.io"] {
            crds.get(crd)
                .await
                .unwrap_or_else(|e| panic!("{crd} installed: {e}"));
        }
        let speaker = format!("{FULLNAME}-speaker");
        let daemonset = Api::<DaemonSet>::namespaced(plane.admin.clone(), NAMESPACE)
            .get(&speaker)
            .await
            .expect("speaker DaemonSet");
        let pod = daemonset
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod spec");
        assert_eq!(pod.host_network, Some(true));
        let live = &pod.containers[0];
        let want = container_of(&docs, "DaemonSet");
        assert_eq!(
            live.security_context
                .as_ref()
                .and_then(|s| s.capabilities.clone()),
            want.security_context.and_then(|s| s.capabilities),
            "only NET_RAW and NET_ADMIN, as rendered"
        );
        assert_eq!(live.args, want.args);
        assert_eq!(pod.service_account_name.as_deref(), Some(speaker.as_str()));

        // The controller as the pod runs it, under the chart's RBAC
        // (IPPools, their status, namespaces), serves a Service of its class.
        let dir = tempfile::tempdir().expect("tempdir");
        let pools: Api<IpPool> = Api::all(plane.admin.clone());
        let _ = pools.delete("chart-arp", &DeleteParams::default()).await;
        eventually("no leftover pool", 20, || async {
            pools
                .get_opt("chart-arp")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        pools
            .create(
                &PostParams::default(),
                &IpPool::new(
                    "chart-arp",
                    IpPoolSpec {
                        addresses: vec![AddressBlock::from("10.253.0.0/30")],
                        auto_assign: true,
                        avoid_buggy_ips: false,
                        namespace_selector: None,
                        service_selector: None,
                    },
                ),
            )
            .await
            .expect("pool");
        let controller = run_as_the_pod_of(&plane, dir.path(), NAMESPACE, FULLNAME).await;
        env.create(
            svc("default", "arp-web")
                .lb()
                .class("portico.io/arp")
                .port_without_node_port(80)
                .build(),
        )
        .await;
        let ready = eventually("arp-web has an address from the pool", 60, || async {
            env.get("arp-web").await.filter(|s| ingress_ip(s).is_some())
        })
        .await;
        assert_eq!(ingress_ip(&ready).as_deref(), Some("10.253.0.0"));
        env.delete("arp-web").await;
        eventually("arp-web gone", 30, || async {
            env.get("arp-web").await.is_none().then_some(())
        })
        .await;
        drop(controller);

        // Uninstall keeps the CRDs and what was written with them.
        let announcements: Api<VipAnnouncement> = Api::namespaced(plane.admin.clone(), "default");
        let _ = announcements
            .delete("chart-arp-kept", &DeleteParams::default())
            .await;
        announcements
            .create(
                &PostParams::default(),
                &VipAnnouncement::new(
                    "chart-arp-kept",
                    VipAnnouncementSpec {
                        service: "web".into(),
                        ip: "10.253.0.1".into(),
                        node: "node-0".into(),
                        interface: "eth0".into(),
                        mac: "02:00:00:00:00:01".into(),
                    },
                ),
            )
            .await
            .expect("a VipAnnouncement");
        helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]).await;
        assert!(
            Api::<DaemonSet>::namespaced(plane.admin.clone(), NAMESPACE)
                .get_opt(&speaker)
                .await
                .expect("get")
                .is_none(),
            "the speaker is gone"
        );
        for crd in ["ippools.portico.io", "vipannouncements.portico.io"] {
            let kept = crds.get_opt(crd).await.expect("get CRD");
            assert!(
                kept.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
                "helm uninstall keeps {crd}"
            );
        }
        announcements
            .get("chart-arp-kept")
            .await
            .expect("the VipAnnouncement outlives the release");
        pools
            .get("chart-arp")
            .await
            .expect("the IPPool outlives the release");
        announcements
            .delete("chart-arp-kept", &DeleteParams::default())
            .await
            .expect("clean up");
        pools
            .delete("chart-arp", &DeleteParams::default())
            .await
            .expect("clean up");
    })
    .await;
}

/// provider=aws as a release of its own (ci/aws-values.yaml: class, cluster
/// name, region, VPC, the IRSA annotation), accepted by the real server as
/// rendered. The ServiceMonitor and PrometheusRule are left out: the
/// control plane has no prometheus-operator CRDs (tests/chart_render.rs
/// checks them).
async fn aws_release(backend: Backend) {
    const RELEASE: &str = "chart-aws";
    const NAMESPACE: &str = "portico-chart-aws";
    const FULLNAME: &str = "chart-aws-portico";
    within(120, async {
        let env = Env::api_only(backend, 0).await;
        let Cluster::Real(plane) = &env.cluster else {
            panic!("the real control plane only")
        };
        let plane = plane.as_ref().clone();
        let values =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico/ci/aws-values.yaml");
        let values = values.to_str().expect("utf-8");
        let args = [
            "-f",
            values,
            "--set",
            "metrics.serviceMonitor.enabled=false",
            "--set",
            "metrics.prometheusRule.enabled=false",
        ];
        let docs = install_and_compare(&plane, RELEASE, NAMESPACE, &args).await;
        let live = Api::<Deployment>::namespaced(plane.admin.clone(), NAMESPACE)
            .get(FULLNAME)
            .await
            .expect("Deployment")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        let want = container_of(&docs, "Deployment");
        assert_eq!(live.containers[0].args, want.args);
        let args = want.args.unwrap_or_default();
        for flag in [
            "--provider=aws",
            "--load-balancer-class=service.k8s.aws/portico",
            "--cluster-name=prod-eu-west-1",
            "--aws-region=eu-west-1",
            "--aws-vpc-id=vpc-0a1b2c3d",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
        let sa = Api::<ServiceAccount>::namespaced(plane.admin.clone(), NAMESPACE)
            .get(FULLNAME)
            .await
            .expect("ServiceAccount");
        assert_eq!(
            sa.metadata
                .annotations
                .unwrap_or_default()
                .get("eks.amazonaws.com/role-arn")
                .map(String::as_str),
            Some("arn:aws:iam::123456789012:role/portico"),
            "the IRSA annotation"
        );
        helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]).await;
        assert!(
            Api::<Deployment>::namespaced(plane.admin.clone(), NAMESPACE)
                .get_opt(FULLNAME)
                .await
                .expect("get")
                .is_none()
        );
    })
    .await;
}

mod real {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn helm_install_upgrade_uninstall() {
        super::install_upgrade_uninstall(super::Backend::Real).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn helm_install_arp_as_rendered_and_uninstall_keeps_crds() {
        super::arp_release(super::Backend::Real).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn helm_install_aws_as_rendered() {
        super::aws_release(super::Backend::Real).await
    }
}
