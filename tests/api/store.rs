//! The store suite, run against both backends: SQLite always, PostgreSQL when
//! `WAGHL_TEST_DATABASE_URL` is set (and always in CI).

use std::sync::Arc;

use waghl::crypto::Secret;
use waghl::crypto::SecretKey;
use waghl::store::DatabaseUrl;
use waghl::store::{GhlTokens, LocationStatus, NewLocation, Store, TokenOwner, TokenSource};

use crate::helpers::{Backend, SECRET_KEY, TestDb};

/// Records what became of a claimed inbound row, as the inbound relay's writer does.
async fn finish_inbox(store: &Store, row: &waghl::store::InboxRow, outcome: waghl::store::InboxOutcome) {
    let finished = waghl::store::InboxRelayWrite::finished(row, outcome);
    assert_eq!(store.write_inbox(&[finished]).await.unwrap(), [true]);
}

/// Generates `sqlite::name` and `postgres::name` tests from `async fn name(db: TestDb, store: Store)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::run(super::Backend::Sqlite, super::$name).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::run(super::Backend::Postgres, super::$name).await })*
        }
    };
}

on_both_backends!(
    migrations_apply_and_the_store_reports_ready,
    sealed_tokens_never_reach_the_database_in_plaintext,
    a_reinstall_replaces_tokens_and_clears_the_error,
    a_wrong_secret_key_is_refused_at_open,
    retention_purges_bodies_of_finished_messages_and_keeps_the_rows,
    a_redelivered_inbound_message_is_stored_once,
    a_message_replaces_its_placeholder_and_is_relayed,
    a_batch_of_inbound_messages_is_stored_as_one_by_one,
    concurrent_enqueues_to_one_chat_leave_one_head_and_keep_their_order,
    a_replayed_older_message_becomes_its_chats_head_again,
    the_inbound_relays_writes_commit_together,
);

async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestDb, Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = open(&db.url, SECRET_KEY).await.expect("the store opens");
    test(db, store).await;
}

async fn open(url: &str, key: &str) -> Result<Store, waghl::store::StoreError> {
    let key = Arc::new(SecretKey::from_base64(key).unwrap());
    let store = Store::connect(&DatabaseUrl::parse(url).unwrap(), key).await?;
    store.migrate().await?;
    store.verify_secret_key().await?;
    Ok(store)
}

fn tokens(access: &str, refresh: Option<&str>) -> GhlTokens {
    GhlTokens {
        access_token: Secret::new(access),
        refresh_token: refresh.map(Secret::new),
        expires_at: waghl::time::now_ms() + 86_399_000,
    }
}

async fn migrations_apply_and_the_store_reports_ready(_db: TestDb, store: Store) {
    assert!(store.is_ready().await);
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    assert!(store.locations().await.unwrap().is_empty());
}

const ACCESS: &str = "access-token-PLAINTEXT-7f3a9c";
const REFRESH: &str = "refresh-token-PLAINTEXT-b81e2d";

async fn sealed_tokens_never_reach_the_database_in_plaintext(db: TestDb, store: Store) {
    store
        .upsert_location(NewLocation {
            location_id: "loc1",
            company_id: Some("comp1"),
            name: Some("Acme Dental"),
            tokens: &tokens(ACCESS, Some(REFRESH)),
            source: TokenSource::Oauth,
        })
        .await
        .unwrap();
    let read = store
        .credentials(TokenOwner::Location("loc1"))
        .await
        .unwrap()
        .unwrap()
        .tokens;
    assert_eq!(read.access_token.expose(), ACCESS);
    assert_eq!(read.refresh_token.unwrap().expose(), REFRESH);

    let raw = raw_database_bytes(&db, &store).await;
    for secret in [ACCESS, REFRESH] {
        assert!(!contains(&raw, secret.as_bytes()), "{secret} is stored in plaintext");
    }
    // The check is real: the location's name, stored in clear, is found.
    assert!(contains(&raw, b"Acme Dental"));
}

