//! Who wrote a WhatsApp message waghl has seen, so that a reply quoting it names its author.

use super::{Result, Store, on_db};
use crate::domain::QuoteAuthor;

impl Store {
    /// The author of the location's message `wa_message_id`: the business for a part waghl
    /// sent or a message typed on its phone, else the contact by the JID it wrote from (its
    /// LID when it wrote from one). `None` when waghl never saw the message.
    pub async fn quote_author(&self, location_id: &str, wa_message_id: &str) -> Result<Option<QuoteAuthor>> {
        if self.is_own_send(location_id, wa_message_id).await? {
            return Ok(Some(QuoteAuthor::Business));
        }
        let row: Option<(String, i64)> = on_db!(self, pool => {
            sqlx::query_as("SELECT sender, from_me FROM inbox WHERE location_id = $1 AND wa_message_id = $2 LIMIT 1")
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
