//! Which NLB is a Service's, against the AWS endpoint in `AWS_ENDPOINT_URL`
//! (moto): the name `load-balancer-name` gives (found again after a
//! restart, by `get`, `delete` and `list_owned`, replaced when it changes).
//! Skips when the endpoint is not set.

use portico_aws::testing as common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::LoadBalancer;
use common::AwsHarness;
use portico_aws::CallStats;
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, Protocol,
};

const A: &str = "service.beta.kubernetes.io/aws-load-balancer-";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn key(h: &AwsHarness, name: &str) -> LoadBalancerKey {
    let uid = uuid::Uuid::new_v4().to_string();
    LoadBalancerKey::new(h.cluster.clone(), "adopt", unique(name), uid)
}

fn tcp(port: u16, node_port: u16) -> Listener {
    Listener {
        port,
        protocol: Protocol::Tcp,
        node_port,
        name: None,
    }
}

async fn spec(h: &AwsHarness, name: &str, annotations: &[(&str, &str)]) -> LoadBalancerSpec {
    let mut s = LoadBalancerSpec::new(key(h, name));
    s.listeners = vec![tcp(80, 30080)];
    s.targets = h.target_list(2).await.into();
    annotate(&mut s, annotations);
    s
}

/// Set (or, with an empty value, remove) annotations; keys are full names.
fn annotate(s: &mut LoadBalancerSpec, pairs: &[(&str, &str)]) {
    let mut map: BTreeMap<String, String> = s
        .annotations
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    for (k, v) in pairs {
        if v.is_empty() {
            map.remove(*k);
        } else {
            map.insert(k.to_string(), v.to_string());
        }
    }
    s.annotations = Annotations::new(map);
}

async fn calls<F, T>(h: &AwsHarness, f: F) -> (T, CallStats)
where
    F: std::future::Future<Output = T>,
{
    let before = h.provider.calls().stats();
    let out = f.await;
    (out, h.provider.calls().stats().since(&before))
}

async fn ensure(h: &AwsHarness, s: &LoadBalancerSpec) -> (String, CallStats) {
    let (r, stats) = calls(h, h.provider.ensure_spec(s)).await;
    let status = r.unwrap_or_else(|e| panic!("ensure {}: {e}", s.key));
    let hostname = status.ingress[0].hostname.clone().expect("a hostname");
    (hostname, stats)
}

/// The load balancer named `name`, as AWS describes it.
async fn lb_named(h: &AwsHarness, name: &str) -> Option<LoadBalancer> {
    match h.elb.describe_load_balancers().names(name).send().await {
        Ok(out) => out.load_balancers().first().cloned(),
        Err(_) => None,
    }
}

async fn tags(h: &AwsHarness, arn: &str) -> BTreeMap<String, String> {
    let out = h
        .elb
        .describe_tags()
        .resource_arns(arn)
        .send()
        .await
        .expect("describe tags");
    out.tag_descriptions()
        .iter()
        .flat_map(|d| d.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

fn names_service(tags: &BTreeMap<String, String>, key: &LoadBalancerKey) -> bool {
    tags.get("portico.io/service-uid") == Some(&key.uid)
        && tags.get("portico.io/cluster").map(String::as_str) == Some(key.cluster.as_str())
}

macro_rules! aws_test {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if common::skip() {
                return;
            }
            tokio::time::timeout(Duration::from_secs(180), async {
                let h = AwsHarness::start().await;
                #[allow(clippy::redundant_closure_call)]
                ($body)(h).await
            })
            .await
            .expect("timed out");
        }
    };
}

