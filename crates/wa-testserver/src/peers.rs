//! The people on the other side: every account's phone (its primary device) and every contact
//! is a real whatsapp-rust client, run in-process and connected to this server over loopback
//! like any other client. Signal encryption and decryption therefore happen in the crate's own
//! code on both ends; the server only routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use whatsapp_rust::Client;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::download::Downloadable;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::store::commands::DeviceCommand;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::types::message::MessageInfo;
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Jid, SendOptions, TokioRuntime};
use whatsapp_rust_tokio_transport::TokioWebSocketTransportFactory;

use crate::Hub;
use crate::loopback::LoopbackHttpClient;
use crate::state::{Device, DeviceAddr, SignedPreKey, now};

/// The web version the in-process clients announce; fixed so they never fetch WhatsApp's.
pub const CLIENT_VERSION: (u32, u32, u32) = (2, 3000, 1_000_000_000);

/// A message an account's phone received and decrypted (`/_ctl/received`).
#[derive(Clone, Debug, Serialize)]
pub struct Received {
    pub id: String,
    pub from: String,
    pub kind: &'static str,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub mime: Option<String>,
    pub bytes: Option<usize>,
    pub sha256: Option<String>,
    pub file_name: Option<String>,
    pub reply_to: Option<String>,
    /// The author the quote names (`context_info.participant`).
    pub participant: Option<String>,
    /// The disappearing timer the message carries (`context_info.expiration`, seconds).
    pub expiration: Option<u32>,
    /// How long an audio or video plays, as its message says.
    pub seconds: Option<u32>,
}

pub struct Peer {
    pub client: Arc<Client>,
    pub identity: KeyPair,
    pub received: Arc<Mutex<Vec<Received>>>,
    _handle: BotHandle,
}

#[derive(Default)]
pub struct Peers {
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Serialises starts, so two calls naming a new phone start one client.
    starting: tokio::sync::Mutex<()>,
}

impl Peers {
    pub fn get(&self, phone: &str) -> Option<Arc<Peer>> {
        self.peers.lock().expect("peers lock").get(phone).cloned()
    }

    /// Stops every in-process client (dropping a `BotHandle` aborts its bot).
    pub fn stop_all(&self) {
        self.peers.lock().expect("peers lock").clear();
    }

    pub fn identity_of(&self, phone: &str) -> Option<KeyPair> {
        self.get(phone).map(|p| p.identity.clone())
    }

    /// The phone of `phone` (digits), started and connected on first use: from then on the
    /// account exists.
    pub async fn phone(&self, hub: &Arc<Hub>, phone: &str) -> Result<Arc<Client>> {
        Ok(self.peer(hub, phone).await?.client.clone())
    }

    pub async fn peer(&self, hub: &Arc<Hub>, phone: &str) -> Result<Arc<Peer>> {
        let _one = self.starting.lock().await;
        if let Some(peer) = self.get(phone) {
            return Ok(peer);
        }
        let peer = Arc::new(start(hub, phone).await?);
        self.peers
            .lock()
            .expect("peers lock")
            .insert(phone.to_owned(), peer.clone());
        Ok(peer)
    }
}

