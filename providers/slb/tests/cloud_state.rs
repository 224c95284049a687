//! Durable state: a restarted cloud finds everything; a corrupt file is a
//! clear error.

use std::sync::Arc;
use std::time::Duration;

use portico_slb::cloud::model::*;
use portico_slb::cloud::{CloudConfig, CloudError, CloudServer, RecordingSink, SinkEvent};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn start(path: &std::path::Path, sink: RecordingSink) -> Result<CloudServer, CloudError> {
    CloudServer::start(
        CloudConfig {
            state_file: Some(path.to_path_buf()),
            ..CloudConfig::default()
        },
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(sink),
    )
    .await
}

async fn post(http: &reqwest::Client, url: String, body: Value, token: Option<&str>) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.header(CLIENT_TOKEN_HEADER, t);
    }
    let resp = req.send().await.expect("post");
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.expect("json")
}

#[tokio::test]
async fn restart_finds_everything() {
    tokio::time::timeout(TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.json");
        let http = reqwest::Client::new();

        let cloud = start(&path, RecordingSink::new()).await.expect("first start");
        let base = cloud.url();
        let lb: LoadBalancer = serde_json::from_value(
            post(&http, format!("{base}/v1/load-balancers"), json!({"name": "durable", "tags": {"k": "v"}}), Some("tok")).await,
        )
        .expect("lb");
        let lb2: LoadBalancer = serde_json::from_value(
            post(&http, format!("{base}/v1/load-balancers"), json!({"name": "second"}), None).await,
        )
        .expect("lb2");
        let group: BackendServerGroup = serde_json::from_value(
            post(
                &http,
                format!("{base}/v1/load-balancers/{}/backend-server-groups", lb.id),
                json!({"name": "g", "servers": [{"address": "10.0.0.1", "port": 30080}]}),
                None,
            )
            .await,
        )
        .expect("group");
        let acl: Acl = serde_json::from_value(
            post(&http, format!("{base}/v1/acls"), json!({"name": "a", "entries": [{"cidr": "10.0.0.0/8"}]}), None).await,
        )
        .expect("acl");
        post(
            &http,
            format!("{base}/v1/load-balancers/{}/listeners", lb.id),
            json!({"port": 80, "protocol": "tcp", "backend_server_group_id": group.id, "acl": {"acl_id": acl.id}}),
            None,
        )
        .await;
        // Acknowledged means on disk, before the response.
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).expect("state file")).expect("json");
        assert_eq!(on_disk["listeners"].as_object().map(|m| m.len()), Some(1));
        let before = cloud.snapshot();
        cloud.shutdown().await;

        let sink = RecordingSink::new();
        let cloud = start(&path, sink.clone()).await.expect("restart");
        let after = cloud.snapshot();
        assert_eq!(before.balancers, after.balancers);
        assert_eq!(before.listeners, after.listeners);
        assert_eq!(before.groups, after.groups);
        assert_eq!(before.acls, after.acls);
        assert!(
            sink.wait_for(Duration::from_secs(5), |events| {
                [&lb.id, &lb2.id].iter().all(|id| {
                    events.iter().any(|e| matches!(e, SinkEvent::Apply(c) if &c.balancer_id == *id))
                })
            })
            .await,
            "every balancer is applied at start: {:?}",
            sink.events()
        );
        let fwd = sink.current(&lb.id).expect("applied");
        assert_eq!(fwd.vip, lb.address);
        assert_eq!(fwd.listeners.len(), 1);

        // The client token survived too: a replay makes no second balancer.
        let replay: LoadBalancer = serde_json::from_value(
            post(&http, format!("{}/v1/load-balancers", cloud.url()), json!({"name": "durable"}), Some("tok")).await,
        )
        .expect("replay");
        assert_eq!(replay.id, lb.id);
        // A new balancer does not reuse a VIP in use.
        let third: LoadBalancer = serde_json::from_value(
            post(&http, format!("{}/v1/load-balancers", cloud.url()), json!({"name": "third"}), None).await,
        )
        .expect("third");
        assert!(third.address != lb.address && third.address != lb2.address);
        cloud.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn corrupt_state_is_a_clear_error() {
    tokio::time::timeout(TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("not json", "{ this is not json".to_string(), "corrupt"),
            ("wrong shape", json!({"balancers": 3}).to_string(), "corrupt"),
            (
                "dangling reference",
                json!({"version": 1, "balancers": {}, "listeners": {"lsn-1": {
                    "id": "lsn-1", "load_balancer_id": "lb-gone", "port": 80, "protocol": "tcp",
                    "backend_server_group_id": "sg-1"}}, "groups": {}, "acls": {}, "tokens": {}, "vip_cursor": 0})
                .to_string(),
                "inconsistent",
            ),
        ];
        for (desc, content, word) in cases {
            let path = dir.path().join(format!("{}.json", desc.replace(' ', "-")));
            std::fs::write(&path, content).expect("write");
            let err = start(&path, RecordingSink::new())
                .await
                .expect_err(desc);
            let text = err.to_string();
            assert!(text.contains(word), "{desc}: {text}");
            assert!(text.contains(&path.display().to_string()), "{desc}: names the file: {text}");
        }
        // A missing file is an empty cloud.
        let cloud = start(&dir.path().join("fresh.json"), RecordingSink::new())
            .await
            .expect("missing file starts empty");
        assert!(cloud.snapshot().balancers.is_empty());
        cloud.shutdown().await;
    })
    .await
    .expect("test timed out");
}
