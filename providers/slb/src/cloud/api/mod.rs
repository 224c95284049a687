//! The HTTP layer: which handler serves each route and method. Around the
//! handlers: `call` (request ids, stats, faults, metrics), `request` and
//! `response` (parsing and error mapping), `shared` (the state handlers
//! share and the path every change takes), `durable` (the state file).

mod acls;
mod admin;
mod balancers;
mod call;
mod durable;
mod groups;
mod listeners;
mod request;
mod response;
mod shared;

use axum::Router;
use axum::routing::{get, post, put};

pub use call::{ApiMetrics, ApiStats, RequestLabels};
pub(crate) use request::{TAG_FILTER_PATTERN, TagFilter};
#[cfg(test)]
pub(crate) use request::{client_token, list_params};
pub(crate) use shared::Inner;

use shared::AppState;

/// The API's paths, as the router serves them and the OpenAPI document
/// lists them (axum's `{param}` is OpenAPI's too).
pub(crate) mod paths {
    pub const LOAD_BALANCERS: &str = "/v1/load-balancers";
    pub const LOAD_BALANCER: &str = "/v1/load-balancers/{lb}";
    pub const LISTENERS: &str = "/v1/load-balancers/{lb}/listeners";
    pub const LISTENER: &str = "/v1/load-balancers/{lb}/listeners/{id}";
    pub const GROUPS: &str = "/v1/load-balancers/{lb}/backend-server-groups";
    pub const GROUP: &str = "/v1/load-balancers/{lb}/backend-server-groups/{id}";
    pub const SERVERS: &str = "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers";
    pub const SERVERS_ADD: &str = "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers/add";
    pub const SERVERS_REMOVE: &str =
        "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers/remove";
    pub const ACLS: &str = "/v1/acls";
    pub const ACL: &str = "/v1/acls/{id}";
    pub const FAULTS: &str = "/admin/faults";
    pub const STATS: &str = "/admin/stats";
    pub const STATS_RESET: &str = "/admin/stats/reset";
    pub const OPENAPI: &str = "/openapi.json";
}

/// Every route of the API, each call given a request id.
pub(crate) fn router(state: AppState) -> Router {
    use paths::*;
    Router::new()
        .route(LOAD_BALANCERS, get(balancers::list).post(balancers::create))
        .route(
            LOAD_BALANCER,
            get(balancers::describe)
                .patch(balancers::update)
                .delete(balancers::delete),
        )
        .route(LISTENERS, get(listeners::list).post(listeners::create))
        .route(
            LISTENER,
            get(listeners::describe)
                .put(listeners::update)
                .delete(listeners::delete),
        )
        .route(GROUPS, get(groups::list).post(groups::create))
        .route(GROUP, get(groups::describe).delete(groups::delete))
        .route(SERVERS, put(groups::set_servers))
        .route(SERVERS_ADD, post(groups::add_servers))
        .route(SERVERS_REMOVE, post(groups::remove_servers))
        .route(ACLS, get(acls::list).post(acls::create))
        .route(
            ACL,
            get(acls::describe).put(acls::update).delete(acls::delete),
        )
        .route(FAULTS, get(admin::get_faults).put(admin::put_faults))
        .route(STATS, get(admin::get_stats))
        .route(STATS_RESET, post(admin::reset_stats))
        .route(OPENAPI, get(admin::openapi))
        .fallback(admin::not_found)
        .method_not_allowed_fallback(admin::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(call::request_id_layer))
}
