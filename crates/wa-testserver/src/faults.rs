//! What goes wrong on the real network, on demand: a dropped socket, the phone removing the
//! linked device, a temporary ban, another client taking the stream, a rejected client
//! version, a device the server stops delivering to, and message stanzas lost unacked.
//! Each uses the stanza WhatsApp's server sends in that case (the client's handlers in
//! whatsapp-rust `client/node_io.rs` are the reference).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whatsapp_rust::wacore_binary::builder::NodeBuilder;

use crate::Hub;
use crate::conn::replaced;
use crate::routing::devices_notification;
use crate::state::{DeviceAddr, Out, now};

#[derive(Default)]
pub struct Faults {
    /// Accounts whose linked devices are refused at login until then.
    bans: Mutex<HashMap<String, Instant>>,
    /// Accounts whose linked devices are refused at login as outdated clients: always
    /// (`None`) or when the client announces a revision below this one.
    outdated: Mutex<HashMap<String, Option<u32>>>,
    /// Until then the server takes no new connection: each is closed before the handshake, as
    /// an unreachable network looks to a client (connections already open are unaffected).
    unreachable: Mutex<Option<Instant>>,
    /// Devices whose message stanzas the server swallows until then.
    holds: Mutex<HashMap<DeviceAddr, Instant>>,
    /// Accounts the server refuses messages to, with the error code of its nack (as when a
    /// recipient blocked the sender or needs a token the sender lacks).
    refusals: Mutex<HashMap<String, String>>,
    /// The last presence each device set.
    presence: Mutex<HashMap<DeviceAddr, String>>,
}

impl Faults {
    /// What a linked device gets at login while banned or outdated: a `<failure>` and the
    /// close. `revision` is the client's announced app version.
    pub fn login_failure(&self, addr: &DeviceAddr, revision: u32) -> Option<Out> {
        if addr.device == 0 {
            return None;
        }
        if let Some(until) = self.bans.lock().expect("bans lock").get(&addr.user)
            && let Some(left) = until.checked_duration_since(Instant::now())
        {
            return Some(Out::CloseWith(
                NodeBuilder::new("failure")
                    .attr("reason", "402")
                    .attr("code", "101")
                    .attr("expire", left.as_secs().max(1).to_string())
                    .build(),
            ));
        }
        if let Some(below) = self.outdated.lock().expect("outdated lock").get(&addr.user)
            && below.is_none_or(|below| revision < below)
        {
            return Some(Out::CloseWith(
                NodeBuilder::new("failure").attr("reason", "405").build(),
            ));
        }
        None
    }

    /// Whether a new connection is to be closed at once (see [`restart_streams`]).
    pub fn unreachable(&self) -> bool {
        self.unreachable
            .lock()
            .expect("unreachable lock")
            .is_some_and(|until| until > Instant::now())
    }

