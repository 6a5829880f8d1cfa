//! The canonical form credential values are looked for in: the bytes a reader would get after
//! undoing the common string escapes, one level deep. A reflected value may come back
//! percent-encoded (`%2B` or `%2b`), JSON-escaped (`\/`, `\u002b`), C- or Python-escaped
//! (`\x2b`), or as HTML character references (`&#43;`, `&#x2B;`, `&amp;`); all of those
//! canonicalise to the value itself, so one search covers them.
//!
//! Two levels are undone ([`canonicalise_deep`]): a value escaped twice (`%2573`,
//! `\\u0073`, JSON of JSON) canonicalises too. Each canonical byte remembers the raw bytes
//! it came from, so a match found here is redacted in the raw stream exactly. Pure: no I/O.

/// Raw bytes an escape may take at most (`&#x10FFFF;`).
pub const MAX_ESCAPE: usize = 10;

/// Canonical bytes of a raw buffer.
pub struct Canon<'a> {
    pub bytes: std::borrow::Cow<'a, [u8]>,
    /// For each canonical byte, the raw span `(start, end)` it came from; `None` when the
    /// buffer had no escape (canonical = raw).
    spans: Option<Vec<(u32, u32)>>,
}

impl Canon<'_> {
    /// The raw span of canonical bytes `[start, end)` (end > start).
    pub fn raw_span(&self, start: usize, end: usize) -> (usize, usize) {
        match &self.spans {
            None => (start, end),
            Some(s) => (s[start].0 as usize, s[end - 1].1 as usize),
        }
    }

    /// The raw offset where canonical byte `i` starts (`raw.len()` for the end).
    pub fn raw_start(&self, i: usize, raw_len: usize) -> usize {
        match &self.spans {
            None => i,
            Some(s) => s.get(i).map_or(raw_len, |sp| sp.0 as usize),
        }
    }

    /// The canonical index of the first byte that starts at or after raw offset `raw`.
    pub fn canon_index(&self, raw: usize) -> usize {
        match &self.spans {
            None => raw,
            Some(s) => s.partition_point(|sp| (sp.0 as usize) < raw),
        }
    }
}

fn hex(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u32),
        b'a'..=b'f' => Some((b - b'a' + 10) as u32),
        b'A'..=b'F' => Some((b - b'A' + 10) as u32),
        _ => None,
    }
}

fn hex_n(raw: &[u8], n: usize) -> Option<u32> {
    if raw.len() < n {
        return None;
    }
    raw[..n]
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?))
}

const ENTITIES: &[(&[u8], u8)] = &[
    (b"amp;", b'&'),
    (b"lt;", b'<'),
    (b"gt;", b'>'),
    (b"quot;", b'"'),
    (b"apos;", b'\''),
];

/// One escape at the start of `raw`: the code point (or byte) it stands for and how many raw
/// bytes it takes. `None` when `raw` does not start with a complete escape.
fn escape(raw: &[u8]) -> Option<(u32, usize)> {
    match raw.first()? {
        b'%' => hex_n(&raw[1..], 2).map(|v| (v, 3)),
        b'\\' => {
            let c = *raw.get(1)?;
            match c {
                b'u' => hex_n(&raw[2..], 4).map(|v| (v, 6)),
                b'x' => hex_n(&raw[2..], 2).map(|v| (v, 4)),
                b'/' | b'\\' | b'"' | b'\'' => Some((c as u32, 2)),
                b'n' => Some((b'\n' as u32, 2)),
                b'r' => Some((b'\r' as u32, 2)),
                b't' => Some((b'\t' as u32, 2)),
                _ => None,
            }
        }
        b'&' => {
            let rest = &raw[1..];
            if let Some(num) = rest.strip_prefix(b"#") {
                let (digits, radix, skip) = match num.first() {
                    Some(b'x' | b'X') => (&num[1..], 16, 3),
                    _ => (num, 10, 2),
                };
                let n = digits
                    .iter()
                    .take(8)
                    .take_while(|b| (**b as char).is_digit(radix))
                    .count();
                if n == 0 || digits.get(n) != Some(&b';') {
                    return None;
                }
                let v = u32::from_str_radix(std::str::from_utf8(&digits[..n]).ok()?, radix).ok()?;
                (v <= 0x10FFFF).then_some((v, skip + n + 1))
            } else {
                ENTITIES
                    .iter()
                    .find(|(name, _)| rest.starts_with(name))
                    .map(|(name, b)| (*b as u32, 1 + name.len()))
            }
        }
        _ => None,
    }
}

