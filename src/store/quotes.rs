//! Who wrote a WhatsApp message waghl has seen, so that a reply quoting it names its author.

use super::{Result, Store, on_db};
use crate::domain::QuoteAuthor;

/// The inbox row of a location's WhatsApp message, by its id alone (a quote names no chat).
const QUOTED: &str = "SELECT sender, from_me FROM inbox WHERE location_id = $1 AND wa_message_id = $2 LIMIT 1";

impl Store {
    /// The author of the location's message `wa_message_id`: the business for a part waghl
    /// sent or a message typed on its phone, else the contact by the JID it wrote from (its
    /// LID when it wrote from one). `None` when waghl never saw the message.
    pub async fn quote_author(&self, location_id: &str, wa_message_id: &str) -> Result<Option<QuoteAuthor>> {
        if self.is_own_send(location_id, wa_message_id).await? {
            return Ok(Some(QuoteAuthor::Business));
        }
        let row: Option<(String, i64)> = on_db!(self, pool => {
            sqlx::query_as(QUOTED)
                .bind(location_id)
                .bind(wa_message_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(sender, from_me)| match from_me {
            0 => QuoteAuthor::Contact(sender),
            _ => QuoteAuthor::Business,
        }))
    }
}

#[cfg(test)]
mod tests {
    /// A quote of a message waghl never received read every inbox row of the location before
    /// the `inbox_wa` index.
    #[tokio::test]
    async fn a_quoted_message_is_found_by_its_whatsapp_id_not_by_reading_the_location() {
        crate::store::assert_plan_has(
            super::QUOTED,
            "USING INDEX inbox_wa (location_id=? AND wa_message_id=?)",
        )
        .await;
    }
}
