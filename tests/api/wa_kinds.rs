//! Kinds of WhatsApp traffic the real transport must translate, end to end against the WhatsApp
//! test server: albums, messages typed on the phone into LID chats, quoted replies, durations
//! and disappearing-message timers on GHL's replies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, CONTACT, CONTACT_LID, Rig};

on_both_backends!(
    every_album_item_reaches_ghl_with_its_bytes_and_the_parent_adds_nothing,
    a_message_typed_on_the_phone_into_a_lid_chat_reaches_ghl_with_the_contacts_phone,
    the_phones_history_sync_reveals_the_phone_behind_a_lid,
    a_voice_note_from_ghl_reaches_the_contact_with_its_duration,
);

async fn every_album_item_reaches_ghl_with_its_bytes_and_the_parent_adds_nothing(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let pictures: Vec<Vec<u8>> = (1..=3)
        .map(|n| format!("\u{89}PNG\r\n\u{1a}\nalbum picture {n}").into_bytes())
        .collect();
    let items: Vec<_> = pictures
        .iter()
        .map(|bytes| json!({ "kind": "image", "mime": "image/png", "data_base64": BASE64.encode(bytes) }))
        .collect();
    let album = contact_sends_full(&rig, json!({ "album": items })).await;
    let children: Vec<String> = album["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 3);
    for child in &children {
        let in_ghl = rig.in_ghl(child).await;
        assert!(
            !in_ghl.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("open WhatsApp to see it"),
            "{}",
            in_ghl.body
        );
    }
    // A message after the album: once it is in GHL, everything before it was relayed.
    let after = rig.contact_sends(json!({ "text": "after the album" })).await;
    rig.in_ghl(&after).await;
    let uploads = rig.fake.uploads();
    for picture in &pictures {
        assert!(
            uploads.iter().any(|u| u.bytes.as_ref() == picture.as_slice()),
            "an album picture is missing or changed"
        );
    }
    let messages = rig.fake.messages();
    let parent = album["id"].as_str().unwrap();
    assert!(
        !messages.iter().any(|m| m.body["altId"] == parent),
        "the album parent reached GHL"
    );
    assert_eq!(messages.len(), children.len() + 1, "{messages:?}");
    rig.server.shutdown().await;
}

async fn a_message_typed_on_the_phone_into_a_lid_chat_reaches_ghl_with_the_contacts_phone(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    // The contact is known to waghl's device by its LID alone; the phone writes into its chat.
    let typed = contact_sends_full(
        &rig,
        json!({ "from_me": true, "lid": CONTACT_LID, "text": "typed on the phone" }),
    )
    .await;
    let in_ghl = rig.in_ghl(typed["id"].as_str().unwrap()).await;
    assert_eq!(in_ghl.body["direction"], "outbound", "{}", in_ghl.body);
    let contacts = rig.fake.contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].phone, CONTACT);
    rig.server.shutdown().await;
}

async fn the_phones_history_sync_reveals_the_phone_behind_a_lid(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    rig.history_sync_names_the_contacts_lid().await;
    // The contact writes from its LID; WhatsApp never names its number in the message.
    let id = rig
        .contact_sends(json!({ "lid": CONTACT_LID, "text": "known by LID" }))
        .await;
    let in_ghl = rig.in_ghl(&id).await;
    assert_eq!(in_ghl.body["message"], "known by LID");
    assert_eq!(rig.fake.contacts()[0].phone, CONTACT);
    rig.server.shutdown().await;
}

async fn a_voice_note_from_ghl_reaches_the_contact_with_its_duration(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    // The contact's account exists once it has written.
    let hello = rig.contact_sends(json!({ "text": "hello" })).await;
    rig.in_ghl(&hello).await;
    let voice = std::fs::read("tests/fixtures/voice-note-2s.ogg").unwrap();
    let url = rig.fake.host_file("note.ogg", "audio/ogg", voice);
    rig.reply("ghl-voice", "", &[url]).await;
    let received = rig
        .contact_received(|m| m["kind"] == "voice" || m["kind"] == "audio")
        .await;
    assert_eq!(received["seconds"], 2, "{received}");
    rig.server.shutdown().await;
}

/// A contact's `/_ctl/send`, answered in full (an album answers its children's ids too).
async fn contact_sends_full(rig: &Rig, mut body: Value) -> Value {
    body["from"] = json!(CONTACT);
    body["to"] = json!(BUSINESS);
    rig.ctl_post("/_ctl/send", body).await
}
