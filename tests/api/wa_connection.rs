//! The real transport's connection to WhatsApp, against the WhatsApp test server: the web
//! version fetched once and fetched again when WhatsApp calls it outdated, a stream restart the
//! client rides out by itself (not a restart by the health check), the business's presence,
//! a ban retried once it ends, and an unlink that must be confirmed before the keys go.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::Backend;
use crate::wa_rig::{BUSINESS, LOCATION, Rig, WAIT};

async fn stat(rig: &Rig, name: &str) -> u64 {
    rig.ctl_get("/_ctl/stats").await[name].as_u64().unwrap()
}

/// Polls until `check` holds for the value `read` returns.
async fn until<T: std::fmt::Debug>(what: &str, mut read: impl AsyncFnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let started = Instant::now();
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(started.elapsed() < WAIT, "{what}: still {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn paired(backend: Backend) -> Option<Rig> {
    let rig = Rig::start(backend).await?;
    rig.pair_by_qr().await;
    Some(rig)
}

/// WhatsApp refuses the version the client announces; waghl parks the session as outdated,
/// fetches the version again and comes back with the new one, by itself.
async fn an_outdated_client_comes_back_with_the_version_fetched_again(backend: Backend) {
    let Some(rig) = paired(backend).await else { return };
    assert_eq!(stat(&rig, "sw_js_fetches").await, 1, "one fetch for the process");
    let current = wa_testserver::CLIENT_VERSION.2;
    rig.ctl_post("/_ctl/web-version", json!({ "revision": current + 1 }))
        .await;
    rig.ctl_post("/_ctl/outdated", json!({ "phone": BUSINESS, "below": current + 1 }))
        .await;
    until(
        "parked as outdated",
        async || {
            rig.app
                .metric("waghl_session_transitions_total{state=\"parked\"}")
                .await
        },
        |parked| *parked >= 1.0,
    )
    .await;
    rig.app.wait_for_session(LOCATION, "connected", None).await;
    assert_eq!(stat(&rig, "sw_js_fetches").await, 2, "fetched again after the refusal");
    assert_eq!(rig.app.metric("waghl_session_restarts_total").await, 0.0);
}

/// A stream restart (515) the client answers by reconnecting on its own, without a
/// `Disconnected` event, while logins fail for a few seconds: the session shows
/// `reconnecting` and comes back without waghl restarting the client.
async fn a_silent_reconnect_is_not_mistaken_for_a_dead_client(backend: Backend) {
    let Some(rig) = paired(backend).await else { return };
    let restarted = rig
        .ctl_post("/_ctl/restart-stream", json!({ "phone": BUSINESS, "seconds": 3 }))
        .await;
    assert_eq!(restarted["restarted"], 1);
    rig.app
        .wait_for_session(LOCATION, "reconnecting", Some("wa_disconnected"))
        .await;
    rig.app.wait_for_session(LOCATION, "connected", None).await;
    assert_eq!(rig.app.metric("waghl_session_restarts_total").await, 0.0);
    assert_eq!(rig.app.metric("waghl_session_health_check_failures_total").await, 0.0);
}

/// The business does not show "online" around the clock: the crate announces `available` on
/// each connection (after a reconnect, once its push name is known); waghl's `unavailable`
/// follows it.
async fn the_business_is_not_shown_online(backend: Backend) {
    let Some(rig) = paired(backend).await else { return };
    let connects = stat(&rig, "connects").await;
    rig.ctl_post("/_ctl/drop", json!({ "phone": BUSINESS })).await;
    until("a reconnect", async || stat(&rig, "connects").await, |c| *c > connects).await;
    rig.app.wait_for_session(LOCATION, "connected", None).await;
    let presence = async || rig.ctl_get(&format!("/_ctl/presence/{BUSINESS}")).await["presence"].clone();
    until("presence after reconnecting", presence, |p| !p.is_null()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    until("presence after reconnecting", presence, |p| *p == "unavailable").await;
}

/// A temporary ban parks the session until WhatsApp said it ends, then it connects again.
async fn a_ban_is_waited_out_and_the_session_comes_back(backend: Backend) {
    let Some(rig) = paired(backend).await else { return };
    rig.ctl_post("/_ctl/ban", json!({ "phone": BUSINESS, "seconds": 2 }))
        .await;
    rig.app
        .wait_for_session(LOCATION, "parked", Some("wa_temporary_ban"))
        .await;
    rig.app.wait_for_session(LOCATION, "connected", None).await;
}

/// Logging out needs WhatsApp's confirmation: while WhatsApp cannot be reached the keys stay
/// (503 `not_unlinked`) and the device stays linked; `force` wipes them; once reachable, a
/// logout unlinks the device on the phone's side.
async fn a_logout_wipes_the_keys_only_once_whatsapp_unlinked_the_device(backend: Backend) {
    let Some(rig) = paired(backend).await else { return };
    let path = format!("/api/v1/locations/{LOCATION}/session");
    let linked = async || {
        rig.ctl_get(&format!("/_ctl/devices/{BUSINESS}")).await["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["id"] != 0)
            .count()
    };
    assert_eq!(linked().await, 1);

    rig.ctl_post("/_ctl/restart-stream", json!({ "phone": BUSINESS, "seconds": 30 }))
        .await;
    rig.app.wait_for_session(LOCATION, "reconnecting", None).await;
    let refused = rig.app.admin_delete(&path).await;
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_unlinked", "{body}");
    assert_eq!(rig.app.session(LOCATION).await["phone"], BUSINESS, "keys kept");
    assert_eq!(linked().await, 1);

    let forced = rig.app.admin_delete(&format!("{path}?force=true")).await;
    assert_eq!(forced.status(), 200);
    rig.app.wait_for_session(LOCATION, "unpaired", None).await;

    // Paired again (a new device), with WhatsApp reachable: unlinked on the phone too.
    rig.ctl_post("/_ctl/restart-stream", json!({ "phone": BUSINESS, "seconds": 0 }))
        .await;
    rig.pair_by_qr().await;
    let done = rig.app.admin_delete(&path).await;
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    rig.app.wait_for_session(LOCATION, "unpaired", None).await;
    // The forced logout left its device behind; the confirmed one removed its own.
    let devices = rig.ctl_get(&format!("/_ctl/devices/{BUSINESS}")).await;
    assert_eq!(linked().await, 1, "{devices}");
}

on_both_backends!(
    an_outdated_client_comes_back_with_the_version_fetched_again,
    a_silent_reconnect_is_not_mistaken_for_a_dead_client,
    the_business_is_not_shown_online,
    a_ban_is_waited_out_and_the_session_comes_back,
    a_logout_wipes_the_keys_only_once_whatsapp_unlinked_the_device,
);
