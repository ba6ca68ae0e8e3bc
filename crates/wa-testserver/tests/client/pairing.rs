//! Stages 1 and 2: an unmodified whatsapp-rust client connects (Noise XX with the test
//! certificate chain), gets QR codes, is linked by the phone's scan, and later logs in again
//! from its stored keys (Noise IK) without a scan.

use crate::common::{Device, server};
use serde_json::json;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::types::events::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_gets_qr_codes() {
    let (server, _ctl, dir) = server().await;
    let device = Device::start(&server, &dir.path().join("wa.db")).await;
    let qr = device.qr().await;
    let fields: Vec<&str> = qr.split(',').collect();
    assert_eq!(
        fields.len(),
        5,
        "ref, noise key, identity key, ADV secret, client type: {qr}"
    );
    assert!(fields[0].starts_with("2@"), "{qr}");
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_scans_the_qr_code_and_a_restart_logs_in_without_a_scan() {
    let (server, ctl, dir) = server().await;
    let store = dir.path().join("wa.db");
    let device = Device::start(&server, &store).await;
    let qr = device.qr().await;

    let (status, body) = ctl.post("/_ctl/scan", json!({"phone": "+15550001111", "qr": qr})).await;
    assert_eq!(status, 200, "{body}");
    let paired = device
        .events
        .wait("PairSuccess", |e| match e {
            Event::PairSuccess(p) => Some(p.id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(paired.user, "15550001111");
    assert_eq!(paired.device, 1);
    device.connected().await;
    let (_, devices) = ctl.get("/_ctl/devices/+15550001111").await;
    assert_eq!(devices["devices"][1]["id"], 1, "{devices}");
    assert_eq!(devices["devices"][1]["online"], true, "{devices}");

    // A scan of a code nobody shows is refused.
    let (status, _) = ctl.post("/_ctl/scan", json!({"phone": "+15550001111", "qr": qr})).await;
    assert_eq!(status, 409);

    device.stop().await;
    let again = Device::start(&server, &store).await;
    again.connected().await;
    assert_eq!(again.events.count(|e| matches!(e, Event::PairingQrCode(_))), 0);
    again.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_enters_a_pairing_code() {
    let (server, ctl, dir) = server().await;
    let device = Device::start(&server, &dir.path().join("wa.db")).await;
    device.qr().await;
    let options = PairCodeOptions {
        phone_number: "15550004444".into(),
        ..Default::default()
    };
    let code = device.client.pair_with_code(options).await.expect("a pairing code");

    // A number nobody asked a code for is refused.
    let (status, body) = ctl
        .post("/_ctl/pair-code", json!({"phone": "+15550009999", "code": code}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = ctl
        .post("/_ctl/pair-code", json!({"phone": "+15550004444", "code": code}))
        .await;
    assert_eq!(status, 200, "{body}");
    device.connected().await;
    let (_, devices) = ctl.get("/_ctl/devices/+15550004444").await;
    assert_eq!(devices["devices"][1]["online"], true, "{devices}");
    device.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_servers_key_falls_back_to_xx_and_is_refused() {
    let (server, ctl, dir) = server().await;
    let store = dir.path().join("wa.db");
    let device = crate::common::linked(&server, &ctl, &store, "+15550007777").await;
    device.stop().await;
    server.shutdown().await;

    // A new server has a new Noise key (the client's IK hello cannot be read, so the server
    // answers XXfallback) and knows no account (so the login is refused: logged out).
    let (other, _ctl, _dir) = crate::common::server().await;
    let again = Device::start(&other, &store).await;
    let on_connect = again
        .events
        .wait("LoggedOut", |e| match e {
            Event::LoggedOut(out) => Some(out.on_connect),
            _ => None,
        })
        .await;
    assert!(on_connect);
    again.stop().await;
    other.shutdown().await;
}
