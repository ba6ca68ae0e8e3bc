//! Stage 5, the transport's hard cases (issue 17): messages typed on the phone, view-once
//! media, albums and quoted replies, as WhatsApp delivers them to a linked device.

use crate::common::{greet, linked, server, until};
use base64::Engine as _;
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::events::{Event, UnavailableType};

const ACCOUNT: &str = "+15550005555";
const CONTACT: &str = "+14155550133";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_typed_on_the_phone_reaches_the_device_as_from_me() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "typed on the phone", "from_me": true}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let (text, from_me, chat) = device
        .events
        .wait("the phone's message", |e| match e {
            Event::Messages(batch) => batch.messages.iter().find(|m| m.info.id == id).map(|m| {
                (
                    m.message.text_content().map(str::to_owned),
                    m.info.source.is_from_me,
                    m.info.source.chat.user.to_string(),
                )
            }),
            _ => None,
        })
        .await;
    assert_eq!(text.as_deref(), Some("typed on the phone"));
    assert!(from_me);
    assert_eq!(chat, "14155550133");
    // The contact got it too.
    until(&ctl, &format!("/_ctl/received/{CONTACT}"), |b| {
        b["messages"].as_array().unwrap().iter().any(|m| m["id"] == id.as_str())
    })
    .await;
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_once_media_is_a_stub_on_the_device_but_opens_on_the_phone() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let media = json!({"kind": "image", "mime": "image/jpeg",
        "data_base64": base64::engine::general_purpose::STANDARD.encode([7u8; 4000])});
    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "media": media, "view_once": true}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let kind = device
        .events
        .wait("the view-once stub", |e| match e {
            Event::UndecryptableMessage(u) if u.info.id == id => Some(u.unavailable_type),
            _ => None,
        })
        .await;
    assert_eq!(kind, UnavailableType::ViewOnce);
    let received = until(&ctl, &format!("/_ctl/received/{ACCOUNT}"), |b| {
        b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["bytes"] == 4000)
    })
    .await;
    assert!(
        received["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "image"),
        "{received}"
    );
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_arrives_as_a_parent_and_wrapped_children() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = [vec![1u8; 3000], vec![2u8; 5000]];
    let album: Vec<_> = items
        .iter()
        .map(|data| json!({"kind": "image", "mime": "image/jpeg", "data_base64": b64.encode(data)}))
        .collect();
    let (status, sent) = ctl
        .post("/_ctl/send", json!({"from": CONTACT, "to": ACCOUNT, "album": album}))
        .await;
    assert_eq!(status, 200, "{sent}");
    let parent = sent["id"].as_str().unwrap().to_owned();
    let children: Vec<String> = sent["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2);

    let expected = device
        .events
        .wait("the album parent", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == parent)
                .and_then(|m| m.message.album_message.as_option().and_then(|a| a.expected_image_count)),
            _ => None,
        })
        .await;
    assert_eq!(expected, 2);
    for (child, data) in children.iter().zip(&items) {
        let image = device
            .events
            .wait("an album child", |e| match e {
                Event::Messages(batch) => batch.messages.iter().find(|m| &m.info.id == child).and_then(|m| {
                    let inner = m.message.associated_child_message.as_option()?.message.as_option()?;
                    inner.image_message.as_option().cloned()
                }),
                _ => None,
            })
            .await;
        assert_eq!(&device.client.download(&image).await.expect("download"), data);
    }
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_quotes_a_message_of_the_device() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    greet(&ctl, CONTACT, ACCOUNT).await;
    let mine = device
        .client
        .send_text(Jid::pn(&CONTACT[1..]), "what do you think?")
        .await
        .expect("send");
    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "yes", "reply_to": mine.message_id}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let quoted = device
        .events
        .wait("the reply", |e| match e {
            Event::Messages(batch) => batch.messages.iter().find(|m| m.info.id == id).map(|m| {
                m.message
                    .extended_text_message
                    .as_option()
                    .and_then(|t| t.context_info.as_option())
                    .and_then(|c| c.stanza_id.clone())
            }),
            _ => None,
        })
        .await;
    assert_eq!(quoted, Some(mine.message_id));
    device.stop().await;
    server.shutdown().await;
}
