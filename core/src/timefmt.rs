//! Formatting of stored timestamps (milliseconds since the epoch) for people.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 in UTC with second precision, e.g. `2026-11-22T10:04:05Z`.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// Like [`rfc3339`] for an optional timestamp, `-` when absent.
pub fn opt_rfc3339(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_seconds() {
        assert_eq!(super::rfc3339(1_531_420_618_123), "2018-07-12T18:36:58Z");
        assert_eq!(super::opt_rfc3339(None), "-");
    }
}
