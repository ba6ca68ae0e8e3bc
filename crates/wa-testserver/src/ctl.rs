//! The control API (`/_ctl/*`, JSON, loopback only): what a test does to the WhatsApp side —
//! a phone scans a QR code, a contact sends a message or a receipt — and what it reads back.
//! Names and shapes are the contract in ARCHITECTURE.md, "WhatsApp test server".

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::download::MediaType;
use whatsapp_rust::media::{self, AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::proto_helpers::{MessageBuilderExt, MessageExt, wrap_as_album_child};
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid, SendOptions};

use crate::{Hub, faults, pairing};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/_ctl/scan", post(scan))
        .route("/_ctl/pair-code", post(pair_code))
        .route("/_ctl/send", post(send))
        .route("/_ctl/acked/{id}", get(acked))
        .route("/_ctl/received/{phone}", get(received))
        .route("/_ctl/receipt", post(receipt))
        .route("/_ctl/devices/{phone}", get(devices))
        .route("/_ctl/stats", get(stats))
        .route("/_ctl/drop", post(drop_links))
        .route("/_ctl/logout", post(logout))
        .route("/_ctl/ban", post(ban))
        .route("/_ctl/replace", post(replace))
        .route("/_ctl/outdated", post(outdated))
        .route("/_ctl/restart-stream", post(restart_stream))
        .route("/_ctl/offline", post(offline))
        .route("/_ctl/hold-acks", post(hold_acks))
        .route("/_ctl/refuse", post(refuse))
        .route("/_ctl/presence/{phone}", get(presence))
        .route("/_ctl/reveal-lid", post(reveal_lid))
        .route("/_ctl/disappearing", post(disappearing))
        .route("/_ctl/history-sync", post(history_sync))
}

/// A refusal: its status and the reason, answered as `{"error": reason}`.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type Reply = Result<Response, Fail>;

fn error(status: StatusCode, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

fn internal(e: anyhow::Error) -> Fail {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

fn ok(body: serde_json::Value) -> Reply {
    Ok(Json(body).into_response())
}

/// `+15551234567` (or bare digits) → `15551234567`.
fn digits(phone: &str) -> Result<String, Fail> {
    let d = phone.strip_prefix('+').unwrap_or(phone);
    if d.len() < 6 || d.len() > 15 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(StatusCode::BAD_REQUEST, format!("not an E.164 phone: {phone:?}")));
    }
    Ok(d.to_owned())
}

#[derive(Deserialize)]
struct Scan {
    phone: String,
    qr: String,
}

