//! Group commit of the outbound queue's intake: many provider webhooks written in one
//! transaction, so the intake costs one durable commit per batch instead of one per request.
//! SQLite writes a batch with a few statements in one transaction, each reading the whole batch
//! from one JSON parameter, so its text is the same for every batch size and each connection
//! prepares it once. PostgreSQL writes it in one call of `waghl_queue_outbound` (migration
//! 0009), the batch as one array per column: one round trip instead of four.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::{PgPool, SqlitePool};

use super::heads::{ChatKey, in_chats_tx};
use super::instances::channels;
use super::{Db, Dialects, Result, Store, json, on_db};
use crate::domain::OutboxState;
use crate::time::now_ms;

/// One provider webhook to queue, as the intake writer holds it until its batch commits.
#[derive(Clone, Debug)]
pub struct IntakeRow {
    pub location_id: String,
    pub ghl_message_id: String,
    pub ghl_contact_id: Option<String>,
    pub to_phone: String,
    /// JSON of what to send (text, attachment URLs, quoted message).
    pub body: String,
    /// When GHL says the message was written (ms), to tell a replay of old messages.
    pub written_at: Option<i64>,
    /// GHL's `webhookId`, recorded with the row so a redelivery is a duplicate.
    pub webhook_id: Option<String>,
}

impl IntakeRow {
    fn chat(&self) -> ChatKey<'_> {
        ChatKey::Outbox {
            location: &self.location_id,
            phone: &self.to_phone,
        }
    }
}

/// What became of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Committed with this outbox id (pending, or failed at once: see [`UNPAIRED`], [`REPLAYED`]).
    New(i64),
    /// Its `webhookId` or `messageId` was queued before: nothing changed.
    Duplicate,
    /// Its location is not installed: nothing stored.
    UnknownLocation,
}

/// Why a row of a location whose WhatsApp was never paired is failed at once, instead of
/// after the TTL.
pub const UNPAIRED: &str = "WhatsApp not paired";
/// Why a row GHL says was written before the location's WhatsApp was paired is failed at once
/// (GHL replays old messages after installs).
pub const REPLAYED: &str = "written before WhatsApp was paired (GHL replayed an old message); not sent";

/// Records the batch's webhook ids (`{"w": id, "l": location}` each, a JSON array bound as
/// `$2`) seen at `$1`, those of installed locations (a webhook refused now may be queued when
/// GHL retries it after the install); returns those new. SQLite only, as the next two.
const RECORD_HOOKS: &str = "INSERT INTO webhook_seen (webhook_id, seen_at) SELECT j.value->>'w', $1 \
     FROM jsonb_each($2) AS j JOIN locations l ON l.location_id = j.value->>'l' \
     WHERE true ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id";

/// Queues the batch's rows (`QueuedRow`s, a JSON array bound as `$2`) at `$1`, in the array's
/// order, those of installed locations: a row is failed at once with the reason `$3` when its
/// location's WhatsApp was never paired, `$4` when GHL says it was written before the pairing;
/// it is read from the same statement so a batch costs no query of its own for it. A pending
/// row flagged `h` becomes its chat's head when nothing of the chat is unfinished: the probe
/// asks the chat's head first (one entry per busy chat in `outbox_one_head`, and a busy chat has
/// one), then any unfinished row of the chat only when there is no head — the same answer, as
/// a head is unfinished. `COALESCE` runs the second only when the first found nothing.
/// `jsonb_each` gives each element in its binary form, which `->>` reads as it is
/// (`json_each` gave it as text, converted anew at each read and parsed again by each `->>`).
/// `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
/// PostgreSQL's `waghl_queue_outbound` does the same: keep the two in step.
const QUEUE_ROWS: &str = "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, \
       last_error, attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head) \
     SELECT q.l, q.m, q.c, q.p, q.b, CASE WHEN q.f IS NULL THEN 'pending' ELSE 'failed' END, q.f, \
       0, $1, $1, $1, $1, CASE WHEN q.f IS NULL THEN NULL ELSE $1 END, \
       CASE WHEN q.h IS NOT NULL AND q.f IS NULL AND COALESCE( \
         (SELECT 1 FROM outbox o WHERE o.location_id = q.l AND o.to_phone = q.p \
           AND o.state IN ('pending', 'sending') AND o.head = 1), \
         (SELECT 1 FROM outbox o WHERE o.location_id = q.l AND o.to_phone = q.p \
           AND o.state IN ('pending', 'sending') LIMIT 1)) IS NULL THEN 1 ELSE 0 END \
     FROM (SELECT j.key AS k, j.value->>'l' AS l, j.value->>'m' AS m, j.value->>'c' AS c, \
         j.value->>'p' AS p, j.value->>'b' AS b, j.value->>'h' AS h, \
         CASE WHEN s.paired_at IS NULL THEN $3 WHEN j.value->>'t' < s.paired_at THEN $4 END AS f \
       FROM jsonb_each($2) AS j JOIN locations loc ON loc.location_id = j.value->>'l' \
       LEFT JOIN wa_sessions s ON s.location_id = loc.location_id) AS q \
     WHERE true ORDER BY q.k \
     ON CONFLICT (location_id, ghl_message_id) DO NOTHING \
     RETURNING outbox_id, location_id, ghl_message_id, state";

