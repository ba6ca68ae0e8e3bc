//! What reaches waghl on the real transport when WhatsApp does not simply hand a decrypted
//! message over: messages linked devices may not open (view-once), a message delivered again
//! under a placeholder's id, links that drop and devices that were offline, and an inbox that
//! cannot be written for a while. Each message reaches GHL exactly once, in order, and is
//! acknowledged to WhatsApp once stored.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, Rig, WAIT, wait};

on_both_backends!(
    a_view_once_message_reaches_ghl_as_a_notice_to_open_it_on_the_phone,
    a_message_delivered_under_a_placeholders_id_reaches_ghl_too,
    messages_sent_while_the_link_drops_reach_ghl_once_in_order_and_are_acked,
    messages_queued_while_the_device_is_offline_reach_ghl_once_in_order_and_are_acked,
    an_inbox_unwritable_for_seconds_gets_the_message_as_soon_as_it_recovers,
    an_inbox_unwritable_past_the_budget_gets_the_message_by_a_reconnect,
);

async fn a_view_once_message_reaches_ghl_as_a_notice_to_open_it_on_the_phone(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let id = rig
        .contact_sends(json!({ "text": "only for your eyes", "view_once": true }))
        .await;
    let notice = rig.in_ghl(&id).await;
    let text = notice.body["message"].as_str().unwrap();
    assert!(text.contains("view-once") && text.contains("phone"), "{text}");
    assert!(!text.contains("only for your eyes"));
}

/// The sender's resend after a decrypt failure, or the phone's answer to the crate's request,
/// comes under the id of the placeholder waghl already relayed: it is relayed as well.
async fn a_message_delivered_under_a_placeholders_id_reaches_ghl_too(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let id = rig
        .contact_sends(json!({ "text": "first unreadable", "view_once": true }))
        .await;
    rig.in_ghl(&id).await;
    rig.contact_sends(json!({ "text": "now readable", "id": id })).await;
    let posts = wait(|| {
        let posts: Vec<String> = rig
            .fake
            .messages()
            .into_iter()
            .filter(|m| m.body["altId"] == id.as_str())
            .map(|m| m.body["message"].as_str().unwrap().to_owned())
            .collect();
        (posts.len() >= 2).then_some(posts)
    })
    .await;
    assert!(posts[0].contains("view-once"), "{posts:?}");
    assert_eq!(posts[1], "now readable");
    // A redelivery of the real message changes nothing.
    rig.contact_sends(json!({ "text": "now readable", "id": id })).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.fake.messages().len(), 2);
}

async fn messages_sent_while_the_link_drops_reach_ghl_once_in_order_and_are_acked(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(rig.contact_sends(json!({ "text": format!("before {i}") })).await);
    }
    rig.ctl_post("/_ctl/drop", json!({ "phone": BUSINESS })).await;
    for i in 0..3 {
        ids.push(rig.contact_sends(json!({ "text": format!("across {i}") })).await);
    }
    rig.app
        .wait_for_session(crate::wa_rig::LOCATION, "connected", None)
        .await;
    for i in 0..3 {
        ids.push(rig.contact_sends(json!({ "text": format!("after {i}") })).await);
    }
    exactly_once_in_order(&rig, &ids).await;
}

async fn messages_queued_while_the_device_is_offline_reach_ghl_once_in_order_and_are_acked(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let first = rig.contact_sends(json!({ "text": "online" })).await;
    rig.in_ghl(&first).await;
    rig.ctl_post("/_ctl/offline", json!({ "phone": BUSINESS, "seconds": 2 }))
        .await;
    let mut ids = vec![first];
    for i in 0..5 {
        ids.push(rig.contact_sends(json!({ "text": format!("queued {i}") })).await);
    }
    // Nothing reaches the device while it is offline.
    assert_eq!(rig.fake.messages().len(), 1);
    exactly_once_in_order(&rig, &ids).await;
}

/// The inbox cannot be written for three seconds (its table is away, so every write fails at
/// once): waghl keeps trying within its budget, and the message reaches GHL without waiting for
/// a reconnect.
async fn an_inbox_unwritable_for_seconds_gets_the_message_as_soon_as_it_recovers(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;
    let db = &rig.app.db.url;
    execute(db, "ALTER TABLE inbox RENAME TO inbox_away").await;
    let id = rig.contact_sends(json!({ "text": "while the inbox is away" })).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rig.fake.messages().is_empty());
    execute(db, "ALTER TABLE inbox_away RENAME TO inbox").await;
    let back = Instant::now();
    exactly_once_in_order(&rig, std::slice::from_ref(&id)).await;
    assert!(back.elapsed() < Duration::from_secs(15), "{:?}", back.elapsed());
}

/// Past the store budget the message is left unconfirmed; once the inbox is writable again it
/// is stored, and the client reconnects so that WhatsApp delivers it again and it is acked.
async fn an_inbox_unwritable_past_the_budget_gets_the_message_by_a_reconnect(backend: Backend) {
    let budget = [("WAGHL_INBOX_STORE_BUDGET_MS", "1000")];
    let Some(rig) = Rig::start_with(backend, &budget).await else {
        return;
    };
    rig.pair_by_qr().await;
    let db = &rig.app.db.url;
    execute(db, "ALTER TABLE inbox RENAME TO inbox_away").await;
    let first = rig.contact_sends(json!({ "text": "first while away" })).await;
    let second = rig.contact_sends(json!({ "text": "second while away" })).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let acked: Value = rig.ctl_get(&format!("/_ctl/acked/{first}")).await;
    assert_eq!(acked["acked_by_devices"], 1, "acked before stored: {acked}");
    execute(db, "ALTER TABLE inbox_away RENAME TO inbox").await;
    exactly_once_in_order(&rig, &[first, second]).await;
}

/// Runs one statement on the test database, beside waghl.
async fn execute(url: &str, sql: &'static str) {
    use sqlx::Connection as _;
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// Every message of `ids` in GHL once, in the order sent, and acknowledged by waghl's device.
async fn exactly_once_in_order(rig: &Rig, ids: &[String]) {
    let started = Instant::now();
    let relayed = loop {
        let relayed = alt_ids(rig);
        if ids.iter().all(|id| relayed.contains(id)) {
            break relayed;
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !relayed.contains(id)).collect();
        assert!(started.elapsed() < WAIT, "never in GHL: {missing:?} of {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in ids {
        acked_by_both(rig, id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alt_ids(rig), relayed, "nothing more came");
    assert_eq!(relayed, ids, "each once, in order");
}

/// The WhatsApp ids of what GHL holds, in the order it was added.
fn alt_ids(rig: &Rig) -> Vec<String> {
    let messages = rig.fake.messages().into_iter();
    messages.map(|m| m.body["altId"].as_str().unwrap().to_owned()).collect()
}

/// Acknowledged by the business's phone and by waghl's device.
async fn acked_by_both(rig: &Rig, id: &str) {
    let started = Instant::now();
    loop {
        let acked: Value = rig.ctl_get(&format!("/_ctl/acked/{id}")).await;
        if acked["acked_by_devices"].as_u64() >= Some(2) {
            return;
        }
        assert!(started.elapsed() < WAIT, "{id} not acknowledged by waghl: {acked}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
