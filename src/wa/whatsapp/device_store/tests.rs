//! The semantics whatsapp-rust relies on, through its own traits, on SQLite and (when
//! `WAGHL_TEST_DATABASE_URL` is set, always in CI) on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore, PendingInboundKey,
    PendingInboundRow, ProtocolStore, SignalStore,
};
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;

use super::*;
use crate::crypto::SecretKey;
use crate::store::DatabaseUrl;

/// A fresh store on each available backend, with what keeps it alive.
async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let key = || Arc::new(SecretKey::from_bytes(&[3; 32]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = DatabaseUrl::parse(&format!("sqlite://{}/w.db", dir.path().display())).unwrap();
    let mut urls = vec![(sqlite, dir)];
    if let Some(url) = fresh_postgres().await {
        urls.push((DatabaseUrl::parse(&url).unwrap(), tempfile::tempdir().unwrap()));
    }
    let mut stores = Vec::new();
    for (url, dir) in urls {
        let store = Store::connect(&url, key()).await.unwrap();
        store.migrate().await.unwrap();
        stores.push((store, dir));
    }
    stores
}

async fn fresh_postgres() -> Option<String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = match std::env::var("WAGHL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but WAGHL_TEST_DATABASE_URL is not set"),
        _ => return None,
    };
    let name = format!(
        "waghl_unit_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        now_ms()
    );
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

fn backend(store: &Store) -> DbBackend {
    DbBackend::new(store, &LocationId::parse("loc1").unwrap())
}

#[tokio::test]
async fn pre_keys_are_marked_uploaded_without_coming_back_and_the_largest_id_is_known() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        assert_eq!(b.get_max_prekey_id().await.unwrap(), 0);
        let batch: Vec<(u32, Bytes)> = (1..=3).map(|id| (id, Bytes::from(vec![id as u8; 8]))).collect();
        b.store_prekeys_batch(&batch, false).await.unwrap();
        b.store_prekey(7, b"seven", false).await.unwrap();
        assert_eq!(b.get_max_prekey_id().await.unwrap(), 7);

        b.remove_prekey(2).await.unwrap();
        b.mark_prekeys_uploaded(&[1, 2, 99]).await.unwrap();
        assert_eq!(b.load_prekey(2).await.unwrap(), None, "a consumed key came back");
        assert_eq!(b.load_prekey(99).await.unwrap(), None, "marking inserted a key");
        let rows = store.device_keys("loc1").list(Kind::PreKey, None).await.unwrap();
        let uploaded: Vec<(&str, bool)> = rows.iter().map(|r| (r.key.as_str(), r.flag)).collect();
        assert_eq!(uploaded.len(), 3);
        assert!(
            uploaded.contains(&("1", true)) && uploaded.contains(&("3", false)) && uploaded.contains(&("7", false))
        );

        let mut loaded = b.load_prekeys_batch(&[1, 2, 3, 7]).await.unwrap();
        loaded.sort_by_key(|(id, _)| *id);
        let ids: Vec<u32> = loaded.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 3, 7]);
        assert_eq!(loaded[0].1.as_ref(), &[1u8; 8]);
        b.remove_prekey(7).await.unwrap();
        assert_eq!(b.get_max_prekey_id().await.unwrap(), 3);
    }
}

