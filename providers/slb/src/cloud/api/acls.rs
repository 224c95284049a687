//! Handlers of `/v1/acls` and `/v1/acls/{id}`.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::call::{Call, Op};
use super::request::{ListQuery, TagFilter, client_token, list_params, parse};
use super::response::{created, json, no_content};
use crate::cloud::model::{CreateAclRequest, UpdateAclRequest};
use crate::cloud::state::Effects;

pub(super) async fn create(call: Call, headers: HeaderMap, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("CreateAcl"), async move {
        let token = client_token(&headers)?;
        let req: CreateAclRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_acl(&s.config.quotas, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

pub(super) async fn list(call: Call, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeAcls"), async move {
        let (page, tags) = list_params(query, TagFilter::Accepted)?;
        json(StatusCode::OK, &s.read(|st| st.list_acls(&tags, &page)))
    })
    .await
}

pub(super) async fn describe(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeAcl"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_acl(&id))?)
    })
    .await
}

pub(super) async fn update(call: Call, Path(id): Path<String>, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("ModifyAcl"), async move {
        let req: UpdateAclRequest = parse(&body)?;
        let acl = s
            .mutate(|st| st.update_acl(&s.config.quotas, &id, req))
            .await?;
        json(StatusCode::OK, &acl)
    })
    .await
}

pub(super) async fn delete(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("DeleteAcl"), async move {
        s.mutate(|st| st.delete_acl(&id).map(|()| ((), Effects::default())))
            .await?;
        no_content()
    })
    .await
}
