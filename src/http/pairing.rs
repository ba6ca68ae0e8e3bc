//! The pairing page: a signed, expiring link an agency hands to its client, who opens it and
//! scans the QR code with the phone. The page is self-contained (no external script, font or
//! style), renders the QR code on the server as SVG, and follows the session live by polling
//! its state. It may restart pairing only for a session that is unpaired, logged out or out of
//! codes; a connected session can only be reset through the admin API. The GHL Custom Page
//! shows the same view ([`PairingView`]) with the same script ([`RENDER_SCRIPT`]) and the
//! same restart rule ([`restart_if_allowed`]).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::response::{Html, IntoResponse, Response};
use qrcode::QrCode;
use qrcode::render::svg;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{IdPath, one_of};
use super::page::page;
use super::{AdminAuth, ApiError, ErrorBody, LocationPath, MaybeJson};
use crate::domain::LocationId;
use crate::sessions::SessionState;
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};
use crate::wa::Pairing;

const DEFAULT_TTL_SECONDS: i64 = 7 * 24 * 3600;
const MAX_TTL_SECONDS: i64 = 90 * 24 * 3600;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_link))
        .routes(routes!(pairing_page))
        .routes(routes!(pairing_state))
        .routes(routes!(restart_pairing))
}

fn signed_message(location: &str, expires: i64) -> String {
    format!("pair:{location}:{expires}")
}

/// A signed link to the location's pairing page, valid for `ttl_seconds`; and its expiry.
pub fn pairing_link(state: &AppState, location: &str, ttl_seconds: i64) -> (String, i64) {
    let expires = now_ms() / 1000 + ttl_seconds;
    let signature = state.store.key().sign_link(&signed_message(location, expires));
    let url = format!(
        "{}/pair/{location}?exp={expires}&sig={signature}",
        state.config.public_url
    );
    (url, expires)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    /// 60 to 7776000 (90 days); default 7 days.
    ttl_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct PairingLink {
    pub url: String,
    pub expires_at: String,
}

/// A new signed pairing link for a location, valid `ttl_seconds` (default 7 days).
pub async fn create_pairing_link(
    state: &AppState,
    id: &LocationId,
    ttl_seconds: Option<i64>,
) -> Result<PairingLink, ApiError> {
    if state.store.location(id.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {id}")));
    }
    let ttl = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(60..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            "ttl_seconds must be 60 to 7776000 (90 days)",
        ));
    }
    let (url, expires) = pairing_link(state, id.as_str(), ttl);
    Ok(PairingLink {
        url,
        expires_at: rfc3339(expires * 1000),
    })
}

