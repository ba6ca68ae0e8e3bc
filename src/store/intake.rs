//! Group commit of the outbound queue's intake: many provider webhooks written in one
//! transaction, so the intake costs one durable commit per batch instead of one per request.
//! Each statement reads its whole batch from one JSON parameter, so its text is the same for
//! every batch size and each connection prepares it once.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::heads::{ChatKey, in_chats_tx};
use super::instances::channels;
use super::{Dialects, Result, Store, json};
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

/// The rows of a JSON array bound as `$2`, as a table `j`: `j.value` an element, `j.key` its
/// index. The statements below read their whole batch from it, so each connection prepares
/// them once (a statement whose text grew with the batch was parsed anew at every commit: a
/// third of the intake's SQLite time in a profile). SQLite's `jsonb_each` gives each element
/// in its binary form, which `->>` reads as it is; `json_each` gave it as text, converted anew
/// at each of the row's nine `j.value` and parsed again by each `->>`.
macro_rules! json_rows {
    (sqlite) => {
        "jsonb_each($2) AS j"
    };
    (postgres) => {
        "jsonb_array_elements($2::jsonb) WITH ORDINALITY AS j(value, key)"
    };
}

/// Records the batch's webhook ids (`{"w": id, "l": location}` each) seen at `$1`, those of
/// installed locations (a webhook refused now may be queued when GHL retries it after the
/// install); returns those new.
macro_rules! record_hooks {
    ($dialect:tt) => {
        concat!(
            "INSERT INTO webhook_seen (webhook_id, seen_at) SELECT j.value->>'w', $1 FROM ",
            json_rows!($dialect),
            " JOIN locations l ON l.location_id = j.value->>'l' \
             WHERE true ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id"
        )
    };
}

/// Queues the batch's rows (`QueuedRow`s) at `$1`, in the array's order, those of installed
/// locations: a row is failed at once with the reason `$3` when its location's WhatsApp was
/// never paired, `$4` when GHL says it was written before the pairing; it is read from the
/// same statement so a batch costs no query of its own for it. A pending row flagged `h`
/// becomes its chat's head when nothing of the chat is unfinished. That probe is a scalar
/// subquery, not `NOT EXISTS`: PostgreSQL may run an `EXISTS` as one hashed scan of every
/// unfinished row (it did: 9 ms a batch at 20,000 queued), a scalar subquery is an index probe
/// per row. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
macro_rules! queue_rows {
    ($dialect:tt, $written:literal) => {
        concat!(
            "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, last_error, \
               attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head) \
             SELECT q.l, q.m, q.c, q.p, q.b, CASE WHEN q.f IS NULL THEN 'pending' ELSE 'failed' END, q.f, \
               0, $1, $1, $1, $1, CASE WHEN q.f IS NULL THEN NULL ELSE $1 END, \
               CASE WHEN q.h IS NOT NULL AND q.f IS NULL AND (SELECT 1 FROM outbox o \
                 WHERE o.location_id = q.l AND o.to_phone = q.p \
                   AND o.state IN ('pending', 'sending') LIMIT 1) IS NULL THEN 1 ELSE 0 END \
             FROM (SELECT j.key AS k, j.value->>'l' AS l, j.value->>'m' AS m, j.value->>'c' AS c, \
                 j.value->>'p' AS p, j.value->>'b' AS b, j.value->>'h' AS h, \
                 CASE WHEN s.paired_at IS NULL THEN $3 WHEN ",
            $written,
            " < s.paired_at THEN $4 END AS f \
               FROM ",
            json_rows!($dialect),
            " JOIN locations loc ON loc.location_id = j.value->>'l' \
               LEFT JOIN wa_sessions s ON s.location_id = loc.location_id) AS q \
             WHERE true ORDER BY q.k \
             ON CONFLICT (location_id, ghl_message_id) DO NOTHING \
             RETURNING outbox_id, location_id, ghl_message_id, state"
        )
    };
}

