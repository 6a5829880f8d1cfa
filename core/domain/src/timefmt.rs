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

/// A time a person writes, as milliseconds since the epoch: `2026-12-01` (midnight UTC) or
/// RFC 3339 (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00+01:00`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let parsed = OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        let day = time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )?;
        Ok::<_, time::error::Parse>(day.midnight().assume_utc())
    });
    parsed
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            format!(
                "`{}` is not a time; expected a date (2026-12-01) or RFC 3339 (2026-12-01T10:00:00Z)",
                text.chars().take(40).collect::<String>()
            )
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_people_write_are_read() {
        assert_eq!(
            super::parse_time("2018-07-12T18:36:58Z"),
            Ok(1_531_420_618_000)
        );
        assert_eq!(
            super::parse_time("2018-07-12T19:36:58+01:00"),
            Ok(1_531_420_618_000)
        );
        assert_eq!(super::parse_time("2018-07-12"), Ok(1_531_353_600_000));
        assert!(super::parse_time("yesterday")
            .unwrap_err()
            .contains("is not a time"));
    }

    #[test]
    fn formats_utc_seconds() {
        assert_eq!(super::rfc3339(1_531_420_618_123), "2018-07-12T18:36:58Z");
        assert_eq!(super::opt_rfc3339(None), "-");
    }
}
