//! A real kubectl against the stand-in, when one is installed
//! (`/root/.cache/portico-tools/kubectl` or `kubectl` on PATH); skipped otherwise.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::timed;
use kube_standin::store::WriteOptions;
use kube_standin::{ApiServer, StandinError};
use serde_json::json;

fn kubectl() -> Option<PathBuf> {
    let pinned = PathBuf::from("/root/.cache/portico-tools/kubectl");
    if pinned.exists() {
        return Some(pinned);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.exists())
}

async fn run(
    bin: PathBuf,
    kubeconfig: PathBuf,
    args: Vec<String>,
    stdin: Option<String>,
) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig").arg(kubeconfig).args(&args);
        cmd.env(
            "KUBECACHEDIR",
            std::env::temp_dir().join(format!("kube-standin-cache-{}", std::process::id())),
        );
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let Ok(mut child) = cmd.spawn() else {
            return (false, "spawn failed".to_string());
        };
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            let _ = pipe.write_all(input.as_bytes());
        }
        match child.wait_with_output() {
            Ok(out) => (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    })
    .await
    .unwrap_or((false, "join failed".to_string()))
}

#[tokio::test]
async fn kubectl_get_apply_delete() {
    let Some(bin) = kubectl() else {
        eprintln!("kubectl not installed; skipping");
        return;
    };
    timed(120, async {
        let server = ApiServer::start().await.expect("start");
        let kc = std::env::temp_dir().join(format!("kube-standin-kubeconfig-{}", std::process::id()));
        server.write_kubeconfig(&kc).expect("kubeconfig");
        let k = |args: &[&str], stdin: Option<String>| {
            run(bin.clone(), kc.clone(), args.iter().map(|s| s.to_string()).collect(), stdin)
        };
        let manifest = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 8080\n";
        let (ok, out) = k(&["apply", "--validate=false", "-f", "-"], Some(manifest.to_string())).await;
        assert!(ok, "apply: {out}");
        assert!(out.contains("service/web created"), "{out}");
        let (ok, out) = k(&["get", "svc"], None).await;
        assert!(ok, "get svc: {out}");
        assert!(out.contains("EXTERNAL-IP") && out.contains("<pending>"), "{out}");
        let store = server.store();
        let services = store.resolve("services").expect("services");
        let status = WriteOptions { status: true, ..WriteOptions::default() };
        store
            .replace(&services, "default", "web", json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}}), &status)
            .expect("status");
        let (ok, out) = k(&["get", "svc", "web"], None).await;
        assert!(ok && out.contains("203.0.113.9"), "{out}");
        eprintln!("{out}");
        // apply again with a change: a strategic merge patch
        let changed = manifest.replace("targetPort: 8080", "targetPort: 9090");
        let (ok, out) = k(&["apply", "--validate=false", "-f", "-"], Some(changed)).await;
        assert!(ok && out.contains("configured"), "{out}");
        let svc = store.get(&services, "default", "web").expect("svc");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9090);
        assert!(svc["spec"]["ports"][0]["nodePort"].as_u64().is_some());
        let nodes = store.resolve("nodes").expect("nodes");
        store
            .create(&nodes, "", json!({"metadata": {"name": "node-1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}}), &WriteOptions::default())
            .expect("node");
        let (ok, out) = k(&["get", "nodes"], None).await;
        assert!(ok && out.contains("node-1") && out.contains("Ready") && out.contains("v1.33.0"), "{out}");
        eprintln!("{out}");
        let (ok, out) = k(&["get", "leases", "-A"], None).await;
        assert!(ok, "{out}");
        let (ok, out) = k(&["get", "svc", "web", "-o", "json"], None).await;
        assert!(ok && out.contains("\"clusterIP\""), "{out}");
        let (ok, out) = k(&["delete", "svc", "web"], None).await;
        assert!(ok && out.contains("deleted"), "{out}");
        assert!(matches!(store.get(&services, "default", "web"), Err(StandinError::NotFound { .. })));
        let _ = std::fs::remove_file(&kc);
    })
    .await;
}
