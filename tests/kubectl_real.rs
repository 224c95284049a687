//! What an operator types, against the real control plane: `kubectl apply -f
//! examples/` with validation on, `kubectl get svc` shows the EXTERNAL-IP
//! portico wrote, and `kubectl describe svc` shows portico's Events.

mod common;

use std::path::Path;

use common::*;

async fn run_kubectl(args: &[&str]) -> String {
    on_real_cluster("kubectl", args).await
}

async fn kubectl_apply_get_describe(backend: Backend) {
    within(120, async {
        let env = Env::start(backend, 2).await;
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let applied = run_kubectl(&[
            "apply",
            "--validate=strict",
            "-f",
            examples.to_str().expect("utf-8 path"),
        ])
        .await;
        assert!(applied.contains("service/web created"), "{applied}");

        // Every example, the AWS ones included, passes the server's strict
        // validation (a dry run: nothing is stored).
        let checked = run_kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "--recursive",
            "-f",
            examples.to_str().expect("utf-8 path"),
        ])
        .await;
        assert!(
            checked.contains("service/payments created (server dry run)"),
            "{checked}"
        );

        // The demo's reader of examples/ (top-level files) names them.
        let names: Vec<String> = portico_demo::load_examples(&examples)
            .expect("examples/")
            .iter()
            .map(kube::ResourceExt::name_any)
            .collect();
        assert!(names.len() >= 3, "examples: {names:?}");
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
