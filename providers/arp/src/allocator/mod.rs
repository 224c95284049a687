//! The IP allocator: which Service holds which addresses. Pure,
//! synchronous and idempotent, keyed by Service (MetalLB's
//! `internal/allocator` is the model): asking again for what a Service
//! already holds changes nothing.
//!
//! Rules it keeps:
//! - An address is held by one Service, or shared by Services that carry
//!   the same sharing key, the same traffic policy and no common
//!   (protocol, port).
//! - An address some other controller's Service shows in its status is
//!   never handed out ([`Allocator::set_foreign`]).
//! - What a Service shows in its status is adopted as its holding
//!   ([`Allocator::adopt`]), so a restarted controller hands nothing in use
//!   to another Service.
//! - A holding stays while it still fits the Service (asked addresses and
//!   pool, families, a pool that admits it, no clash); otherwise the
//!   Service gets a new one, and keeps the old one if none can be found.

mod adoption;
mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portico_provider::{IpFamily, LoadBalancerKey, Protocol, TrafficPolicy};

use crate::pools::{Pool, PoolSet, ServiceFacts};

/// One served port of a Service.
pub type Port = (Protocol, u16);

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    /// One address per family when the pools have both, else what they have.
    PreferDualStack,
    RequireDualStack,
}

/// Who an address may be shared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sharing {
    /// The sharing key (`portico.io/allow-shared-ip`); none: never shared.
    pub key: Option<String>,
    /// Services sharing an address must send traffic the same way: the
    /// announcing node must suit all of them.
    pub traffic: TrafficPolicy,
}

impl Sharing {
    pub fn exclusive() -> Self {
        Self {
            key: None,
            traffic: TrafficPolicy::Cluster,
        }
    }
}

/// What a Service asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub key: LoadBalancerKey,
    pub facts: ServiceFacts,
    /// `spec.ipFamilies`, primary first; never empty.
    pub families: Vec<IpFamily>,
    pub family_policy: FamilyPolicy,
    /// Addresses asked for by name (`spec.loadBalancerIP`, annotations);
    /// empty: any.
    pub ips: Vec<IpAddr>,
    /// The pool asked for by name.
    pub pool: Option<String>,
    pub ports: BTreeSet<Port>,
    pub sharing: Sharing,
}

/// What a Service holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// One per family, in the Service's family order.
    pub ips: Vec<IpAddr>,
    /// The accepted pool holding the addresses; none for addresses adopted
    /// from a status that no accepted pool holds (still reserved).
    pub pool: Option<String>,
    pub ports: BTreeSet<Port>,
    pub sharing: Sharing,
}

/// What `allocate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub ips: Vec<IpAddr>,
    pub pool: Option<String>,
    /// Whether the allocator's state changed (a new or moved holding, or new
    /// ports or sharing on the same addresses).
    pub changed: bool,
}

/// Why a Service gets no address. The messages are shown to users (in the
/// `AllocationFailed` Warning Event), so each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error(
        "no IPPool is accepted: create one (kubectl get ippools shows why existing ones are not)"
    )]
    NoPools,
    #[error(
        "no IPPool with autoAssign admits this Service (check the pools' namespaceSelector and serviceSelector, or name a pool)"
    )]
    NoPoolAdmits,
    #[error("no free {families} address in IPPool(s) {pools}: free one or add addresses")]
    Exhausted { families: String, pools: String },
    #[error("{ip} is outside every accepted IPPool")]
    OutsidePools { ip: IpAddr },
    #[error("{ip} ends in .0 or .255, which IPPool {pool:?} avoids (avoidBuggyIPs)")]
    Avoided { ip: IpAddr, pool: String },
    #[error("the requested addresses lie in different IPPools ({pools})")]
    DifferentPools { pools: String },
    #[error("{ip} is in use by {holder}{why}")]
    InUse {
        ip: IpAddr,
        holder: String,
        why: String,
    },
    #[error("IPPool {pool:?} does not exist or is not accepted")]
    UnknownPool { pool: String },
    #[error(
        "IPPool {pool:?} does not admit this Service (its namespaceSelector or serviceSelector)"
    )]
    PoolRefuses { pool: String },
    #[error("{ip} is not in the requested IPPool {pool:?}")]
    NotInRequestedPool { ip: IpAddr, pool: String },
}

