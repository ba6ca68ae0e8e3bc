//! Text messages: a plain `conversation`, or an extended text (which may quote a message).

use whatsapp_rust::waproto::whatsapp as wa;

use super::Mapped;
use crate::domain::Content;

pub(super) fn text(base: &wa::Message) -> Option<Mapped<'_>> {
    if let Some(text) = base.conversation.as_deref().filter(|t| !t.is_empty()) {
        return Some(Mapped::plain(Content::Text { text: text.to_owned() }));
    }
    if let Some(extended) = base.extended_text_message.as_option()
        && let Some(text) = extended.text.as_deref().filter(|t| !t.is_empty())
    {
        return Some(Mapped {
            content: Content::Text { text: text.to_owned() },
            media_ref: None,
            context: extended.context_info.as_option(),
        });
    }
    None
}
