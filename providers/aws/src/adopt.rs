//! Whose an NLB found under a Service's name is, and the opt-in that lets
//! portico take over one it did not create
//! (`portico.io/adopt-load-balancer`). Pure: the provider reads, this decides.

use std::collections::BTreeMap;

use portico_provider::{Annotations, LoadBalancerKey, LoadBalancerSpec, ProviderError, tag};

use crate::names;

/// The opt-in: the NLB (by name or ARN) this Service takes over.
pub const ADOPT_ANNOTATION: &str = "portico.io/adopt-load-balancer";
/// The value naming the NLB cloud-provider-aws made for this Service.
pub const CLOUD_PROVIDER_AWS: &str = "cloud-provider-aws";

/// Tags other controllers put on a Service's load balancer, valued
/// `namespace/name`: cloud-provider-aws's and the AWS Load Balancer Controller's.
const SERVICE_TAGS: [&str; 2] = [names::TAG_SERVICE_NAME, "service.k8s.aws/stack"];

/// The NLB a Service adopts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptRef {
    /// By name: as annotated, or cloud-provider-aws's `a<uid>`.
    Name(String),
    /// By ARN; `name` is the one the ARN carries.
    Arn { arn: String, name: String },
}

impl AdoptRef {
    /// The NLB's name, which it keeps.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) | Self::Arn { name, .. } => name,
        }
    }

    /// The opt-in of `spec`, if it has one.
    ///
    /// # Errors
    /// `InvalidSpec` naming the annotation for a value that is neither a
    /// load balancer name AWS allows, a load balancer ARN, nor
    /// `cloud-provider-aws`.
    pub fn parse(spec: &LoadBalancerSpec) -> Result<Option<Self>, ProviderError> {
        let Some(raw) = spec.annotations.get(ADOPT_ANNOTATION) else {
            return Ok(None);
        };
        let invalid =
            |reason: String| ProviderError::invalid(Annotations::field(ADOPT_ANNOTATION), reason);
        if raw == CLOUD_PROVIDER_AWS {
            return Ok(Some(Self::Name(names::cloud_provider_aws_name(
                &spec.key.uid,
            ))));
        }
        if raw.starts_with("arn:") {
            let name = names::name_in_arn(raw).ok_or_else(|| {
                invalid(format!(
                    "{raw:?} is not a load balancer ARN (arn:aws:elasticloadbalancing:<region>:<account>:loadbalancer/net/<name>/<id>)"
                ))
            })?;
            return Ok(Some(Self::Arn {
                arn: raw.to_string(),
                name: name.to_string(),
            }));
        }
        if let Some(problem) = names::lb_name_problem(raw) {
            return Err(invalid(format!(
                "{problem}; give the load balancer's name, its ARN, or {CLOUD_PROVIDER_AWS}"
            )));
        }
        Ok(Some(Self::Name(raw.to_string())))
    }
}

impl std::fmt::Display for AdoptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "named {name}"),
            Self::Arn { arn, .. } => write!(f, "{arn}"),
        }
    }
}

/// Whose an NLB is, and so what `ensure` may do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Tagged as this Service's.
    Ours,
    /// Not portico's, and the Service opted in to taking it over.
    Adopt,
    /// Not this Service's to touch: a `Conflict` saying why.
    Refuse(String),
}

