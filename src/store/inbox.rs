//! The inbound queue (WhatsApp → GHL). A row is committed before WhatsApp is told the message
//! arrived; its key `(location_id, chat, sender, wa_message_id)` makes a redelivery a no-op.

use super::{Result, Store, on_db};
use crate::domain::InboundMessage;
use crate::time::now_ms;

/// The inbox state a message starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxStart {
    Pending,
    /// Deliberately not relayed (groups, status broadcasts, echoes of waghl's own sends).
    Skipped(&'static str),
}

impl Store {
    /// Stores an inbound message durably; `false` when it was stored before (a redelivery).
    pub async fn insert_inbound(
        &self,
        location_id: &str,
        message: &InboundMessage,
        media_ref: Option<&[u8]>,
        start: InboxStart,
    ) -> Result<bool> {
        let body =
            serde_json::to_string(message).map_err(|e| super::StoreError::Database(sqlx::Error::Encode(e.into())))?;
        let (state, reason) = match start {
            InboxStart::Pending => ("pending", None),
            InboxStart::Skipped(reason) => ("skipped", Some(reason)),
        };
        let now = now_ms();
        let inserted = on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO inbox (location_id, chat, sender, wa_message_id, from_me, push_name, kind, body, \
                   media_ref, wa_timestamp, state, attempts, next_attempt_at, last_error, received_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13, $12, $12) \
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
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(inserted == 1)
    }
}
