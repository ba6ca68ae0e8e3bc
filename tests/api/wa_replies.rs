//! GHL's replies on the real transport, end to end against the WhatsApp test server: a quote
//! names the quoted message's real author (the contact's LID, the business itself), and a
//! reply into a disappearing chat carries the chat's timer.

use serde_json::{Value, json};

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, CONTACT, CONTACT_LID, LOCATION, Rig};

on_both_backends!(
    a_reply_quoting_a_lid_contact_names_the_lid,
    a_reply_quoting_the_business_names_the_business,
    replies_into_a_disappearing_chat_carry_its_timer_until_it_is_turned_off,
);

/// GHL's reply to the contact quoting the WhatsApp message `quoted`.
async fn reply_quoting(rig: &Rig, ghl_id: &str, text: &str, quoted: &str) {
    let webhook = json!({
        "locationId": LOCATION, "messageId": ghl_id, "contactId": "c", "type": "SMS",
        "phone": CONTACT, "message": text, "replyToAltId": quoted,
    });
    rig.provider_webhook(webhook).await;
}

async fn received_text(rig: &Rig, text: &str) -> Value {
    rig.contact_received(|m| m["text"] == text).await
}

async fn a_reply_quoting_a_lid_contact_names_the_lid(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    // The phone's history sync maps the LID to the number, so the message reaches GHL.
    rig.history_sync_names_the_contacts_lid().await;
    let id = rig
        .contact_sends(json!({ "lid": CONTACT_LID, "text": "written from a LID" }))
        .await;
    rig.in_ghl(&id).await;
    reply_quoting(&rig, "ghl-quote-lid", "answering your LID message", &id).await;
    let received = received_text(&rig, "answering your LID message").await;
    assert_eq!(received["reply_to"], id.as_str(), "{received}");
    // The author WhatsApp knows the quoted message by: the LID it came from.
    assert_eq!(received["participant"], format!("{CONTACT_LID}@lid"), "{received}");
    rig.server.shutdown().await;
}

async fn a_reply_quoting_the_business_names_the_business(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let hello = rig.contact_sends(json!({ "text": "hello" })).await;
    rig.in_ghl(&hello).await;
    rig.reply("ghl-first", "our first answer", &[]).await;
    let first = received_text(&rig, "our first answer").await;
    let first_id = first["id"].as_str().unwrap();
    reply_quoting(&rig, "ghl-second", "about our first answer", first_id).await;
    let second = received_text(&rig, "about our first answer").await;
    assert_eq!(second["reply_to"], first_id, "{second}");
    let business = format!("{}@s.whatsapp.net", BUSINESS.trim_start_matches('+'));
    assert_eq!(second["participant"], business, "{second}");
    rig.server.shutdown().await;
}

async fn replies_into_a_disappearing_chat_carry_its_timer_until_it_is_turned_off(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    // The contact's chat disappears after a week: its client puts the timer on its message.
    let week = 604_800;
    let id = rig
        .contact_sends(json!({ "text": "this chat disappears", "expiration": week }))
        .await;
    rig.in_ghl(&id).await;
    rig.reply("ghl-timer-on", "a reply that disappears", &[]).await;
    let on = received_text(&rig, "a reply that disappears").await;
    assert_eq!(on["expiration"], week, "{on}");

    // The contact turns it off; its next message carries no timer.
    rig.ctl_post(
        "/_ctl/disappearing",
        json!({ "from": CONTACT, "to": BUSINESS, "seconds": 0 }),
    )
    .await;
    let after = rig.contact_sends(json!({ "text": "timer off now" })).await;
    rig.in_ghl(&after).await;
    rig.reply("ghl-timer-off", "a reply that stays", &[]).await;
    let off = received_text(&rig, "a reply that stays").await;
    assert_eq!(off["expiration"], Value::Null, "{off}");
    rig.server.shutdown().await;
}