/// Whose the NLB `lb_name` with `tags` (`None`: it vanished while read) is
/// for `key`. `adopt` is the Service's opt-in when it names this NLB.
///
/// Never adopted: another portico Service's NLB (this cluster's or
/// another's), or one another controller tagged for another Service.
pub fn claim(
    key: &LoadBalancerKey,
    adopt: Option<&AdoptRef>,
    lb_name: &str,
    tags: Option<&BTreeMap<String, String>>,
) -> Claim {
    let Some(tags) = tags else {
        return Claim::Refuse(format!(
            "load balancer {lb_name} vanished while it was read"
        ));
    };
    if names::owned_by(key, tags) {
        return Claim::Ours;
    }
    let theirs = format!("load balancer {lb_name} exists but its tags do not name this Service");
    if let Some(cluster) = tags.get(tag::CLUSTER) {
        let service = |t: &str| tags.get(t).map_or("?", String::as_str);
        return Claim::Refuse(format!(
            "{theirs}: it is portico's for Service {}/{} of cluster {cluster}, and portico never takes over another Service's load balancer",
            service(tag::NAMESPACE),
            service(tag::NAME),
        ));
    }
    if adopt.is_none() {
        return Claim::Refuse(format!(
            "{theirs}: portico did not create it (to take it over, annotate the Service with {ADOPT_ANNOTATION}: {lb_name})"
        ));
    }
    let this = format!("{}/{}", key.namespace, key.name);
    if let Some((t, other)) = SERVICE_TAGS
        .iter()
        .find_map(|t| tags.get(*t).filter(|v| **v != this).map(|v| (t, v)))
    {
        return Claim::Refuse(format!(
            "{theirs}: its {t} tag says it is Service {other}'s, not {this}'s; not adopted"
        ));
    }
    Claim::Adopt
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_provider::ClusterName;

    fn key(uid: &str) -> LoadBalancerKey {
        LoadBalancerKey::new(ClusterName::new("prod"), "shop", "web", uid)
    }

    fn spec(value: Option<&str>) -> LoadBalancerSpec {
        let mut s = LoadBalancerSpec::new(key("8d1e4a2c-5b0f-4c1e-9a3d-2f6b7c8d9e0a"));
        if let Some(v) = value {
            s.annotations = Annotations::new(BTreeMap::from([(
                ADOPT_ANNOTATION.to_string(),
                v.to_string(),
            )]));
        }
        s
    }

    #[test]
    fn the_opt_in_names_an_nlb_by_name_arn_or_cloud_provider_aws() {
        let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/legacy/50dc6c495c0c9188";
        let cases: [(&str, Option<&str>, Option<AdoptRef>); 5] = [
            ("no annotation", None, None),
            (
                "a name",
                Some("legacy-web"),
                Some(AdoptRef::Name("legacy-web".into())),
            ),
            (
                "an ARN",
                Some(arn),
                Some(AdoptRef::Arn {
                    arn: arn.into(),
                    name: "legacy".into(),
                }),
            ),
            (
                "cloud-provider-aws's a<uid>",
                Some("cloud-provider-aws"),
                Some(AdoptRef::Name("a8d1e4a2c5b0f4c1e9a3d2f6b7c8d9e0".into())),
            ),
            (
                "spaces around",
                Some(" legacy-web "),
                Some(AdoptRef::Name("legacy-web".into())),
            ),
        ];
        for (desc, value, want) in cases {
            let got = AdoptRef::parse(&spec(value)).unwrap_or_else(|e| panic!("{desc}: {e}"));
            assert_eq!(got, want, "{desc}");
        }
    }

    #[test]
    fn a_bad_opt_in_names_the_annotation() {
        for (desc, value) in [
            ("empty", ""),
            ("not a name", "legacy_web"),
            ("internal-", "internal-web"),
            (
                "a target group ARN",
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg/1",
            ),
        ] {
            match AdoptRef::parse(&spec(Some(value))) {
                Err(ProviderError::InvalidSpec { field, .. }) => {
                    assert_eq!(
                        field,
                        format!("metadata.annotations[{ADOPT_ANNOTATION}]"),
                        "{desc}"
                    );
                }
                other => panic!("{desc}: {other:?}"),
            }
        }
    }

    /// (description, opt-in, tags, `Ok` or words of the refusal)
    type Case<'a> = (
        &'a str,
        Option<&'a AdoptRef>,
        Option<BTreeMap<String, String>>,
        Result<(), &'a str>,
    );

    #[test]
    fn only_what_is_no_one_else_s_is_adopted_and_only_on_opt_in() {
        let k = key("u1");
        let opt_in = AdoptRef::Name("legacy".into());
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut other_service = names::ownership_tags(&key("u2"));
        other_service.insert(tag::NAME.into(), "api".into());
        let mut other_cluster = names::ownership_tags(&k);
        other_cluster.insert(tag::CLUSTER.into(), "staging".into());
        let cases: Vec<Case<'_>> = vec![
            ("ours", None, Some(names::ownership_tags(&k)), Ok(())),
            (
                "ours, opt-in left on",
                Some(&opt_in),
                Some(names::ownership_tags(&k)),
                Ok(()),
            ),
            (
                "untagged, no opt-in",
                None,
                Some(tags(&[])),
                Err("annotate the Service with portico.io/adopt-load-balancer: legacy"),
            ),
            ("untagged, opt-in", Some(&opt_in), Some(tags(&[])), Ok(())),
            (
                "cloud-provider-aws's for this Service",
                Some(&opt_in),
                Some(tags(&[
                    ("kubernetes.io/service-name", "shop/web"),
                    ("kubernetes.io/cluster/old", "owned"),
                ])),
                Ok(()),
            ),
            (
                "cloud-provider-aws's for another Service",
                Some(&opt_in),
                Some(tags(&[("kubernetes.io/service-name", "shop/api")])),
                Err("Service shop/api's"),
            ),
            (
                "the AWS Load Balancer Controller's for another Service",
                Some(&opt_in),
                Some(tags(&[("service.k8s.aws/stack", "other/web")])),
                Err("Service other/web's"),
            ),
            (
                "another portico Service's",
                Some(&opt_in),
                Some(other_service),
                Err("Service shop/api of cluster prod"),
            ),
            (
                "another cluster's portico",
                Some(&opt_in),
                Some(other_cluster),
                Err("of cluster staging"),
            ),
            ("vanished", Some(&opt_in), None, Err("vanished")),
        ];
        for (desc, adopt, tags, want) in cases {
            let got = claim(&k, adopt, "legacy", tags.as_ref());
            match (got, want) {
                (Claim::Ours, Ok(())) if tags.as_ref().is_some_and(|t| names::owned_by(&k, t)) => {}
                (Claim::Adopt, Ok(())) if adopt.is_some() => {}
                (Claim::Refuse(why), Err(words)) => {
                    assert!(why.contains("legacy"), "{desc}: {why}");
                    assert!(why.contains(words), "{desc}: {why}");
                }
                (got, want) => panic!("{desc}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
