//! Which NLB is a Service's, against the AWS endpoint in `AWS_ENDPOINT_URL`
//! (moto): the name `load-balancer-name` gives (found again after a
//! restart, by `get`, `delete` and `list_owned`, replaced when it changes),
//! and an NLB another controller made, taken over on the Service's opt-in
//! (`portico.io/adopt-load-balancer`) with its address kept, never without
//! it, never another Service's. Skips when the endpoint is not set.

use portico_aws::testing as common;

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancer, LoadBalancerSchemeEnum, LoadBalancerTypeEnum,
    ProtocolEnum, Tag, TargetDescription, TargetTypeEnum,
};
use common::AwsHarness;
use portico_aws::aws_test;
use portico_aws::{ADOPT_ANNOTATION, CallStats};
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, Protocol,
    ProviderError,
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

/// An NLB as another controller (cloud-provider-aws) leaves it: tagged for
/// the Service `service` (`namespace/name`), no security groups, port 80
/// forwarding to its own target group on NodePort 30080 with the nodes in it.
struct Legacy {
    arn: String,
    dns_name: String,
    group: String,
}

async fn legacy_nlb(h: &AwsHarness, name: &str, service: &str) -> Legacy {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let lb = h
        .elb
        .create_load_balancer()
        .name(name)
        .r#type(LoadBalancerTypeEnum::Network)
        .scheme(LoadBalancerSchemeEnum::InternetFacing)
        .set_subnets(Some(h.subnets.iter().map(|(id, _)| id.clone()).collect()))
        .tags(tag("kubernetes.io/service-name", service))
        .tags(tag("kubernetes.io/cluster/old-cluster", "owned"))
        .send()
        .await
        .expect("create the legacy NLB");
    let lb = lb.load_balancers().first().expect("an NLB").clone();
    let arn = lb.load_balancer_arn().expect("arn").to_string();
    let group = h
        .elb
        .create_target_group()
        .name(unique("k8s-legacy"))
        .protocol(ProtocolEnum::Tcp)
        .port(30080)
        .vpc_id(&h.vpc_id)
        .target_type(TargetTypeEnum::Instance)
        .send()
        .await
        .expect("create the legacy target group")
        .target_groups()
        .first()
        .and_then(|g| g.target_group_arn())
        .expect("target group arn")
        .to_string();
    let targets = h.instances(2).await;
    h.elb
        .register_targets()
        .target_group_arn(&group)
        .set_targets(Some(
            targets
                .iter()
                .map(|(id, _)| TargetDescription::builder().id(id).build())
                .collect(),
        ))
        .send()
        .await
        .expect("register");
    h.elb
        .create_listener()
        .load_balancer_arn(&arn)
        .port(80)
        .protocol(ProtocolEnum::Tcp)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(&group)
                .build(),
        )
        .send()
        .await
        .expect("create the legacy listener");
    Legacy {
        arn,
        dns_name: lb.dns_name().expect("dns name").to_string(),
        group,
    }
}

/// (port, target group ARN) of every listener of `lb_arn`.
async fn listeners(h: &AwsHarness, lb_arn: &str) -> Vec<(i32, String)> {
    let out = h
        .elb
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .expect("describe listeners");
    out.listeners()
        .iter()
        .map(|l| {
            let tg = l
                .default_actions()
                .iter()
                .find_map(|a| a.target_group_arn())
                .unwrap_or_default();
            (l.port().unwrap_or(0), tg.to_string())
        })
        .collect()
}

async fn group_exists(h: &AwsHarness, arn: &str) -> bool {
    h.elb
        .describe_target_groups()
        .target_group_arns(arn)
        .send()
        .await
        .is_ok_and(|out| !out.target_groups().is_empty())
}

async fn delete_legacy_group(h: &AwsHarness, legacy: &Legacy) {
    h.elb
        .delete_target_group()
        .target_group_arn(&legacy.group)
        .send()
        .await
        .expect("delete the legacy target group");
}

