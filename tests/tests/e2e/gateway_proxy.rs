//! The gateway's own connections through a company's HTTP proxy (`gateway.upstream_proxy`):
//! a route's upstream is reached through a `CONNECT` tunnel with TLS verified end to end and
//! the credential injected as always; what the proxy refuses is a 502 that says so; hosts in
//! `gateway.no_proxy` (here the server's own git endpoint on 127.0.0.1) are reached directly.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use airlock_tests::connect_proxy::ConnectProxy;
use airlock_tests::upstream::Upstream;
use airlock_tests::{line, random, stderr, stdout, Engine, Install, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_goes_out_through_the_upstream_proxy_and_says_what_it_refused() {
    let key = random("sk-proxy-");
    let upstream = Upstream::start(&key, "unused").await;
    let proxy = ConnectProxy::start(9).await;
    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install
        .env(
            "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
            upstream.ca_file.to_str().unwrap(),
        )
        .env(
            "AIRLOCK_GATEWAY_UPSTREAM_PROXY",
            &format!("http://127.0.0.1:{}", proxy.port),
        )
        // `localhost` goes through the proxy; the server's own address does not.
        .env("AIRLOCK_GATEWAY_NO_PROXY", "127.0.0.1");
    install.ok(&["migrate"]);
    install.add_admin();
    let set = install.run_with_stdin(
        &["credential", "set", "model-key", "--kind", "api-key"],
        key.as_bytes(),
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let profile = format!(
        r#"name = "proxied"
[agent]
kind = "command"
command = '''echo "via-proxy: $(curl -s -o "$HOME/body" -w '%{{http_code}}' https://api.model.test/echo) $(grep -o '"authorization":"[^"]*"' "$HOME/body")"
echo "refused: $(curl -s -w ' status=%{{http_code}}' https://blocked.test/echo | tr -d '\n')"'''
[[egress]]
host = "api.model.test"
credential = "model-key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
[[egress]]
host = "blocked.test"
upstream = "https://localhost:9"
"#,
        up = upstream.url()
    );
    let path = install.path().join("proxied.toml");
    std::fs::write(&path, profile).unwrap();
    install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    let server = Server::start(&install);
    let out = install.run(&["run", "--repo", "acme/web", "--profile", "proxied", "go"]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}\n{}", server.log());
    // The upstream saw the injected key (scrubbed on the way back), through the tunnel.
    assert_eq!(
        line(&text, "via-proxy: "),
        "via-proxy: 200 \"authorization\":\"Bearer [REDACTED]\"",
        "{text}"
    );
    let refused = line(&text, "refused: ");
    assert!(
        refused.contains(
            "the upstream proxy refused CONNECT localhost:9: HTTP/1.1 403 Forbidden by policy"
        ) && refused.ends_with("status=502"),
        "{refused}"
    );
    let targets = proxy.targets();
    assert!(
        targets.contains(&format!("localhost:{}", upstream.port)),
        "{targets:?}"
    );
    assert!(
        targets.iter().all(|t| !t.starts_with("127.0.0.1:")),
        "no_proxy hosts are reached directly: {targets:?}"
    );
    drop(server);
}
