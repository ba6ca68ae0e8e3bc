//! A message the device never acknowledged (its app did not commit it: killed, or its database
//! down) stays on the server and is delivered again at the next login, as WhatsApp does.

use crate::common::{Device, server, until};
use serde_json::json;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::events::Event;

const ACCOUNT: &str = "+15550008888";
const CONTACT: &str = "+14155550155";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_is_delivered_again_after_a_restart() {
    let (server, ctl, dir) = server().await;
    let store = dir.path().join("wa.db");
    let device = Device::start_refusing(&server, &store).await;
    let qr = device.qr().await;
    let (status, body) = ctl.post("/_ctl/scan", json!({"phone": ACCOUNT, "qr": qr})).await;
    assert_eq!(status, 200, "{body}");
    device.connected().await;

    let (status, sent) = ctl
        .post("/_ctl/send", json!({"from": CONTACT, "to": ACCOUNT, "text": "keep me"}))
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    // The phone acknowledges; the device, whose commit fails, does not.
    let acked = until(&ctl, &format!("/_ctl/acked/{id}"), |b| b["acked_by_devices"] == 1).await;
    assert_eq!(acked["delivered_to_devices"], 2, "{acked}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, acked) = ctl.get(&format!("/_ctl/acked/{id}")).await;
    assert_eq!(acked["acked_by_devices"], 1, "{acked}");
    device.stop().await;

    let again = Device::start(&server, &store).await;
    let (text, offline) = again
        .events
        .wait("the redelivered message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| (m.message.text_content().map(str::to_owned), m.info.is_offline)),
            _ => None,
        })
        .await;
    assert_eq!(text.as_deref(), Some("keep me"));
    assert!(offline);
    until(&ctl, &format!("/_ctl/acked/{id}"), |b| b["acked_by_devices"] == 2).await;
    again.stop().await;
    server.shutdown().await;
}