/// Whether `raw` (fewer than [`MAX_ESCAPE`] bytes, starting with an escape character) could
/// still become a complete escape with more bytes.
fn could_become_escape(raw: &[u8]) -> bool {
    let is_hex = |s: &[u8]| s.iter().all(|b| hex(*b).is_some());
    match raw.first() {
        Some(b'%') => raw.len() < 3 && is_hex(&raw[1..]),
        Some(b'\\') => match raw.get(1) {
            None => true,
            Some(b'u') => raw.len() < 6 && is_hex(&raw[2..]),
            Some(b'x') => raw.len() < 4 && is_hex(&raw[2..]),
            _ => false,
        },
        Some(b'&') => {
            let rest = &raw[1..];
            match rest.first() {
                None => true,
                Some(b'#') => {
                    let num = &rest[1..];
                    match num.first() {
                        None => true,
                        Some(b'x' | b'X') => num.len() <= 7 && is_hex(&num[1..]),
                        Some(_) => num.len() <= 8 && num.iter().all(u8::is_ascii_digit),
                    }
                }
                Some(_) => ENTITIES
                    .iter()
                    .any(|(name, _)| name.len() > rest.len() && name.starts_with(rest)),
            }
        }
        _ => false,
    }
}

/// The canonical bytes of `raw` (escapes decoded one level; code points above 0x7F as UTF-8)
/// and how many raw bytes they cover. With `partial`, an escape cut off at the end (which
/// more bytes could complete) is left out, to be decoded with the next chunk; otherwise all
/// of `raw` is covered.
pub fn canonicalise(raw: &[u8], partial: bool) -> (Canon<'_>, usize) {
    if memchr::memchr3(b'%', b'\\', b'&', raw).is_none() {
        let canon = Canon {
            bytes: std::borrow::Cow::Borrowed(raw),
            spans: None,
        };
        return (canon, raw.len());
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut spans = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if matches!(b, b'%' | b'\\' | b'&') {
            if let Some((v, len)) = escape(&raw[i..]) {
                let span = (i as u32, (i + len) as u32);
                match char::from_u32(v) {
                    Some(c) if v >= 0x80 => {
                        let mut buf = [0u8; 4];
                        for &u in c.encode_utf8(&mut buf).as_bytes() {
                            bytes.push(u);
                            spans.push(span);
                        }
                    }
                    _ if v < 0x100 => {
                        bytes.push(v as u8);
                        spans.push(span);
                    }
                    // A lone surrogate: keep the raw text.
                    _ => {
                        for (k, &r) in raw[i..i + len].iter().enumerate() {
                            bytes.push(r);
                            spans.push(((i + k) as u32, (i + k + 1) as u32));
                        }
                    }
                }
                i += len;
                continue;
            }
            if partial && raw.len() - i < MAX_ESCAPE && could_become_escape(&raw[i..]) {
                break;
            }
        }
        bytes.push(b);
        spans.push((i as u32, (i + 1) as u32));
        i += 1;
    }
    let canon = Canon {
        bytes: std::borrow::Cow::Owned(bytes),
        spans: Some(spans),
    };
    (canon, i)
}

/// The levels a value may hide at: the raw bytes, with one level of escapes undone, and with
/// two (`%2573`, `\\\\u0073`, JSON of JSON). Every level is searched: undoing escapes can
/// also hide a value (`%%61bc...` holds `%abc...` one level down, and `abc...` is there for
/// whoever strips the `%`). Spans lead back to the raw bytes; with `partial`, what a level
/// left undecided is left out (its `covered` is where it stops, in raw bytes).
pub fn levels(raw: &[u8], partial: bool) -> Vec<(Canon<'_>, usize)> {
    let raw_level = Canon {
        bytes: std::borrow::Cow::Borrowed(raw),
        spans: None,
    };
    let (c1, cov1) = canonicalise(raw, partial);
    if c1.spans.is_none() {
        return vec![(raw_level, raw.len())];
    }
    let c2 = if memchr::memchr3(b'%', b'\\', b'&', &c1.bytes).is_some() {
        let (c2, cov2) = canonicalise(&c1.bytes, partial);
        c2.spans.as_ref().map(|s2| {
            let covered = if cov2 < c1.bytes.len() {
                c1.raw_start(cov2, cov1)
            } else {
                cov1
            };
            let spans = s2
                .iter()
                .map(|&(a, b)| {
                    let (ra, rb) = c1.raw_span(a as usize, b as usize);
                    (ra as u32, rb as u32)
                })
                .collect();
            (
                Canon {
                    bytes: std::borrow::Cow::Owned(c2.bytes.to_vec()),
                    spans: Some(spans),
                },
                covered,
            )
        })
    } else {
        None
    };
    let mut out = vec![(raw_level, raw.len()), (c1, cov1)];
    out.extend(c2);
    out
}

/// The deepest of [`levels`] (for tests and one-shot checks).
pub fn canonicalise_deep(raw: &[u8], partial: bool) -> (Canon<'_>, usize) {
    levels(raw, partial)
        .pop()
        .expect("the raw level is always there")
}

