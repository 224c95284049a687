//! The node watcher: keeps the eligible-node index, publishes target
//! snapshots to the reconcilers, and re-enqueues exactly the Services a node
//! change affects, debounced so a rolling node update is one wave of
//! reconciles, not one per node.
//!
//! [`NodeWatch::step`] is the whole behaviour as a pure transition; the
//! async [`run`] only feeds it watch events and timer expiries and carries
//! out the [`Effects`] it returns.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use portico_provider::DynProvider;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ControllerConfig;
use crate::k8s::{Api, Node, ObjectRef, ResourceExt, Service, Store, WatchStreamExt};
use crate::metrics::Metrics;
use crate::nodes::{Change, NodeIndex, TargetSnapshot};
use crate::plan;

/// What the watcher hears.
#[derive(Debug)]
pub enum Input<'a> {
    /// A relist starts (the watch restarted).
    RelistStarted,
    RelistItem(Box<Node>),
    RelistDone,
    Applied(&'a Node),
    Deleted(&'a str),
    /// The debounce period of the first pending change is over.
    DebounceElapsed,
}

/// What to do after one [`Input`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Hand the reconcilers a new target snapshot.
    pub publish: bool,
    /// Re-enqueue the Services this change affects.
    pub enqueue: Option<Change>,
    /// Start the debounce timer (none is running).
    pub arm_timer: bool,
    /// A change joined the pending batch.
    pub batched: bool,
}

/// The watcher's state.
#[derive(Debug, Default)]
pub struct NodeWatch {
    index: NodeIndex,
    relist: Vec<Node>,
    pending: Change,
    timer_armed: bool,
    /// Whether the first full list has been published; nothing reconciles
    /// before it (an empty target list would empty every balancer).
    published: bool,
}

impl NodeWatch {
    pub fn index(&self) -> &NodeIndex {
        &self.index
    }

    /// One transition.
    pub fn step(&mut self, input: Input<'_>) -> Effects {
        let change = match input {
            Input::RelistStarted => {
                self.relist.clear();
                return Effects::default();
            }
            Input::RelistItem(node) => {
                self.relist.push(*node);
                return Effects::default();
            }
            Input::RelistDone => {
                let change = self.index.replace_all(self.relist.iter());
                self.relist = Vec::new();
                if !self.published {
                    // The first list gates every reconcile: publish at once.
                    self.published = true;
                    return Effects {
                        publish: true,
                        ..Effects::default()
                    };
                }
                change
            }
            Input::Applied(node) => self.index.apply(node),
            Input::Deleted(name) => self.index.remove(name),
            Input::DebounceElapsed => {
                self.timer_armed = false;
                let pending = std::mem::take(&mut self.pending);
                return Effects {
                    publish: true,
                    enqueue: pending.any().then_some(pending),
                    ..Effects::default()
                };
            }
        };
        if !change.any() || !self.published {
            return Effects::default();
        }
        self.pending = self.pending.merge(change);
        let arm_timer = !self.timer_armed;
        self.timer_armed = true;
        Effects {
            arm_timer,
            batched: true,
            ..Effects::default()
        }
    }
}

/// The Services of `services` that `change` affects: portico's, when the
/// target set changed, or only those selecting targets by node label when
/// only labels changed.
pub fn affected<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    config: &ControllerConfig,
    provider: &dyn DynProvider,
    change: Change,
) -> Vec<ObjectRef<Service>> {
    services
        .into_iter()
        .filter(|svc| {
            plan::is_ours(svc, config, provider)
                && (change.targets
                    || (change.labels_only
                        && provider.selects_targets_by_node_labels(svc.annotations())))
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// What the watcher reads and where it reports.
pub struct NodeWatcher {
    pub nodes: Api<Node>,
    pub services: Store<Service>,
    pub config: ControllerConfig,
    pub provider: Arc<dyn DynProvider>,
    pub targets_tx: watch::Sender<Option<TargetSnapshot>>,
    pub trigger_tx: mpsc::UnboundedSender<ObjectRef<Service>>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for NodeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeWatcher").finish_non_exhaustive()
    }
}

/// Watch nodes until `shutdown` (or the watch stream ends).
pub async fn run(parts: NodeWatcher, shutdown: CancellationToken) {
    let mut state = NodeWatch::default();
    let mut deadline: Option<tokio::time::Instant> = None;
    let debounce = parts.config.node_debounce;
    let mut stream =
        std::pin::pin!(watcher(parts.nodes.clone(), watcher::Config::default()).default_backoff());
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let effects = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                deadline = None;
                state.step(Input::DebounceElapsed)
            }
            event = stream.next() => match event {
                None => return,
                Some(Err(err)) => {
                    warn!(error = %err, "node watch error");
                    continue;
                }
                Some(Ok(WatchEvent::Apply(node))) => state.step(Input::Applied(&node)),
                Some(Ok(WatchEvent::Delete(node))) => state.step(Input::Deleted(&node.name_any())),
                Some(Ok(WatchEvent::Init)) => state.step(Input::RelistStarted),
                Some(Ok(WatchEvent::InitApply(node))) => state.step(Input::RelistItem(Box::new(node))),
                Some(Ok(WatchEvent::InitDone)) => state.step(Input::RelistDone),
            },
        };
        if effects.arm_timer {
            deadline = Some(tokio::time::Instant::now() + debounce);
        }
        carry_out(&parts, &state, effects);
    }
}