aws_test!(
    adopting_keeps_the_address_and_converges_in_place,
    |h: AwsHarness| async move {
        let mut s = spec(&h, "adopted", &[]).await;
        let service = format!("{}/{}", s.key.namespace, s.key.name);
        // cloud-provider-aws's name for this Service: a<uid without dashes>.
        let name = portico_aws::cloud_provider_aws_name(&s.key.uid);
        let legacy = legacy_nlb(&h, &name, &service).await;
        // Portico saw the Service before the opt-in and made its own NLB.
        let (own, _) = ensure(&h, &s).await;
        assert_ne!(own, legacy.dns_name);

        // Without the opt-in, naming the NLB is not taking it over.
        annotate(&mut s, &[(&format!("{A}name"), &name)]);
        let (r, stats) = calls(&h, h.provider.ensure_spec(&s)).await;
        match r {
            Err(ProviderError::Conflict { message }) => {
                assert!(message.contains(&name), "{message}");
                assert!(message.contains(ADOPT_ANNOTATION), "says how: {message}");
            }
            other => panic!("without the opt-in: {other:?}"),
        }
        assert_eq!(stats.mutations, 0, "nothing touched: {stats:?}");
        assert!(!names_service(&tags(&h, &legacy.arn).await, &s.key));
        assert!(
            lb_named(&h, &portico_aws::load_balancer_name(&s.key))
                .await
                .is_some()
        );

        // With it: the same NLB, the same address, ours now.
        annotate(
            &mut s,
            &[
                (&format!("{A}name"), ""),
                (ADOPT_ANNOTATION, "cloud-provider-aws"),
            ],
        );
        let (hostname, stats) = ensure(&h, &s).await;
        assert_eq!(hostname, legacy.dns_name, "the address is kept");
        assert_eq!(stats.count("CreateLoadBalancer"), 0, "{stats:?}");
        assert_eq!(
            stats.count("DeleteLoadBalancer"),
            1,
            "portico's own one goes: {stats:?}"
        );
        assert!(
            lb_named(&h, &portico_aws::load_balancer_name(&s.key))
                .await
                .is_none()
        );
        let lb_tags = tags(&h, &legacy.arn).await;
        assert!(names_service(&lb_tags, &s.key), "{lb_tags:?}");
        assert_eq!(
            lb_tags
                .get("kubernetes.io/cluster/old-cluster")
                .map(String::as_str),
            Some("owned"),
            "tags portico did not put there stay"
        );
        let ours = h.groups_tagged(&s.key.uid).await;
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert_eq!(
            listeners(&h, &legacy.arn).await,
            vec![(80, ours[0].clone())]
        );
        assert!(
            group_exists(&h, &legacy.group).await,
            "the old controller's group is left"
        );
        assert!(tags(&h, &legacy.group).await.is_empty(), "and never tagged");

        let (again, stats) = ensure(&h, &s).await;
        assert_eq!(again, legacy.dns_name);
        assert_eq!(stats.mutations, 0, "at rest: {stats:?}");
        let restarted = h.provider_with(|_| {});
        let before = restarted.calls().stats();
        restarted.ensure_spec(&s).await.expect("after a restart");
        let stats = restarted.calls().stats().since(&before);
        assert_eq!(stats.mutations, 0, "after a restart: {stats:?}");
        let got = restarted.get(&s.key).await.expect("get").expect("found");
        assert_eq!(
            got.ingress[0].hostname.as_deref(),
            Some(legacy.dns_name.as_str())
        );
        assert!(restarted.list_owned().await.expect("list").contains(&s.key));

        // It is ours: deleting the Service deletes it, and only what is ours.
        restarted.delete(&s.key).await.expect("delete");
        assert!(
            lb_named(&h, &name).await.is_none(),
            "the adopted NLB is deleted"
        );
        assert!(h.groups_tagged(&s.key.uid).await.is_empty());
        assert!(
            group_exists(&h, &legacy.group).await,
            "not ours, not deleted"
        );
        delete_legacy_group(&h, &legacy).await;
    }
);

