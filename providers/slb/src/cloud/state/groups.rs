//! Backend server groups: the servers (a node's address and NodePort, with
//! a weight) a balancer's listeners forward to, replaced, added to or
//! removed from as one change.

use super::page::{PageRequest, paginate};
use super::validate::{check_name, check_port, check_servers};
use super::{Created, Effects, Store, new_id};
use crate::cloud::Quotas;
use crate::cloud::error::ApiError;
use crate::cloud::model::{
    BackendServer, BackendServerGroup, CreateBackendServerGroupRequest, Page,
};

impl Store {
    fn group_of(&self, lb: &str, id: &str) -> Result<&BackendServerGroup, ApiError> {
        self.balancer(lb)?;
        self.groups
            .get(id)
            .filter(|g| g.load_balancer_id == lb)
            .ok_or_else(|| {
                ApiError::not_found("BackendServerGroupNotFound", "backend server group", id)
            })
    }

    /// The balancers with a listener that forwards to group `group`.
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
            return Ok(Created::Replayed(g.clone()));
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
        Ok(Created::New(group))
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

    /// Replace the whole server list of group `id`; the balancers that use
    /// the group forward anew if the list changed.
    pub fn set_servers(
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

    /// Add servers, or update those present (same address and port).
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
        self.set_servers(quotas, lb, id, servers)
    }

    /// Remove servers by address and port; absent ones are ignored.
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
        self.set_servers(quotas, lb, id, servers)
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
}
