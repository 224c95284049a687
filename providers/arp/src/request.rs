//! What a Service asks of the arp provider, read once from its spec and
//! annotations by `prepare` (pure, so a mistake is reported before
//! anything is allocated).
//!
//! | what | portico | also accepted (MetalLB, for migration) |
//! | --- | --- | --- |
//! | addresses | `spec.loadBalancerIP`, `portico.io/load-balancer-ips` | `metallb.io/loadBalancerIPs`, `metallb.universe.tf/loadBalancerIPs` |
//! | pool | `portico.io/ip-pool` | `metallb.io/address-pool`, `metallb.universe.tf/address-pool` |
//! | sharing key | `portico.io/allow-shared-ip` | `metallb.io/allow-shared-ip`, `metallb.universe.tf/allow-shared-ip` |
//!
//! Two spellings of one thing must agree; addresses are comma-separated, at
//! most one per IP family, one for each of the Service's `ipFamilies`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use portico_provider::{Annotations, IpFamily, LoadBalancerSpec, ProviderError};

/// Annotation names.
pub mod annotation {
    /// Addresses the Service asks for, comma-separated (one per family).
    pub const LOAD_BALANCER_IPS: &str = "portico.io/load-balancer-ips";
    /// The IPPool to take the address from.
    pub const IP_POOL: &str = "portico.io/ip-pool";
    /// Services with the same key may share an address when their ports differ.
    pub const ALLOW_SHARED_IP: &str = "portico.io/allow-shared-ip";

    pub const METALLB_LOAD_BALANCER_IPS: &str = "metallb.io/loadBalancerIPs";
    pub const METALLB_ADDRESS_POOL: &str = "metallb.io/address-pool";
    pub const METALLB_ALLOW_SHARED_IP: &str = "metallb.io/allow-shared-ip";
    pub const METALLB_LEGACY_LOAD_BALANCER_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
    pub const METALLB_LEGACY_ADDRESS_POOL: &str = "metallb.universe.tf/address-pool";
    pub const METALLB_LEGACY_ALLOW_SHARED_IP: &str = "metallb.universe.tf/allow-shared-ip";

    /// Every spelling of each, portico's first.
    pub const IPS: [&str; 3] = [
        LOAD_BALANCER_IPS,
        METALLB_LOAD_BALANCER_IPS,
        METALLB_LEGACY_LOAD_BALANCER_IPS,
    ];
    pub const POOL: [&str; 3] = [IP_POOL, METALLB_ADDRESS_POOL, METALLB_LEGACY_ADDRESS_POOL];
    pub const SHARING: [&str; 3] = [
        ALLOW_SHARED_IP,
        METALLB_ALLOW_SHARED_IP,
        METALLB_LEGACY_ALLOW_SHARED_IP,
    ];
}

/// The typed options of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArpOptions {
    /// Addresses asked for, in the Service's family order; empty: any.
    pub ips: Vec<IpAddr>,
    pub pool: Option<String>,
    pub sharing_key: Option<String>,
}

