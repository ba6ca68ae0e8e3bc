//! GHL's replies on the real transport when the link misbehaves (the WhatsApp test server's
//! `hold-acks`, `refuse`, `drop` and `offline`): each reply reaches the contact exactly once and
//! in order, and GHL hears `sent` only once WhatsApp's server acknowledged it, `failed` with the
//! server's code when it refused. And the lookups a burst of replies costs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, CONTACT, Rig, wait};

on_both_backends!(
    a_reply_sent_while_the_server_holds_acks_reaches_the_contact_once_after_the_reconnect,
    a_reply_the_server_refuses_is_reported_failed_with_its_code,
    replies_sent_while_the_link_drops_reach_the_contact_once_and_in_order,
    replies_sent_while_the_device_is_offline_reach_the_contact_once_and_in_order,
    replies_to_one_contact_cost_one_lookup_and_none_when_the_contact_wrote_first,
);

/// The texts the contact's phone received, oldest first (the phone keeps one copy per id).
async fn texts_received(rig: &Rig) -> Vec<String> {
    let list = rig.ctl_get(&format!("/_ctl/received/{CONTACT}")).await;
    list["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the contact has every one of `texts`, then checks each came once, in order.
async fn contact_gets_each_once_in_order(rig: &Rig, texts: &[String]) {
    let started = std::time::Instant::now();
    loop {
        let received: Vec<String> = texts_received(rig)
            .await
            .into_iter()
            .filter(|t| texts.contains(t))
            .collect();
        if texts.iter().all(|t| received.contains(t)) {
            assert_eq!(received, texts, "each reply once, in the order GHL sent them");
            return;
        }
        assert!(
            started.elapsed() < crate::wa_rig::WAIT,
            "the contact got only {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for GHL to be told `status` about `ghl_id`.
async fn ghl_hears(rig: &Rig, ghl_id: &str, status: &str) -> Value {
    ghl_hears_one_of(rig, ghl_id, &[status]).await
}

/// Waits for GHL to be told any of `statuses` about `ghl_id`.
async fn ghl_hears_one_of(rig: &Rig, ghl_id: &str, statuses: &[&str]) -> Value {
    wait(|| {
        rig.fake
            .statuses(ghl_id)
            .into_iter()
            .find(|s| statuses.iter().any(|status| s["status"] == *status))
    })
    .await
}

/// Paired, and the contact has written once (so the contact is an account of the server).
async fn paired_with_a_contact(backend: Backend) -> Option<Rig> {
    let rig = Rig::start(backend).await?;
    rig.pair_by_qr().await;
    let hello = rig.contact_sends(json!({ "text": "hello" })).await;
    rig.in_ghl(&hello).await;
    Some(rig)
}

async fn a_reply_sent_while_the_server_holds_acks_reaches_the_contact_once_after_the_reconnect(backend: Backend) {
    let Some(rig) = paired_with_a_contact(backend).await else {
        return;
    };
    // The server swallows what waghl's device writes for 4 s, then drops its socket: the frame
    // was written (the send returned) but WhatsApp never had it.
    rig.ctl_post("/_ctl/hold-acks", json!({ "phone": BUSINESS, "seconds": 4 }))
        .await;
    rig.reply("ghl-held", "written into a dead link", &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.fake.statuses("ghl-held"),
        Vec::<Value>::new(),
        "GHL must not hear `sent` before WhatsApp's server acked the message"
    );
    assert!(
        !texts_received(&rig)
            .await
            .contains(&"written into a dead link".to_owned())
    );

    // After the reconnect it is sent again with its id, and arrives once.
    contact_gets_each_once_in_order(&rig, &["written into a dead link".to_owned()]).await;
    // Sent once the server acked the resend. GHL hears `sent`, or `delivered` straight away
    // when the contact's receipt was applied before the `sent` report went out (statuses only
    // move forward), which a loaded machine does.
    ghl_hears_one_of(&rig, "ghl-held", &["sent", "delivered", "read"]).await;
    let statuses: Vec<Value> = rig
        .fake
        .statuses("ghl-held")
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    assert!(!statuses.contains(&json!("failed")), "{statuses:?}");
    rig.server.shutdown().await;
}

async fn a_reply_the_server_refuses_is_reported_failed_with_its_code(backend: Backend) {
    let Some(rig) = paired_with_a_contact(backend).await else {
        return;
    };
    // The contact is on WhatsApp, but the server nacks messages to it (as for a recipient that
    // needs a token this number lacks).
    rig.ctl_post("/_ctl/refuse", json!({ "phone": CONTACT, "code": "463" }))
        .await;
    rig.reply("ghl-refused", "refused by the server", &[]).await;
    let failed = ghl_hears(&rig, "ghl-refused", "failed").await;
    assert!(
        failed.to_string().contains("463"),
        "the server's code reaches GHL: {failed}"
    );
    let statuses: Vec<Value> = rig
        .fake
        .statuses("ghl-refused")
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("failed")], "never `sent` before the refusal");
    rig.server.shutdown().await;
}

async fn replies_sent_while_the_link_drops_reach_the_contact_once_and_in_order(backend: Backend) {
    let Some(rig) = paired_with_a_contact(backend).await else {
        return;
    };
    let texts: Vec<String> = (1..=6).map(|i| format!("through a dropping link {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        rig.reply(&format!("ghl-drop-{i}"), text, &[]).await;
        if i % 2 == 0 {
            rig.ctl_post("/_ctl/drop", json!({ "phone": BUSINESS })).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    contact_gets_each_once_in_order(&rig, &texts).await;
    // GHL hears that each was delivered: a receipt the server wrote to a socket that then
    // dropped is delivered again at the next login until the device acknowledges it.
    for i in 0..texts.len() {
        ghl_hears_one_of(&rig, &format!("ghl-drop-{i}"), &["delivered", "read"]).await;
    }
    rig.server.shutdown().await;
}

async fn replies_sent_while_the_device_is_offline_reach_the_contact_once_and_in_order(backend: Backend) {
    let Some(rig) = paired_with_a_contact(backend).await else {
        return;
    };
    // For 3 s the server delivers no messages or receipts to waghl's device, then drops it.
    rig.ctl_post("/_ctl/offline", json!({ "phone": BUSINESS, "seconds": 3 }))
        .await;
    let texts: Vec<String> = (1..=4).map(|i| format!("while offline {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        rig.reply(&format!("ghl-offline-{i}"), text, &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    contact_gets_each_once_in_order(&rig, &texts).await;
    for i in 0..texts.len() {
        ghl_hears(&rig, &format!("ghl-offline-{i}"), "delivered").await;
    }
    rig.server.shutdown().await;
}

async fn contact_lookups(rig: &Rig) -> u64 {
    rig.ctl_get("/_ctl/stats").await["contact_lookups"].as_u64().unwrap()
}

async fn replies_to_one_contact_cost_one_lookup_and_none_when_the_contact_wrote_first(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    rig.pair_by_qr().await;
    // A contact who has never written to the business (an account since it wrote to someone).
    const STRANGER: &str = "+14155550190";
    rig.ctl_post(
        "/_ctl/send",
        json!({ "from": STRANGER, "to": "+14155550191", "text": "elsewhere" }),
    )
    .await;
    let before = contact_lookups(&rig).await;
    for i in 0..3 {
        let webhook = json!({
            "locationId": crate::wa_rig::LOCATION, "messageId": format!("ghl-burst-{i}"), "contactId": "c2",
            "type": "SMS", "phone": STRANGER, "message": format!("burst {i}"), "attachments": [],
        });
        let response = rig
            .app
            .client
            .post(
                rig.app
                    .url(&format!("/webhooks/ghl/provider?key={}", crate::wa_rig::KEY)),
            )
            .json(&webhook)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for i in 0..3 {
        ghl_hears(&rig, &format!("ghl-burst-{i}"), "delivered").await;
    }
    assert_eq!(contact_lookups(&rig).await - before, 1, "three replies, one lookup");

    // The contact who wrote first is on WhatsApp under the chat it wrote from.
    let hello = rig.contact_sends(json!({ "text": "hello" })).await;
    rig.in_ghl(&hello).await;
    let before = contact_lookups(&rig).await;
    rig.reply("ghl-known", "no lookup needed", &[]).await;
    ghl_hears(&rig, "ghl-known", "delivered").await;
    assert_eq!(
        contact_lookups(&rig).await,
        before,
        "a contact who wrote first is not looked up"
    );
    rig.server.shutdown().await;
}
