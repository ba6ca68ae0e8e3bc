//! Group commit of the outbound queue's intake: many provider webhooks written in one
//! transaction, so the intake costs one durable commit per batch instead of one per request.
//! Each statement reads its whole batch from one JSON parameter, so its text is the same for
//! every batch size and each connection prepares it once.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::heads::{ChatKey, in_chats_tx};
use super::instances::channels;
use super::{Dialects, Result, Store, json, on_db};
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
    /// Recorded as failed at once, with this reason (e.g. WhatsApp never paired).
    pub failure: Option<&'static str>,
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

/// The rows of a JSON array bound as `$2`, as a table `j`: `j.value` an element, `j.key` its
/// index. The statements below read their whole batch from it, so each connection prepares
/// them once (a statement whose text grew with the batch was parsed anew at every commit: a
/// third of the intake's SQLite time in a profile).
macro_rules! json_rows {
    (sqlite) => {
        "json_each($2) AS j"
    };
    (postgres) => {
        "jsonb_array_elements($2::jsonb) WITH ORDINALITY AS j(value, key)"
    };
}

/// Records the batch's webhook ids (`{"w": id}` each) seen at `$1`; returns those new.
macro_rules! record_hooks {
    ($dialect:tt) => {
        concat!(
            "INSERT INTO webhook_seen (webhook_id, seen_at) SELECT j.value->>'w', $1 FROM ",
            json_rows!($dialect),
            " WHERE true ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id"
        )
    };
}

/// Queues the batch's rows (`QueuedRow`s) at `$1`, in the array's order; a row flagged `h`
/// becomes its chat's head when nothing of the chat is unfinished. That probe is a scalar
/// subquery, not `NOT EXISTS`: PostgreSQL may run an `EXISTS` as one hashed scan of every
/// unfinished row (it did: 9 ms a batch at 20,000 queued), a scalar subquery is an index probe
/// per row. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
macro_rules! queue_rows {
    ($dialect:tt) => {
        concat!(
            "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, last_error, \
               attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head) \
             SELECT j.value->>'l', j.value->>'m', j.value->>'c', j.value->>'p', j.value->>'b', j.value->>'s', \
               j.value->>'f', 0, $1, $1, $1, $1, CASE WHEN j.value->>'f' IS NULL THEN NULL ELSE $1 END, \
               CASE WHEN j.value->>'h' IS NOT NULL AND (SELECT 1 FROM outbox o \
                 WHERE o.location_id = j.value->>'l' AND o.to_phone = j.value->>'p' \
                   AND o.state IN ('pending', 'sending') LIMIT 1) IS NULL THEN 1 ELSE 0 END \
             FROM ",
            json_rows!($dialect),
            " WHERE true ORDER BY j.key \
             ON CONFLICT (location_id, ghl_message_id) DO NOTHING RETURNING outbox_id, location_id, ghl_message_id"
        )
    };
}

/// The installed ones of the locations in the JSON array `$1` of strings, with when each was
/// paired.
macro_rules! location_facts {
    ($values:literal) => {
        concat!(
            "SELECT l.location_id, s.paired_at FROM locations l \
             LEFT JOIN wa_sessions s ON s.location_id = l.location_id WHERE l.location_id IN (",
            $values,
            ")"
        )
    };
}

const RECORD_HOOKS: Dialects = Dialects {
    sqlite: record_hooks!(sqlite),
    postgres: record_hooks!(postgres),
};
const QUEUE_ROWS: Dialects = Dialects {
    sqlite: queue_rows!(sqlite),
    postgres: queue_rows!(postgres),
};
const LOCATION_FACTS: Dialects = Dialects {
    sqlite: location_facts!("SELECT value FROM json_each($1)"),
    postgres: location_facts!("SELECT jsonb_array_elements_text($1::jsonb)"),
};

/// A row as the queueing statement reads it from its JSON array.
#[derive(Serialize)]
struct QueuedRow<'a> {
    l: &'a str,
    m: &'a str,
    c: Option<&'a str>,
    p: &'a str,
    b: &'a str,
    s: &'a str,
    f: Option<&'a str>,
    /// Present when the row may become its chat's head.
    h: Option<u8>,
}

