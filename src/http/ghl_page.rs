//! The WhatsApp page inside GHL: a marketplace Custom Page (`/ghl/page`) that GHL frames in a
//! sub-account's menu. The page asks the parent frame for the user context
//! (`REQUEST_USER_DATA`), the server decrypts it with the app's Shared Secret and answers a
//! short-lived token for that one location; the page then shows the location's pairing like
//! the pairing page does (same view, script and restart rule).
//!
//! The location comes only from the decrypted context, then only from the signed token, so a
//! user of one sub-account can never see or act on another. No cookie is used: GHL frames the
//! page from another site, where browsers block third-party cookies; the token travels in an
//! `Authorization` header. Framing is allowed only for `GHL_PAGE_FRAME_ANCESTORS`.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page::page;
use super::pairing::{PairingView, RENDER_SCRIPT, WIDGET, pairing_view, restart_if_allowed};
use super::{ApiError, AppJson, ErrorBody};
use crate::domain::LocationId;
use crate::ghl::user_context::{ContextError, decrypt_user_context};
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

/// A token is good for an hour; the page asks GHL for a fresh context when it runs out.
const TOKEN_SECONDS: i64 = 3600;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(custom_page))
        .routes(routes!(open_session))
        .routes(routes!(page_state))
        .routes(routes!(restart))
}

/// The page GHL frames (Custom Page URL).
#[utoipa::path(get, operation_id = "ghl_page_custom_page", path = "/ghl/page", tag = "pages", responses(
    (status = 200, description = "The page", content_type = "text/html"),
    (status = 503, description = "GHL_APP_SHARED_SECRET is not set", content_type = "text/html")))]
async fn custom_page(State(state): State<AppState>) -> Response {
    let (status, body) = if state.config.ghl.app_shared_secret.is_some() {
        let body = format!("<h1 id=\"title\">WhatsApp</h1>{WIDGET}<script>{RENDER_SCRIPT}{PAGE_SCRIPT}</script>");
        (StatusCode::OK, body)
    } else {
        let body = "<h1>WhatsApp</h1><p>This page is not switched on: the administrator must set \
                    <code>GHL_APP_SHARED_SECRET</code> to the marketplace app's Shared Secret.</p>";
        (StatusCode::SERVICE_UNAVAILABLE, body.to_owned())
    };
    let policy = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; \
         connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors {}",
        state.config.ghl.page_frame_ancestors
    );
    let mut response = (status, Html(page("WhatsApp", &body))).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&policy).expect("origins were validated at start"),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OpenSession {
    /// The `payload` of GHL's `REQUEST_USER_DATA_RESPONSE` message, as GHL sent it.
    encrypted_data: String,
}

#[derive(Serialize, ToSchema)]
struct PageSession {
    /// Bearer token for `/ghl/page/state` and `/ghl/page/restart`, for this location only.
    token: String,
    expires_at: String,
    location_id: String,
    location_name: Option<String>,
    view: PairingView,
}

/// Exchanges GHL's encrypted user context for a token of its location.
#[utoipa::path(post, operation_id = "ghl_page_open_session", path = "/ghl/page/session", tag = "pages", request_body = OpenSession, responses(
    (status = 200, body = PageSession, description = "Done"),
    (status = "default", body = ErrorBody, description = "401 `invalid_user_context`, 403 `location_not_allowed`, \
     503 `ghl_page_disabled`")))]
async fn open_session(
    State(state): State<AppState>,
    AppJson(body): AppJson<OpenSession>,
) -> Result<Json<PageSession>, ApiError> {
    let secret = state
        .config
        .ghl
        .app_shared_secret
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable {
            code: "ghl_page_disabled",
            message: "GHL_APP_SHARED_SECRET is not set".into(),
        })?;
    let context = decrypt_user_context(&body.encrypted_data, secret.expose()).map_err(|e| match e {
        ContextError::NoLocation => ApiError::Forbidden(e.to_string()),
        ContextError::Undecryptable | ContextError::Malformed => ApiError::Unauthorized(e.to_string()),
    })?;
    let location = context.location;
    let record = state.store.location(location.as_str()).await?;
    // A location this daemon does not serve, or one installed for another agency, is refused
    // alike: the page never tells one sub-account anything about another.
    let allowed = record.as_ref().is_some_and(|r| {
        r.status != crate::store::LocationStatus::Uninstalled
            && (r.company_id.is_none() || context.company_id.is_none() || r.company_id == context.company_id)
    });
    if !allowed {
        tracing::warn!(location.id = %location, "GHL page refused: the location is not installed here");
        return Err(ApiError::Forbidden(
            "WhatsApp is not set up for this sub-account; install the app on it first".into(),
        ));
    }
    let expires = now_ms() / 1000 + TOKEN_SECONDS;
    Ok(Json(PageSession {
        token: token(&state, &location, expires),
        expires_at: rfc3339(expires * 1000),
        location_id: location.as_str().to_owned(),
        location_name: record.and_then(|r| r.name),
        view: pairing_view(&state, &location).await?,
    }))
}

