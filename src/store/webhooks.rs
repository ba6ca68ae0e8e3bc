//! Webhook ids already processed: GHL may deliver one twice; the second changes nothing.

use super::{Result, Store, on_db};
use crate::time::now_ms;

impl Store {
    pub async fn webhook_seen(&self, webhook_id: &str) -> Result<bool> {
        let found: Option<i64> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT seen_at FROM webhook_seen WHERE webhook_id = $1")
                .bind(webhook_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    /// Records a processed webhook id; false when it was already recorded.
    pub async fn record_webhook(&self, webhook_id: &str) -> Result<bool> {
        let inserted = on_db!(self, pool => {
            sqlx::query("INSERT INTO webhook_seen (webhook_id, seen_at) VALUES ($1, $2) ON CONFLICT (webhook_id) DO NOTHING")
                .bind(webhook_id)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Forgets ids seen before `before` (unix ms); returns how many.
    pub async fn prune_webhook_ids(&self, before: i64) -> Result<u64> {
        Ok(on_db!(self, pool => {
            sqlx::query("DELETE FROM webhook_seen WHERE seen_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
