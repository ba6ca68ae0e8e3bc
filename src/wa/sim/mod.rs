//! A simulated WhatsApp (`WAGHL_WA_BACKEND=sim`): waghl's test bench, and a demo mode for
//! people without a phone. It behaves like WhatsApp where waghl depends on it, not like a
//! happy path: QR codes rotate on WhatsApp's schedule and run out; a scan pairs and the
//! pairing survives restarts (the "keys" are a file under `sessions/sim/`); a network drop
//! heals by itself and messages sent meanwhile arrive afterwards; a logout or a ban is
//! terminal; sends get server acks and later receipts, and a resend of the same id is not a
//! second message; numbers ending in `0000` are not on WhatsApp and sends to numbers ending
//! in `9999` are refused by the server after they returned; a socket can die silently
//! (a zombie) for the health check to find.
//!
//! The control surface (`/sim/{id}/…`, see `http/sim.rs`) drives it as a phone and the
//! WhatsApp servers would.
//!
//! Several instances on one database: the servers' lasting state is the files under
//! `sessions/sim/` (a device's "keys", its sent log), so instances that share that directory
//! share one simulated WhatsApp, and a session resumes on whichever instance takes it. A control
//! call reaches the instance that runs the session (`http/forward.rs` passes it on). What the
//! servers hold only in memory — messages for a device that is offline, armed failures — stays
//! with that instance: a phone whose message was not acknowledged (its request failed or
//! answered `queued`) sends it again, as WhatsApp redelivers until a device acks, and the inbox
//! keeps one copy.
//!
//! `servers` plays WhatsApp's servers and the phones (the control surface calls it), `client`
//! the linked device waghl runs (the `Transport` seam), and `proto` turns what the phones send
//! into WhatsApp's own protobuf messages and back, through the real transport's `convert`.

mod client;
pub mod proto;
mod recent;
mod servers;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::random_hex;
use crate::domain::InboundMessage;
use crate::domain::phone::Phone;

pub use client::SimTransport;
pub use servers::SimWorld;

/// WhatsApp's QR schedule: the first code lives 60 s, then five more live 20 s each.
const FIRST_QR: Duration = Duration::from_secs(60);
const NEXT_QR: Duration = Duration::from_secs(20);
const MORE_QRS: usize = 5;
/// How long an inbound request waits for waghl to store the message.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client method that panics when called next (`POST /sim/{id}/panic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicAt {
    /// The session actor's health check asks for the link state.
    Link,
    /// The outbound relay resolves a recipient.
    OnWhatsapp,
    /// The inbound relay downloads media.
    Download,
}

type Held = (Box<InboundMessage>, Option<Vec<u8>>);

/// What a simulated device keeps on disk, as whatsapp-rust keeps its keys. What it sent is
/// kept apart, one JSON line per message appended (see [`SimSession::record_sent`]).
#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    phone: Option<String>,
    logged_out: bool,
    /// LID (digits) → phone, as revealed by WhatsApp.
    lids: HashMap<String, String>,
}

/// A message the bridge sent, as the recipient's phone would show it.
#[derive(Clone, Debug, Serialize)]
pub struct SentMessage {
    pub id: String,
    pub to: String,
    pub kind: String,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub mime: Option<String>,
    pub bytes: Option<usize>,
    pub file_name: Option<String>,
    pub reply_to: Option<String>,
    /// When WhatsApp accepted it (unix ms).
    pub at: i64,
}

/// Why a control request could not be carried out; the HTTP layer maps these to statuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("no simulated session runs for this location")]
    NoSession,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("waghl did not store the message in time")]
    NotStored,
}

/// What `inbound` did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// waghl stored it (and WhatsApp was acknowledged).
    Stored(String),
    /// The device is offline: WhatsApp holds it and delivers it on reconnect.
    Queued(String),
}

fn load(file: &Path) -> Persisted {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes a file readable only by waghl's user (mode 0600, directory 0700).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(tmp, path)
}

fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// `+15551234567` from a phone as the control API receives it.
fn e164(phone: &str) -> Result<String, SimError> {
    Phone::parse_international(phone)
        .map(Phone::into_string)
        .map_err(|e| SimError::Invalid(e.to_string()))
}

/// A new message id in WhatsApp Web's format.
pub fn message_id() -> String {
    format!("3EB0{}", random_hex(8).to_uppercase())
}
