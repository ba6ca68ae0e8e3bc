//! The inbound queue (WhatsApp → GHL). A row is committed before WhatsApp is told the message
//! arrived; its key `(location_id, chat, sender, wa_message_id)` makes a redelivery a no-op —
//! but for a placeholder, which the message it stands for replaces.

use super::heads::{ChatKey, demote_in, in_chats_tx, promote_in};
use super::message_map::SUPERSEDED;
use super::{Db, Result, Store, on_db};
use crate::domain::{Content, InboundMessage, Incarnation, UNAVAILABLE_KIND};
use crate::time::now_ms;

/// The inbox state a message starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxStart {
    Pending,
    /// Deliberately not relayed (groups, status broadcasts, echoes of waghl's own sends).
    Skipped(&'static str),
}

/// What storing an inbound message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxWrite {
    /// A new row.
    New,
    /// The message replaced the placeholder stored under its id, which is queued again (and
    /// posted as a GHL message of its own when the placeholder had been relayed).
    Replaced,
    /// Stored before: a redelivery, or a placeholder for a message already stored.
    Duplicate,
    /// It would replace a placeholder that a worker is relaying right now: try again shortly.
    Busy,
}

/// One inbound message to store, as a session hands it over.
#[derive(Clone, Copy, Debug)]
pub struct NewInbound<'a> {
    pub location_id: &'a str,
    pub message: &'a InboundMessage,
    pub media_ref: Option<&'a [u8]>,
    pub start: InboxStart,
}

impl Store {
    /// Stores an inbound message durably. A redelivery is a no-op, except that a message
    /// replaces the placeholder (`Content::Unavailable`) stored under its id.
    pub async fn insert_inbound(
        &self,
        location_id: &str,
        message: &InboundMessage,
        media_ref: Option<&[u8]>,
        start: InboxStart,
    ) -> Result<InboxWrite> {
        let new = NewInbound {
            location_id,
            message,
            media_ref,
            start,
        };
        let mut writes = self.insert_inbound_batch(&[new]).await?;
        Ok(writes.pop().expect("one write per message"))
    }

