//! Choosing the subnets of a new NLB from what EC2 reports (pure), the way
//! cloud-provider-aws and the AWS Load Balancer Controller do between them:
//! subnets of the cluster's VPC tagged with the scheme's role tag; when none
//! is, cloud-provider-aws's fallback (public subnets, by their route to an
//! internet gateway, for an internet-facing NLB; any, private first, for an
//! internal one). Never a subnet tagged for another cluster. One per zone.

use std::collections::{BTreeMap, BTreeSet};

use crate::options::Scheme;
use crate::security::CLUSTER_TAG_PREFIX;

/// The zone type of a regular Availability Zone. Subnets in Local Zones
/// and Wavelength Zones (`local-zone`, `wavelength-zone`) cannot hold an
/// NLB, so discovery leaves them out, as cloud-provider-aws does.
pub const REGULAR_ZONE: &str = "availability-zone";

/// `subnets` without those in Local or Wavelength Zones, by `zone_types`
/// (zone name → type). A zone whose type is unknown is kept.
pub fn in_regular_zones(
    subnets: Vec<SubnetInfo>,
    zone_types: &BTreeMap<String, String>,
) -> Vec<SubnetInfo> {
    subnets
        .into_iter()
        .filter(|s| zone_types.get(&s.az).is_none_or(|t| t == REGULAR_ZONE))
        .collect()
}

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

/// A route table as far as "is this subnet public" goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTableInfo {
    /// The VPC's main table: it serves every subnet without an explicit association.
    pub main: bool,
    pub subnets: Vec<String>,
    /// A route through an internet gateway (`igw-...`).
    pub to_internet: bool,
}

/// The subnets among `ids` whose route table (explicit, else the main one)
/// routes to an internet gateway.
pub fn public_subnets(tables: &[RouteTableInfo], ids: &[&str]) -> BTreeSet<String> {
    let main = tables.iter().find(|t| t.main);
    ids.iter()
        .filter(|id| {
            tables
                .iter()
                .find(|t| t.subnets.iter().any(|s| s == *id))
                .or(main)
                .is_some_and(|t| t.to_internet)
        })
        .map(|id| id.to_string())
        .collect()
}

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// One subnet per zone, sorted by zone.
    Chosen(Vec<SubnetInfo>),
    /// No subnet carries the role tag: the fallback needs to know which
    /// subnets are public (`public_subnets`), then `choose` again.
    NeedsRoutes,
}

