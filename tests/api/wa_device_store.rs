//! The WhatsApp device keys in waghl's database, against the WhatsApp test server: a session
//! starts on another instance of the database with no file of its own, a device file of the
//! earlier version (whatsapp-rust's own SQLite store) is imported once and connects without a
//! scan, a file that cannot be imported parks its session instead of pairing over it, and no
//! secret of the device is readable in the database without WAGHL_SECRET_KEY.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use waghl::crypto::SecretKey;
use waghl::store::{DatabaseUrl, DeviceKeyKind, Store};
use whatsapp_rust::TokioRuntime;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;

use crate::helpers::{Backend, SECRET_KEY, TestApp};
use crate::wa_rig::{BUSINESS, LOCATION, Rig, WAIT, linked_devices};

on_both_backends!(
    a_session_starts_on_another_instance_from_the_keys_in_the_database,
    a_device_file_of_the_earlier_version_is_imported_once_and_connects_without_a_scan,
    a_device_file_that_cannot_be_imported_is_kept_and_parks_its_session,
    no_device_secret_is_readable_in_the_database_without_the_key,
);

/// Restored sessions start at once, so the times measured are the client's own.
const SETTINGS: &[(&str, &str)] = &[("WAGHL_RESTORE_SPREAD_MS", "0")];

fn sessions_dir(app: &TestApp) -> PathBuf {
    app.db.dir.path().join("sessions")
}

/// A message each way: the contact's reaches GHL, GHL's reply reaches the contact.
async fn a_message_flows_each_way(rig: &Rig, tag: &str) {
    let id = rig.contact_sends(json!({ "text": format!("in {tag}") })).await;
    rig.in_ghl(&id).await;
    let reply = format!("out {tag}");
    rig.reply(&format!("ghl-{tag}"), &reply, &[]).await;
    rig.contact_received(|m| m["text"] == reply.as_str()).await;
}

async fn wait_connected(app: &TestApp) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let session = app.session(LOCATION).await;
        if session["state"] == "connected" {
            return session;
        }
        assert!(started.elapsed() < WAIT, "never connected: {session}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The daemon is stopped and started again as another instance with an empty sessions
/// directory (as on another machine): it logs in from the keys in the database.
async fn a_session_starts_on_another_instance_from_the_keys_in_the_database(backend: Backend) {
    let Some(mut rig) = Rig::start_with(backend, SETTINGS).await else {
        return;
    };
    let started = Instant::now();
    rig.pair_by_qr().await;
    eprintln!("MEASURE {backend:?} pairing: {} ms", started.elapsed().as_millis());
    let device = linked_devices(&rig.server).await;
    assert_eq!(device.len(), 1);
    let started = Instant::now();
    rig.app = rig.app.restart().await;
    wait_connected(&rig.app).await;
    eprintln!(
        "MEASURE {backend:?} restart to connected: {} ms",
        started.elapsed().as_millis()
    );

    let sessions = sessions_dir(&rig.app);
    let written: Vec<_> = std::fs::read_dir(&sessions)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "the transport wrote under sessions/: {written:?}");
    let _ = std::fs::remove_dir_all(&sessions);
    rig.app = rig.app.restart().await;
    let session = wait_connected(&rig.app).await;
    assert_eq!(session["phone"], BUSINESS);
    assert_eq!(linked_devices(&rig.server).await, device, "a new device was linked");
    a_message_flows_each_way(&rig, "moved").await;
    report_size(&rig.app.state.store, &rig.app.db.url, backend).await;
    rig.server.shutdown().await;
}

/// Rows and bytes one paired device takes in the database (for the report).
async fn report_size(store: &Store, url: &str, backend: Backend) {
    let keys = store.device_keys(LOCATION);
    let mut rows = Vec::new();
    let mut bytes = keys.load_device().await.unwrap().map_or(0, |d| d.len());
    for kind in KINDS {
        let of_kind = keys.list(kind, None).await.unwrap();
        bytes += of_kind.iter().map(|r| r.value.len()).sum::<usize>();
        if !of_kind.is_empty() {
            rows.push(format!("{kind:?} {}", of_kind.len()));
        }
    }
    let sealed: usize = raw_values(url).await.iter().map(Vec::len).sum();
    eprintln!(
        "MEASURE {backend:?} one paired device: 1 device row + [{}], {bytes} bytes plaintext, {sealed} sealed",
        rows.join(", ")
    );
}

/// The kinds a paired device writes (every kind the tests can read back).
const KINDS: [DeviceKeyKind; 17] = [
    DeviceKeyKind::Identity,
    DeviceKeyKind::Session,
    DeviceKeyKind::PreKey,
    DeviceKeyKind::SignedPreKey,
    DeviceKeyKind::SenderKey,
    DeviceKeyKind::SyncKey,
    DeviceKeyKind::AppStateVersion,
    DeviceKeyKind::MutationMac,
    DeviceKeyKind::LidMapping,
    DeviceKeyKind::BaseKey,
    DeviceKeyKind::DeviceList,
    DeviceKeyKind::TcToken,
    DeviceKeyKind::SentMessage,
    DeviceKeyKind::MsgSecret,
    DeviceKeyKind::PendingInbound,
    DeviceKeyKind::SenderKeyDevice,
    DeviceKeyKind::GroupMetadata,
];

