//! Handlers of `/v1/load-balancers/{lb}/listeners[/{id}]`.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::call::{Call, Op};
use super::request::{ListQuery, TagFilter, client_token, list_params, parse};
use super::response::{created, json, no_content};
use crate::cloud::model::{CreateListenerRequest, ListenerSettings};

pub(super) async fn create(
    call: Call,
    Path(lb): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("CreateListener"), async move {
        let token = client_token(&headers)?;
        let req: CreateListenerRequest = parse(&body)?;
        let result = s
            .mutate(|st| st.create_listener(&s.config.quotas, &lb, req, token.as_deref()))
            .await?;
        created(result)
    })
    .await
}

pub(super) async fn list(call: Call, Path(lb): Path<String>, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeListeners"), async move {
        let (page, _) = list_params(query, TagFilter::Refused)?;
        json(StatusCode::OK, &s.read(|st| st.list_listeners(&lb, &page))?)
    })
    .await
}

pub(super) async fn describe(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeListener"), async move {
        json(
            StatusCode::OK,
            &s.read(|st| st.describe_listener(&lb, &id))?,
        )
    })
    .await
}

pub(super) async fn update(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("ModifyListener"), async move {
        let settings: ListenerSettings = parse(&body)?;
        let listener = s
            .mutate(|st| st.update_listener(&lb, &id, settings))
            .await?;
        json(StatusCode::OK, &listener)
    })
    .await
}

pub(super) async fn delete(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("DeleteListener"), async move {
        s.mutate(|st| st.delete_listener(&lb, &id).map(|e| ((), e)))
            .await?;
        no_content()
    })
    .await
}
