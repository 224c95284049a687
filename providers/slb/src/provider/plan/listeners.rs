//! The listener half of the plan: which group and listener calls turn the
//! listeners and groups on a balancer into the wanted ones, and which
//! remove portico's part of a reused balancer. Pure.

use std::collections::{BTreeMap, BTreeSet};

use portico_provider::ProviderError;

use super::{AclRef, GroupRef, Mode, PlannedSettings, Step};
use crate::cloud::model::*;
use crate::provider::desired::DesiredListener;
use crate::provider::options::{ForeignListeners, annotation, keys};

/// The name of portico's group for one listener of the balancer of `marker`.
pub fn group_name(marker: &str, port: u16, protocol: ListenerProtocol) -> String {
    format!("{marker}-{port}-{}", protocol.as_str())
}

/// Servers to add (new, or changed weight/description) and to remove, so that
/// `have` becomes `want`. Additions come first in the plan.
pub fn server_diff(
    have: &[BackendServer],
    want: &[BackendServer],
) -> (Vec<BackendServer>, Vec<BackendServer>) {
    let key = |s: &BackendServer| (s.address, s.port);
    let have_by: BTreeMap<_, _> = have.iter().map(|s| (key(s), s)).collect();
    let want_keys: BTreeSet<_> = want.iter().map(key).collect();
    let add = want
        .iter()
        .filter(|w| have_by.get(&key(w)) != Some(w))
        .cloned()
        .collect();
    let remove = have
        .iter()
        .filter(|h| !want_keys.contains(&key(h)))
        .cloned()
        .collect();
    (add, remove)
}

/// The calls that turn `listeners`/`groups` (what is on the balancer) into
/// `desired`, every listener carrying `acl`. `marker` identifies portico's
/// listeners and groups; `mode` says which others it may touch.
///
/// Order: groups and backends first (additions before removals), then
/// listeners created or changed in place, then unwanted listeners deleted,
/// then portico's groups nothing uses any more.
///
/// # Errors
/// `InvalidSpec` naming `force-override-listeners` when a reused balancer
/// has a foreign listener on a wanted port and may not take it over.
pub fn listener_steps(
    mode: Mode,
    marker: &str,
    desired: &[DesiredListener],
    acl: Option<&AclRef>,
    listeners: &[Listener],
    groups: &[BackendServerGroup],
) -> Result<Vec<Step>, ProviderError> {
    let mut steps = Vec::new();
    let mut listener_steps = Vec::new();
    let groups_by_id: BTreeMap<&str, &BackendServerGroup> =
        groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let groups_by_name: BTreeMap<&str, &BackendServerGroup> =
        groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut used_groups: BTreeSet<String> = BTreeSet::new();
    let wanted: BTreeSet<(u16, ListenerProtocol)> =
        desired.iter().map(|d| (d.port, d.protocol)).collect();

    for d in desired {
        let name = group_name(marker, d.port, d.protocol);
        let existing = listeners
            .iter()
            .find(|l| l.port == d.port && l.protocol == d.protocol);
        if let Some(l) = existing
            && l.settings.description != marker
            && mode == Mode::Reused(ForeignListeners::Keep)
        {
            return Err(ProviderError::invalid(
                portico_provider::Annotations::field(&annotation(keys::FORCE_OVERRIDE_LISTENERS)),
                format!(
                    "the reused balancer already has a listener on {}/{}; set force-override-listeners to \"true\" to take it over",
                    d.port,
                    d.protocol.as_str()
                ),
            ));
        }
        // Which group serves this listener: its current one when it is ours
        // by name, else ours by name, else a new one.
        let current = existing
            .and_then(|l| groups_by_id.get(l.settings.backend_server_group_id.as_str()))
            .filter(|g| g.name == name || (mode == Mode::Owned && g.name.starts_with(marker)))
            .copied()
            .or_else(|| groups_by_name.get(name.as_str()).copied());
        let group = match current {
            Some(g) => {
                let (add, remove) = server_diff(&g.servers, &d.servers);
                if !add.is_empty() {
                    steps.push(Step::AddServers {
                        group_id: g.id.clone(),
                        servers: add,
                    });
                }
                if !remove.is_empty() {
                    steps.push(Step::RemoveServers {
                        group_id: g.id.clone(),
                        servers: remove,
                    });
                }
                used_groups.insert(g.id.clone());
                GroupRef::Id(g.id.clone())
            }
            None => {
                steps.push(Step::CreateGroup {
                    name: name.clone(),
                    servers: d.servers.clone(),
                });
                GroupRef::Created(name)
            }
        };
        let settings = PlannedSettings::new(d, group, acl.cloned(), marker);
        match existing {
            None => listener_steps.push(Step::CreateListener {
                port: d.port,
                protocol: d.protocol,
                settings,
            }),
            Some(l) if !settings.matches(&l.settings) => {
                listener_steps.push(Step::UpdateListener {
                    listener_id: l.id.clone(),
                    settings,
                });
            }
            Some(_) => {}
        }
    }
    steps.extend(listener_steps);

    for l in listeners {
        if wanted.contains(&(l.port, l.protocol)) {
            continue;
        }
        let ours = l.settings.description == marker;
        let delete = match mode {
            Mode::Owned => true,
            Mode::Reused(ForeignListeners::Override) => ours,
            Mode::Reused(ForeignListeners::Keep) => false,
        };
        if delete {
            steps.push(Step::DeleteListener {
                listener_id: l.id.clone(),
            });
        } else {
            used_groups.insert(l.settings.backend_server_group_id.clone());
        }
    }

    for g in groups {
        let ours = mode == Mode::Owned || g.name.starts_with(&format!("{marker}-"));
        if ours && !used_groups.contains(&g.id) {
            steps.push(Step::DeleteGroup {
                group_id: g.id.clone(),
            });
        }
    }
    Ok(steps)
}

/// The calls that remove portico's listeners and groups from a reused
/// balancer, leaving everything else on it.
pub fn release_steps(
    marker: &str,
    listeners: &[Listener],
    groups: &[BackendServerGroup],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut kept_groups = BTreeSet::new();
    for l in listeners {
        if l.settings.description == marker {
            steps.push(Step::DeleteListener {
                listener_id: l.id.clone(),
            });
        } else {
            kept_groups.insert(l.settings.backend_server_group_id.as_str());
        }
    }
    for g in groups {
        if g.name.starts_with(&format!("{marker}-")) && !kept_groups.contains(g.id.as_str()) {
            steps.push(Step::DeleteGroup {
                group_id: g.id.clone(),
            });
        }
    }
    steps
}
