//! Stage 5, the network's failures on demand: each `/_ctl` fault reaches the unmodified client
//! as the event WhatsApp's real stanza would cause.

use crate::common::{Device, greet, linked, server, until};
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::Event;

const ACCOUNT: &str = "+15550002222";
const CONTACT: &str = "+14155550111";

async fn connects(device: &Device, n: usize) {
    device
        .events
        .wait_count(&format!("connection #{n}"), n, |e| matches!(e, Event::Connected(_)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_reconnects_by_itself_and_presence_is_seen() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    device.client.presence().set_unavailable().await.expect("presence");
    until(&ctl, &format!("/_ctl/presence/{ACCOUNT}"), |b| {
        b["presence"] == "unavailable"
    })
    .await;

    let (status, body) = ctl.post("/_ctl/drop", json!({"phone": ACCOUNT})).await;
    assert_eq!((status, body["dropped"].as_u64()), (200, Some(1)));
    device
        .events
        .wait("Disconnected", |e| matches!(e, Event::Disconnected(_)).then_some(()))
        .await;
    connects(&device, 2).await;
    let (_, stats) = ctl.get("/_ctl/stats").await;
    assert!(
        stats["connects"].as_u64().unwrap() >= 4,
        "phone, pairing, login, reconnect: {stats}"
    );
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_removing_the_device_logs_it_out() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, body) = ctl.post("/_ctl/logout", json!({"phone": ACCOUNT})).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)));
    device
        .events
        .wait("LoggedOut", |e| matches!(e, Event::LoggedOut(_)).then_some(()))
        .await;
    let (_, devices) = ctl.get(&format!("/_ctl/devices/{ACCOUNT}")).await;
    assert_eq!(
        devices["devices"].as_array().unwrap().len(),
        1,
        "only the phone is left: {devices}"
    );
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_ban_reaches_the_client_with_its_expiry() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, _) = ctl.post("/_ctl/ban", json!({"phone": ACCOUNT, "seconds": 3600})).await;
    assert_eq!(status, 200);
    let expire = device
        .events
        .wait("TemporaryBan", |e| match e {
            Event::TemporaryBan(ban) => Some(ban.expire),
            _ => None,
        })
        .await;
    assert!(expire.num_seconds() > 3500, "{expire:?}");
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_taking_the_stream_and_an_outdated_version_are_reported() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, body) = ctl.post("/_ctl/replace", json!({"phone": ACCOUNT})).await;
    assert_eq!((status, body["replaced"].as_u64()), (200, Some(1)));
    device
        .events
        .wait("StreamReplaced", |e| {
            matches!(e, Event::StreamReplaced(_)).then_some(())
        })
        .await;
    device.stop().await;

    // The same keys, started again, are refused as an outdated client.
    let (status, _) = ctl.post("/_ctl/outdated", json!({"phone": ACCOUNT})).await;
    assert_eq!(status, 200);
    let again = Device::start(&server, &dir.path().join("wa.db")).await;
    again
        .events
        .wait("ClientOutdated", |e| {
            matches!(e, Event::ClientOutdated(_)).then_some(())
        })
        .await;
    again.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_offline_messages_queue_and_arrive_on_reconnect() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    let (status, _) = ctl.post("/_ctl/offline", json!({"phone": ACCOUNT, "seconds": 3})).await;
    assert_eq!(status, 200);
    let (status, sent) = ctl
        .post(
            "/_ctl/send",
            json!({"from": CONTACT, "to": ACCOUNT, "text": "while you were out"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let (_, acked) = ctl.get(&format!("/_ctl/acked/{id}")).await;
    assert_eq!(acked["delivered_to_devices"], 1, "only the phone got it: {acked}");

    let offline = device
        .events
        .wait("the queued message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| m.info.is_offline),
            _ => None,
        })
        .await;
    assert!(offline, "delivered from the offline queue");
    until(&ctl, &format!("/_ctl/acked/{id}"), |b| b["acked_by_devices"] == 2).await;
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_message_stanzas_are_neither_acked_nor_delivered() {
    let (server, ctl, dir) = server().await;
    let device = linked(&server, &ctl, &dir.path().join("wa.db"), ACCOUNT).await;
    greet(&ctl, CONTACT, ACCOUNT).await;
    let (status, _) = ctl
        .post("/_ctl/hold-acks", json!({"phone": ACCOUNT, "seconds": 2}))
        .await;
    assert_eq!(status, 200);
    let sent = device
        .client
        .send_text(Jid::pn(&CONTACT[1..]), "lost in transit")
        .await
        .expect("written");
    connects(&device, 2).await;
    let acks = device
        .events
        .count(|e| matches!(e, Event::ServerAck(a) if a.id == sent.message_id));
    assert_eq!(acks, 0, "the server never acked the held stanza");
    let (_, received) = ctl.get(&format!("/_ctl/received/{CONTACT}")).await;
    assert!(
        !received["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == sent.message_id.as_str()),
        "{received}"
    );
    device.stop().await;
    server.shutdown().await;
}
