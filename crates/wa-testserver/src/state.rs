//! What the server knows, in memory: accounts and their devices (keys, prekeys, offline
//! queues), which devices are connected, pairings in progress, and counters.
//!
//! One `std::sync::Mutex` guards it all; it is never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use whatsapp_rust::wacore_binary::Node;

/// A device's address: the account's phone digits and the device number (0 = the phone).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr {
    pub user: String,
    pub device: u16,
}

impl DeviceAddr {
    pub fn new(user: impl Into<String>, device: u16) -> Self {
        Self {
            user: user.into(),
            device,
        }
    }

    /// `user:device@s.whatsapp.net`, or `user@s.whatsapp.net` for the phone.
    pub fn jid(&self) -> String {
        if self.device == 0 {
            format!("{}@s.whatsapp.net", self.user)
        } else {
            format!("{}:{}@s.whatsapp.net", self.user, self.device)
        }
    }
}

/// The signed prekey of a device, as uploaded.
#[derive(Clone, Debug)]
pub struct SignedPreKey {
    pub id: u32,
    pub public: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What the server stores of a device: the keys other clients fetch to talk to it.
#[derive(Debug)]
pub struct Device {
    pub noise_pub: [u8; 32],
    pub registration_id: u32,
    pub identity: Vec<u8>,
    pub signed_pre_key: Option<SignedPreKey>,
    /// One-time prekeys; each bundle fetch hands one out and forgets it, like WhatsApp.
    pub pre_keys: VecDeque<(u32, Vec<u8>)>,
    /// The companion's `ADVSignedDeviceIdentity` (with its device signature), served with its
    /// prekey bundle; `None` for the phone.
    pub device_identity: Option<Vec<u8>>,
    pub key_index: u32,
    pub linked_at: i64,
    /// Stanzas for this device that it has not been sent yet (it was offline), oldest first.
    pub queue: VecDeque<Node>,
    /// Messages and receipts written to the device that it has not acknowledged yet, oldest
    /// first: WhatsApp delivers both again at the next login until the device's `<ack>`.
    pub unacked: Vec<(Unacked, Node)>,
    /// A new companion whose phone has not shared its app-state key with it yet; the phone
    /// does once the device is first active (by then the phone knows the device).
    pub key_share_pending: bool,
}

/// What a device's `<ack>` names: the stanza's kind (`class`), its id and, for a receipt, its
/// type (a message's delivery and read receipts share its id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unacked {
    pub class: String,
    pub id: String,
    pub kind: String,
}

impl Device {
    /// A stanza written to the device: a message or a receipt stays on the server until
    /// acknowledged (a receipt written to a socket that dropped is not lost).
    pub fn in_flight(&mut self, node: Node) {
        if (node.tag == "message" || node.tag == "receipt")
            && let Some(id) = node.attrs.get("id")
        {
            let key = Unacked {
                class: node.tag.to_string(),
                id: id.as_str().into_owned(),
                kind: node
                    .attrs
                    .get("type")
                    .map(|t| t.as_str().into_owned())
                    .unwrap_or_default(),
            };
            self.unacked.push((key, node));
        }
    }
}

#[derive(Debug)]
pub struct Account {
    pub lid: String,
    /// Known to others only by its LID: its messages come from `lid@lid` without the
    /// `sender_pn` that would reveal the number (`/_ctl/send` with `lid`, until
    /// `/_ctl/reveal-lid`).
    pub lid_only: bool,
    /// Was `lid_only`, then revealed: messages come from its LID with `sender_pn`.
    pub lid_revealed: bool,
    pub devices: BTreeMap<u16, Device>,
    pub next_device: u16,
    /// When the device list last changed (the key-index list's timestamp).
    pub devices_changed_at: i64,
}

