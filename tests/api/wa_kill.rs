//! GHL's replies through a kill -9 of the real binary on the real transport: every reply the
//! provider webhook accepted reaches the contact's phone once, in order, although the daemon
//! died while it was sending them (a part committed, maybe written, not acknowledged).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Backend, TestDb};
use crate::wa_rig::{BUSINESS, CONTACT, DaemonRig, LOCATION, WAIT};

const KEY: &str = "wa-kill-key";
const REPLIES: usize = 12;

async fn kill_9_while_replies_go_out_sends_each_once_in_order(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // Paced, so the kill lands in the middle of the replies.
    let mut rig = DaemonRig::start(&db.url, &[("WAGHL_WEBHOOK_KEY", KEY), ("WAGHL_SEND_GAP_MS", "150")]).await;
    // The contact is on WhatsApp: it wrote first.
    rig.ctl_post(
        "/_ctl/send",
        json!({ "from": CONTACT, "to": BUSINESS, "text": "hello" }),
    )
    .await;
    for i in 0..REPLIES {
        let webhook = json!({
            "locationId": LOCATION, "messageId": format!("ghl-kill-{i}"), "contactId": "c", "type": "SMS",
            "phone": CONTACT, "message": format!("reply {i}"),
        });
        let answer = rig
            .daemon
            .post(&format!("/webhooks/ghl/provider?key={KEY}"), webhook)
            .await;
        assert_eq!(answer.status(), 200);
    }
    // Killed once the first replies are out and the rest are queued or in flight.
    let started = Instant::now();
    while received(&rig).await.len() < 2 {
        assert!(started.elapsed() < WAIT, "no reply went out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.daemon.kill9();
    rig.daemon.restart().await;
    let started = Instant::now();
    let texts = loop {
        let texts = received(&rig).await;
        if texts.len() >= REPLIES {
            break texts;
        }
        assert!(
            started.elapsed() < WAIT,
            "only {} replies arrived: {texts:?}",
            texts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts_after = received(&rig).await;
    assert_eq!(texts, texts_after, "a reply arrived twice (under another id)");
    let expected: Vec<String> = (0..REPLIES).map(|i| format!("reply {i}")).collect();
    assert_eq!(texts, expected, "each reply once, in order");
    rig.server.shutdown().await;
}

on_both_backends!(kill_9_while_replies_go_out_sends_each_once_in_order);

/// The texts the contact's phone received, oldest first.
async fn received(rig: &DaemonRig) -> Vec<String> {
    let list = rig.ctl_get(&format!("/_ctl/received/{CONTACT}")).await;
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}
