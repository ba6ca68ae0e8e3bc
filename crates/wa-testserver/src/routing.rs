//! Routing between devices, as WhatsApp's server does it: a `<message>` carries one encrypted
//! payload per recipient device (`<participants><to jid>…`); each device gets its own
//! `<message>` with that payload, the sender gets the server's `<ack>`, and receipts flow back
//! from the recipient devices to every device of the sender.
//!
//! The server never decrypts: the payloads are Signal ciphertexts between real clients.

use std::sync::Arc;

use whatsapp_rust::wacore::messages::MessageUtils;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node};

use crate::Hub;
use crate::conn::Conn;
use crate::nodes::{SERVER, addr_of, attr, child, children, jid_attr};
use crate::state::{DeviceAddr, State, Stats, now};

/// Receipt types that mean "this device has the message" (the client's delivery receipt is
/// its acknowledgement of a message stanza).
const DELIVERY_TYPES: &[&str] = &["", "inactive", "sender", "peer_msg"];

pub fn message(hub: &Arc<Hub>, conn: &Conn, node: Node) {
    let Some(sender) = conn.device().cloned() else {
        return;
    };
    if hub.faults.holding(&sender) {
        // As if the frame had been written just before a network failure: never seen.
        return;
    }
    let id = attr(&node, "id").unwrap_or_default();
    let Some(to) = jid_attr(&node, "to") else {
        return;
    };
    let t = now().to_string();
    let mut state = hub.state.lock().expect("state lock");
    let Some(to_user) = addr_of(&to).and_then(|a| state.resolve_user(&a.user)) else {
        drop(state);
        conn.send(ack(&id, &to, Some("404")));
        return;
    };
    if let Some(code) = hub.faults.refusal(&to_user) {
        drop(state);
        conn.send(ack(&id, &to, Some(&code)));
        return;
    }
    // Everything but the per-device payloads goes to every device.
    let shared: Vec<Node> = children(&node)
        .iter()
        .filter(|c| c.tag != "participants" && c.tag != "enc")
        .cloned()
        .collect();
    let targets: Vec<(Jid, Vec<Node>)> = match child(&node, "participants") {
        Some(participants) => children(participants)
            .iter()
            .filter_map(|p| Some((jid_attr(p, "jid")?, children(p).to_vec())))
            .collect(),
        None => vec![(
            to.clone(),
            children(&node).iter().filter(|c| c.tag == "enc").cloned().collect(),
        )],
    };
    // WhatsApp does not give view-once media to companion devices: they get a stub they
    // cannot open (the client's `UndecryptableMessage` of type view-once).
    let view_once = child(&node, "meta").and_then(|m| attr(m, "view_once")).as_deref() == Some("true");
    let sender_attrs = state.sender_attrs(&sender);
    let phash = participant_hash(&state, &sender, &to_user, &targets);
    let mut delivered = Vec::new();
    let mut encrypted_for = Vec::new();
    for (jid, mut payload) in targets {
        let Some(addr) = addr_of(&jid).and_then(|a| Some(DeviceAddr::new(state.resolve_user(&a.user)?, a.device)))
        else {
            continue;
        };
        if view_once && addr.device != 0 {
            payload = vec![NodeBuilder::new("unavailable").attr("type", "view_once").build()];
        }
        encrypted_for.push(addr.clone());
        let own = addr.user == sender.user;
        let mut stanza = NodeBuilder::new("message").attr("id", id.clone()).attr("t", t.clone());
        if own {
            stanza = stanza.attr("from", sender.jid());
        } else {
            for (key, value) in &sender_attrs {
                stanza = stanza.attr(key, value.clone());
            }
        }
        if let Some(kind) = attr(&node, "type") {
            stanza = stanza.attr("type", kind);
        }
        if addr.user == sender.user {
            // A copy for the sender's own other devices names the chat it was sent to, and
            // for a chat addressed by LID the peer's number too.
            stanza = stanza.attr("recipient", to.to_non_ad().to_string());
            if to.is_lid() {
                stanza = stanza.attr("peer_recipient_pn", format!("{to_user}@{SERVER}"));
            }
        }
        let stanza = stanza
            .children(payload.into_iter().chain(shared.iter().cloned()))
            .build();
        let own = addr.user == sender.user;
        if state.deliver(&addr, stanza) && !own {
            delivered.push(addr);
        }
    }
    let entry = state.deliveries.entry(id.clone()).or_default();
    entry.delivered_to.extend(delivered);
    entry.encrypted_for.extend(encrypted_for);
    drop(state);
    Stats::bump(&hub.stats.messages_routed);
    tracing::debug!(%id, from = %sender.jid(), to = %to_user, "message routed");
    let mut ack = ack(&id, &to, None);
    if let Some(phash) = phash {
        ack.attrs.insert("phash", phash);
    }
    conn.send(ack);
}

