//! Sends waiting for WhatsApp's server to acknowledge them. A send returns once the client
//! wrote the frame; only the server's ack (or a receipt, which comes later still) says the
//! message arrived. The relay's event loop hands each ack, refusal and reconnection to the
//! send waiting for it.

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::domain::LocationId;

/// How long a handed part waits for the server's ack before it is sent again (same id, so
/// the recipient keeps one copy). WhatsApp acks within a second on a working link; 10 s covers
/// a slow one without leaving a frame that a half-dead socket swallowed unsent for long. A
/// reconnect ends the wait at once.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a waiting send learns.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// The server took it (its ack, or a receipt from the recipient).
    Acked,
    /// The server refused it, with its error code.
    Refused(String),
    /// The session connected again: a frame written before the drop may be lost.
    Reconnected,
    /// Nothing within [`ACK_TIMEOUT`].
    Silence,
    /// waghl is stopping; the next life sends it again.
    Stopping,
}

type Key = (LocationId, String);

/// The sends waiting for an ack, by location and WhatsApp id.
#[derive(Default)]
pub(super) struct AwaitedAcks {
    waiting: DashMap<Key, oneshot::Sender<Heard>>,
}

impl AwaitedAcks {
    /// Starts waiting for the ack of `id`, before it is sent: the ack may be handled before
    /// the send returns.
    pub fn expect(&self, location: &LocationId, id: &str) -> Awaited<'_> {
        let key = (location.clone(), id.to_owned());
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(key.clone(), tx);
        Awaited { acks: self, key, rx }
    }

    /// Passes `heard` to the send waiting for `id`; false when none waits (a late ack, or one
    /// of a send from before a restart).
    pub fn heard(&self, location: &LocationId, id: &str, heard: Heard) -> bool {
        match self.waiting.remove(&(location.clone(), id.to_owned())) {
            Some((_, waiting)) => waiting.send(heard).is_ok(),
            None => false,
        }
    }

    /// The location's session connected again: every send still waiting is sent again.
    pub fn reconnected(&self, location: &LocationId) {
        let keys: Vec<Key> = self
            .waiting
            .iter()
            .filter(|entry| entry.key().0 == *location)
            .map(|entry| entry.key().clone())
            .collect();
        for (location, id) in keys {
            self.heard(&location, &id, Heard::Reconnected);
        }
    }
}

/// One send's wait; dropping it stops waiting.
pub(super) struct Awaited<'a> {
    acks: &'a AwaitedAcks,
    key: Key,
    rx: oneshot::Receiver<Heard>,
}

impl Awaited<'_> {
    pub async fn heard(&mut self, timeout: Duration, stopping: &CancellationToken) -> Heard {
        tokio::select! {
            heard = &mut self.rx => heard.unwrap_or(Heard::Stopping),
            () = tokio::time::sleep(timeout) => Heard::Silence,
            () = stopping.cancelled() => Heard::Stopping,
        }
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        self.acks.waiting.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> LocationId {
        LocationId::parse("loc1").unwrap()
    }

    #[tokio::test]
    async fn an_ack_handled_before_the_wait_starts_is_not_missed() {
        let acks = AwaitedAcks::default();
        let mut awaited = acks.expect(&location(), "A");
        assert!(acks.heard(&location(), "A", Heard::Acked));
        let never = CancellationToken::new();
        assert_eq!(awaited.heard(Duration::from_secs(5), &never).await, Heard::Acked);
    }

    #[tokio::test]
    async fn a_reconnect_ends_the_waits_of_its_location_only() {
        let acks = AwaitedAcks::default();
        let other = LocationId::parse("loc2").unwrap();
        let mut mine = acks.expect(&location(), "A");
        let mut theirs = acks.expect(&other, "B");
        acks.reconnected(&location());
        let never = CancellationToken::new();
        assert_eq!(mine.heard(Duration::from_secs(5), &never).await, Heard::Reconnected);
        assert_eq!(theirs.heard(Duration::from_millis(10), &never).await, Heard::Silence);
    }

    #[tokio::test]
    async fn a_late_ack_finds_no_one_waiting() {
        let acks = AwaitedAcks::default();
        drop(acks.expect(&location(), "A"));
        assert!(!acks.heard(&location(), "A", Heard::Acked));
        assert!(acks.waiting.is_empty());
    }
}