    /// Stores `messages` in one transaction (group commit), each exactly as
    /// [`Store::insert_inbound`] would, in their order; returns what became of each.
    pub async fn insert_inbound_batch(&self, messages: &[NewInbound<'_>]) -> Result<Vec<InboxWrite>> {
        let mut bodies = Vec::with_capacity(messages.len());
        for new in messages {
            bodies.push(
                serde_json::to_string(new.message)
                    .map_err(|e| super::StoreError::Database(sqlx::Error::Encode(e.into())))?,
            );
        }
        let mut locks: Vec<String> = messages
            .iter()
            .map(|new| {
                ChatKey::Inbox {
                    location: new.location_id,
                    chat: &new.message.chat,
                }
                .lock_name()
            })
            .collect();
        locks.sort();
        locks.dedup();
        let now = now_ms();
        in_chats_tx!(self, &locks, tx => {
            let mut writes = Vec::with_capacity(messages.len());
            for (new, body) in messages.iter().zip(&bodies) {
                writes.push(insert_one!(tx, new, body, now));
            }
            Ok(writes)
        })
    }
}

/// Stores one inbound message inside the caller's transaction, which holds its chat's lock.
/// A pending message is its chat's head when nothing of the chat is pending before it.
macro_rules! insert_one {
    ($tx:ident, $new:expr, $body:expr, $now:expr) => {{
        let NewInbound {
            location_id,
            message,
            media_ref,
            start,
        } = *$new;
        let (body, now): (&String, i64) = ($body, $now);
        let (state, reason) = match start {
            InboxStart::Pending => ("pending", None),
            InboxStart::Skipped(reason) => ("skipped", Some(reason)),
        };
        let key = ChatKey::Inbox {
            location: location_id,
            chat: &message.chat,
        };
        let is_placeholder = matches!(message.content, Content::Unavailable { .. });
        {
            let inserted = sqlx::query(
                "INSERT INTO inbox (location_id, chat, sender, wa_message_id, from_me, push_name, kind, body, \
                   media_ref, wa_timestamp, state, attempts, next_attempt_at, retry_from, last_error, received_at, \
                   updated_at, head) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $12, $13, $12, $12, \
                   CASE WHEN $11 = 'pending' AND NOT EXISTS (SELECT 1 FROM inbox WHERE location_id = $1 \
                     AND chat = $2 AND state = 'pending') THEN 1 ELSE 0 END) \
                 ON CONFLICT (location_id, chat, sender, wa_message_id) DO NOTHING",
            )
            .bind(location_id)
            .bind(&message.chat)
            .bind(&message.sender)
            .bind(&message.id)
            .bind(i64::from(message.from_me))
            .bind(message.push_name.as_deref())
            .bind(message.content.kind())
            .bind(body)
            .bind(media_ref)
            .bind(message.timestamp)
            .bind(state)
            .bind(now)
            .bind(reason)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                InboxWrite::New
            } else if is_placeholder {
                InboxWrite::Duplicate
            } else {
                // The message starts afresh in the placeholder's row (its place in the chat's
                // order is the placeholder's), unless a worker holds the row right now.
                let replaced = sqlx::query(
                    "UPDATE inbox SET push_name = $5, kind = $6, body = $7, media_ref = $8, wa_timestamp = $9, \
                       state = $10, last_error = $11, attempts = 0, next_attempt_at = $12, retry_from = $12, \
                       claimed_until = NULL, claimed_by = NULL, posting_at = NULL, ghl_message_id = NULL, \
                       relayed_at = NULL, head = 0, updated_at = $12 \
                     WHERE location_id = $1 AND chat = $2 AND sender = $3 AND wa_message_id = $4 AND kind = $13 \
                       AND (claimed_until IS NULL OR claimed_until < $12)",
                )
                .bind(location_id)
                .bind(&message.chat)
                .bind(&message.sender)
                .bind(&message.id)
                .bind(message.push_name.as_deref())
                .bind(message.content.kind())
                .bind(body)
                .bind(media_ref)
                .bind(message.timestamp)
                .bind(state)
                .bind(reason)
                .bind(now)
                .bind(UNAVAILABLE_KIND)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
                if replaced == 1 {
                    // A relayed placeholder keeps its GHL id on record (so that no
                    // reconciliation mistakes it for the message), but no longer stands for
                    // the message: the message is posted.
                    sqlx::query(
                        "UPDATE message_map SET status = $4 WHERE location_id = $1 AND chat = $2 \
                           AND wa_message_id = $3 AND direction = 'inbound'",
                    )
                    .bind(location_id)
                    .bind(&message.chat)
                    .bind(&message.id)
                    .bind(SUPERSEDED)
                    .execute(&mut *$tx)
                    .await?;
                    demote_in!($tx, key);
                    promote_in!($tx, key);
                    InboxWrite::Replaced
                } else {
                    let kind: Option<String> = sqlx::query_scalar(
                        "SELECT kind FROM inbox WHERE location_id = $1 AND chat = $2 AND sender = $3 \
                           AND wa_message_id = $4",
                    )
                    .bind(location_id)
                    .bind(&message.chat)
                    .bind(&message.sender)
                    .bind(&message.id)
                    .fetch_optional(&mut *$tx)
                    .await?;
                    if kind.as_deref() == Some(UNAVAILABLE_KIND) {
                        InboxWrite::Busy
                    } else {
                        InboxWrite::Duplicate
                    }
                }
            }
        }
    }};
}
use insert_one;

/// A claimed inbox row, ready to relay.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InboxRow {
    pub inbox_id: i64,
    pub location_id: String,
    pub chat: String,
    pub wa_message_id: String,
    pub body: Option<String>,
    pub media_ref: Option<Vec<u8>>,
    pub attempts: i64,
    pub received_at: i64,
    pub retry_from: i64,
    pub ghl_contact_id: Option<String>,
    pub ghl_conversation_id: Option<String>,
    /// Set when an earlier attempt handed the message to GHL without learning the outcome.
    pub posting_at: Option<i64>,
}

