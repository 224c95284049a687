//! The Alibaba Cloud annotations portico understands, parsed into typed
//! options without I/O. Errors name the annotation.

use std::net::IpAddr;

use portico_provider::{Annotations, LoadBalancerSpec, ProviderError, Target};

use crate::cloud::limits::{
    self, Bounds, HEALTH_INTERVAL_SECONDS, HEALTH_PATH_MAX_CHARS, HEALTH_THRESHOLD,
    HEALTH_TIMEOUT_SECONDS, PORT, STICKY_SECONDS, WEIGHT,
};
use crate::cloud::model::{AclMode, AddressType, BALANCER_SPECS, HealthCheckType, SchedulerKind};

/// Every annotation this provider reads starts with this.
pub const PREFIX: &str = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-";

/// The annotation names (without [`PREFIX`]).
pub mod keys {
    pub const ADDRESS_TYPE: &str = "address-type";
    pub const SPEC: &str = "spec";
    pub const SCHEDULER: &str = "scheduler";
    pub const HEALTH_CHECK_TYPE: &str = "health-check-type";
    pub const HEALTH_CHECK_URI: &str = "health-check-uri";
    pub const HEALTH_CHECK_CONNECT_PORT: &str = "health-check-connect-port";
    pub const HEALTH_CHECK_INTERVAL: &str = "health-check-interval";
    pub const HEALTH_CHECK_CONNECT_TIMEOUT: &str = "health-check-connect-timeout";
    pub const HEALTH_CHECK_TIMEOUT: &str = "health-check-timeout";
    pub const HEALTHY_THRESHOLD: &str = "healthy-threshold";
    pub const UNHEALTHY_THRESHOLD: &str = "unhealthy-threshold";
    pub const ACL_STATUS: &str = "acl-status";
    pub const ACL_ID: &str = "acl-id";
    pub const ACL_TYPE: &str = "acl-type";
    pub const ID: &str = "id";
    pub const FORCE_OVERRIDE_LISTENERS: &str = "force-override-listeners";
    pub const WEIGHT: &str = "weight";
    pub const PERSISTENCE_TIMEOUT: &str = "persistence-timeout";
    pub const IP: &str = "ip";

    pub const ALL: &[&str] = &[
        ADDRESS_TYPE,
        SPEC,
        SCHEDULER,
        HEALTH_CHECK_TYPE,
        HEALTH_CHECK_URI,
        HEALTH_CHECK_CONNECT_PORT,
        HEALTH_CHECK_INTERVAL,
        HEALTH_CHECK_CONNECT_TIMEOUT,
        HEALTH_CHECK_TIMEOUT,
        HEALTHY_THRESHOLD,
        UNHEALTHY_THRESHOLD,
        ACL_STATUS,
        ACL_ID,
        ACL_TYPE,
        ID,
        FORCE_OVERRIDE_LISTENERS,
        WEIGHT,
        PERSISTENCE_TIMEOUT,
        IP,
    ];
}

/// Node label that drains the node from every SLB balancer: its backends
/// get weight 0, so they take no new connection while open TCP connections
/// and UDP sessions carry on until the cloud's drain timeout. Any value but
/// one Go's `ParseBool` reads as false (`false`, `False`, `FALSE`, `f`, `F`,
/// `0`) drains, as for `node.kubernetes.io/exclude-from-external-load-balancers`.
pub const DRAIN_NODE_LABEL: &str = "portico.io/slb-drain";

/// Whether `target` carries [`DRAIN_NODE_LABEL`] with a value that drains.
pub fn drains(target: &Target) -> bool {
    target
        .labels
        .get(DRAIN_NODE_LABEL)
        .is_some_and(|v| !matches!(v.as_str(), "false" | "False" | "FALSE" | "f" | "F" | "0"))
}

/// The full annotation name of `key`.
pub fn annotation(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// A user's ACL to attach to every listener (`acl-status: on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAcl {
    pub id: String,
    pub mode: AclMode,
}

