//! The real whatsapp-rust transport end to end, against the WhatsApp test server on loopback
//! (`crates/wa-testserver`, whose phones and contacts are themselves whatsapp-rust clients):
//! waghl pairs as a linked device (QR or code), relays contacts' messages and media into GHL,
//! sends GHL's replies on WhatsApp (decrypted by the contact's client exactly as sent), reports
//! receipts, comes back from drops and restarts on its own, and parks or logs out when WhatsApp
//! says so. Built only with the `wa-test-server` feature (as `.ci/run` does).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, CONTACT, DaemonRig, LOCATION, Rig, WAIT, wait};

on_both_backends!(
    the_real_transport_pairs_relays_both_ways_and_reports_receipts,
    media_goes_both_ways_with_its_bytes_intact,
    pairing_by_code_links_the_device,
    a_dropped_socket_and_a_restart_come_back_without_a_scan,
    whatsapp_logging_the_device_out_or_stopping_it_is_shown_with_its_reason,
    the_phone_removing_the_device_logs_the_session_out,
    kill_9_while_messages_arrive_loses_and_duplicates_nothing,
);

async fn the_real_transport_pairs_relays_both_ways_and_reports_receipts(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else { return };
    rig.pair_by_qr().await;

    // Inbound: decrypted by waghl's client, in GHL, and acknowledged to WhatsApp once stored.
    let id = rig.contact_sends(json!({ "text": "hello from a real client" })).await;
    let inbound = rig.in_ghl(&id).await;
    assert_eq!(inbound.body["message"], "hello from a real client");
    assert_eq!(rig.fake.contacts()[0].phone, CONTACT);
    let acked = rig.ctl_get(&format!("/_ctl/acked/{id}")).await;
    // The business's phone and waghl's device.
    assert!(acked["acked_by_devices"].as_u64() >= Some(2), "{acked}");

    // Outbound: decrypted by the contact's client exactly as sent; its receipts reach GHL.
    rig.reply("ghl-real-1", "a reply through whatsapp-rust", &[]).await;
    let received = rig
        .contact_received(|m| m["text"] == "a reply through whatsapp-rust")
        .await;
    wait(|| {
        rig.fake
            .statuses("ghl-real-1")
            .into_iter()
            .find(|s| s["status"] == "delivered")
    })
    .await;
    rig.ctl_post(
        "/_ctl/receipt",
        json!({ "phone": CONTACT, "id": received["id"], "status": "read" }),
    )
    .await;
    wait(|| {
        rig.fake
            .statuses("ghl-real-1")
            .into_iter()
            .find(|s| s["status"] == "read")
    })
    .await;
    rig.server.shutdown().await;
}

async fn media_goes_both_ways_with_its_bytes_intact(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    rig.pair_by_qr().await;
    let image = b"\x89PNG\r\n\x1a\nnot a real picture, but real bytes".to_vec();
    let voice = std::fs::read("tests/fixtures/voice-note-2s.ogg").unwrap();
    let image_id = rig
        .contact_sends(json!({ "media": {
            "kind": "image", "mime": "image/png", "data_base64": BASE64.encode(&image), "caption": "a picture"
        } }))
        .await;
    let voice_id = rig
        .contact_sends(json!({ "media": {
            "kind": "voice", "mime": "audio/ogg; codecs=opus", "data_base64": BASE64.encode(&voice)
        } }))
        .await;
    let in_ghl = rig.in_ghl(&image_id).await;
    assert_eq!(in_ghl.body["message"], "a picture");
    rig.in_ghl(&voice_id).await;
    let uploads = rig.fake.uploads();
    assert!(
        uploads.iter().any(|u| u.bytes.as_ref() == image.as_slice()),
        "the image changed on the way"
    );
    // Voice notes reach GHL as WAV (GHL's player cannot play OGG/Opus).
    assert!(
        uploads
            .iter()
            .any(|u| u.content_type == "audio/wav" && u.bytes.len() > 44)
    );

    // An attachment from GHL reaches the contact as an image with the same bytes.
    let url = rig.fake.host_file("reply.png", "image/png", image.clone());
    rig.reply("ghl-real-img", "", &[url]).await;
    let received = rig.contact_received(|m| m["kind"] == "image").await;
    assert_eq!(received["bytes"], image.len());
    rig.server.shutdown().await;
}

async fn pairing_by_code_links_the_device(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    let started = rig
        .app
        .admin_post(
            &format!("/api/v1/locations/{LOCATION}/session"),
            &json!({ "phone": BUSINESS }),
        )
        .await;
    assert_eq!(started.status(), 202);
    let code = rig.code("pairing_code").await;
    rig.ctl_post("/_ctl/pair-code", json!({ "phone": BUSINESS, "code": code }))
        .await;
    let session = rig.app.wait_for_session(LOCATION, "connected", None).await;
    assert_eq!(session["phone"], BUSINESS);
    rig.server.shutdown().await;
}

