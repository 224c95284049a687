//! End to end with the AWS provider: the API stand-in, the real controller,
//! and the AWS emulator in `AWS_ENDPOINT_URL` (moto from `scripts/moto.sh`).
//! A Service gets an NLB whose DNS name shows as its hostname; target groups
//! follow nodes joining and leaving; deleting the Service leaves nothing in
//! the emulator. Skipped, with the reason printed, without an endpoint.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use portico::builders::{node, svc};
use portico::runtime::{ReplicaOptions, run_replica};
use portico_aws::testing::{self as aws, AwsHarness};
use portico_provider::DynProvider;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Instance ids registered in each of the Service's target groups.
async fn registered(h: &AwsHarness, uid: &str) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for arn in h.groups_tagged(uid).await {
        let health = h
            .elb
            .describe_target_health()
            .target_group_arn(&arn)
            .send()
            .await
            .expect("describe target health");
        let ids = health
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target()?.id().map(str::to_string))
            .collect();
        out.push(ids);
    }
    out
}

/// Wait until every one of the Service's `groups` target groups holds exactly `want`.
async fn targets_become(h: &AwsHarness, uid: &str, groups: usize, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(&format!("targets {want:?}"), 30, || async {
        let got = registered(h, uid).await;
        (got.len() == groups && got.iter().all(|g| *g == want)).then_some(())
    })
    .await;
}

async fn service_gets_an_nlb_that_follows_nodes_and_is_removed_on_delete(backend: Backend) {
    if aws::skip() {
        return;
    }
    within(180, async {
        let h = AwsHarness::start().await;
        let instances = h.instances(4).await;
        let env = Env::api_only(backend, 0).await;
        let add = |i: usize| {
            let (id, zone) = instances[i].clone();
            let n = node(&format!("ip-10-0-0-{i}")).ip(&format!("10.0.0.{}", i + 10)).provider_id(&format!("aws:///{zone}/{id}")).build();
            let nodes = env.nodes();
            async move { nodes.create(&PostParams::default(), &n).await.expect("create node") }
        };
        for i in 0..3 {
            add(i).await;
        }

        let provider: Arc<dyn DynProvider> = Arc::new(h.provider.clone());
        let config = portico::config::ControllerConfig { cluster: h.cluster.clone(), ..test_config() };
        let http = free_addr();
        let options = ReplicaOptions { config, lease: None, http_addr: Some(http), identity: "e2e-aws".into() };
        let shutdown = CancellationToken::new();
        let controller = tokio::spawn(run_replica(env.controller_client.clone(), provider, options, Registry::default(), shutdown.clone()));

        let created = env.create(svc("default", "web").lb().port(80, 30080).port_proto(53, 30053, "UDP").source_range("203.0.113.0/24").build()).await;
        let uid = created.uid().expect("uid");

        // The NLB's DNS name becomes the Service's hostname.
        let ready = eventually("hostname", 60, || async { env.get("web").await.filter(|s| ingress_hostname(s).is_some()) }).await;
        let hostname = ingress_hostname(&ready).expect("hostname");
        let lbs = h.elb.describe_load_balancers().send().await.expect("describe load balancers");
        let ours: Vec<_> = lbs.load_balancers().iter().filter(|lb| lb.dns_name() == Some(hostname.as_str())).collect();
        assert_eq!(ours.len(), 1, "exactly one NLB carries {hostname}");
        assert!(has_finalizer(&ready), "cleanup finalizer set before the cloud call");
        // The NLB carries its own group and the cluster's backend group; the
        // own group admits the source range, and nothing is reported unenforced.
        let groups = h.ec2.describe_security_groups().set_group_ids(Some(ours[0].security_groups().to_vec())).send().await.expect("describe security groups");
        let backend_name = portico_aws::backend_group_name(&h.cluster);
        let (backend, own): (Vec<_>, Vec<_>) = groups.security_groups().iter().partition(|g| g.group_name() == Some(backend_name.as_str()));
        assert_eq!((backend.len(), own.len()), (1, 1), "own and backend group: {groups:?}");
        let backend = backend[0].group_id().expect("id").to_string();
        let own = own[0].group_id().expect("id").to_string();
        let group = h.ec2.describe_security_groups().group_ids(&own).send().await.expect("describe security group");
        let cidrs: Vec<&str> = group.security_groups()[0].ip_permissions().iter().flat_map(|p| p.ip_ranges()).filter_map(|r| r.cidr_ip()).collect();
        assert!(!cidrs.is_empty() && cidrs.iter().all(|c| *c == "203.0.113.0/24"), "{cidrs:?}");
        assert!(
            env.events("web").await.iter().all(|(_, reason, _)| reason != "UnenforcedField"),
            "source ranges are enforced"
        );
        let ids: Vec<&str> = instances.iter().map(|(id, _)| id.as_str()).collect();
        targets_become(&h, &uid, 2, &ids[..3]).await;

        // A node joins; another is excluded by label; a third is deleted.
        add(3).await;
        targets_become(&h, &uid, 2, &ids).await;
        let exclude = serde_json::json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}});
        env.nodes().patch("ip-10-0-0-0", &PatchParams::default(), &Patch::Merge(&exclude)).await.expect("label node");
        env.nodes().delete("ip-10-0-0-1", &DeleteParams::default()).await.expect("delete node");
        targets_become(&h, &uid, 2, &ids[2..]).await;

        // At rest, a resync-style re-ensure changes nothing in AWS: a change
        // AWS ignores makes portico ensure again; wait until that ensure is done.
        const ENSURED: &str = "portico_reconciles_total{result=\"ensured\"}";
        let ensured = eventually("ensures counted", 10, || scrape(http, ENSURED)).await;
        let before = h.provider.calls().stats().mutations;
        let touch = serde_json::json!({"metadata": {"annotations": {"example.com/touched": "1"}}});
        env.services().patch("web", &PatchParams::default(), &Patch::Merge(&touch)).await.expect("touch web");
        eventually("web ensured again", 30, || async { scrape(http, ENSURED).await.filter(|n| *n > ensured) }).await;
        assert_eq!(h.provider.calls().stats().mutations, before, "no mutating AWS call while nothing changes");

        // Deleting the Service removes the NLB and its target groups, then the finalizer.
        env.delete("web").await;
        eventually("Service gone", 60, || async { env.get("web").await.is_none().then_some(()) }).await;
        assert!(h.groups_tagged(&uid).await.is_empty(), "target groups left behind");
        let lbs = h.elb.describe_load_balancers().send().await.expect("describe load balancers");
        assert!(lbs.load_balancers().iter().all(|lb| lb.dns_name() != Some(hostname.as_str())), "NLB left behind");
        assert!(h.provider.list_owned().await.expect("list owned").is_empty(), "the cluster owns nothing");
        for (what, id) in [("own", &own), ("backend", &backend)] {
            assert!(!h.security_group_exists(id).await, "{what} security group left behind");
        }

        shutdown.cancel();
        let _ = controller.await;
    })
    .await;
}

/// On the stand-in and on the real control plane (as the controller's ServiceAccount).
mod standin {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn service_gets_an_nlb_that_follows_nodes_and_is_removed_on_delete() {
        super::service_gets_an_nlb_that_follows_nodes_and_is_removed_on_delete(
            super::Backend::StandIn,
        )
        .await
    }
}

mod real {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn service_gets_an_nlb_that_follows_nodes_and_is_removed_on_delete() {
        super::service_gets_an_nlb_that_follows_nodes_and_is_removed_on_delete(super::Backend::Real)
            .await
    }
}
