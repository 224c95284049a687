//! The provider's side of one leadership term: watch IPPools, Services and
//! Namespaces; before answering any call, load the pools and adopt every
//! address our Services show in their status; then keep the allocator in
//! step (pool edits, statuses, other controllers' addresses) and keep each
//! IPPool's status and Events saying what the allocator sees.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pool_status::{Verdict, already_reported, desired};
use super::service::{self, is_live_load_balancer};
use super::{ArpProvider, Directory, FIELD_MANAGER, State};
use crate::allocator::Adoption;
use crate::pool::IpPool;
use crate::pools::validate;

/// How soon a failed IPPool status write is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a watch saw.
#[derive(Debug)]
enum Change {
    Pools,
    Service(ObjectRef<Service>),
}

fn trim_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
}

/// Forward a watch's objects as changes; errors are logged (the watcher
/// retries with backoff).
async fn drive<K, S>(
    stream: S,
    what: &'static str,
    tx: mpsc::UnboundedSender<Change>,
    change: impl Fn(&K) -> Option<Change>,
) where
    S: Stream<Item = Result<K, watcher::Error>>,
    K: Debug,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(object) => {
                if let Some(c) = change(&object)
                    && tx.send(c).is_err()
                {
                    return;
                }
            }
            Err(err) => warn!(error = %err, what, "watch failed; retrying"),
        }
    }
}

impl ArpProvider {
    /// Serve one leadership term: until `stop`, keep the allocator loaded
    /// from the API server (calls wait until it is). Run it beside the
    /// Service controller, only while leading.
    ///
    /// # Cancellation
    /// Dropping the future (a deposed leader) or `stop` ends the term: the
    /// provider answers nothing until the next term has loaded again.
    pub async fn sync(&self, client: Client, stop: CancellationToken) {
        // Whatever a previous term knew may be stale by now.
        let _term = NotReady(self);
        self.shared.ready.send_replace(false);
        let (pools, pools_writer) = reflector::store::<IpPool>();
        let (services, services_writer) = reflector::store::<Service>();
        let (namespaces, namespaces_writer) = reflector::store();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pool_stream = watcher(
            Api::<IpPool>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(pools_writer)
        .touched_objects();
        let service_stream = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(trim_service)
        .reflect(services_writer)
        .touched_objects();
        // Labels are all the pools' selectors need of a namespace.
        let namespace_stream = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(namespaces_writer)
        .touched_objects();
        let watches = futures::future::join3(
            drive(pool_stream, "ippools", tx.clone(), |_: &IpPool| {
                Some(Change::Pools)
            }),
            drive(service_stream, "services", tx.clone(), |s: &Service| {
                Some(Change::Service(ObjectRef::from_obj(s)))
            }),
            drive(namespace_stream, "namespaces", tx, |_| None),
        );
        let term = Term {
            provider: self,
            api: Api::all(client.clone()),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(self.shared.config.identity.clone()),
                },
            ),
            pools,
            services,
            announced: BTreeMap::new(),
        };
        tokio::select! {
            () = stop.cancelled() => {}
            _ = watches => {}
            () = term.run(namespaces, &mut rx) => {}
        }
    }
}

/// Ends a term however its future ends (returned, or dropped).
struct NotReady<'a>(&'a ArpProvider);

impl Drop for NotReady<'_> {
    fn drop(&mut self) {
        let shared = &self.0.shared;
        shared.ready.send_replace(false);
        *shared.directory.write().unwrap_or_else(|e| e.into_inner()) = None;
        info!("IP allocator stopped (not leading)");
    }
}

/// The state of one term.
struct Term<'a> {
    provider: &'a ArpProvider,
    api: Api<IpPool>,
    recorder: Recorder,
    pools: Store<IpPool>,
    services: Store<Service>,
    /// Rejections announced by an Event this term, by pool name.
    announced: BTreeMap<String, String>,
}

