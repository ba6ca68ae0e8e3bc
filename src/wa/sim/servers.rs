//! WhatsApp's servers and the phones, simulated: pairing, delivery (held while the device is
//! offline), receipts, drops, logouts, bans, LID reveals, and the failures tests ask for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::client::{SimSession, load_sent};
use super::proto::{self, Incoming};
use super::{Delivery, Held, PanicAt, STORE_TIMEOUT, SentMessage, SimError, e164};
use crate::domain::OutgoingContent;
use crate::wa::{Link, ParkReason, ReceiptStatus, Stored, WaEvent};

/// How long a simulated ban lasts (`POST /sim/{id}/ban`); the session tries again after it.
const SIM_BAN: Duration = Duration::from_secs(3600);

/// The simulated WhatsApp servers: every simulated session, and what they persisted.
pub struct SimWorld {
    pub(super) dir: PathBuf,
    /// Scales the QR schedule (1.0 = WhatsApp's real timings; tests use ~0.01).
    pub(super) time_scale: f64,
    sessions: Mutex<HashMap<String, Arc<SimSession>>>,
    /// Messages WhatsApp holds for each location while its device is offline; they outlive a
    /// client (a restarted client receives them).
    held: Mutex<HashMap<String, Arc<Mutex<Vec<Held>>>>>,
    /// Locations whose device store became unreadable: every start fails.
    pub(super) broken: Mutex<std::collections::HashSet<String>>,
    /// Armed by `POST /sim/{id}/panic`: the next call of that method of that location's client
    /// panics, so tests can prove a panic in waghl's tasks is caught (sim only).
    pub(super) panics: Arc<Mutex<std::collections::HashSet<(String, PanicAt)>>>,
}

impl SimWorld {
    pub fn new(sessions_dir: &Path, time_scale: f64) -> Arc<Self> {
        Arc::new(Self {
            dir: sessions_dir.join("sim"),
            time_scale,
            sessions: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            broken: Mutex::default(),
            panics: Arc::default(),
        })
    }

