//! ACLs: named lists of CIDRs, account-wide, that listeners use as a
//! whitelist or a blacklist of client addresses.

use std::collections::BTreeMap;

use super::page::{PageRequest, paginate};
use super::validate::{check_name, check_tags, parse_entries};
use super::{Created, Effects, Store, new_id};
use crate::cloud::Quotas;
use crate::cloud::error::ApiError;
use crate::cloud::model::{Acl, CreateAclRequest, Page, UpdateAclRequest};

impl Store {
    fn acl(&self, id: &str) -> Result<&Acl, ApiError> {
        self.acls
            .get(id)
            .ok_or_else(|| ApiError::not_found("AclNotFound", "acl", id))
    }

    /// The balancers with a listener that uses ACL `acl`.
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
            return Ok(Created::Replayed(acl.clone()));
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
        Ok(Created::New(acl))
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
}
