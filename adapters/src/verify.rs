//! Signature checks for inbound requests, in constant time, before any body is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signed timestamp may be from now, either way: every surface that signs one
/// (Slack, Discord, webhook triggers) is held to the same five minutes.
pub const WINDOW_S: i64 = 5 * 60;

/// Whether `timestamp` (Unix seconds, as sent) is within [`WINDOW_S`] of now; `None` when it
/// is not a number.
pub fn within_window(timestamp: &str) -> Option<bool> {
    let at = timestamp.trim().parse::<i64>().ok()?;
    let now = airlock_core::ids::now_ms() / 1000;
    Some((now - at).abs() <= WINDOW_S)
}

/// Whether `signature` (`sha256=<hex>`, as GitHub's `X-Hub-Signature-256` and Airlock's
/// webhook triggers send it) is the HMAC-SHA256 of `body` under `secret`.
pub fn hmac_sha256(secret: &[u8], body: &[u8], signature: &str) -> bool {
    hmac_sha256_parts(secret, &[body], signature)
}

/// [`hmac_sha256`] over a body held in pieces (as it arrived), so a body nobody has proved
/// anything about is never copied into one large buffer.
pub fn hmac_sha256_parts(secret: &[u8], parts: &[&[u8]], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(&expected).is_ok()
}

/// Whether a webhook trigger's `X-Airlock-Signature-256` (`sha256=<hex>`) signs
/// `<timestamp>.<body>` (the timestamp is `X-Airlock-Timestamp`, so a captured request cannot
/// be replayed once it is out of the window).
pub fn airlock_v1(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Whether Slack's `X-Slack-Signature` (`v0=<hex>`) signs `v0:<timestamp>:<body>`.
pub fn slack_v0(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("v0=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_test_vector_verifies() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!hmac_sha256(b"another secret", b"Hello, World!", sig));
        assert!(!hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=abc"
        ));
        assert!(!hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=zz"
        ));
    }

    #[test]
    fn slacks_published_test_vector_verifies() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert!(slack_v0(
            b"8f742231b10e8888abcd99yyyzzz85a5",
            "1531420618",
            body.as_bytes(),
            sig
        ));
        assert!(!slack_v0(
            b"8f742231b10e8888abcd99yyyzzz85a5",
            "1531420619",
            body.as_bytes(),
            sig
        ));
    }
}
