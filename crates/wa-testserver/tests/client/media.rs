//! Stage 5, media: encrypted uploads to the server's plain-http media endpoint and downloads
//! from it, decrypted by the clients at both ends, bytes intact.

use crate::common::{linked, server, until};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use whatsapp_rust::Jid;
use whatsapp_rust::download::MediaType;
use whatsapp_rust::media::{self, ImageOptions};
use whatsapp_rust::types::events::Event;
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::waproto::whatsapp as wa;

const ACCOUNT: &str = "+15550003333";
const CONTACT: &str = "+14155550122";

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_and_a_voice_note_from_a_contact_download_intact() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let image = bytes(70_000, 1);
    let voice = bytes(12_345, 2);
    let mut ids = Vec::new();
    for (kind, mime, data) in [
        ("image", "image/jpeg", &image),
        ("voice", "audio/ogg; codecs=opus", &voice),
    ] {
        let media = json!({"kind": kind, "mime": mime, "data_base64": b64.encode(data), "caption": "look"});
        let (status, sent) = ctl
            .post("/_ctl/send", json!({"from": CONTACT, "to": ACCOUNT, "media": media}))
            .await;
        assert_eq!(status, 200, "{sent}");
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }

    let got_image = device
        .events
        .wait("the image", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == ids[0])
                .and_then(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await;
    assert_eq!(got_image.caption.as_deref(), Some("look"));
    assert_eq!(
        device.client.download(&got_image).await.expect("download the image"),
        image
    );

    let got_voice = device
        .events
        .wait("the voice note", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == ids[1])
                .and_then(|m| m.message.audio_message.as_option().cloned()),
            _ => None,
        })
        .await;
    assert_eq!(got_voice.ptt, Some(true));
    assert_eq!(
        device
            .client
            .download(&got_voice)
            .await
            .expect("download the voice note"),
        voice
    );
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_the_device_reaches_the_contact_intact() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, _) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "send me the photo"}),
        )
        .await;
    assert_eq!(status, 200);

    let image = bytes(150_000, 7);
    let upload = device
        .client
        .upload(image.clone(), MediaType::Image, UploadOptions::new())
        .await
        .expect("upload");
    let message: wa::Message = media::image_message(
        upload,
        ImageOptions {
            caption: Some("the photo".into()),
            mimetype: Some("image/png".into()),
            ..Default::default()
        },
    );
    let sent = device
        .client
        .send_message(Jid::pn(&CONTACT[1..]), message)
        .await
        .expect("send");
    let id = sent.message_id;
    let received = until(&ctl, &format!("/_ctl/received/{CONTACT}"), |b| {
        b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["sha256"].is_string())
    })
    .await;
    let got = received["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(got["kind"], "image", "{got}");
    assert_eq!(got["caption"], "the photo", "{got}");
    assert_eq!(got["mime"], "image/png", "{got}");
    assert_eq!(got["bytes"], image.len(), "{got}");
    let sha: String = Sha256::digest(&image).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got["sha256"], sha, "{got}");
    device.stop().await;
    server.shutdown().await;
}
