//! Group commit of the outbound queue's intake: many provider webhooks written in one
//! transaction, so the intake costs one durable commit per batch instead of one per request.
//! The batch statements are not kept prepared: their text differs with every batch size, and
//! each connection's cache would otherwise fill with one large statement per size.

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;

use super::heads::{ChatKey, in_chats_tx};
use super::instances::channels;
use super::{Result, Store, on_db};
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

impl Store {
    /// For each of `locations` that is installed, when its WhatsApp was paired (`None`: never),
    /// in one query: what the intake writer needs to judge a whole batch.
    pub async fn intake_facts(&self, locations: &[&str]) -> Result<HashMap<String, Option<i64>>> {
        if locations.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<i64>)> = on_db!(self, pool => {
            let mut query = QueryBuilder::new(
                "SELECT l.location_id, s.paired_at FROM locations l \
                 LEFT JOIN wa_sessions s ON s.location_id = l.location_id WHERE l.location_id IN (",
            );
            let mut ids = query.separated(", ");
            for location in locations {
                ids.push_bind(*location);
            }
            query.push(")");
            query.build_query_as().persistent(false).fetch_all(pool).await?
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
            let hooks: Vec<&str> = rows
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| **fresh)
                .filter_map(|(r, _)| r.webhook_id.as_deref())
                .collect();
            if !hooks.is_empty() {
                let mut insert = QueryBuilder::new("INSERT INTO webhook_seen (webhook_id, seen_at) ");
                insert.push_values(&hooks, |mut b, id| {
                    b.push_bind(*id).push_bind(now);
                });
                insert.push(" ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id");
                let recorded: HashSet<String> = insert.build_query_scalar().persistent(false).fetch_all(&mut *tx).await?.into_iter().collect();
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
                let mut insert = QueryBuilder::new(
                    "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, last_error, \
                       attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head) ",
                );
                insert.push_values(&candidates, |mut b, (i, may_lead)| {
                    let row = &rows[*i];
                    let state = if row.failure.is_some() { OutboxState::Failed } else { OutboxState::Pending };
                    b.push_bind(&row.location_id)
                        .push_bind(&row.ghl_message_id)
                        .push_bind(row.ghl_contact_id.as_deref())
                        .push_bind(&row.to_phone)
                        .push_bind(&row.body)
                        .push_bind(state.as_str())
                        .push_bind(row.failure)
                        .push("0")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(row.failure.map(|_| now))
                        .push("CASE WHEN ")
                        .push_bind_unseparated(*may_lead)
                        .push_unseparated(" AND NOT EXISTS (SELECT 1 FROM outbox WHERE location_id = ")
                        .push_bind_unseparated(&row.location_id)
                        .push_unseparated(" AND to_phone = ")
                        .push_bind_unseparated(&row.to_phone)
                        .push_unseparated(" AND state IN ('pending', 'sending')) THEN 1 ELSE 0 END");
                });
                insert.push(" ON CONFLICT (location_id, ghl_message_id) DO NOTHING RETURNING outbox_id, location_id, ghl_message_id");
                let inserted: Vec<(i64, String, String)> = insert.build_query_as().persistent(false).fetch_all(&mut *tx).await?;
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
