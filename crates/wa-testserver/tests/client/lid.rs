//! Stage 5, LIDs: a contact the device knows only by its LID (no phone number on its
//! messages) until the server reveals it.

use crate::common::{linked, server, until};
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::Event;

const ACCOUNT: &str = "+15550006666";
const CONTACT: &str = "+14155550144";
const CONTACT_LID: &str = "236400000000144";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_known_by_its_lid_alone_until_revealed() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;

    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "who am I?", "lid": CONTACT_LID}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let (sender, alt) = device
        .events
        .wait("the LID-addressed message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| (m.info.source.sender.clone(), m.info.source.sender_alt.clone())),
            _ => None,
        })
        .await;
    assert!(sender.is_lid(), "{sender}");
    assert_eq!(sender.user, CONTACT_LID);
    assert_eq!(alt, None, "no phone number yet");

    // The device answers the LID; the contact reads it.
    let reply = device
        .client
        .send_text(Jid::lid(CONTACT_LID), "you are a LID")
        .await
        .expect("send");
    until(&ctl, &format!("/_ctl/received/{CONTACT}"), |b| {
        b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == reply.message_id.as_str())
    })
    .await;

    let (status, body) = ctl.post("/_ctl/reveal-lid", json!({"phone": CONTACT})).await;
    assert_eq!((status, body["lid"].as_str()), (200, Some(CONTACT_LID)));
    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "now you know"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let alt = device
        .events
        .wait("the revealed message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| m.info.source.sender_alt.clone()),
            _ => None,
        })
        .await;
    assert_eq!(alt.map(|j| j.user.to_string()).as_deref(), Some(&CONTACT[1..]));
    device.stop().await;
    server.shutdown().await;
}