async fn a_reinstall_replaces_tokens_and_clears_the_error(_db: TestDb, store: Store) {
    let first = tokens("a1", Some("r1"));
    let new = |t| NewLocation {
        location_id: "loc2",
        company_id: None,
        name: None,
        tokens: t,
        source: TokenSource::Oauth,
    };
    store
        .upsert_location(NewLocation {
            name: Some("Kept"),
            ..new(&first)
        })
        .await
        .unwrap();
    store
        .set_status(
            TokenOwner::Location("loc2"),
            LocationStatus::ReauthRequired,
            Some("refresh refused"),
        )
        .await
        .unwrap();
    let record = store.location("loc2").await.unwrap().unwrap();
    assert_eq!(record.status, LocationStatus::ReauthRequired);
    assert_eq!(record.last_error.as_deref(), Some("refresh refused"));

    store.upsert_location(new(&tokens("a2", Some("r2")))).await.unwrap();
    let record = store.location("loc2").await.unwrap().unwrap();
    assert_eq!(record.status, LocationStatus::Installed);
    assert_eq!(record.last_error, None);
    assert_eq!(record.name.as_deref(), Some("Kept"));
    let read = store
        .credentials(TokenOwner::Location("loc2"))
        .await
        .unwrap()
        .unwrap()
        .tokens;
    assert_eq!(read.access_token.expose(), "a2");
    assert_eq!(read.refresh_token.unwrap().expose(), "r2");
}

async fn a_wrong_secret_key_is_refused_at_open(db: TestDb, store: Store) {
    store.close().await;
    let other_key = SecretKey::generate_base64();
    let err = open(&db.url, &other_key)
        .await
        .err()
        .expect("a wrong key must be refused");
    assert!(err.to_string().contains("does not open"), "{err}");
    // The right key still opens it.
    open(&db.url, SECRET_KEY).await.unwrap();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the database holds for the `locations` table: the SQLite files (main and WAL),
/// or PostgreSQL's raw row images.
async fn raw_database_bytes(db: &TestDb, store: &Store) -> Vec<u8> {
    match db.sqlite_file() {
        Some(file) => {
            let mut bytes = std::fs::read(&file).unwrap();
            let wal = file.with_extension("db-wal");
            bytes.extend(std::fs::read(wal).unwrap_or_default());
            bytes
        }
        None => {
            store.close().await;
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            // The whole row as PostgreSQL stores it, sealed columns included.
            let rows: Vec<(String,)> = sqlx::query_as("SELECT l::text FROM locations l")
                .fetch_all(&pool)
                .await
                .unwrap();
            rows.into_iter().flat_map(|(r,)| r.into_bytes()).collect()
        }
    }
}

fn inbound_message(id: &str) -> waghl::domain::InboundMessage {
    waghl::domain::InboundMessage {
        id: id.into(),
        chat: "15550001111@s.whatsapp.net".into(),
        sender: "15550001111@s.whatsapp.net".into(),
        sender_phone: Some("+15550001111".into()),
        chat_phone: None,
        push_name: None,
        timestamp: waghl::time::now_ms(),
        from_me: false,
        is_group: false,
        is_status: false,
        reply_to: None,
        content: waghl::domain::Content::Text {
            text: "a private message".into(),
        },
    }
}

async fn install(store: &Store, location: &str) {
    store
        .upsert_location(NewLocation {
            location_id: location,
            company_id: None,
            name: None,
            tokens: &tokens("a", Some("r")),
            source: TokenSource::Oauth,
        })
        .await
        .unwrap();
}

async fn retention_purges_bodies_of_finished_messages_and_keeps_the_rows(_db: TestDb, store: Store) {
    use waghl::store::{InboxOutcome, InboxStart};
    install(&store, "locR").await;
    for id in ["done", "waiting"] {
        store
            .insert_inbound("locR", &inbound_message(id), Some(b"media"), InboxStart::Pending)
            .await
            .unwrap();
    }
    let claimed = store
        .claim_inbox_batch(10, 60_000, &waghl::domain::Incarnation::new("test", "1"))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "one chat: only its head is claimed");
    let relayed = InboxOutcome::Relayed {
        ghl_message_id: "g1".into(),
        contact_id: "c".into(),
        conversation_id: "v".into(),
    };
    finish_inbox(&store, &claimed[0], relayed).await;
    let purged = store.purge_bodies(waghl::time::now_ms() + 1).await.unwrap();
    assert_eq!(purged, 1, "only the finished message");
    let rows = store.list_messages("locR", None, i64::MAX, 10).await.unwrap();
    assert_eq!(rows.len(), 2, "rows are never deleted");
    assert!(store.inbound_body("locR", "done").await.unwrap().is_none());
    assert!(store.inbound_body("locR", "waiting").await.unwrap().is_some());
}

