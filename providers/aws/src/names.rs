//! AWS's conventions on top of the contract's identity
//! ([`LoadBalancerKey::owner_tags`], [`LoadBalancerKey::from_tags`]): the
//! 32-character names AWS allows, and the `kubernetes.io/*` tags that
//! cloud-provider-aws and AWS tooling read.

use std::collections::BTreeMap;

use portico_provider::{ClusterName, LoadBalancerKey, short_hash};

/// AWS's limit for load balancer and target group names.
pub const MAX_NAME: usize = 32;

/// `namespace/name`, as cloud-provider-aws tags its balancers.
pub const TAG_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The keys of `additional-resource-tags` portico applied, comma-separated,
/// so that removing one from the annotation removes the tag too, while tags
/// someone else put on the resources are left alone.
pub const TAG_ADDITIONAL_KEYS: &str = "portico.io/additional-tag-keys";

/// Marks the cluster's shared backend security group (valued `backend`).
pub const TAG_GROUP_ROLE: &str = "portico.io/security-group-role";
pub const BACKEND_ROLE: &str = "backend";

/// Every name portico gives starts with this.
pub const NAME_PREFIX: &str = "k8s-";

/// `kubernetes.io/cluster/<cluster>`, valued `owned` on what portico creates.
pub fn cluster_tag(cluster: &ClusterName) -> String {
    format!("kubernetes.io/cluster/{cluster}")
}

/// The NLB's name: `k8s-<28 hex>`.
pub fn load_balancer_name(key: &LoadBalancerKey) -> String {
    key.cloud_name("k8s", MAX_NAME)
}

