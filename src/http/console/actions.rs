//! The console's forms: signing in and out, and every action on a location. Each action calls
//! the function the admin API's handler calls, then shows the location page with the outcome.
//! Every form must carry the browser's CSRF token; a signed-out browser gets the sign-in page.

use std::collections::HashMap;

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::ApiError;
use super::super::admin::test_connection;
use super::super::messages::{retry_all_dead, retry_message};
use super::super::openapi::IdPath;
use super::super::page::escape;
use super::super::pairing::create_pairing_link;
use super::super::sessions::{logout_location, start_pairing_for};
use super::auth::is_admin_token;
use super::pages::{error_page, render_location, sign_in};
use super::{Notice, PagePath, Visitor};
use crate::domain::LocationId;
use crate::sessions::Unlink;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(pair))
        .routes(routes!(unpair))
        .routes(routes!(link))
        .routes(routes!(test))
        .routes(routes!(retry_dead))
        .routes(routes!(retry_one))
}

type Fields = Result<Form<HashMap<String, String>>, FormRejection>;

/// The form's fields, once the browser is signed in (when `signed_in_only`) and the form
/// carries its CSRF token; otherwise the page that says why not.
fn checked(
    state: &AppState,
    visitor: &Visitor,
    fields: Fields,
    signed_in_only: bool,
) -> Result<HashMap<String, String>, Box<Response>> {
    if signed_in_only && !visitor.signed_in {
        let notice = Notice {
            status: StatusCode::UNAUTHORIZED,
            html: "Your session has ended: sign in again.".into(),
        };
        return Err(Box::new(sign_in(state, visitor, Some(&notice))));
    }
    let Form(fields) = fields.map_err(|e| {
        Box::new(error_page(
            state,
            visitor,
            &ApiError::bad_request("invalid_form", e.body_text()),
        ))
    })?;
    let token = fields.get("csrf").map_or("", String::as_str);
    if !visitor.csrf_matches(token) {
        let refused = ApiError::Forbidden(
            "this form has expired or did not come from this console; reload the page and try again".into(),
        );
        return Err(Box::new(error_page(state, visitor, &refused)));
    }
    Ok(fields)
}

/// Sign in with the admin token.
#[utoipa::path(post, operation_id = "console_login", path = "/login", tag = "pages", responses(
    (status = 303, description = "Signed in: to the locations"),
    (status = 401, description = "Wrong token: the sign-in page", content_type = "text/html")))]
async fn login(State(state): State<AppState>, visitor: Visitor, fields: Fields) -> Response {
    let fields = match checked(&state, &visitor, fields, false) {
        Ok(fields) => fields,
        Err(page) => return *page,
    };
    if !is_admin_token(&state, fields.get("token").map_or("", String::as_str)) {
        tracing::warn!("console sign-in refused: wrong admin token");
        let notice = Notice {
            status: StatusCode::UNAUTHORIZED,
            html: "That is not the admin token.".into(),
        };
        return sign_in(&state, &visitor, Some(&notice));
    }
    let mut response = Redirect::to("/").into_response();
    Visitor::sign_in(&state).set_cookies(&state, &mut response);
    response
}

/// Sign out.
#[utoipa::path(post, operation_id = "console_logout", path = "/logout", tag = "pages", responses((status = 303, description = "To the sign-in page")))]
async fn logout(State(state): State<AppState>, mut visitor: Visitor, fields: Fields) -> Response {
    if let Err(page) = checked(&state, &visitor, fields, true) {
        return *page;
    }
    visitor.sign_out();
    let mut response = Redirect::to("/").into_response();
    visitor.set_cookies(&state, &mut response);
    response
}

/// The checked form and location of an action; or the page that says why it cannot run.
fn action(
    state: &AppState,
    visitor: &Visitor,
    id: &str,
    fields: Fields,
) -> Result<(LocationId, HashMap<String, String>), Box<Response>> {
    let fields = checked(state, visitor, fields, true)?;
    let id = LocationId::parse(id).map_err(|e| {
        Box::new(error_page(
            state,
            visitor,
            &ApiError::bad_request("invalid_location_id", e.to_string()),
        ))
    })?;
    Ok((id, fields))
}

/// Shows the location page with the outcome of an action.
async fn outcome<T>(
    state: &AppState,
    visitor: &Visitor,
    id: &LocationId,
    result: Result<T, ApiError>,
    done: impl FnOnce(T) -> (Notice, String),
) -> Response {
    let (notice, extra) = match result {
        Ok(value) => done(value),
        Err(e) => (Notice::failed(&e), String::new()),
    };
    render_location(state, visitor, id, Some(&notice), &extra).await
}

