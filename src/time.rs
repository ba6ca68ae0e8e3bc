//! Time as the database stores it: integer unix milliseconds, in both dialects, so rows decode
//! alike. Only the HTTP surface turns it into RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2026-11-24T21:40:00.123Z` for a unix-milliseconds value.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Unix milliseconds of an RFC 3339 / ISO-8601 timestamp, as GHL writes them.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_through_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        let ms = 1_795_000_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        assert_eq!(parse_rfc3339("2024-07-23T23:54:51.264Z"), Some(1_721_778_891_264));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
