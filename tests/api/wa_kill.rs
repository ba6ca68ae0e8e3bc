//! GHL's replies through a kill -9 of the real binary on the real transport: every reply the
//! provider webhook accepted reaches the contact's phone once, in order, although the daemon
//! died while it was sending them (a part committed, maybe written, not acknowledged).

use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use wa_testserver::TestServer;

use crate::crash::Daemon;
use crate::helpers::{Backend, TestDb};
use crate::wa_rig::{CONTACT, LOCATION, WAIT};

const KEY: &str = "wa-kill-key";
const REPLIES: usize = 12;

async fn kill_9_while_replies_go_out_sends_each_once_in_order(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let fake = FakeGhl::start().await;
    let (ws, media) = (server.ws_url(), server.http_url());
    let mut daemon = Daemon::start(
        &fake,
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("WAGHL_WA_BACKEND", "whatsapp"),
            ("WAGHL_WA_SERVER_URL", ws.as_str()),
            ("WAGHL_WA_MEDIA_URL", media.as_str()),
            ("WAGHL_WEBHOOK_KEY", KEY),
            // Paced, so the kill lands in the middle of the replies.
            ("WAGHL_SEND_GAP_MS", "150"),
        ],
    )
    .await;
    crate::real_transport::pair_daemon(&daemon, &fake, &media).await;
    let http = reqwest::Client::new();
    // The contact is on WhatsApp: it wrote first.
    let hello = http
        .post(format!("{media}/_ctl/send"))
        .json(&json!({ "from": CONTACT, "to": crate::wa_rig::BUSINESS, "text": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    for i in 0..REPLIES {
        let webhook = json!({
            "locationId": LOCATION, "messageId": format!("ghl-kill-{i}"), "contactId": "c", "type": "SMS",
            "phone": CONTACT, "message": format!("reply {i}"),
        });
        let answer = daemon.post(&format!("/webhooks/ghl/provider?key={KEY}"), webhook).await;
        assert_eq!(answer.status(), 200);
    }
    let received = async || -> Vec<String> {
        let list: Value = http
            .get(format!("{media}/_ctl/received/{CONTACT}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect()
    };
    // Killed once the first replies are out and the rest are queued or in flight.
    let started = Instant::now();
    while received().await.len() < 2 {
        assert!(started.elapsed() < WAIT, "no reply went out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill9();
    daemon.restart().await;
    let started = Instant::now();
    let texts = loop {
        let texts = received().await;
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
    let texts_after = received().await;
    assert_eq!(texts, texts_after, "a reply arrived twice (under another id)");
    let expected: Vec<String> = (0..REPLIES).map(|i| format!("reply {i}")).collect();
    assert_eq!(texts, expected, "each reply once, in order");
    server.shutdown().await;
}

on_both_backends!(kill_9_while_replies_go_out_sends_each_once_in_order);
