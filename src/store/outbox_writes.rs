//! The outbound relay's own writes about the messages it sends — a part's id before its send,
//! a message finished, a status GHL accepted — any number of them in one transaction. The
//! relay gathers what its concurrent sends and reports write at one moment (group commit,
//! `relay::outbox_writer`), so a drain costs a durable commit per batch, not several per message.

use super::heads::{ChatKey, in_chats_tx, promote_in};
use super::outbox::{ADVANCE_PART, PARTS, SETTLE, rank, settled};
use super::{PartRow, Result, Store};
use crate::domain::{OutboxState, PartStatus};
use crate::time::now_ms;

/// One write of the outbound relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxWrite {
    /// A part's WhatsApp id, committed before the part is sent (the message becomes
    /// `sending`): a crash after this resends the same id, which WhatsApp treats as the same
    /// message.
    Part {
        outbox_id: i64,
        location_id: String,
        ghl_message_id: String,
        chat: String,
        part_index: i64,
        wa_message_id: String,
    },
    /// The sender finished a message: `acked` (the part WhatsApp's server just acknowledged)
    /// is `sent`, the message takes its least advanced part's status, and the chat's next
    /// message becomes its head.
    Finished {
        outbox_id: i64,
        location_id: String,
        to_phone: String,
        acked: Option<String>,
    },
    /// GHL accepted `status`.
    Reported { outbox_id: i64, status: OutboxState },
}

impl OutboxWrite {
    /// The chat whose head this write may move: its lock is held for the transaction.
    fn chat(&self) -> Option<ChatKey<'_>> {
        match self {
            Self::Finished {
                location_id, to_phone, ..
            } => Some(ChatKey::Outbox {
                location: location_id,
                phone: to_phone,
            }),
            Self::Part { .. } | Self::Reported { .. } => None,
        }
    }
}

impl Store {
    /// Commits `writes` in one transaction, in order.
    pub async fn write_outbox(&self, writes: &[OutboxWrite]) -> Result<()> {
        let mut locks: Vec<String> = writes.iter().filter_map(|w| w.chat()).map(|k| k.lock_name()).collect();
        locks.sort_unstable();
        locks.dedup();
        let now = now_ms();
        in_chats_tx!(self, &locks, tx => {
            for write in writes {
                match write {
                    OutboxWrite::Part {
                        outbox_id,
                        location_id,
                        ghl_message_id,
                        chat,
                        part_index,
                        wa_message_id,
                    } => {
                        sqlx::query(
                            "INSERT INTO message_map (location_id, chat, wa_message_id, direction, ghl_message_id, \
                               outbox_id, part_index, status, created_at, updated_at) \
                             VALUES ($1, $2, $3, 'outbound', $4, $5, $6, 'sending', $7, $7)",
                        )
                        .bind(location_id)
                        .bind(chat)
                        .bind(wa_message_id)
                        .bind(ghl_message_id)
                        .bind(outbox_id)
                        .bind(part_index)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE outbox SET state = 'sending', updated_at = $2 WHERE outbox_id = $1 AND state = 'pending'")
                            .bind(outbox_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    OutboxWrite::Finished {
                        outbox_id,
                        location_id,
                        to_phone,
                        acked,
                    } => {
                        if let Some(acked) = acked {
                            sqlx::query(ADVANCE_PART)
                                .bind(location_id)
                                .bind(acked)
                                .bind(PartStatus::Sent.as_str())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let parts: Vec<PartRow> = sqlx::query_as(PARTS).bind(outbox_id).fetch_all(&mut *tx).await?;
                        if let Some(least) = settled(&parts) {
                            sqlx::query(SETTLE)
                                .bind(outbox_id)
                                .bind(least.as_str())
                                .bind(now)
                                .bind(true)
                                .execute(&mut *tx)
                                .await?;
                            let chat = ChatKey::Outbox {
                                location: location_id,
                                phone: to_phone,
                            };
                            promote_in!(tx, chat);
                        }
                    }
                    OutboxWrite::Reported { outbox_id, status } => {
                        sqlx::query(concat!(
                            "UPDATE outbox SET reported_status = $2, \
                               report_after = CASE WHEN ", rank!("state"), " > ", rank!("$2"), " THEN report_after ELSE NULL END \
                             WHERE outbox_id = $1 AND (reported_status IS NULL OR ", rank!("reported_status"), " < ", rank!("$2"), ")"
                        ))
                        .bind(outbox_id)
                        .bind(status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        });
        Ok(())
    }
}
