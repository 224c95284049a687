//! Watch streams: one JSON event per line, filtered by namespace and
//! selectors, rendered as objects or Table rows, with `sendInitialEvents`,
//! periodic BOOKMARKs, `timeoutSeconds`, and a 410 for an expired
//! resourceVersion sent as an `ERROR` event (as the real server does).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, present};
use crate::StandinError;
use crate::resources::ResourceType;
use crate::store::{self, StoredEvent, WatchFrom};
use crate::table;

fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Ok(Bytes::from(b))
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}})
}

fn streaming(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Answer a `watch=true` list: the initial events, then live ones, until
/// the client goes, the timeout passes or the store disconnects the watch.
pub(super) fn start(
    ctx: &Ctx<'_>,
    rt: &ResourceType,
    namespace: Option<String>,
) -> Result<Response, StandinError> {
    let selectors = ctx.selectors(rt)?;
    let send_initial = ctx.flag("sendInitialEvents");
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let from = match ctx.q("resourceVersion") {
        _ if send_initial => WatchFrom::Current,
        None | Some("0") => WatchFrom::Current,
        Some(rv) => WatchFrom::Rv(store::parse_rv(rv)?),
    };
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let as_table = ctx.wants_table();
    let include = ctx.include();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let start = match ctx.st.store.watch(rt, from) {
        Ok(s) => s,
        Err(e @ StandinError::Expired(_)) => {
            // the real server answers 200 and sends one ERROR event
            let ev = json!({"type": "ERROR", "object": e.to_status()});
            let _ = tx.try_send(line(&ev));
            return Ok(streaming(rx));
        }
        Err(e) => return Err(e),
    };
    let rt = rt.clone();
    let interval = ctx.st.bookmark_interval;
    tokio::spawn(async move {
        let ns = namespace.as_deref();
        let render = |kind: &str, obj: &Value| -> Value {
            let obj = present(&rt, obj.clone());
            let obj = if as_table {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                table::table(&rt, &[obj], meta, include)
            } else {
                obj
            };
            json!({"type": kind, "object": obj})
        };
        let send = |ev: &StoredEvent| {
            ev.project(ns, &selectors)
                .map(|(k, o)| line(&render(k.as_str(), o)))
        };
        for ev in &start.initial {
            if let Some(l) = send(ev)
                && tx.send(l).await.is_err()
            {
                return;
            }
        }
        let mut last_rv = start.rv;
        if send_initial && tx.send(line(&bookmark(&rt, last_rv, true))).await.is_err() {
            return;
        }
        let mut live = start.live;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                ev = live.recv() => match ev {
                    Some(ev) => {
                        last_rv = last_rv.max(ev.rv);
                        if let Some(l) = send(&ev)
                            && tx.send(l).await.is_err()
                        {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(line(&bookmark(&rt, last_rv, false))).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(resource = %rt.qualified_name(), "watch stream closed");
    });
    Ok(streaming(rx))
}
