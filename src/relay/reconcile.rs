//! Exactly once into GHL across crashes. An inbound row whose earlier post has no known outcome
//! (the process died while GHL was answering, or the answer was lost) may be in GHL already.
//! Before it is posted again it is looked for in the contact's conversation, by what waghl
//! controls in the post — direction, text (or attachments) and the `date` it sent — and by
//! `altId` when GHL returns it. Found: the row settles with that GHL id, nothing is posted.

use crate::ghl::types::{ConversationMessage, Direction};
use crate::ghl::{GhlClient, GhlError};
use crate::store::Store;
use crate::time::parse_rfc3339;

/// Messages fetched per page, and pages looked at before concluding "not there".
const PAGE_SIZE: u32 = 50;
const MAX_PAGES: usize = 10;

/// What the uncertain post sent.
#[derive(Debug)]
pub(super) struct Posted<'a> {
    pub direction: Direction,
    /// The `date` sent (the WhatsApp timestamp), unix ms.
    pub date_ms: i64,
    /// The message text sent.
    pub text: &'a str,
    /// A media message: posted with its file, or (media lost) with a note instead.
    pub media: bool,
    /// The WhatsApp id, sent as `altId`.
    pub alt_id: &'a str,
}

/// Whether a conversation message is the uncertain post. `altId` decides when GHL returns it;
/// otherwise direction, the second of `dateAdded` and the text (with the attachment a media
/// message carries) must all agree.
pub(super) fn is_the_post(candidate: &ConversationMessage, posted: &Posted<'_>) -> bool {
    if let Some(alt_id) = &candidate.alt_id {
        return alt_id == posted.alt_id;
    }
    let same_second = candidate
        .date_added
        .as_deref()
        .and_then(parse_rfc3339)
        .is_some_and(|at| at.div_euclid(1000) == posted.date_ms.div_euclid(1000));
    let body = candidate.body.as_deref().unwrap_or_default().trim();
    let text = posted.text.trim();
    let content = if posted.media {
        // With its file, or with the "[WhatsApp … not available …]" note before the caption.
        (candidate.attachments.len() == 1 && body == text)
            || (candidate.attachments.is_empty() && body.starts_with("[WhatsApp ") && body.ends_with(text))
    } else {
        candidate.attachments.is_empty() && body == text
    };
    candidate.direction == Some(posted.direction) && same_second && content
}

/// The GHL id of the uncertain post, if the conversation holds it (and no other row of the
/// location claimed that message already). Newest first, until messages older than the post.
pub(super) async fn find_post(
    ghl: &GhlClient,
    store: &Store,
    location_id: &str,
    conversation_id: &str,
    posted: &Posted<'_>,
) -> Result<Option<String>, GhlError> {
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = ghl
            .conversation_messages(location_id, conversation_id, after.as_deref(), PAGE_SIZE)
            .await?;
        for candidate in page.messages.iter().filter(|m| is_the_post(m, posted)) {
            if !store.ghl_message_recorded(location_id, &candidate.id).await? {
                return Ok(Some(candidate.id.clone()));
            }
        }
        let older_than_post = page
            .messages
            .last()
            .and_then(|m| m.date_added.as_deref())
            .and_then(parse_rfc3339)
            .is_some_and(|at| at < posted.date_ms - 1000);
        if !page.next_page || older_than_post || page.messages.is_empty() {
            break;
        }
        after = page
            .last_message_id
            .or_else(|| page.messages.last().map(|m| m.id.clone()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(direction: Direction, date: &str, body: &str, attachments: usize) -> ConversationMessage {
        ConversationMessage {
            id: "ghl1".into(),
            direction: Some(direction),
            body: Some(body.into()),
            date_added: Some(date.into()),
            attachments: vec!["https://files/x".into(); attachments],
            alt_id: None,
        }
    }

    fn posted(text: &str, media: bool) -> Posted<'_> {
        Posted {
            direction: Direction::Inbound,
            // 2026-11-30T01:02:03Z
            date_ms: 1_796_000_523_000,
            text,
            media,
            alt_id: "3EB0AAA",
        }
    }

    #[test]
    fn the_same_text_at_the_same_date_is_the_post() {
        let found = candidate(Direction::Inbound, "2026-11-30T01:02:03.000Z", "hello", 0);
        assert!(is_the_post(&found, &posted("hello", false)));
    }

    #[test]
    fn the_same_text_at_another_date_is_not_the_post() {
        let other = candidate(Direction::Inbound, "2026-11-30T01:02:04.000Z", "hello", 0);
        assert!(!is_the_post(&other, &posted("hello", false)));
    }

    #[test]
    fn the_agents_message_with_the_same_text_is_not_the_post() {
        let reply = candidate(Direction::Outbound, "2026-11-30T01:02:03.000Z", "hello", 0);
        assert!(!is_the_post(&reply, &posted("hello", false)));
    }

    #[test]
    fn media_matches_by_its_attachment_or_its_lost_media_note() {
        let date = "2026-11-30T01:02:03Z";
        assert!(is_the_post(
            &candidate(Direction::Inbound, date, "caption", 1),
            &posted("caption", true)
        ));
        assert!(is_the_post(
            &candidate(
                Direction::Inbound,
                date,
                "[WhatsApp image not available: gone]\ncaption",
                0
            ),
            &posted("caption", true)
        ));
        assert!(!is_the_post(
            &candidate(Direction::Inbound, date, "caption", 0),
            &posted("caption", true)
        ));
        assert!(!is_the_post(
            &candidate(Direction::Inbound, date, "caption", 1),
            &posted("caption", false)
        ));
    }

    #[test]
    fn an_alt_id_decides_when_ghl_returns_one() {
        let mut found = candidate(Direction::Inbound, "2020-01-01T00:00:00Z", "other text", 0);
        found.alt_id = Some("3EB0AAA".into());
        assert!(is_the_post(&found, &posted("hello", false)));
        found.alt_id = Some("3EB0BBB".into());
        found.date_added = Some("2026-11-30T01:02:03Z".into());
        found.body = Some("hello".into());
        assert!(!is_the_post(&found, &posted("hello", false)));
    }
}