async fn a_redelivered_inbound_message_is_stored_once(_db: TestDb, store: Store) {
    use waghl::store::{InboxStart, InboxWrite};
    install(&store, "locD").await;
    let message = inbound_message("dup");
    let insert = |message: waghl::domain::InboundMessage| {
        let store = store.clone();
        async move {
            store
                .insert_inbound("locD", &message, None, InboxStart::Pending)
                .await
                .unwrap()
        }
    };
    assert_eq!(insert(message.clone()).await, InboxWrite::New);
    assert_eq!(insert(message.clone()).await, InboxWrite::Duplicate);
    // The same id from another sender is another message.
    let mut other = message.clone();
    other.sender = "15550002222@s.whatsapp.net".into();
    assert_eq!(insert(other).await, InboxWrite::New);
}

/// A placeholder ("view once", "waiting for this message") stands for a message until WhatsApp
/// delivers it: the message replaces it, whether or not the placeholder reached GHL, and is
/// relayed itself; a redelivery of either changes nothing after that.
/// Group commit changes nothing of what storing does: a batch is stored exactly as its messages
/// one by one would be (duplicates within it, a placeholder and its message, one head per chat).
async fn a_batch_of_inbound_messages_is_stored_as_one_by_one(_db: TestDb, store: Store) {
    use waghl::domain::{Content, Incarnation, Unavailable};
    use waghl::store::{InboxStart, InboxWrite, NewInbound};
    install(&store, "locA").await;
    install(&store, "locB").await;
    let mut other_chat = inbound_message("P");
    other_chat.chat = "15550002222@s.whatsapp.net".into();
    other_chat.sender = other_chat.chat.clone();
    let mut placeholder = other_chat.clone();
    placeholder.content = Content::Unavailable {
        reason: Unavailable::Waiting,
    };
    let (m1, m2) = (inbound_message("M1"), inbound_message("M2"));
    let batch = [
        ("locA", &m1),
        ("locA", &m2),
        ("locB", &m1),
        ("locA", &m1),
        ("locA", &placeholder),
        ("locA", &other_chat),
    ];
    let news: Vec<NewInbound> = batch
        .iter()
        .map(|(location_id, message)| NewInbound {
            location_id,
            message,
            media_ref: None,
            start: InboxStart::Pending,
        })
        .collect();
    use InboxWrite::*;
    assert_eq!(
        store.insert_inbound_batch(&news).await.unwrap(),
        [New, New, New, Duplicate, New, Replaced]
    );
    assert_eq!(
        store.insert_inbound_batch(&news[..2]).await.unwrap(),
        [Duplicate, Duplicate],
        "a redelivered batch"
    );
    // One head per chat, each its chat's first message, the placeholder's chat with the message.
    let mut heads: Vec<(String, String, String)> = store
        .claim_inbox_batch(10, 60_000, &Incarnation::new("test", "1"))
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.location_id, row.wa_message_id, row.body.unwrap_or_default()))
        .collect();
    heads.sort();
    let ids: Vec<(&str, &str)> = heads.iter().map(|(l, id, _)| (l.as_str(), id.as_str())).collect();
    assert_eq!(ids, [("locA", "M1"), ("locA", "P"), ("locB", "M1")]);
    assert!(
        heads[1].2.contains("a private message"),
        "the message replaced its placeholder"
    );
}