/// A message sent through the server, for `/_ctl/acked`.
#[derive(Default, Debug, Clone)]
pub struct Delivery {
    /// The recipient's devices the server handed the message to.
    pub delivered_to: Vec<DeviceAddr>,
    /// The recipient's devices that sent their delivery receipt.
    pub acked_by: Vec<DeviceAddr>,
    /// Every device the sender encrypted the message for, its own other devices included.
    pub encrypted_for: Vec<DeviceAddr>,
}

/// Commands to a connection's writer task.
#[derive(Debug)]
pub enum Out {
    Node(Node),
    /// Write this stanza (a `stream:error` or `failure`), then close the socket.
    CloseWith(Node),
    /// Close the socket without a word, like a network failure.
    Drop,
}

/// A connected, logged-in device.
pub struct Online {
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Out>,
    /// Passive until the client sends `<active/>`: WhatsApp holds messages until then.
    pub active: bool,
}

#[derive(Default)]
pub struct State {
    pub accounts: HashMap<String, Account>,
    pub online: HashMap<DeviceAddr, Online>,
    pub deliveries: HashMap<String, Delivery>,
    /// Devices the server delivers nothing to until then; their stanzas queue up.
    pub paused: HashMap<DeviceAddr, Instant>,
}

impl State {
    /// The account behind a user part, which is either its phone digits or its LID.
    pub fn resolve_user(&self, user: &str) -> Option<String> {
        if self.accounts.contains_key(user) {
            return Some(user.to_owned());
        }
        self.accounts
            .iter()
            .find(|(_, a)| a.lid == user)
            .map(|(phone, _)| phone.clone())
    }

    /// How a stanza from `addr` names its sender: the phone-number JID, or for an account
    /// addressed by LID its LID JID and, once revealed, the number as `sender_pn`.
    pub fn sender_attrs(&self, addr: &DeviceAddr) -> Vec<(&'static str, String)> {
        match self.accounts.get(&addr.user) {
            Some(account) if account.lid_only => vec![("from", lid_jid(&account.lid, addr.device))],
            Some(account) if account.lid_revealed => vec![
                ("from", lid_jid(&account.lid, addr.device)),
                ("sender_pn", format!("{}@s.whatsapp.net", addr.user)),
            ],
            _ => vec![("from", addr.jid())],
        }
    }

    pub fn device(&self, addr: &DeviceAddr) -> Option<&Device> {
        self.accounts.get(&addr.user)?.devices.get(&addr.device)
    }

    pub fn device_mut(&mut self, addr: &DeviceAddr) -> Option<&mut Device> {
        self.accounts.get_mut(&addr.user)?.devices.get_mut(&addr.device)
    }

    pub fn paused(&self, addr: &DeviceAddr) -> bool {
        self.paused.get(addr).is_some_and(|until| *until > Instant::now())
    }

    /// Sends a stanza to a device now if it is connected and active, else queues it for its
    /// next login. Returns whether it went out now.
    pub fn deliver(&mut self, to: &DeviceAddr, node: Node) -> bool {
        let sent = !self.paused(to)
            && self
                .online
                .get(to)
                .is_some_and(|online| online.active && online.tx.send(Out::Node(node.clone())).is_ok());
        if let Some(device) = self.device_mut(to) {
            if sent {
                device.in_flight(node);
            } else {
                device.queue.push_back(node);
            }
        }
        sent
    }

    /// The device acknowledged these messages (its receipt or its `<ack>`): WhatsApp forgets
    /// them.
    pub fn acknowledged(&mut self, by: &DeviceAddr, ids: &[String]) {
        if let Some(device) = self.device_mut(by) {
            device
                .unacked
                .retain(|(key, _)| key.class != "message" || !ids.contains(&key.id));
        }
    }

    /// The device acknowledged a receipt written to it: WhatsApp forgets it.
    pub fn receipt_acknowledged(&mut self, by: &DeviceAddr, id: &str, kind: &str) {
        if let Some(device) = self.device_mut(by) {
            device
                .unacked
                .retain(|(key, _)| !(key.class == "receipt" && key.id == id && key.kind == kind));
        }
    }