async fn start(hub: &Arc<Hub>, phone: &str) -> Result<Peer> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let lookup = Arc::downgrade(hub);
    let bot = Bot::builder()
        .with_backend(InMemoryBackend::new())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(hub.ws_url.clone()))
        .with_http_client(LoopbackHttpClient::new(hub.http_url.clone()))
        .with_runtime(TokioRuntime)
        .with_version(CLIENT_VERSION)
        .skip_history_sync()
        .on_event(move |event, client| {
            let sink = sink.clone();
            let lookup = lookup.clone();
            async move {
                let Event::Messages(batch) = &*event else {
                    return;
                };
                for inbound in batch.messages.iter() {
                    if inbound.info.source.is_from_me {
                        continue;
                    }
                    let from = lookup.upgrade().map_or_else(
                        || inbound.info.source.sender.user.to_string(),
                        |hub| hub.phone_of(&inbound.info.source.sender.user),
                    );
                    let entry = describe(&client, &inbound.message, &inbound.info, from).await;
                    let mut list = sink.lock().expect("received lock");
                    if !list.iter().any(|r: &Received| r.id == entry.id) {
                        list.push(entry);
                    }
                }
            }
        })
        .build()
        .await
        .context("building a phone's client")?;
    let client = bot.client();
    let lid = {
        let mut state = hub.state.lock().expect("state lock");
        hub.account_mut(&mut state, phone).lid.clone()
    };
    let store = client.persistence_manager();
    store.process_command(DeviceCommand::SetId(Some(Jid::pn(phone)))).await;
    store.process_command(DeviceCommand::SetLid(Some(Jid::lid(lid)))).await;
    store
        .process_command(DeviceCommand::SetPushName(format!("+{phone}")))
        .await;
    let device = store.get_device_snapshot();
    {
        // The phone was registered with WhatsApp long ago: the server knows its keys.
        let mut state = hub.state.lock().expect("state lock");
        let account = hub.account_mut(&mut state, phone);
        account.devices.insert(
            0,
            Device {
                noise_pub: key_bytes(&device.noise_key),
                registration_id: device.registration_id,
                identity: key_bytes(&device.identity_key).to_vec(),
                signed_pre_key: Some(SignedPreKey {
                    id: device.signed_pre_key_id,
                    public: key_bytes(&device.signed_pre_key).to_vec(),
                    signature: device.signed_pre_key_signature.to_vec(),
                }),
                pre_keys: Default::default(),
                device_identity: None,
                key_index: 0,
                linked_at: now(),
                queue: Default::default(),
                unacked: Vec::new(),
                key_share_pending: false,
            },
        );
    }
    let identity = device.identity_key.clone();
    let handle = bot.spawn();
    client
        .wait_for_connected(Duration::from_secs(30))
        .await
        .with_context(|| format!("the phone of +{phone} did not connect"))?;
    // A phone about to link a device must have its own device list first: a list it fetched
    // before the link but stored after the server's "device added" notification would hide
    // the new device from it (the client ignores a notification for a list it does not hold).
    for _ in 0..500 {
        if hub.own_list_synced(phone) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(phone = %DeviceAddr::new(phone, 0).jid(), "phone online");
    Ok(Peer {
        client,
        identity,
        received,
        _handle: handle,
    })
}

