//! Choosing the subnets of a new NLB from what EC2 reports (pure).

use std::collections::BTreeMap;

use portico_provider::ClusterName;

use crate::names::cluster_tag;
use crate::options::Scheme;

/// The role tag subnets carry for a scheme.
pub fn role_tag(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::InternetFacing => "kubernetes.io/role/elb",
        Scheme::Internal => "kubernetes.io/role/internal-elb",
    }
}

/// A subnet as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: String,
    pub az: String,
    pub vpc_id: String,
    pub tags: BTreeMap<String, String>,
}

/// One subnet per availability zone among `subnets`, the way upstream picks:
/// the role tag must be `""` or `"1"`; subnets tagged for another cluster are
/// skipped; a subnet tagged for this cluster (`owned` or `shared`) wins over
/// an untagged one; ties go to the lowest subnet id. All from one VPC (the
/// VPC of the best subnet). Sorted by zone.
pub fn choose(subnets: &[SubnetInfo], cluster: &ClusterName, scheme: Scheme) -> Vec<SubnetInfo> {
    let own = cluster_tag(cluster);
    let role = role_tag(scheme);
    let rank = |s: &SubnetInfo| -> Option<u8> {
        if !matches!(s.tags.get(role).map(String::as_str), Some("" | "1")) {
            return None;
        }
        let other_cluster = s
            .tags
            .keys()
            .any(|k| k.starts_with("kubernetes.io/cluster/") && *k != own);
        match s.tags.get(&own).map(String::as_str) {
            Some("owned" | "shared") => Some(0),
            _ if other_cluster => None,
            _ => Some(1),
        }
    };
    let mut eligible: Vec<(u8, &SubnetInfo)> = subnets
        .iter()
        .filter_map(|s| rank(s).map(|r| (r, s)))
        .collect();
    eligible.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let Some(vpc) = eligible.first().map(|(_, s)| s.vpc_id.clone()) else {
        return Vec::new();
    };
    let mut by_az: BTreeMap<&str, &SubnetInfo> = BTreeMap::new();
    for (_, s) in eligible.iter().filter(|(_, s)| s.vpc_id == vpc) {
        by_az.entry(s.az.as_str()).or_insert(s);
    }
    by_az.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, az: &str, vpc: &str, tags: &[(&str, &str)]) -> SubnetInfo {
        SubnetInfo {
            id: id.into(),
            az: az.into(),
            vpc_id: vpc.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn one_per_zone_preferring_cluster_tagged_then_lowest_id() {
        let c = ClusterName::new("c1");
        let elb = ("kubernetes.io/role/elb", "1");
        let mine = ("kubernetes.io/cluster/c1", "shared");
        let theirs = ("kubernetes.io/cluster/c2", "owned");
        let cases: &[(&str, Vec<SubnetInfo>, Scheme, &[&str])] = &[
            (
                "lowest id per zone",
                vec![
                    subnet("subnet-b", "az-a", "vpc-1", &[elb]),
                    subnet("subnet-a", "az-a", "vpc-1", &[elb]),
                    subnet("subnet-c", "az-b", "vpc-1", &[elb]),
                ],
                Scheme::InternetFacing,
                &["subnet-a", "subnet-c"],
            ),
            (
                "cluster-tagged wins",
                vec![
                    subnet("subnet-a", "az-a", "vpc-1", &[elb]),
                    subnet("subnet-z", "az-a", "vpc-1", &[elb, mine]),
                ],
                Scheme::InternetFacing,
                &["subnet-z"],
            ),
            (
                "other cluster skipped",
                vec![
                    subnet("subnet-a", "az-a", "vpc-1", &[elb, theirs]),
                    subnet("subnet-b", "az-a", "vpc-1", &[elb]),
                ],
                Scheme::InternetFacing,
                &["subnet-b"],
            ),
            (
                "role tag must fit the scheme",
                vec![subnet("subnet-a", "az-a", "vpc-1", &[elb])],
                Scheme::Internal,
                &[],
            ),
            (
                "role tag value other than 1 is ignored",
                vec![subnet(
                    "subnet-a",
                    "az-a",
                    "vpc-1",
                    &[("kubernetes.io/role/elb", "0")],
                )],
                Scheme::InternetFacing,
                &[],
            ),
            (
                "one vpc only",
                vec![
                    subnet("subnet-a", "az-a", "vpc-2", &[elb]),
                    subnet("subnet-b", "az-b", "vpc-1", &[elb, mine]),
                    subnet("subnet-c", "az-c", "vpc-1", &[elb]),
                ],
                Scheme::InternetFacing,
                &["subnet-b", "subnet-c"],
            ),
        ];
        for (desc, subnets, scheme, want) in cases {
            let got: Vec<String> = choose(subnets, &c, *scheme)
                .into_iter()
                .map(|s| s.id)
                .collect();
            assert_eq!(got, *want, "{desc}");
        }
    }
}
