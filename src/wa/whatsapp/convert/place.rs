//! Locations: a pinned place or a live location, as coordinates and a name.

use whatsapp_rust::waproto::whatsapp as wa;

use super::Mapped;
use crate::domain::Content;

pub(super) fn location(base: &wa::Message) -> Option<Mapped<'_>> {
    if let Some(location) = base.location_message.as_option() {
        let name = [&location.name, &location.address]
            .into_iter()
            .flatten()
            .map(|text| text.trim())
            .find(|text| !text.is_empty())
            .map(str::to_owned);
        return Some(Mapped {
            content: Content::Location {
                lat: location.degrees_latitude.unwrap_or_default(),
                lng: location.degrees_longitude.unwrap_or_default(),
                name,
            },
            media_ref: None,
            context: location.context_info.as_option(),
        });
    }
    if let Some(live) = base.live_location_message.as_option() {
        return Some(Mapped {
            content: Content::Location {
                lat: live.degrees_latitude.unwrap_or_default(),
                lng: live.degrees_longitude.unwrap_or_default(),
                name: live.caption.clone().filter(|c| !c.trim().is_empty()),
            },
            media_ref: None,
            context: live.context_info.as_option(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_location() {
        let location = wa::Message {
            location_message: MessageField::some(wa::message::LocationMessage {
                degrees_latitude: Some(-23.5505),
                degrees_longitude: Some(-46.6333),
                name: Some("Office".into()),
                address: Some("Av. Paulista 1000".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(location, &direct());
        assert_eq!(
            message.content,
            Content::Location {
                lat: -23.5505,
                lng: -46.6333,
                name: Some("Office".into()),
            }
        );
        assert_eq!(media_ref, None);
    }
}
