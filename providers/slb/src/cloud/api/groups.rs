//! Handlers of `/v1/load-balancers/{lb}/backend-server-groups[/{id}]` and
//! of the group's server list (set, add, remove).

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::call::{Call, Op};
use super::request::{ListQuery, TagFilter, client_token, list_params, parse};
use super::response::{created, json, no_content};
use crate::cloud::model::{CreateBackendServerGroupRequest, ServersRequest};
use crate::cloud::state::Effects;

pub(super) async fn create(
    call: Call,
    Path(lb): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("CreateBackendServerGroup"), async move {
        let token = client_token(&headers)?;
        let req: CreateBackendServerGroupRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_group(&s.config.quotas, &lb, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

pub(super) async fn list(call: Call, Path(lb): Path<String>, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeBackendServerGroups"), async move {
        let (page, _) = list_params(query, TagFilter::Refused)?;
        json(StatusCode::OK, &s.read(|st| st.list_groups(&lb, &page))?)
    })
    .await
}

pub(super) async fn describe(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeBackendServerGroup"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_group(&lb, &id))?)
    })
    .await
}

pub(super) async fn delete(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("DeleteBackendServerGroup"), async move {
        s.mutate(|st| st.delete_group(&lb, &id).map(|()| ((), Effects::default())))
            .await?;
        no_content()
    })
    .await
}

#[derive(Debug, Clone, Copy)]
enum ServersChange {
    Set,
    Add,
    Remove,
}

async fn change_servers(
    call: Call,
    lb: String,
    id: String,
    body: Bytes,
    change: ServersChange,
) -> Response {
    let s = call.state.clone();
    let op = match change {
        ServersChange::Set => Op::Write("SetBackendServers"),
        ServersChange::Add => Op::Write("AddBackendServers"),
        ServersChange::Remove => Op::Write("RemoveBackendServers"),
    };
    call.run(op, async move {
        let req: ServersRequest = parse(&body)?;
        let quotas = &s.config.quotas;
        let group = s
            .mutate(|st| match change {
                ServersChange::Set => st.set_servers(quotas, &lb, &id, req.servers),
                ServersChange::Add => st.add_servers(quotas, &lb, &id, req.servers),
                ServersChange::Remove => st.remove_servers(quotas, &lb, &id, req.servers),
            })
            .await?;
        json(StatusCode::OK, &group)
    })
    .await
}

pub(super) async fn set_servers(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    change_servers(call, lb, id, body, ServersChange::Set).await
}

pub(super) async fn add_servers(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    change_servers(call, lb, id, body, ServersChange::Add).await
}

pub(super) async fn remove_servers(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    change_servers(call, lb, id, body, ServersChange::Remove).await
}