    pub(super) fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<SimSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, location: &str) -> Result<Arc<SimSession>, SimError> {
        self.sessions().get(location).cloned().ok_or(SimError::NoSession)
    }

    pub(super) fn held_for(&self, location: &str) -> Arc<Mutex<Vec<Held>>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(location.to_owned()).or_default().clone()
    }

    pub(super) fn file(&self, location: &str) -> PathBuf {
        self.dir.join(format!("{location}.json"))
    }

    /// The phone scans the QR code (or enters the pairing code): the device is linked.
    pub fn scan(&self, location: &str, phone: &str) -> Result<(), SimError> {
        let phone = e164(phone)?;
        if phone.ends_with("0000") {
            return Err(SimError::Invalid(format!("{phone} is not on WhatsApp")));
        }
        let session = self.session(location)?;
        {
            let mut state = session.state();
            if state.link != Link::Pairing {
                return Err(SimError::Conflict("the session is not pairing".into()));
            }
            state.link = Link::Connected;
            state.qr = None;
            state.pair_code = None;
            // New keys; the sent log stays (it is the phones' history).
            state.persisted.phone = Some(phone.clone());
            state.persisted.logged_out = false;
            state.persisted.lids.clear();
            session.save(&state.persisted);
        }
        session.emit(WaEvent::Paired { phone: phone.clone() });
        session.emit(WaEvent::Connected { phone });
        Ok(())
    }

    /// The current QR code of a pairing session.
    pub fn qr(&self, location: &str) -> Result<String, SimError> {
        self.session(location)?
            .state()
            .qr
            .clone()
            .ok_or_else(|| SimError::Conflict("no QR code is showing".into()))
    }

    /// A message arrives from WhatsApp. Answers once waghl stored it, or at once when the
    /// device is offline (WhatsApp holds it and delivers it on reconnect).
    pub async fn inbound(&self, location: &str, incoming: Incoming) -> Result<Delivery, SimError> {
        let session = self.session(location)?;
        let media_path = match &incoming.body {
            proto::Body::Content(OutgoingContent::Media { bytes, .. }) => {
                Some(session.store_media(&incoming.id, bytes)?)
            }
            _ => None,
        };
        let (message, media_ref) = proto::deliver(&incoming, media_path.as_deref())
            .ok_or_else(|| SimError::Invalid("WhatsApp would not deliver this as a message".into()))?;
        let message = Box::new(message);
        let id = message.id.clone();
        {
            // Under the state lock, so a reconnect cannot drain the queue in between.
            let state = session.state();
            if state.persisted.phone.is_none() || state.persisted.logged_out {
                return Err(SimError::Conflict("the session is not paired".into()));
            }
            if state.link != Link::Connected {
                session.held().push((message, media_ref));
                return Ok(Delivery::Queued(id));
            }
        }
        let (stored, confirmed) = Stored::new();
        session.emit(WaEvent::Message {
            message,
            media_ref,
            stored,
        });
        match tokio::time::timeout(STORE_TIMEOUT, confirmed).await {
            Ok(Ok(())) => Ok(Delivery::Stored(id)),
            _ => Err(SimError::NotStored),
        }
    }

    /// WhatsApp reports that the recipient's phone received or read a message.
    pub fn receipt(&self, location: &str, id: &str, status: ReceiptStatus) -> Result<(), SimError> {
        let session = self.session(location)?;
        if !session.state().sent_ids.contains(id) {
            return Err(SimError::Invalid(format!("no message {id} was sent")));
        }
        session.emit(WaEvent::Receipt {
            ids: vec![id.to_owned()],
            status,
        });
        Ok(())
    }

    /// The network drops for `seconds`; the transport reconnects by itself afterwards.
    pub fn disconnect(&self, location: &str, seconds: f64) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.go_offline()?;
        let down = Duration::from_secs_f64(seconds.max(0.0));
        let reconnecting = session.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = reconnecting.cancel.cancelled() => {}
                () = tokio::time::sleep(down) => reconnecting.come_online(),
            }
        });
        Ok(())
    }

    /// The phone removes the linked device: terminal.
    pub fn logout(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.mark_logged_out();
        session.emit(WaEvent::LoggedOut);
        session.end();
        Ok(())
    }

    /// WhatsApp bans the number for an hour.
    pub fn ban(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.emit(WaEvent::Parked(ParkReason::TemporaryBan { ends_in: Some(SIM_BAN) }));
        session.end();
        Ok(())
    }

    /// The socket dies without any event: the client still claims to run (a zombie).
    pub fn kill_silently(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.state().link = Link::Dead;
        Ok(())
    }

    /// The device's key store becomes unreadable: from now on every start of this location's
    /// client fails, as a corrupted store would make it.
    pub fn break_store(&self, location: &str) {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(location.to_owned());
    }

    /// The next call of `at` on this location's client panics.
    pub fn arm_panic(&self, location: &str, at: PanicAt) {
        self.panics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((location.to_owned(), at));
    }

    /// WhatsApp reveals the phone behind a LID.
    pub fn reveal_lid(&self, location: &str, lid: &str, phone: &str) -> Result<(), SimError> {
        let phone = e164(phone)?;
        let lid = lid.trim_end_matches("@lid").to_owned();
        let session = self.session(location)?;
        {
            let mut state = session.state();
            state.persisted.lids.insert(lid.clone(), phone.clone());
            session.save(&state.persisted);
        }
        session.emit(WaEvent::LidMapping { lid, phone });
        Ok(())
    }

    /// What the bridge sent, oldest first; read from disk, so it survives restarts.
    pub fn sent(&self, location: &str) -> Vec<SentMessage> {
        load_sent(&self.sent_file(location))
            .iter()
            .map(|line| line.shown())
            .collect()
    }

    pub(super) fn sent_file(&self, location: &str) -> PathBuf {
        self.dir.join(format!("{location}.sent.jsonl"))
    }
}