async fn a_dropped_socket_and_a_restart_come_back_without_a_scan(backend: Backend) {
    let Some(mut rig) = Rig::start(backend).await else {
        return;
    };
    rig.pair_by_qr().await;
    rig.ctl_post("/_ctl/drop", json!({ "phone": BUSINESS })).await;
    let id = rig.contact_sends(json!({ "text": "after the drop" })).await;
    rig.in_ghl(&id).await;

    // A restart logs in from the stored keys: no QR code, no scan.
    rig.app = rig.app.restart().await;
    rig.app.wait_for_session(LOCATION, "connected", None).await;
    let id = rig.contact_sends(json!({ "text": "after the restart" })).await;
    rig.in_ghl(&id).await;
    rig.server.shutdown().await;
}

async fn whatsapp_logging_the_device_out_or_stopping_it_is_shown_with_its_reason(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    rig.pair_by_qr().await;
    rig.ctl_post("/_ctl/replace", json!({ "phone": BUSINESS })).await;
    rig.app
        .wait_for_session(LOCATION, "parked", Some("wa_stream_replaced"))
        .await;

    // Started again (from its keys), then banned for a while.
    let restarted = rig
        .app
        .admin_post(&format!("/api/v1/locations/{LOCATION}/session"), &json!({}))
        .await;
    assert_eq!(restarted.status(), 202);
    rig.app.wait_for_session(LOCATION, "connected", None).await;
    rig.ctl_post("/_ctl/ban", json!({ "phone": BUSINESS, "seconds": 3600 }))
        .await;
    rig.app
        .wait_for_session(LOCATION, "parked", Some("wa_temporary_ban"))
        .await;
    rig.server.shutdown().await;
}

async fn the_phone_removing_the_device_logs_the_session_out(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    rig.pair_by_qr().await;
    rig.ctl_post("/_ctl/logout", json!({ "phone": BUSINESS })).await;
    rig.app
        .wait_for_session(LOCATION, "logged_out", Some("wa_logged_out"))
        .await;
    rig.server.shutdown().await;
}

async fn kill_9_while_messages_arrive_loses_and_duplicates_nothing(backend: Backend) {
    let Some(db) = crate::helpers::TestDb::new(backend).await else {
        return;
    };
    let mut rig = DaemonRig::start(&db.url, &[]).await;

    // Messages in flight between WhatsApp, the device's store and its acknowledgement.
    let mut ids = Vec::new();
    for i in 0..20 {
        let text = format!("in flight {i}");
        let sent = rig
            .ctl_post("/_ctl/send", json!({ "from": CONTACT, "to": BUSINESS, "text": text }))
            .await;
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    rig.daemon.kill9();
    rig.daemon.restart().await;
    let fake = &rig.fake;
    for id in &ids {
        wait(|| fake.messages().into_iter().find(|m| m.body["altId"] == id.as_str())).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relayed: Vec<String> = fake
        .messages()
        .iter()
        .map(|m| m.body["altId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(relayed.len(), ids.len(), "a message reached GHL twice: {relayed:?}");
    // Every one acknowledged to WhatsApp in the end by both devices (waghl's once stored by one
    // life or the other).
    for id in &ids {
        let acked = rig.ctl_get(&format!("/_ctl/acked/{id}")).await;
        // The business's phone and waghl's device.
        assert!(acked["acked_by_devices"].as_u64() >= Some(2), "{id}: {acked}");
    }
    rig.server.shutdown().await;
}

#[tokio::test]
async fn a_message_is_acknowledged_only_once_stored_and_a_kill_in_between_redelivers_it() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/waghl.db", dir.path().display());
    let mut rig = DaemonRig::start(&db, &[]).await;

    // The database cannot be written: the message reaches the device but is not stored, so
    // the device must not acknowledge it.
    let mut blocker = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker).await.unwrap();
    let sent = rig
        .ctl_post(
            "/_ctl/send",
            json!({ "from": CONTACT, "to": BUSINESS, "text": "stored before acked" }),
        )
        .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    // Two devices get it: the business's phone (which acknowledges it at once) and waghl's.
    let started = Instant::now();
    loop {
        let counts = rig.ctl_get(&format!("/_ctl/acked/{id}")).await;
        if counts["delivered_to_devices"].as_u64() >= Some(2) {
            break;
        }
        assert!(started.elapsed() < WAIT, "never delivered: {counts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = rig.ctl_get(&format!("/_ctl/acked/{id}")).await;
    assert_eq!(
        counts["acked_by_devices"], 1,
        "waghl acknowledged it before it was stored: {counts}"
    );

    // Killed in between; the database back; WhatsApp delivers it again to the new life.
    rig.daemon.kill9();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    rig.daemon.restart().await;
    wait(|| rig.fake.messages().into_iter().find(|m| m.body["altId"] == id.as_str())).await;
    let started = Instant::now();
    while rig.ctl_get(&format!("/_ctl/acked/{id}")).await["acked_by_devices"].as_u64() < Some(2) {
        assert!(
            started.elapsed() < WAIT,
            "waghl never acknowledged it after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.fake.messages().len(), 1, "stored once, relayed once");
    rig.server.shutdown().await;
}
