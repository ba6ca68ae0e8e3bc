//! What a phone sends a device it has just linked: the initial history sync, inline in an
//! end-to-end encrypted protocol message (the `inline_initial_payload_in_e2_ee_msg` the client
//! announces). Only its phone-number-to-LID mappings are filled in: the chats of the phone
//! that the device knows only by LID.

use std::time::Duration;

use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Jid, SendOptions};

use crate::Hub;

/// The phone of `phone` sends its linked devices a history sync that maps each of `contacts`
/// (phones, digits) to its LID. Returns once the server routed it.
pub async fn send_lid_mappings(hub: &Hub, phone: &str, contacts: &[String]) -> Result<(), String> {
    let peer = hub.peers.get(phone).ok_or("that account has no phone")?;
    let mappings = {
        let state = hub.state.lock().expect("state lock");
        contacts
            .iter()
            .map(|contact| {
                let account = state
                    .accounts
                    .get(contact)
                    .ok_or_else(|| format!("+{contact} is no account"))?;
                Ok(wa::PhoneNumberToLIDMapping {
                    pn_jid: Some(format!("{contact}@s.whatsapp.net")),
                    lid_jid: Some(format!("{}@lid", account.lid)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?
    };
    let history = wa::HistorySync {
        sync_type: wa::history_sync::HistorySyncType::INITIAL_BOOTSTRAP,
        phone_number_to_lid_mappings: mappings,
        ..Default::default()
    };
    let payload = zlib_stored(&whatsapp_rust::waproto::codec::history_sync_to_vec(&history));
    let message = wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            r#type: Some(wa::message::protocol_message::Type::HISTORY_SYNC_NOTIFICATION),
            history_sync_notification: MessageField::some(wa::message::HistorySyncNotification {
                sync_type: Some(wa::message::HistorySyncType::INITIAL_BOOTSTRAP),
                chunk_order: Some(0),
                progress: Some(100),
                initial_hist_bootstrap_inline_payload: Some(payload),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = peer.client.generate_message_id();
    peer.client
        .send_message_with_options(
            Jid::pn(phone),
            message,
            SendOptions::default().with_message_id(id.clone()),
        )
        .await
        .map_err(|e| format!("the phone could not send: {e}"))?;
    for _ in 0..500 {
        if hub.state.lock().expect("state lock").deliveries.contains_key(&id) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the server never saw the history sync".into())
}

/// `data` as a zlib stream of stored (uncompressed) blocks: what the client inflates, without
/// a compressor.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut chunks = data.chunks(0xFFFF).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_zlib_stream_inflates_to_the_input() {
        for len in [0, 5, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let inflated =
                whatsapp_rust::wacore_binary::zlib_pool::decompress_zlib_pooled(&zlib_stored(&data), 1 << 20).unwrap();
            assert_eq!(inflated, data);
        }
    }
}
