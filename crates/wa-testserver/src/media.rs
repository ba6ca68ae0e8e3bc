//! Media, as WhatsApp's CDN does it: clients ask for `media_conn` (an auth token and hosts),
//! upload the encrypted file to `/mms/<type>/<token>` and receive a `direct_path`, then
//! recipients download it from there. The server stores ciphertext it cannot read; the clients
//! encrypt and decrypt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;

use crate::Hub;

#[derive(Default)]
pub struct MediaStore {
    blobs: Mutex<HashMap<String, Bytes>>,
}

/// The auth token every `media_conn` hands out; uploads without it are refused like WhatsApp's.
const AUTH: &str = "wa-testserver-media-auth";

/// `<media_conn auth ttl><host hostname/></media_conn>`. The host is this server's own
/// loopback address: a client that builds `https://127.0.0.1:PORT/…` and does not rewrite it
/// to plain http fails here instead of reaching WhatsApp's CDN.
pub fn media_conn(hub: &Hub) -> Node {
    let host = hub.http_url.trim_start_matches("http://").to_owned();
    NodeBuilder::new("media_conn")
        .attr("auth", AUTH)
        .attr("ttl", "300")
        .attr("auth_ttl", "21600")
        .attr("max_buckets", "12")
        .children([NodeBuilder::new("host").attr("hostname", host).build()])
        .build()
}

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/mms/{kind}/{token}", post(upload))
        .route("/v/t62/{token}", get(download))
}

#[derive(Deserialize)]
struct Auth {
    auth: Option<String>,
}

async fn upload(
    State(hub): State<Arc<Hub>>,
    Path((_kind, token)): Path<(String, String)>,
    Query(query): Query<Auth>,
    body: Bytes,
) -> Response {
    if query.auth.as_deref() != Some(AUTH) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    hub.media.blobs.lock().expect("media lock").insert(token.clone(), body);
    let direct_path = format!("/v/t62/{token}");
    Json(serde_json::json!({
        "url": format!("{}{direct_path}", hub.http_url.replacen("http://", "https://", 1)),
        "direct_path": direct_path,
    }))
    .into_response()
}

async fn download(State(hub): State<Arc<Hub>>, Path(token): Path<String>) -> Response {
    match hub.media.blobs.lock().expect("media lock").get(&token) {
        Some(body) => body.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
