//! Request paths in the one form routes are matched in and requests are forwarded in.
//!
//! Upstreams resolve paths in many ways: percent-decoding, dot segments, `;` parameters
//! (Tomcat and Spring drop them per segment, so `/echo/..;/admin` is `/admin` there),
//! duplicate slashes, encoded separators. The gateway applies one normalisation before
//! matching, forwards exactly what it matched, and refuses what stays ambiguous, so a path
//! checked against a route's prefix cannot mean another path upstream.
//!
//! Pure: no I/O.

use std::fmt;

/// A path that passed [`normalise`]: unreserved characters decoded, other escapes in upper
/// case, with what the route matcher must still judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// What is matched and forwarded.
    pub path: String,
    /// An encoded `/` or `\` (`%2F`, `%5C`): one segment here, two for some upstreams.
    pub encoded_separator: bool,
    /// A `;` inside a segment: a path parameter some upstreams strip.
    pub parameter: bool,
    /// An empty segment (`//`) before the end: some upstreams merge slashes.
    pub empty_segment: bool,
}

impl NormalPath {
    /// Whether some upstream could read this path as another one; refused wherever the
    /// route's path prefix decides.
    pub fn is_ambiguous(&self) -> Option<PathError> {
        if self.encoded_separator {
            Some(PathError::EncodedSeparator)
        } else if self.parameter {
            Some(PathError::Parameter)
        } else if self.empty_segment {
            Some(PathError::EmptySegment)
        } else {
            None
        }
    }
}

/// Why a path is refused; the text says what to send instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    Control,
    Backslash,
    DotSegment,
    EncodedSeparator,
    Parameter,
    EmptySegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "it does not start with `/`",
            PathError::BadEscape => "it has a `%` that is not followed by two hex digits",
            PathError::Control => "it has a control character or a non-ASCII byte",
            PathError::Backslash => "it has a backslash, which some servers read as `/`",
            PathError::DotSegment => {
                "it has a `.` or `..` segment (plain or percent-encoded); send the resolved path"
            }
            PathError::EncodedSeparator => {
                "it has an encoded `/` or `\\` (%2F, %5C), which some servers decode into a separator"
            }
            PathError::Parameter => {
                "it has a `;` parameter in a segment, which some servers strip (`/a/..;/b` is `/b` there)"
            }
            PathError::EmptySegment => "it has `//`, which some servers merge into one `/`",
        })
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normal form of a request path (without its query).
pub fn normalise(raw: &str) -> Result<NormalPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    let mut np = NormalPath {
        path: String::new(),
        encoded_separator: false,
        parameter: false,
        empty_segment: false,
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::Control);
                }
                if unreserved(v) {
                    out.push(v as char);
                } else {
                    if v == b'/' || v == b'\\' {
                        np.encoded_separator = true;
                    }
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x20 | 0x7f..=0xff => return Err(PathError::Control),
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    let segments: Vec<&str> = out.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Err(PathError::DotSegment);
        }
        if let Some((head, _)) = seg.split_once(';') {
            np.parameter = true;
            // `..;x` is `..` where parameters are stripped.
            if head == "." || head == ".." {
                return Err(PathError::DotSegment);
            }
        }
        if seg.is_empty() && n != last {
            np.empty_segment = true;
        }
    }
    np.path = out;
    Ok(np)
}

/// The method a request restates in a header or a `_method` query parameter, if it names
/// one different from its own (Rails, Laravel, Symfony, Express's method-override and many
/// API gateways honour these).
pub fn method_override(
    method: &str,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    const HEADERS: &[&str] = &[
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    let from_headers = HEADERS.iter().flat_map(|h| headers.get_all(*h).iter());
    let mut named: Vec<String> = from_headers
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect();
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode_lossy(k);
            if k.eq_ignore_ascii_case("_method") {
                named.push(percent_decode_lossy(v));
            }
        }
    }
    named.into_iter().find(|m| !m.eq_ignore_ascii_case(method))
}

fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_normalise_or_say_why_not() {
        let ok = |raw: &str| normalise(raw).map(|n| n.path);
        assert_eq!(
            ok("/v1/chat/completions"),
            Ok("/v1/chat/completions".into())
        );
        assert_eq!(ok("/%76%31/chat"), Ok("/v1/chat".into()));
        assert_eq!(ok("/a%2fb"), Ok("/a%2Fb".into()));
        assert_eq!(ok("/@openai%2fcodex"), Ok("/@openai%2Fcodex".into()));
        assert_eq!(ok("/a%20b/"), Ok("/a%20b/".into()));
        assert_eq!(ok("/"), Ok("/".into()));
        let cases = [
            ("v1/x", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%00b", PathError::Control),
            ("/a%0ab", PathError::Control),
            ("/a\\b", PathError::Backslash),
            ("/echo/../admin", PathError::DotSegment),
            ("/echo/./x", PathError::DotSegment),
            ("/echo/%2e%2E/admin", PathError::DotSegment),
            ("/echo/.%2e/admin", PathError::DotSegment),
            ("/echo/..;/admin", PathError::DotSegment),
            ("/echo/%2e%2e;x=1/admin", PathError::DotSegment),
            ("/echo/..", PathError::DotSegment),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), Err(want), "{raw}");
        }
        let flags = |raw: &str| normalise(raw).unwrap().is_ambiguous();
        assert_eq!(flags("/echo/a;b/x"), Some(PathError::Parameter));
        assert_eq!(flags("/echo//admin"), Some(PathError::EmptySegment));
        assert_eq!(
            flags("/echo%2f..%2fadmin"),
            Some(PathError::EncodedSeparator)
        );
        assert_eq!(flags("/echo%5cx"), Some(PathError::EncodedSeparator));
        assert_eq!(flags("/echo/"), None);
        assert_eq!(flags("/echo/%3B"), None, "an encoded `;` is data");
    }

    #[test]
    fn a_method_restated_elsewhere_is_found() {
        let mut h = http::HeaderMap::new();
        assert_eq!(method_override("GET", &h, None), None);
        assert_eq!(method_override("GET", &h, Some("a=1&_method=get")), None);
        assert_eq!(
            method_override("GET", &h, Some("a=1&_METHOD=DELETE")).as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            method_override("POST", &h, Some("%5fmethod=put")).as_deref(),
            Some("put")
        );
        h.insert("X-HTTP-Method-Override", "DELETE".parse().unwrap());
        assert_eq!(method_override("POST", &h, None).as_deref(), Some("DELETE"));
    }

    proptest! {
        /// Whatever comes in, what comes out is stable (normalising it again changes
        /// nothing), never has a dot segment, and decodes to the same bytes as the input.
        #[test]
        fn normalising_is_idempotent_and_keeps_the_meaning(
            segs in proptest::collection::vec("([a-zA-Z0-9._~;-]|%[0-9a-fA-F]{2}|\\.\\.|\\.){0,6}", 0..6),
            trailing in any::<bool>(),
        ) {
            let mut raw = String::new();
            for s in &segs { raw.push('/'); raw.push_str(s); }
            if trailing || raw.is_empty() { raw.push('/'); }
            if let Ok(n) = normalise(&raw) {
                prop_assert_eq!(normalise(&n.path).map(|m| m.path), Ok(n.path.clone()));
                prop_assert_eq!(percent_decode_lossy(&n.path.replace('+', "%2B")),
                    percent_decode_lossy(&raw.replace('+', "%2B")));
                for seg in n.path.split('/') {
                    let head = seg.split(';').next().unwrap_or("");
                    prop_assert!(head != "." && head != "..");
                }
            }
        }

        #[test]
        fn any_input_normalises_or_fails_without_panicking(raw in "\\PC{0,80}") {
            let _ = normalise(&raw);
        }
    }
}
