//! The path normaliser and the route matcher: any path, no panic; what matches a narrow
//! route is under its prefix, in normal form (normalising again changes nothing), and holds
//! nothing an upstream could read as another path.
#![no_main]

use airlock_domain::RouteSpec;
use airlock_egress_checks::path::normalise;
use airlock_egress_checks::routes::RouteTable;
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let table = RouteTable::from_parts(
        &[
            route("api.test", "/echo/", &["GET"]),
            route("api.test", "/v1", &["POST"]),
            route("*.whole.test", "/", &[]),
        ],
        &[],
    );
    if let Ok(n) = normalise(raw) {
        assert_eq!(normalise(&n.path).map(|m| m.path), Ok(n.path.clone()));
    }
    for host in ["api.test", "x.whole.test"] {
        for method in ["GET", "POST"] {
            if let Ok((r, path)) = table.request(host, method, raw) {
                let p = &path.path;
                assert!(p.starts_with(&r.path_prefix), "{p} outside {}", r.path_prefix);
                assert_eq!(normalise(p).map(|m| m.path).as_ref(), Ok(p));
                for seg in p.split('/') {
                    let head = seg.split(';').next().unwrap_or("");
                    assert!(head != "." && head != "..", "{p}");
                }
                if r.path_prefix != "/" {
                    assert!(path.is_ambiguous().is_none(), "{p}");
                    assert!(!p.contains("//") && !p.contains(';'), "{p}");
                    let lower = p.to_ascii_lowercase();
                    assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{p}");
                }
            }
        }
    }
});
