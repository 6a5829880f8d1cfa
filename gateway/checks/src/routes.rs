//! A session's routes, compiled once from its profile into a matcher: which hosts are
//! intercepted (they have routes), which are tunnelled untouched (passthrough), and for an
//! intercepted request, which route allows it or why none does.
//!
//! Pure: no I/O, no credential values (a route names its credential, nothing more).

use airlock_domain::{Inject, RouteSpec};

use crate::path::{normalise, NormalPath, PathError};

/// A host pattern: `api.github.com`, or `*.example.com` for any sub-domain (not the domain
/// itself).
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn parse(pattern: &str) -> HostPattern {
        let p = normalise_host(pattern);
        match p.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(p),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    /// Exact names win over wildcards, longer wildcards over shorter ones.
    fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Suffix(s) => s.len(),
        }
    }
}

/// Lower case, no trailing dot: the form hosts are compared in.
pub fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// One compiled route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its position in the profile's `egress` list (shown in refusals and the audit log).
    pub index: usize,
    host: HostPattern,
    pub path_prefix: String,
    /// Allowed methods; empty means any.
    pub methods: Vec<String>,
    pub credential: Option<String>,
    pub inject: Option<Inject>,
    /// Where to send the traffic instead of the requested host.
    pub upstream: Option<Upstream>,
}

/// A route's upstream override, parsed: `https://models.internal:8443/openai`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub https: bool,
    /// `host:port`, always with the port.
    pub authority: String,
    pub host: String,
    /// Prepended to the request's path; empty or without a trailing slash.
    pub base_path: String,
}

impl Upstream {
    fn parse(url: &str) -> Option<Upstream> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = split_host_port(authority, if https { 443 } else { 80 })?;
        Some(Upstream {
            https,
            authority: format_authority(&host, port),
            host,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// `host:port` (IPv6 in brackets) into its parts, with a default port.
pub fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((normalise_host(h), p.parse().ok()?)),
        None => Some((normalise_host(authority), default_port)),
    }
}

pub fn format_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What the gateway does with a connection to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDecision {
    /// The host has routes: terminate TLS, check and inject each request.
    Intercept,
    /// Tunnel without looking inside.
    Passthrough,
    Refuse,
}

/// Why no route allows a request; shown to the sandbox as the 403's explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Method {
        allowed: Vec<String>,
    },
    Path {
        prefixes: Vec<String>,
    },
    /// The path is malformed or something upstreams resolve to another path than the one
    /// checked (dot segments, parameters, encoded separators, `//`).
    Path400(PathError),
}

/// A session's compiled routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    passthrough: Vec<HostPattern>,
}

impl RouteTable {
    pub fn from_parts(egress: &[RouteSpec], passthrough: &[String]) -> RouteTable {
        let mut routes: Vec<Route> = egress
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                index,
                host: HostPattern::parse(&r.host),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                credential: r.credential.clone(),
                inject: r.inject.clone(),
                upstream: r.upstream.as_deref().and_then(Upstream::parse),
            })
            .collect();
        // Most specific host first, then longest path prefix: the first match is the best.
        routes.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
                .then(a.index.cmp(&b.index))
        });
        RouteTable {
            routes,
            passthrough: passthrough.iter().map(|p| HostPattern::parse(p)).collect(),
        }
    }

    /// Routes win over passthrough: a host with a route is always checked.
    pub fn host(&self, host: &str) -> HostDecision {
        let host = normalise_host(host);
        if self.routes.iter().any(|r| r.host.matches(&host)) {
            HostDecision::Intercept
        } else if self.passthrough.iter().any(|p| p.matches(&host)) {
            HostDecision::Passthrough
        } else {
            HostDecision::Refuse
        }
    }

    /// The route that allows `method` on `raw_path` (no query) at `host`, and the path in
    /// the form it was matched in (which is what must be forwarded).
    pub fn request(
        &self,
        host: &str,
        method: &str,
        raw_path: &str,
    ) -> Result<(&Route, NormalPath), Refusal> {
        let host = normalise_host(host);
        let best = self
            .routes
            .iter()
            .filter(|r| r.host.matches(&host))
            .map(|r| r.host.specificity())
            .max()
            .ok_or(Refusal::Host)?;
        let candidates: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.host.matches(&host) && r.host.specificity() == best)
            .collect();
        let path = normalise(raw_path).map_err(Refusal::Path400)?;
        // Where the path decides (a route with a narrower prefix than `/`), a path some
        // upstream would read as another one is refused. Where every route allows the whole
        // host, there is nothing to confuse (npm's `/@scope%2fname` must pass).
        if candidates.iter().any(|r| r.path_prefix != "/") {
            if let Some(why) = path.is_ambiguous() {
                return Err(Refusal::Path400(why));
            }
        }
        let on_path: Vec<&Route> = candidates
            .iter()
            .copied()
            .filter(|r| prefix_matches(&r.path_prefix, &path.path))
            .collect();
        if on_path.is_empty() {
            return Err(Refusal::Path {
                prefixes: candidates.iter().map(|r| r.path_prefix.clone()).collect(),
            });
        }
        let route = on_path
            .iter()
            .copied()
            .find(|r| r.allows_method(method))
            .ok_or_else(|| {
                let mut allowed: Vec<String> =
                    on_path.iter().flat_map(|r| r.methods.clone()).collect();
                allowed.sort();
                allowed.dedup();
                Refusal::Method { allowed }
            })?;
        Ok((route, path))
    }
}

