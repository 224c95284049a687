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
pub(crate) use request::TagFilter;
pub(crate) use shared::Inner;

use shared::AppState;

/// Every route of the API, each call given a request id.
pub(crate) fn router(state: AppState) -> Router {
    let lb = "/v1/load-balancers/{lb}";
    Router::new()
        .route(
            "/v1/load-balancers",
            get(balancers::list).post(balancers::create),
        )
        .route(
            lb,
            get(balancers::describe)
                .patch(balancers::update)
                .delete(balancers::delete),
        )
        .route(
            &format!("{lb}/listeners"),
            get(listeners::list).post(listeners::create),
        )
        .route(
            &format!("{lb}/listeners/{{id}}"),
            get(listeners::describe)
                .put(listeners::update)
                .delete(listeners::delete),
        )
        .route(
            &format!("{lb}/backend-server-groups"),
            get(groups::list).post(groups::create),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}"),
            get(groups::describe).delete(groups::delete),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers"),
            put(groups::set_servers),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers/add"),
            post(groups::add_servers),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers/remove"),
            post(groups::remove_servers),
        )
        .route("/v1/acls", get(acls::list).post(acls::create))
        .route(
            "/v1/acls/{id}",
            get(acls::describe).put(acls::update).delete(acls::delete),
        )
        .route(
            "/admin/faults",
            get(admin::get_faults).put(admin::put_faults),
        )
        .route("/admin/stats", get(admin::get_stats))
        .route("/admin/stats/reset", post(admin::reset_stats))
        .route("/openapi.json", get(admin::openapi))
        .fallback(admin::not_found)
        .method_not_allowed_fallback(admin::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(call::request_id_layer))
}