async fn a_message_replaces_its_placeholder_and_is_relayed(_db: TestDb, store: Store) {
    use waghl::domain::{Content, Incarnation, Unavailable};
    use waghl::store::{InboxOutcome, InboxStart, InboxWrite};
    install(&store, "locU").await;
    let me = Incarnation::new("test", "1");
    let insert = |message: waghl::domain::InboundMessage| {
        let store = store.clone();
        async move {
            store
                .insert_inbound("locU", &message, None, InboxStart::Pending)
                .await
                .unwrap()
        }
    };
    let placeholder = |id: &str| {
        let mut message = inbound_message(id);
        message.content = Content::Unavailable {
            reason: Unavailable::Waiting,
        };
        message
    };
    let body_of = |row: &waghl::store::InboxRow| {
        serde_json::from_str::<waghl::domain::InboundMessage>(row.body.as_deref().unwrap())
            .unwrap()
            .content
    };
    let real = inbound_message("U1");

    // Not yet relayed: replaced in place.
    assert_eq!(insert(placeholder("U1")).await, InboxWrite::New);
    assert_eq!(insert(real.clone()).await, InboxWrite::Replaced);
    assert_eq!(
        insert(placeholder("U1")).await,
        InboxWrite::Duplicate,
        "a late placeholder"
    );
    assert_eq!(insert(real.clone()).await, InboxWrite::Duplicate, "a redelivery");
    let claimed = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(body_of(&claimed[0]), real.content);

    // Held by a worker: the message waits for the claim to end.
    assert_eq!(insert(placeholder("U2")).await, InboxWrite::New);
    let row = claimed.into_iter().next().unwrap();
    relayed(&store, &row, "g-U1").await;
    let claimed = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    assert_eq!(claimed[0].wa_message_id, "U2");
    assert_eq!(insert(inbound_message("U2")).await, InboxWrite::Busy);

    // Relayed: the message is queued again, in the placeholder's place, and GHL gets it too.
    relayed(&store, &claimed[0], "g-placeholder-U2").await;
    assert_eq!(insert(inbound_message("U3")).await, InboxWrite::New);
    assert_eq!(insert(inbound_message("U2")).await, InboxWrite::Replaced);
    assert_eq!(
        store.inbound_ghl_id("locU", &real.chat, "U2").await.unwrap(),
        None,
        "the placeholder's GHL message does not stand for the message"
    );
    assert!(store.ghl_message_recorded("locU", "g-placeholder-U2").await.unwrap());
    let claimed = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    let claimed_ids: Vec<&str> = claimed.iter().map(|r| r.wa_message_id.as_str()).collect();
    assert_eq!(claimed_ids, ["U2"], "the older message goes first");
    assert_eq!(body_of(&claimed[0]), inbound_message("U2").content);
    relayed(&store, &claimed[0], "g-U2").await;
    assert_eq!(
        store.inbound_ghl_id("locU", &real.chat, "U2").await.unwrap().as_deref(),
        Some("g-U2")
    );
    assert_eq!(insert(placeholder("U2")).await, InboxWrite::Duplicate);
    let claimed = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    let claimed_ids: Vec<&str> = claimed.iter().map(|r| r.wa_message_id.as_str()).collect();
    assert_eq!(claimed_ids, ["U3"]);

    async fn relayed(store: &Store, row: &waghl::store::InboxRow, ghl_id: &str) {
        let relayed = InboxOutcome::Relayed {
            ghl_message_id: ghl_id.into(),
            contact_id: "c".into(),
            conversation_id: "v".into(),
        };
        finish_inbox(store, row, relayed).await;
    }
}

async fn concurrent_enqueues_to_one_chat_leave_one_head_and_keep_their_order(_db: TestDb, store: Store) {
    use waghl::domain::{Incarnation, OutboxState};
    use waghl::store::NewOutbound;
    install(&store, "locH").await;
    store
        .record_transition("locH", "connected", None, Some("+14155550100"), None)
        .await
        .unwrap();
    // Twenty webhooks for one recipient at once, as GHL may send them.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("h{i}");
                let new = NewOutbound {
                    location_id: "locH",
                    ghl_message_id: &id,
                    ghl_contact_id: None,
                    to_phone: "+14155550199",
                    body: "{}",
                };
                store.enqueue_outbound(new, None).await.unwrap().unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort();
    // This instance runs the session: it sends for it.
    let me = Incarnation::new("test", "1");
    assert!(store.acquire_lease("locH", me.as_str(), i64::MAX).await.unwrap());
    for expected in ids {
        let claimed = store.claim_outbox_batch(10, 60_000, &me).await.unwrap();
        let claimed: Vec<i64> = claimed.iter().map(|r| r.outbox_id).collect();
        assert_eq!(claimed, [expected], "one head, the oldest");
        store
            .fail_outbound(expected, OutboxState::Failed, "test")
            .await
            .unwrap();
    }
    assert!(store.claim_outbox_batch(10, 60_000, &me).await.unwrap().is_empty());
}