aws_test!(
    a_named_load_balancer_is_found_again_listed_and_deleted,
    |h: AwsHarness| async move {
        let name = unique("web");
        let s = spec(&h, "named", &[(&format!("{A}name"), &name)]).await;
        let (hostname, _) = ensure(&h, &s).await;
        let lb = lb_named(&h, &name).await.expect("created with that name");
        assert_eq!(lb.dns_name(), Some(hostname.as_str()));
        let arn = lb.load_balancer_arn().expect("arn").to_string();
        assert!(names_service(&tags(&h, &arn).await, &s.key));

        let (again, stats) = ensure(&h, &s).await;
        assert_eq!(again, hostname);
        assert_eq!(stats.mutations, 0, "re-ensure mutated: {stats:?}");
        // A restarted controller finds it by the annotation's name.
        let restarted = h.provider_with(|_| {});
        let before = restarted.calls().stats();
        let status = restarted
            .ensure_spec(&s)
            .await
            .expect("ensure after restart");
        let stats = restarted.calls().stats().since(&before);
        assert_eq!(
            status.ingress[0].hostname.as_deref(),
            Some(hostname.as_str())
        );
        assert_eq!(stats.mutations, 0, "after a restart: {stats:?}");
        assert_eq!(stats.count("CreateLoadBalancer"), 0);

        // get, list_owned and delete know only the key: they find it by tags.
        let got = restarted.get(&s.key).await.expect("get").expect("found");
        assert_eq!(got.ingress[0].hostname.as_deref(), Some(hostname.as_str()));
        assert!(restarted.list_owned().await.expect("list").contains(&s.key));
        restarted.delete(&s.key).await.expect("delete");
        assert!(lb_named(&h, &name).await.is_none(), "deleted");
        assert!(
            h.groups_tagged(&s.key.uid).await.is_empty(),
            "target groups deleted"
        );
        restarted.delete(&s.key).await.expect("delete twice");
        assert_eq!(restarted.get(&s.key).await.expect("get"), None);
        assert!(!restarted.list_owned().await.expect("list").contains(&s.key));
    }
);

aws_test!(
    changing_the_name_replaces_the_load_balancer,
    |h: AwsHarness| async move {
        let (first, second) = (unique("first"), unique("second"));
        let annotation = format!("{A}name");
        let mut s = spec(&h, "renamed", &[]).await;
        let (generated, _) = ensure(&h, &s).await;

        let steps = [
            ("set", first),
            ("changed", second),
            ("removed", portico_aws::load_balancer_name(&s.key)),
        ];
        let mut previous = (portico_aws::load_balancer_name(&s.key), generated);
        for (what, name) in steps {
            let value = if what == "removed" { "" } else { name.as_str() };
            annotate(&mut s, &[(&annotation, value)]);
            let (hostname, stats) = ensure(&h, &s).await;
            assert_ne!(hostname, previous.1, "{what}: a new NLB, a new address");
            assert_eq!(
                (
                    stats.count("DeleteLoadBalancer"),
                    stats.count("CreateLoadBalancer")
                ),
                (1, 1),
                "{what}: {stats:?}"
            );
            assert!(
                lb_named(&h, &previous.0).await.is_none(),
                "{what}: old one deleted"
            );
            let lb = lb_named(&h, &name).await.expect("new one exists");
            assert_eq!(lb.dns_name(), Some(hostname.as_str()), "{what}");
            let (_, again) = ensure(&h, &s).await;
            assert_eq!(again.mutations, 0, "{what}: then at rest: {again:?}");
            previous = (name, hostname);
        }
        h.provider.delete(&s.key).await.expect("delete");
        assert!(lb_named(&h, &previous.0).await.is_none());
    }
);

aws_test!(
    a_name_aws_would_refuse_is_refused_before_any_call,
    |h: AwsHarness| async move {
        for bad in [
            "internal-web",
            "web_1",
            "-web",
            "a2345678901234567890123456789012b",
        ] {
            let s = spec(&h, "bad", &[(&format!("{A}name"), bad)]).await;
            let (r, stats) = calls(&h, h.provider.ensure_spec(&s)).await;
            match r {
                Err(portico_provider::ProviderError::InvalidSpec { field, .. }) => {
                    assert_eq!(field, format!("metadata.annotations[{A}name]"), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
            assert_eq!(stats.total(), 0, "{bad}: no AWS call");
        }
    }
);
