//! The durable outbox: what a sandbox has sent for its durable processes and the server has
//! not yet acknowledged. Each kept message gets the next number; an acknowledgement is
//! cumulative (everything up to its number is stored and may be forgotten); after a
//! reconnection the server's `Resume { acked }` drops what it stored and the rest is sent
//! again, oldest first. sandboxd and the fake runtime (`airlock_sandbox::fake`) share this,
//! so the broker's tests on the fake run against the real replay rules.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Outbox {
    next: u64,
    kept: VecDeque<(u64, String)>,
    bytes: usize,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox {
            next: 1,
            kept: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl Outbox {
    /// The number the next kept message gets (numbers start at 1; 0 means "not durable").
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// Keeps a message numbered [`Outbox::next_number`] (its text already says so).
    pub fn keep(&mut self, text: String) {
        self.bytes += text.len();
        self.kept.push_back((self.next, text));
        self.next += 1;
    }

    /// Forgets everything numbered up to `acked`.
    pub fn acknowledge(&mut self, acked: u64) {
        while let Some((seq, text)) = self.kept.front() {
            if *seq > acked {
                break;
            }
            self.bytes -= text.len();
            self.kept.pop_front();
        }
    }

    /// What is still unacknowledged, oldest first: sent again after `Resume`.
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.kept.iter().map(|(_, t)| t.as_str())
    }

    /// The bytes kept (sandboxd stops reading its processes past a limit).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any interleaving of keeps and (possibly stale or repeated) acknowledgements: what
        /// is pending is exactly what was kept and not yet acknowledged, in order, and the
        /// byte count matches it.
        #[test]
        fn pending_is_exactly_the_unacknowledged_in_order(
            ops in proptest::collection::vec(prop_oneof![
                (1usize..40).prop_map(Some),
                Just(None),
            ], 0..200),
            acks in proptest::collection::vec(0u64..250, 0..200),
        ) {
            let mut o = Outbox::default();
            let mut model: Vec<(u64, String)> = Vec::new();
            let mut acked = 0u64;
            let mut acks = acks.into_iter();
            for op in ops {
                match op {
                    Some(len) => {
                        let n = o.next_number();
                        let text = format!("{n}:{}", "x".repeat(len));
                        model.push((n, text.clone()));
                        o.keep(text);
                    }
                    None => {
                        let a = acks.next().unwrap_or(0);
                        acked = acked.max(a.min(o.next_number() - 1));
                        o.acknowledge(a.min(o.next_number() - 1));
                        model.retain(|(n, _)| *n > acked);
                    }
                }
                let pending: Vec<&str> = o.pending().collect();
                let want: Vec<&str> = model.iter().map(|(_, t)| t.as_str()).collect();
                prop_assert_eq!(&pending, &want);
                prop_assert_eq!(o.bytes(), want.iter().map(|t| t.len()).sum::<usize>());
            }
        }
    }
}
