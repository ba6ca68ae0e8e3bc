//! The marketplace install: a redirect to GHL's location chooser, and the callback that
//! exchanges the code and stores the location(s).

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{Html, IntoResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page::{escape, page};
use super::pairing::pairing_link;
use super::{ApiError, AppQuery, ErrorBody};
use crate::ghl::GhlError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(install)).routes(routes!(callback))
}

/// 302 to GHL's location chooser.
#[utoipa::path(get, path = "/oauth/install", tag = "pages", responses(
    (status = 302, description = "To GHL's location chooser"),
    (status = "default", body = ErrorBody, description = "An error")))]
async fn install(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let url = state.ghl.install_url()?;
    Ok((StatusCode::FOUND, [(LOCATION, url)]))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    /// The authorization code GHL's redirect carries.
    code: Option<String>,
    error: Option<String>,
}

/// GHL's redirect after an install: exchanges the code and links to pairing.
#[utoipa::path(get, path = "/oauth/callback", tag = "pages", params(CallbackQuery), responses(
    (status = 200, description = "The install result", content_type = "text/html"),
    (status = "default", body = ErrorBody, description = "An error")))]
async fn callback(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<CallbackQuery>,
) -> Result<Html<String>, ApiError> {
    state.ghl.ensure_configured()?;
    if let Some(error) = query.error {
        return Err(ApiError::bad_request(
            "oauth_denied",
            format!("GHL did not authorise the install: {}", crate::domain::clip(&error)),
        ));
    }
    let code = query
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_code", "expected ?code= from GHL's redirect"))?;
    let installed = state.ghl.install_from_code(&code).await.map_err(|e| match e {
        GhlError::Rejected { message, .. } | GhlError::ReauthRequired(message) => {
            ApiError::bad_request("oauth_code_rejected", format!("GHL refused the code: {message}"))
        }
        other => other.into(),
    })?;
    let mut items = String::new();
    for (id, name) in &installed.locations {
        let label = name
            .as_deref()
            .map_or_else(|| escape(id), |n| format!("{} ({})", escape(n), escape(id)));
        let (link, _) = pairing_link(&state, id, 7 * 24 * 3600);
        items.push_str(&format!(
            "<li><strong>{label}</strong> — <a href=\"{}\">link its WhatsApp</a></li>",
            escape(&link)
        ));
    }
    let body = format!(
        "<h1>WhatsApp bridge installed</h1>\
         <p>waghl is now connected to {count} GoHighLevel location{plural}:</p><ul>{items}</ul>\
         <p>Open a location's link (or send it to whoever holds the phone: it works for 7 days) \
         and scan the QR code with WhatsApp → Settings → Linked devices → Link a device. \
         Administrators can make new links with <code>POST /api/v1/locations/{{id}}/pairing-link</code>.</p>",
        count = installed.locations.len(),
        plural = if installed.locations.len() == 1 { "" } else { "s" },
    );
    Ok(Html(page("waghl — installed", &body)))
}
