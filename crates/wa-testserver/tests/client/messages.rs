//! Stages 3 and 4: messages both ways between the device under test and a contact, both real
//! whatsapp-rust clients, through the server; server acks, device acks and receipts.

use crate::common::{greet, linked, server, until};
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::types::presence::ReceiptType;

const ACCOUNT: &str = "+15550001111";
const CONTACT: &str = "+14155550100";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_message_reaches_the_device_decrypted_and_is_acked() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;

    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "hello from a contact"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();

    let (text, sender) = device
        .events
        .wait("the contact's message", |e| match e {
            Event::Messages(batch) => batch.messages.iter().find(|m| m.info.id == id).map(|m| {
                (
                    m.message.text_content().map(str::to_owned),
                    m.info.source.sender.user.to_string(),
                )
            }),
            _ => None,
        })
        .await;
    assert_eq!(text.as_deref(), Some("hello from a contact"));
    assert_eq!(sender, "14155550100");
    // The account's phone and the linked device both got it and both acknowledged it.
    let acked = until(&ctl, &format!("/_ctl/acked/{id}"), |b| b["acked_by_devices"] == 2).await;
    assert_eq!(acked["delivered_to_devices"], 2, "{acked}");
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_message_reaches_the_contact_and_receipts_come_back() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    greet(&ctl, CONTACT, ACCOUNT).await;

    let sent = device
        .client
        .send_text(Jid::pn("14155550100"), "hello from the device")
        .await
        .expect("send");
    let id = sent.message_id.clone();
    device
        .events
        .wait("the server's ack", |e| match e {
            Event::ServerAck(ack) => (ack.id == id && ack.error.is_none()).then_some(()),
            _ => None,
        })
        .await;
    let received = until(&ctl, &format!("/_ctl/received/{CONTACT}"), |b| {
        b["messages"].as_array().unwrap().iter().any(|m| m["id"] == id.as_str())
    })
    .await;
    let message = received["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .unwrap();
    assert_eq!(message["text"], "hello from the device", "{received}");
    assert_eq!(message["from"], ACCOUNT, "{received}");

    // The contact's client delivered it by itself; then the contact reads it.
    device
        .events
        .wait("the delivery receipt", |e| match e {
            Event::Receipt(r) => (r.message_ids.contains(&id) && r.r#type == ReceiptType::Delivered).then_some(()),
            _ => None,
        })
        .await;
    let (status, body) = ctl
        .post("/_ctl/receipt", json!({"phone": CONTACT, "id": id, "status": "read"}))
        .await;
    assert_eq!(status, 200, "{body}");
    device
        .events
        .wait("the read receipt", |e| match e {
            Event::Receipt(r) => (r.message_ids.contains(&id) && r.r#type == ReceiptType::Read).then_some(()),
            _ => None,
        })
        .await;
    device.stop().await;
    server.shutdown().await;
}
