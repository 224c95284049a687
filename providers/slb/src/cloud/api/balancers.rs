//! Handlers of `/v1/load-balancers` and `/v1/load-balancers/{lb}`.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::call::{Call, Op};
use super::request::{ListQuery, TagFilter, client_token, list_params, parse};
use super::response::{created, json, no_content};
use crate::cloud::model::{CreateLoadBalancerRequest, UpdateLoadBalancerRequest};
use crate::cloud::state::Effects;

pub(super) async fn create(call: Call, headers: HeaderMap, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("CreateLoadBalancer"), async move {
        let token = client_token(&headers)?;
        let req: CreateLoadBalancerRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_balancer(&s.config, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

pub(super) async fn list(call: Call, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeLoadBalancers"), async move {
        let (page, tags) = list_params(query, TagFilter::Accepted)?;
        json(
            StatusCode::OK,
            &s.read(|st| st.list_balancers(&tags, &page)),
        )
    })
    .await
}

pub(super) async fn describe(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(Op::Read("DescribeLoadBalancer"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_balancer(&id))?)
    })
    .await
}

pub(super) async fn update(call: Call, Path(id): Path<String>, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("ModifyLoadBalancer"), async move {
        let req: UpdateLoadBalancerRequest = parse(&body)?;
        let lb = s
            .mutate(|st| {
                st.update_balancer(&id, req)
                    .map(|lb| (lb, Effects::default()))
            })
            .await?;
        json(StatusCode::OK, &lb)
    })
    .await
}

pub(super) async fn delete(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(Op::Write("DeleteLoadBalancer"), async move {
        s.mutate(|st| st.delete_balancer(&id).map(|e| ((), e)))
            .await?;
        no_content()
    })
    .await
}