const RECORD_HOOKS: Dialects = Dialects {
    sqlite: record_hooks!(sqlite),
    postgres: record_hooks!(postgres),
};
/// On PostgreSQL the same statement also wakes, when it commits, the instance that runs each
/// location whose rows it queued (`pg_notify` on channel `$5`, once per location; run by the
/// outer query's one-time `COUNT`), instead of a round trip of its own.
const QUEUE_ROWS: Dialects = Dialects {
    sqlite: queue_rows!(sqlite, "j.value->>'t'"),
    postgres: concat!(
        "WITH queued AS (",
        queue_rows!(postgres, "(j.value->>'t')::bigint"),
        "), woken AS (SELECT pg_notify($5, d.location_id) FROM (SELECT DISTINCT location_id FROM queued) AS d) \
         SELECT outbox_id, location_id, ghl_message_id, state FROM queued WHERE (SELECT COUNT(*) FROM woken) >= 0"
    ),
};
/// The installed ones of the locations in the JSON array `$1` of strings.
const INSTALLED: Dialects = Dialects {
    sqlite: "SELECT location_id FROM locations WHERE location_id IN (SELECT value FROM json_each($1))",
    postgres: "SELECT location_id FROM locations WHERE location_id IN (SELECT jsonb_array_elements_text($1::jsonb))",
};

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
        let mut fresh = repeats_in_batch(rows);
        let mut locks: Vec<String> = rows.iter().map(|r| r.chat().lock_name()).collect();
        locks.sort();
        locks.dedup();
        let mut ids: Vec<Option<i64>> = vec![None; rows.len()];
        let mut installed: Option<HashSet<String>> = None;
        in_chats_tx!(self, &locks, tx => {
            // Webhook ids first: a redelivered webhook queues nothing.
            let hooks: Vec<Hook> = rows
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| **fresh)
                .filter_map(|(r, _)| r.webhook_id.as_deref().map(|w| Hook { w, l: &r.location_id }))
                .collect();
            if !hooks.is_empty() {
                let recorded: HashSet<String> = sqlx::query_scalar(RECORD_HOOKS.of(self))
                    .bind(now)
                    .bind(json(&hooks))
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                for (row, fresh) in rows.iter().zip(fresh.iter_mut()) {
                    if let Some(id) = &row.webhook_id && !recorded.contains(id) {
                        *fresh = false;
                    }
                }
            }
            // The first row of each chat may become its head; the rows after it never do.
            let mut first_of_chat = HashSet::new();
            let candidates: Vec<(usize, bool)> = rows
                .iter()
                .enumerate()
                .filter(|(i, _)| fresh[*i])
                .map(|(i, r)| (i, first_of_chat.insert((r.location_id.as_str(), r.to_phone.as_str()))))
                .collect();
            if !candidates.is_empty() {
                let queued: Vec<QueuedRow> = candidates
                    .iter()
                    .map(|(i, may_lead)| {
                        let row = &rows[*i];
                        QueuedRow {
                            l: &row.location_id,
                            m: &row.ghl_message_id,
                            c: row.ghl_contact_id.as_deref(),
                            p: &row.to_phone,
                            b: &row.body,
                            t: row.written_at,
                            h: may_lead.then_some(1),
                        }
                    })
                    .collect();
                let mut queue = sqlx::query_as(QUEUE_ROWS.of(self))
                    .bind(now)
                    .bind(json(&queued))
                    .bind(UNPAIRED)
                    .bind(REPLAYED);
                if self.dialect() == "postgres" {
                    queue = queue.bind(channels::OUTBOX);
                }
                let inserted: Vec<(i64, String, String, String)> = queue.fetch_all(&mut *tx).await?;
                let mut by_key: HashMap<(&str, &str), usize> = candidates
                    .iter()
                    .map(|(i, _)| ((rows[*i].location_id.as_str(), rows[*i].ghl_message_id.as_str()), *i))
                    .collect();
                let mut pending = vec![false; rows.len()];
                for (outbox_id, location, message, state) in &inserted {
                    if let Some(i) = by_key.remove(&(location.as_str(), message.as_str())) {
                        ids[i] = Some(*outbox_id);
                        pending[i] = state == OutboxState::Pending.as_str();
                    }
                }
                // A would-be head that was a duplicate, or failed at once, leaves its chat to the
                // rows after it.
                for (i, may_lead) in &candidates {
                    if *may_lead && !pending[*i] {
                        let row = &rows[*i];
                        sqlx::query(row.chat().promote_sql())
                            .bind(&row.location_id)
                            .bind(&row.to_phone)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            // A row not queued is a duplicate, or of a location not installed: asked only then.
            if ids.iter().any(Option::is_none) {
                let mut locations: Vec<&str> = rows.iter().map(|r| r.location_id.as_str()).collect();
                locations.sort_unstable();
                locations.dedup();
                let known: Vec<String> = sqlx::query_scalar(INSTALLED.of(self))
                    .bind(json(&locations))
                    .fetch_all(&mut *tx)
                    .await?;
                installed = Some(known.into_iter().collect());
            }
        });
        Ok(rows
            .iter()
            .zip(ids)
            .map(|(row, id)| match (id, &installed) {
                (Some(id), _) => Queued::New(id),
                (None, Some(known)) if !known.contains(&row.location_id) => Queued::UnknownLocation,
                (None, _) => Queued::Duplicate,
            })
            .collect())
    }
}

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