aws_test!(
    only_an_nlb_no_one_else_owns_is_adopted,
    |h: AwsHarness| async move {
        let refused = |what: &'static str, r: Result<_, ProviderError>, words: &[&str]| match r {
            Err(ProviderError::Conflict { message }) => {
                for w in words {
                    assert!(message.contains(w), "{what}: {message}");
                }
            }
            other => panic!("{what}: {other:?}"),
        };

        // Another portico Service's NLB.
        let other_name = unique("other");
        let other = spec(&h, "other", &[(&format!("{A}name"), &other_name)]).await;
        let (other_host, _) = ensure(&h, &other).await;
        let other_arn = lb_named(&h, &other_name)
            .await
            .and_then(|lb| lb.load_balancer_arn().map(String::from))
            .expect("other's NLB");
        let taker = spec(&h, "taker", &[]).await;
        for value in [other_name.clone(), other_arn.clone()] {
            let mut s = taker.clone();
            annotate(&mut s, &[(ADOPT_ANNOTATION, &value)]);
            let (r, stats) = calls(&h, h.provider.ensure_spec(&s)).await;
            refused(
                "another portico Service's",
                r,
                &[&other_name, &other.key.name],
            );
            assert_eq!(stats.mutations, 0, "{value}: {stats:?}");
        }
        assert!(
            names_service(&tags(&h, &other_arn).await, &other.key),
            "still theirs"
        );
        let (still, _) = ensure(&h, &other).await;
        assert_eq!(still, other_host);

        // One another controller made for another Service.
        let elsewhere = legacy_nlb(&h, &unique("legacy"), "shop/someone-else").await;
        let mut s = taker.clone();
        annotate(&mut s, &[(ADOPT_ANNOTATION, &elsewhere.arn)]);
        let (r, stats) = calls(&h, h.provider.ensure_spec(&s)).await;
        refused("another Service's by its tags", r, &["shop/someone-else"]);
        assert_eq!(stats.mutations, 0, "{stats:?}");

        // One that does not exist: nothing is created in its place.
        let missing = unique("missing");
        let mut s = taker.clone();
        annotate(&mut s, &[(ADOPT_ANNOTATION, &missing)]);
        let (r, stats) = calls(&h, h.provider.ensure_spec(&s)).await;
        assert!(matches!(r, Err(ProviderError::NotFound { .. })), "{r:?}");
        assert_eq!(stats.mutations, 0, "{stats:?}");
        assert!(lb_named(&h, &missing).await.is_none());

        // By ARN, one that is no one's: adopted, address kept.
        let service = format!("{}/{}", taker.key.namespace, taker.key.name);
        let free = legacy_nlb(&h, &unique("free"), &service).await;
        let mut s = taker.clone();
        annotate(&mut s, &[(ADOPT_ANNOTATION, &free.arn)]);
        // Not if the Service asks for a scheme it does not have.
        let mut internal = s.clone();
        annotate(&mut internal, &[(&format!("{A}scheme"), "internal")]);
        let (r, stats) = calls(&h, h.provider.ensure_spec(&internal)).await;
        refused("another scheme", r, &["cannot be adopted", "internal"]);
        assert_eq!(stats.mutations, 0, "{stats:?}");
        let (hostname, _) = ensure(&h, &s).await;
        assert_eq!(hostname, free.dns_name);
        let (_, again) = ensure(&h, &s).await;
        assert_eq!(again.mutations, 0, "at rest: {again:?}");

        for key in [&s.key, &other.key] {
            h.provider.delete(key).await.expect("delete");
        }
        h.elb
            .delete_listener()
            .listener_arn(
                h.elb
                    .describe_listeners()
                    .load_balancer_arn(&elsewhere.arn)
                    .send()
                    .await
                    .expect("listeners")
                    .listeners()[0]
                    .listener_arn()
                    .expect("arn"),
            )
            .send()
            .await
            .expect("delete listener");
        h.elb
            .delete_load_balancer()
            .load_balancer_arn(&elsewhere.arn)
            .send()
            .await
            .expect("delete the other controller's NLB");
        for legacy in [&elsewhere, &free] {
            delete_legacy_group(&h, legacy).await;
        }
    }
);
