//! WebSocket frames as the gateway reads them from an upstream (tungstenite's parser, with
//! the relay's limits), each message scrubbed as the relay does: any bytes, no panic, and a
//! secret in any message, split over any frames, never comes out.
#![no_main]

use std::io::Cursor;
use std::sync::Arc;

use airlock_egress_checks::scan::{Needles, StreamScan};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

const SECRET: &[u8] = b"sk-fuzz-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // The fuzzer's bytes, with the secret spliced in where it says.
    let mut stream = data.to_vec();
    if let Some(&at) = data.first() {
        let at = (at as usize).min(stream.len());
        // An unmasked text frame holding the secret, split in two.
        let (a, b) = SECRET.split_at(SECRET.len() / 2);
        let mut frames = vec![0x01, a.len() as u8];
        frames.extend_from_slice(a);
        frames.extend_from_slice(&[0x80, b.len() as u8]);
        frames.extend_from_slice(b);
        stream.splice(at..at, frames);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let mut ws = WebSocket::from_raw_socket(Cursor::new(stream), Role::Client, Some(config));
    let needles = Arc::new(Needles::new(vec![(SECRET.to_vec(), "s".into())]).unwrap());
    let mut scan = StreamScan::new(needles);
    let mut out = Vec::new();
    for _ in 0..1000 {
        match ws.read() {
            Ok(Message::Text(t)) => out.extend_from_slice(&scan.scrub_end(Bytes::copy_from_slice(t.as_bytes()))),
            Ok(Message::Binary(b)) => out.extend_from_slice(&scan.scrub_end(b)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret came out: {out:?}"
    );
});
