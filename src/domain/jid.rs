//! WhatsApp addresses (JIDs): `15551234567@s.whatsapp.net` for a phone, `123…@lid` for a
//! privacy-preserving LID, `…@g.us` for a group. A device suffix (`:12`) may follow the user.

use super::phone::Phone;

/// Who a direct message is with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Party {
    /// E.164, e.g. `+15551234567`.
    Phone(String),
    /// The digits of a LID: the phone is not known yet.
    Lid(String),
    Unknown(String),
}

fn user_and_server(jid: &str) -> Option<(&str, &str)> {
    let (user, server) = jid.split_once('@')?;
    let user = user.split(':').next().unwrap_or(user);
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit())).then_some((user, server))
}

/// `+15551234567` for a phone JID.
pub fn phone_of(jid: &str) -> Option<String> {
    match user_and_server(jid)? {
        (user, "s.whatsapp.net" | "c.us") => Phone::from_whatsapp_user(user).map(Phone::into_string),
        _ => None,
    }
}

pub fn party_of(jid: &str) -> Party {
    match user_and_server(jid) {
        Some((user, "s.whatsapp.net" | "c.us")) => match Phone::from_whatsapp_user(user) {
            Some(phone) => Party::Phone(phone.into_string()),
            None => Party::Unknown(jid.to_owned()),
        },
        Some((user, "lid")) => Party::Lid(user.to_owned()),
        _ => Party::Unknown(jid.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids_map_to_phones_lids_or_unknown() {
        assert_eq!(
            party_of("15551234567@s.whatsapp.net"),
            Party::Phone("+15551234567".into())
        );
        assert_eq!(
            party_of("15551234567:12@s.whatsapp.net"),
            Party::Phone("+15551234567".into())
        );
        assert_eq!(party_of("987654321012345@lid"), Party::Lid("987654321012345".into()));
        assert_eq!(party_of("1203630@g.us"), Party::Unknown("1203630@g.us".into()));
        assert_eq!(party_of("status@broadcast"), Party::Unknown("status@broadcast".into()));
        assert_eq!(phone_of("abc@s.whatsapp.net"), None);
    }
}