/// The value of the one spelling of `keys` that is set; two set to
/// different values are refused. An empty value counts as unset.
fn one_of(
    annotations: &Annotations,
    keys: &[&'static str],
) -> Result<Option<(&'static str, String)>, ProviderError> {
    let mut found: Option<(&'static str, String)> = None;
    for key in keys {
        let Some(value) = annotations.get(key).filter(|v| !v.is_empty()) else {
            continue;
        };
        match &found {
            Some((first, seen)) if seen != value => {
                return Err(ProviderError::invalid(
                    Annotations::field(key),
                    format!("{value:?} disagrees with {first} ({seen:?}); keep one of them"),
                ));
            }
            Some(_) => {}
            None => found = Some((key, value.to_string())),
        }
    }
    Ok(found)
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// A DNS-1123 subdomain, as object names are.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Read the options of `spec`, naming the field of any problem.
///
/// # Errors
/// [`ProviderError::InvalidSpec`].
pub fn options(spec: &LoadBalancerSpec) -> Result<ArpOptions, ProviderError> {
    let mut seen = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        if !seen.insert((l.port, l.protocol)) {
            return Err(ProviderError::invalid(
                format!("spec.ports[{i}]"),
                format!("port {}/{} appears twice", l.port, l.protocol),
            ));
        }
    }
    let annotations = &spec.annotations;
    let (field, mut ips) = match one_of(annotations, &annotation::IPS)? {
        Some((key, raw)) => {
            let field = Annotations::field(key);
            let ips = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<IpAddr>().map_err(|_| {
                        ProviderError::invalid(field.clone(), format!("{s:?} is not an IP address"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !spec.requested_ips.is_empty()
                && ips.iter().collect::<BTreeSet<_>>()
                    != spec.requested_ips.iter().collect::<BTreeSet<_>>()
            {
                return Err(ProviderError::invalid(
                    field,
                    format!(
                        "asks for {raw} but spec.loadBalancerIP asks for {}; keep one of them",
                        spec.requested_ips
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ));
            }
            (field, ips)
        }
        None => (
            "spec.loadBalancerIP".to_string(),
            spec.requested_ips.clone(),
        ),
    };
    if !ips.is_empty() {
        let mut families = BTreeSet::new();
        for ip in &ips {
            if !families.insert(IpFamily::of(ip)) {
                return Err(ProviderError::invalid(
                    field,
                    format!(
                        "names two {} addresses; name at most one per IP family",
                        family_name(IpFamily::of(ip))
                    ),
                ));
            }
        }
        let wanted: BTreeSet<IpFamily> = spec.ip_families.iter().copied().collect();
        if families != wanted {
            let list = |set: &BTreeSet<IpFamily>| {
                set.iter()
                    .map(|f| family_name(*f))
                    .collect::<Vec<_>>()
                    .join(" and ")
            };
            return Err(ProviderError::invalid(
                field,
                format!(
                    "names {} addresses but the Service's spec.ipFamilies are {}: name one address of each",
                    list(&families),
                    list(&wanted)
                ),
            ));
        }
        ips.sort_by_key(|ip| spec.ip_families.iter().position(|f| *f == IpFamily::of(ip)));
    }
    let pool = match one_of(annotations, &annotation::POOL)? {
        Some((key, name)) if !is_object_name(&name) => {
            return Err(ProviderError::invalid(
                Annotations::field(key),
                format!("{name:?} is not an IPPool name"),
            ));
        }
        found => found.map(|(_, name)| name),
    };
    let sharing_key = one_of(annotations, &annotation::SHARING)?.map(|(_, key)| key);
    Ok(ArpOptions {
        ips,
        pool,
        sharing_key,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portico_provider::{ClusterName, Listener, LoadBalancerKey, Protocol};

    use super::*;

    fn spec(
        annotations: &[(&str, &str)],
        lb_ip: Option<&str>,
        families: &[IpFamily],
    ) -> LoadBalancerSpec {
        let mut s = LoadBalancerSpec::new(LoadBalancerKey::new(
            ClusterName::new("c"),
            "default",
            "web",
            "u1",
        ));
        s.listeners = vec![Listener {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: 30080,
            name: None,
        }];
        s.annotations = Annotations::new(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        s.requested_ips = lb_ip.iter().map(|i| i.parse().expect("ip")).collect();
        s.ip_families = families.to_vec();
        s
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn addresses_pools_and_keys_come_from_any_spelling() {
        let v4 = &[IpFamily::V4][..];
        let dual = &[IpFamily::V6, IpFamily::V4][..];
        let rows: Vec<(&str, LoadBalancerSpec, ArpOptions)> = vec![
            ("nothing asked", spec(&[], None, v4), ArpOptions::default()),
            (
                "spec.loadBalancerIP",
                spec(&[], Some("192.0.2.5"), v4),
                ArpOptions {
                    ips: ips(&["192.0.2.5"]),
                    ..ArpOptions::default()
                },
            ),
            (
                "portico's annotation, dual stack in the Service's family order",
                spec(
                    &[(annotation::LOAD_BALANCER_IPS, "192.0.2.5, 2001:db8::5")],
                    None,
                    dual,
                ),
                ArpOptions {
                    ips: ips(&["2001:db8::5", "192.0.2.5"]),
                    ..ArpOptions::default()
                },
            ),
            (
                "MetalLB's names, current and legacy",
                spec(
                    &[
                        (annotation::METALLB_LEGACY_LOAD_BALANCER_IPS, "192.0.2.6"),
                        (annotation::METALLB_ADDRESS_POOL, "office"),
                        (annotation::METALLB_LEGACY_ALLOW_SHARED_IP, "dns"),
                    ],
                    None,
                    v4,
                ),
                ArpOptions {
                    ips: ips(&["192.0.2.6"]),
                    pool: Some("office".into()),
                    sharing_key: Some("dns".into()),
                },
            ),
            (
                "two spellings that agree",
                spec(
                    &[
                        (annotation::IP_POOL, "office"),
                        (annotation::METALLB_ADDRESS_POOL, "office"),
                    ],
                    Some("192.0.2.7"),
                    v4,
                ),
                ArpOptions {
                    ips: ips(&["192.0.2.7"]),
                    pool: Some("office".into()),
                    ..ArpOptions::default()
                },
            ),
            (
                "an annotation agreeing with spec.loadBalancerIP",
                spec(
                    &[(annotation::LOAD_BALANCER_IPS, "192.0.2.8")],
                    Some("192.0.2.8"),
                    v4,
                ),
                ArpOptions {
                    ips: ips(&["192.0.2.8"]),
                    ..ArpOptions::default()
                },
            ),
            (
                "an empty sharing key shares nothing",
                spec(&[(annotation::ALLOW_SHARED_IP, "")], None, v4),
                ArpOptions::default(),
            ),
        ];
        for (desc, spec, want) in rows {
            assert_eq!(
                options(&spec).unwrap_or_else(|e| panic!("{desc}: {e}")),
                want,
                "{desc}"
            );
        }
    }

    #[test]
    fn contradictions_and_typos_name_the_field() {
        let v4 = &[IpFamily::V4][..];
        let dual = &[IpFamily::V4, IpFamily::V6][..];
        let mut duplicate = spec(&[], None, v4);
        duplicate.listeners.push(duplicate.listeners[0].clone());
        let rows: Vec<(&str, LoadBalancerSpec, &str, &str)> = vec![
            (
                "a duplicate port",
                duplicate,
                "spec.ports[1]",
                "appears twice",
            ),
            (
                "not an address",
                spec(&[(annotation::LOAD_BALANCER_IPS, "192.0.2.300")], None, v4),
                "metadata.annotations[portico.io/load-balancer-ips]",
                "not an IP address",
            ),
            (
                "annotation and loadBalancerIP disagree",
                spec(
                    &[(annotation::METALLB_LOAD_BALANCER_IPS, "192.0.2.1")],
                    Some("192.0.2.2"),
                    v4,
                ),
                "metadata.annotations[metallb.io/loadBalancerIPs]",
                "keep one of them",
            ),
            (
                "two spellings disagree",
                spec(
                    &[
                        (annotation::ALLOW_SHARED_IP, "a"),
                        (annotation::METALLB_ALLOW_SHARED_IP, "b"),
                    ],
                    None,
                    v4,
                ),
                "metadata.annotations[metallb.io/allow-shared-ip]",
                "disagrees with portico.io/allow-shared-ip",
            ),
            (
                "two addresses of one family",
                spec(
                    &[(annotation::LOAD_BALANCER_IPS, "192.0.2.1,192.0.2.2")],
                    None,
                    v4,
                ),
                "metadata.annotations[portico.io/load-balancer-ips]",
                "two IPv4 addresses",
            ),
            (
                "an IPv6 address for an IPv4 Service",
                spec(&[], Some("2001:db8::1"), v4),
                "spec.loadBalancerIP",
                "spec.ipFamilies are IPv4",
            ),
            (
                "one address for a dual-stack Service",
                spec(&[(annotation::LOAD_BALANCER_IPS, "192.0.2.1")], None, dual),
                "metadata.annotations[portico.io/load-balancer-ips]",
                "name one address of each",
            ),
            (
                "a pool name that is no object name",
                spec(&[(annotation::IP_POOL, "Office Pool")], None, v4),
                "metadata.annotations[portico.io/ip-pool]",
                "is not an IPPool name",
            ),
        ];
        for (desc, spec, field, words) in rows {
            match options(&spec) {
                Err(ProviderError::InvalidSpec { field: f, reason }) => {
                    assert_eq!(f, field, "{desc}");
                    assert!(reason.contains(words), "{desc}: {reason}");
                }
                other => panic!("{desc}: {other:?}"),
            }
        }
    }
}