#[tokio::test]
async fn expiry_deletes_take_only_what_is_past_its_time() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        let now = now_secs();
        b.store_sent_message("chat@s.whatsapp.net", "M1", b"payload")
            .await
            .unwrap();
        assert_eq!(b.delete_expired_sent_messages(now - 60).await.unwrap(), 0);
        assert_eq!(
            b.take_sent_message("chat@s.whatsapp.net", "M1")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"payload"[..])
        );
        assert_eq!(
            b.take_sent_message("chat@s.whatsapp.net", "M1").await.unwrap(),
            None,
            "taken twice"
        );
        b.store_sent_message("chat@s.whatsapp.net", "M2", b"payload")
            .await
            .unwrap();
        assert_eq!(b.delete_expired_sent_messages(now + 60).await.unwrap(), 1);

        let rows = [
            PendingInboundRow {
                chat: "c1",
                sender: "s1",
                id: "A",
                message: b"a",
            },
            PendingInboundRow {
                chat: "c2",
                sender: "s1",
                id: "A",
                message: b"b",
            },
            PendingInboundRow {
                chat: "c2",
                sender: "s2",
                id: "B",
                message: b"c",
            },
        ];
        b.store_pending_inbound_batch(&rows).await.unwrap();
        assert_eq!(
            b.get_pending_inbound("c2", "s1", "A").await.unwrap().as_deref(),
            Some(&b"b"[..])
        );
        b.delete_pending_inbound_batch(&[PendingInboundKey {
            chat: "c1",
            sender: "s1",
            id: "A",
        }])
        .await
        .unwrap();
        assert_eq!(b.get_pending_inbound("c1", "s1", "A").await.unwrap(), None);
        assert_eq!(b.delete_expired_pending_inbound(now - 60).await.unwrap(), 0);
        assert_eq!(b.delete_expired_pending_inbound(now + 60).await.unwrap(), 2);

        let entry = |id: &str, expires_at: i64| MsgSecretEntry {
            chat: Arc::from("c"),
            sender: Arc::from("s"),
            msg_id: Arc::from(id),
            secret: [9; 32],
            expires_at,
            message_ts: 5,
        };
        let stored = b
            .put_msg_secrets(vec![
                entry("never", 0),
                entry("past", 1_000),
                entry("at", 2_000),
                entry("later", 3_000),
            ])
            .await
            .unwrap();
        assert_eq!(stored, 4);
        // A redelivery never shortens a window: the later deadline wins, "never" above all.
        b.put_msg_secrets(vec![entry("later", 2_500), entry("past", 0)])
            .await
            .unwrap();
        assert_eq!(
            b.delete_expired_msg_secrets(2_000).await.unwrap(),
            1,
            "only the one due at 2000"
        );
        assert!(b.get_msg_secret("c", "s", "at").await.unwrap().is_none());
        for kept in ["never", "past", "later"] {
            assert_eq!(
                b.get_msg_secret_with_ts("c", "s", kept).await.unwrap(),
                Some((vec![9; 32], 5)),
                "{kept}"
            );
        }
        assert_eq!(b.delete_expired_msg_secrets(3_000).await.unwrap(), 1);

        // tc tokens: gone only when stale on both counts.
        b.store_received_tc_token("old@lid", b"t", 100).await.unwrap();
        b.store_received_tc_token("recent-sender@lid", b"t", 100).await.unwrap();
        b.touch_tc_token_sender_timestamp("recent-sender@lid", 900)
            .await
            .unwrap();
        b.store_received_tc_token("fresh@lid", b"t", 900).await.unwrap();
        assert_eq!(b.delete_expired_tc_tokens(500, 500).await.unwrap(), 1);
        let mut left = b.get_all_tc_token_jids().await.unwrap();
        left.sort();
        assert_eq!(left, ["fresh@lid", "recent-sender@lid"]);
    }
}

#[tokio::test]
async fn tc_tokens_merge_newer_wins_and_keep_each_writers_field() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        b.touch_tc_token_sender_timestamp("a@lid", 50).await.unwrap();
        let placeholder = b.get_tc_token("a@lid").await.unwrap().unwrap();
        assert_eq!((placeholder.token.len(), placeholder.sender_timestamp), (0, Some(50)));
        // A placeholder never blocks the first real token, even an older one.
        b.store_received_tc_token("a@lid", b"real", 10).await.unwrap();
        b.store_received_tc_token("a@lid", b"stale", 5).await.unwrap();
        b.touch_tc_token_sender_timestamp("a@lid", 40).await.unwrap();
        let entry = b.get_tc_token("a@lid").await.unwrap().unwrap();
        assert_eq!(
            (entry.token, entry.token_timestamp, entry.sender_timestamp),
            (b"real".to_vec(), 10, Some(50))
        );
        b.store_received_tc_token("a@lid", b"newer", 10).await.unwrap();
        assert_eq!(b.get_tc_token("a@lid").await.unwrap().unwrap().token, b"newer");
    }
}

