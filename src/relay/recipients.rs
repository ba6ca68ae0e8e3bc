//! Who is on WhatsApp, remembered: a usync lookup per send is a burst of contact lookups for a
//! burst of replies, the pattern WhatsApp flags. The answer is kept per (location, phone) for a
//! while, and one "not registered" is not believed until a second lookup says it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::LocationId;

/// How long a number found on WhatsApp is taken as such. A number rarely leaves WhatsApp, and
/// when it has, the server refuses the send (a `failed` with its code) rather than losing it.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
/// How long a confirmed "not on WhatsApp" stands: a number can join at any time.
const ABSENT_FOR: Duration = Duration::from_secs(10 * 60);
/// How long a first "not registered" waits for its second lookup to confirm it.
const FIRST_ABSENT_FOR: Duration = Duration::from_secs(3600);
/// Entries kept at most (about 100 bytes each): the oldest goes first.
const MAX_ENTRIES: usize = 10_000;

/// What is known of a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Recipient {
    /// On WhatsApp: send to this JID.
    On(String),
    /// WhatsApp said "not registered" once: ask again before failing the message.
    AskAgain,
    /// Said twice: not on WhatsApp.
    Absent,
}

#[derive(Clone, Debug)]
struct Entry {
    recipient: Recipient,
    until: Instant,
}

type Key = (LocationId, String);

#[derive(Default)]
pub(super) struct Recipients {
    known: Mutex<HashMap<Key, Entry>>,
}

impl Recipients {
    /// The standing answer for `phone`, if any. A first "not registered" is no answer: the
    /// number is looked up again.
    pub fn cached(&self, location: &LocationId, phone: &str) -> Option<Recipient> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&(location.clone(), phone.to_owned()))
            .filter(|e| e.until > Instant::now() && e.recipient != Recipient::AskAgain)
            .map(|e| e.recipient.clone())
    }

    /// Records what a lookup (or an inbound message from the number) said: the JID, or `None`
    /// for "not registered". Returns what the relay should do.
    pub fn learned(&self, location: &LocationId, phone: &str, jid: Option<String>) -> Recipient {
        let now = Instant::now();
        let key = (location.clone(), phone.to_owned());
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let asked_before = known
            .get(&key)
            .is_some_and(|e| e.recipient == Recipient::AskAgain && e.until > now);
        let (recipient, lasts) = match jid {
            Some(jid) => (Recipient::On(jid), KNOWN_FOR),
            None if asked_before => (Recipient::Absent, ABSENT_FOR),
            None => (Recipient::AskAgain, FIRST_ABSENT_FOR),
        };
        if known.len() >= MAX_ENTRIES && !known.contains_key(&key) {
            known.retain(|_, e| e.until > now);
            if known.len() >= MAX_ENTRIES
                && let Some(oldest) = known.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| k.clone())
            {
                known.remove(&oldest);
            }
        }
        known.insert(
            key,
            Entry {
                recipient: recipient.clone(),
                until: now + lasts,
            },
        );
        recipient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> LocationId {
        LocationId::parse("loc1").unwrap()
    }

    const JID: &str = "15551234567@s.whatsapp.net";

    #[tokio::test(start_paused = true)]
    async fn a_found_number_is_remembered_for_a_day() {
        let recipients = Recipients::default();
        assert_eq!(recipients.cached(&location(), "+15551234567"), None);
        recipients.learned(&location(), "+15551234567", Some(JID.into()));
        assert_eq!(
            recipients.cached(&location(), "+15551234567"),
            Some(Recipient::On(JID.into()))
        );
        let other = LocationId::parse("loc2").unwrap();
        assert_eq!(recipients.cached(&other, "+15551234567"), None, "per location");
        tokio::time::advance(KNOWN_FOR).await;
        assert_eq!(recipients.cached(&location(), "+15551234567"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_not_registered_is_asked_again_before_it_is_believed() {
        let recipients = Recipients::default();
        assert_eq!(recipients.learned(&location(), "+1", None), Recipient::AskAgain);
        assert_eq!(recipients.cached(&location(), "+1"), None, "looked up again");
        assert_eq!(recipients.learned(&location(), "+1", None), Recipient::Absent);
        assert_eq!(recipients.cached(&location(), "+1"), Some(Recipient::Absent));
        tokio::time::advance(ABSENT_FOR).await;
        assert_eq!(recipients.cached(&location(), "+1"), None, "a number can join");
        // A second answer that contradicts the first wins.
        assert_eq!(recipients.learned(&location(), "+2", None), Recipient::AskAgain);
        assert_eq!(
            recipients.learned(&location(), "+2", Some(JID.into())),
            Recipient::On(JID.into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_bounded_and_lets_the_oldest_go() {
        let recipients = Recipients::default();
        for i in 0..MAX_ENTRIES {
            recipients.learned(&location(), &format!("+{i}"), Some(JID.into()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        recipients.learned(&location(), "+new", Some(JID.into()));
        assert_eq!(recipients.known.lock().unwrap().len(), MAX_ENTRIES);
        assert_eq!(recipients.cached(&location(), "+0"), None);
        assert!(recipients.cached(&location(), "+1").is_some());
        assert!(recipients.cached(&location(), "+new").is_some());
    }
}
