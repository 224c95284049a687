//! Listeners: one per (port, protocol) of a balancer, each pointing at a
//! backend server group of the same balancer and optionally an ACL. A
//! listener that changes changes what its balancer forwards.

use super::page::{PageRequest, paginate};
use super::validate::{check_description, check_health, check_port, check_sticky};
use super::{Created, Effects, Store, new_id};
use crate::cloud::Quotas;
use crate::cloud::error::ApiError;
use crate::cloud::model::{CreateListenerRequest, Listener, ListenerSettings, Page};

impl Store {
    fn listener_of(&self, lb: &str, id: &str) -> Result<&Listener, ApiError> {
        self.balancer(lb)?;
        self.listeners
            .get(id)
            .filter(|l| l.load_balancer_id == lb)
            .ok_or_else(|| ApiError::not_found("ListenerNotFound", "listener", id))
    }

    /// The settings' references resolve (the group within balancer `lb`)
    /// and their fields are in range.
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
            check_sticky("sticky_session", sticky)?;
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
            return Ok((Created::Replayed(l.clone()), Effects::default()));
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
        Ok((Created::New(listener), Effects::apply(lb)))
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
}
