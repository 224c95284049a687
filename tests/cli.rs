//! The binary's behaviour at its edges: clear errors, no panics.

use std::process::Command;

fn portico() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portico"))
}

#[test]
fn unreachable_cluster_gives_one_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
    )
    .expect("write kubeconfig");
    let out = portico()
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--slb-vip-range",
            "127.243.0.0/24",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("run portico");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("portico demo"),
        "the message points at the demo: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_kubeconfig_file_names_the_path() {
    let out = portico()
        .args([
            "run",
            "--kubeconfig",
            "/nonexistent/portico/kubeconfig",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("run portico");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/portico/kubeconfig"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_rejected_by_name() {
    let cases = [
        (vec!["run", "--workers", "0"], "--workers"),
        (vec!["run", "--resync", "soon"], "--resync"),
        (
            vec!["run", "--slb-vip-range", "127.0.0.0/33"],
            "--slb-vip-range",
        ),
        (vec!["run", "--provider", "gcp"], "--provider"),
    ];
    for (args, flag) in cases {
        let out = portico().args(&args).output().expect("run portico");
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag),
            "{args:?}: error names {flag}: {stderr}"
        );
    }
}

#[tokio::test]
async fn speaker_names_an_interface_that_does_not_exist() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, PostParams};

    let server = kube_standin::ApiServer::start().await.expect("stand-in");
    let nodes: Api<Node> = Api::all(server.client().await.expect("client"));
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "worker-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["speaker", "--node-name", "worker-1", "--interface", "nope0"])
            .args(["--http-addr", "off", "--kubeconfig"])
            .arg(&kubeconfig)
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .expect("the speaker gives up at once")
    .expect("run portico speaker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope0") && stderr.contains("no such interface"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