impl Route {
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// `/v1/` matches `/v1/chat`; `/repos/acme` matches `/repos/acme` and `/repos/acme/x` but not
/// `/repos/acmecorp`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(host: &str, prefix: &str, methods: &[&str]) -> RouteSpec {
        RouteSpec {
            host: host.into(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            credential: None,
            inject: None,
            upstream: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::from_parts(
            &[
                route("api.openai.com", "/v1/", &["POST"]),
                route("*.github.com", "/", &["GET"]),
                route("api.github.com", "/repos/acme", &[]),
                route("api.github.com", "/", &["GET"]),
            ],
            &[
                "pypi.org".into(),
                "*.crates.io".into(),
                "api.openai.com".into(),
            ],
        )
    }

    #[test]
    fn hosts_with_routes_are_intercepted_passthrough_is_tunnelled_the_rest_refused() {
        let t = table();
        let cases = [
            ("api.openai.com", HostDecision::Intercept),
            ("API.OpenAI.com.", HostDecision::Intercept),
            ("uploads.github.com", HostDecision::Intercept),
            ("github.com", HostDecision::Refuse),
            ("pypi.org", HostDecision::Passthrough),
            ("static.crates.io", HostDecision::Passthrough),
            ("crates.io", HostDecision::Refuse),
            ("evil.com", HostDecision::Refuse),
            ("api.openai.com.evil.com", HostDecision::Refuse),
        ];
        for (host, want) in cases {
            assert_eq!(t.host(host), want, "{host}");
        }
    }

    #[test]
    fn requests_match_the_most_specific_route_or_say_why_not() {
        let t = table();
        let idx = |h: &str, m: &str, p: &str| t.request(h, m, p).map(|(r, _)| r.index);
        assert_eq!(idx("api.openai.com", "POST", "/v1/chat/completions"), Ok(0));
        assert_eq!(
            idx("api.openai.com", "GET", "/v1/models"),
            Err(Refusal::Method {
                allowed: vec!["POST".into()]
            })
        );
        assert_eq!(
            idx("api.openai.com", "POST", "/v2/x"),
            Err(Refusal::Path {
                prefixes: vec!["/v1/".into()]
            })
        );
        // The exact host's routes, not the wildcard's.
        assert_eq!(idx("api.github.com", "DELETE", "/repos/acme/web"), Ok(2));
        assert_eq!(idx("api.github.com", "GET", "/user"), Ok(3));
        assert_eq!(
            idx("api.github.com", "DELETE", "/repos/acmecorp/web"),
            Err(Refusal::Method {
                allowed: vec!["GET".into()]
            })
        );
        assert_eq!(idx("raw.github.com", "GET", "/x"), Ok(1));
        assert_eq!(idx("evil.com", "GET", "/"), Err(Refusal::Host));
        for (p, why) in [
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/%2e%2E/admin", PathError::DotSegment),
            ("/v1/./x", PathError::DotSegment),
            ("/v1/..;/admin", PathError::DotSegment),
            ("/v1/%2e%2e;x=1/admin", PathError::DotSegment),
            ("/v1%2fx", PathError::EncodedSeparator),
            ("/v1/a;b", PathError::Parameter),
            ("/v1//chat", PathError::EmptySegment),
            ("/v1\\x", PathError::Backslash),
            ("v1/x", PathError::NotAbsolute),
        ] {
            assert_eq!(
                idx("api.openai.com", "POST", p),
                Err(Refusal::Path400(why)),
                "{p}"
            );
        }
        // What matched is what goes on: encoded unreserved characters decoded.
        let (_, path) = t.request("api.openai.com", "POST", "/%76%31/chat").unwrap();
        assert_eq!(path.path, "/v1/chat");
    }

    #[test]
    fn a_host_allowed_whole_takes_encoded_paths() {
        let t = RouteTable::from_parts(
            &[RouteSpec {
                host: "registry.npmjs.org".into(),
                path_prefix: "/".into(),
                methods: vec![],
                credential: None,
                inject: None,
                upstream: None,
            }],
            &[],
        );
        let (_, path) = t
            .request("registry.npmjs.org", "GET", "/@openai%2fcodex")
            .unwrap();
        assert_eq!(path.path, "/@openai%2Fcodex");
        assert_eq!(
            t.request("registry.npmjs.org", "GET", "no-slash")
                .map(|(r, _)| r.index),
            Err(Refusal::Path400(PathError::NotAbsolute))
        );
        assert_eq!(
            t.request("registry.npmjs.org", "GET", "/a/../b")
                .map(|(r, _)| r.index),
            Err(Refusal::Path400(PathError::DotSegment))
        );
    }

    #[test]
    fn upstream_overrides_parse_with_default_ports() {
        let u = Upstream::parse("https://models.internal/openai/").unwrap();
        assert_eq!(
            (u.https, u.authority.as_str(), u.base_path.as_str()),
            (true, "models.internal:443", "/openai")
        );
        let u = Upstream::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((u.https, u.authority.as_str()), (false, "127.0.0.1:8000"));
        let u = Upstream::parse("https://[::1]:9443/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority.as_str()),
            ("::1", "[::1]:9443")
        );
        assert!(Upstream::parse("ftp://x").is_none());
        assert!(Upstream::parse("https://user@x").is_none());
    }

    proptest! {
        #[test]
        fn matching_never_panics(host in "\\PC{0,40}", method in "[A-Z]{0,8}", path in "\\PC{0,60}") {
            let t = table();
            let _ = t.host(&host);
            let _ = t.request(&host, &method, &path);
        }

        #[test]
        fn a_path_with_a_dot_segment_is_never_allowed(a in "[a-z]{0,8}", b in "[a-z]{0,8}", dots in "(\\.\\.|\\.|%2e%2e|%2E\\.)", param in "(;[a-z=]{0,4})?") {
            let t = table();
            let path = format!("/v1/{a}/{dots}{param}/{b}");
            prop_assert_eq!(t.request("api.openai.com", "POST", &path).map(|(r, _)| r.index), Err(Refusal::Path400(PathError::DotSegment)));
        }

        /// Whatever path is asked for, what matches a route's prefix after normalisation is
        /// under that prefix for every reading an upstream could give it: it has no dot
        /// segment, parameter, `//` or encoded separator where the prefix decides.
        #[test]
        fn a_matched_path_stays_under_its_prefix(segs in proptest::collection::vec("([a-z.;]|%2[eEfF]|%5[cC]|%3[bB]|/){0,6}", 1..5)) {
            let t = RouteTable::from_parts(&[route("h.test", "/echo/", &[])], &[]);
            let raw = format!("/echo/{}", segs.join("/"));
            if let Ok((_, path)) = t.request("h.test", "GET", &raw) {
                prop_assert!(path.path.starts_with("/echo/"));
                prop_assert!(path.is_ambiguous().is_none());
                for seg in path.path.split('/') {
                    let head = seg.split(';').next().unwrap_or("");
                    prop_assert!(head != "." && head != ".." && !seg.contains(';'));
                }
            }
        }
    }
}
