//! Load balancers: create (with a VIP and an idempotency token), list by
//! tags, describe, update name/spec/tags, and delete with everything under
//! them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::page::{PageRequest, paginate};
use super::validate::{check_name, check_spec, check_tags};
use super::{Created, Effects, Store, new_id};
use crate::cloud::CloudConfig;
use crate::cloud::error::ApiError;
use crate::cloud::model::{
    CreateLoadBalancerRequest, DEFAULT_BALANCER_SPEC, LoadBalancer, Page, UpdateLoadBalancerRequest,
};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    pub(super) fn balancer(&self, id: &str) -> Result<&LoadBalancer, ApiError> {
        self.balancers
            .get(id)
            .ok_or_else(|| ApiError::not_found("LoadBalancerNotFound", "load balancer", id))
    }

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
            return Ok(Created::Replayed(lb.clone()));
        }
        if self.balancers.len() >= config.quotas.balancers {
            return Err(ApiError::quota("balancers", config.quotas.balancers));
        }
        let address = self.take_vip(&config.vip_range, req.address)?;
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
        Ok(Created::New(lb))
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
        Ok(Effects::remove(id))
    }
}