#[tokio::test]
async fn a_lid_is_found_from_its_phone_and_the_phone_from_its_lid() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        let mapping = |lid: &str, phone: &str, created_at, updated_at| LidPnMappingEntry {
            lid: lid.into(),
            phone_number: phone.into(),
            created_at,
            updated_at,
            learning_source: "usync".into(),
        };
        b.put_lid_mapping(&mapping("100", "1555", 10, 10)).await.unwrap();
        assert_eq!(b.get_lid_mapping("100").await.unwrap().unwrap().phone_number, "1555");
        assert_eq!(b.get_pn_mapping("1555").await.unwrap().unwrap().lid, "100");

        // The LID moves to another phone: it leaves the old one and keeps when it was first seen.
        b.put_lid_mappings(&[mapping("100", "1666", 20, 30)]).await.unwrap();
        assert!(b.get_pn_mapping("1555").await.unwrap().is_none());
        let moved = b.get_lid_mapping("100").await.unwrap().unwrap();
        assert_eq!(
            (moved.phone_number.as_str(), moved.created_at, moved.updated_at),
            ("1666", 10, 30)
        );

        // Two LIDs of one phone: the most recently updated answers.
        b.put_lid_mappings(&[mapping("200", "1666", 40, 40), mapping("300", "1777", 5, 5)])
            .await
            .unwrap();
        assert_eq!(b.get_pn_mapping("1666").await.unwrap().unwrap().lid, "200");
        b.put_lid_mapping(&mapping("100", "1666", 50, 50)).await.unwrap();
        assert_eq!(b.get_pn_mapping("1666").await.unwrap().unwrap().lid, "100");
        assert_eq!(b.get_all_lid_mappings().await.unwrap().len(), 3);
        assert!(b.get_lid_mapping("999").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn clears_reach_only_their_scope() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        let mac = |i: u8| AppStateMutationMAC {
            index_mac: vec![i; 32],
            value_mac: vec![i + 100; 32],
        };
        b.put_mutation_macs("regular", 3, &[mac(1), mac(2)]).await.unwrap();
        b.put_mutation_macs("critical_block", 4, &[mac(1)]).await.unwrap();
        let found = b
            .get_mutation_macs("regular", &[[1; 32], [2; 32], [3; 32]])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&[2; 32]], vec![102; 32]);
        b.delete_mutation_macs("regular", &[vec![2; 32]]).await.unwrap();
        assert!(b.get_mutation_mac("regular", &[2; 32]).await.unwrap().is_none());
        b.clear_mutation_macs("regular").await.unwrap();
        assert!(b.get_mutation_mac("regular", &[1; 32]).await.unwrap().is_none());
        assert_eq!(
            b.get_mutation_mac("critical_block", &[1; 32]).await.unwrap(),
            Some(vec![101; 32])
        );

        b.set_sender_key_status("g1", &[("d1", true), ("d2", false)])
            .await
            .unwrap();
        b.set_sender_key_status("g2", &[("d1", true), ("d3", true)])
            .await
            .unwrap();
        b.set_sender_key_status("g1", &[("d2", true)]).await.unwrap();
        let mut g1 = b.get_sender_key_devices("g1").await.unwrap();
        g1.sort();
        assert_eq!(g1, [("d1".to_owned(), true), ("d2".to_owned(), true)]);
        b.delete_sender_key_device_rows(&["d1"]).await.unwrap();
        assert_eq!(b.get_sender_key_devices("g2").await.unwrap(), [("d3".to_owned(), true)]);
        b.clear_sender_key_devices("g1").await.unwrap();
        assert!(b.get_sender_key_devices("g1").await.unwrap().is_empty());
        assert_eq!(b.get_sender_key_devices("g2").await.unwrap().len(), 1);
        b.clear_all_sender_key_devices().await.unwrap();
        assert!(b.get_sender_key_devices("g2").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn signal_state_is_found_for_every_device_of_a_user_and_no_other_user() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        b.put_sessions_batch(&[(Arc::from("1555:2@lid"), Bytes::from_static(b"s"))])
            .await
            .unwrap();
        b.put_identities_batch(&[(Arc::from("1666@s.whatsapp.net"), [1; 32])])
            .await
            .unwrap();
        for (user, expected) in [
            ("1555", true),
            ("1666", true),
            ("155", false),
            ("15551", false),
            ("1777", false),
        ] {
            assert_eq!(b.has_signal_state_for_user(user).await.unwrap(), expected, "{user}");
        }
        assert!(b.has_session("1555:2@lid").await.unwrap());
        assert_eq!(b.load_identity("1666@s.whatsapp.net").await.unwrap(), Some([1; 32]));
        b.delete_session("1555:2@lid").await.unwrap();
        assert!(!b.has_signal_state_for_user("1555").await.unwrap());
    }
}