fn signed_message(location: &LocationId, expires: i64) -> String {
    format!("ghl:{location}:{expires}")
}

/// `location.expires.signature`.
fn token(state: &AppState, location: &LocationId, expires: i64) -> String {
    let signature = state.store.key().sign_session(&signed_message(location, expires));
    format!("{location}.{expires}.{signature}")
}

/// The location of a valid, unexpired page token (`Authorization: Bearer …`).
struct PageLocation(LocationId);

impl FromRequestParts<AppState> for PageLocation {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = || ApiError::Unauthorized("the page's token is missing, wrong or expired".into());
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(refused)?;
        let mut fields = presented.trim().splitn(3, '.');
        let (Some(location), Some(expires), Some(signature)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(refused());
        };
        let location = LocationId::parse(location).map_err(|_| refused())?;
        let expires: i64 = expires.parse().map_err(|_| refused())?;
        let valid = expires > now_ms() / 1000
            && state
                .store
                .key()
                .verify_session(&signed_message(&location, expires), signature);
        valid.then_some(Self(location)).ok_or_else(refused)
    }
}

/// The live state of the token's location.
#[utoipa::path(get, operation_id = "ghl_page_page_state", path = "/ghl/page/state", tag = "pages", responses(
    (status = 200, body = PairingView, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn page_state(
    State(state): State<AppState>,
    PageLocation(location): PageLocation,
) -> Result<Json<PairingView>, ApiError> {
    Ok(Json(pairing_view(&state, &location).await?))
}

/// Shows a new code for the token's location, when it is not linked or linking.
#[utoipa::path(post, operation_id = "ghl_page_restart", path = "/ghl/page/restart", tag = "pages", responses(
    (status = 202, body = PairingView, description = "Accepted: under way"), (status = "default", body = ErrorBody, description = "An error")))]
async fn restart(
    State(state): State<AppState>,
    PageLocation(location): PageLocation,
) -> Result<(StatusCode, Json<PairingView>), ApiError> {
    restart_if_allowed(&state, &location).await?;
    Ok((StatusCode::ACCEPTED, Json(pairing_view(&state, &location).await?)))
}

/// The Custom Page handshake (GHL's documented `REQUEST_USER_DATA` message), then the same
/// polling as the pairing page with the token in a header.
const PAGE_SCRIPT: &str = r#"
const base = window.location.pathname.replace(/\/$/, "");
let token = null;
function say(text) { $("status").textContent = text; $("qr").innerHTML = ""; $("steps").hidden = true; $("restart").hidden = true; }
function askGhl() {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { window.removeEventListener("message", onMessage); reject(new Error("timeout")); }, 10000);
    function onMessage(event) {
      if (event.source !== window.parent || !event.data || event.data.message !== "REQUEST_USER_DATA_RESPONSE") return;
      clearTimeout(timer);
      window.removeEventListener("message", onMessage);
      resolve(event.data.payload);
    }
    window.addEventListener("message", onMessage);
    window.parent.postMessage({ message: "REQUEST_USER_DATA" }, "*");
  });
}
async function signIn() {
  if (window.parent === window) { say("Open this page from a GoHighLevel sub-account: it is the app's WhatsApp page there."); return; }
  let payload;
  try { payload = await askGhl(); } catch (e) { say("GoHighLevel did not say who you are. Reload the page."); return; }
  const response = await fetch(base + "/session", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ encryptedData: payload }) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { say("WhatsApp cannot be shown here: " + ((body.error && body.error.message) || "the server refused.")); return; }
  token = body.token;
  $("title").textContent = "WhatsApp — " + (body.location_name || body.location_id);
  render(body.view);
}
async function call(path, method) {
  if (!token) return;
  try {
    const response = await fetch(base + path, { method, cache: "no-store", headers: { authorization: "Bearer " + token } });
    if (response.status === 401) { token = null; await signIn(); }
    else if (response.ok) render(await response.json());
  } catch (e) { /* offline for a moment: try again on the next tick */ }
}
$("restart").addEventListener("click", async () => {
  $("restart").disabled = true;
  await call("/restart", "POST");
  $("restart").disabled = false;
});
signIn();
setInterval(() => call("/state", "GET"), 1500);
"#;
