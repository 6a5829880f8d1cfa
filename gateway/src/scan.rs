//! Finding credential values in a byte stream that arrives in pieces, without buffering it:
//! the request guard (does this request carry a stored value?) and the response scrubber
//! (replace an injected value with `[REDACTED]`).
//!
//! A value may straddle two chunks, so the end of a chunk that could be the start of a value
//! is held back until the next chunk (or the end) decides. Only that much is held: a chunk
//! ending in `\n\n` (an SSE event) goes out whole at once.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};

pub const REDACTED: &[u8] = b"[REDACTED]";

/// A set of secret byte strings to look for. Holds values in clear: never log or show it.
pub struct Needles {
    automaton: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    /// For each pattern, what to report when it is found (a credential name).
    labels: Vec<String>,
}

impl Needles {
    /// `None` when there is nothing to look for.
    pub fn new(patterns: Vec<(Vec<u8>, String)>) -> Option<Needles> {
        let patterns: Vec<(Vec<u8>, String)> = patterns
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .collect();
        if patterns.is_empty() {
            return None;
        }
        let (patterns, labels): (Vec<_>, Vec<_>) = patterns.into_iter().unzip();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok()?;
        Some(Needles {
            automaton,
            patterns,
            labels,
        })
    }

    /// The label of the first needle in `haystack`, if any.
    pub fn find(&self, haystack: &[u8]) -> Option<&str> {
        self.automaton
            .find(haystack)
            .map(|m| self.labels[m.pattern().as_usize()].as_str())
    }

    /// `haystack` with every needle replaced by `[REDACTED]`, if it held any.
    pub fn redact(&self, haystack: &[u8]) -> Option<Vec<u8>> {
        self.automaton.find(haystack)?;
        let mut out = Vec::with_capacity(haystack.len());
        self.automaton
            .replace_all_with_bytes(haystack, &mut out, |_, _, dst| {
                dst.extend_from_slice(REDACTED);
                true
            });
        Some(out)
    }

    /// How many bytes at the end of `data` could be the start of a needle.
    fn partial_suffix(&self, data: &[u8]) -> usize {
        let longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        let max = longest.saturating_sub(1).min(data.len());
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &data[data.len() - k..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > k && p.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// A stream scanner over one body.
pub struct StreamScan {
    needles: Arc<Needles>,
    carry: BytesMut,
}

/// What a chunk gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// Bytes that may go on (possibly empty: all held back).
    Pass(Bytes),
    /// A needle was found; the label says which.
    Found(String),
}

impl StreamScan {
    pub fn new(needles: Arc<Needles>) -> Self {
        Self {
            needles,
            carry: BytesMut::new(),
        }
    }

    /// Guard mode: the bytes that may go on, or the needle found.
    pub fn check(&mut self, chunk: &[u8]) -> Scanned {
        self.carry.extend_from_slice(chunk);
        if let Some(label) = self.needles.find(&self.carry) {
            return Scanned::Found(label.to_string());
        }
        let hold = self.needles.partial_suffix(&self.carry);
        let out = self.carry.split_to(self.carry.len() - hold);
        Scanned::Pass(out.freeze())
    }

    /// Scrub mode: the bytes that may go on, needles replaced.
    pub fn scrub(&mut self, chunk: &[u8]) -> Bytes {
        self.carry.extend_from_slice(chunk);
        // Needles found whole are replaced; after the last of them, the start of another may
        // be cut off at the end and is held back.
        let last_end = self
            .needles
            .automaton
            .find_iter(&self.carry[..])
            .last()
            .map_or(0, |m| m.end());
        let hold = self.needles.partial_suffix(&self.carry[last_end..]);
        let ready = self.carry.split_to(self.carry.len() - hold);
        match self.needles.redact(&ready) {
            Some(v) => Bytes::from(v),
            None => ready.freeze(),
        }
    }

    /// Whether nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.carry.is_empty()
    }

    /// The end of the stream: whatever was held back (it was not a needle).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.carry.split();
        match self.needles.redact(&rest) {
            Some(v) => Bytes::from(v),
            None => rest.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn needles(values: &[&str]) -> Arc<Needles> {
        Arc::new(
            Needles::new(
                values
                    .iter()
                    .map(|v| (v.as_bytes().to_vec(), format!("cred:{v}")))
                    .collect(),
            )
            .unwrap(),
        )
    }

    fn scrub_all(n: &Arc<Needles>, chunks: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut s = StreamScan::new(n.clone());
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for c in chunks {
            let b = s.scrub(c);
            sizes.push(b.len());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&s.finish());
        (out, sizes)
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted() {
        let n = needles(&["sk-secret-123"]);
        let (out, _) = scrub_all(&n, &[b"key=sk-sec", b"ret-123; again sk-", b"secret-123"]);
        assert_eq!(out, b"key=[REDACTED]; again [REDACTED]");
    }

    #[test]
    fn a_whole_value_whose_end_looks_like_a_start_is_still_redacted() {
        let n = needles(&["abab"]);
        let (out, _) = scrub_all(&n, &[b"xabab", b"y"]);
        assert_eq!(out, b"x[REDACTED]y");
    }

    #[test]
    fn a_chunk_ending_in_an_sse_event_boundary_goes_out_whole() {
        let n = needles(&["sk-secret-123"]);
        let (_, sizes) = scrub_all(&n, &[b"data: {\"a\":1}\n\n", b"data: 2\n\n"]);
        assert_eq!(sizes, vec![15, 9]);
    }

    #[test]
    fn a_possible_start_is_held_then_released() {
        let n = needles(&["sk-secret-123"]);
        let mut s = StreamScan::new(n.clone());
        assert_eq!(&s.scrub(b"hello sk-s")[..], b"hello ");
        assert_eq!(&s.scrub(b"ort")[..], b"sk-sort");
        assert_eq!(&s.finish()[..], b"");
    }

    #[test]
    fn the_guard_finds_a_value_across_chunks_before_its_last_byte_passes() {
        let n = needles(&["ghp_abcdef123456"]);
        let mut s = StreamScan::new(n.clone());
        assert_eq!(
            s.check(b"token=ghp_abc"),
            Scanned::Pass(Bytes::from_static(b"token="))
        );
        assert_eq!(
            s.check(b"def123456&x=1"),
            Scanned::Found("cred:ghp_abcdef123456".into())
        );
    }

    proptest! {
        /// However the stream is cut, no value survives scrubbing and nothing else changes.
        #[test]
        fn scrubbing_is_independent_of_chunking(
            parts in proptest::collection::vec(("[a-z ]{0,12}", any::<bool>()), 0..12),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let secret = "tok-ABCDEFGH12345";
            let n = needles(&[secret]);
            let mut text = String::new();
            let mut want = String::new();
            for (p, with) in &parts {
                text.push_str(p);
                want.push_str(p);
                if *with {
                    text.push_str(secret);
                    want.push_str("[REDACTED]");
                }
            }
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            chunks.push(&bytes[at..]);
            let (out, _) = scrub_all(&n, &chunks);
            prop_assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
