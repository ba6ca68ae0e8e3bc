//! Several instances on one database: a control request of the simulated WhatsApp
//! (`/sim/{id}/…`) acts on the location's live client, which runs on one instance only. Any
//! instance answers it: one that does not run the session but sees another instance hold its
//! lease replays the request there through the command channel and returns that answer as it
//! came. (The other routes need no such thing: reads come from the database, and session
//! operations are forwarded by the supervisor itself.)

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{RawPathParams, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use super::{AdminAuth, ApiError};
use crate::domain::LocationId;
use crate::sessions::Replay;
use crate::state::AppState;
use crate::wa::BoxFuture;

/// Marks a request replayed for another instance: it is answered here, never passed on again.
#[derive(Clone, Copy)]
struct Replayed;

/// Passes a request for a session another instance runs to that instance (admin requests only:
/// the token is checked here, before anything is passed on).
pub async fn to_owner(
    _: AdminAuth,
    State(state): State<AppState>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let location = params
        .iter()
        .find(|(name, _)| *name == "id")
        .and_then(|(_, id)| LocationId::parse(id).ok());
    let Some(location) = location.filter(|_| request.extensions().get::<Replayed>().is_none()) else {
        return next.run(request).await;
    };
    let owner = match state.sessions.owner_elsewhere(&location).await {
        Ok(Some(owner)) if !state.sessions.runs_here(&location) => owner,
        Ok(_) => return next.run(request).await,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
    let body = match to_bytes(request.into_body(), state.config.body_limit_bytes).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    match state.sessions.replay_on(&location, &owner, method, path, body).await {
        Ok((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(e) => super::sessions::session_error(e).into_response(),
    }
}

/// Replays forwarded control requests through this instance's own router, as if they had
/// arrived here.
pub struct SimReplay {
    router: Router,
    /// This instance's admin token: the asker checked the caller's.
    authorization: HeaderValue,
}

impl SimReplay {
    pub fn new(state: AppState) -> Self {
        let authorization = HeaderValue::from_str(&format!("Bearer {}", state.admin_token.expose()))
            .expect("the admin token is a header value");
        Self {
            router: super::router(state),
            authorization,
        }
    }
}

impl Replay for SimReplay {
    fn replay(&self, method: String, path: String, body: String) -> BoxFuture<'static, (u16, String)> {
        let router = self.router.clone();
        let authorization = self.authorization.clone();
        Box::pin(async move {
            let mut request = Request::builder()
                .method(method.as_str())
                .uri(path)
                .header(AUTHORIZATION, authorization);
            if !body.is_empty() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            let request = match request.extension(Replayed).body(Body::from(body)) {
                Ok(request) => request,
                Err(e) => return (400, error_json("invalid_request", &e.to_string())),
            };
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let status = response.status().as_u16();
            match to_bytes(response.into_body(), usize::MAX).await {
                Ok(bytes) => (status, String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => (502, error_json("replay_failed", &e.to_string())),
            }
        })
    }
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::to_string(&super::ErrorBody::new(code, message.to_owned())).expect("an error serializes")
}