/// What a phone does right after linking a device: it shares an app-state sync key with it.
/// The device waits a grace period for that key before its first app-state sync, so without it
/// `Connected` comes ten seconds later. (The collections are empty here; the key is never used
/// to decrypt anything.) If the phone's own device list was stale, the message leaves the new
/// device out; the server's phash in its ack makes the phone refetch the list, and it tries
/// again.
pub async fn share_app_state_key(hub: &Hub, device: &DeviceAddr) {
    let Some(phone) = hub.peers.get(&device.user) else {
        return;
    };
    for _ in 0..3 {
        let id = phone.client.generate_message_id();
        let sent = phone
            .client
            .send_message_with_options(
                Jid::pn(&device.user),
                key_share(),
                SendOptions::default().with_message_id(id.clone()),
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(phone = %device.user, error = %e, "the phone could not share its app-state key");
            return;
        }
        for _ in 0..100 {
            // `None` until the server routed it; then whether the new device was among its
            // recipients.
            let reached = hub
                .state
                .lock()
                .expect("state lock")
                .deliveries
                .get(&id)
                .map(|d| d.encrypted_for.contains(device));
            match reached {
                Some(true) => return,
                Some(false) => break,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key_share() -> wa::Message {
    use wa::message::protocol_message::Type;
    let key = wa::message::AppStateSyncKey {
        key_id: MessageField::some(wa::message::AppStateSyncKeyId {
            key_id: Some(rand::random::<[u8; 6]>().to_vec()),
        }),
        key_data: MessageField::some(wa::message::AppStateSyncKeyData {
            key_data: Some(rand::random::<[u8; 32]>().to_vec()),
            fingerprint: MessageField::some(wa::message::AppStateSyncKeyFingerprint {
                raw_id: Some(rand::random()),
                current_index: Some(0),
                device_indexes: vec![0],
            }),
            timestamp: Some(now() * 1000),
        }),
    };
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            r#type: Some(Type::APP_STATE_SYNC_KEY_SHARE),
            app_state_sync_key_share: MessageField::some(wa::message::AppStateSyncKeyShare { keys: vec![key] }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key_bytes(keys: &KeyPair) -> [u8; 32] {
    keys.public_key
        .public_key_bytes()
        .try_into()
        .expect("an X25519 public key is 32 bytes")
}

/// What `/_ctl/received` reports of a message: its text, or its media downloaded (through
/// this server's media endpoint) and decrypted by the phone's client.
async fn describe(client: &Client, message: &wa::Message, info: &MessageInfo, from: String) -> Received {
    let mut base = message.get_base_message();
    // An album child comes wrapped; the phone app shows the media inside.
    if let Some(inner) = base
        .associated_child_message
        .as_option()
        .and_then(|f| f.message.as_option())
    {
        base = inner.get_base_message();
    }
    let mut entry = Received {
        id: info.id.clone(),
        from,
        kind: "text",
        text: base.text_content().map(str::to_owned),
        caption: base.get_caption().map(str::to_owned),
        mime: None,
        bytes: None,
        sha256: None,
        file_name: None,
        reply_to: None,
        participant: None,
        expiration: None,
        seconds: None,
    };
    let media = if let Some(m) = base.image_message.as_option() {
        Some(MediaRef::new(
            "image",
            m,
            m.mimetype.as_deref(),
            m.context_info.as_option(),
        ))
    } else if let Some(m) = base.video_message.as_option() {
        entry.seconds = m.seconds;
        Some(MediaRef::new(
            "video",
            m,
            m.mimetype.as_deref(),
            m.context_info.as_option(),
        ))
    } else if let Some(m) = base.audio_message.as_option() {
        let kind = if m.ptt == Some(true) { "voice" } else { "audio" };
        entry.seconds = m.seconds;
        Some(MediaRef::new(
            kind,
            m,
            m.mimetype.as_deref(),
            m.context_info.as_option(),
        ))
    } else if let Some(m) = base.document_message.as_option() {
        entry.file_name = m.file_name.clone();
        Some(MediaRef::new(
            "document",
            m,
            m.mimetype.as_deref(),
            m.context_info.as_option(),
        ))
    } else {
        base.sticker_message
            .as_option()
            .map(|m| MediaRef::new("sticker", m, m.mimetype.as_deref(), m.context_info.as_option()))
    };
    let text_context = base
        .extended_text_message
        .as_option()
        .and_then(|m| m.context_info.as_option());
    if base.album_message.is_set() {
        entry.kind = "album";
    }
    let context = media.as_ref().map_or(text_context, |m| m.context);
    entry.reply_to = context.and_then(|c| c.stanza_id.clone());
    entry.participant = context.and_then(|c| c.participant.clone());
    entry.expiration = context.and_then(|c| c.expiration);
    if let Some(media) = media {
        entry.kind = media.kind;
        entry.mime = media.mime.map(str::to_owned);
        entry.text = None;
        match client.download(media.file).await {
            Ok(data) => {
                entry.bytes = Some(data.len());
                entry.sha256 = Some(hex(&Sha256::digest(&data)));
            }
            Err(e) => tracing::warn!(id = %info.id, error = %format!("{e:#}"), "media download failed"),
        }
    }
    entry
}

/// The parts of a media message `describe` reports.
struct MediaRef<'a> {
    kind: &'static str,
    file: &'a dyn Downloadable,
    mime: Option<&'a str>,
    context: Option<&'a wa::ContextInfo>,
}

impl<'a> MediaRef<'a> {
    fn new(
        kind: &'static str,
        file: &'a dyn Downloadable,
        mime: Option<&'a str>,
        context: Option<&'a wa::ContextInfo>,
    ) -> Self {
        Self {
            kind,
            file,
            mime,
            context,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
