//! Finding credential values in bytes that arrive in pieces, without buffering them: the
//! request guard (does what the sandbox sends carry a stored value?) and the response
//! scrubber (replace a value with `[REDACTED]` before it reaches the sandbox).
//!
//! A value is looked for in every form a reflecting upstream is likely to give back: as it
//! is, hex, base64 and base64url (at each of the three alignments it can have inside a longer
//! base64 text), each in any ASCII case, and inside the common string escapes (percent,
//! JSON, C, HTML; see [`crate::canon`]), so `%73k-...`, `\u0073k-...` and `c2st...` are all
//! caught.
//!
//! Pieces may cut a value anywhere: the end of a piece that could begin a value is held back
//! until the next piece decides, and the last bytes already let through are remembered, so a
//! value that continues where the previous piece (or WebSocket message) ended is still caught.
//! Where a stream must be let out whole (the end of a body or of a message), a held tail of
//! [`PARTIAL_LIMIT`] or more bytes that begins a value is redacted too; at most the first
//! `PARTIAL_LIMIT - 1` bytes of a form can ever pass. The guard, which refuses rather than
//! redacts, counts such a tail only from [`GUARD_PARTIAL_LIMIT`] bytes: four bytes that begin
//! one of a 2 KB key's many windows end ordinary header names and values often enough (one
//! test key in a few hundred blocked every request that sent `User-Agent`).
//!
//! What no scanner can stop: an upstream that holds a credential (it received it) and hands
//! it to the sandbox in pieces across separate responses, or in an encoding of its own. The
//! defence there is that credentials only go to upstreams trusted with them (decision 0007).

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use crate::canon::levels;

pub const REDACTED: &[u8] = b"[REDACTED]";
/// A held tail that begins a value and is this long or longer is redacted where a stream has
/// to be let out whole.
pub const PARTIAL_LIMIT: usize = 4;
/// The same for the guard: a whole header value or request body ending in the first this
/// many bytes of a value is refused; shorter tails are chance.
pub const GUARD_PARTIAL_LIMIT: usize = 16;
/// Forms shorter than this are not looked for: they would match by chance.
const MIN_FORM: usize = 6;
/// Longer forms are looked for as consecutive windows of this length, so holding back and the
/// search stay bounded whatever the value (a 2 KB private key, say).
const MAX_PATTERN: usize = 128;
/// Up to this many bytes of patterns, the automaton is a full DFA.
const DFA_PATTERN_BYTES: usize = 64 * 1024;

/// The forms of `value` a reflecting upstream may give back (case is ignored when matching).
pub fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = vec![value.to_vec(), hex::encode(value).into_bytes()];
    let n = value.len();
    for r in 0..3 {
        let mut padded = vec![0u8; r];
        padded.extend_from_slice(value);
        let encoded = STANDARD_NO_PAD.encode(&padded);
        let url = URL_SAFE_NO_PAD.encode(&padded);
        // Characters that depend only on the value's own bits: not on what comes before it
        // (the `r` bytes) nor after it.
        let from = (8 * r).div_ceil(6);
        let to = (8 * (r + n)) / 6;
        if to > from {
            out.push(encoded.as_bytes()[from..to].to_vec());
            out.push(url.as_bytes()[from..to].to_vec());
        }
    }
    let mut out: Vec<Vec<u8>> = out
        .into_iter()
        .map(|f| f.to_ascii_lowercase())
        .filter(|f| f.len() >= MIN_FORM)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A set of secret values to look for. Holds values in clear: never log or show it.
pub struct Needles {
    automaton: AhoCorasick,
    /// Lower case.
    patterns: Vec<Vec<u8>>,
    /// For each pattern, what to report when it is found (a credential name).
    labels: Vec<String>,
    /// Patterns by their first byte (lower case), for finding held-back tails.
    by_first: Vec<Vec<u32>>,
    longest: usize,
}

impl Needles {
    /// Needles for these `(value, label)` pairs; `None` when there is nothing to look for.
    pub fn new(values: Vec<(Vec<u8>, String)>) -> Option<Needles> {
        Self::build(values, &[], "")
    }