/// The participant hash the server puts in its ack: over the devices the sender encrypted for,
/// plus any device of the recipient or of the sender's own account that it left out. The
/// client compares it with its own hash of what it sent; a difference (a device list it held
/// was stale) makes it drop its cached lists, so its next send fetches them again.
fn participant_hash(
    state: &State,
    sender: &DeviceAddr,
    recipient: &str,
    targets: &[(Jid, Vec<Node>)],
) -> Option<String> {
    let mut devices: Vec<Jid> = targets.iter().map(|(jid, _)| jid.clone()).collect();
    let present: Vec<DeviceAddr> = targets
        .iter()
        .filter_map(|(jid, _)| addr_of(jid).and_then(|a| Some(DeviceAddr::new(state.resolve_user(&a.user)?, a.device))))
        .collect();
    for user in [recipient, sender.user.as_str()] {
        let known = state
            .accounts
            .get(user)
            .map(|a| a.devices.keys().copied().collect::<Vec<_>>())
            .unwrap_or_default();
        for device in known {
            let addr = DeviceAddr::new(user, device);
            if addr != *sender && !present.contains(&addr) {
                devices.push(Jid::pn_device(user, device));
            }
        }
    }
    MessageUtils::participant_list_hash(&devices).ok()
}

/// The server's acknowledgement of a message stanza (`error` set when it was refused).
fn ack(id: &str, to: &Jid, error: Option<&str>) -> Node {
    let mut builder = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id)
        .attr("from", to.to_non_ad().to_string())
        .attr("t", now().to_string());
    if let Some(code) = error {
        builder = builder.attr("error", code);
    }
    builder.build()
}

pub fn receipt(hub: &Arc<Hub>, conn: &Conn, node: Node) {
    let Some(from) = conn.device().cloned() else {
        return;
    };
    let id = attr(&node, "id").unwrap_or_default();
    let kind = attr(&node, "type").unwrap_or_default();
    let Some(to) = jid_attr(&node, "to") else {
        return;
    };
    let mut ack = NodeBuilder::new("ack")
        .attr("class", "receipt")
        .attr("id", id.clone())
        .attr("from", to.to_string());
    if !kind.is_empty() {
        ack = ack.attr("type", kind.clone());
    }
    conn.send(ack.build());

    let mut ids = vec![id.clone()];
    if let Some(list) = child(&node, "list") {
        ids.extend(children(list).iter().filter_map(|item| attr(item, "id")));
    }
    let mut state = hub.state.lock().expect("state lock");
    // Any answer but a retry request settles the message for this device; a retry means it
    // could not decrypt, and the copy stays until the sender's resend is acknowledged.
    if kind != "retry" {
        state.acknowledged(&from, &ids);
    }
    if DELIVERY_TYPES.contains(&kind.as_str()) {
        for id in &ids {
            let entry = state.deliveries.entry(id.clone()).or_default();
            if !entry.acked_by.contains(&from) {
                entry.acked_by.push(from.clone());
            }
        }
    }
    let Some(owner) = addr_of(&to).and_then(|a| state.resolve_user(&a.user)) else {
        return;
    };
    // Every device of the message's sender learns of it, except the one that sent the receipt.
    let devices: Vec<u16> = state
        .accounts
        .get(&owner)
        .map(|a| a.devices.keys().copied().collect())
        .unwrap_or_default();
    let mut forwarded = NodeBuilder::new("receipt").attr("id", id).attr("t", now().to_string());
    if from.user == owner {
        forwarded = forwarded.attr("from", from.jid());
    } else {
        for (key, value) in state.sender_attrs(&from) {
            forwarded = forwarded.attr(key, value);
        }
    }
    for key in ["type", "recipient", "participant"] {
        if let Some(value) = attr(&node, key) {
            forwarded = forwarded.attr(key, value);
        }
    }
    let forwarded = forwarded
        .children(children(&node).iter().filter(|c| c.tag != "enc").cloned())
        .build();
    for device in devices {
        let addr = DeviceAddr::new(owner.clone(), device);
        if addr != from {
            state.deliver(&addr, forwarded.clone());
        }
    }
}

/// A client's `<ack>`: for a message, the device refused or could not use it (a nack); for a
/// receipt, the device has it. Either way WhatsApp stops delivering it.
pub fn client_ack(hub: &Arc<Hub>, conn: &Conn, node: &Node) {
    let (Some(from), Some(id)) = (conn.device(), attr(node, "id")) else {
        return;
    };
    let mut state = hub.state.lock().expect("state lock");
    match attr(node, "class").as_deref() {
        Some("message") => state.acknowledged(from, &[id]),
        Some("receipt") => state.receipt_acknowledged(from, &id, &attr(node, "type").unwrap_or_default()),
        _ => {}
    }
}

/// `<notification type="devices">` telling everyone online that an account's device list
/// changed, so cached lists are refreshed (wacore `stanza/devices.rs` reads it).
pub fn devices_notification(
    phone: &str,
    device: u16,
    key_index: u32,
    added: bool,
    ts: i64,
    list: Option<Vec<u8>>,
) -> Node {
    let mut key_index_list = NodeBuilder::new("key-index-list").attr("ts", ts.to_string());
    if let Some(list) = list {
        key_index_list = key_index_list.bytes(list);
    }
    let device = NodeBuilder::new("device")
        .attr("jid", DeviceAddr::new(phone, device).jid())
        .attr("key-index", key_index.to_string())
        .build();
    NodeBuilder::new("notification")
        .attr("from", format!("{phone}@{SERVER}"))
        .attr("type", "devices")
        .attr("id", crate::nodes::server_id())
        .attr("t", ts.to_string())
        .children([NodeBuilder::new(if added { "add" } else { "remove" })
            .children([device, key_index_list.build()])
            .build()])
        .build()
}