/// The secrets of a device, as whatsapp-rust holds them before waghl seals anything.
struct DeviceSecrets(Vec<Vec<u8>>);

impl DeviceSecrets {
    fn of(device: &whatsapp_rust::wacore::store::Device) -> Self {
        Self(vec![
            device.noise_key.private_key.serialize().to_vec(),
            device.identity_key.private_key.serialize().to_vec(),
            device.signed_pre_key.private_key.serialize().to_vec(),
            device.adv_secret_key.to_vec(),
        ])
    }
}

/// Pairs a whatsapp-rust client on the crate's own SQLite store at `file` with the business's
/// phone, as the earlier version did, and stops it; the device's secrets.
async fn pair_a_device_file(rig: &Rig, file: &Path) -> DeviceSecrets {
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let started = Instant::now();
    let (codes, mut qr) = tokio::sync::mpsc::unbounded_channel();
    let bot = Bot::builder()
        .with_backend(SqliteStore::new(file.to_str().unwrap()).await.unwrap())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(rig.server.ws_url()))
        .with_http_client(wa_testserver::LoopbackHttpClient::new(rig.server.http_url()))
        .with_runtime(TokioRuntime)
        .with_version(wa_testserver::CLIENT_VERSION)
        .on_event(move |event, _client| {
            let codes = codes.clone();
            async move {
                if let Event::PairingQrCode(code) = &*event {
                    let _ = codes.send(code.code.clone());
                }
            }
        })
        .build()
        .await
        .unwrap();
    let client = bot.client();
    let handle = bot.spawn();
    let code = tokio::time::timeout(WAIT, qr.recv()).await.unwrap().unwrap();
    rig.ctl_post("/_ctl/scan", json!({ "phone": BUSINESS, "qr": code }))
        .await;
    let paired_at = Instant::now();
    while client.persistence_manager().get_device_snapshot().pn.is_none() {
        assert!(paired_at.elapsed() < WAIT, "the file's device never paired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.wait_for_connected(WAIT).await.unwrap();
    eprintln!(
        "MEASURE pairing (the crate's file store): {} ms",
        started.elapsed().as_millis()
    );
    let secrets = DeviceSecrets::of(&client.persistence_manager().get_device_snapshot());
    handle.shutdown().await;
    drop(client);

    // The file's own reconnect, for comparison.
    let started = Instant::now();
    let bot = Bot::builder()
        .with_backend(SqliteStore::new(file.to_str().unwrap()).await.unwrap())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(rig.server.ws_url()))
        .with_http_client(wa_testserver::LoopbackHttpClient::new(rig.server.http_url()))
        .with_runtime(TokioRuntime)
        .with_version(wa_testserver::CLIENT_VERSION)
        .build()
        .await
        .unwrap();
    let client = bot.client();
    let handle = bot.spawn();
    client.wait_for_connected(WAIT).await.unwrap();
    eprintln!(
        "MEASURE reconnect (the crate's file store): {} ms",
        started.elapsed().as_millis()
    );
    handle.shutdown().await;
    secrets
}

/// Fails when any raw row of the device's tables holds one of `secrets` in plaintext.
async fn assert_sealed(store: &Store, url: &str, secrets: &[Vec<u8>]) {
    let raw = raw_values(url).await;
    assert!(raw.len() > 10, "only {} rows", raw.len());
    for secret in secrets.iter().filter(|s| s.len() >= 16) {
        let found = raw
            .iter()
            .filter(|v| v.windows(secret.len()).any(|w| w == secret.as_slice()))
            .count();
        assert_eq!(found, 0, "a secret of {} bytes is stored in plaintext", secret.len());
    }
    assert!(store.device_keys(LOCATION).load_device().await.unwrap().is_some());
}

/// Every sealed value of both tables, read with plain SQL.
async fn raw_values(url: &str) -> Vec<Vec<u8>> {
    use sqlx::Connection as _;
    const SQL: &str = "SELECT value FROM wa_device_keys UNION ALL SELECT device FROM wa_devices";
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(SQL).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(SQL).fetch_all(&mut conn).await.unwrap()
    }
}

async fn open_store(url: &str, key: &str) -> Store {
    let key = Arc::new(SecretKey::from_base64(key).unwrap());
    Store::connect(&DatabaseUrl::parse(url).unwrap(), key).await.unwrap()
}

