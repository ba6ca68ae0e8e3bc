//! How text that came from outside (ids, phone numbers, URLs, query values) is shown in a log
//! line or an error message: escaped as Rust's `Debug` does (quotes; `\n`, `\0`, `\u{202e}`…)
//! and cut to a few dozen characters. An escaped value cannot end a log line and forge the
//! next one, nor reorder what a terminal shows; a cut one cannot flood a log or an answer.

use std::fmt;

/// At most this many characters of a value are shown.
pub const CLIP_CHARS: usize = 64;

/// `value`, ready for `%` or `?` in a tracing macro or `{}` in a message.
pub fn clip(value: &str) -> Clipped<'_> {
    Clipped(value)
}

pub struct Clipped<'a>(&'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(CLIP_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let shown = clip("x\n2026-01-01T00:00:00Z ERROR forged\r\0\u{202e}").to_string();
        assert_eq!(shown, r#""x\n2026-01-01T00:00:00Z ERROR forged\r\0\u{202e}""#);
    }

    #[test]
    fn long_values_are_cut_and_say_how_long_they_were() {
        let shown = clip(&"é".repeat(1000)).to_string();
        assert!(
            shown.starts_with(&format!("\"{}\"…", "é".repeat(CLIP_CHARS))),
            "{shown}"
        );
        assert!(shown.ends_with("(2000 bytes)"));
        assert_eq!(clip("short").to_string(), "\"short\"");
    }
}
