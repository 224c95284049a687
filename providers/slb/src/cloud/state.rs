//! The cloud's resources and every operation on them, synchronous and free
//! of I/O: each operation validates its whole input first and only then
//! changes the store, so a rejected call changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::model::*;
use super::{CloudConfig, Quotas};
use crate::forwarding::{
    AccessControl, BackendConfig, BalancerForwarding, HealthCheckConfig, ListenerConfig, ProbeKind,
    Scheduler, Transport,
};

/// Largest page a list call may ask for.
pub const MAX_PAGE_SIZE: usize = 100;
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// Which balancers' forwarding a mutation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    pub apply: BTreeSet<String>,
    pub remove: BTreeSet<String>,
}

impl Effects {
    fn apply(id: &str) -> Self {
        let mut e = Self::default();
        e.apply.insert(id.to_string());
        e
    }
}

/// Everything the cloud knows; serialized whole into the state file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub version: u32,
    pub balancers: BTreeMap<String, LoadBalancer>,
    pub listeners: BTreeMap<String, Listener>,
    pub groups: BTreeMap<String, BackendServerGroup>,
    pub acls: BTreeMap<String, Acl>,
    /// `kind/token` → id of the object the create with that token made.
    pub tokens: BTreeMap<String, String>,
    /// Offset into the VIP range where the next search for a free VIP starts.
    pub vip_cursor: u64,
}

pub const STORE_VERSION: u32 = 1;

/// The result of a create: the object, and whether it was replayed from a
/// client token (nothing changed) rather than made now.
#[derive(Debug)]
pub struct Created<T> {
    pub object: T,
    pub replayed: bool,
}

fn new_id(prefix: &str) -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &uuid[..20])
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if name.chars().count() > 80 {
        return Err(ApiError::invalid(field, "must be at most 80 characters"));
    }
    Ok(())
}

fn check_description(field: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().count() > 256 {
        return Err(ApiError::invalid(field, "must be at most 256 characters"));
    }
    Ok(())
}

fn check_tags(field: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(ApiError::invalid(
                format!("{field}[{k}]"),
                "tag keys must have 1..=128 characters",
            ));
        }
        if v.chars().count() > 256 {
            return Err(ApiError::invalid(
                format!("{field}[{k}]"),
                "tag values must have at most 256 characters",
            ));
        }
    }
    Ok(())
}

fn check_spec(field: &str, spec: &str) -> Result<(), ApiError> {
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

fn check_port(field: &str, port: u32) -> Result<u16, ApiError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ApiError::invalid(
            field,
            format!("port {port} is out of range 1..=65535"),
        )),
    }
}

fn check_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{value} is out of range {min}..={max}"),
        ))
    }
}