/// A webhook id as the recording statement reads it.
#[derive(Serialize)]
struct Hook<'a> {
    w: &'a str,
}

impl Store {
    /// For each of `locations` that is installed, when its WhatsApp was paired (`None`: never),
    /// in one query: what the intake writer needs to judge a whole batch.
    pub async fn intake_facts(&self, locations: &[&str]) -> Result<HashMap<String, Option<i64>>> {
        if locations.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = LOCATION_FACTS.of(self);
        let locations = json(&locations);
        let rows: Vec<(String, Option<i64>)> = on_db!(self, pool => {
            sqlx::query_as(sql).bind(&locations).fetch_all(pool).await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Queues `rows` in one transaction, in their order, and returns each one's outbox id, or
    /// `None` for a duplicate (its `webhookId` or its `messageId` was seen before, or earlier
    /// in the batch). Each chat's head is the first of its rows queued while nothing of the
    /// chat is unfinished, exactly as if the rows had come one by one.
    pub async fn enqueue_outbound_batch(&self, rows: &[IntakeRow]) -> Result<Vec<Option<i64>>> {
        let now = now_ms();
        let mut fresh = repeats_in_batch(rows);
        let mut locks: Vec<String> = rows.iter().map(|r| r.chat().lock_name()).collect();
        locks.sort();
        locks.dedup();
        let mut ids = vec![None; rows.len()];
        in_chats_tx!(self, &locks, tx => {
            // Webhook ids first: a redelivered webhook queues nothing.
            let hooks: Vec<Hook> = rows
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| **fresh)
                .filter_map(|(r, _)| r.webhook_id.as_deref().map(|w| Hook { w }))
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
            // The first pending row of each chat may become its head; the rows after it never do.
            let mut first_of_chat = HashSet::new();
            let candidates: Vec<(usize, bool)> = rows
                .iter()
                .enumerate()
                .filter(|(i, _)| fresh[*i])
                .map(|(i, r)| (i, r.failure.is_none() && first_of_chat.insert((r.location_id.as_str(), r.to_phone.as_str()))))
                .collect();
            if !candidates.is_empty() {
                let queued: Vec<QueuedRow> = candidates
                    .iter()
                    .map(|(i, may_lead)| {
                        let row = &rows[*i];
                        let state = if row.failure.is_some() { OutboxState::Failed } else { OutboxState::Pending };
                        QueuedRow {
                            l: &row.location_id,
                            m: &row.ghl_message_id,
                            c: row.ghl_contact_id.as_deref(),
                            p: &row.to_phone,
                            b: &row.body,
                            s: state.as_str(),
                            f: row.failure,
                            h: may_lead.then_some(1),
                        }
                    })
                    .collect();
                let inserted: Vec<(i64, String, String)> = sqlx::query_as(QUEUE_ROWS.of(self))
                    .bind(now)
                    .bind(json(&queued))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut by_key: HashMap<(&str, &str), usize> = candidates
                    .iter()
                    .map(|(i, _)| ((rows[*i].location_id.as_str(), rows[*i].ghl_message_id.as_str()), *i))
                    .collect();
                for (outbox_id, location, message) in &inserted {
                    if let Some(i) = by_key.remove(&(location.as_str(), message.as_str())) {
                        ids[i] = Some(*outbox_id);
                    }
                }
                // The instance that runs each location's session sends; wake it when this commits
                // (ids are letters, digits, `-` and `_`: a comma separates them safely).
                if self.dialect() == "postgres" && !inserted.is_empty() {
                    let mut locations: Vec<&str> = inserted.iter().map(|(_, l, _)| l.as_str()).collect();
                    locations.sort_unstable();
                    locations.dedup();
                    sqlx::query("SELECT pg_notify($1, l) FROM unnest(string_to_array($2, ',')) AS l")
                        .bind(channels::OUTBOX)
                        .bind(locations.join(","))
                        .execute(&mut *tx)
                        .await?;
                }
                // A would-be head that was a duplicate leaves its chat to the rows after it.
                for (i, may_lead) in &candidates {
                    if *may_lead && ids[*i].is_none() {
                        let row = &rows[*i];
                        sqlx::query(row.chat().promote_sql())
                            .bind(&row.location_id)
                            .bind(&row.to_phone)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
        });
        Ok(ids)
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