impl Store {
    /// Claims up to `limit` rows for `claim_ms`: only the oldest pending row of each chat (first
    /// in, first out per chat), only when it is due and unclaimed, and only for installed
    /// locations whose session runs on this instance (`holder` holds its lease: the relay may need
    /// the session for media or a LID) or nowhere. A chat whose head waits blocks nothing else.
    pub async fn claim_inbox_batch(&self, limit: i64, claim_ms: i64, holder: &Incarnation) -> Result<Vec<InboxRow>> {
        macro_rules! heads {
            () => {
                "SELECT h.inbox_id FROM inbox h \
                   JOIN locations l ON l.location_id = h.location_id AND l.status = 'installed' \
                   LEFT JOIN wa_sessions s ON s.location_id = h.location_id \
                   WHERE h.state = 'pending' AND h.head = 1 AND h.next_attempt_at <= $1 \
                     AND (s.owner IS NULL OR s.owner = $4 OR s.lease_until IS NULL OR s.lease_until < $1) \
                     AND (h.claimed_until IS NULL OR h.claimed_until < $1) \
                   ORDER BY h.next_attempt_at LIMIT $2"
            };
        }
        let now = now_ms();
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(concat!(
                    "UPDATE inbox SET claimed_until = $3, claimed_by = $4 WHERE inbox_id IN (",
                    heads!(),
                    ") AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < $1) RETURNING inbox_id, location_id, chat, wa_message_id, body, media_ref, attempts, received_at, \
                       retry_from, ghl_contact_id, ghl_conversation_id, posting_at"
                ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + claim_ms)
                    .bind(holder.as_str())
                    .fetch_all(pool)
                    .await?
            }
            // Several workers (and instances) skip each other's rows instead of waiting.
            Db::Postgres(pool) => {
                // Picked once, in a CTE (see `claim_outbox_batch`); the update joins on the id alone.
                sqlx::query_as(concat!(
                    "WITH picked AS (",
                    heads!(),
                    " FOR UPDATE OF h SKIP LOCKED) UPDATE inbox SET claimed_until = $3, claimed_by = $4 FROM picked \
                     WHERE inbox.inbox_id = picked.inbox_id RETURNING inbox.inbox_id, location_id, chat, wa_message_id, body, media_ref, attempts, received_at, \
                       retry_from, ghl_contact_id, ghl_conversation_id, posting_at"
                ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + claim_ms)
                    .bind(holder.as_str())
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// GHL answered that it did not add the message: the row is certain again.
    pub async fn clear_inbox_posting(&self, inbox_id: i64) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("UPDATE inbox SET posting_at = NULL WHERE inbox_id = $1")
                .bind(inbox_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Puts dead inbound rows back in the queue: one (`inbox_id`), or all of a location's.
    /// Returns how many.
    pub async fn retry_dead_inbound(&self, location_id: &str, inbox_id: Option<i64>) -> Result<u64> {
        let now = now_ms();
        let chats: Vec<String> = on_db!(self, pool => {
            sqlx::query_scalar(
                "UPDATE inbox SET state = 'pending', head = 0, attempts = 0, next_attempt_at = $3, retry_from = $3, \
                   claimed_until = NULL, claimed_by = NULL, updated_at = $3 \
                 WHERE location_id = $1 AND state = 'dead' AND ($2 IS NULL OR inbox_id = $2) AND body IS NOT NULL \
                 RETURNING chat",
            )
            .bind(location_id)
            .bind(inbox_id)
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        let replayed = chats.len() as u64;
        let mut chats = chats;
        chats.sort();
        chats.dedup();
        for chat in &chats {
            self.fix_head(ChatKey::Inbox {
                location: location_id,
                chat,
            })
            .await?;
        }
        Ok(replayed)
    }

    /// Inbound rows waiting to be relayed, over all locations (the queue-depth gauge).
    pub async fn inbound_pending(&self) -> Result<i64> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE state = 'pending'")
                .fetch_one(pool)
                .await?
        }))
    }

    /// The stored body of an inbound message, by its WhatsApp id (for quoting it).
    pub async fn inbound_body(&self, location_id: &str, wa_message_id: &str) -> Result<Option<String>> {
        let body: Option<Option<String>> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT body FROM inbox WHERE location_id = $1 AND wa_message_id = $2 LIMIT 1")
                .bind(location_id)
                .bind(wa_message_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(body.flatten())
    }
}