/// What portico does with listeners it did not make on a reused balancer
/// (`force-override-listeners`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForeignListeners {
    /// Leave them alone; a foreign listener on a wanted port is an error.
    #[default]
    Keep,
    /// Take over the ones on the Service's ports.
    Override,
}

/// An existing balancer to use instead of creating one (`id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reuse {
    pub id: String,
    pub foreign_listeners: ForeignListeners,
}

/// Health-check overrides from annotations; unset fields follow the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthOptions {
    pub kind: Option<HealthCheckType>,
    pub uri: Option<String>,
    pub connect_port: Option<u16>,
    pub interval_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// Everything the annotations say, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlbOptions {
    pub address_type: AddressType,
    pub spec: Option<String>,
    pub scheduler: SchedulerKind,
    pub health: HealthOptions,
    pub acl: Option<UserAcl>,
    /// Reuse this existing balancer instead of creating one.
    pub reuse: Option<Reuse>,
    /// Weight of every backend, 0..=100 (default 100). 0 drains them all:
    /// the balancer takes no new connection, open ones end at the cloud's
    /// drain timeout.
    pub weight: u32,
    /// Client-IP stickiness in seconds, overriding sessionAffinity; 0 = off.
    pub persistence_timeout: Option<u32>,
    /// The wanted address.
    pub ip: Option<IpAddr>,
}

fn field(key: &str) -> String {
    Annotations::field(&annotation(key))
}

fn choice<T: Copy>(
    a: &Annotations,
    key: &str,
    choices: &[(&str, T)],
) -> Result<Option<T>, ProviderError> {
    let Some(raw) = a.get(&annotation(key)) else {
        return Ok(None);
    };
    let lower = raw.to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, v)| Some(*v))
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            ProviderError::invalid(
                field(key),
                format!("{raw:?} is not one of {}", names.join(", ")),
            )
        })
}

/// An integer annotation within `bounds` (the cloud's own limits).
fn range(a: &Annotations, key: &str, bounds: Bounds) -> Result<Option<u32>, ProviderError> {
    Ok(
        a.parse_in_range(&annotation(key), bounds.min.into(), bounds.max.into())?
            .and_then(|v| u32::try_from(v).ok()),
    )
}