    pub fn holding(&self, addr: &DeviceAddr) -> bool {
        self.holds
            .lock()
            .expect("holds lock")
            .get(addr)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The error code the server nacks messages to this account with, if it refuses them.
    pub fn refusal(&self, user: &str) -> Option<String> {
        self.refusals.lock().expect("refusals lock").get(user).cloned()
    }

    pub fn set_presence(&self, addr: &DeviceAddr, kind: String) {
        self.presence.lock().expect("presence lock").insert(addr.clone(), kind);
    }

    /// The presence last set by a linked device of `phone`.
    pub fn presence(&self, phone: &str) -> Option<String> {
        let presence = self.presence.lock().expect("presence lock");
        presence
            .iter()
            .filter(|(addr, _)| addr.user == phone && addr.device != 0)
            .max_by_key(|(addr, _)| addr.device)
            .map(|(_, kind)| kind.clone())
    }
}

/// The connected linked devices (not the phone) of an account.
fn linked_online(hub: &Hub, phone: &str) -> Vec<(DeviceAddr, tokio::sync::mpsc::UnboundedSender<Out>)> {
    let state = hub.state.lock().expect("state lock");
    state
        .online
        .iter()
        .filter(|(addr, _)| addr.user == phone && addr.device != 0)
        .map(|(addr, online)| (addr.clone(), online.tx.clone()))
        .collect()
}

fn linked(hub: &Hub, phone: &str) -> Vec<DeviceAddr> {
    let state = hub.state.lock().expect("state lock");
    state
        .accounts
        .get(phone)
        .map(|a| {
            a.devices
                .keys()
                .filter(|d| **d != 0)
                .map(|d| DeviceAddr::new(phone, *d))
                .collect()
        })
        .unwrap_or_default()
}

/// Closes the linked devices' sockets without a word; they must reconnect by themselves.
pub fn drop_links(hub: &Hub, phone: &str) -> usize {
    let online = linked_online(hub, phone);
    for (_, tx) in &online {
        let _ = tx.send(Out::Drop);
    }
    online.len()
}

/// The phone removes its linked devices: a connected one is told
/// `<stream:error code="401"><conflict type="device_removed"/>` (the client logs out); one
/// that is offline gets `<failure reason="401">` at its next login, since the server no longer
/// knows it. Everyone else learns of the removal from a devices notification.
pub fn logout(hub: &Hub, phone: &str) -> usize {
    remove_linked(hub, phone, None)
}

/// Removes the linked devices of `phone` (all of them, or only `only`), as [`logout`] says.
/// A linked device asking to be removed (`remove-companion-device`) goes the same way.
pub fn remove_linked(hub: &Hub, phone: &str, only: Option<u16>) -> usize {
    let chosen = |device: u16| device != 0 && only.is_none_or(|o| o == device);
    let removed_error = NodeBuilder::new("stream:error")
        .attr("code", "401")
        .children([NodeBuilder::new("conflict").attr("type", "device_removed").build()])
        .build();
    for (addr, tx) in linked_online(hub, phone) {
        if chosen(addr.device) {
            let _ = tx.send(Out::CloseWith(removed_error.clone()));
        }
    }
    let mut state = hub.state.lock().expect("state lock");
    let Some(account) = state.accounts.get_mut(phone) else {
        return 0;
    };
    let removed: Vec<(u16, u32)> = account
        .devices
        .iter()
        .filter(|(id, _)| chosen(**id))
        .map(|(id, d)| (*id, d.key_index))
        .collect();
    account.devices.retain(|id, _| !chosen(*id));
    account.devices_changed_at = now();
    let ts = account.devices_changed_at;
    for (device, key_index) in &removed {
        let node = devices_notification(phone, *device, *key_index, false, ts, None);
        for online in state.online.values() {
            let _ = online.tx.send(Out::Node(node.clone()));
        }
    }
    removed.len()
}

/// A temporary ban: the linked devices are dropped and refused at login (`<failure
/// reason="402" code expire>`, the client's `TemporaryBan`) until it expires.
pub fn ban(hub: &Hub, phone: &str, seconds: u64) {
    hub.faults
        .bans
        .lock()
        .expect("bans lock")
        .insert(phone.to_owned(), Instant::now() + Duration::from_secs(seconds));
    drop_links(hub, phone);
}

/// Another client takes the linked devices' stream: `<stream:error><conflict
/// type="replaced"/>` (the client's `StreamReplaced`).
pub fn replace(hub: &Hub, phone: &str) -> usize {
    let online = linked_online(hub, phone);
    for (_, tx) in &online {
        let _ = tx.send(Out::CloseWith(replaced()));
    }
    online.len()
}

/// From now on the linked devices' logins are refused as an outdated client version
/// (`<failure reason="405">`, the client's `ClientOutdated`): every login, or with `below`
/// only those announcing an older revision (a client that fetched the current one gets in).
pub fn outdated(hub: &Hub, phone: &str, below: Option<u32>) {
    hub.faults
        .outdated
        .lock()
        .expect("outdated lock")
        .insert(phone.to_owned(), below);
    drop_links(hub, phone);
}

/// The server restarts the linked devices' streams (`<stream:error code="515"/>`, which the
/// client answers by reconnecting at once, without reporting a disconnection), and for
/// `seconds` it takes no new connection, so the client sits in its own reconnect loop.
pub fn restart_streams(hub: &Hub, phone: &str, seconds: u64) -> usize {
    *hub.faults.unreachable.lock().expect("unreachable lock") = Some(Instant::now() + Duration::from_secs(seconds));
    let restart = NodeBuilder::new("stream:error").attr("code", "515").build();
    let online = linked_online(hub, phone);
    for (_, tx) in &online {
        let _ = tx.send(Out::CloseWith(restart.clone()));
    }
    online.len()
}

/// From now on the server answers every message to `phone` with `<ack error=code>` and routes
/// none: the nack whatsapp-rust's `take_ack_waiter` reports (e.g. 463, 479, 404).
pub fn refuse(hub: &Hub, phone: &str, code: &str) {
    hub.faults
        .refusals
        .lock()
        .expect("refusals lock")
        .insert(phone.to_owned(), code.to_owned());
}

/// For `seconds` the server delivers nothing to the linked devices and queues it; then it
/// drops their sockets, and they receive the queue as offline messages when they reconnect.
pub fn offline(hub: &Arc<Hub>, phone: &str, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let devices = linked(hub, phone);
    hub.state
        .lock()
        .expect("state lock")
        .paused
        .extend(devices.into_iter().map(|a| (a, until)));
    let hub = hub.clone();
    let phone = phone.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        hub.state
            .lock()
            .expect("state lock")
            .paused
            .retain(|a, _| a.user != phone);
        drop_links(&hub, &phone);
    });
}

/// For `seconds` the server takes the linked devices' message stanzas but neither acks nor
/// delivers them, then drops their sockets: as if the frames had been written just before a
/// network failure.
pub fn hold_acks(hub: &Arc<Hub>, phone: &str, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let devices = linked(hub, phone);
    hub.faults
        .holds
        .lock()
        .expect("holds lock")
        .extend(devices.into_iter().map(|a| (a, until)));
    let hub = hub.clone();
    let phone = phone.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        drop_links(&hub, &phone);
        hub.faults
            .holds
            .lock()
            .expect("holds lock")
            .retain(|a, _| a.user != phone);
    });
}