/// Make a signed pairing link to hand to whoever holds the phone.
#[utoipa::path(post, path = "/api/v1/locations/{id}/pairing-link", tag = "sessions", params(IdPath),
    security(("admin" = [])), request_body(content = Option<LinkRequest>),
    responses((status = 200, body = PairingLink, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn create_link(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    MaybeJson(body): MaybeJson<LinkRequest>,
) -> Result<Json<PairingLink>, ApiError> {
    let ttl = body.and_then(|b| b.ttl_seconds);
    Ok(Json(create_pairing_link(&state, &id, ttl).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Signed {
    /// Expiry, unix seconds.
    exp: Option<i64>,
    /// The link's signature.
    sig: Option<String>,
}

/// A link's path and query as they arrived: a path or query that does not even parse is a
/// wrong link like any other.
type RawId = Result<Path<String>, PathRejection>;
type RawSigned = Result<Query<Signed>, QueryRejection>;

/// The location of a valid link; anything else is refused with 403 (a page for people, JSON
/// for the page's own calls).
fn verify(state: &AppState, raw_id: RawId, signed: RawSigned) -> Option<LocationId> {
    let (Path(raw_id), Query(signed)) = (raw_id.ok()?, signed.ok()?);
    let location = LocationId::parse(&raw_id).ok()?;
    let (expires, signature) = (signed.exp?, signed.sig.as_deref()?);
    let valid = expires > now_ms() / 1000
        && state
            .store
            .key()
            .verify_link(&signed_message(location.as_str(), expires), signature);
    valid.then_some(location)
}

fn forbidden_page() -> Response {
    let body = "<h1>This link does not work</h1><p>The pairing link is wrong or has expired. \
                Ask whoever sent it for a new one.</p>";
    (
        StatusCode::FORBIDDEN,
        protected(Html(page("waghl — link expired", body))),
    )
        .into_response()
}

/// Headers for pages that carry a signed link: nothing external may load, the link must not
/// leak through the Referer header, and nothing is cached.
fn protected(html: Html<String>) -> impl IntoResponse {
    (
        [
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
            ),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-store"),
        ],
        html,
    )
}

fn state_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&SessionState::ALL.map(SessionState::as_str))
}

/// What a pairing page shows, as JSON (the page polls it) and as the initial render.
#[derive(Serialize, ToSchema)]
pub struct PairingView {
    #[schema(schema_with = state_schema)]
    state: SessionState,
    reason: Option<String>,
    phone: Option<String>,
    /// The current QR code as an SVG image, while pairing by QR.
    qr_svg: Option<String>,
    pairing_code: Option<String>,
    /// Whether this page may start pairing again (the session is not linked or linking).
    can_restart: bool,
}

/// The session as it stands, wherever it runs: the code comes from its owner.
pub async fn pairing_view(state: &AppState, location: &LocationId) -> Result<PairingView, ApiError> {
    let view = state.sessions.view_or_unpaired(location, now_ms()).await?;
    let showing = view.state == SessionState::Pairing;
    let code = if showing {
        state.sessions.pairing_code(location).await
    } else {
        Default::default()
    };
    Ok(PairingView {
        can_restart: view.state.may_restart_pairing(view.reason.as_deref()),
        state: view.state,
        reason: view.reason,
        phone: view.phone,
        qr_svg: code.qr.as_deref().filter(|_| showing).map(qr_svg),
        pairing_code: code.code.filter(|_| showing),
    })
}

/// The view as a script literal: it cannot close the script element it sits in.
pub fn script_literal(view: &PairingView) -> String {
    serde_json::to_string(view)
        .expect("a view serializes")
        .replace("</", "<\\/")
}

pub fn qr_svg(code: &str) -> String {
    match QrCode::new(code.as_bytes()) {
        Ok(qr) => qr
            .render::<svg::Color>()
            .min_dimensions(300, 300)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

/// The pairing page a signed link opens.
#[utoipa::path(get, path = "/pair/{id}", tag = "pages", params(IdPath, Signed), responses(
    (status = 200, description = "The page", content_type = "text/html"),
    (status = 403, description = "A wrong or expired link", content_type = "text/html")))]
async fn pairing_page(State(state): State<AppState>, id: RawId, signed: RawSigned) -> Response {
    let Some(location) = verify(&state, id, signed) else {
        return forbidden_page();
    };
    if state.store.location(location.as_str()).await.ok().flatten().is_none() {
        return forbidden_page();
    }
    let Ok(initial) = pairing_view(&state, &location).await else {
        return ApiError::Unavailable {
            code: "database_unavailable",
            message: "the session cannot be read right now; try again".into(),
        }
        .into_response();
    };
    let body = format!(
        "<h1>Link WhatsApp</h1>{WIDGET}<script>{script}</script>",
        script = format!("{RENDER_SCRIPT}{LINK_SCRIPT}").replace("__INITIAL__", &script_literal(&initial)),
    );
    protected(Html(page("waghl — link WhatsApp", &body))).into_response()
}

/// The page's live state.
#[utoipa::path(get, path = "/pair/{id}/state", tag = "pages", params(IdPath, Signed), responses(
    (status = 200, body = PairingView, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn pairing_state(
    State(state): State<AppState>,
    id: RawId,
    signed: RawSigned,
) -> Result<Json<PairingView>, ApiError> {
    let location =
        verify(&state, id, signed).ok_or_else(|| ApiError::Forbidden("the pairing link is wrong or expired".into()))?;
    Ok(Json(pairing_view(&state, &location).await?))
}

/// Show a new code, when the session is not linked or linking.
#[utoipa::path(post, path = "/pair/{id}/restart", tag = "pages", params(IdPath, Signed), responses(
    (status = 202, body = PairingView, description = "Accepted: under way"), (status = "default", body = ErrorBody, description = "An error")))]
async fn restart_pairing(
    State(state): State<AppState>,
    id: RawId,
    signed: RawSigned,
) -> Result<(StatusCode, Json<PairingView>), ApiError> {
    let location =
        verify(&state, id, signed).ok_or_else(|| ApiError::Forbidden("the pairing link is wrong or expired".into()))?;
    restart_if_allowed(&state, &location).await?;
    Ok((StatusCode::ACCEPTED, Json(pairing_view(&state, &location).await?)))
}