/// One subnet per zone among `subnets` (one VPC's).
///
/// `cluster_keys` are the `kubernetes.io/cluster/<name>` keys that mean
/// "this cluster" (portico's and the one the nodes are tagged with); a
/// subnet tagged with any other cluster key is skipped. Subnets with the
/// role tag (valued `""` or `"1"`) are used when there are any; otherwise
/// `public` (the public subnets, once known) drives the fallback. Within a
/// zone: tagged for this cluster first, (internal fallback: private first,)
/// then the lowest subnet id.
pub fn choose(
    subnets: &[SubnetInfo],
    cluster_keys: &BTreeSet<String>,
    scheme: Scheme,
    public: Option<&BTreeSet<String>>,
) -> Discovery {
    let ours = |s: &SubnetInfo| s.tags.keys().any(|k| cluster_keys.contains(k));
    let foreign = |s: &SubnetInfo| {
        s.tags
            .keys()
            .any(|k| k.starts_with(CLUSTER_TAG_PREFIX) && !cluster_keys.contains(k))
    };
    let eligible: Vec<&SubnetInfo> = subnets.iter().filter(|s| ours(s) || !foreign(s)).collect();
    let role = role_tag(scheme);
    let tagged: Vec<&SubnetInfo> = eligible
        .iter()
        .copied()
        .filter(|s| matches!(s.tags.get(role).map(String::as_str), Some("" | "1")))
        .collect();
    let (pool, private_first): (Vec<&SubnetInfo>, Option<&BTreeSet<String>>) = if !tagged.is_empty()
    {
        (tagged, None)
    } else {
        let Some(public) = public else {
            return Discovery::NeedsRoutes;
        };
        match scheme {
            Scheme::InternetFacing => (
                eligible
                    .into_iter()
                    .filter(|s| public.contains(&s.id))
                    .collect(),
                None,
            ),
            Scheme::Internal => (eligible, Some(public)),
        }
    };
    let mut ranked: Vec<((bool, bool, &str), &SubnetInfo)> = pool
        .into_iter()
        .map(|s| {
            let is_public = private_first.is_some_and(|p| p.contains(&s.id));
            ((!ours(s), is_public, s.id.as_str()), s)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(vpc) = ranked.first().map(|(_, s)| s.vpc_id.clone()) else {
        return Discovery::Chosen(Vec::new());
    };
    let mut by_az: BTreeMap<&str, &SubnetInfo> = BTreeMap::new();
    for (_, s) in ranked.iter().filter(|(_, s)| s.vpc_id == vpc) {
        by_az.entry(s.az.as_str()).or_insert(s);
    }
    Discovery::Chosen(by_az.into_values().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, az: &str, tags: &[(&str, &str)]) -> SubnetInfo {
        SubnetInfo {
            id: id.into(),
            az: az.into(),
            vpc_id: "vpc-1".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn ids(d: Discovery) -> Option<Vec<String>> {
        match d {
            Discovery::Chosen(s) => Some(s.into_iter().map(|s| s.id).collect()),
            Discovery::NeedsRoutes => None,
        }
    }

    #[test]
    fn local_and_wavelength_zones_are_left_out() {
        let zone_types: BTreeMap<String, String> = [
            ("us-east-1a", REGULAR_ZONE),
            ("us-east-1-bos-1a", "local-zone"),
            ("us-east-1-wl1-bos-wlz-1", "wavelength-zone"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept = in_regular_zones(
            vec![
                subnet("subnet-a", "us-east-1a", &[]),
                subnet("subnet-l", "us-east-1-bos-1a", &[]),
                subnet("subnet-w", "us-east-1-wl1-bos-wlz-1", &[]),
                subnet("subnet-u", "us-east-1z", &[]),
            ],
            &zone_types,
        );
        let ids: Vec<&str> = kept.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["subnet-a", "subnet-u"], "an unknown zone is kept");
    }

    #[test]
    fn role_tagged_subnets_one_per_zone_with_tie_breaks() {
        let keys: BTreeSet<String> = ["kubernetes.io/cluster/c1".to_string()].into();
        let elb = ("kubernetes.io/role/elb", "1");
        let internal = ("kubernetes.io/role/internal-elb", "");
        let mine = ("kubernetes.io/cluster/c1", "shared");
        let theirs = ("kubernetes.io/cluster/c2", "owned");
        type Case = (
            &'static str,
            Vec<SubnetInfo>,
            Scheme,
            Option<&'static [&'static str]>,
        );
        let cases: &[Case] = &[
            (
                "lowest id per zone",
                vec![
                    subnet("subnet-b", "az-a", &[elb]),
                    subnet("subnet-a", "az-a", &[elb]),
                    subnet("subnet-c", "az-b", &[elb]),
                ],
                Scheme::InternetFacing,
                Some(&["subnet-a", "subnet-c"]),
            ),
            (
                "cluster-tagged wins",
                vec![
                    subnet("subnet-a", "az-a", &[elb]),
                    subnet("subnet-z", "az-a", &[elb, mine]),
                ],
                Scheme::InternetFacing,
                Some(&["subnet-z"]),
            ),
            (
                "another cluster's subnet is skipped",
                vec![
                    subnet("subnet-a", "az-a", &[elb, theirs]),
                    subnet("subnet-b", "az-a", &[elb]),
                ],
                Scheme::InternetFacing,
                Some(&["subnet-b"]),
            ),
            (
                "internal uses the internal role tag",
                vec![
                    subnet("subnet-a", "az-a", &[elb]),
                    subnet("subnet-b", "az-a", &[internal]),
                ],
                Scheme::Internal,
                Some(&["subnet-b"]),
            ),
            (
                "a role tag valued 0 is no role tag: the fallback needs routes",
                vec![subnet(
                    "subnet-a",
                    "az-a",
                    &[("kubernetes.io/role/elb", "0")],
                )],
                Scheme::InternetFacing,
                None,
            ),
        ];
        for (desc, subnets, scheme, want) in cases {
            let got = ids(choose(subnets, &keys, *scheme, None));
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{desc}");
        }
    }

    #[test]
    fn untagged_fallback_follows_routes_to_an_internet_gateway() {
        let keys: BTreeSet<String> = ["kubernetes.io/cluster/c1".to_string()].into();
        let subnets = vec![
            subnet("subnet-pub-a", "az-a", &[]),
            subnet("subnet-priv-a", "az-a", &[]),
            subnet("subnet-priv-b", "az-b", &[]),
            subnet(
                "subnet-pub-c",
                "az-c",
                &[("kubernetes.io/cluster/c2", "owned")],
            ),
        ];
        let tables = vec![
            RouteTableInfo {
                main: true,
                subnets: vec![],
                to_internet: false,
            },
            RouteTableInfo {
                main: false,
                subnets: vec!["subnet-pub-a".into(), "subnet-pub-c".into()],
                to_internet: true,
            },
        ];
        let all: Vec<&str> = subnets.iter().map(|s| s.id.as_str()).collect();
        let public = public_subnets(&tables, &all);
        assert_eq!(
            public,
            ["subnet-pub-a".to_string(), "subnet-pub-c".to_string()].into(),
            "explicit association, else the main table"
        );
        assert_eq!(
            ids(choose(
                &subnets,
                &keys,
                Scheme::InternetFacing,
                Some(&public)
            )),
            Some(vec!["subnet-pub-a".to_string()]),
            "public only, never another cluster's"
        );
        assert_eq!(
            ids(choose(&subnets, &keys, Scheme::Internal, Some(&public))),
            Some(vec![
                "subnet-priv-a".to_string(),
                "subnet-priv-b".to_string()
            ]),
            "internal: private first in each zone"
        );
    }
}
