//! What an operator types, against the real control plane: `kubectl apply -f
//! examples/` with validation on, `kubectl get svc` shows the EXTERNAL-IP
//! portico wrote, and `kubectl describe svc` shows portico's Events.

mod common;

use std::path::Path;

use common::*;
use portico_provider::testing::RecordingProvider;

async fn run_kubectl(args: &[&str]) -> String {
    on_real_cluster("kubectl", args).await
}

async fn kubectl_apply_get_describe(backend: Backend) {
    within(120, async {
        // The controller answers to the slb provider's default class, as
        // the demo's does, so the example that names its class is served too.
        let mut env = Env::api_only(backend, 2).await;
        let config = portico::config::ControllerConfig {
            class: portico::config::DEFAULT_CLASS.into(),
            ..test_config()
        };
        env.replica = Some(env.replica(RecordingProvider::new(), config, None));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let examples = repo.join("examples");
        let applied = run_kubectl(&[
            "apply",
            "--validate=strict",
            "-f",
            examples.to_str().expect("utf-8 path"),
        ])
        .await;
        assert!(applied.contains("service/web created"), "{applied}");

        // The chart's CRDs first (helm installs crds/ before anything):
        // examples/arp has an IPPool.
        let crds = repo.join("charts/portico/crds");
        run_kubectl(&["apply", "-f", crds.to_str().expect("utf-8 path")]).await;
        run_kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/ippools.portico.io",
            "crd/vipannouncements.portico.io",
        ])
        .await;

        // Every example, the AWS and bare-metal ones included, passes the
        // server's strict validation (a dry run: nothing is stored).
        let checked = run_kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "--recursive",
            "-f",
            examples.to_str().expect("utf-8 path"),
        ])
        .await;
        for object in [
            "service/payments",
            "service/dns-public",
            "ippool.portico.io/office",
            "service/arp-web",
            "service/arp-dns-tcp",
            "service/arp-dns-udp",
            "service/game",
            "service/intranet",
        ] {
            assert!(
                checked.contains(&format!("{object} created (server dry run)"))
                    || checked.contains(&format!("{object} configured (server dry run)"))
                    || checked.contains(&format!("{object} unchanged (server dry run)")),
                "{object} passes strict validation: {checked}"
            );
        }

        // The demo's reader of examples/ (top-level files) names them.
        let names: Vec<String> = portico_demo::load_examples(&examples)
            .expect("examples/")
            .iter()
            .map(kube::ResourceExt::name_any)
            .collect();
        for want in ["web", "dns", "api", "game", "intranet"] {
            assert!(names.iter().any(|n| n == want), "examples: {names:?}");
        }
        for name in &names {
            env.ready(name).await;
        }
        let table = run_kubectl(&["get", "svc", "-n", "default"]).await;
        println!("{table}");
        for name in &names {
            let row = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"));
            let columns: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(columns[1], "LoadBalancer", "{row}");
            assert!(
                columns[3].parse::<std::net::IpAddr>().is_ok(),
                "EXTERNAL-IP of {name} is an address: {row}"
            );
        }

        let described = eventually("describe shows portico's Events", 20, || async {
            let out = run_kubectl(&["describe", "svc", "web", "-n", "default"]).await;
            (out.contains("EnsuredLoadBalancer") && out.contains("EnsuringLoadBalancer"))
                .then_some(out)
        })
        .await;
        println!("{described}");
        assert!(described.contains("LoadBalancer Ingress:"), "{described}");
    })
    .await;
}

mod real {
    #[tokio::test]
    async fn kubectl_apply_get_describe() {
        super::kubectl_apply_get_describe(super::Backend::Real).await
    }
}