impl SlbOptions {
    /// Parse the annotations of `spec`. Unknown annotations with the prefix
    /// are ignored (logged at debug).
    ///
    /// # Errors
    /// [`ProviderError::InvalidSpec`] naming the annotation.
    pub fn parse(spec: &LoadBalancerSpec) -> Result<Self, ProviderError> {
        let a = &spec.annotations;
        for (key, _) in a.iter() {
            if let Some(rest) = key.strip_prefix(PREFIX)
                && !keys::ALL.contains(&rest)
            {
                tracing::debug!(annotation = key, service = %spec.key, "ignoring unknown slb annotation");
            }
        }
        let address_type = choice(
            a,
            keys::ADDRESS_TYPE,
            &[
                ("internet", AddressType::Internet),
                ("intranet", AddressType::Intranet),
            ],
        )?
        .unwrap_or_default();
        let spec_name = match a.get(&annotation(keys::SPEC)) {
            None => None,
            Some(raw) if BALANCER_SPECS.contains(&raw) => Some(raw.to_string()),
            Some(raw) => {
                return Err(ProviderError::invalid(
                    field(keys::SPEC),
                    format!("{raw:?} is not one of {}", BALANCER_SPECS.join(", ")),
                ));
            }
        };
        let scheduler = choice(
            a,
            keys::SCHEDULER,
            &[
                ("wrr", SchedulerKind::Wrr),
                ("wlc", SchedulerKind::Wlc),
                ("rr", SchedulerKind::Wrr),
            ],
        )?
        .unwrap_or_default();

        let kind = choice(
            a,
            keys::HEALTH_CHECK_TYPE,
            &[
                ("tcp", HealthCheckType::Tcp),
                ("http", HealthCheckType::Http),
            ],
        )?;
        let uri = match a.get(&annotation(keys::HEALTH_CHECK_URI)) {
            None => None,
            Some(raw) if limits::is_health_path(raw) => Some(raw.to_string()),
            Some(raw) => {
                return Err(ProviderError::invalid(
                    field(keys::HEALTH_CHECK_URI),
                    format!(
                        "{raw:?} must start with / and then be visible ASCII, no spaces (at most {HEALTH_PATH_MAX_CHARS} characters)"
                    ),
                ));
            }
        };
        let connect_port =
            range(a, keys::HEALTH_CHECK_CONNECT_PORT, PORT)?.and_then(|p| u16::try_from(p).ok());
        if connect_port.is_some() && kind == Some(HealthCheckType::Tcp) {
            return Err(ProviderError::invalid(
                field(keys::HEALTH_CHECK_CONNECT_PORT),
                "tcp checks probe each backend's own port; a connect port needs health-check-type http",
            ));
        }
        let connect_timeout = range(
            a,
            keys::HEALTH_CHECK_CONNECT_TIMEOUT,
            HEALTH_TIMEOUT_SECONDS,
        )?;
        let timeout = range(a, keys::HEALTH_CHECK_TIMEOUT, HEALTH_TIMEOUT_SECONDS)?;
        let health = HealthOptions {
            kind,
            uri,
            connect_port,
            interval_seconds: range(a, keys::HEALTH_CHECK_INTERVAL, HEALTH_INTERVAL_SECONDS)?,
            timeout_seconds: timeout.or(connect_timeout),
            healthy_threshold: range(a, keys::HEALTHY_THRESHOLD, HEALTH_THRESHOLD)?,
            unhealthy_threshold: range(a, keys::UNHEALTHY_THRESHOLD, HEALTH_THRESHOLD)?,
        };

        let acl_on = choice(a, keys::ACL_STATUS, &[("on", true), ("off", false)])?.unwrap_or(false);
        let acl_mode = choice(
            a,
            keys::ACL_TYPE,
            &[("white", AclMode::White), ("black", AclMode::Black)],
        )?
        .unwrap_or_default();
        let acl_id = a
            .get(&annotation(keys::ACL_ID))
            .filter(|s| !s.is_empty())
            .map(String::from);
        let acl = if acl_on {
            let id = acl_id.ok_or_else(|| {
                ProviderError::invalid(
                    field(keys::ACL_ID),
                    "acl-status is on but no acl-id is given",
                )
            })?;
            if !spec.source_ranges.is_empty() {
                return Err(ProviderError::invalid(
                    field(keys::ACL_STATUS),
                    "use either an acl (acl-status on) or spec.loadBalancerSourceRanges, not both",
                ));
            }
            Some(UserAcl { id, mode: acl_mode })
        } else {
            None
        };

        // Checked even without `id`, so a typo is reported before it matters.
        let foreign_listeners = match a.parse_bool(&annotation(keys::FORCE_OVERRIDE_LISTENERS))? {
            Some(true) => ForeignListeners::Override,
            Some(false) | None => ForeignListeners::Keep,
        };
        let reuse = a
            .get(&annotation(keys::ID))
            .filter(|s| !s.is_empty())
            .map(|id| Reuse {
                id: id.to_string(),
                foreign_listeners,
            });
        let weight = range(a, keys::WEIGHT, WEIGHT)?.unwrap_or(WEIGHT.max);
        // 0 turns stickiness off.
        let persistence = Bounds {
            min: 0,
            ..STICKY_SECONDS
        };
        let persistence_timeout = range(a, keys::PERSISTENCE_TIMEOUT, persistence)?;
        let ip: Option<IpAddr> = a.parse(&annotation(keys::IP))?;

        Ok(Self {
            address_type,
            spec: spec_name,
            scheduler,
            health,
            acl,
            reuse,
            weight,
            persistence_timeout,
            ip,
        })
    }
}
