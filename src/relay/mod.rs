//! The two workers that move messages: inbound (inbox → GHL) and outbound (outbox →
//! WhatsApp → status back to GHL). Each step is a function a test can call directly.

mod acks;
mod address;
mod convert;
mod crowd;
mod fetch;
pub mod inbound;
mod inbound_writer;
mod inbox_writer;
pub mod outbound;
mod outbox_writer;
mod postbox;
mod recipients;
mod reconcile;
mod workers;

pub use postbox::Postbox;

use std::time::Duration;

use crate::backoff::Backoff;
use crate::crypto::random_fraction;
use crate::domain::Incarnation;
use crate::metrics::Metrics;
use crate::store::{Queue, Store};
use crate::time::now_ms;

/// How often the relays count their queues for the depth gauges. A count reads every queued row
/// (22 ms at 56,000 queued on PostgreSQL): each poll was too often, and a metrics scrape (every
/// 15 s or more) sees a count this recent.
const GAUGE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// First retry delay of a message; doubles (with jitter) up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A message still failing this long after it arrived becomes `dead`.
    pub retry_budget: Duration,
    /// How long a message from a LID-only sender waits for WhatsApp to reveal the phone.
    pub lid_wait: Duration,
    /// Rows claimed per round (each the head of a different chat, relayed concurrently).
    pub batch: i64,
    /// A claim expires after this long (a worker that died mid-row releases it this way).
    pub claim_for: Duration,
    /// How often due retries are looked for when nothing new arrives.
    pub poll_interval: Duration,
}

/// Starts the workers; they stop with the daemon.
pub fn spawn(state: &crate::state::AppState) {
    let inbound = inbound::InboundRelay {
        store: state.store.clone(),
        ghl: state.ghl.clone(),
        sessions: state.sessions.clone(),
        metrics: state.metrics.clone(),
        settings: state.config.relay.clone(),
        holder: state.incarnation.clone(),
        writer: Default::default(),
    };
    state
        .tasks
        .spawn(inbound.run(state.postbox.inbound_ready(), state.shutdown.clone()));
    let config = &state.config;
    let outbound = outbound::OutboundRelay::new(
        state.store.clone(),
        state.ghl.clone(),
        state.sessions.clone(),
        state.metrics.clone(),
        config.relay.clone(),
        fetch::Fetcher::new(
            config.attachment_max_bytes,
            config.allow_http_attachments,
            config.attachment_attempts,
        ),
        config.default_country,
        config.send_gap,
        config.outbound_ttl,
        state.incarnation.clone(),
        state.postbox.clone(),
    );
    state.tasks.spawn(
        outbound.run(
            state.postbox.outbound_ready(),
            state
                .postbox
                .take_receipts()
                .expect("the outbound relay is started once"),
            state.shutdown.clone(),
        ),
    );
}

/// When the next attempt of a message that failed `attempts` times before is due (unix ms).
pub fn retry_at(settings: &RelaySettings, attempts: i64) -> i64 {
    let delay =
        Backoff::new(settings.retry_base, settings.retry_max).delay(attempts.clamp(0, 20) as u32, random_fraction());
    now_ms() + delay.as_millis() as i64
}

/// A relay task panicked on `row`: count it, log it, and put the row back in its queue (after
/// the longest retry delay, or `dead` once its retry budget is spent), so its chat goes on.
async fn after_panic(
    store: &Store,
    metrics: &Metrics,
    settings: &RelaySettings,
    queue: Queue,
    holder: &Incarnation,
    row: i64,
) {
    let task = match queue {
        Queue::Inbox => "inbound_relay",
        Queue::Outbox => "outbound_send",
    };
    metrics.count_panic(task);
    tracing::error!(task, row, "a relay task panicked; the message will be retried");
    let at = now_ms() + settings.retry_max.as_millis() as i64;
    let budget_start = now_ms() - settings.retry_budget.as_millis() as i64;
    if let Err(e) = store.release_after_panic(queue, row, holder, at, budget_start).await {
        tracing::error!(task, row, error = %e, "could not release the row of a panicked task");
    }
}
