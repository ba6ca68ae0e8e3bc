//! Per-chat settings learned from WhatsApp: the disappearing-messages timer.

use super::{Result, Store, on_db};
use crate::time::now_ms;

impl Store {
    /// Records the chat's disappearing-messages timer (0: off).
    pub async fn set_chat_expiration(&self, location_id: &str, chat: &str, seconds: u32) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO chat_settings (location_id, chat, expiration_secs, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (location_id, chat) DO UPDATE SET expiration_secs = $3, updated_at = $4",
            )
            .bind(location_id)
            .bind(chat)
            .bind(i64::from(seconds))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The chat's disappearing-messages timer, `None` when it is off or never learned.
    pub async fn chat_expiration(&self, location_id: &str, chat: &str) -> Result<Option<u32>> {
        let seconds: Option<i64> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT expiration_secs FROM chat_settings WHERE location_id = $1 AND chat = $2")
                .bind(location_id)
                .bind(chat)
                .fetch_optional(pool)
                .await?
        });
        Ok(seconds.and_then(|s| u32::try_from(s).ok()).filter(|s| *s > 0))
    }
}
