//! The operator's console at `/`: server-rendered HTML with a little progressive JavaScript
//! (live refresh, copy buttons), no CDN and no build step, signed in with the admin token.
//!
//! Pages ([`pages`]): locations, one location, health. Actions ([`actions`]) go through the
//! same functions as the admin API, and show their outcome on the page they came from. The
//! scripts and styles are files of their own ([`assets`]) so that the pages' CSP allows no
//! inline code. Errors are shown as a readable message with the API's status; internal causes
//! stay in the log.

mod actions;
mod assets;
mod auth;
mod pages;

use axum::extract::{FromRequestParts, Path};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;

use super::ApiError;
use super::page::escape;
use crate::state::AppState;
use crate::time::{now_ms, parse_rfc3339};
pub use auth::Visitor;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(pages::router())
        .merge(actions::router())
        .merge(assets::router())
}

/// Scripts and styles come only from our own files; nothing may frame the console.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A message at the top of a page: what an action did, or why it did not.
pub struct Notice {
    pub status: StatusCode,
    pub html: String,
}

impl Notice {
    pub fn done(text: &str) -> Self {
        Self {
            status: StatusCode::OK,
            html: escape(text),
        }
    }

    /// An error as a person reads it; an internal error says only that (the log has more).
    pub fn failed(e: &ApiError) -> Self {
        let text = match e {
            ApiError::Internal(_) => "Something went wrong inside waghl; the log says what.".to_owned(),
            other => other.to_string(),
        };
        Self {
            status: e.status(),
            html: escape(&text),
        }
    }

    fn render(&self) -> String {
        let class = if self.status.is_success() {
            "notice ok"
        } else {
            "notice error"
        };
        format!("<div class=\"{class}\" role=\"status\">{}</div>", self.html)
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Locations,
    Health,
    None,
}

/// What frames a page's content.
pub struct Frame<'a> {
    pub title: &'a str,
    pub nav: Nav,
    /// The page's own URL and how often its `data-live` regions refresh from it.
    pub live: Option<(&'a str, u32)>,
}

/// A complete console page.
pub fn layout(state: &AppState, visitor: &Visitor, frame: Frame<'_>, notice: Option<&Notice>, body: &str) -> Response {
    let Frame { title, nav, live } = frame;
    let item = |target: Nav, href: &str, label: &str| {
        let current = if nav == target { " aria-current=\"page\"" } else { "" };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    let header = if visitor.signed_in {
        format!(
            "<nav>{}{}<form method=\"post\" action=\"/logout\">{}<button class=\"link\">Sign out</button></form></nav>",
            item(Nav::Locations, "/", "Locations"),
            item(Nav::Health, "/health", "Health"),
            csrf_field(visitor),
        )
    } else {
        String::new()
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · waghl</title><link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body{live}><header><a class=\"brand\" href=\"/\">waghl</a>{header}</header>\
         <main>{notice}{body}</main></body></html>",
        title = escape(title),
        live = live
            .map(|(url, ms)| format!(" data-live-url=\"{}\" data-refresh-ms=\"{ms}\"", escape(url)))
            .unwrap_or_default(),
        notice = notice.map(Notice::render).unwrap_or_default(),
    );
    let status = notice.map_or(StatusCode::OK, |n| n.status);
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    visitor.set_cookies(state, &mut response);
    response
}

/// Path parameters of a console route; one that does not even decode gets the error page
/// (axum's own rejection would answer plain text).
pub struct PagePath<T>(pub T);

impl<T> FromRequestParts<AppState> for PagePath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(e) => {
                let Ok(visitor) = Visitor::from_request_parts(parts, state).await;
                let error = ApiError::bad_request("invalid_path", e.body_text());
                Err(pages::error_page(state, &visitor, &error))
            }
        }
    }
}

/// The hidden field every form carries.
pub fn csrf_field(visitor: &Visitor) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", visitor.csrf())
}

/// A state or status as a coloured label.
pub fn badge(text: &str) -> String {
    let tone = match text {
        "connected" | "installed" | "relayed" | "sent" | "delivered" | "read" | "ok" => "good",
        "pairing" | "reconnecting" | "pending" | "sending" | "unpaired" => "wait",
        "logged_out" | "parked" | "reauth_required" | "failed" | "dead" | "uninstalled" => "bad",
        _ => "none",
    };
    format!(
        "<span class=\"badge {tone}\">{}</span>",
        escape(&text.replace('_', " "))
    )
}

/// An RFC 3339 time as "5 min ago", the exact time on hover.
pub fn ago(rfc3339: &str) -> String {
    let Some(at) = parse_rfc3339(rfc3339) else {
        return escape(rfc3339);
    };
    let seconds = (now_ms() - at).max(0) / 1000;
    let text = match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    };
    format!("<time datetime=\"{0}\" title=\"{0}\">{text}</time>", escape(rfc3339))
}

/// Text that may be long (an error): cut for a table cell, whole on hover.
pub fn clipped(text: Option<&str>, chars: usize) -> String {
    let Some(text) = text else {
        return String::new();
    };
    let short: String = text.chars().take(chars).collect();
    let more = if short.len() < text.len() { "…" } else { "" };
    format!("<span title=\"{}\">{}{more}</span>", escape(text), escape(&short))
}