    /// The device's connection ended: what it did not acknowledge goes back to the head of its
    /// queue, to be delivered again at its next login.
    pub fn requeue_unacked(&mut self, addr: &DeviceAddr) {
        if let Some(device) = self.device_mut(addr) {
            for (_, node) in device.unacked.drain(..).rev() {
                device.queue.push_front(node);
            }
        }
    }
}

fn lid_jid(lid: &str, device: u16) -> String {
    if device == 0 {
        format!("{lid}@lid")
    } else {
        format!("{lid}:{device}@lid")
    }
}

/// Counters for `/_ctl/stats`.
#[derive(Default)]
pub struct Stats {
    pub usync_queries: AtomicU64,
    /// usync queries asking whether numbers are on WhatsApp (the `contact` protocol).
    pub contact_lookups: AtomicU64,
    pub prekey_fetches: AtomicU64,
    pub connects: AtomicU64,
    pub messages_routed: AtomicU64,
    pub sw_js_fetches: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "usync_queries": self.usync_queries.load(Ordering::Relaxed),
            "contact_lookups": self.contact_lookups.load(Ordering::Relaxed),
            "prekey_fetches": self.prekey_fetches.load(Ordering::Relaxed),
            "connects": self.connects.load(Ordering::Relaxed),
            "messages_routed": self.messages_routed.load(Ordering::Relaxed),
            "sw_js_fetches": self.sw_js_fetches.load(Ordering::Relaxed),
        })
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use whatsapp_rust::wacore_binary::builder::NodeBuilder;

    use super::*;

    fn device() -> Device {
        Device {
            noise_pub: [0; 32],
            registration_id: 1,
            identity: Vec::new(),
            signed_pre_key: None,
            pre_keys: VecDeque::new(),
            device_identity: None,
            key_index: 0,
            linked_at: 0,
            queue: VecDeque::new(),
            unacked: Vec::new(),
            key_share_pending: false,
        }
    }

    /// A receipt written to a connection that then ended is delivered again at the next login,
    /// until the device's `<ack class="receipt">` for that id and type.
    #[test]
    fn a_receipt_written_to_a_dropped_link_is_delivered_again_until_acknowledged() {
        let addr = DeviceAddr::new("15550001", 0);
        let mut state = State::default();
        let mut account = Account {
            lid: "1".into(),
            lid_only: false,
            lid_revealed: false,
            devices: BTreeMap::new(),
            next_device: 1,
            devices_changed_at: 0,
        };
        account.devices.insert(0, device());
        state.accounts.insert(addr.user.clone(), account);
        let delivered = NodeBuilder::new("receipt").attr("id", "M1").build();
        let read = NodeBuilder::new("receipt")
            .attr("id", "M1")
            .attr("type", "read")
            .build();
        let device = state.device_mut(&addr).unwrap();
        device.in_flight(delivered);
        device.in_flight(read);

        state.requeue_unacked(&addr);
        assert_eq!(
            state.device_mut(&addr).unwrap().queue.len(),
            2,
            "both receipts wait for the next login"
        );

        let queued: Vec<Node> = state.device_mut(&addr).unwrap().queue.drain(..).collect();
        for node in queued {
            state.device_mut(&addr).unwrap().in_flight(node);
        }
        // The read receipt's ack leaves the delivery receipt unacknowledged; a message ack with
        // the same id acknowledges no receipt.
        state.receipt_acknowledged(&addr, "M1", "read");
        state.acknowledged(&addr, &["M1".to_owned()]);
        let left: Vec<&Unacked> = state
            .device_mut(&addr)
            .unwrap()
            .unacked
            .iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].class.as_str(), left[0].kind.as_str()), ("receipt", ""));
        state.receipt_acknowledged(&addr, "M1", "");
        assert!(state.device_mut(&addr).unwrap().unacked.is_empty());
    }
}
