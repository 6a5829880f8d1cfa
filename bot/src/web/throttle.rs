//! Sign-in throttling: failed passwords per account and per address, with a back-off that
//! doubles once the free tries are spent, and a bound on the password hashes computed at
//! once (each costs an Argon2 hash, which an unauthenticated caller must not be able to
//! demand without limit). In memory, per server: a lock-out lasts at most [`MAX_LOCK`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed tries allowed per account before the back-off starts.
const FREE_PER_ACCOUNT: u32 = 5;
/// Per address (higher: people behind one proxy or NAT share an address).
const FREE_PER_ADDRESS: u32 = 20;
/// The first wait once the free tries are spent; each further failure doubles it.
const FIRST_LOCK: Duration = Duration::from_secs(2);
/// The longest wait.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
const FORGET: Duration = Duration::from_secs(60 * 60);
/// Accounts and addresses remembered at most (the oldest are forgotten first), so a flood
/// of made-up names cannot grow the table without bound.
const MAX_KEYS: usize = 10_000;
/// Password hashes computed at once.
pub const HASHES_AT_ONCE: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

pub struct Throttle {
    records: Mutex<HashMap<Key, Record>>,
    pub hashes: tokio::sync::Semaphore,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            records: Mutex::new(HashMap::new()),
            hashes: tokio::sync::Semaphore::new(HASHES_AT_ONCE),
        }
    }
}

fn account(email: &str) -> Key {
    Key::Account(email.trim().to_lowercase().chars().take(320).collect())
}

impl Throttle {
    /// How long `email` from `address` must still wait before a try is checked (`None`: it
    /// may try now).
    pub fn wait(&self, email: &str, address: IpAddr, now: Instant) -> Option<Duration> {
        let records = self.records.lock().expect("throttle");
        [account(email), Key::Address(address)]
            .iter()
            .filter_map(|k| records.get(k))
            .filter_map(|r| r.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// A wrong password for `email` from `address`.
    pub fn failed(&self, email: &str, address: IpAddr, now: Instant) {
        let mut records = self.records.lock().expect("throttle");
        if records.len() >= MAX_KEYS {
            records.retain(|_, r| now.duration_since(r.last) < FORGET);
            if records.len() >= MAX_KEYS {
                // Still full: forget the oldest half.
                let mut lasts: Vec<Instant> = records.values().map(|r| r.last).collect();
                lasts.sort_unstable();
                let cut = lasts[lasts.len() / 2];
                records.retain(|_, r| r.last > cut);
            }
        }
        for (key, free) in [
            (account(email), FREE_PER_ACCOUNT),
            (Key::Address(address), FREE_PER_ADDRESS),
        ] {
            let r = records.entry(key).or_insert(Record {
                failures: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(r.last) >= FORGET {
                r.failures = 0;
            }
            r.failures += 1;
            r.last = now;
            if r.failures >= free {
                let doublings = (r.failures - free).min(20);
                let lock = FIRST_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK);
                r.locked_until = Some(now + lock);
            }
        }
    }

    /// A right password: the account starts afresh (the address keeps its record, so one
    /// known password does not unlock guessing at others from there).
    pub fn succeeded(&self, email: &str) {
        self.records
            .lock()
            .expect("throttle")
            .remove(&account(email));
    }
}

/// "try again in 2 minutes": a wait as a person reads it.
pub fn in_words(d: Duration) -> String {
    let s = d.as_secs().max(1);
    match s {
        1 => "1 second".into(),
        2..=119 => format!("{s} seconds"),
        _ => format!("{} minutes", s.div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn an_account_is_locked_after_five_failures_for_a_doubling_wait() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..4 {
            t.failed("ada@example.com", ip(1), now);
            assert_eq!(t.wait("ada@example.com", ip(1), now), None);
        }
        t.failed("ADA@example.com ", ip(1), now);
        assert_eq!(t.wait("ada@example.com", ip(2), now), Some(FIRST_LOCK));
        // From another address too: the account is what is locked.
        assert!(t.wait("ada@example.com", ip(9), now).is_some());
        t.failed("ada@example.com", ip(1), now);
        assert_eq!(t.wait("ada@example.com", ip(1), now), Some(FIRST_LOCK * 2));
        for _ in 0..40 {
            t.failed("ada@example.com", ip(1), now);
        }
        assert_eq!(t.wait("ada@example.com", ip(3), now), Some(MAX_LOCK));
        // The wait ends; another account is not affected by this one's failures.
        assert_eq!(t.wait("ada@example.com", ip(3), now + MAX_LOCK), None);
        assert_eq!(t.wait("bob@example.com", ip(3), now), None);
        t.succeeded("ada@example.com");
        assert_eq!(t.wait("ada@example.com", ip(3), now), None);
    }

    #[test]
    fn an_address_guessing_at_many_accounts_is_locked_and_the_table_stays_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for n in 0..FREE_PER_ADDRESS {
            assert_eq!(t.wait(&format!("u{n}@example.com"), ip(7), now), None);
            t.failed(&format!("u{n}@example.com"), ip(7), now);
        }
        assert!(t.wait("someone-new@example.com", ip(7), now).is_some());
        assert_eq!(t.wait("someone-new@example.com", ip(8), now), None);
        for n in 0..(MAX_KEYS as u32 * 2) {
            t.failed(&format!("flood{n}@example.com"), ip(9), now);
        }
        assert!(t.records.lock().unwrap().len() <= MAX_KEYS + 2);
    }

    #[test]
    fn waits_read_as_words() {
        assert_eq!(in_words(Duration::from_millis(300)), "1 second");
        assert_eq!(in_words(Duration::from_secs(64)), "64 seconds");
        assert_eq!(in_words(Duration::from_secs(900)), "15 minutes");
    }
}
