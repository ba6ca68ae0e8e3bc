//! The inbound relay's own writes about the rows it relays — the mark before a message is
//! handed to GHL, and what became of a row — any number of them in one transaction. The relay
//! gathers what its concurrent chats write at one moment (group commit,
//! `relay::inbound_writer`), so relaying a burst costs a durable commit per batch for each of
//! these steps, not one per message.

use super::heads::{ChatKey, in_chats_tx, promote_in};
use super::message_map::{MAP_INBOUND, SUPERSEDED};
use super::{InboxRow, Result, Store};
use crate::domain::{InboxState, Incarnation};
use crate::time::now_ms;

/// What became of a relay attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxOutcome {
    Relayed {
        ghl_message_id: String,
        contact_id: String,
        conversation_id: String,
    },
    /// Try again at `at` (unix ms), saying why it waits.
    Retry {
        at: i64,
        error: String,
    },
    /// Not relayed on purpose.
    Skipped {
        reason: String,
    },
    Dead {
        error: String,
    },
}

/// One write of the inbound relay.
#[derive(Clone, Debug)]
pub enum InboxRelayWrite {
    /// The message is about to be handed to GHL, to this contact and conversation (where a
    /// retry after a crash looks for it, and whose ids a retry reuses); applies only while
    /// `holder` holds the row's claim.
    Posting {
        inbox_id: i64,
        holder: Incarnation,
        contact_id: String,
        conversation_id: String,
    },
    /// The attempt at a row ended so; the claim is released. A row that ends (anything but
    /// `Retry`) hands its chat to the next pending message, and a relayed one records its GHL
    /// message id (`message_map`). The row by its keys alone: its body stays out of the write.
    Finished {
        inbox_id: i64,
        location_id: String,
        chat: String,
        wa_message_id: String,
        outcome: InboxOutcome,
    },
}

impl InboxRelayWrite {
    /// What became of the attempt at `row`.
    pub fn finished(row: &InboxRow, outcome: InboxOutcome) -> Self {
        Self::Finished {
            inbox_id: row.inbox_id,
            location_id: row.location_id.clone(),
            chat: row.chat.clone(),
            wa_message_id: row.wa_message_id.clone(),
            outcome,
        }
    }

    /// The chat whose head this write moves: its lock is held for the transaction.
    fn chat(&self) -> Option<ChatKey<'_>> {
        match self {
            Self::Finished {
                location_id,
                chat,
                outcome,
                ..
            } if !matches!(outcome, InboxOutcome::Retry { .. }) => Some(ChatKey::Inbox {
                location: location_id,
                chat,
            }),
            Self::Finished { .. } | Self::Posting { .. } => None,
        }
    }
}

/// Records a `Finished` write's outcome at `$now` inside the caller's transaction, which holds
/// the row's chat lock when the row ends. Its fields are bound by name where it is used.
macro_rules! finish {
    ($tx:ident, $now:expr, $inbox_id:ident, $location_id:ident, $chat:ident, $wa_message_id:ident, $outcome:ident) => {{
        let (inbox_id, location_id, chat, wa_message_id, now) = ($inbox_id, $location_id, $chat, $wa_message_id, $now);
        match $outcome {
            // Still pending: it stays its chat's head.
            InboxOutcome::Retry { at, error } => {
                sqlx::query(
                    "UPDATE inbox SET next_attempt_at = $2, last_error = $3, attempts = attempts + 1, \
                       claimed_until = NULL, claimed_by = NULL, updated_at = $4 WHERE inbox_id = $1",
                )
                .bind(inbox_id)
                .bind(at)
                .bind(error)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
            }
            InboxOutcome::Relayed {
                ghl_message_id,
                contact_id,
                conversation_id,
            } => {
                sqlx::query(
                    "UPDATE inbox SET state = 'relayed', head = 0, ghl_message_id = $2, ghl_contact_id = $3, \
                       ghl_conversation_id = $4, relayed_at = $5, updated_at = $5, claimed_until = NULL, \
                       claimed_by = NULL, posting_at = NULL, last_error = NULL, attempts = attempts + 1 \
                     WHERE inbox_id = $1",
                )
                .bind(inbox_id)
                .bind(ghl_message_id)
                .bind(contact_id)
                .bind(conversation_id)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
                sqlx::query(MAP_INBOUND)
                    .bind(location_id)
                    .bind(chat)
                    .bind(wa_message_id)
                    .bind(ghl_message_id)
                    .bind(now)
                    .bind(SUPERSEDED)
                    .execute(&mut *$tx)
                    .await?;
            }
            // Skipped on purpose is not an attempt; a dead row's last one is.
            InboxOutcome::Skipped { reason: why } | InboxOutcome::Dead { error: why } => {
                let (state, attempt): (InboxState, i64) = match $outcome {
                    InboxOutcome::Skipped { .. } => (InboxState::Skipped, 0),
                    _ => (InboxState::Dead, 1),
                };
                sqlx::query(
                    "UPDATE inbox SET state = $4, head = 0, last_error = $2, attempts = attempts + $5, \
                       claimed_until = NULL, claimed_by = NULL, updated_at = $3 WHERE inbox_id = $1",
                )
                .bind(inbox_id)
                .bind(why)
                .bind(now)
                .bind(state.as_str())
                .bind(attempt)
                .execute(&mut *$tx)
                .await?;
            }
        }
    }};
}

impl Store {
    /// Commits `writes` in one transaction, in order; says for each whether it applied (a
    /// `Posting` whose claim was lost does not: the message must not be posted).
    pub async fn write_inbox(&self, writes: &[InboxRelayWrite]) -> Result<Vec<bool>> {
        let mut locks: Vec<String> = writes.iter().filter_map(|w| w.chat()).map(|k| k.lock_name()).collect();
        locks.sort_unstable();
        locks.dedup();
        let now = now_ms();
        in_chats_tx!(self, &locks, tx => {
            let mut applied = Vec::with_capacity(writes.len());
            for write in writes {
                let done = match write {
                    InboxRelayWrite::Posting { inbox_id, holder, contact_id, conversation_id } => {
                        let marked = sqlx::query(
                            "UPDATE inbox SET posting_at = $3, ghl_contact_id = $4, ghl_conversation_id = $5 \
                             WHERE inbox_id = $1 AND claimed_by = $2 AND state = 'pending'",
                        )
                        .bind(inbox_id)
                        .bind(holder.as_str())
                        .bind(now)
                        .bind(contact_id)
                        .bind(conversation_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        marked == 1
                    }
                    InboxRelayWrite::Finished { inbox_id, location_id, chat, wa_message_id, outcome } => {
                        finish!(tx, now, inbox_id, location_id, chat, wa_message_id, outcome);
                        true
                    }
                };
                if let Some(key) = write.chat() {
                    promote_in!(tx, key);
                }
                applied.push(done);
            }
            Ok(applied)
        })
    }
}
