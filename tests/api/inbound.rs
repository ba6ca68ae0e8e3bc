//! The inbound relay end to end: simulated WhatsApp → inbox → fake GHL.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::helpers::PROVIDER_ID;
use crate::sessions::{SimBench, sim_bench};

/// Fast retries for tests.
pub const FAST_RETRIES: &[(&str, &str)] = &[
    ("WAGHL_RETRY_BASE_MS", "20"),
    ("WAGHL_RETRY_MAX_MS", "200"),
    ("WAGHL_RELAY_POLL_MS", "20"),
];

async fn bench() -> SimBench {
    sim_bench(FAST_RETRIES).await
}

impl SimBench {
    pub async fn inbound(&self, location: &str, body: Value) -> Value {
        let response = self.sim(location, "inbound", body).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Waits until the fake GHL holds `count` messages.
    pub async fn wait_for_ghl_messages(&self, count: usize) -> Vec<fake_ghl::AddedMessage> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let messages = self.fake.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GHL has {} of {count} messages",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Why the pending messages of a location wait (those that say).
    async fn waiting_reasons(&self, location: &str) -> Vec<String> {
        let waiting = self.messages_api(location, "?state=pending").await;
        waiting["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["last_error"].as_str().map(str::to_owned))
            .collect()
    }

    async fn messages_api(&self, location: &str, query: &str) -> Value {
        self.app
            .admin_get(&format!("/api/v1/locations/{location}/messages{query}"))
            .await
            .json()
            .await
            .unwrap()
    }
}

fn media(kind: &str, mime: &str, bytes: &[u8], caption: Option<&str>, file_name: Option<&str>) -> Value {
    json!({ "kind": kind, "mime": mime, "data_base64": BASE64.encode(bytes), "caption": caption, "file_name": file_name })
}

#[tokio::test]
async fn text_and_every_media_kind_arrive_in_the_right_conversation() {
    let b = bench().await;
    b.paired("locIn", "+15550100001").await;
    let from = "+15557654321";
    b.inbound(
        "locIn",
        json!({ "from": from, "push_name": "Ana", "id": "T1", "text": "hello", "timestamp": 1_790_000_000 }),
    )
    .await;
    // (kind, mime, bytes, caption, file name)
    type File<'a> = (&'a str, &'a str, &'a [u8], Option<&'a str>, Option<&'a str>);
    let files: [File; 4] = [
        ("image", "image/jpeg", b"\xff\xd8jpeg-bytes", Some("a photo"), None),
        ("video", "video/mp4", b"mp4-bytes-0123", Some("a clip"), None),
        ("audio", "audio/mpeg", b"ID3mp3-bytes", None, None),
        (
            "document",
            "application/pdf",
            b"%PDF-1.7 bytes",
            Some("the invoice"),
            Some("invoice-42.pdf"),
        ),
    ];
    for (i, (kind, mime, bytes, caption, name)) in files.iter().enumerate() {
        b.inbound(
            "locIn",
            json!({ "from": from, "id": format!("M{i}"), "media": media(kind, mime, bytes, *caption, *name) }),
        )
        .await;
    }
    let messages = b.wait_for_ghl_messages(5).await;
    let contacts = b.fake.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].phone, from);
    assert_eq!(contacts[0].name.as_deref(), Some("Ana"));

    let first = &messages[0].body;
    assert_eq!(first["type"], "Custom");
    assert_eq!(first["conversationProviderId"], PROVIDER_ID);
    assert_eq!(first["direction"], "inbound");
    assert_eq!(first["altId"], "T1");
    assert_eq!(first["message"], "hello");
    assert_eq!(first["contactId"], contacts[0].id.as_str());
    assert_eq!(first["date"], "2026-09-21T14:13:20Z");

    let uploads = b.fake.uploads();
    for (i, (_, mime, bytes, caption, name)) in files.iter().enumerate() {
        let body = &messages[i + 1].body;
        assert_eq!(body["altId"], format!("M{i}"));
        assert_eq!(body["message"], caption.unwrap_or(""));
        let url = body["attachments"][0].as_str().expect("an attachment");
        let upload = uploads.iter().find(|u| u.url == url).expect("uploaded to GHL");
        assert_eq!(upload.bytes.as_ref(), *bytes, "the file arrives byte for byte");
        assert_eq!(upload.content_type, *mime);
        if let Some(name) = name {
            assert_eq!(upload.file_name, *name);
        }
    }
}