#[tokio::test]
async fn the_device_and_its_latest_usable_app_state_key_come_back() {
    for (store, _dir) in stores().await {
        let b = backend(&store);
        assert!(!b.exists().await.unwrap());
        assert_eq!(b.create().await.unwrap(), 1);
        let mut device = b.load().await.unwrap().unwrap();
        // Creating again never replaces the keys.
        b.create().await.unwrap();
        assert_eq!(b.load().await.unwrap().unwrap().adv_secret_key, device.adv_secret_key);
        device.push_name = "Acme".into();
        b.save(&device).await.unwrap();
        assert_eq!(b.load().await.unwrap().unwrap().push_name, "Acme");
        // Another location sees nothing of it.
        assert!(
            !DbBackend::new(&store, &LocationId::parse("loc2").unwrap())
                .exists()
                .await
                .unwrap()
        );

        let key = |t| AppStateSyncKey {
            key_data: vec![7; 32],
            fingerprint: vec![],
            timestamp: t,
        };
        for id in [[0, 1], [0, 3], [0, 2]] {
            b.set_sync_key(&id, key(i64::from(id[1]))).await.unwrap();
        }
        assert_eq!(b.get_latest_sync_key_id().await.unwrap(), Some(vec![0, 3]));
        assert_eq!(b.get_sync_key(&[0, 2]).await.unwrap().unwrap().timestamp, 2);
    }
}

/// Two overlapping saves (the crate's saver and a flush) commit in the order they were called:
/// the older snapshot never lands last. SQLite's busy handler wakes a later waiter first when
/// the writer's lock is held a while, which is what would reorder them.
#[tokio::test]
async fn overlapping_device_saves_commit_in_the_order_they_were_made() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/w.db", dir.path().display());
    let store = Store::connect(
        &DatabaseUrl::parse(&url).unwrap(),
        Arc::new(SecretKey::from_bytes(&[3; 32]).unwrap()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let b = Arc::new(backend(&store));
    b.create().await.unwrap();
    let mut device = b.load().await.unwrap().unwrap();

    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut writer).await.unwrap();
    device.push_name = "older".into();
    let older = tokio::spawn({
        let (b, device) = (b.clone(), device.clone());
        async move { b.save(&device).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    device.push_name = "newer".into();
    let newer = tokio::spawn({
        let (b, device) = (b.clone(), device.clone());
        async move { b.save(&device).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    older.await.unwrap().unwrap();
    newer.await.unwrap().unwrap();
    assert_eq!(b.load().await.unwrap().unwrap().push_name, "newer");
}