impl Term<'_> {
    async fn run(
        mut self,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        rx: &mut mpsc::UnboundedReceiver<Change>,
    ) {
        let loaded = async {
            self.pools.wait_until_ready().await?;
            self.services.wait_until_ready().await?;
            namespaces.wait_until_ready().await
        };
        if loaded.await.is_err() {
            return;
        }
        let shared = &self.provider.shared;
        *shared.directory.write().unwrap_or_else(|e| e.into_inner()) = Some(Directory {
            services: self.services.clone(),
            namespaces,
        });
        self.rebuild();
        shared.ready.send_replace(true);
        let debounce = shared.config.status_debounce;
        let mut due = Some(Instant::now());
        loop {
            let flush = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = rx.recv() => {
                    let Some(change) = change else { return };
                    self.apply(change);
                    due = due.or_else(|| Some(Instant::now() + debounce));
                }
                () = shared.changed.notified() => {
                    due = due.or_else(|| Some(Instant::now() + debounce));
                }
                () = flush => {
                    // A failed write is tried again a little later.
                    due = (!self.publish().await).then(|| Instant::now() + RETRY);
                }
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.provider.state()
    }

    /// Load the pools, forget every holding, adopt every status (oldest
    /// Service first: on a double booking the older keeps the address).
    fn rebuild(&self) {
        let set = validate(&self.pool_objects());
        let mut services = self.services.state();
        services.sort_by(|a, b| {
            (a.creation_timestamp(), service::id(a)).cmp(&(b.creation_timestamp(), service::id(b)))
        });
        let (adopted, reserved) = {
            let mut state = self.state();
            state.allocator.clear();
            state.allocator.set_pools(&set);
            state.pools = set;
            let mut counts = (0, 0);
            for svc in &services {
                match self.observe(&mut state, svc) {
                    Observed::Adopted => counts.0 += 1,
                    Observed::Reserved => counts.1 += 1,
                    Observed::Nothing => {}
                }
            }
            counts
        };
        let state = self.state();
        info!(
            pools = state.pools.accepted.len(),
            rejected = state.pools.rejected.len(),
            adopted,
            reserved,
            "IP allocator loaded: pools, and the addresses in Services' status adopted (ours) or reserved (other controllers')"
        );
    }

    fn pool_objects(&self) -> Vec<IpPool> {
        self.pools.state().iter().map(|p| (**p).clone()).collect()
    }

    fn apply(&self, change: Change) {
        match change {
            Change::Pools => {
                let set = validate(&self.pool_objects());
                let mut state = self.state();
                if state.pools != set {
                    state.allocator.set_pools(&set);
                    state.pools = set;
                    debug!("pools changed");
                }
            }
            Change::Service(reference) => {
                let mut state = self.state();
                match self.services.get(&reference) {
                    Some(svc) => {
                        self.observe(&mut state, &svc);
                    }
                    None => {
                        let id = format!(
                            "{}/{}",
                            reference.namespace.as_deref().unwrap_or_default(),
                            reference.name
                        );
                        state.allocator.set_foreign(&id, Vec::new());
                    }
                }
            }
        }
    }

    /// Bring one Service's status into the allocator.
    fn observe(&self, state: &mut State, svc: &Service) -> Observed {
        let config = &self.provider.shared.config;
        let id = service::id(svc);
        let live = is_live_load_balancer(svc);
        if !config.ownership.claims(svc) {
            let ips = if live {
                service::status_ips(svc)
            } else {
                Vec::new()
            };
            let reserved = !ips.is_empty();
            for ip in &ips {
                if let Some(ours) = state.allocator.owner_of(*ip) {
                    warn!(service = %id, %ip, ours = %ours, "another controller's Service shows an address one of ours holds; ours moves at its next sync");
                }
            }
            state.allocator.set_foreign(&id, ips);
            return if reserved {
                Observed::Reserved
            } else {
                Observed::Nothing
            };
        }
        state.allocator.set_foreign(&id, Vec::new());
        let Some(claim) = live.then(|| service::claim(svc, &config.cluster)).flatten() else {
            return Observed::Nothing;
        };
        let services = &self.services;
        let published = |holder: &portico_provider::LoadBalancerKey, ip| {
            let reference = ObjectRef::<Service>::new(&holder.name).within(&holder.namespace);
            services
                .get(&reference)
                .is_some_and(|s| service::shows(&s, holder, ip))
        };
        match state.allocator.adopt(&claim, published) {
            Adoption::AlreadyHeld => Observed::Nothing,
            Adoption::Adopted { evicted } => {
                for other in evicted {
                    warn!(service = %id, evicted = %other, addresses = ?claim.ips, "a status shows addresses another Service held but never published; the other Service gets new ones");
                }
                debug!(service = %id, addresses = ?claim.ips, "adopted the addresses in status");
                Observed::Adopted
            }
            Adoption::Conflict { ip, holder } => {
                warn!(service = %id, %ip, %holder, "two Services show one address in their status and may not share it; this one gets a new address at its next sync");
                Observed::Nothing
            }
        }
    }

    /// Write every pool's status where it differs, and an Event on each
    /// newly rejected pool; whether every write went through.
    async fn publish(&mut self) -> bool {
        let mut written = true;
        let now = Time(Timestamp::now());
        let pools = self.pools.state();
        let plans: Vec<Plan> = {
            let state = self.state();
            pools
                .iter()
                .map(|pool| {
                    let name = pool.name_any();
                    let (status, rejection) = match state.pools.rejected.get(&name) {
                        Some(rejection) => (
                            desired(pool, Verdict::Rejected(rejection), &now),
                            (!already_reported(pool, rejection)).then(|| {
                                (
                                    rejection.reason().to_string(),
                                    rejection.message().to_string(),
                                )
                            }),
                        ),
                        None => {
                            let usage = state
                                .allocator
                                .pool(&name)
                                .map(|p| state.allocator.usage(p))
                                .unwrap_or_default();
                            (desired(pool, Verdict::Accepted(usage), &now), None)
                        }
                    };
                    Plan {
                        pool: pool.clone(),
                        status,
                        rejection,
                    }
                })
                .collect()
        };
        for Plan {
            pool,
            status,
            rejection,
        } in plans
        {
            let name = pool.name_any();
            if let Some((reason, message)) = rejection {
                if self.announced.get(&name) != Some(&message) {
                    warn!(pool = %name, reason, message, "IPPool rejected");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: reason.clone(),
                        note: Some(message.clone()),
                        action: "Validate".into(),
                        secondary: None,
                    };
                    if let Err(err) = self.recorder.publish(&event, &pool.object_ref(&())).await {
                        warn!(pool = %name, error = %err, "could not post the Event");
                    }
                    self.announced.insert(name.clone(), message);
                }
            } else if !self.provider.state().pools.rejected.contains_key(&name) {
                self.announced.remove(&name);
            }
            if pool.status.as_ref() == Some(&status) {
                continue;
            }
            let patch = serde_json::json!({
                "apiVersion": "portico.io/v1alpha1",
                "kind": "IPPool",
                "status": status,
            });
            match self
                .api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => debug!(pool = %name, in_use = status.in_use, "IPPool status written"),
                Err(err) => {
                    warn!(pool = %name, error = %err, "could not write the IPPool status");
                    written = false;
                }
            }
        }
        written
    }
}

/// What one pool's status and Events should become.
struct Plan {
    pool: Arc<IpPool>,
    status: crate::pool::IpPoolStatus,
    /// A rejection to announce: reason and message.
    rejection: Option<(String, String)>,
}

/// What observing one Service did.
enum Observed {
    Adopted,
    Reserved,
    Nothing,
}
