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
                   attempts, next_attempt_at, received_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6) \
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
}