fn check_health(field: &str, hc: &HealthCheck) -> Result<(), ApiError> {
    check_range(
        &format!("{field}.interval_seconds"),
        hc.interval_seconds,
        1,
        50,
    )?;
    check_range(
        &format!("{field}.timeout_seconds"),
        hc.timeout_seconds,
        1,
        300,
    )?;
    check_range(
        &format!("{field}.healthy_threshold"),
        hc.healthy_threshold,
        2,
        10,
    )?;
    check_range(
        &format!("{field}.unhealthy_threshold"),
        hc.unhealthy_threshold,
        2,
        10,
    )?;
    match hc.kind {
        HealthCheckType::Tcp => {
            if hc.port.is_some() {
                return Err(ApiError::invalid(
                    format!("{field}.port"),
                    "tcp checks connect to each backend's port and take no port",
                ));
            }
            if hc.path.is_some() {
                return Err(ApiError::invalid(
                    format!("{field}.path"),
                    "only http checks take a path",
                ));
            }
        }
        HealthCheckType::Http => {
            match hc.port {
                None => {
                    return Err(ApiError::invalid(
                        format!("{field}.port"),
                        "http checks need a port",
                    ));
                }
                Some(0) => {
                    return Err(ApiError::invalid(
                        format!("{field}.port"),
                        "port 0 is out of range 1..=65535",
                    ));
                }
                Some(_) => {}
            }
            if let Some(path) = &hc.path
                && (!path.starts_with('/')
                    || path.len() > 200
                    || path.contains(char::is_whitespace))
            {
                return Err(ApiError::invalid(
                    format!("{field}.path"),
                    format!(
                        "{path:?} must start with / and have no spaces (at most 200 characters)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validate `servers` and fold repeats: a server (address and port) listed
/// more than once counts once, as its last listing says (a set, as the
/// document's schema can describe it).
fn check_servers(field: &str, servers: Vec<BackendServer>) -> Result<Vec<BackendServer>, ApiError> {
    let mut out: Vec<BackendServer> = Vec::with_capacity(servers.len());
    for (i, s) in servers.into_iter().enumerate() {
        check_port(&format!("{field}[{i}].port"), s.port)?;
        check_range(&format!("{field}[{i}].weight"), s.weight, 0, 100)?;
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

/// Parse the entries' CIDRs, folding repeats: a CIDR listed more than once
/// counts once, with its last description.
fn parse_entries(field: &str, entries: Vec<AclEntry>) -> Result<Vec<AclEntry>, ApiError> {
    let mut out: Vec<(IpNet, AclEntry)> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let net: IpNet = e
            .cidr
            .trim()
            .parse::<IpNet>()
            .map_err(|_| {
                ApiError::invalid(
                    format!("{field}[{i}].cidr"),
                    format!("{:?} is not a CIDR such as 10.0.0.0/8", e.cidr),
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

/// A validated page request.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: usize,
    pub token: Option<String>,
}

fn paginate<'a, T: Clone + 'a>(
    items: impl Iterator<Item = (&'a String, &'a T)>,
    page: &PageRequest,
) -> Page<T> {
    let mut out = Vec::new();
    let mut next = None;
    for (id, item) in items {
        if let Some(after) = &page.token
            && id.as_str() <= after.as_str()
        {
            continue;
        }
        if out.len() == page.size {
            next = out.last().map(|_| id.clone());
            break;
        }
        out.push((id.clone(), item.clone()));
    }
    // The token names the last id returned; the next page starts after it.
    let next_page_token = next.and(out.last().map(|(id, _)| id.clone()));
    Page {
        items: out.into_iter().map(|(_, item)| item).collect(),
        next_page_token,
    }
}

impl Store {
    pub fn new() -> Self {
        Self {
            version: STORE_VERSION,
            ..Self::default()
        }
    }

    /// Check references between objects after loading a state file.
    pub fn check_consistency(&self) -> Result<(), String> {
        for l in self.listeners.values() {
            if !self.balancers.contains_key(&l.load_balancer_id) {
                return Err(format!(
                    "listener {} refers to missing balancer {}",
                    l.id, l.load_balancer_id
                ));
            }
            if !self
                .groups
                .contains_key(&l.settings.backend_server_group_id)
            {
                return Err(format!(
                    "listener {} refers to missing group {}",
                    l.id, l.settings.backend_server_group_id
                ));
            }
            if let Some(acl) = &l.settings.acl
                && !self.acls.contains_key(&acl.acl_id)
            {
                return Err(format!(
                    "listener {} refers to missing acl {}",
                    l.id, acl.acl_id
                ));
            }
        }
        for g in self.groups.values() {
            if !self.balancers.contains_key(&g.load_balancer_id) {
                return Err(format!(
                    "group {} refers to missing balancer {}",
                    g.id, g.load_balancer_id
                ));
            }
        }
        Ok(())
    }

    fn token_lookup(&self, kind: &str, token: Option<&str>) -> Option<&String> {
        token.and_then(|t| self.tokens.get(&format!("{kind}/{t}")))
    }

    fn remember_token(&mut self, kind: &str, token: Option<&str>, id: &str) {
        if let Some(t) = token {
            self.tokens.insert(format!("{kind}/{t}"), id.to_string());
        }
    }

    fn forget_tokens_of(&mut self, id: &str) {
        self.tokens.retain(|_, v| v != id);
    }

    fn balancer(&self, id: &str) -> Result<&LoadBalancer, ApiError> {
        self.balancers
            .get(id)
            .ok_or_else(|| ApiError::not_found("LoadBalancerNotFound", "load balancer", id))
    }

    fn listener_of(&self, lb: &str, id: &str) -> Result<&Listener, ApiError> {
        self.balancer(lb)?;
        self.listeners
            .get(id)
            .filter(|l| l.load_balancer_id == lb)
            .ok_or_else(|| ApiError::not_found("ListenerNotFound", "listener", id))
    }

    fn group_of(&self, lb: &str, id: &str) -> Result<&BackendServerGroup, ApiError> {
        self.balancer(lb)?;
        self.groups
            .get(id)
            .filter(|g| g.load_balancer_id == lb)
            .ok_or_else(|| {
                ApiError::not_found("BackendServerGroupNotFound", "backend server group", id)
            })
    }

    fn acl(&self, id: &str) -> Result<&Acl, ApiError> {
        self.acls
            .get(id)
            .ok_or_else(|| ApiError::not_found("AclNotFound", "acl", id))
    }

    fn allocate_vip(&mut self, range: &IpNet) -> Result<IpAddr, ApiError> {
        let used: BTreeSet<IpAddr> = self.balancers.values().map(|b| b.address).collect();
        let hosts: Vec<IpAddr> = range.hosts().take(1 << 20).collect();
        if hosts.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AddressExhausted",
                format!("no address left in {range}"),
            ));
        }
        let n = hosts.len() as u64;
        for step in 0..n {
            let idx = ((self.vip_cursor + step) % n) as usize;
            let candidate = hosts[idx];
            if !used.contains(&candidate) {
                self.vip_cursor = (idx as u64 + 1) % n;
                return Ok(candidate);
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "AddressExhausted",
            format!("no address left in {range}"),
        ))
    }

    // ---- load balancers ----

    pub fn create_balancer(
        &mut self,
        config: &CloudConfig,
        req: CreateLoadBalancerRequest,
        token: Option<&str>,
    ) -> Result<Created<LoadBalancer>, ApiError> {
        // A bad request is refused even when its token was seen before.
        check_name("name", &req.name)?;
        let spec = req
            .spec
            .unwrap_or_else(|| DEFAULT_BALANCER_SPEC.to_string());
        check_spec("spec", &spec)?;
        check_tags("tags", &req.tags)?;
        if let Some(id) = self.token_lookup("lb", token)
            && let Some(lb) = self.balancers.get(id)
        {
            return Ok(Created {
                object: lb.clone(),
                replayed: true,
            });
        }
        if self.balancers.len() >= config.quotas.balancers {
            return Err(ApiError::quota("balancers", config.quotas.balancers));
        }
        let address = match req.address {
            Some(addr) => {
                if !config.vip_range.contains(&addr) {
                    return Err(ApiError::invalid(
                        "address",
                        format!("{addr} is outside the cloud's range {}", config.vip_range),
                    ));
                }
                if let Some(owner) = self.balancers.values().find(|b| b.address == addr) {
                    return Err(ApiError::conflict(
                        "AddressInUse",
                        format!("address: {addr} is in use by {}", owner.id),
                    ));
                }
                addr
            }
            None => self.allocate_vip(&config.vip_range)?,
        };
        let lb = LoadBalancer {
            id: new_id("lb"),
            name: req.name,
            address,
            address_type: req.address_type,
            spec,
            tags: req.tags,
            created_at: now_secs(),
        };
        self.remember_token("lb", token, &lb.id);
        self.balancers.insert(lb.id.clone(), lb.clone());
        Ok(Created {
            object: lb,
            replayed: false,
        })
    }

    pub fn describe_balancer(&self, id: &str) -> Result<LoadBalancer, ApiError> {
        self.balancer(id).cloned()
    }

    pub fn list_balancers(
        &self,
        tags: &BTreeMap<String, String>,
        page: &PageRequest,
    ) -> Page<LoadBalancer> {
        paginate(
            self.balancers
                .iter()
                .filter(|(_, b)| tags.iter().all(|(k, v)| b.tags.get(k) == Some(v))),
            page,
        )
    }

    pub fn update_balancer(
        &mut self,
        id: &str,
        req: UpdateLoadBalancerRequest,
    ) -> Result<LoadBalancer, ApiError> {
        let mut lb = self.balancer(id)?.clone();
        if let Some(name) = req.name {
            check_name("name", &name)?;
            lb.name = name;
        }
        if let Some(spec) = req.spec {
            check_spec("spec", &spec)?;
            lb.spec = spec;
        }
        for key in &req.remove_tags {
            lb.tags.remove(key);
        }
        lb.tags.extend(req.add_tags);
        check_tags("tags", &lb.tags)?;
        self.balancers.insert(id.to_string(), lb.clone());
        Ok(lb)
    }

    pub fn delete_balancer(&mut self, id: &str) -> Result<Effects, ApiError> {
        self.balancer(id)?;
        self.balancers.remove(id);
        let listeners: Vec<String> = self
            .listeners
            .values()
            .filter(|l| l.load_balancer_id == id)
            .map(|l| l.id.clone())
            .collect();
        let groups: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.load_balancer_id == id)
            .map(|g| g.id.clone())
            .collect();
        for child in listeners.iter().chain(&groups) {
            self.listeners.remove(child);
            self.groups.remove(child);
            self.forget_tokens_of(child);
        }
        self.forget_tokens_of(id);
        let mut effects = Effects::default();
        effects.remove.insert(id.to_string());
        Ok(effects)
    }

    // ---- listeners ----

    fn check_settings(&self, lb: &str, s: &ListenerSettings) -> Result<(), ApiError> {
        match self.groups.get(&s.backend_server_group_id) {
            None => {
                return Err(ApiError::not_found(
                    "BackendServerGroupNotFound",
                    "backend_server_group_id: backend server group",
                    &s.backend_server_group_id,
                ));
            }
            Some(g) if g.load_balancer_id != lb => {
                return Err(ApiError::invalid(
                    "backend_server_group_id",
                    format!(
                        "group {} belongs to another balancer",
                        s.backend_server_group_id
                    ),
                ));
            }
            Some(_) => {}
        }
        check_health("health_check", &s.health_check)?;
        if let Some(acl) = &s.acl
            && !self.acls.contains_key(&acl.acl_id)
        {
            return Err(ApiError::not_found(
                "AclNotFound",
                "acl.acl_id: acl",
                &acl.acl_id,
            ));
        }
        if let Some(sticky) = &s.sticky_session {
            check_range(
                "sticky_session.timeout_seconds",
                sticky.timeout_seconds,
                1,
                86_400,
            )?;
        }
        check_description("description", &s.description)
    }

    pub fn create_listener(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        req: CreateListenerRequest,
        token: Option<&str>,
    ) -> Result<(Created<Listener>, Effects), ApiError> {
        self.balancer(lb)?;
        let port = check_port("port", req.port)?;
        if let Some(id) = self.token_lookup("listener", token)
            && let Some(l) = self.listeners.get(id)
            && l.load_balancer_id == lb
        {
            return Ok((
                Created {
                    object: l.clone(),
                    replayed: true,
                },
                Effects::default(),
            ));
        }
        let settings = req.settings();
        self.check_settings(lb, &settings)?;
        let existing: Vec<&Listener> = self
            .listeners
            .values()
            .filter(|l| l.load_balancer_id == lb)
            .collect();
        if let Some(clash) = existing
            .iter()
            .find(|l| l.port == port && l.protocol == req.protocol)
        {
            return Err(ApiError::conflict(
                "ListenerAlreadyExists",
                format!(
                    "port: listener {} already serves {port}/{}",
                    clash.id,
                    req.protocol.as_str()
                ),
            ));
        }
        if existing.len() >= quotas.listeners_per_balancer {
            return Err(ApiError::quota(
                "listeners_per_balancer",
                quotas.listeners_per_balancer,
            ));
        }
        let listener = Listener {
            id: new_id("lsn"),
            load_balancer_id: lb.to_string(),
            port,
            protocol: req.protocol,
            settings,
        };
        self.remember_token("listener", token, &listener.id);
        self.listeners.insert(listener.id.clone(), listener.clone());
        Ok((
            Created {
                object: listener,
                replayed: false,
            },
            Effects::apply(lb),
        ))
    }

    pub fn list_listeners(&self, lb: &str, page: &PageRequest) -> Result<Page<Listener>, ApiError> {
        self.balancer(lb)?;
        Ok(paginate(
            self.listeners
                .iter()
                .filter(|(_, l)| l.load_balancer_id == lb),
            page,
        ))
    }

    pub fn describe_listener(&self, lb: &str, id: &str) -> Result<Listener, ApiError> {
        self.listener_of(lb, id).cloned()
    }

    pub fn update_listener(
        &mut self,
        lb: &str,
        id: &str,
        settings: ListenerSettings,
    ) -> Result<(Listener, Effects), ApiError> {
        let mut listener = self.listener_of(lb, id)?.clone();
        self.check_settings(lb, &settings)?;
        let changed = listener.settings != settings;
        listener.settings = settings;
        self.listeners.insert(id.to_string(), listener.clone());
        let effects = if changed {
            Effects::apply(lb)
        } else {
            Effects::default()
        };
        Ok((listener, effects))
    }

    pub fn delete_listener(&mut self, lb: &str, id: &str) -> Result<Effects, ApiError> {
        self.listener_of(lb, id)?;
        self.listeners.remove(id);
        self.forget_tokens_of(id);
        Ok(Effects::apply(lb))
    }

    // ---- backend server groups ----

    fn group_users(&self, group: &str) -> Effects {
        let mut effects = Effects::default();
        for l in self.listeners.values() {
            if l.settings.backend_server_group_id == group {
                effects.apply.insert(l.load_balancer_id.clone());
            }
        }
        effects
    }

    pub fn create_group(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        req: CreateBackendServerGroupRequest,
        token: Option<&str>,
    ) -> Result<Created<BackendServerGroup>, ApiError> {
        self.balancer(lb)?;
        check_name("name", &req.name)?;
        let servers = check_servers("servers", req.servers)?;
        if let Some(id) = self.token_lookup("group", token)
            && let Some(g) = self.groups.get(id)
            && g.load_balancer_id == lb
        {
            return Ok(Created {
                object: g.clone(),
                replayed: true,
            });
        }
        if servers.len() > quotas.servers_per_group {
            return Err(ApiError::quota(
                "servers_per_group",
                quotas.servers_per_group,
            ));
        }
        let count = self
            .groups
            .values()
            .filter(|g| g.load_balancer_id == lb)
            .count();
        if count >= quotas.groups_per_balancer {
            return Err(ApiError::quota(
                "groups_per_balancer",
                quotas.groups_per_balancer,
            ));
        }
        let group = BackendServerGroup {
            id: new_id("sg"),
            load_balancer_id: lb.to_string(),
            name: req.name,
            servers,
        };
        self.remember_token("group", token, &group.id);
        self.groups.insert(group.id.clone(), group.clone());
        Ok(Created {
            object: group,
            replayed: false,
        })
    }

    pub fn list_groups(
        &self,
        lb: &str,
        page: &PageRequest,
    ) -> Result<Page<BackendServerGroup>, ApiError> {
        self.balancer(lb)?;
        Ok(paginate(
            self.groups.iter().filter(|(_, g)| g.load_balancer_id == lb),
            page,
        ))
    }

    pub fn describe_group(&self, lb: &str, id: &str) -> Result<BackendServerGroup, ApiError> {
        self.group_of(lb, id).cloned()
    }

    fn replace_servers(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        id: &str,
        servers: Vec<BackendServer>,
    ) -> Result<(BackendServerGroup, Effects), ApiError> {
        let mut group = self.group_of(lb, id)?.clone();
        let servers = check_servers("servers", servers)?;
        if servers.len() > quotas.servers_per_group {
            return Err(ApiError::quota(
                "servers_per_group",
                quotas.servers_per_group,
            ));
        }
        let changed = group.servers != servers;
        group.servers = servers;
        self.groups.insert(id.to_string(), group.clone());
        let effects = if changed {
            self.group_users(id)
        } else {
            Effects::default()
        };
        Ok((group, effects))
    }

    pub fn set_servers(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        id: &str,
        servers: Vec<BackendServer>,
    ) -> Result<(BackendServerGroup, Effects), ApiError> {
        self.replace_servers(quotas, lb, id, servers)
    }

    pub fn add_servers(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        id: &str,
        add: Vec<BackendServer>,
    ) -> Result<(BackendServerGroup, Effects), ApiError> {
        let add = check_servers("servers", add)?;
        let mut servers = self.group_of(lb, id)?.servers.clone();
        for new in add {
            match servers
                .iter_mut()
                .find(|s| s.address == new.address && s.port == new.port)
            {
                Some(existing) => *existing = new,
                None => servers.push(new),
            }
        }
        self.replace_servers(quotas, lb, id, servers)
    }

    pub fn remove_servers(
        &mut self,
        quotas: &Quotas,
        lb: &str,
        id: &str,
        remove: Vec<BackendServer>,
    ) -> Result<(BackendServerGroup, Effects), ApiError> {
        for (i, s) in remove.iter().enumerate() {
            check_port(&format!("servers[{i}].port"), s.port)?;
        }
        let mut servers = self.group_of(lb, id)?.servers.clone();
        servers.retain(|s| {
            !remove
                .iter()
                .any(|r| r.address == s.address && r.port == s.port)
        });
        self.replace_servers(quotas, lb, id, servers)
    }

    pub fn delete_group(&mut self, lb: &str, id: &str) -> Result<(), ApiError> {
        self.group_of(lb, id)?;
        if let Some(user) = self
            .listeners
            .values()
            .find(|l| l.settings.backend_server_group_id == id)
        {
            return Err(ApiError::conflict(
                "ResourceInUse",
                format!("backend server group {id} is used by listener {}", user.id),
            ));
        }
        self.groups.remove(id);
        self.forget_tokens_of(id);
        Ok(())
    }

    // ---- ACLs ----

    fn acl_users(&self, acl: &str) -> Effects {
        let mut effects = Effects::default();
        for l in self.listeners.values() {
            if l.settings.acl.as_ref().is_some_and(|a| a.acl_id == acl) {
                effects.apply.insert(l.load_balancer_id.clone());
            }
        }
        effects
    }

    pub fn create_acl(
        &mut self,
        quotas: &Quotas,
        req: CreateAclRequest,
        token: Option<&str>,
    ) -> Result<Created<Acl>, ApiError> {
        check_name("name", &req.name)?;
        let entries = parse_entries("entries", req.entries)?;
        check_tags("tags", &req.tags)?;
        if let Some(id) = self.token_lookup("acl", token)
            && let Some(acl) = self.acls.get(id)
        {
            return Ok(Created {
                object: acl.clone(),
                replayed: true,
            });
        }
        if entries.len() > quotas.entries_per_acl {
            return Err(ApiError::quota("entries_per_acl", quotas.entries_per_acl));
        }
        if self.acls.len() >= quotas.acls {
            return Err(ApiError::quota("acls", quotas.acls));
        }
        let acl = Acl {
            id: new_id("acl"),
            name: req.name,
            entries,
            tags: req.tags,
        };
        self.remember_token("acl", token, &acl.id);
        self.acls.insert(acl.id.clone(), acl.clone());
        Ok(Created {
            object: acl,
            replayed: false,
        })
    }

    pub fn list_acls(&self, tags: &BTreeMap<String, String>, page: &PageRequest) -> Page<Acl> {
        paginate(
            self.acls
                .iter()
                .filter(|(_, a)| tags.iter().all(|(k, v)| a.tags.get(k) == Some(v))),
            page,
        )
    }

    pub fn describe_acl(&self, id: &str) -> Result<Acl, ApiError> {
        self.acl(id).cloned()
    }

    pub fn update_acl(
        &mut self,
        quotas: &Quotas,
        id: &str,
        req: UpdateAclRequest,
    ) -> Result<(Acl, Effects), ApiError> {
        let mut acl = self.acl(id)?.clone();
        if let Some(name) = req.name {
            check_name("name", &name)?;
            acl.name = name;
        }
        let entries = parse_entries("entries", req.entries)?;
        if entries.len() > quotas.entries_per_acl {
            return Err(ApiError::quota("entries_per_acl", quotas.entries_per_acl));
        }
        let changed = acl.entries != entries;
        acl.entries = entries;
        self.acls.insert(id.to_string(), acl.clone());
        let effects = if changed {
            self.acl_users(id)
        } else {
            Effects::default()
        };
        Ok((acl, effects))
    }

    pub fn delete_acl(&mut self, id: &str) -> Result<(), ApiError> {
        self.acl(id)?;
        if let Some(user) = self
            .listeners
            .values()
            .find(|l| l.settings.acl.as_ref().is_some_and(|a| a.acl_id == id))
        {
            return Err(ApiError::conflict(
                "ResourceInUse",
                format!("acl {id} is used by listener {}", user.id),
            ));
        }
        self.acls.remove(id);
        self.forget_tokens_of(id);
        Ok(())
    }

    // ---- forwarding ----

    /// What the data plane should forward for balancer `id`, if it exists.
    pub fn forwarding(&self, id: &str, drain_timeout: Duration) -> Option<BalancerForwarding> {
        let lb = self.balancers.get(id)?;
        let mut listeners: Vec<ListenerConfig> = self
            .listeners
            .values()
            .filter(|l| l.load_balancer_id == id)
            .map(|l| self.listener_config(l, drain_timeout))
            .collect();
        listeners.sort_by_key(|l| (l.port, l.transport));
        Some(BalancerForwarding {
            balancer_id: lb.id.clone(),
            vip: lb.address,
            listeners,
        })
    }

    fn listener_config(&self, l: &Listener, drain_timeout: Duration) -> ListenerConfig {
        let backends = self
            .groups
            .get(&l.settings.backend_server_group_id)
            .map(|g| {
                g.servers
                    .iter()
                    .filter_map(|s| {
                        let port = u16::try_from(s.port).ok()?;
                        Some(BackendConfig {
                            addr: std::net::SocketAddr::new(s.address, port),
                            weight: s.weight,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hc = &l.settings.health_check;
        let probe = if !hc.enabled {
            ProbeKind::Disabled
        } else {
            match hc.kind {
                HealthCheckType::Tcp => ProbeKind::TcpConnect,
                HealthCheckType::Http => match hc.port {
                    Some(port) => ProbeKind::Http {
                        port,
                        path: hc.path.clone().unwrap_or_else(|| "/".into()),
                    },
                    None => ProbeKind::TcpConnect,
                },
            }
        };
        let access = match &l.settings.acl {
            None => AccessControl::AllowAll,
            Some(acl_ref) => {
                let nets: Vec<IpNet> = self
                    .acls
                    .get(&acl_ref.acl_id)
                    .map(|a| {
                        a.entries
                            .iter()
                            .filter_map(|e| e.cidr.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                match acl_ref.mode {
                    AclMode::White => AccessControl::AllowOnly(nets),
                    AclMode::Black => AccessControl::Deny(nets),
                }
            }
        };
        ListenerConfig {
            port: l.port,
            transport: match l.protocol {
                ListenerProtocol::Tcp => Transport::Tcp,
                ListenerProtocol::Udp => Transport::Udp,
            },
            backends,
            health_check: HealthCheckConfig {
                probe,
                interval: Duration::from_secs(hc.interval_seconds.into()),
                timeout: Duration::from_secs(hc.timeout_seconds.into()),
                healthy_threshold: hc.healthy_threshold,
                unhealthy_threshold: hc.unhealthy_threshold,
            },
            access,
            scheduler: match l.settings.scheduler {
                SchedulerKind::Wrr => Scheduler::Wrr,
                SchedulerKind::Wlc => Scheduler::Wlc,
            },
            drain_timeout,
            sticky_timeout: l
                .settings
                .sticky_session
                .map(|s| Duration::from_secs(s.timeout_seconds.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> BTreeMap<String, usize> {
        (0..n).map(|i| (format!("id-{i:03}"), i)).collect()
    }

    #[test]
    fn pagination_walks_every_item_once() {
        let cases = [(0, 5), (5, 5), (6, 5), (11, 1), (3, 100)];
        for (n, size) in cases {
            let all = items(n);
            let mut seen = Vec::new();
            let mut page = PageRequest { size, token: None };
            for _ in 0..=n {
                let p = paginate(all.iter(), &page);
                assert!(p.items.len() <= size, "n={n} size={size}");
                seen.extend(p.items);
                match p.next_page_token {
                    Some(t) => page.token = Some(t),
                    None => break,
                }
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} size={size}");
        }
    }
}