/// A device file written by the current crate (the earlier waghl's store) is imported at
/// start, set aside as `.imported`, and its session logs in from it: no scan, no new device.
/// A second start imports nothing, even when the file is put back.
async fn a_device_file_of_the_earlier_version_is_imported_once_and_connects_without_a_scan(backend: Backend) {
    let Some(mut rig) = Rig::start_with(backend, SETTINGS).await else {
        return;
    };
    let file = sessions_dir(&rig.app).join(format!("{LOCATION}.db"));
    let secrets = pair_a_device_file(&rig, &file).await;
    let device = linked_devices(&rig.server).await;
    assert_eq!(device.len(), 1);
    // The session as the earlier version left it: connected.
    rig.app
        .state
        .store
        .record_transition(LOCATION, "connected", None, Some(BUSINESS), None)
        .await
        .unwrap();

    let started = Instant::now();
    rig.app = rig.app.restart().await;
    let session = wait_connected(&rig.app).await;
    eprintln!(
        "MEASURE {backend:?} upgrade start to connected: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(session["phone"], BUSINESS);
    assert_eq!(linked_devices(&rig.server).await, device, "a new device was linked");
    assert!(!file.exists(), "the file was not set aside");
    let imported = file.with_extension("db.imported");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&imported).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    a_message_flows_each_way(&rig, "imported").await;
    assert_sealed(&rig.app.state.store, &rig.app.db.url, &secrets.0).await;

    // Put back by mistake: not imported again (the database's keys win), left as it is.
    std::fs::copy(&imported, &file).unwrap();
    rig.app = rig.app.restart().await;
    wait_connected(&rig.app).await;
    assert!(
        file.exists(),
        "a file for a location with keys in the database was imported"
    );
    assert!(crate::logs::captured().contains("holds this location's device keys already"));
    assert_eq!(linked_devices(&rig.server).await, device);
    a_message_flows_each_way(&rig, "again").await;
    rig.server.shutdown().await;
}

/// A file that does not open is kept as it is and its session parked with a reason, instead
/// of a new pairing over the keys it may hold; logged out by force, the session pairs anew.
async fn a_device_file_that_cannot_be_imported_is_kept_and_parks_its_session(backend: Backend) {
    let Some(rig) = Rig::start_with(backend, SETTINGS).await else {
        return;
    };
    let dir = sessions_dir(&rig.app);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{LOCATION}.db"));
    let garbage = b"not a database, but it may be the only copy of someone's keys".repeat(100);
    std::fs::write(&file, &garbage).unwrap();

    let path = format!("/api/v1/locations/{LOCATION}/session");
    let started = rig.app.admin_post(&path, &json!({})).await;
    assert_eq!(started.status(), 202);
    rig.app
        .wait_for_session(LOCATION, "parked", Some("wa_keys_not_imported"))
        .await;
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "the file changed");
    assert!(linked_devices(&rig.server).await.is_empty());
    let logged = crate::logs::captured();
    assert!(
        logged.contains("could not import the WhatsApp device keys"),
        "not logged"
    );

    let forced = rig.app.admin_delete(&format!("{path}?force=true")).await;
    assert_eq!(forced.status(), 200);
    assert!(!file.exists(), "the wipe left the file to be imported again");
    rig.pair_by_qr().await;
    rig.server.shutdown().await;
}

/// Every secret of a device paired through waghl is sealed: neither the device's private keys
/// nor any session or pre-key record is in the tables in plaintext, and no value opens with
/// another key.
async fn no_device_secret_is_readable_in_the_database_without_the_key(backend: Backend) {
    let Some(rig) = Rig::start_with(backend, SETTINGS).await else {
        return;
    };
    rig.pair_by_qr().await;
    a_message_flows_each_way(&rig, "sealed").await;
    let store = &rig.app.state.store;
    let keys = store.device_keys(LOCATION);
    let device: whatsapp_rust::wacore::store::Device =
        serde_json::from_slice(&keys.load_device().await.unwrap().unwrap()).unwrap();
    let mut secrets = DeviceSecrets::of(&device).0;
    for kind in [DeviceKeyKind::Session, DeviceKeyKind::PreKey] {
        let rows = keys.list(kind, None).await.unwrap();
        assert!(!rows.is_empty(), "no {kind:?} rows");
        secrets.extend(rows.into_iter().map(|r| r.value));
    }
    assert_sealed(store, &rig.app.db.url, &secrets).await;

    let other = open_store(&rig.app.db.url, &SecretKey::generate_base64()).await;
    let foreign = other.device_keys(LOCATION);
    assert!(
        foreign.load_device().await.is_err(),
        "the device opened with another key"
    );
    for kind in KINDS {
        let rows = keys.list(kind, None).await.unwrap();
        assert!(
            rows.is_empty() || foreign.list(kind, None).await.is_err(),
            "{kind:?} opened with another key"
        );
    }
    // The right key, from outside the daemon, opens them.
    let same = open_store(&rig.app.db.url, SECRET_KEY).await;
    assert!(same.device_keys(LOCATION).load_device().await.unwrap().is_some());
    report_size(store, &rig.app.db.url, backend).await;
    rig.server.shutdown().await;
}