#[tokio::test]
async fn a_message_delivered_three_times_reaches_ghl_once() {
    let b = bench().await;
    b.paired("locDup", "+15550100002").await;
    for _ in 0..3 {
        b.inbound(
            "locDup",
            json!({ "from": "+15557654322", "id": "SAME", "text": "once" }),
        )
        .await;
    }
    b.wait_for_ghl_messages(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.fake.messages().len(), 1);
    let list = b.messages_api("locDup", "").await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
    assert_eq!(list["messages"][0]["state"], "relayed");
}

#[tokio::test]
async fn two_chats_interleaved_keep_their_own_order() {
    let b = bench().await;
    b.paired("locOrder", "+15550100003").await;
    b.fake.set_latency(Duration::from_millis(15));
    for i in 0..6 {
        for from in ["+15550200001", "+15550200002"] {
            b.inbound(
                "locOrder",
                json!({ "from": from, "id": format!("{from}-{i}"), "text": format!("{i}") }),
            )
            .await;
        }
    }
    let messages = b.wait_for_ghl_messages(12).await;
    for from in ["+15550200001", "+15550200002"] {
        let order: Vec<String> = messages
            .iter()
            .filter(|m| m.body["altId"].as_str().unwrap().starts_with(from))
            .map(|m| m.body["message"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(order, ["0", "1", "2", "3", "4", "5"], "{from}");
    }
}

#[tokio::test]
async fn fifty_messages_during_a_ghl_outage_all_arrive_once_after_it() {
    // The outage, not GHL's rate limit, is under test: retries during it would otherwise spend
    // the limiter's window and leave the catch-up waiting for it.
    let b = sim_bench(&[FAST_RETRIES, &[("WAGHL_GHL_RATE_LIMIT", "10000")]].concat()).await;
    b.fake.set_rate_limit(10_000);
    b.paired("locOutage", "+15550100004").await;
    b.fake.fail_next("/conversations/messages/inbound", 503, 100_000);
    for i in 0..50 {
        let from = format!("+1555030{:04}", i % 5);
        b.inbound(
            "locOutage",
            json!({ "from": from, "id": format!("O{i}"), "text": format!("m{i}") }),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.fake.messages().len(), 0);
    // The head of each chat says why it waits; the rest queue behind it.
    let reasons = b.waiting_reasons("locOutage").await;
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| r.contains("unavailable")),
        "{reasons:?}"
    );
    b.fake.clear_faults();
    let messages = b.wait_for_ghl_messages(50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = b
        .fake
        .messages()
        .iter()
        .map(|m| m.body["altId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    assert_eq!(messages.len(), 50);
}

#[tokio::test]
async fn an_agency_edited_name_is_never_overwritten() {
    let b = bench().await;
    b.paired("locName", "+15550100005").await;
    b.inbound(
        "locName",
        json!({ "from": "+15550400001", "push_name": "ana", "id": "N1", "text": "hi" }),
    )
    .await;
    b.wait_for_ghl_messages(1).await;
    let contact = b.fake.contacts()[0].clone();
    b.fake.rename_contact(&contact.id, "Ana Souza (VIP)");
    // Even without waghl's cache, the name stays.
    b.fake.delete_contact("nobody");
    b.inbound(
        "locName",
        json!({ "from": "+15550400001", "push_name": "Ana S.", "id": "N2", "text": "again" }),
    )
    .await;
    b.wait_for_ghl_messages(2).await;
    assert_eq!(b.fake.contacts()[0].name.as_deref(), Some("Ana Souza (VIP)"));
    assert!(
        b.fake
            .calls_to("/contacts/upsert")
            .iter()
            .all(|c| c.json()["name"] != "Ana S.")
    );
}

#[tokio::test]
async fn a_contact_deleted_in_ghl_is_resolved_again() {
    let b = bench().await;
    b.paired("locStale", "+15550100006").await;
    b.inbound("locStale", json!({ "from": "+15550500001", "id": "S1", "text": "one" }))
        .await;
    b.wait_for_ghl_messages(1).await;
    let old = b.fake.contacts()[0].id.clone();
    b.fake.delete_contact(&old);
    b.inbound("locStale", json!({ "from": "+15550500001", "id": "S2", "text": "two" }))
        .await;
    let messages = b.wait_for_ghl_messages(2).await;
    let new = b.fake.contacts()[0].id.clone();
    assert_ne!(new, old);
    assert_eq!(messages[1].body["contactId"], new.as_str());
}

#[tokio::test]
async fn a_refused_message_goes_dead_with_its_reason_and_can_be_replayed() {
    let b = bench().await;
    b.paired("locDead", "+15550100007").await;
    b.fake.fail_next("/conversations/messages/inbound", 422, 2);
    b.inbound(
        "locDead",
        json!({ "from": "+15550600001", "id": "D1", "text": "refused" }),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let list = b.messages_api("locDead", "?state=dead").await;
        if let Some(message) = list["messages"].as_array().unwrap().first() {
            break message.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["direction"], "inbound");
    assert_eq!(dead["wa_message_id"], "D1");
    assert!(dead["last_error"].as_str().unwrap().contains("422"), "{dead}");
    let location: Value = b.app.admin_get("/api/v1/locations/locDead").await.json().await.unwrap();
    assert_eq!(location["queues"]["dead"], 1);

    let id = dead["id"].as_str().unwrap();
    let response = b
        .app
        .admin_post(&format!("/api/v1/messages/{id}/retry"), &json!({}))
        .await;
    assert_eq!(response.json::<Value>().await.unwrap()["replayed"], 1);
    b.wait_for_ghl_messages(1).await;
    let response = b
        .app
        .admin_post(&format!("/api/v1/messages/{id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 409, "only dead messages are replayed");
}

#[tokio::test]
async fn messages_typed_on_the_phone_arrive_as_outbound_and_groups_are_skipped() {
    let b = bench().await;
    b.paired("locMine", "+15550100008").await;
    b.inbound(
        "locMine",
        json!({ "from": "+15550700001", "id": "P1", "text": "typed on the phone", "from_me": true }),
    )
    .await;
    b.inbound(
        "locMine",
        json!({ "from": "+15550700002", "id": "G1", "text": "group chatter", "group": "120363000000000001" }),
    )
    .await;
    b.inbound(
        "locMine",
        json!({ "from": "+15550700003", "id": "ST1", "text": "a story", "status": true }),
    )
    .await;
    let messages = b.wait_for_ghl_messages(1).await;
    assert_eq!(messages[0].body["direction"], "outbound");
    assert_eq!(b.fake.contacts()[0].phone, "+15550700001");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.fake.messages().len(), 1);
    let skipped = b.messages_api("locMine", "?state=skipped").await;
    assert_eq!(skipped["messages"].as_array().unwrap().len(), 2);
    let metrics = b.app.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"waghl_inbound_received_total{kind="text",outcome="skipped"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_message_list_validates_its_filters_and_pages() {
    let b = bench().await;
    b.paired("locList", "+15550100009").await;
    for i in 0..5 {
        b.inbound(
            "locList",
            json!({ "from": "+15550800001", "id": format!("L{i}"), "text": "x" }),
        )
        .await;
    }
    b.wait_for_ghl_messages(5).await;
    let page = b.messages_api("locList", "?limit=3").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    let before = page["next_before"].as_i64().unwrap();
    let next = b.messages_api("locList", &format!("?limit=3&before={before}")).await;
    assert_eq!(next["messages"].as_array().unwrap().len(), 2);
    let response = b.app.admin_get("/api/v1/locations/locList/messages?state=bogus").await;
    assert_eq!(response.status(), 400);
    let response = b.app.admin_post("/api/v1/messages/zz_1/retry", &json!({})).await;
    assert_eq!(response.status(), 400);
    let response = b.app.admin_post("/api/v1/messages/in_999999/retry", &json!({})).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_lid_only_sender_waits_with_its_chat_then_reaches_the_right_phone() {
    let b = bench().await;
    b.paired("locLid", "+15550100010").await;
    let lid = "123456789012345";
    b.inbound(
        "locLid",
        json!({ "from": "+15550900009", "lid": lid, "id": "L1", "text": "who am I?" }),
    )
    .await;
    b.inbound(
        "locLid",
        json!({ "from": "+15550900009", "lid": lid, "id": "L2", "text": "still me" }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.fake.messages().is_empty(), "never a GHL contact whose phone is a LID");
    let reasons = b.waiting_reasons("locLid").await;
    assert!(reasons.iter().any(|r| r.contains(lid)), "{reasons:?}");

    assert_eq!(
        b.sim("locLid", "lid", json!({ "lid": lid, "phone": "+15550900009" }))
            .await
            .status(),
        200
    );
    let messages = b.wait_for_ghl_messages(2).await;
    assert_eq!(b.fake.contacts()[0].phone, "+15550900009");
    let order: Vec<&str> = messages.iter().map(|m| m.body["altId"].as_str().unwrap()).collect();
    assert_eq!(order, ["L1", "L2"]);
}

#[tokio::test]
async fn a_lid_that_is_never_revealed_goes_dead_and_can_be_replayed_once_it_is() {
    let b = sim_bench(&[FAST_RETRIES, &[("WAGHL_LID_WAIT_MS", "300")]].concat()).await;
    b.paired("locLidDead", "+15550100011").await;
    b.inbound(
        "locLidDead",
        json!({ "from": "+15550900010", "lid": "999", "id": "LD1", "text": "hidden" }),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = b.messages_api("locLidDead", "?state=dead").await;
        if let Some(message) = dead["messages"].as_array().unwrap().first() {
            assert!(message["last_error"].as_str().unwrap().contains("LID 999"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.sim("locLidDead", "lid", json!({ "lid": "999", "phone": "+15550900010" }))
        .await;
    b.app
        .admin_post("/api/v1/locations/locLidDead/retry-dead", &json!({}))
        .await;
    let messages = b.wait_for_ghl_messages(1).await;
    assert_eq!(messages[0].body["altId"], "LD1");
}

#[tokio::test]
async fn locations_contacts_reactions_edits_deletes_and_replies_read_as_text_in_ghl() {
    let b = bench().await;
    b.paired("locKinds", "+15550100012").await;
    let from = "+15550910001";
    let messages = [
        json!({ "from": from, "id": "K1", "text": "do you open at 9?" }),
        json!({ "from": from, "id": "K2", "text": "ok thanks", "reply_to": "K1" }),
        json!({ "from": from, "id": "K3", "location": { "lat": 40.7128, "lng": -74.006, "name": "Office" } }),
        json!({ "from": from, "id": "K4", "contact": { "name": "Dr. Ana", "phones": ["+15551112222"] } }),
        json!({ "from": from, "id": "K5", "reaction": { "id": "K1", "emoji": "👍" } }),
        json!({ "from": from, "id": "K6", "edit": { "id": "K2", "text": "ok, thank you" } }),
        json!({ "from": from, "id": "K7", "delete": { "id": "K3" } }),
    ];
    for message in messages {
        b.inbound("locKinds", message).await;
    }
    let relayed = b.wait_for_ghl_messages(7).await;
    let text = |i: usize| relayed[i].body["message"].as_str().unwrap().to_owned();
    assert_eq!(text(1), "↩️ \"do you open at 9?\"\nok thanks");
    assert!(
        text(2).contains("Office") && text(2).contains("maps.google.com/?q=40.7128,-74.006"),
        "{}",
        text(2)
    );
    assert!(text(3).contains("Dr. Ana") && text(3).contains("+15551112222"));
    assert!(text(4).contains("👍") && text(4).contains("K1"));
    assert!(text(5).contains("K2") && text(5).contains("ok, thank you"));
    assert!(text(6).contains("Deleted") && text(6).contains("K3"));
}

#[tokio::test]
async fn a_voice_note_reaches_ghl_as_a_wav_that_plays_as_long_and_a_sticker_as_a_png() {
    let b = bench().await;
    b.paired("locVoice", "+15550100013").await;
    let ogg = include_bytes!("../fixtures/voice-note-2s.ogg");
    let voice = media("voice", "audio/ogg; codecs=opus", ogg, None, None);
    b.inbound(
        "locVoice",
        json!({ "from": "+15550920001", "id": "V1", "media": voice }),
    )
    .await;
    let mut webp = Vec::new();
    let pixels = vec![200u8; 32 * 32 * 4];
    image_webp::WebPEncoder::new(&mut webp)
        .encode(&pixels, 32, 32, image_webp::ColorType::Rgba8)
        .unwrap();
    let sticker = media("sticker", "image/webp", &webp, None, None);
    b.inbound(
        "locVoice",
        json!({ "from": "+15550920001", "id": "S1", "media": sticker }),
    )
    .await;

    let messages = b.wait_for_ghl_messages(2).await;
    let uploads = b.fake.uploads();
    let upload_of = |i: usize| {
        let url = messages[i].body["attachments"][0].as_str().unwrap().to_owned();
        uploads.iter().find(|u| u.url == url).unwrap().clone()
    };
    let wav = upload_of(0);
    assert_eq!(wav.content_type, "audio/wav");
    assert!(wav.file_name.ends_with(".wav"));
    let rate = u32::from_le_bytes(wav.bytes[24..28].try_into().unwrap());
    let seconds = (wav.bytes.len() - 44) as f64 / 2.0 / f64::from(rate);
    assert!((seconds - 2.0).abs() < 0.05, "the voice note plays {seconds} s");
    let png = upload_of(1);
    assert_eq!(png.content_type, "image/png");
    assert_eq!(&png.bytes[1..4], b"PNG");
}

#[tokio::test]
async fn media_that_expired_on_whatsapp_still_arrives_as_text_saying_so() {
    let b = bench().await;
    b.paired("locExpired", "+15550100014").await;
    // GHL is down while the media expires on WhatsApp's servers.
    b.fake.fail_next("/contacts/search/duplicate", 503, 100_000);
    let photo = media("image", "image/jpeg", b"\xff\xd8old", Some("last year's photo"), None);
    b.inbound(
        "locExpired",
        json!({ "from": "+15550930001", "id": "E1", "media": photo }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let media_dir = b.app.db.dir.path().join("sessions/sim/media/locExpired");
    std::fs::remove_dir_all(&media_dir).unwrap();
    b.fake.clear_faults();
    let messages = b.wait_for_ghl_messages(1).await;
    let text = messages[0].body["message"].as_str().unwrap();
    assert!(
        text.contains("image not available") && text.contains("expired"),
        "{text}"
    );
    assert!(text.contains("last year's photo"));
    assert!(
        messages[0]
            .body
            .get("attachments")
            .is_none_or(|a| a.as_array().is_none_or(Vec::is_empty))
    );
}

#[tokio::test]
async fn a_large_video_goes_through_ghls_large_file_upload() {
    // 8 MB of base64 in the simulated delivery: above the default body limit.
    let b = sim_bench(&[FAST_RETRIES, &[("WAGHL_BODY_LIMIT_BYTES", "16777216")]].concat()).await;
    b.paired("locLarge", "+15550100015").await;
    let video = vec![7u8; 6 << 20];
    let body =
        json!({ "from": "+15550940001", "id": "BIG1", "media": media("video", "video/mp4", &video, None, None) });
    b.inbound("locLarge", body).await;
    let messages = b.wait_for_ghl_messages(1).await;
    let url = messages[0].body["attachments"][0].as_str().unwrap();
    let upload = b.fake.uploads().into_iter().find(|u| u.url == url).unwrap();
    assert_eq!(upload.bytes.len(), 6 << 20);
    assert_eq!(
        b.fake.calls_to("/conversations/messages/upload/initiate")[0].json()["channel"],
        "WHATSAPP"
    );
}
