//! WhatsApp message id ⇄ GHL message id, one row per WhatsApp message.

use super::{Result, Store, on_db};

/// The status of an inbound row whose GHL message was a placeholder that the real message
/// replaced: the GHL id stays on record, but the message itself still has to be posted.
pub(super) const SUPERSEDED: &str = "superseded";

/// Records the GHL message (`$4`) a WhatsApp message (`$1` location, `$2` chat, `$3` id) became,
/// at `$5`; it takes the place of a superseded placeholder's (`$6` = [`SUPERSEDED`]). Run in
/// the transaction that ends the inbound row ([`Store::write_inbox`]), not a commit of its own.
pub(super) const MAP_INBOUND: &str = "INSERT INTO message_map (location_id, chat, wa_message_id, direction, \
       ghl_message_id, status, created_at, updated_at) VALUES ($1, $2, $3, 'inbound', $4, 'relayed', $5, $5) \
     ON CONFLICT (location_id, chat, wa_message_id) DO UPDATE SET ghl_message_id = $4, \
       status = 'relayed', updated_at = $5 WHERE message_map.status = $6";

impl Store {
    /// True when waghl itself sent this WhatsApp message (its echo must not go back to GHL).
    pub async fn is_own_send(&self, location_id: &str, wa_message_id: &str) -> Result<bool> {
        let found: Option<i64> = on_db!(self, pool => {
            sqlx::query_scalar(
                "SELECT map_id FROM message_map WHERE location_id = $1 AND wa_message_id = $2 AND direction = 'outbound' \
                 LIMIT 1",
            )
            .bind(location_id)
            .bind(wa_message_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// Whether this chat has written to the location (a message of it was relayed): its JID
    /// is then known to be on WhatsApp, no lookup needed.
    pub async fn chat_wrote_in(&self, location_id: &str, chat: &str) -> Result<bool> {
        let found: Option<i64> = on_db!(self, pool => {
            sqlx::query_scalar(
                "SELECT map_id FROM message_map WHERE location_id = $1 AND chat = $2 AND direction = 'inbound' LIMIT 1",
            )
            .bind(location_id)
            .bind(chat)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// The GHL message an inbound WhatsApp message already became, if any.
    pub async fn inbound_ghl_id(&self, location_id: &str, chat: &str, wa_message_id: &str) -> Result<Option<String>> {
        let found: Option<Option<String>> = on_db!(self, pool => {
            sqlx::query_scalar(
                "SELECT ghl_message_id FROM message_map WHERE location_id = $1 AND chat = $2 AND wa_message_id = $3 \
                 AND direction = 'inbound' AND status <> $4",
            )
            .bind(location_id)
            .bind(chat)
            .bind(wa_message_id)
            .bind(SUPERSEDED)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.flatten())
    }
}

impl Store {
    /// Whether a GHL message id is recorded for one of this location's messages already (a
    /// reconciliation must not claim a message that belongs to another row).
    pub async fn ghl_message_recorded(&self, location_id: &str, ghl_message_id: &str) -> Result<bool> {
        let found: i64 = on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM message_map WHERE location_id = $1 AND ghl_message_id = $2")
                .bind(location_id)
                .bind(ghl_message_id)
                .fetch_one(pool)
                .await?
        });
        Ok(found > 0)
    }
}