impl Canon<'_> {
    /// Moves `cut` (a raw offset) back to the start of the canonical byte it falls inside,
    /// if it falls inside one.
    pub fn snap(&self, cut: usize) -> usize {
        match &self.spans {
            None => cut,
            Some(s) => {
                let i = s.partition_point(|sp| (sp.1 as usize) <= cut);
                match s.get(i) {
                    Some(&(a, _)) if (a as usize) < cut => a as usize,
                    _ => cut,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonicalise(s.as_bytes(), false).0.bytes.into_owned()).unwrap()
    }

    #[test]
    fn common_escapes_undo_to_the_value() {
        let value = "sk+ab/c=d";
        for escaped in [
            "sk+ab/c=d",
            "sk%2Bab%2Fc%3Dd",
            "sk%2bab%2fc%3dd",
            "sk+ab\\/c=d",
            "sk\\u002bab\\u002Fc\\u003dd",
            "sk\\x2bab\\x2fc=d",
            "sk&#43;ab&#x2F;c&#61;d",
            "%73%6B%2B%61%62%2F%63%3D%64",
        ] {
            assert_eq!(canon(escaped), value, "{escaped}");
        }
        assert_eq!(canon("a&amp;b&lt;&quot;\\n"), "a&b<\"\n");
        assert_eq!(canon("caf\\u00e9"), "café");
        assert_eq!(
            canon("100% sure \\q &nope; &#;"),
            "100% sure \\q &nope; &#;"
        );
        assert_eq!(
            canon("\\ud83d"),
            "\\ud83d",
            "a lone surrogate stays as it was"
        );
    }

    #[test]
    fn escapes_of_escapes_undo_too() {
        let deep = |s: &str| {
            String::from_utf8(canonicalise_deep(s.as_bytes(), false).0.bytes.into_owned()).unwrap()
        };
        assert_eq!(deep("%2573k"), "sk");
        assert_eq!(deep("\\\\u0073k"), "sk");
        assert_eq!(deep("&amp;#115;k"), "sk");
        assert_eq!(deep("plain"), "plain");
        let (c, _) = canonicalise_deep(b"x%2541y", false);
        assert_eq!(&c.bytes[..], b"xAy");
        assert_eq!(c.raw_span(1, 2), (1, 6));
        // Cut inside the inner escape: held back whole.
        let (_, covered) = canonicalise_deep(b"ab\\\\u00", true);
        assert_eq!(covered, 2);
    }

    #[test]
    fn spans_lead_back_to_the_raw_bytes() {
        let raw = b"x=%41%42c";
        let (c, _) = canonicalise(raw, false);
        assert_eq!(&c.bytes[..], b"x=ABc");
        assert_eq!(c.raw_span(2, 4), (2, 8));
        assert_eq!(c.raw_span(4, 5), (8, 9));
        assert_eq!(c.canon_index(5), 3);
        assert_eq!(c.raw_start(5, raw.len()), 9);
    }

    #[test]
    fn an_escape_cut_at_the_end_waits_for_the_rest() {
        for (raw, want) in [
            ("abc%", 1),
            ("abc%4", 2),
            ("abc%41", 0),
            ("abc\\", 1),
            ("abc\\u00", 4),
            ("abc\\u0041", 0),
            ("abc&#x4", 4),
            ("abc&#65", 4),
            ("abc&am", 3),
            ("abc&amp;", 0),
            ("abc&zz", 0),
            ("abc\\\\", 0),
            ("abc\\\\\\", 1),
            ("abc%zz", 0),
            ("plain", 0),
        ] {
            let (_, covered) = canonicalise(raw.as_bytes(), true);
            assert_eq!(raw.len() - covered, want, "{raw}");
        }
    }

    proptest! {
        /// Canonicalising a stream piece by piece (holding incomplete escapes back) gives the
        /// same bytes as canonicalising it whole, and every span is in order and in bounds.
        #[test]
        fn pieces_canonicalise_like_the_whole(
            text in "([a-z]|%[0-9A-Fa-f]{0,2}|\\\\(u[0-9a-f]{0,4}|x[0-9a-f]{0,2}|/|n)?|&(#x?[0-9]{0,3};?|amp;?|lt)?){0,40}",
            cut in 0usize..200,
        ) {
            let raw = text.as_bytes();
            let whole = canonicalise(raw, false).0.bytes.into_owned();
            let cut = cut.min(raw.len());
            let (a, b) = raw.split_at(cut);
            let (first, covered) = canonicalise(a, true);
            let mut pieces = first.bytes.into_owned();
            let mut rest = a[covered..].to_vec();
            rest.extend_from_slice(b);
            pieces.extend_from_slice(&canonicalise(&rest, false).0.bytes);
            prop_assert_eq!(pieces, whole);
            let (c, _) = canonicalise(raw, false);
            let mut last = 0;
            for i in 0..c.bytes.len() {
                let (s, e) = c.raw_span(i, i + 1);
                prop_assert!(s >= last && e > s && e <= raw.len());
                last = s;
            }
        }
    }
}
