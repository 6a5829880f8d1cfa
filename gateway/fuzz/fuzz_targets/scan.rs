//! The scrubber: a secret put into any body, in any common form (raw, another case,
//! percent-encoded, JSON-, C- or HTML-escaped, once or twice, hex, base64 at any offset),
//! cut into any pieces, never comes out in a form a reader could undo: not at any escape
//! level, not in any case, not as hex or base64. The guard finds it the same way.
#![no_main]

use std::sync::Arc;

use airlock_egress_checks::canon::levels;
use airlock_egress_checks::scan::{forms, Needles, Scanned, StreamScan};
use base64::Engine as _;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_+/=.~";

fn encode(secret: &[u8], how: u8) -> Vec<u8> {
    let pct = |upper: bool| -> Vec<u8> {
        secret
            .iter()
            .flat_map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
                .into_bytes()
            })
            .collect()
    };
    match how % 12 {
        0 => secret.to_vec(),
        1 => secret.to_ascii_uppercase(),
        2 => pct(true),
        3 => pct(false),
        4 => secret.iter().flat_map(|b| format!("\\u{:04x}", b).into_bytes()).collect(),
        5 => secret.iter().flat_map(|b| format!("&#{b};").into_bytes()).collect(),
        6 => secret.iter().flat_map(|b| format!("\\x{b:02x}").into_bytes()).collect(),
        7 => pct(true).iter().flat_map(|b| if *b == b'%' { b"%25".to_vec() } else { vec![*b] }).collect(),
        8 => hex::encode(secret).into_bytes(),
        9 => base64::engine::general_purpose::STANDARD.encode(secret).into_bytes(),
        10 => base64::engine::general_purpose::STANDARD
            .encode([b"k:".as_slice(), secret].concat())
            .into_bytes(),
        _ => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode([b"xy:".as_slice(), secret].concat())
            .into_bytes(),
    }
}

fn holds(out: &[u8], secret: &[u8]) -> bool {
    let wanted = forms(secret);
    levels(out, false).iter().any(|(c, _)| {
        let lower = c.bytes.to_ascii_lowercase();
        wanted
            .iter()
            .any(|f| lower.windows(f.len()).any(|w| w == f.as_slice()))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let len = 8 + (data[0] as usize % 24);
    let how = data[1];
    let at = data[2] as usize;
    let rest = &data[3..];
    if rest.len() < len {
        return;
    }
    let secret: Vec<u8> = rest[..len]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()])
        .collect();
    if secret.windows(8).any(|w| w.eq_ignore_ascii_case(b"redacted")) {
        return;
    }
    let junk = &rest[len..];
    let (cuts, body) = junk.split_at(junk.len().min(8));
    let at = at.min(body.len());
    let mut text = body[..at].to_vec();
    text.extend(encode(&secret, how));
    text.extend_from_slice(&body[at..]);
    let needles = Arc::new(Needles::new(vec![(secret.clone(), "s".into())]).unwrap());
    // Scrubbing, in pieces.
    let mut s = StreamScan::new(needles.clone());
    let mut out = Vec::new();
    let mut from = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| *c as usize * text.len() / 256).collect();
    points.sort_unstable();
    for p in points {
        let p = p.max(from);
        out.extend_from_slice(&s.scrub(Bytes::copy_from_slice(&text[from..p])));
        from = p;
    }
    out.extend_from_slice(&s.scrub_end(Bytes::copy_from_slice(&text[from..])));
    assert!(!holds(&out, &secret), "the secret came out of {text:?} as {out:?}");
    // The guard, in the same pieces, finds it before the last byte goes.
    let mut g = StreamScan::new(needles);
    let mut found = false;
    let mut passed = Vec::new();
    for (i, piece) in text.chunks(1 + (data[2] as usize % 7)).enumerate() {
        let last = (i + 1) * (1 + (data[2] as usize % 7)) >= text.len();
        let r = if last {
            g.check_end(Bytes::copy_from_slice(piece))
        } else {
            g.check(Bytes::copy_from_slice(piece))
        };
        match r {
            Scanned::Found(_) => {
                found = true;
                break;
            }
            Scanned::Pass(b) => passed.extend_from_slice(&b),
        }
    }
    assert!(found || !holds(&passed, &secret), "the guard let {passed:?} pass");
});