/// The installed ones of the locations in the JSON array `$1` of strings.
const INSTALLED: Dialects = Dialects {
    sqlite: "SELECT location_id FROM locations WHERE location_id IN (SELECT value FROM json_each($1))",
    postgres: "SELECT location_id FROM locations WHERE location_id IN (SELECT jsonb_array_elements_text($1::jsonb))",
};

/// PostgreSQL's whole batch: the chat locks, then the rows' webhook ids, then the rows (see the
/// function in migration 0009). Its four arrays are the rows it queued, as `RETURNING` gives them
/// (none when it queued nothing).
const QUEUE_CALL: &str = "SELECT queued_ids, queued_locations, queued_messages, queued_states \
     FROM waghl_queue_outbound($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// A row the queueing statement inserted: its outbox id, location, GHL message id and state.
type Inserted = (i64, String, String, String);

/// A row as the queueing statement reads it from its JSON array.
#[derive(Serialize)]
struct QueuedRow<'a> {
    l: &'a str,
    m: &'a str,
    c: Option<&'a str>,
    p: &'a str,
    b: &'a str,
    /// When GHL says the message was written.
    t: Option<i64>,
    /// Present when the row may become its chat's head.
    h: Option<u8>,
}

/// A webhook id, and its row's location, as the recording statement reads them.
#[derive(Serialize)]
struct Hook<'a> {
    w: &'a str,
    l: &'a str,
}

impl Store {
    /// Queues `rows` in one transaction, in their order, and says what became of each: queued
    /// with its outbox id, a duplicate (its `webhookId` or its `messageId` was seen before, or
    /// earlier in the batch), or refused (its location is not installed). Each chat's head is
    /// the first of its rows queued pending while nothing of the chat is unfinished, exactly as
    /// if the rows had come one by one.
    pub async fn enqueue_outbound_batch(&self, rows: &[IntakeRow]) -> Result<Vec<Queued>> {
        let now = now_ms();
        let fresh = repeats_in_batch(rows);
        let batch: Vec<&IntakeRow> = rows
            .iter()
            .zip(&fresh)
            .filter(|(_, fresh)| **fresh)
            .map(|(r, _)| r)
            .collect();
        let inserted = match &self.db {
            _ if batch.is_empty() => Vec::new(),
            Db::Sqlite(pool) => self.queue_on_sqlite(pool, &batch, now).await?,
            Db::Postgres(pool) => self.queue_on_postgres(pool, &batch, now).await?,
        };
        let mut ids: HashMap<(&str, &str), i64> = inserted
            .iter()
            .map(|(id, location, message, _)| ((location.as_str(), message.as_str()), *id))
            .collect();
        // A repeat has the key of the row it repeats: only the first of them takes the id.
        let ids: Vec<Option<i64>> = rows
            .iter()
            .zip(&fresh)
            .map(|(row, fresh)| {
                fresh
                    .then(|| ids.remove(&(row.location_id.as_str(), row.ghl_message_id.as_str())))
                    .flatten()
            })
            .collect();
        // A row not queued is a duplicate, or of a location not installed: asked only then.
        let mut installed = HashSet::new();
        if ids.iter().any(Option::is_none) {
            let mut locations: Vec<&str> = rows.iter().map(|r| r.location_id.as_str()).collect();
            locations.sort_unstable();
            locations.dedup();
            let known: Vec<String> = on_db!(self, pool => {
                sqlx::query_scalar(INSTALLED.of(self)).bind(json(&locations)).fetch_all(pool).await?
            });
            installed.extend(known);
        }
        Ok(rows
            .iter()
            .zip(ids)
            .map(|(row, id)| match id {
                Some(id) => Queued::New(id),
                None if !installed.contains(&row.location_id) => Queued::UnknownLocation,
                None => Queued::Duplicate,
            })
            .collect())
    }

