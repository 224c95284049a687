//! The cloud's resources and every operation on them, synchronous and free
//! of I/O: each operation validates its whole input first and only then
//! changes the store, so a rejected call changes nothing.
//!
//! This module holds the [`Store`] itself, idempotency tokens and the
//! consistency check of a loaded state file; each resource's operations
//! live in their own module, the checks of single fields in [`validate`].

mod acls;
mod balancers;
mod groups;
mod listeners;
mod page;
pub(crate) mod validate;
mod vip;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{Acl, BackendServerGroup, Listener, LoadBalancer};

pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest};

/// The version of the state file's layout this code reads and writes.
pub const STORE_VERSION: u32 = 1;

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

/// Which balancers' forwarding a mutation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Balancers whose forwarding must be sent again, whole.
    pub apply: BTreeSet<String>,
    /// Balancers that are gone: stop forwarding for them.
    pub remove: BTreeSet<String>,
}

impl Effects {
    fn apply(id: &str) -> Self {
        Self {
            apply: BTreeSet::from([id.to_string()]),
            remove: BTreeSet::new(),
        }
    }

    fn remove(id: &str) -> Self {
        Self {
            apply: BTreeSet::new(),
            remove: BTreeSet::from([id.to_string()]),
        }
    }
}

/// The result of a create: the object made now, or the one an earlier
/// create with the same client token made (then nothing changed).
#[derive(Debug)]
pub enum Created<T> {
    New(T),
    Replayed(T),
}

/// Why a loaded state file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("version {found} is not the supported {STORE_VERSION}")]
    Version { found: u32 },
    #[error("{kind} {id} refers to missing {missing} {missing_id}")]
    DanglingReference {
        kind: &'static str,
        id: String,
        missing: &'static str,
        missing_id: String,
    },
}

fn new_id(prefix: &str) -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &uuid[..20])
}

impl Store {
    pub fn new() -> Self {
        Self {
            version: STORE_VERSION,
            ..Self::default()
        }
    }

    /// Check the version and the references between objects of a state
    /// file just loaded.
    pub fn check_consistency(&self) -> Result<(), Inconsistency> {
        if self.version != STORE_VERSION {
            return Err(Inconsistency::Version {
                found: self.version,
            });
        }
        let dangling = |kind, id: &str, missing, missing_id: &str| {
            Err(Inconsistency::DanglingReference {
                kind,
                id: id.to_string(),
                missing,
                missing_id: missing_id.to_string(),
            })
        };
        for l in self.listeners.values() {
            if !self.balancers.contains_key(&l.load_balancer_id) {
                return dangling("listener", &l.id, "balancer", &l.load_balancer_id);
            }
            let group = &l.settings.backend_server_group_id;
            if !self.groups.contains_key(group) {
                return dangling("listener", &l.id, "group", group);
            }
            if let Some(acl) = &l.settings.acl
                && !self.acls.contains_key(&acl.acl_id)
            {
                return dangling("listener", &l.id, "acl", &acl.acl_id);
            }
        }
        for g in self.groups.values() {
            if !self.balancers.contains_key(&g.load_balancer_id) {
                return dangling("group", &g.id, "balancer", &g.load_balancer_id);
            }
        }
        Ok(())
    }

    /// The id of the object an earlier create of `kind` made with `token`.
    fn token_lookup(&self, kind: &str, token: Option<&str>) -> Option<&String> {
        token.and_then(|t| self.tokens.get(&format!("{kind}/{t}")))
    }

    fn remember_token(&mut self, kind: &str, token: Option<&str>, id: &str) {
        if let Some(t) = token {
            self.tokens.insert(format!("{kind}/{t}"), id.to_string());
        }
    }

    /// A deleted object's tokens go with it, so the map holds only tokens
    /// of objects that exist.
    fn forget_tokens_of(&mut self, id: &str) {
        self.tokens.retain(|_, v| v != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::{ListenerAcl, ListenerProtocol, ListenerSettings};

    fn listener(lb: &str, group: &str, acl: Option<&str>) -> Listener {
        Listener {
            id: "lsn-1".into(),
            load_balancer_id: lb.into(),
            port: 80,
            protocol: ListenerProtocol::Tcp,
            settings: ListenerSettings {
                backend_server_group_id: group.into(),
                health_check: Default::default(),
                scheduler: Default::default(),
                acl: acl.map(|id| ListenerAcl {
                    acl_id: id.into(),
                    mode: Default::default(),
                }),
                sticky_session: None,
                description: String::new(),
            },
        }
    }

    /// A store with balancer `lb-1`, its group `sg-1` and ACL `acl-1`.
    fn store() -> Store {
        serde_json::from_value(serde_json::json!({
            "version": STORE_VERSION,
            "balancers": {"lb-1": {"id": "lb-1", "name": "a", "address": "127.240.0.1",
                "address_type": "internet", "spec": "slb.s1.small", "tags": {}, "created_at": 0}},
            "listeners": {},
            "groups": {"sg-1": {"id": "sg-1", "load_balancer_id": "lb-1", "name": "g", "servers": []}},
            "acls": {"acl-1": {"id": "acl-1", "name": "x", "entries": [], "tags": {}}},
            "tokens": {},
            "vip_cursor": 0
        }))
        .expect("store")
    }

    #[test]
    fn a_loaded_store_must_be_consistent() {
        let with_listener = |l: Listener| {
            let mut s = store();
            s.listeners.insert(l.id.clone(), l);
            s
        };
        let mut orphan_group = store();
        orphan_group
            .groups
            .get_mut("sg-1")
            .expect("group")
            .load_balancer_id = "lb-gone".into();
        let cases = [
            (
                "consistent",
                with_listener(listener("lb-1", "sg-1", Some("acl-1"))),
                None,
            ),
            (
                "other version",
                Store {
                    version: STORE_VERSION + 1,
                    ..store()
                },
                Some("version"),
            ),
            (
                "listener of no balancer",
                with_listener(listener("lb-gone", "sg-1", None)),
                Some("missing balancer lb-gone"),
            ),
            (
                "listener of no group",
                with_listener(listener("lb-1", "sg-gone", None)),
                Some("missing group sg-gone"),
            ),
            (
                "listener with no acl",
                with_listener(listener("lb-1", "sg-1", Some("acl-gone"))),
                Some("missing acl acl-gone"),
            ),
            (
                "group of no balancer",
                orphan_group,
                Some("group sg-1 refers to missing balancer lb-gone"),
            ),
        ];
        for (desc, store, problem) in cases {
            match (store.check_consistency(), problem) {
                (Ok(()), None) => {}
                (Err(err), Some(text)) => {
                    assert!(err.to_string().contains(text), "{desc}: {err}");
                }
                (got, want) => panic!("{desc}: got {got:?}, want {want:?}"),
            }
        }
    }
}