async fn scan(State(hub): State<Arc<Hub>>, Json(body): Json<Scan>) -> Reply {
    let phone = digits(&body.phone)?;
    pairing::scan(&hub, &phone, &body.qr)
        .await
        .map_err(|reason| error(StatusCode::CONFLICT, reason))?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct PairCode {
    phone: String,
    code: String,
}

/// The phone of `phone` enters the pairing code the new device shows.
async fn pair_code(State(hub): State<Arc<Hub>>, Json(body): Json<PairCode>) -> Reply {
    let phone = digits(&body.phone)?;
    crate::pair_code::enter(&hub, &phone, &body.code)
        .await
        .map_err(|reason| error(StatusCode::CONFLICT, reason))?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct Media {
    kind: String,
    mime: Option<String>,
    data_base64: String,
    caption: Option<String>,
    file_name: Option<String>,
}

#[derive(Deserialize)]
struct Send {
    from: String,
    to: String,
    text: Option<String>,
    media: Option<Media>,
    id: Option<String>,
    #[serde(default)]
    from_me: bool,
    reply_to: Option<String>,
    #[serde(default)]
    view_once: bool,
    album: Option<Vec<Media>>,
    /// The contact's LID (digits): the business's devices know the contact only by it until
    /// `/_ctl/reveal-lid`. With `from_me`, the phone writes into the chat of that LID.
    lid: Option<String>,
    /// The chat's disappearing timer (seconds): the message carries it, as a client's message
    /// into a disappearing chat does.
    expiration: Option<u32>,
}

/// A contact (or, with `from_me`, the account's own phone) sends a message: its client
/// encrypts it to every device of the recipient. Answers once the server holds it.
async fn send(State(hub): State<Arc<Hub>>, Json(body): Json<Send>) -> Reply {
    let (from, to) = (digits(&body.from)?, digits(&body.to)?);
    if let Some(lid) = &body.lid {
        address_by_lid(&hub, &from, lid)?;
    }
    let (sender, recipient) = if body.from_me { (to, from) } else { (from, to) };
    let peer = hub.peers.peer(&hub, &sender).await.map_err(internal)?;
    hub.peers.peer(&hub, &recipient).await.map_err(internal)?;
    let context = body.reply_to.as_ref().map(|id| {
        Box::new(wa::ContextInfo {
            stanza_id: Some(id.clone()),
            participant: Some(format!("{recipient}@s.whatsapp.net")),
            ..Default::default()
        })
    });
    let to = match (&body.lid, body.from_me) {
        (Some(lid), true) => Jid::lid(lid),
        _ => Jid::pn(&recipient),
    };
    let id = body.id.clone().unwrap_or_else(|| peer.client.generate_message_id());
    if let Some(items) = &body.album {
        return send_album(&hub, &peer.client, &to, id, items).await;
    }
    let mut message = match (&body.text, &body.media) {
        (_, Some(m)) => media_message(&peer.client, m, context).await?,
        (Some(text), None) => match context {
            Some(context) => wa::Message::text_with_context(text.clone(), *context),
            None => wa::Message::text(text.clone()),
        },
        (None, None) => return Err(error(StatusCode::BAD_REQUEST, "text, media or album is required")),
    };
    if let Some(seconds) = body.expiration {
        // What the client's own `SendOptions::with_ephemeral_expiration` does to a message.
        message.set_ephemeral_expiration(seconds);
    }
    if body.view_once {
        message = wa::Message {
            view_once_message_v2: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(message),
            }),
            ..Default::default()
        };
    }
    send_one(&hub, &peer.client, &to, id.clone(), message).await?;
    ok(json!({ "id": id }))
}

#[derive(Deserialize)]
struct Disappearing {
    from: String,
    to: String,
    seconds: u32,
}

/// The contact `from` turns disappearing messages on (`seconds`) or off (0) in its chat with
/// the account `to`: its client sends the `EPHEMERAL_SETTING` protocol message a phone sends.
async fn disappearing(State(hub): State<Arc<Hub>>, Json(body): Json<Disappearing>) -> Reply {
    let (from, to) = (digits(&body.from)?, digits(&body.to)?);
    let peer = hub.peers.peer(&hub, &from).await.map_err(internal)?;
    hub.peers.peer(&hub, &to).await.map_err(internal)?;
    let sent = peer
        .client
        .set_chat_disappearing_timer(Jid::pn(&to), body.seconds)
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("the contact's client could not send: {e}"),
            )
        })?;
    routed(&hub, &sent.message_id).await?;
    ok(json!({ "id": sent.message_id }))
}

#[derive(Deserialize)]
struct HistorySync {
    phone: String,
    contacts: Vec<HistoryContact>,
}

#[derive(Deserialize)]
struct HistoryContact {
    phone: String,
    /// Makes the contact known by this LID alone, as `lid` in `/_ctl/send` does.
    lid: Option<String>,
}

/// The phone of `phone` sends its linked devices the initial history sync, which maps each of
/// `contacts` to its LID.
async fn history_sync(State(hub): State<Arc<Hub>>, Json(body): Json<HistorySync>) -> Reply {
    let phone = digits(&body.phone)?;
    let mut contacts = Vec::new();
    for contact in &body.contacts {
        let number = digits(&contact.phone)?;
        if let Some(lid) = &contact.lid {
            address_by_lid(&hub, &number, lid)?;
        }
        hub.account_mut(&mut hub.state.lock().expect("state lock"), &number);
        contacts.push(number);
    }
    crate::history::send_lid_mappings(&hub, &phone, &contacts)
        .await
        .map_err(|reason| error(StatusCode::CONFLICT, reason))?;
    ok(json!({}))
}

