//! The HTTP surface: one router per surface, merged here with the layers every request goes
//! through (body limit and deadline, tracing by matched route, request metrics, JSON 404/405),
//! and the server that runs it (`server.rs`: connection limits and timeouts). Every route is
//! registered with its OpenAPI operation (`openapi.rs`).

mod admin;
mod console;
mod error;
mod extract;
mod forward;
mod ghl_page;
mod health;
mod messages;
mod oauth;
mod openapi;
mod page;
mod pairing;
mod server;
mod sessions;
mod sim;
mod webhooks;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ErrorBody};
pub use extract::{AdminAuth, AppJson, AppPath, AppQuery, LocationPath, MaybeJson};
pub use forward::SimReplay;
pub use server::{ServerSettings, serve};

use crate::domain::clip;
use crate::metrics::{HttpLabels, RouteLabels};
use crate::state::AppState;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let (router, document) = routes(&state).split_for_parts();
    router
        .layer(Extension(openapi::Document::new(&document)))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard_body))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // The route template, not the path: ids stay out of span names.
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str);
                    tracing::info_span!("http", http.method = %req.method(), http.route = route)
                })
                .on_failure(()),
        )
        .with_state(state)
}

/// Every route with its OpenAPI operation; [`router`] serves them and their document.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let mut routes = OpenApiRouter::with_openapi(openapi::base())
        .merge(health::router())
        .merge(openapi::router())
        .merge(oauth::router())
        .merge(admin::router())
        .merge(sessions::router())
        .merge(messages::router())
        .merge(pairing::router())
        .merge(webhooks::router())
        .merge(console::router())
        .merge(ghl_page::router());
    if state.sim.is_some() {
        // A simulated session's client runs on one instance; any instance answers for it.
        routes =
            routes.merge(sim::router().route_layer(middleware::from_fn_with_state(state.clone(), forward::to_owner)));
    }
    routes
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", clip(uri.path())))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", clip(uri.path())))
}

/// A body announced larger than the limit is refused before a byte of it is read — so before
/// hyper answers `Expect: 100-continue` —; any other body must arrive within the body timeout.
async fn guard_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.config.body_limit_bytes as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    next.run(server::DeadlineBody::wrap(req, state.config.server.body_timeout))
        .await
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let metrics = &state.metrics;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route: route.clone(),
            status: response.status().as_u16().to_string(),
        })
        .inc();
    metrics
        .http_latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