/// Whether `name` has the form of [`load_balancer_name`] (`k8s-<28 hex>`):
/// the NLB of some Service under its generated name. Such an NLB is found
/// by that name alone, so searches by tags skip it.
pub fn is_generated_lb_name(name: &str) -> bool {
    name.len() == MAX_NAME
        && name
            .strip_prefix(NAME_PREFIX)
            .is_some_and(|h| h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

/// Why AWS would refuse `name` for a load balancer, if it would: 1 to 32
/// letters, digits and hyphens, no hyphen first or last, not `internal-...`.
pub fn lb_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Some(format!(
            "{name:?} must be 1 to {MAX_NAME} characters long (it has {})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
    {
        return Some(format!(
            "{name:?} may hold only letters, digits and hyphens, not {bad:?}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("{name:?} must not start or end with a hyphen"));
    }
    if name.to_ascii_lowercase().starts_with("internal-") {
        return Some(format!(
            "{name:?} must not start with \"internal-\" (AWS reserves it)"
        ));
    }
    None
}

/// The name cloud-provider-aws gives a Service's load balancer (Kubernetes'
/// `DefaultLoadBalancerName`): `a` and the Service UID without dashes,
/// cut to 32 characters.
pub fn cloud_provider_aws_name(uid: &str) -> String {
    let mut name: String = format!("a{uid}").chars().filter(|c| *c != '-').collect();
    name.truncate(MAX_NAME);
    name
}

/// The load balancer name in an ELBv2 load balancer ARN
/// (`arn:aws:elasticloadbalancing:<region>:<account>:loadbalancer/net/<name>/<id>`).
pub fn name_in_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("elasticloadbalancing"), Some(_), Some(_)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let mut resource = parts.next()?.split('/');
    match (
        resource.next(),
        resource.next(),
        resource.next(),
        resource.next(),
        resource.next(),
    ) {
        (Some("loadbalancer"), Some(kind), Some(name), Some(id), None)
            if !kind.is_empty() && !name.is_empty() && !id.is_empty() =>
        {
            Some(name)
        }
        _ => None,
    }
}

/// The cluster's backend security group: `k8s-traffic-<16 hex of the
/// cluster>`, one per VPC (group names are unique per VPC).
pub fn backend_group_name(cluster: &ClusterName) -> String {
    format!(
        "{NAME_PREFIX}traffic-{}",
        short_hash(&[cluster.as_str()], 16)
    )
}

/// The tags of the cluster's backend group: the cluster's, and its role.
pub fn backend_group_tags(cluster: &ClusterName) -> BTreeMap<String, String> {
    let mut tags = portico_provider::cluster_tags(cluster);
    tags.insert(cluster_tag(cluster), "owned".to_string());
    tags.insert(TAG_GROUP_ROLE.to_string(), BACKEND_ROLE.to_string());
    tags
}

/// Whether `tags` mark the backend group of `cluster`.
pub fn is_backend_group_of(cluster: &ClusterName, tags: &BTreeMap<String, String>) -> bool {
    backend_group_tags(cluster)
        .iter()
        .all(|(k, v)| tags.get(k) == Some(v))
}

/// The part of every target group name of `key`: `k8s-<8 hex>-`, so the
/// target groups of one Service can be found by name prefix alone.
pub fn target_group_prefix(key: &LoadBalancerKey) -> String {
    format!("{NAME_PREFIX}{}-", key.hash(&[], 8))
}

/// A target group name: `k8s-<8 hex of key>-<19 hex of port/protocol/nodePort>`,
/// exactly 32 characters. Port, protocol and nodePort are what AWS cannot
/// change on a target group, so a change of any of them is a new name.
pub fn target_group_name(
    key: &LoadBalancerKey,
    port: u16,
    protocol: &str,
    node_port: u16,
) -> String {
    let prefix = target_group_prefix(key);
    let rest = short_hash(
        &[&port.to_string(), protocol, &node_port.to_string()],
        MAX_NAME - prefix.len(),
    );
    format!("{prefix}{rest}")
}

/// The ownership tags of every resource of `key`: the contract's, plus
/// the `kubernetes.io/*` pair AWS tooling reads.
pub fn ownership_tags(key: &LoadBalancerKey) -> BTreeMap<String, String> {
    let mut tags = key.owner_tags();
    tags.insert(
        TAG_SERVICE_NAME.to_string(),
        format!("{}/{}", key.namespace, key.name),
    );
    tags.insert(cluster_tag(&key.cluster), "owned".to_string());
    tags
}

/// The key that tags say owns a resource, if they are this cluster's and
/// also mark it `owned` in AWS's words (never a `shared` resource).
pub fn key_from_tags(
    cluster: &ClusterName,
    tags: &BTreeMap<String, String>,
) -> Option<LoadBalancerKey> {
    if tags.get(&cluster_tag(cluster)).map(String::as_str) != Some("owned") {
        return None;
    }
    LoadBalancerKey::from_tags(cluster, tags)
}

/// Whether `tags` mark the resource as `key`'s.
pub fn owned_by(key: &LoadBalancerKey, tags: &BTreeMap<String, String>) -> bool {
    key_from_tags(&key.cluster, tags).as_ref() == Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str) -> LoadBalancerKey {
        LoadBalancerKey::new(ClusterName::new("prod-1"), "team-a", "web", uid)
    }

    #[test]
    fn names_are_bounded_deterministic_and_distinct() {
        let cases = [
            (
                "nlb",
                load_balancer_name(&key("u1")),
                load_balancer_name(&key("u2")),
            ),
            (
                "target group",
                target_group_name(&key("u1"), 80, "TCP", 30080),
                target_group_name(&key("u2"), 80, "TCP", 30080),
            ),
            (
                "target group by node port",
                target_group_name(&key("u1"), 80, "TCP", 30080),
                target_group_name(&key("u1"), 80, "TCP", 30081),
            ),
            (
                "target group by protocol",
                target_group_name(&key("u1"), 53, "UDP", 30053),
                target_group_name(&key("u1"), 53, "TCP_UDP", 30053),
            ),
        ];
        for (desc, a, b) in cases {
            assert!(a.len() <= MAX_NAME, "{desc}: {a} is {} long", a.len());
            assert!(a.starts_with(NAME_PREFIX), "{desc}: {a}");
            assert!(
                a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !a.ends_with('-'),
                "{desc}: {a} uses only what AWS allows"
            );
            assert_ne!(a, b, "{desc}: differs");
        }
        assert_eq!(
            load_balancer_name(&key("u1")),
            load_balancer_name(&key("u1"))
        );
        let tg = target_group_name(&key("u1"), 80, "TCP", 30080);
        assert_eq!(tg.len(), MAX_NAME);
        assert!(tg.starts_with(&target_group_prefix(&key("u1"))));
    }

    #[test]
    fn backend_group_is_the_cluster_s_and_no_service_s() {
        let c = ClusterName::new("prod-1");
        let name = backend_group_name(&c);
        assert!(
            name.starts_with("k8s-traffic-") && name.len() == 28,
            "{name}"
        );
        assert_ne!(name, backend_group_name(&ClusterName::new("prod-2")));
        let tags = backend_group_tags(&c);
        assert!(is_backend_group_of(&c, &tags));
        assert!(!is_backend_group_of(&ClusterName::new("prod-2"), &tags));
        assert_eq!(
            key_from_tags(&c, &tags),
            None,
            "never taken for a Service's"
        );
        assert!(!is_backend_group_of(&c, &ownership_tags(&key("u1"))));
    }

    #[test]
    fn generated_names_are_recognised_and_nothing_else() {
        let cases = [
            ("a generated name", load_balancer_name(&key("u1")), true),
            ("a user's name", "web-prod".to_string(), false),
            (
                "k8s- but not hex",
                "k8s-web-prod-0000000000000000000".to_string(),
                false,
            ),
            (
                "k8s- and hex but short",
                "k8s-0123456789abcdef".to_string(),
                false,
            ),
            (
                "upper-case hex is not ours",
                "k8s-0123456789ABCDEF0123456789AB".to_string(),
                false,
            ),
            (
                "cloud-provider-aws's",
                cloud_provider_aws_name("8d1e4a2c-5b0f-4c1e-9a3d-2f6b7c8d9e0a"),
                false,
            ),
        ];
        for (desc, name, generated) in cases {
            assert_eq!(is_generated_lb_name(&name), generated, "{desc}: {name}");
        }
    }

    #[test]
    fn load_balancer_names_follow_aws_rules() {
        let cases: [(&str, &str, Option<&str>); 9] = [
            ("letters, digits, hyphens", "web-prod-1", None),
            ("32 characters", "a234567890123456789012345678901b", None),
            ("one character", "a", None),
            ("empty", "", Some("1 to 32")),
            (
                "33 characters",
                "a2345678901234567890123456789012b",
                Some("1 to 32"),
            ),
            ("underscore", "web_prod", Some("not '_'")),
            ("leading hyphen", "-web", Some("hyphen")),
            ("trailing hyphen", "web-", Some("hyphen")),
            ("internal-", "Internal-web", Some("internal-")),
        ];
        for (desc, name, problem) in cases {
            match (lb_name_problem(name), problem) {
                (None, None) => {}
                (Some(got), Some(words)) => assert!(got.contains(words), "{desc}: {got}"),
                (got, _) => panic!("{desc}: {name:?} gave {got:?}"),
            }
        }
    }

    #[test]
    fn cloud_provider_aws_names_as_kubernetes_makes_them() {
        // DefaultLoadBalancerName: "a" + UID, dashes removed, cut to 32.
        let name = cloud_provider_aws_name("8d1e4a2c-5b0f-4c1e-9a3d-2f6b7c8d9e0a");
        assert_eq!(name, "a8d1e4a2c5b0f4c1e9a3d2f6b7c8d9e0");
        assert_eq!(name.len(), MAX_NAME);
        assert_eq!(lb_name_problem(&name), None);
        assert_eq!(cloud_provider_aws_name("short-uid"), "ashortuid");
    }

    #[test]
    fn names_are_read_from_load_balancer_arns() {
        let cases = [
            (
                "a network load balancer",
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/web/50dc6c495c0c9188",
                Some("web"),
            ),
            (
                "another partition",
                "arn:aws-cn:elasticloadbalancing:cn-north-1:123456789012:loadbalancer/net/web/1",
                Some("web"),
            ),
            (
                "an emulator's app/ for every type",
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/1",
                Some("web"),
            ),
            (
                "a target group",
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1",
                None,
            ),
            (
                "a listener",
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/net/web/1/2",
                None,
            ),
            (
                "another service",
                "arn:aws:ec2:us-east-1:123456789012:loadbalancer/net/web/1",
                None,
            ),
            ("not an ARN", "web", None),
        ];
        for (desc, arn, name) in cases {
            assert_eq!(name_in_arn(arn), name, "{desc}");
        }
    }

    #[test]
    fn tags_round_trip_to_the_key() {
        let k = key("u1");
        let tags = ownership_tags(&k);
        assert_eq!(
            tags.get("kubernetes.io/service-name").map(String::as_str),
            Some("team-a/web")
        );
        assert_eq!(
            tags.get("kubernetes.io/cluster/prod-1").map(String::as_str),
            Some("owned")
        );
        assert_eq!(key_from_tags(&k.cluster, &tags), Some(k.clone()));
        assert!(owned_by(&k, &tags));
        assert!(!owned_by(&key("u2"), &tags));
        assert_eq!(key_from_tags(&ClusterName::new("other"), &tags), None);
    }
}