/// Starts QR pairing again for a session that is not linked or linking; a connected session
/// is left alone (only an administrator can reset it).
pub async fn restart_if_allowed(state: &AppState, location: &LocationId) -> Result<(), ApiError> {
    if state.store.location(location.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {location}")));
    }
    let view = state.sessions.view(location).await?;
    let allowed = view
        .as_ref()
        .is_none_or(|v| v.state.may_restart_pairing(v.reason.as_deref()));
    if !allowed {
        return Err(ApiError::Conflict {
            code: "pairing_not_allowed",
            message: "this WhatsApp is linked or linking; only an administrator can reset it".into(),
        });
    }
    state
        .sessions
        .start_pairing(location, Pairing::Qr)
        .await
        .map_err(|e| ApiError::Conflict {
            code: "pairing_not_allowed",
            message: e.to_string(),
        })?;
    Ok(())
}

/// The elements [`RENDER_SCRIPT`] fills in.
pub const WIDGET: &str = "<p id=\"status\" role=\"status\">Loading…</p>\
     <div id=\"qr\" aria-label=\"QR code\"></div>\
     <p id=\"code\" class=\"code\"></p>\
     <button id=\"restart\" hidden>Show a new code</button>\
     <ol id=\"steps\"><li>Open <strong>WhatsApp</strong> on the phone.</li>\
     <li>Tap <strong>Settings</strong> (or ⋮) → <strong>Linked devices</strong> → <strong>Link a device</strong>.</li>\
     <li>Point the phone at this code.</li></ol>";

/// Renders a [`PairingView`] into the page's `status`, `qr`, `code`, `steps` and `restart`
/// elements; no dependency, works on old phones.
pub const RENDER_SCRIPT: &str = r#"
const $ = (id) => document.getElementById(id);
const messages = {
  connected: (s) => "✅ Connected as " + (s.phone || "your phone") + ". You can close this page.",
  reconnecting: () => "Reconnecting to WhatsApp…",
  logged_out: () => "Logged out — the phone removed this device. Scan again to link it.",
  parked: (s) => "Stopped (" + (s.reason || "unknown") + "). Please contact your administrator.",
  unpaired: () => "Not linked yet.",
};
function render(s) {
  let text;
  if (s.state === "pairing" && s.reason === "qr_exhausted") text = "Codes expired. Ask for a new code below.";
  else if (s.state === "pairing" && s.pairing_code) text = "Enter this code on the phone: WhatsApp → Linked devices → Link with phone number.";
  else if (s.state === "pairing" && s.qr_svg) text = "Scan this code with WhatsApp on your phone.";
  else if (s.state === "pairing") text = "Preparing a code…";
  else text = (messages[s.state] || (() => s.state))(s);
  $("status").textContent = text;
  $("qr").innerHTML = s.qr_svg || "";
  $("code").textContent = s.pairing_code || "";
  $("steps").hidden = !s.qr_svg;
  const restart = $("restart");
  restart.hidden = !s.can_restart;
  restart.textContent = s.state === "unpaired" ? "Show a code" : "Show a new code";
}
"#;

/// The signed link's transport: the state and restart calls carry the link's query.
const LINK_SCRIPT: &str = r#"
const initial = __INITIAL__;
const query = window.location.search;
async function refresh() {
  try {
    const response = await fetch(window.location.pathname + "/state" + query, { cache: "no-store" });
    if (response.ok) render(await response.json());
    else if (response.status === 403) $("status").textContent = "This link has expired. Ask for a new one.";
  } catch (e) { /* offline for a moment: try again on the next tick */ }
}
$("restart").addEventListener("click", async () => {
  $("restart").disabled = true;
  await fetch(window.location.pathname + "/restart" + query, { method: "POST" });
  $("restart").disabled = false;
  refresh();
});
render(initial);
setInterval(refresh, 1500);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_codes_render_as_svg() {
        let svg = qr_svg("2@abc,def,ghi");
        assert!(svg.starts_with("<?xml") || svg.contains("<svg"), "{svg}");
        assert!(svg.contains("width=\""));
    }

    #[test]
    fn the_initial_state_cannot_close_the_script_element() {
        let view = PairingView {
            state: SessionState::Parked,
            reason: Some("</script><script>alert(1)".into()),
            phone: None,
            qr_svg: None,
            pairing_code: None,
            can_restart: false,
        };
        assert!(!script_literal(&view).contains("</script>"));
    }
}