    /// Queues `batch` (no two rows alike) in one SQLite transaction: SQLite's one writer
    /// serialises write transactions, so there are no chat locks to take.
    async fn queue_on_sqlite(&self, pool: &SqlitePool, batch: &[&IntakeRow], now: i64) -> Result<Vec<Inserted>> {
        Ok(in_chats_tx!(@on self, pool, tx => {
            // Webhook ids first: a redelivered webhook queues nothing.
            let hooks: Vec<Hook> = batch
                .iter()
                .filter_map(|r| r.webhook_id.as_deref().map(|w| Hook { w, l: &r.location_id }))
                .collect();
            let mut recorded = HashSet::new();
            if !hooks.is_empty() {
                let new: Vec<String> = sqlx::query_scalar(RECORD_HOOKS).bind(now).bind(json(&hooks)).fetch_all(&mut *tx).await?;
                recorded.extend(new);
            }
            // The first row of each chat may become its head; the rows after it never do.
            let mut first_of_chat = HashSet::new();
            let candidates: Vec<(&IntakeRow, bool)> = batch
                .iter()
                .filter(|r| r.webhook_id.as_ref().is_none_or(|w| recorded.contains(w)))
                .map(|r| (*r, first_of_chat.insert((r.location_id.as_str(), r.to_phone.as_str()))))
                .collect();
            let queued: Vec<QueuedRow> = candidates
                .iter()
                .map(|(row, may_lead)| QueuedRow {
                    l: &row.location_id,
                    m: &row.ghl_message_id,
                    c: row.ghl_contact_id.as_deref(),
                    p: &row.to_phone,
                    b: &row.body,
                    t: row.written_at,
                    h: may_lead.then_some(1),
                })
                .collect();
            let inserted: Vec<Inserted> = if queued.is_empty() {
                Vec::new()
            } else {
                sqlx::query_as(QUEUE_ROWS)
                    .bind(now)
                    .bind(json(&queued))
                    .bind(UNPAIRED)
                    .bind(REPLAYED)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let pending: HashSet<(&str, &str)> = inserted
                .iter()
                .filter(|(_, _, _, state)| state == OutboxState::Pending.as_str())
                .map(|(_, location, message, _)| (location.as_str(), message.as_str()))
                .collect();
            // A would-be head that was a duplicate, or failed at once, leaves its chat to the
            // rows after it.
            for (row, may_lead) in &candidates {
                if *may_lead && !pending.contains(&(row.location_id.as_str(), row.ghl_message_id.as_str())) {
                    sqlx::query(row.chat().promote_sql())
                        .bind(&row.location_id)
                        .bind(&row.to_phone)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            inserted
        }))
    }

    /// Queues `batch` (no two rows alike) in one call of `waghl_queue_outbound`, in the implicit
    /// transaction of that one statement.
    async fn queue_on_postgres(&self, pool: &PgPool, batch: &[&IntakeRow], now: i64) -> Result<Vec<Inserted>> {
        fn column<'a, T>(batch: &[&'a IntakeRow], field: impl Fn(&'a IntakeRow) -> T) -> Vec<T> {
            batch.iter().map(|r| field(r)).collect()
        }
        let mut locks: Vec<String> = batch.iter().map(|r| r.chat().lock_name()).collect();
        locks.sort_unstable();
        locks.dedup();
        let mut conn = self.connection(pool).await?;
        let called: std::result::Result<QueuedArrays, sqlx::Error> = sqlx::query_as(QUEUE_CALL)
            .bind(now)
            .bind(&locks)
            .bind(column(batch, |r| r.webhook_id.as_deref()))
            .bind(column(batch, |r| r.location_id.as_str()))
            .bind(column(batch, |r| r.ghl_message_id.as_str()))
            .bind(column(batch, |r| r.ghl_contact_id.as_deref()))
            .bind(column(batch, |r| r.to_phone.as_str()))
            .bind(column(batch, |r| r.body.as_str()))
            .bind(column(batch, |r| r.written_at))
            .bind(UNPAIRED)
            .bind(REPLAYED)
            .bind(channels::OUTBOX)
            .fetch_one(&mut *conn)
            .await;
        self.release(conn, called.is_ok());
        let (ids, locations, messages, states) = called?;
        Ok(ids
            .unwrap_or_default()
            .into_iter()
            .zip(locations.unwrap_or_default())
            .zip(messages.unwrap_or_default())
            .zip(states.unwrap_or_default())
            .map(|(((id, location), message), state)| (id, location, message, state))
            .collect())
    }
}

/// The rows `waghl_queue_outbound` queued, one array per column (`NULL` when none).
type QueuedArrays = (
    Option<Vec<i64>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

/// False for each row that repeats an earlier row's `webhookId` or `messageId` (a duplicate
/// without asking the database).
fn repeats_in_batch(rows: &[IntakeRow]) -> Vec<bool> {
    let mut hooks = HashSet::new();
    let mut messages = HashSet::new();
    rows.iter()
        .map(|r| {
            let new_hook = r.webhook_id.as_deref().is_none_or(|id| hooks.insert(id));
            new_hook && messages.insert((r.location_id.as_str(), r.ghl_message_id.as_str()))
        })
        .collect()
}
