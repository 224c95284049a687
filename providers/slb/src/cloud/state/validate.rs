//! Checks of request fields that need no other object: names, tags,
//! ports, ranges, health checks, server lists and ACL entries. Each error
//! names the offending field. The limits come from [`crate::cloud::limits`],
//! which the OpenAPI document states too.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::cloud::error::ApiError;
use crate::cloud::limits::{
    self, Bounds, DESCRIPTION_MAX_CHARS, HEALTH_INTERVAL_SECONDS, HEALTH_PATH_MAX_CHARS,
    HEALTH_THRESHOLD, HEALTH_TIMEOUT_SECONDS, MAX_TAGS, NAME_MAX_CHARS, PORT, STICKY_SECONDS,
    TAG_KEY_MAX_CHARS, TAG_VALUE_MAX_CHARS, WEIGHT,
};
use crate::cloud::model::{
    AclEntry, BALANCER_SPECS, BackendServer, HealthCheck, HealthCheckType, StickySession,
};

pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if limits::is_blank(name) {
        return Err(ApiError::invalid(field, "must not be blank"));
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {NAME_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

pub(crate) fn check_description(field: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

pub(crate) fn check_tags(field: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > TAG_KEY_MAX_CHARS {
            return Err(ApiError::invalid(
                format!("{field}[{k}]"),
                format!("tag keys must have 1..={TAG_KEY_MAX_CHARS} characters"),
            ));
        }
        if v.chars().count() > TAG_VALUE_MAX_CHARS {
            return Err(ApiError::invalid(
                format!("{field}[{k}]"),
                format!("tag values must have at most {TAG_VALUE_MAX_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_spec(field: &str, spec: &str) -> Result<(), ApiError> {
    if BALANCER_SPECS.contains(&spec) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "unknown spec {spec:?}, expected one of {}",
                BALANCER_SPECS.join(", ")
            ),
        ))
    }
}

pub(crate) fn check_port(field: &str, port: u32) -> Result<u16, ApiError> {
    check_range(field, port, PORT)?;
    u16::try_from(port)
        .map_err(|_| ApiError::invalid(field, format!("port {port} is out of range")))
}

pub(crate) fn check_range(field: &str, value: u32, bounds: Bounds) -> Result<(), ApiError> {
    if bounds.contains(value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{value} is out of range {}..={}", bounds.min, bounds.max),
        ))
    }
}

pub(crate) fn check_health(field: &str, hc: &HealthCheck) -> Result<(), ApiError> {
    let sub = |name: &str| format!("{field}.{name}");
    check_range(
        &sub("interval_seconds"),
        hc.interval_seconds,
        HEALTH_INTERVAL_SECONDS,
    )?;
    check_range(
        &sub("timeout_seconds"),
        hc.timeout_seconds,
        HEALTH_TIMEOUT_SECONDS,
    )?;
    check_range(
        &sub("healthy_threshold"),
        hc.healthy_threshold,
        HEALTH_THRESHOLD,
    )?;
    check_range(
        &sub("unhealthy_threshold"),
        hc.unhealthy_threshold,
        HEALTH_THRESHOLD,
    )?;
    match hc.kind {
        HealthCheckType::Tcp => {
            if hc.port.is_some() {
                return Err(ApiError::invalid(
                    sub("port"),
                    "tcp checks connect to each backend's port and take no port",
                ));
            }
            if hc.path.is_some() {
                return Err(ApiError::invalid(
                    sub("path"),
                    "only http checks take a path",
                ));
            }
        }
        HealthCheckType::Http => {
            match hc.port {
                None => return Err(ApiError::invalid(sub("port"), "http checks need a port")),
                Some(port) => {
                    check_port(&sub("port"), port.into())?;
                }
            }
            if let Some(path) = &hc.path
                && !limits::is_health_path(path)
            {
                return Err(ApiError::invalid(
                    sub("path"),
                    format!(
                        "{path:?} must start with / and then be visible ASCII, no spaces (at most {HEALTH_PATH_MAX_CHARS} characters)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) fn check_sticky(field: &str, sticky: &StickySession) -> Result<(), ApiError> {
    check_range(
        &format!("{field}.timeout_seconds"),
        sticky.timeout_seconds,
        STICKY_SECONDS,
    )
}

/// Validate `servers` and fold repeats: a server (address and port) listed
/// more than once counts once, as its last listing says (a set, as the
/// document's schema can describe it).
pub(crate) fn check_servers(
    field: &str,
    servers: Vec<BackendServer>,
) -> Result<Vec<BackendServer>, ApiError> {
    let mut out: Vec<BackendServer> = Vec::with_capacity(servers.len());
    for (i, s) in servers.into_iter().enumerate() {
        check_port(&format!("{field}[{i}].port"), s.port)?;
        check_range(&format!("{field}[{i}].weight"), s.weight, WEIGHT)?;
        check_description(&format!("{field}[{i}].description"), &s.description)?;
        match out
            .iter_mut()
            .find(|o| o.address == s.address && o.port == s.port)
        {
            Some(earlier) => *earlier = s,
            None => out.push(s),
        }
    }
    Ok(out)
}

/// `address/prefix` as the document's pattern has it: the address as Rust
/// reads it (no leading zeros in IPv4 octets), the prefix in decimal without
/// leading zeros, nothing around them (no spaces).
fn parse_cidr(text: &str) -> Option<IpNet> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    if prefix.is_empty()
        || !prefix.bytes().all(|b| b.is_ascii_digit())
        || (prefix.len() > 1 && prefix.starts_with('0'))
    {
        return None;
    }
    IpNet::new(addr, prefix.parse().ok()?).ok()
}

/// Parse the entries' CIDRs, folding repeats: a CIDR listed more than once
/// counts once, with its last description.
pub(crate) fn parse_entries(
    field: &str,
    entries: Vec<AclEntry>,
) -> Result<Vec<AclEntry>, ApiError> {
    let mut out: Vec<(IpNet, AclEntry)> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let net: IpNet = parse_cidr(&e.cidr)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("{field}[{i}].cidr"),
                    format!("{:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8", e.cidr),
                )
            })?
            .trunc();
        check_description(&format!("{field}[{i}].description"), &e.description)?;
        // Canonical text, so `10.0.0.1/8` and `10.0.0.0/8` are one entry.
        let entry = AclEntry {
            cidr: net.to_string(),
            description: e.description,
        };
        match out.iter_mut().find(|(n, _)| *n == net) {
            Some(earlier) => earlier.1 = entry,
            None => out.push((net, entry)),
        }
    }
    Ok(out.into_iter().map(|(_, e)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_are_tcp_without_port_or_http_with_one() {
        let tcp = HealthCheck::default();
        let http = HealthCheck {
            kind: HealthCheckType::Http,
            port: Some(10256),
            path: Some("/healthz".into()),
            ..HealthCheck::default()
        };
        let cases = [
            ("tcp as defaulted", tcp.clone(), None),
            ("http with port and path", http.clone(), None),
            (
                "http without a path",
                HealthCheck {
                    path: None,
                    ..http.clone()
                },
                None,
            ),
            (
                "tcp with a port",
                HealthCheck {
                    port: Some(80),
                    ..tcp.clone()
                },
                Some("hc.port"),
            ),
            (
                "tcp with a path",
                HealthCheck {
                    path: Some("/".into()),
                    ..tcp.clone()
                },
                Some("hc.path"),
            ),
            (
                "http without a port",
                HealthCheck {
                    port: None,
                    ..http.clone()
                },
                Some("hc.port"),
            ),
            (
                "http on port 0",
                HealthCheck {
                    port: Some(0),
                    ..http.clone()
                },
                Some("hc.port"),
            ),
            (
                "path without /",
                HealthCheck {
                    path: Some("healthz".into()),
                    ..http.clone()
                },
                Some("hc.path"),
            ),
            (
                "path with a space",
                HealthCheck {
                    path: Some("/a b".into()),
                    ..http.clone()
                },
                Some("hc.path"),
            ),
            (
                "interval too long",
                HealthCheck {
                    interval_seconds: 51,
                    ..tcp.clone()
                },
                Some("hc.interval_seconds"),
            ),
            (
                "threshold of one",
                HealthCheck {
                    healthy_threshold: 1,
                    ..tcp
                },
                Some("hc.healthy_threshold"),
            ),
        ];
        for (desc, hc, bad_field) in cases {
            match (check_health("hc", &hc), bad_field) {
                (Ok(()), None) => {}
                (Err(err), Some(field)) => assert!(
                    err.message.starts_with(&format!("{field}:")),
                    "{desc}: {}",
                    err.message
                ),
                (got, want) => panic!("{desc}: got {got:?}, want an error on {want:?}"),
            }
        }
    }

    #[test]
    fn repeats_fold_into_their_last_listing() {
        let server = |port, weight| BackendServer {
            address: "10.0.0.1".parse().expect("address"),
            port,
            weight,
            description: String::new(),
        };
        let folded = check_servers("servers", vec![server(80, 1), server(81, 1), server(80, 2)])
            .expect("valid servers");
        assert_eq!(folded, [server(80, 2), server(81, 1)]);

        let entry = |cidr: &str, description: &str| AclEntry {
            cidr: cidr.into(),
            description: description.into(),
        };
        let folded = parse_entries(
            "entries",
            vec![
                entry("10.0.0.1/8", "first"),
                entry("192.0.2.0/24", ""),
                entry("10.0.0.0/8", "last"),
            ],
        )
        .expect("valid entries");
        assert_eq!(
            folded,
            [entry("10.0.0.0/8", "last"), entry("192.0.2.0/24", "")]
        );
    }
}
