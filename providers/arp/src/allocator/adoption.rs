//! What Services' statuses show, brought into the allocator: our
//! Services' addresses adopted as their holdings, other controllers'
//! addresses reserved.

use std::net::IpAddr;

use portico_provider::LoadBalancerKey;

use super::{Adoption, Allocation, Allocator, Claim};

impl Allocator {
    /// A Service of ours holding `ip`, if any.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&LoadBalancerKey> {
        self.holders.get(&ip)?.owned.iter().next()
    }

    /// Another controller's Service `service` (`namespace/name`) shows
    /// `ips` in its status (empty: nothing any more): never hand them out.
    pub fn set_foreign(&mut self, service: &str, ips: Vec<IpAddr>) {
        let old = self.foreign.get(service).cloned().unwrap_or_default();
        if old == ips {
            return;
        }
        for ip in &old {
            if let Some(h) = self.holders.get_mut(ip) {
                h.foreign.remove(service);
                if h.owned.is_empty() && h.foreign.is_empty() {
                    self.holders.remove(ip);
                }
            }
        }
        for ip in &ips {
            self.holders
                .entry(*ip)
                .or_default()
                .foreign
                .insert(service.to_string());
        }
        if ips.is_empty() {
            self.foreign.remove(service);
        } else {
            self.foreign.insert(service.to_string(), ips);
        }
        self.generation += 1;
    }

    /// Adopt what a Service of ours shows in its status. An address held by
    /// another Service that never showed it (a holding made but not
    /// published, e.g. by a replica that lost its lease) goes to the one
    /// whose status shows it: `published(holder, ip)` says whether a
    /// holder's status shows `ip`.
    pub fn adopt(
        &mut self,
        claim: &Claim,
        published: impl Fn(&LoadBalancerKey, IpAddr) -> bool,
    ) -> Adoption {
        if self.allocations.contains_key(&claim.key) || claim.ips.is_empty() {
            return Adoption::AlreadyHeld;
        }
        let mut evict = Vec::new();
        for ip in &claim.ips {
            let Some(holders) = self.holders.get(ip) else {
                continue;
            };
            if let Some(other) = holders.foreign.iter().next() {
                return Adoption::Conflict {
                    ip: *ip,
                    holder: other.clone(),
                };
            }
            for other in holders.owned.iter().filter(|k| **k != claim.key) {
                let compatible = self.allocations.get(other).is_some_and(|theirs| {
                    claim.sharing.key.is_some()
                        && claim.sharing == theirs.sharing
                        && claim.ports.is_disjoint(&theirs.ports)
                });
                if compatible {
                    continue;
                }
                if published(other, *ip) {
                    return Adoption::Conflict {
                        ip: *ip,
                        holder: format!("{}/{}", other.namespace, other.name),
                    };
                }
                evict.push(other.clone());
            }
        }
        evict.sort();
        evict.dedup();
        for key in &evict {
            self.unassign(key);
        }
        let allocation = Allocation {
            ips: claim.ips.clone(),
            pool: self.home(&claim.ips).map(|p| p.name.clone()),
            ports: claim.ports.clone(),
            sharing: claim.sharing.clone(),
        };
        self.assign(&claim.key, allocation);
        Adoption::Adopted { evicted: evict }
    }
}
