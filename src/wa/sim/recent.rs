//! The ids of the messages a simulated device sent lately: a resend under one of them is the
//! same message (as a recipient's phone keeps one copy of it), and a test may deliver a receipt
//! for one of them. Only the latest are kept, so a session's memory stays the same however many
//! messages it sends: a resend (a crash mid-send, a lost ack, a dropped link) repeats one of the
//! few ids a session was sending at that moment, never an old one.

use std::collections::{HashSet, VecDeque};

/// How many ids a session keeps. Each session sends one message at a time, so a resend repeats
/// one of its last few ids; the rest is slack for tests that send several before a receipt.
const KEPT: usize = 64;

#[derive(Default)]
pub(super) struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Records `id`; false when it was sent lately (a resend).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

impl FromIterator<String> for RecentIds {
    fn from_iter<I: IntoIterator<Item = String>>(ids: I) -> Self {
        let mut recent = Self::default();
        for id in ids {
            recent.insert(&id);
        }
        recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_id_is_a_resend_and_the_oldest_are_forgotten_beyond_the_window() {
        let mut recent: RecentIds = (0..KEPT + 10).map(|i| format!("id{i}")).collect();
        assert!(!recent.insert(&format!("id{}", KEPT + 9)), "a recent id is a resend");
        assert!(recent.contains("id10") && !recent.contains("id9"));
        assert_eq!((recent.set.len(), recent.order.len()), (KEPT, KEPT));
        assert!(recent.insert("id0"), "forgotten: new again");
        assert!(!recent.contains("id10"));
    }
}