async fn a_replayed_older_message_becomes_its_chats_head_again(_db: TestDb, store: Store) {
    use waghl::domain::Incarnation;
    use waghl::store::{InboxOutcome, InboxStart};
    install(&store, "locP").await;
    for id in ["P1", "P2", "P3"] {
        store
            .insert_inbound("locP", &inbound_message(id), None, InboxStart::Pending)
            .await
            .unwrap();
    }
    let me = Incarnation::new("test", "1");
    let first = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].wa_message_id, "P1");
    finish_inbox(&store, &first[0], InboxOutcome::Dead { error: "test".into() }).await;
    // A dead head blocks nothing: the next message is the head.
    let second = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    assert_eq!(second[0].wa_message_id, "P2");
    let later = InboxOutcome::Retry {
        at: 0,
        error: "later".into(),
    };
    finish_inbox(&store, &second[0], later).await;
    // Replayed, the older message goes first again.
    assert_eq!(store.retry_dead_inbound("locP", None).await.unwrap(), 1);
    let replayed = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    let claimed: Vec<&str> = replayed.iter().map(|r| r.wa_message_id.as_str()).collect();
    assert_eq!(claimed, ["P1"]);
}

/// One transaction of the inbound relay's writer: a mark whose claim another instance holds
/// does not apply (and fails nothing else), each ended row hands its chat to the next message,
/// a relayed row records its GHL id.
async fn the_inbound_relays_writes_commit_together(_db: TestDb, store: Store) {
    use waghl::domain::Incarnation;
    use waghl::store::{InboxOutcome, InboxRelayWrite, InboxStart};
    install(&store, "locW").await;
    let in_chat = |id: &str, chat: &str| waghl::domain::InboundMessage {
        chat: chat.into(),
        sender: chat.into(),
        ..inbound_message(id)
    };
    let (a, b) = ("15550002222@s.whatsapp.net", "15550003333@s.whatsapp.net");
    for message in [in_chat("A1", a), in_chat("A2", a), in_chat("B1", b)] {
        store
            .insert_inbound("locW", &message, None, InboxStart::Pending)
            .await
            .unwrap();
    }
    let me = Incarnation::new("test", "1");
    let mut heads = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    heads.sort_by(|x, y| x.wa_message_id.cmp(&y.wa_message_id));
    let ids: Vec<&str> = heads.iter().map(|r| r.wa_message_id.as_str()).collect();
    assert_eq!(ids, ["A1", "B1"]);
    let posting = |row: &waghl::store::InboxRow, holder: &Incarnation| InboxRelayWrite::Posting {
        inbox_id: row.inbox_id,
        holder: holder.clone(),
        contact_id: "c".into(),
        conversation_id: "v".into(),
    };
    let relayed = InboxOutcome::Relayed {
        ghl_message_id: "g-A1".into(),
        contact_id: "c".into(),
        conversation_id: "v".into(),
    };
    let dead = InboxOutcome::Dead { error: "test".into() };
    let writes = [
        posting(&heads[0], &me),
        posting(&heads[1], &Incarnation::new("other", "2")),
        InboxRelayWrite::finished(&heads[0], relayed),
        InboxRelayWrite::finished(&heads[1], dead),
    ];
    assert_eq!(store.write_inbox(&writes).await.unwrap(), [true, false, true, true]);
    assert_eq!(
        store.inbound_ghl_id("locW", a, "A1").await.unwrap().as_deref(),
        Some("g-A1")
    );
    let next = store.claim_inbox_batch(10, 60_000, &me).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|r| r.wa_message_id.as_str()).collect();
    assert_eq!(ids, ["A2"], "chat A goes on with its next message; chat B has none");
}
