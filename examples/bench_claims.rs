//! Claim cost against backlog depth: fills both queues to 1,000, 10,000 and 100,000 rows (spread
//! over 200 locations, 5 chats each) and times claiming a batch of 32 chat heads, on the store
//! directly, after claiming from the empty queues first as the daemon's relay does. The cost
//! must stay flat as the backlog grows: a claim looks only at each chat's head, never at the
//! rows queued behind it.
//!
//! `cargo run --release --example bench_claims -- [largest]`; set
//! `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty database) to run it on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use waghl::crypto::{Secret, SecretKey};
use waghl::domain::{Content, InboundMessage, Incarnation};
use waghl::store::{DatabaseUrl, GhlTokens, InboxStart, NewLocation, NewOutbound, Store, TokenSource};

const LOCATIONS: usize = 200;
const CHATS: usize = 5;
const BATCH: i64 = 32;
const ROUNDS: u32 = 20;

#[tokio::main]
async fn main() {
    let largest: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("WAGHL_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/waghl.db", dir.path().display()));
    let store = Store::connect(
        &DatabaseUrl::parse(&url).unwrap(),
        Arc::new(SecretKey::from_bytes(&[7; 32]).unwrap()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    println!("backend {}", store.dialect());
    let holder = Incarnation::new("bench", "1");
    for l in 0..LOCATIONS {
        let location = format!("benchLoc{l}");
        let tokens = GhlTokens {
            access_token: Secret::new("token"),
            refresh_token: None,
            expires_at: i64::MAX / 2,
        };
        store
            .upsert_location(NewLocation {
                location_id: &location,
                company_id: None,
                name: None,
                tokens: &tokens,
                source: TokenSource::Oauth,
            })
            .await
            .unwrap();
        store
            .record_transition(&location, "connected", None, Some(&format!("+1415555{l:04}")), None)
            .await
            .unwrap();
        // This process runs the sessions, so it sends for them.
        store.acquire_lease(&location, holder.as_str(), i64::MAX).await.unwrap();
    }
    // The daemon's relay polls from its first second, so on a new database each claim
    // statement is prepared, and PostgreSQL may settle on a plan for it, while the queues are
    // empty: claim as it does before filling (such a plan once read every unfinished row).
    for _ in 0..ROUNDS {
        store.claim_inbox_batch(BATCH, 1, &holder).await.unwrap();
        store.claim_outbox_batch(BATCH, 1, &holder).await.unwrap();
    }
    let mut queued = 0;
    let mut first = None;
    for target in [1_000, 10_000, 100_000].into_iter().filter(|t| *t <= largest) {
        let filling = Instant::now();
        while queued < target {
            fill_one(&store, queued).await;
            queued += 1;
        }
        let fill = filling.elapsed();
        let inbox = time_claims(|| store.claim_inbox_batch(BATCH, 1, &holder)).await;
        let outbox = time_claims(|| store.claim_outbox_batch(BATCH, 1, &holder)).await;
        let (inbox0, outbox0) = *first.get_or_insert((inbox, outbox));
        println!(
            "{queued:>7} queued per queue (filled in {fill:.1?}): inbox claim {inbox:>9.2?} ({:.2}× the 1,000 figure), \
             outbox claim {outbox:>9.2?} ({:.2}×)",
            inbox.as_secs_f64() / inbox0.as_secs_f64(),
            outbox.as_secs_f64() / outbox0.as_secs_f64(),
        );
    }
}

/// One inbound and one outbound message, in chat `n % (LOCATIONS × CHATS)`.
async fn fill_one(store: &Store, n: usize) {
    let location = format!("benchLoc{}", n % LOCATIONS);
    let chat = (n / LOCATIONS) % CHATS;
    let phone = format!("+1415666{chat:04}");
    let message = InboundMessage {
        id: format!("B{n}"),
        chat: format!("1415666{chat:04}@s.whatsapp.net"),
        sender: format!("1415666{chat:04}@s.whatsapp.net"),
        sender_phone: Some(phone.clone()),
        chat_phone: None,
        push_name: None,
        timestamp: waghl::time::now_ms(),
        from_me: false,
        is_group: false,
        is_status: false,
        reply_to: None,
        content: Content::Text { text: "hi".into() },
    };
    store
        .insert_inbound(&location, &message, None, InboxStart::Pending)
        .await
        .unwrap();
    let id = format!("g{n}");
    let new = NewOutbound {
        location_id: &location,
        ghl_message_id: &id,
        ghl_contact_id: None,
        to_phone: &phone,
        body: "{\"text\":\"hi\",\"attachments\":[]}",
    };
    store.enqueue_outbound(new, None).await.unwrap();
}

/// The mean time of a claim of `BATCH` heads. Claims last 1 ms, so each round finds the same
/// heads free again and the backlog stays as it is.
async fn time_claims<F, Fut, T, E>(claim: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    E: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        let rows = claim().await.unwrap();
        total += started.elapsed();
        assert_eq!(rows.len() as i64, BATCH);
    }
    total / ROUNDS
}
