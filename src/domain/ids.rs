//! Identifiers that arrive from outside (URLs, webhooks) and are checked once.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} must be 1–64 letters, digits, `-` or `_`")]
pub struct InvalidId {
    pub what: &'static str,
}

/// A GHL location (sub-account) id, e.g. `ve9EPM428h8vShlRW1KT`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocationId(String);

/// Whether `text` has the shape of an id from GHL (`ve9EPM428h8vShlRW1KT`, a UUID) or
/// WhatsApp (`3EB0C767D26A1D6F1E24`): 1 to `max` letters, digits, `-` or `_`. Anything else —
/// a line break, a path, 900 KB — is refused where it enters, before it is stored or logged.
pub fn is_id(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl LocationId {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if is_id(text, 64) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidId { what: "a location id" })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LocationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One life of a waghl process: the instance (stable across restarts, `WAGHL_INSTANCE_ID`) and
/// a nonce drawn at start. Queue claims name it, so a restarted instance can tell the claims of
/// its own earlier lives (dead: released at once) from those of live processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// `instance#nonce`, as stored in `claimed_by`.
    full: String,
    /// Length of the `instance#` prefix.
    prefix_len: usize,
}

impl Incarnation {
    pub fn new(instance: &str, nonce: &str) -> Self {
        Self {
            full: format!("{instance}#{nonce}"),
            prefix_len: instance.len() + 1,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `instance#`: what every incarnation of this instance starts with.
    pub fn instance_prefix(&self) -> &str {
        &self.full[..self.prefix_len]
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_ids_accept_ghl_ids_and_refuse_paths_and_blanks() {
        assert_eq!(
            LocationId::parse("ve9EPM428h8vShlRW1KT").unwrap().as_str(),
            "ve9EPM428h8vShlRW1KT"
        );
        for bad in ["", "../etc", "a b", "x/y", &"a".repeat(65)] {
            assert!(LocationId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_incarnation_names_its_instance_as_a_prefix() {
        let me = Incarnation::new("host-a", "1f2e");
        assert_eq!(me.as_str(), "host-a#1f2e");
        assert_eq!(me.instance_prefix(), "host-a#");
        // An instance whose name extends ours is another instance, not an earlier life.
        assert!(!Incarnation::new("host-ab", "1").as_str().starts_with("host-a#"));
    }
}