/// Makes `phone` an account known by its LID `lid` alone. Its LID is fixed when the account
/// is created; naming another one later is a conflict.
fn address_by_lid(hub: &Hub, phone: &str, lid: &str) -> Result<(), Fail> {
    if lid.is_empty() || !lid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(StatusCode::BAD_REQUEST, format!("not a LID: {lid:?}")));
    }
    let mut state = hub.state.lock().expect("state lock");
    if state.resolve_user(lid).is_some_and(|owner| owner != phone) {
        return Err(error(StatusCode::CONFLICT, "another account has this LID"));
    }
    let fresh = !state.accounts.contains_key(phone);
    let account = hub.account_mut(&mut state, phone);
    if fresh {
        account.lid = lid.to_owned();
        account.lid_only = true;
    } else if account.lid != lid {
        return Err(error(
            StatusCode::CONFLICT,
            format!("this account's LID is {}", account.lid),
        ));
    }
    Ok(())
}

/// An album: the parent message announcing the count, then one child per item, each wrapped
/// as WhatsApp Web does (`wrap_as_album_child`). Answers the parent's id and the children's.
async fn send_album(hub: &Arc<Hub>, client: &Client, to: &Jid, id: String, items: &[Media]) -> Reply {
    let images = items.iter().filter(|m| m.kind == "image").count() as u32;
    let parent = wa::Message {
        album_message: MessageField::some(wa::message::AlbumMessage {
            expected_image_count: Some(images),
            expected_video_count: Some(items.len() as u32 - images),
            ..Default::default()
        }),
        ..Default::default()
    };
    send_one(hub, client, to, id.clone(), parent).await?;
    let parent_key = wa::MessageKey {
        remote_jid: Some(to.to_string()),
        from_me: Some(true),
        id: Some(id.clone()),
        ..Default::default()
    };
    let mut children = Vec::new();
    for item in items {
        let child = wrap_as_album_child(media_message(client, item, None).await?, parent_key.clone());
        let child_id = client.generate_message_id();
        send_one(hub, client, to, child_id.clone(), child).await?;
        children.push(child_id);
    }
    ok(json!({ "id": id, "children": children }))
}

/// Sends through the sender's client and returns once the server routed it (`send_message`
/// itself returns when the stanza is written).
async fn send_one(hub: &Hub, client: &Client, to: &Jid, id: String, message: wa::Message) -> Result<(), Fail> {
    client
        .send_message_with_options(to.clone(), message, SendOptions::default().with_message_id(id.clone()))
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("the sender's client could not send: {e}"),
            )
        })?;
    routed(hub, &id).await
}

/// Returns once the server routed the message `id`.
async fn routed(hub: &Hub, id: &str) -> Result<(), Fail> {
    for _ in 0..500 {
        if hub.state.lock().expect("state lock").deliveries.contains_key(id) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(error(StatusCode::GATEWAY_TIMEOUT, "the server never saw the message"))
}

async fn media_message(client: &Client, m: &Media, context: Option<Box<wa::ContextInfo>>) -> Result<wa::Message, Fail> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(&m.data_base64)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("data_base64: {e}")))?;
    let media_type = match m.kind.as_str() {
        "image" => MediaType::Image,
        "video" => MediaType::Video,
        "audio" | "voice" => MediaType::Audio,
        "document" => MediaType::Document,
        "sticker" => MediaType::Sticker,
        other => return Err(error(StatusCode::BAD_REQUEST, format!("unknown media kind {other:?}"))),
    };
    let upload = client
        .upload(data, media_type, UploadOptions::new())
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, format!("upload failed: {e:#}")))?;
    let mime = m.mime.clone();
    Ok(match m.kind.as_str() {
        "image" => media::image_message(
            upload,
            ImageOptions {
                caption: m.caption.clone(),
                mimetype: mime,
                context_info: context,
                ..Default::default()
            },
        ),
        "video" => media::video_message(
            upload,
            VideoOptions {
                caption: m.caption.clone(),
                mimetype: mime,
                context_info: context,
                ..Default::default()
            },
        ),
        "audio" | "voice" => media::audio_message(
            upload,
            AudioOptions {
                mimetype: mime,
                ptt: Some(m.kind == "voice"),
                context_info: context,
                ..Default::default()
            },
        ),
        "document" => media::document_message(
            upload,
            DocumentOptions {
                caption: m.caption.clone(),
                mimetype: mime,
                file_name: m.file_name.clone(),
                context_info: context,
                ..Default::default()
            },
        ),
        _ => sticker_message(upload, mime),
    })
}