    /// Needles for values (in all their forms) and for literal strings (as they are, labelled
    /// `literal_label`).
    pub fn build(
        values: Vec<(Vec<u8>, String)>,
        literals: &[&[u8]],
        literal_label: &str,
    ) -> Option<Needles> {
        let mut patterns: Vec<Vec<u8>> = literals.iter().map(|l| l.to_ascii_lowercase()).collect();
        let mut labels: Vec<String> = literals.iter().map(|_| literal_label.to_string()).collect();
        for (value, label) in values {
            for form in forms(&value) {
                for (i, window) in form.chunks(MAX_PATTERN).enumerate() {
                    // A few bytes left after the last whole window are too short to look for.
                    if i > 0 && window.len() < MIN_FORM {
                        continue;
                    }
                    patterns.push(window.to_vec());
                    labels.push(label.clone());
                }
            }
        }
        if patterns.is_empty() {
            return None;
        }
        // A full DFA is the fastest search (every byte of every body goes through it); it
        // costs memory in proportion to the patterns, so very large sets get the default.
        let total: usize = patterns.iter().map(Vec::len).sum();
        let kind = (total <= DFA_PATTERN_BYTES).then_some(AhoCorasickKind::DFA);
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(kind)
            .build(&patterns)
            .ok()?;
        let mut by_first = vec![Vec::new(); 256];
        for (i, p) in patterns.iter().enumerate() {
            by_first[p[0] as usize].push(i as u32);
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        Some(Needles {
            automaton,
            patterns,
            labels,
            by_first,
            longest,
        })
    }

    /// The label of a value found in `haystack` (a whole header or URL), if any.
    pub fn find(self: &Arc<Self>, haystack: &[u8]) -> Option<String> {
        let mut s = StreamScan::new(self.clone());
        match s.check_end(Bytes::copy_from_slice(haystack)) {
            Scanned::Found(label) => Some(label),
            Scanned::Pass(_) => None,
        }
    }

    /// `haystack` (a whole header value, say) with every value replaced, if it held any.
    pub fn redact(self: &Arc<Self>, haystack: &[u8]) -> Option<Vec<u8>> {
        let mut s = StreamScan::new(self.clone());
        let (out, found) = s.push(Bytes::copy_from_slice(haystack), true);
        found.map(|_| out.to_vec())
    }

    /// The start (in `a ++ b`, at or after `min`) of the longest tail of `a ++ b` that is a
    /// proper prefix of a pattern, with that pattern.
    fn partial(&self, a: &[u8], b: &[u8], min: usize) -> Option<(usize, usize)> {
        let len = a.len() + b.len();
        let at = |i: usize| -> u8 {
            let byte = if i < a.len() { a[i] } else { b[i - a.len()] };
            byte.to_ascii_lowercase()
        };
        let from = min.max(len.saturating_sub(self.longest.saturating_sub(1)));
        for start in from..len {
            let k = len - start;
            for &p in &self.by_first[at(start) as usize] {
                let pat = &self.patterns[p as usize];
                if pat.len() > k && (1..k).all(|j| at(start + j) == pat[j]) {
                    return Some((start, p as usize));
                }
            }
        }
        None
    }
}

/// What a piece gave in guard mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// Bytes that may go on (possibly empty: all held back).
    Pass(Bytes),
    /// A value was found; the label says which.
    Found(String),
}

/// A scanner over one stream (a body, or one direction of a WebSocket).
pub struct StreamScan {
    needles: Arc<Needles>,
    /// Raw bytes held back.
    pending: BytesMut,
    /// For each escape level, the last bytes let through (at most the longest pattern less
    /// one).
    history: Vec<Vec<u8>>,
    /// The output so far ends inside a redaction (so its continuation adds no second marker).
    redacting: bool,
}

impl StreamScan {
    pub fn new(needles: Arc<Needles>) -> Self {
        Self {
            needles,
            pending: BytesMut::new(),
            history: Vec::new(),
            redacting: false,
        }
    }

    pub fn needles(&self) -> &Arc<Needles> {
        &self.needles
    }

    /// Whether nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Scrub mode: what may go on of `chunk`, values replaced.
    pub fn scrub(&mut self, chunk: Bytes) -> Bytes {
        self.push(chunk, false).0
    }

    /// Scrub mode at the end of a stream or message: everything, values replaced.
    pub fn scrub_end(&mut self, chunk: Bytes) -> Bytes {
        self.push(chunk, true).0
    }

    /// Guard mode: the bytes that may go on, or the value found.
    pub fn check(&mut self, chunk: Bytes) -> Scanned {
        self.guard(chunk, false)
    }

