//! Contact cards (one, or several at once): a name and the phone numbers of their vCards.

use whatsapp_rust::waproto::whatsapp as wa;

use super::Mapped;
use crate::domain::Content;

pub(super) fn contact(base: &wa::Message) -> Option<Mapped<'_>> {
    if let Some(contact) = base.contact_message.as_option() {
        return Some(Mapped {
            content: contact_content(
                contact.display_name.as_deref(),
                [contact.vcard.as_deref().unwrap_or_default()],
            ),
            media_ref: None,
            context: contact.context_info.as_option(),
        });
    }
    if let Some(contacts) = base.contacts_array_message.as_option() {
        let names: Vec<&str> = contacts
            .contacts
            .iter()
            .filter_map(|c| c.display_name.as_deref())
            .filter(|n| !n.trim().is_empty())
            .collect();
        let joined = names.join(", ");
        let name = contacts
            .display_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(joined.as_str());
        return Some(Mapped {
            content: contact_content(
                Some(name),
                contacts.contacts.iter().map(|c| c.vcard.as_deref().unwrap_or_default()),
            ),
            media_ref: None,
            context: contacts.context_info.as_option(),
        });
    }
    None
}

fn contact_content<'v>(name: Option<&str>, vcards: impl IntoIterator<Item = &'v str>) -> Content {
    let mut phones: Vec<String> = Vec::new();
    let mut card_name = None;
    for vcard in vcards {
        for phone in vcard_phones(vcard) {
            if !phones.contains(&phone) {
                phones.push(phone);
            }
        }
        card_name = card_name.or_else(|| vcard_name(vcard));
    }
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or(card_name)
        .unwrap_or_default();
    Content::Contact { name, phones }
}

/// The phones of a vCard. The `waid` parameter gives the WhatsApp number in E.164; without it,
/// the number is kept as written.
fn vcard_phones(vcard: &str) -> Vec<String> {
    vcard
        .lines()
        .filter_map(|line| {
            let (head, value) = line.trim().split_once(':')?;
            let mut params = head.split(';');
            let property = params.next()?.trim();
            // `TEL`, or a grouped `item1.TEL`.
            let property = property.rsplit('.').next().unwrap_or(property);
            if !property.eq_ignore_ascii_case("TEL") {
                return None;
            }
            let waid = params.find_map(|param| {
                let (key, value) = param.split_once('=')?;
                key.trim().eq_ignore_ascii_case("waid").then_some(value)
            });
            if let Some(waid) = waid {
                let digits: String = waid.chars().filter(char::is_ascii_digit).collect();
                if !digits.is_empty() {
                    return Some(format!("+{digits}"));
                }
            }
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_owned())
        })
        .collect()
}

fn vcard_name(vcard: &str) -> Option<String> {
    vcard.lines().find_map(|line| {
        let (head, value) = line.trim().split_once(':')?;
        let property = head.split(';').next()?.trim();
        (property.eq_ignore_ascii_case("FN") && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_contact_card_gives_its_whatsapp_numbers() {
        let vcard = "BEGIN:VCARD\nVERSION:3.0\nN:;Bruno;;;\nFN:Bruno\n\
                     TEL;type=CELL;type=VOICE;waid=5511987654321:+55 11 98765-4321\nEND:VCARD";
        let contact = wa::Message {
            contact_message: MessageField::some(wa::message::ContactMessage {
                display_name: Some("Bruno".into()),
                vcard: Some(vcard.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, _) = mapped(contact, &direct());
        assert_eq!(
            message.content,
            Content::Contact {
                name: "Bruno".into(),
                phones: vec!["+5511987654321".into()],
            }
        );
    }

    #[test]
    fn vcard_phones_without_waid_are_kept_as_written() {
        let vcard = "BEGIN:VCARD\r\nFN:Carla\r\nitem1.TEL:+44 20 7946 0958\r\nitem1.X-ABLabel:work\r\nEND:VCARD";
        assert_eq!(vcard_phones(vcard), vec!["+44 20 7946 0958".to_owned()]);
        assert_eq!(vcard_name(vcard).as_deref(), Some("Carla"));
    }
}