/// The crate has no sticker builder; this is the shape its downloader reads.
fn sticker_message(upload: whatsapp_rust::upload::UploadResponse, mime: Option<String>) -> wa::Message {
    wa::Message {
        sticker_message: MessageField::some(wa::message::StickerMessage {
            url: Some(upload.url),
            direct_path: Some(upload.direct_path),
            media_key: Some(upload.media_key.to_vec()),
            file_sha256: Some(upload.file_sha256.to_vec()),
            file_enc_sha256: Some(upload.file_enc_sha256.to_vec()),
            file_length: Some(upload.file_length),
            mimetype: Some(mime.unwrap_or_else(|| "image/webp".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn acked(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Reply {
    let state = hub.state.lock().expect("state lock");
    let delivery = state.deliveries.get(&id).cloned().unwrap_or_default();
    ok(json!({
        "delivered_to_devices": delivery.delivered_to.len(),
        "acked_by_devices": delivery.acked_by.len(),
    }))
}

async fn received(State(hub): State<Arc<Hub>>, Path(phone): Path<String>) -> Reply {
    let phone = digits(&phone)?;
    let messages = hub
        .peers
        .get(&phone)
        .map(|p| p.received.lock().expect("received lock").clone())
        .unwrap_or_default();
    ok(json!({ "messages": messages }))
}

#[derive(Deserialize)]
struct Receipt {
    phone: String,
    id: String,
    status: String,
}

/// The account `phone` sends a receipt for a message it received. Its client sends a delivery
/// receipt by itself on decrypting; `delivered` sends one more, as a phone does again when it
/// comes back online.
async fn receipt(State(hub): State<Arc<Hub>>, Json(body): Json<Receipt>) -> Reply {
    let phone = digits(&body.phone)?;
    let peer = hub
        .peers
        .get(&phone)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such account"))?;
    let sender = peer
        .received
        .lock()
        .expect("received lock")
        .iter()
        .find(|m| m.id == body.id)
        .map(|m| m.from.trim_start_matches('+').to_owned());
    let sender = sender.ok_or_else(|| error(StatusCode::NOT_FOUND, "that account did not receive this message"))?;
    let chat = Jid::pn(&sender);
    let result = match body.status.as_str() {
        "read" => peer.client.mark_as_read(&chat, None, &[body.id.as_str()]).await,
        "delivered" => {
            let node = NodeBuilder::new("receipt")
                .attr("to", chat.to_string())
                .attr("id", body.id.clone())
                .build();
            peer.client.send_node(node).await.map_err(Into::into)
        }
        other => return Err(error(StatusCode::BAD_REQUEST, format!("unknown status {other:?}"))),
    };
    result.map_err(|e| error(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    ok(json!({}))
}

async fn devices(State(hub): State<Arc<Hub>>, Path(phone): Path<String>) -> Reply {
    let phone = digits(&phone)?;
    let state = hub.state.lock().expect("state lock");
    let devices: Vec<_> = state
        .accounts
        .get(&phone)
        .map(|a| {
            a.devices
                .iter()
                .map(|(id, d)| {
                    let addr = crate::state::DeviceAddr::new(phone.clone(), *id);
                    json!({ "id": id, "linked_at": d.linked_at, "online": state.online.contains_key(&addr) })
                })
                .collect()
        })
        .unwrap_or_default();
    ok(json!({ "devices": devices }))
}

async fn stats(State(hub): State<Arc<Hub>>) -> Reply {
    ok(hub.stats.json())
}

#[derive(Deserialize)]
struct Phone {
    phone: String,
}

#[derive(Deserialize)]
struct ForSeconds {
    phone: String,
    seconds: u64,
}

async fn drop_links(State(hub): State<Arc<Hub>>, Json(body): Json<Phone>) -> Reply {
    let dropped = faults::drop_links(&hub, &digits(&body.phone)?);
    ok(json!({ "dropped": dropped }))
}

async fn logout(State(hub): State<Arc<Hub>>, Json(body): Json<Phone>) -> Reply {
    let removed = faults::logout(&hub, &digits(&body.phone)?);
    ok(json!({ "removed": removed }))
}

async fn ban(State(hub): State<Arc<Hub>>, Json(body): Json<ForSeconds>) -> Reply {
    faults::ban(&hub, &digits(&body.phone)?, body.seconds);
    ok(json!({}))
}

async fn replace(State(hub): State<Arc<Hub>>, Json(body): Json<Phone>) -> Reply {
    let replaced = faults::replace(&hub, &digits(&body.phone)?);
    ok(json!({ "replaced": replaced }))
}

#[derive(Deserialize)]
struct Outdated {
    phone: String,
    /// Only clients announcing a revision below this one are refused.
    below: Option<u32>,
}

/// Not in the contract's list; the client-outdated case of the issue.
async fn outdated(State(hub): State<Arc<Hub>>, Json(body): Json<Outdated>) -> Reply {
    faults::outdated(&hub, &digits(&body.phone)?, body.below);
    ok(json!({}))
}

/// Not in the contract's list: a stream restart the client rides out in its own reconnect
/// loop, without reporting a disconnection.
async fn restart_stream(State(hub): State<Arc<Hub>>, Json(body): Json<ForSeconds>) -> Reply {
    let restarted = faults::restart_streams(&hub, &digits(&body.phone)?, body.seconds);
    ok(json!({ "restarted": restarted }))
}

async fn offline(State(hub): State<Arc<Hub>>, Json(body): Json<ForSeconds>) -> Reply {
    faults::offline(&hub, &digits(&body.phone)?, body.seconds);
    ok(json!({}))
}

async fn hold_acks(State(hub): State<Arc<Hub>>, Json(body): Json<ForSeconds>) -> Reply {
    faults::hold_acks(&hub, &digits(&body.phone)?, body.seconds);
    ok(json!({}))
}

#[derive(Deserialize)]
struct Refusal {
    phone: String,
    code: String,
}

async fn refuse(State(hub): State<Arc<Hub>>, Json(body): Json<Refusal>) -> Reply {
    faults::refuse(&hub, &digits(&body.phone)?, &body.code);
    ok(json!({}))
}

async fn presence(State(hub): State<Arc<Hub>>, Path(phone): Path<String>) -> Reply {
    ok(json!({ "presence": hub.faults.presence(&digits(&phone)?) }))
}

/// From now on the account's messages carry its phone number (`sender_pn`) next to its LID.
async fn reveal_lid(State(hub): State<Arc<Hub>>, Json(body): Json<Phone>) -> Reply {
    let phone = digits(&body.phone)?;
    let mut state = hub.state.lock().expect("state lock");
    let account = state
        .accounts
        .get_mut(&phone)
        .filter(|a| a.lid_only || a.lid_revealed)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no account known by its LID"))?;
    account.lid_only = false;
    account.lid_revealed = true;
    ok(json!({ "lid": account.lid }))
}