    /// Guard mode at the end of a stream or message.
    pub fn check_end(&mut self, chunk: Bytes) -> Scanned {
        self.guard(chunk, true)
    }

    fn guard(&mut self, chunk: Bytes, end: bool) -> Scanned {
        let (out, found) = self.scan(chunk, end, GUARD_PARTIAL_LIMIT);
        match found {
            Some(label) => Scanned::Found(label),
            None => Scanned::Pass(out),
        }
    }

    /// Scans `chunk` after what is held back; returns what may go on (values replaced) and
    /// the label of the first value found. With `end`, nothing is held back.
    pub fn push(&mut self, chunk: Bytes, end: bool) -> (Bytes, Option<String>) {
        self.scan(chunk, end, PARTIAL_LIMIT)
    }

    /// [`StreamScan::push`] with the length from which a tail held at the end counts.
    fn scan(&mut self, chunk: Bytes, end: bool, partial_limit: usize) -> (Bytes, Option<String>) {
        let raw = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            self.pending.split().freeze()
        };
        let n = &*self.needles;
        let levels = levels(&raw, !end);
        if self.history.len() < levels.len() {
            self.history.resize(levels.len(), Vec::new());
        }
        let mut regions: Vec<(usize, usize)> = Vec::new();
        let mut found: Option<usize> = None;
        let mut cut_raw = raw.len();
        for (i, (canon, covered)) in levels.iter().enumerate() {
            let pass = scan_level(n, &self.history[i], &canon.bytes, end, partial_limit);
            for (a, b) in pass.regions {
                regions.push(canon.raw_span(a, b));
            }
            if found.is_none() {
                found = pass.found;
            }
            let cut = if pass.cut == canon.bytes.len() {
                *covered
            } else {
                canon.raw_start(pass.cut, raw.len())
            };
            cut_raw = cut_raw.min(cut);
        }
        // Where the let-through part ends must be a boundary at every level.
        loop {
            let snapped = levels.iter().fold(cut_raw, |c, (canon, _)| canon.snap(c));
            if snapped == cut_raw {
                break;
            }
            cut_raw = snapped;
        }
        regions.retain(|r| r.0 < cut_raw);
        regions.sort_unstable();
        let label = found.map(|p| n.labels[p].clone());
        // Remember what was let through, at every level.
        let keep = n.longest.saturating_sub(1);
        for (i, (canon, _)) in levels.iter().enumerate() {
            let h = &mut self.history[i];
            h.extend_from_slice(&canon.bytes[..canon.canon_index(cut_raw)]);
            if h.len() > keep {
                h.drain(..h.len() - keep);
            }
        }
        let out = if regions.is_empty() {
            self.redacting = self.redacting && cut_raw == 0;
            raw.slice(..cut_raw)
        } else {
            let mut out = BytesMut::with_capacity(cut_raw + REDACTED.len());
            let mut at = 0;
            for (ra, rb) in regions {
                let rb = rb.min(cut_raw);
                if ra < at {
                    at = at.max(rb);
                    continue;
                }
                out.extend_from_slice(&raw[at..ra]);
                if !(ra == 0 && self.redacting) {
                    out.extend_from_slice(REDACTED);
                }
                at = rb;
            }
            self.redacting = at >= cut_raw;
            out.extend_from_slice(&raw[at.min(cut_raw)..cut_raw]);
            out.freeze()
        };
        drop(levels);
        self.pending.extend_from_slice(&raw[cut_raw..]);
        (out, label)
    }
}

/// What one level of a piece gave.
struct Pass {
    /// Matches, in the level's coordinates.
    regions: Vec<(usize, usize)>,
    found: Option<usize>,
    /// Where the part that may go on ends, in the level's coordinates.
    cut: usize,
}

