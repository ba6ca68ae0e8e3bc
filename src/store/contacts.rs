//! The GHL contact and conversation of each WhatsApp phone, per location, so that a message
//! from a known phone costs one GHL call instead of three.

use super::{Result, Store, on_db};
use crate::time::now_ms;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CachedContact {
    pub ghl_contact_id: String,
    pub ghl_conversation_id: Option<String>,
}

impl Store {
    pub async fn cached_contact(&self, location_id: &str, phone: &str) -> Result<Option<CachedContact>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT ghl_contact_id, ghl_conversation_id FROM contacts_cache WHERE location_id = $1 AND phone = $2",
            )
            .bind(location_id)
            .bind(phone)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn cache_contact(&self, location_id: &str, phone: &str, contact: &CachedContact) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO contacts_cache (location_id, phone, ghl_contact_id, ghl_conversation_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (location_id, phone) DO UPDATE SET \
                   ghl_contact_id = excluded.ghl_contact_id, ghl_conversation_id = excluded.ghl_conversation_id, \
                   updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(phone)
            .bind(&contact.ghl_contact_id)
            .bind(&contact.ghl_conversation_id)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Drops cached ids GHL no longer knows (a contact deleted or merged there).
    pub async fn forget_contact(&self, location_id: &str, phone: &str) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("DELETE FROM contacts_cache WHERE location_id = $1 AND phone = $2")
                .bind(location_id)
                .bind(phone)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
