//! Writes whose caller cannot pass the error on (a background task, a reply already sent):
//! they are never dropped in silence. [`settle`] retries a write that failed for a passing
//! reason (the database busy or the pool exhausted: nothing was committed), treats a conflict
//! as the expected news that the row moved on, and reports anything else as an error that
//! names what was not recorded. `scripts/check-dropped-writes` keeps `let _ =` away from
//! store and audit calls.

use std::future::Future;
use std::time::Duration;

use super::StoreError;

/// Tries in all, and the pause before the first retry (doubled each time: 0.1 + 0.2 + 0.4 +
/// 0.8 s).
const TRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(100);

impl StoreError {
    /// A failure that committed nothing and may pass: SQLite busy or locked, the pool
    /// exhausted, the connection lost before an answer.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::PoolTimedOut) | StoreError::Db(sqlx::Error::Io(_)) => true,
            StoreError::Db(sqlx::Error::Database(d)) => {
                let m = d.message().to_ascii_lowercase();
                m.contains("database is locked")
                    || m.contains("database is busy")
                    || d.code().as_deref() == Some("40001")
                    || d.code().as_deref() == Some("40P01")
            }
            _ => false,
        }
    }
}

/// Runs `write` until it succeeds or fails for good. `Some` with its value, or `None` after
/// reporting why `what` was not recorded (a conflict only at debug level: the row moved on).
pub async fn settle<T, F, Fut>(what: &str, mut write: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=TRIES {
        match write().await {
            Ok(v) => return Some(v),
            Err(StoreError::Conflict(why)) => {
                tracing::debug!("{what}: not recorded, the record moved on: {why}");
                return None;
            }
            Err(e) if e.is_transient() && attempt < TRIES => {
                tracing::warn!("{what}: {e}; trying again (attempt {attempt} of {TRIES})");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                tracing::error!("{what}: NOT RECORDED: {e}");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn passing_failures_are_retried_and_the_rest_are_not() {
        let calls = AtomicU32::new(0);
        let got = settle("a write", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StoreError::Db(sqlx::Error::PoolTimedOut))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(got, Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let got: Option<()> = settle("a write", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Conflict("moved on".into()))
        })
        .await;
        assert_eq!(got, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a conflict is not retried");

        let calls = AtomicU32::new(0);
        let got: Option<()> = settle("a write", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Db(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert_eq!(got, None);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            TRIES,
            "gives up after {TRIES} tries"
        );

        let calls = AtomicU32::new(0);
        let got: Option<()> = settle("a write", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Invalid("bad".into()))
        })
        .await;
        assert_eq!(got, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is not retried");
    }
}
