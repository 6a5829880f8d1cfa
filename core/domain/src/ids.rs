//! Identifiers: a short type prefix and a time-ordered ULID, e.g. `ses_01j9…`.
//! The prefix makes an id readable in logs and chat; the ULID keeps ids sortable by creation.

/// A new identifier with the given type prefix (`hum`, `idn`, `prf`, `ses`, `trg`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("ses");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("ses");
        assert!(a.starts_with("ses_") && a.len() == 30, "{a}");
        assert!(a < b);
    }
}