/// Searches `c` (one level of a piece) after `history` (the same level of what went before).
fn scan_level(n: &Needles, history: &[u8], c: &[u8], end: bool, partial_limit: usize) -> Pass {
    let h = history.len();
    let mut regions: Vec<(usize, usize)> = Vec::new();
    let mut found: Option<usize> = None;
    let mut resume = 0;
    // A value that began in what was already let through and continues here.
    if h > 0 && !c.is_empty() {
        let head = c.len().min(n.longest.saturating_sub(1).max(1));
        let mut joined = Vec::with_capacity(h + head);
        joined.extend_from_slice(history);
        joined.extend_from_slice(&c[..head]);
        for m in n.automaton.find_iter(&joined) {
            if m.start() < h && m.end() > h {
                regions.push((0, m.end() - h));
                found.get_or_insert(m.pattern().as_usize());
                resume = m.end() - h;
            }
        }
    }
    for m in n.automaton.find_iter(&c[resume..]) {
        regions.push((resume + m.start(), resume + m.end()));
        found.get_or_insert(m.pattern().as_usize());
    }
    let mut cut = c.len();
    let last_end = regions.last().map_or(0, |r| r.1);
    let min = if regions.is_empty() { 0 } else { h + last_end };
    if let Some((start, pattern)) = n.partial(history, c, min) {
        let from = start.max(h) - h;
        if end {
            if h + c.len() - start >= partial_limit && from < c.len() {
                regions.push((from, c.len()));
                found.get_or_insert(pattern);
            }
        } else {
            cut = from;
        }
    }
    Pass {
        regions,
        found,
        cut,
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
            let b = s.scrub(Bytes::copy_from_slice(c));
            sizes.push(b.len());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&s.scrub_end(Bytes::new()));
        (out, sizes)
    }

    fn scrub_str(n: &Arc<Needles>, text: &str) -> String {
        String::from_utf8(scrub_all(n, &[text.as_bytes()]).0).unwrap()
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted() {
        let n = needles(&["sk-secret-123"]);
        let (out, _) = scrub_all(&n, &[b"key=sk-sec", b"ret-123; again sk-", b"secret-123"]);
        assert_eq!(out, b"key=[REDACTED]; again [REDACTED]");
    }

    #[test]
    fn every_common_form_of_a_value_is_redacted() {
        let secret = "sk-live-Ab/3+xyZ09";
        let n = needles(&[secret]);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases = [
            secret.to_string(),
            secret.to_ascii_uppercase(),
            "sk-live-Ab%2F3%2BxyZ09".into(),
            "sk-live-Ab%2f3%2bxyZ09".into(),
            "sk-live-Ab\\/3\\u002bxyZ09".into(),
            "sk-live-Ab&#x2F;3&#43;xyZ09".into(),
            "sk-live-Ab\\x2f3+xyZ09".into(),
            hex::encode(secret),
            hex::encode(secret).to_ascii_uppercase(),
            b64(secret),
            b64(&format!("x:{secret}")),
            b64(&format!("xy:{secret}")),
            b64(&format!("{{\"key\":\"{secret}\"}}")),
            base64::engine::general_purpose::URL_SAFE.encode(format!("u:{secret}")),
        ];
        for form in cases {
            let text = format!("before {form} after");
            let out = scrub_str(&n, &text);
            assert!(out.contains("[REDACTED]"), "{form} -> {out}");
            assert!(
                !out.contains("xyZ09") && !out.contains("Ab/3"),
                "{form} -> {out}"
            );
            assert!(
                out.starts_with("before ") || out.starts_with("[REDACTED]"),
                "{out}"
            );
        }
        assert_eq!(scrub_str(&n, "nothing secret here"), "nothing secret here");
    }

    #[test]
    fn a_value_hidden_by_undoing_an_escape_is_still_found() {
        // `%ab` decodes to one byte, hiding `abcd1234`; whoever strips the `%` has it.
        let n = needles(&["abcd1234"]);
        let out = scrub_str(&n, "x=%abcd1234 and %%61bcd1234");
        assert!(
            !out.to_ascii_lowercase().contains("abcd1234") && !out.contains("bcd1234"),
            "{out}"
        );
    }

    #[test]
    fn a_whole_value_whose_end_looks_like_a_start_is_still_redacted() {
        let n = needles(&["ababab"]);
        let (out, _) = scrub_all(&n, &[b"xababab", b"y"]);
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
        assert_eq!(&s.scrub(Bytes::from_static(b"hello sk-s"))[..], b"hello ");
        assert_eq!(&s.scrub(Bytes::from_static(b"ort"))[..], b"sk-sort");
        assert_eq!(&s.scrub_end(Bytes::new())[..], b"");
    }

    #[test]
    fn a_value_cut_off_at_the_end_is_redacted_but_a_short_start_passes() {
        let n = needles(&["sk-secret-123"]);
        assert_eq!(scrub_str(&n, "key: sk-secre"), "key: [REDACTED]");
        assert_eq!(scrub_str(&n, "risk: sk-"), "risk: sk-");
    }

    #[test]
    fn one_byte_per_message_gives_away_at_most_a_short_start() {
        let secret = "sk-secret-123";
        let n = needles(&[secret]);
        let mut s = StreamScan::new(n.clone());
        let mut seen = Vec::new();
        for b in secret.bytes() {
            seen.extend_from_slice(&s.scrub_end(Bytes::copy_from_slice(&[b])));
        }
        let seen = String::from_utf8(seen).unwrap();
        assert!(
            seen.starts_with("sk-") && !seen.contains("secret"),
            "{seen}"
        );
        assert_eq!(seen.matches("[REDACTED]").count(), 1, "{seen}");
    }

    #[test]
    fn an_escape_cut_between_chunks_is_decoded_whole() {
        let n = needles(&["sk-secret-123"]);
        let (out, _) = scrub_all(&n, &[b"sk-secret%", b"2D123 and sk%2", b"dsecret-123"]);
        assert_eq!(out, b"[REDACTED] and [REDACTED]");
    }

    #[test]
    fn the_guard_finds_a_value_across_chunks_before_its_last_byte_passes() {
        let n = needles(&["ghp_abcdef123456"]);
        let mut s = StreamScan::new(n.clone());
        assert_eq!(
            s.check(Bytes::from_static(b"token=ghp_abc")),
            Scanned::Pass(Bytes::from_static(b"token="))
        );
        assert_eq!(
            s.check(Bytes::from_static(b"def123456&x=1")),
            Scanned::Found("cred:ghp_abcdef123456".into())
        );
        assert_eq!(
            n.find(b"q=ghp%5Fabcdef123456").as_deref(),
            Some("cred:ghp_abcdef123456")
        );
    }

    #[test]
    fn the_guard_does_not_refuse_a_header_for_ending_in_the_first_bytes_of_a_value() {
        // A key whose forms have a window starting "gent…" and "cept…": every request sends
        // `User-Agent` and `Accept`. Four bytes at the end used to count as the value.
        let n = needles(&[
            "gent-and-more-of-a-long-secret",
            "cept-and-more-of-a-long-secret",
        ]);
        for whole in [&b"user-agent"[..], b"accept", b"text/plain; accept"] {
            assert_eq!(n.find(whole), None, "{}", String::from_utf8_lossy(whole));
        }
        // The scrubber still redacts such a tail where a response ends.
        assert_eq!(scrub_str(&n, "user-agent"), "user-a[REDACTED]");
        // A real start of the value at the end of a header is refused from 16 bytes on, and
        // the whole value anywhere.
        assert_eq!(
            n.find(b"x=gent-and-more-of-a").as_deref(),
            Some("cred:gent-and-more-of-a-long-secret")
        );
        assert_eq!(n.find(b"x=gent-and-more-o"), None);
        assert_eq!(
            n.find(b"a cept-and-more-of-a-long-secret b").as_deref(),
            Some("cred:cept-and-more-of-a-long-secret")
        );
    }

    #[test]
    fn a_long_value_is_found_in_windows() {
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END", "Q".repeat(600));
        let n = needles(&[&pem]);
        assert!(n.longest <= MAX_PATTERN);
        let out = scrub_str(&n, &format!("x {pem} y"));
        assert!(!out.contains("QQQQQQQQ"), "{out}");
    }

    proptest! {
        /// However the stream is cut, no value survives scrubbing and nothing else changes.
        #[test]
        fn scrubbing_is_independent_of_chunking(
            parts in proptest::collection::vec(("[a-z ]{0,12}", 0u8..4), 0..12),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let secret = "tok-ABCDEFGH12345";
            let n = needles(&[secret]);
            let mut text = String::new();
            let mut want = String::new();
            for (p, form) in &parts {
                text.push_str(p);
                want.push_str(p);
                let encoded = match form {
                    0 => continue,
                    1 => secret.to_string(),
                    2 => secret.replace('-', "%2D"),
                    _ => secret.replace('-', "\\u002d"),
                };
                text.push_str(&encoded);
                want.push_str("[REDACTED]");
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
            // Adjacent values become one marker.
            let collapse = |s: String| s.replace("[REDACTED][REDACTED]", "[REDACTED]");
            let mut got = String::from_utf8(out).unwrap();
            let mut w = want;
            for _ in 0..12 { got = collapse(got); w = collapse(w); }
            prop_assert_eq!(got, w);
        }
    }
}