/// What a Service shows in its status, to adopt.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: LoadBalancerKey,
    pub ips: Vec<IpAddr>,
    pub ports: BTreeSet<Port>,
    pub sharing: Sharing,
}

/// What `adopt` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The Service already holds addresses; its next allocation decides.
    AlreadyHeld,
    /// The status addresses are now its holding. `evicted`: Services whose
    /// holding of one of them was never published in their status (they
    /// get new addresses at their next allocation).
    Adopted { evicted: Vec<LoadBalancerKey> },
    /// Another Service shows `ip` in its status too, and they may not share:
    /// nothing adopted.
    Conflict { ip: IpAddr, holder: String },
}

/// Holders of one address.
#[derive(Debug, Clone, Default)]
struct Holders {
    /// Our Services.
    owned: BTreeSet<LoadBalancerKey>,
    /// Other controllers' Services (`namespace/name`) showing it.
    foreign: BTreeSet<String>,
}

/// Usage of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub capacity: u128,
    /// Addresses the pool offers that some Service holds or shows.
    pub in_use: u128,
}

/// The allocator.
#[derive(Debug, Default)]
pub struct Allocator {
    /// Accepted pools, by name.
    pools: Vec<Pool>,
    allocations: BTreeMap<LoadBalancerKey, Allocation>,
    holders: BTreeMap<IpAddr, Holders>,
    foreign: BTreeMap<String, Vec<IpAddr>>,
    /// Bumped on every change, for callers that count or publish changes.
    generation: u64,
}