fn carry_out(parts: &NodeWatcher, state: &NodeWatch, effects: Effects) {
    if effects.batched {
        parts.metrics.pending_node_changes.inc();
    }
    if effects.publish {
        parts.metrics.pending_node_changes.set(0);
        let index = state.index();
        parts.metrics.eligible_nodes.set(index.len() as i64);
        parts.targets_tx.send_replace(Some(index.snapshot()));
        info!(eligible = index.len(), "eligible nodes updated");
    }
    if let Some(change) = effects.enqueue {
        let services = parts.services.state();
        let targets = affected(
            services.iter().map(AsRef::as_ref),
            &parts.config,
            parts.provider.as_ref(),
            change,
        );
        let count = targets.len();
        for svc in targets {
            // A closed channel means the controller is stopping.
            let _ = parts.trigger_tx.unbounded_send(svc);
        }
        info!(
            services = count,
            targets = change.targets,
            "node change: re-enqueued affected Services"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::{node, svc};
    use crate::config::DEFAULT_CLASS;
    use portico_provider::testing::{NODE_LABELS_ANNOTATION, RecordingProvider};

    fn ready(name: &str) -> Node {
        let last = name.bytes().next().unwrap_or(b'a');
        node(name).ip(&format!("10.0.0.{last}")).build()
    }

    /// Steps of one scenario: each input with the effects it must have.
    fn run_steps(steps: Vec<(&str, Input<'_>, Effects)>) {
        let mut state = NodeWatch::default();
        for (desc, input, want) in steps {
            assert_eq!(state.step(input), want, "{desc}");
        }
    }

    fn batched(arm_timer: bool) -> Effects {
        Effects {
            arm_timer,
            batched: true,
            ..Effects::default()
        }
    }

    #[test]
    fn the_first_list_publishes_at_once_and_later_changes_are_debounced() {
        let a = ready("a");
        let b = ready("b");
        let c = ready("c");
        run_steps(vec![
            (
                "a change before the first list is not acted on",
                Input::Applied(&c),
                Effects::default(),
            ),
            ("relist begins", Input::RelistStarted, Effects::default()),
            (
                "a listed",
                Input::RelistItem(Box::new(a.clone())),
                Effects::default(),
            ),
            (
                "first list done: publish now, enqueue nothing",
                Input::RelistDone,
                Effects {
                    publish: true,
                    ..Effects::default()
                },
            ),
            ("b joins: arm the timer", Input::Applied(&b), batched(true)),
            (
                "a leaves within the period: same batch, timer already running",
                Input::Deleted("a"),
                batched(false),
            ),
            (
                "an unchanged node re-applied is no change",
                Input::Applied(&b),
                Effects::default(),
            ),
            (
                "period over: one publish and one enqueue for the batch",
                Input::DebounceElapsed,
                Effects {
                    publish: true,
                    enqueue: Some(Change {
                        targets: true,
                        labels_only: false,
                    }),
                    ..Effects::default()
                },
            ),
            (
                "the next change arms a new timer",
                Input::Applied(&a),
                batched(true),
            ),
        ]);
    }

    #[test]
    fn a_relist_after_the_first_is_one_change() {
        let a = ready("a");
        let b = ready("b");
        run_steps(vec![
            ("relist", Input::RelistStarted, Effects::default()),
            (
                "a listed",
                Input::RelistItem(Box::new(a.clone())),
                Effects::default(),
            ),
            (
                "first list",
                Input::RelistDone,
                Effects {
                    publish: true,
                    ..Effects::default()
                },
            ),
            ("watch restarts", Input::RelistStarted, Effects::default()),
            (
                "only b listed",
                Input::RelistItem(Box::new(b)),
                Effects::default(),
            ),
            (
                "a gone, b new: one batched change",
                Input::RelistDone,
                batched(true),
            ),
            ("relist again", Input::RelistStarted, Effects::default()),
            (
                "same set again",
                Input::RelistItem(Box::new(ready("b"))),
                Effects::default(),
            ),
            (
                "nothing changed: timer stays as it is",
                Input::RelistDone,
                Effects::default(),
            ),
        ]);
    }

    #[test]
    fn fan_out_reaches_exactly_the_affected_services() {
        let config = ControllerConfig {
            cluster: portico_provider::ClusterName::new("test"),
            ..Default::default()
        };
        let provider = RecordingProvider::new();
        let plain = svc("default", "plain").lb().port(80, 30080).build();
        let by_label = svc("default", "by-label")
            .lb()
            .port(80, 30081)
            .annotation(NODE_LABELS_ANNOTATION, "pool=edge")
            .build();
        let other_class = svc("default", "other")
            .lb()
            .class("example.com/lb")
            .port(80, 30082)
            .build();
        let not_lb = svc("default", "cluster-ip").port(80, 30083).build();
        let ours_by_class = svc("default", "classed")
            .lb()
            .class(DEFAULT_CLASS)
            .port(80, 30084)
            .build();
        let all = [&plain, &by_label, &other_class, &not_lb, &ours_by_class];
        let names = |change| -> Vec<String> {
            affected(all, &config, &provider, change)
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(
            names(Change {
                targets: true,
                labels_only: false
            }),
            vec!["plain", "by-label", "classed"],
            "a target change reaches every Service of ours"
        );
        assert_eq!(
            names(Change {
                targets: false,
                labels_only: true
            }),
            vec!["by-label"],
            "a label-only change reaches only label-selecting Services"
        );
    }
}