/// Start pairing: by QR code, or by pairing code for the `phone` field.
#[utoipa::path(post, operation_id = "console_pair", path = "/locations/{id}/pair", tag = "pages", params(IdPath),
    responses((status = 200, description = "The location page", content_type = "text/html")))]
async fn pair(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<String>,
    fields: Fields,
) -> Response {
    let (id, fields) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let phone = fields.get("phone").map(|p| p.trim()).filter(|p| !p.is_empty());
    let result = start_pairing_for(&state, &id, phone).await;
    outcome(&state, &visitor, &id, result, |_| {
        (
            Notice::done("Pairing started: the code appears below in a moment."),
            String::new(),
        )
    })
    .await
}

/// Log the WhatsApp session out and wipe its keys.
#[utoipa::path(post, operation_id = "console_unpair", path = "/locations/{id}/logout", tag = "pages", params(IdPath),
    responses((status = 200, description = "The location page", content_type = "text/html")))]
async fn unpair(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<String>,
    fields: Fields,
) -> Response {
    let (id, _) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let result = logout_location(&state, &id, Unlink::Required).await;
    outcome(&state, &visitor, &id, result, |_| {
        (Notice::done("Logged out; the device keys are wiped."), String::new())
    })
    .await
}

/// Create a pairing link valid `days` days.
#[utoipa::path(post, operation_id = "console_link", path = "/locations/{id}/link", tag = "pages", params(IdPath),
    responses((status = 200, description = "The location page with the link", content_type = "text/html")))]
async fn link(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<String>,
    fields: Fields,
) -> Response {
    let (id, fields) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let result = match fields.get("days").and_then(|d| d.trim().parse::<i64>().ok()) {
        Some(days) if (1..=90).contains(&days) => create_pairing_link(&state, &id, Some(days * 86_400)).await,
        _ => Err(ApiError::bad_request(
            "invalid_ttl",
            "the link must be valid for 1 to 90 days",
        )),
    };
    outcome(&state, &visitor, &id, result, |link| {
        let extra = format!(
            "<section class=\"card\"><h2>New pairing link</h2><p>Valid until {expires}.</p>\
             <div class=\"copy\"><input id=\"pairing-link\" readonly value=\"{url}\" aria-label=\"Pairing link\">\
             <button type=\"button\" data-copy=\"pairing-link\">Copy</button></div></section>",
            expires = escape(&link.expires_at),
            url = escape(&link.url),
        );
        (Notice::done("Pairing link created."), extra)
    })
    .await
}

/// Test the location's GHL connection.
#[utoipa::path(post, operation_id = "console_test", path = "/locations/{id}/test", tag = "pages", params(IdPath),
    responses((status = 200, description = "The location page with the result", content_type = "text/html")))]
async fn test(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<String>,
    fields: Fields,
) -> Response {
    let (id, _) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let result = test_connection(&state, &id).await;
    outcome(&state, &visitor, &id, result, |test| match test.error {
        None => (Notice::done("GHL answered: the connection works."), String::new()),
        Some(error) => (
            Notice {
                status: StatusCode::BAD_GATEWAY,
                html: escape(&format!("GHL connection failed ({}): {}", error.code, error.message)),
            },
            String::new(),
        ),
    })
    .await
}

/// Replay every dead message of the location.
#[utoipa::path(post, operation_id = "console_retry_dead", path = "/locations/{id}/retry-dead", tag = "pages", params(IdPath),
    responses((status = 200, description = "The location page", content_type = "text/html")))]
async fn retry_dead(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<String>,
    fields: Fields,
) -> Response {
    let (id, _) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let result = retry_all_dead(&state, &id).await;
    outcome(&state, &visitor, &id, result, |r| {
        (
            Notice::done(&format!("{} dead message(s) went back to their queue.", r.replayed)),
            String::new(),
        )
    })
    .await
}

/// Replay one dead message.
#[utoipa::path(post, operation_id = "console_retry_one", path = "/locations/{id}/messages/{message}/retry", tag = "pages",
    params(IdPath, ("message" = String, Path, description = "`in_42` or `out_17`")),
    responses((status = 200, description = "The location page", content_type = "text/html")))]
async fn retry_one(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath((id, message)): PagePath<(String, String)>,
    fields: Fields,
) -> Response {
    let (id, _) = match action(&state, &visitor, &id, fields) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let result = retry_message(&state, &message).await;
    outcome(&state, &visitor, &id, result, |_| {
        (
            Notice::done(&format!("Message {message} went back to its queue.")),
            String::new(),
        )
    })
    .await
}
