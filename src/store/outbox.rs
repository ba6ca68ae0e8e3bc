//! The outbound queue (GHL → WhatsApp): one row per GHL message, keyed by GHL's `messageId`.

use super::{Result, Store, on_db};
use crate::time::now_ms;

pub struct NewOutbound<'a> {
    pub location_id: &'a str,
    pub ghl_message_id: &'a str,
    pub ghl_contact_id: Option<&'a str>,
    pub to_phone: &'a str,
    /// JSON of what to send (text, attachment URLs, quoted message).
    pub body: &'a str,
}

impl Store {
    /// Queues a GHL message; `None` when that `messageId` was queued before (a GHL retry).
    pub async fn enqueue_outbound(&self, new: NewOutbound<'_>) -> Result<Option<i64>> {
        let now = now_ms();
        Ok(on_db!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, \
                   attempts, next_attempt_at, retry_from, received_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6, $6) \
                 ON CONFLICT (location_id, ghl_message_id) DO NOTHING RETURNING outbox_id",
            )
            .bind(new.location_id)
            .bind(new.ghl_message_id)
            .bind(new.ghl_contact_id)
            .bind(new.to_phone)
            .bind(new.body)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// How many outbound messages a location has received in all (for tests and metrics).
    pub async fn outbound_count(&self, location_id: &str) -> Result<i64> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE location_id = $1")
                .bind(location_id)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Puts dead outbound rows back in the queue: one, or all of a location's. Parts already
    /// given a WhatsApp id keep it, so a replay never sends a second copy.
    pub async fn retry_dead_outbound(&self, location_id: &str, outbox_id: Option<i64>) -> Result<u64> {
        let now = now_ms();
        Ok(on_db!(self, pool => {
            sqlx::query(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $3, retry_from = $3, \
                   claimed_until = NULL, updated_at = $3 \
                 WHERE location_id = $1 AND state = 'dead' AND ($2 IS NULL OR outbox_id = $2) AND body IS NOT NULL",
            )
            .bind(location_id)
            .bind(outbox_id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }
}