fn families_text(families: &[IpFamily]) -> String {
    families
        .iter()
        .map(|f| match f {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn family_set(ips: &[IpAddr]) -> BTreeSet<IpFamily> {
    ips.iter().map(IpFamily::of).collect()
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Use these pools from now on. Holdings stay (they are in Services'
    /// statuses); each is checked against the new pools at its Service's
    /// next allocation.
    pub fn set_pools(&mut self, set: &PoolSet) {
        let mut pools = set.accepted.clone();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        if pools == self.pools {
            return;
        }
        self.pools = pools;
        let homes: Vec<(LoadBalancerKey, Option<String>)> = self
            .allocations
            .iter()
            .map(|(k, a)| (k.clone(), self.home(&a.ips).map(|p| p.name.clone())))
            .collect();
        for (key, home) in homes {
            if let Some(a) = self.allocations.get_mut(&key) {
                a.pool = home;
            }
        }
        self.generation += 1;
    }

    /// The accepted pool holding every address of `ips`.
    fn home(&self, ips: &[IpAddr]) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| !ips.is_empty() && ips.iter().all(|ip| p.holds(*ip)))
    }

    pub fn get(&self, key: &LoadBalancerKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Every Service holding addresses.
    pub fn keys(&self) -> impl Iterator<Item = &LoadBalancerKey> {
        self.allocations.keys()
    }

    /// Forget every holding (the start of a leadership term, before
    /// adopting what the statuses show).
    pub fn clear(&mut self) {
        self.allocations.clear();
        self.holders.clear();
        self.foreign.clear();
        self.generation += 1;
    }

    fn assign(&mut self, key: &LoadBalancerKey, allocation: Allocation) {
        self.unassign(key);
        for ip in &allocation.ips {
            self.holders
                .entry(*ip)
                .or_default()
                .owned
                .insert(key.clone());
        }
        self.allocations.insert(key.clone(), allocation);
        self.generation += 1;
    }

    fn unassign(&mut self, key: &LoadBalancerKey) -> Option<Allocation> {
        let old = self.allocations.remove(key)?;
        for ip in &old.ips {
            if let Some(h) = self.holders.get_mut(ip) {
                h.owned.remove(key);
                if h.owned.is_empty() && h.foreign.is_empty() {
                    self.holders.remove(ip);
                }
            }
        }
        self.generation += 1;
        Some(old)
    }

    /// The Service's addresses go back to their pools.
    pub fn release(&mut self, key: &LoadBalancerKey) -> Option<Allocation> {
        self.unassign(key)
    }

    /// Why `key` may not use `ip` with `ports` and `sharing`, if it may not.
    fn clash(
        &self,
        ip: IpAddr,
        key: &LoadBalancerKey,
        ports: &BTreeSet<Port>,
        sharing: &Sharing,
    ) -> Option<AllocationError> {
        let holders = self.holders.get(&ip)?;
        if let Some(other) = holders.foreign.iter().next() {
            return Some(AllocationError::InUse {
                ip,
                holder: other.clone(),
                why: " (a Service of another controller)".into(),
            });
        }
        for other in holders.owned.iter().filter(|k| *k != key) {
            let Some(theirs) = self.allocations.get(other) else {
                continue;
            };
            let why = match (&sharing.key, &theirs.sharing.key) {
                (None, _) | (_, None) => Some(String::new()),
                (Some(mine), Some(their)) if mine != their => Some(format!(
                    " with sharing key {their:?}, not {mine:?}"
                )),
                _ if sharing.traffic != theirs.sharing.traffic => Some(
                    " with another externalTrafficPolicy (Services sharing an address must have the same)"
                        .into(),
                ),
                _ => ports.intersection(&theirs.ports).next().map(|(proto, port)| {
                    format!(" and port {port}/{proto} is taken there")
                }),
            };
            if let Some(why) = why {
                return Some(AllocationError::InUse {
                    ip,
                    holder: format!("{}/{}", other.namespace, other.name),
                    why,
                });
            }
        }
        None
    }

    /// Whether the Service's current holding still fits its request; the
    /// pool it lies in when it does.
    fn still_fits(&self, old: &Allocation, req: &Request) -> Option<String> {
        if !req.ips.is_empty() {
            let want: BTreeSet<&IpAddr> = req.ips.iter().collect();
            if want != old.ips.iter().collect() {
                return None;
            }
        }
        let pool = self.home(&old.ips)?;
        if req.pool.as_ref().is_some_and(|p| *p != pool.name)
            || !pool.admits(&req.facts)
            || !old.ips.iter().all(|ip| pool.offers(*ip))
        {
            return None;
        }
        let have = family_set(&old.ips);
        let want: BTreeSet<IpFamily> = req.families.iter().copied().collect();
        let families_ok = match req.family_policy {
            FamilyPolicy::PreferDualStack => !have.is_empty() && have.is_subset(&want),
            _ => have == want,
        };
        if !families_ok
            || old.ips.iter().any(|ip| {
                self.clash(*ip, &req.key, &req.ports, &req.sharing)
                    .is_some()
            })
        {
            return None;
        }
        Some(pool.name.clone())
    }

    /// Give the Service addresses for its request: the ones it holds when
    /// they still fit, else new ones. Idempotent.
    ///
    /// # Errors
    /// Why no address fits; the Service then keeps what it held (its status
    /// still shows it).
    pub fn allocate(&mut self, req: &Request) -> Result<Allocated, AllocationError> {
        if let Some(old) = self.allocations.get(&req.key).cloned()
            && let Some(pool) = self.still_fits(&old, req)
        {
            let mut ips = self.order(old.ips.clone(), &req.families);
            if req.family_policy == FamilyPolicy::PreferDualStack
                && req.ips.is_empty()
                && ips.len() < req.families.len()
                && let Some(pool) = self.pool(&pool)
            {
                // The pool may have gained the missing family.
                let have = family_set(&ips);
                for family in req.families.iter().filter(|f| !have.contains(f)) {
                    if let Some(ip) = self.free_in(pool, *family, req) {
                        ips.push(ip);
                    }
                }
                ips = self.order(ips, &req.families);
            }
            let new = Allocation {
                ips: ips.clone(),
                pool: Some(pool.clone()),
                ports: req.ports.clone(),
                sharing: req.sharing.clone(),
            };
            let changed = new != old;
            if changed {
                self.assign(&req.key, new);
            }
            return Ok(Allocated {
                ips,
                pool: Some(pool),
                changed,
            });
        }
        // Take the old holding out, so its addresses are candidates again
        // for this Service; put it back if nothing fits.
        let old = self.unassign(&req.key);
        match self.fresh(req) {
            Ok(new) => {
                let done = Allocated {
                    ips: new.ips.clone(),
                    pool: new.pool.clone(),
                    changed: true,
                };
                self.assign(&req.key, new);
                Ok(done)
            }
            Err(err) => {
                if let Some(old) = old {
                    self.assign(&req.key, old);
                }
                Err(err)
            }
        }
    }

    /// Sort addresses into the Service's family order.
    fn order(&self, mut ips: Vec<IpAddr>, families: &[IpFamily]) -> Vec<IpAddr> {
        ips.sort_by_key(|ip| {
            families
                .iter()
                .position(|f| *f == IpFamily::of(ip))
                .unwrap_or(usize::MAX)
        });
        ips
    }

    /// A new holding for the request (the Service holds nothing now).
    fn fresh(&self, req: &Request) -> Result<Allocation, AllocationError> {
        if !req.ips.is_empty() {
            return self.requested(req);
        }
        let candidates: Vec<&Pool> = match &req.pool {
            Some(name) => {
                let pool = self
                    .pool(name)
                    .ok_or_else(|| AllocationError::UnknownPool { pool: name.clone() })?;
                if !pool.admits(&req.facts) {
                    return Err(AllocationError::PoolRefuses { pool: name.clone() });
                }
                vec![pool]
            }
            None => {
                if self.pools.is_empty() {
                    return Err(AllocationError::NoPools);
                }
                let admitting = self
                    .pools
                    .iter()
                    .filter(|p| p.auto_assign && p.admits(&req.facts));
                // Pools that select the Service first (MetalLB's rule).
                let (mut pinned, open): (Vec<&Pool>, Vec<&Pool>) =
                    admitting.partition(|p| p.pinned());
                pinned.extend(open);
                if pinned.is_empty() {
                    return Err(AllocationError::NoPoolAdmits);
                }
                pinned
            }
        };
        let mut partial: Option<(&Pool, Vec<IpAddr>)> = None;
        for pool in &candidates {
            let found: Vec<IpAddr> = req
                .families
                .iter()
                .filter_map(|f| self.free_in(pool, *f, req))
                .collect();
            if found.len() == req.families.len() {
                return Ok(self.holding(pool, found, req));
            }
            // PreferDualStack takes one family when no pool has both; the
            // primary family first.
            let better = match &partial {
                None => !found.is_empty(),
                Some((_, best)) => {
                    found.first().map(IpFamily::of) == req.families.first().copied()
                        && best.first().map(IpFamily::of) != req.families.first().copied()
                }
            };
            if req.family_policy == FamilyPolicy::PreferDualStack && better {
                partial = Some((pool, found));
            }
        }
        if let Some((pool, found)) = partial {
            return Ok(self.holding(pool, found, req));
        }
        Err(AllocationError::Exhausted {
            families: families_text(&req.families),
            pools: candidates
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn holding(&self, pool: &Pool, ips: Vec<IpAddr>, req: &Request) -> Allocation {
        Allocation {
            ips: self.order(ips, &req.families),
            pool: Some(pool.name.clone()),
            ports: req.ports.clone(),
            sharing: req.sharing.clone(),
        }
    }

    /// The addresses the Service named, if they can be its.
    fn requested(&self, req: &Request) -> Result<Allocation, AllocationError> {
        let mut home: Option<&Pool> = None;
        for ip in &req.ips {
            let pool = self
                .pools
                .iter()
                .find(|p| p.holds(*ip))
                .ok_or(AllocationError::OutsidePools { ip: *ip })?;
            if !pool.offers(*ip) {
                return Err(AllocationError::Avoided {
                    ip: *ip,
                    pool: pool.name.clone(),
                });
            }
            if let Some(name) = &req.pool
                && *name != pool.name
            {
                return Err(AllocationError::NotInRequestedPool {
                    ip: *ip,
                    pool: name.clone(),
                });
            }
            match home {
                Some(h) if h.name != pool.name => {
                    return Err(AllocationError::DifferentPools {
                        pools: format!("{}, {}", h.name, pool.name),
                    });
                }
                _ => home = Some(pool),
            }
            if let Some(err) = self.clash(*ip, &req.key, &req.ports, &req.sharing) {
                return Err(err);
            }
        }
        let Some(pool) = home else {
            return Err(AllocationError::NoPools);
        };
        if !pool.admits(&req.facts) {
            return Err(AllocationError::PoolRefuses {
                pool: pool.name.clone(),
            });
        }
        Ok(self.holding(pool, req.ips.clone(), req))
    }

    /// How much of each accepted pool is in use.
    pub fn usage(&self, pool: &Pool) -> Usage {
        let in_use = pool
            .ranges
            .iter()
            .map(|r| {
                self.holders
                    .range(r.first()..=r.last())
                    .filter(|(ip, _)| pool.offers(**ip))
                    .count() as u128
            })
            .sum();
        Usage {
            capacity: pool.capacity(),
            in_use,
        }
    }
}
