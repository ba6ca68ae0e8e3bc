//! WhatsApp Web's service worker script, `GET /sw.js`, where clients read the current web
//! version (`client_revision`): the clients' HTTP client sends `https://web.whatsapp.com/sw.js`
//! here like every other request. A test sets the revision or makes the fetch fail, and reads
//! how often it was fetched in `/_ctl/stats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::state::Stats;
use crate::{CLIENT_VERSION, Hub};

pub struct WebRelease {
    revision: AtomicU32,
    failing: AtomicBool,
}

impl Default for WebRelease {
    fn default() -> Self {
        Self {
            revision: AtomicU32::new(CLIENT_VERSION.2),
            failing: AtomicBool::new(false),
        }
    }
}

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/sw.js", get(sw_js))
        .route("/_ctl/web-version", post(set_web_version))
}

/// The part of the real script the client's parser reads (wacore `version::parse_sw_js`).
async fn sw_js(State(hub): State<Arc<Hub>>) -> Response {
    Stats::bump(&hub.stats.sw_js_fetches);
    if hub.web.failing.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response();
    }
    let revision = hub.web.revision.load(Ordering::Relaxed);
    format!(r#"self.__swData=JSON.parse(/*BTDS*/"{{\"dynamic_data\":{{\"SiteData\":{{\"client_revision\":{revision}}}}}}}");"#)
        .into_response()
}

#[derive(Deserialize)]
struct WebVersion {
    revision: Option<u32>,
    #[serde(default)]
    failing: bool,
}

/// `{"revision": N}` publishes a new version; `{"failing": true}` makes the fetch answer 503.
async fn set_web_version(State(hub): State<Arc<Hub>>, Json(body): Json<WebVersion>) -> Json<serde_json::Value> {
    if let Some(revision) = body.revision {
        hub.web.revision.store(revision, Ordering::Relaxed);
    }
    hub.web.failing.store(body.failing, Ordering::Relaxed);
    Json(serde_json::json!({ "revision": hub.web.revision.load(Ordering::Relaxed) }))
}
