//! The gateway end to end: real clients (curl, git, Python urllib, Node fetch) in a real
//! sandbox, through `airlock up`'s gateway, to a strict local upstream with its own test CA
//! that refuses any request without the right credential. The sandbox never holds the
//! credentials; the gateway injects them, scrubs them from what comes back, refuses what no
//! route allows, meters model tokens against the budget, and audits it all.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::process::Command;
use std::time::{Duration, Instant};

use airlock_tests::upstream::Upstream;
use airlock_tests::{line, random, stderr, stdout, Engine, Install, Server};
use base64::Engine as _;

/// What the agent runs: each client, then the refusals, each line tagged for the test to find.
const SCRIPT: &str = r#"
cd "$HOME"
env | sort > "$HOME/env.txt"
for p in /proc/[0-9]*; do tr '\0' '\n' < "$p/environ" 2>/dev/null; done > "$HOME/proc-environ.txt"
echo "proc-environ-lines=$(wc -l < "$HOME/proc-environ.txt")"

echo "curl: $(curl -sS -H 'Authorization: Bearer airlock-placeholder' -d 'hello from curl' https://api.model.test/echo)"
python3 - <<'PY'
import json, urllib.request
r = urllib.request.urlopen("https://api.model.test/echo?from=python", timeout=30)
print("python:", r.status, json.loads(r.read())["headers"]["authorization"])
PY
node -e 'fetch("https://api.model.test/echo").then(async r => console.log("node:", r.status, JSON.parse(await r.text()).headers.authorization)).catch(e => { console.log("node: failed", String(e.cause || e)); })' 2>&1
python3 -c 'import ssl; c = ssl.create_default_context(); print("extra-ca:", any("Upstream test CA" in str(x.get("subject")) for x in c.get_ca_certs()))'
echo "tools: node $(node -p 'process.versions.node.split(".")[0] >= 22') npm $(npm --version >/dev/null 2>&1 && echo yes) make $(make --version >/dev/null && echo yes) cc $(cc --version >/dev/null && echo yes)"

echo "http2=$(curl -s --http2 -o /dev/null -w '%{http_version} %{http_code}' https://api.model.test/echo)"

git clone -q https://git.example.test/repo.git "$HOME/repo" && cd "$HOME/repo" \
  && echo "changed in the sandbox" > CHANGE.md && git add CHANGE.md \
  && git -c user.name=Agent -c user.email=agent@example.com commit -qm "from the sandbox" \
  && git push -q origin "HEAD:refs/heads/$AIRLOCK_BRANCH" && echo "git: pushed"
cd "$HOME"

python3 - <<'PY'
import urllib.request
with urllib.request.urlopen("https://api.model.test/sse", timeout=30) as r:
    for raw in r:
        line = raw.decode().strip()
        if not line:
            continue
        print("sse:", line, flush=True)
        if line == "data: first":
            req = urllib.request.Request("https://api.model.test/sse-ack", data=b"", method="POST")
            urllib.request.urlopen(req, timeout=10).read()
PY

echo "refused-http: $(curl -s http://evil.example.com/)"
echo "refused-connect=$(curl -s -o /dev/null -w '%{http_connect}' https://evil.example.com/)"
echo "bad-token=$(curl -s -o /dev/null -w '%{http_connect}' -x "http://airlock:alk_egr_bogus@${https_proxy##*@}" https://api.model.test/echo)"
echo "readonly-get=$(curl -s -o /dev/null -w '%{http_code}' https://readonly.example.test/echo)"
echo "readonly-post: $(curl -s -X POST -w ' status=%{http_code}' https://readonly.example.test/echo | tr -d '\n')"
echo "readonly-path: $(curl -s -w ' status=%{http_code}' https://readonly.example.test/other | tr -d '\n')"

chat() { curl -s "$@" -w "status=%{http_code}" -H 'content-type: application/json' -d '{"model":"m","messages":[]}' https://api.model.test/v1/chat/completions; }
echo "chat1: $(chat -o /dev/null)"
echo "chat2: $(chat | tr -d '\n')"

echo "guard-header: $(curl -s -w ' status=%{http_code}' -H "X-Note: $LEAKED" https://api.model.test/echo | tr -d '\n')"
echo "guard-body: $(curl -s -w ' status=%{http_code}' --data-binary "note=$LEAKED" https://api.model.test/echo | tr -d '\n')"

printf '%s\n' "$UPSTREAM_CA" > "$HOME/upstream-ca.pem"
echo "passthrough=$(curl -s -o /dev/null -w '%{http_connect}' --noproxy '' -x "$https_proxy" --cacert "$HOME/upstream-ca.pem" https://localhost:$UPSTREAM_PORT/public)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_clients_reach_upstreams_only_through_the_gateway_and_never_see_a_credential() {
    let model_key = random("sk-live-");
    let git_token = random("ghs_");
    let leaked = random("leaked-");
    let upstream = Upstream::start(&model_key, &git_token).await;
    let bare = upstream.create_repo("repo");

    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install
        .env(
            "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
            upstream.ca_file.to_str().unwrap(),
        )
        .env("AIRLOCK_GATEWAY_SESSION_TOKEN_BUDGET", "30")
        // As a company's TLS-inspecting proxy's CA would be: trusted inside the sandbox too.
        .env(
            "AIRLOCK_SANDBOX_EXTRA_CA_FILES",
            upstream.ca_file.to_str().unwrap(),
        );
    install.ok(&["migrate"]);
    install.add_admin();
    for (name, kind, value) in [
        ("model-key", "api-key", &model_key),
        ("git-token", "github-token", &git_token),
        ("leaked", "generic", &leaked),
    ] {
        let out = install.run_with_stdin(
            &["credential", "set", name, "--kind", kind],
            value.as_bytes(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let up = upstream.url();
    let profile = format!(
        r#"name = "gw"
passthrough = ["localhost"]
[agent]
kind = "command"
command = '''{SCRIPT}'''
[env]
UPSTREAM_PORT = "{port}"
LEAKED = "{leaked}"
UPSTREAM_CA = '''{ca}'''
[[egress]]
host = "api.model.test"
credential = "model-key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
[[egress]]
host = "git.example.test"
credential = "git-token"
inject = {{ kind = "basic", username = "x-access-token" }}
upstream = "{up}"
[[egress]]
host = "readonly.example.test"
path_prefix = "/echo"
methods = ["GET"]
credential = "model-key"
inject = {{ kind = "bearer" }}
upstream = "{up}"
"#,
        port = upstream.port,
        ca = upstream.ca_pem.trim(),
    );
    let path = install.path().join("gw.toml");
    std::fs::write(&path, profile).unwrap();
    install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    let _server = Server::start(&install);

    // Blocking CLI calls go to a worker thread: the upstream serves on this runtime.
    let run_install = std::sync::Arc::new(install);
    let i2 = run_install.clone();
    let out = tokio::task::spawn_blocking(move || {
        i2.run(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "gw",
            "exercise the gateway",
        ])
    })
    .await
    .unwrap();
    let install = run_install;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));

    // Each client reached the upstream (which answers 401 without the credential), with the
    // credential injected over the placeholder, and saw it only as [REDACTED].
    let curl = line(&text, "curl: ");
    assert!(
        curl.contains(r#""authorization":"Bearer [REDACTED]""#),
        "{curl}"
    );
    assert!(curl.contains("hello from curl"), "{curl}");
    assert!(
        !curl.contains("placeholder"),
        "the placeholder was replaced: {curl}"
    );
    assert_eq!(line(&text, "python: "), "python: 200 Bearer [REDACTED]");
    assert_eq!(line(&text, "node: "), "node: 200 Bearer [REDACTED]");
    // The image is fit for the agents' CLIs: Node 22 or newer with npm, make, a C compiler;
    // and Node's proxy set-up prints no experimental-feature warning into the session.
    assert_eq!(
        line(&text, "tools: "),
        "tools: node true npm yes make yes cc yes"
    );
    assert!(!text.contains("Warning"), "{text}");
    assert_eq!(
        line(&text, "http2="),
        "http2=1.1 200",
        "HTTP/1.1 towards the client even when it asks for HTTP/2 (decision 0014)"
    );
    assert_eq!(line(&text, "git: "), "git: pushed");
    // The session's own branch (the only one it may push) has the commit.
    let branches =
        airlock_tests::git::in_bare(&bare, &["branch", "--format=%(refname:short)"]).unwrap();
    let branch = branches
        .lines()
        .find(|b| b.starts_with("airlock/"))
        .unwrap_or_else(|| panic!("no session branch in {branches}"));
    let log = Command::new("git")
        .args([
            "--git-dir",
            bare.to_str().unwrap(),
            "log",
            "--format=%s",
            branch,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "from the sandbox\nseed\n"
    );

    // The stream arrived event by event: the upstream sent its second event only after the
    // client, having read the first, acknowledged it.
    let sse: Vec<&str> = text.lines().filter(|l| l.starts_with("sse: ")).collect();
    assert_eq!(sse, ["sse: data: first", "sse: data: second (after ack)"]);

    // Refusals, each with its reason.
    let refused = line(&text, "refused-http: ");
    assert!(
        refused.contains("evil.example.com is not allowed for this session (profile `gw`)")
            && refused.contains("[[egress]] route"),
        "{refused}"
    );
    assert_eq!(line(&text, "refused-connect="), "refused-connect=403");
    assert_eq!(line(&text, "bad-token="), "bad-token=407");
    assert_eq!(line(&text, "readonly-get="), "readonly-get=200");
    let post = line(&text, "readonly-post: ");
    assert!(
        post.contains("POST is not allowed on readonly.example.test/echo; the route allows GET.")
            && post.ends_with("status=403"),
        "{post}"
    );
    let other = line(&text, "readonly-path: ");
    assert!(
        other.contains("/other on readonly.example.test is outside the allowed paths (/echo).")
            && other.ends_with("status=403"),
        "{other}"
    );

    // Metering and the session budget (30 tokens): the first call used 33, the second is refused.
    assert_eq!(line(&text, "chat1: "), "chat1: status=200");
    let chat2 = line(&text, "chat2: ");
    assert!(
        chat2.contains("this session has used its model budget (33 of 30 tokens)")
            && chat2.ends_with("status=429"),
        "{chat2}"
    );

    // The request guard: a stored credential's value never leaves, in a header or a body.
    for tag in ["guard-header: ", "guard-body: "] {
        let l = line(&text, tag);
        assert!(
            l.contains("carries the value of the stored credential `leaked`")
                && l.ends_with("status=403"),
            "{l}"
        );
    }
    // Passthrough hosts are for setup steps: a session gets no tunnel unless its profile says
    // `passthrough_in_sessions` (tested in tests/wall.rs).
    assert_eq!(line(&text, "passthrough="), "passthrough=403");

    // Nothing the session recorded holds a credential value.
    let secrets = [
        model_key.clone(),
        git_token.clone(),
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{git_token}")),
    ];
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "the agent's output holds a credential"
        );
    }
    let audit = install.ok(&["audit", "export"]);
    for s in &secrets {
        assert!(
            !audit.contains(s.as_str()),
            "the audit log holds a credential"
        );
    }
    assert!(
        !audit.contains(&leaked),
        "the audit log holds the blocked value"
    );
    let egress: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("egress."))
        })
        .collect();
    let has = |action: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        egress
            .iter()
            .any(|e| e["action"] == action && f(&e["detail"]))
    };
    assert!(has("egress.request", &|d| d["credential"] == "model-key"
        && d["status"] == 200
        && d["human"].is_string()));
    assert!(has("egress.request", &|d| d["credential"] == "git-token"
        && d["path"] == "/repo.git/git-receive-pack"));
    assert!(has("egress.request", &|d| d["input_tokens"] == 11
        && d["output_tokens"] == 22));
    assert!(has("egress.refused", &|d| d["decision"] == "no_route"));
    assert!(has("egress.refused", &|d| d["decision"] == "budget"));
    assert!(has("egress.blocked", &|d| d["credential"] == "leaked"));
    assert!(!egress.iter().any(|e| e["action"] == "egress.tunnel"));

    // The session's usage is recorded.
    let sessions = install.json(&["session", "list"]);
    let id = sessions[0]["id"].as_str().expect("the session is listed");
    let shown = install.json(&["session", "show", id]);
    assert_eq!(shown["model_usage"]["calls"], 1, "{}", shown["model_usage"]);
    assert_eq!(shown["model_usage"]["output_tokens"], 22);

    // No file of the sandbox (its kept session snapshot, including the dumps of `env` and
    // every /proc/*/environ the agent made) holds a credential value.
    // The session's files are kept as an image just after it ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let image = loop {
        let shown = install.json(&["session", "show", id]);
        let kept = shown["events"].as_array().unwrap().iter().find_map(|e| {
            e["payload"]["text"]
                .as_str()
                .and_then(|t| t.strip_prefix("kept the session's files as "))
                .map(str::to_string)
        });
        if let Some(image) = kept {
            break image;
        }
        assert!(Instant::now() < deadline, "no session snapshot was kept");
        std::thread::sleep(Duration::from_millis(200));
    };
    let patterns = install.path().join("patterns.txt");
    std::fs::write(&patterns, secrets.join("\n")).unwrap();
    let scan = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -e; c=$(docker create {image} true); \
             docker cp $c:/home/agent/proc-environ.txt - | tar -xO | grep -c HTTPS_PROXY; \
             hits=$(docker export $c | grep -a -c -F -f {p} || true); docker rm $c >/dev/null; echo hits=$hits",
            p = patterns.display()
        ))
        .output()
        .unwrap();
    let scanned = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scan.status.success(),
        "{scanned}{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let mut lines = scanned.lines();
    let proxies: u32 = lines.next().unwrap().parse().unwrap();
    assert!(
        proxies >= 1,
        "the environ dump has the proxy settings (so it is not empty)"
    );
    assert_eq!(
        lines.next(),
        Some("hits=0"),
        "a file in the sandbox holds a credential"
    );
    wait_gone(&install);
}

/// The session's sandbox is removed once it ends.
fn wait_gone(install: &Install) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = install.json(&["sandbox", "list"]);
        if list.as_array().is_some_and(|a| a.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "sandboxes remain: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GitHub App credential: the gateway mints an installation token limited to the session's
/// repository (once, then cached), git uses it without ever seeing it, and the same token
/// cannot reach another repository of the installation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_credential_mints_tokens_for_the_session_repository_only() {
    let github = airlock_tests::github::FakeGithub::start().await;
    let web = github.create_repo("acme/web", &[]);
    github.create_repo("acme/other", &[]);
    github.install_app(&["acme/web", "acme/other"]);

    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install
        .env(
            "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
            github.ca_file.to_str().unwrap(),
        )
        .env("AIRLOCK_GITHUB_API_URL", &github.api_url)
        .env("AIRLOCK_GITHUB_WEB_URL", "https://github.test")
        .env("AIRLOCK_GITHUB_GIT_UPSTREAM", &github.git_url)
        .env("AIRLOCK_GITHUB_APP_ID", &github.app_id.to_string())
        .env("AIRLOCK_GITHUB_APP_CREDENTIAL", "gh-app")
        .env("AIRLOCK_GITHUB_WEBHOOK_SECRET_CREDENTIAL", "gh-hook");
    install.ok(&["migrate"]);
    install.ok(&[
        "human",
        "add",
        "--name",
        "Ada",
        "--email",
        "ada@example.com",
        "--admin",
    ]);
    // A value that is not a private key is refused with what to do.
    let bad = install.run_with_stdin(
        &["credential", "set", "gh-app", "--kind", "github-app"],
        b"not a key",
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("store the .pem file GitHub gave"),
        "{}",
        stderr(&bad)
    );
    let out = install.run_with_stdin(
        &["credential", "set", "gh-app", "--kind", "github-app"],
        github.app_key_pem.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let profile = format!(
        r#"name = "app"
[agent]
kind = "command"
command = '''
cd "$HOME"
git clone -q https://github.test/acme/web.git web && cd web \
  && echo app > APP.md && git add APP.md \
  && git -c user.name=Agent -c user.email=agent@example.com commit -qm "via the app" \
  && git push -q origin "HEAD:refs/heads/$AIRLOCK_BRANCH" && echo "web: pushed"
git ls-remote https://github.test/acme/web.git main >/dev/null && echo "web: listed again"
git clone -q https://github.test/acme/other.git "$HOME/other" 2>&1 | tr -d '\n' | sed 's/^/other: /'; echo
'''
[[egress]]
host = "github.test"
credential = "gh-app"
inject = {{ kind = "basic", username = "x-access-token" }}
upstream = "{git}"
"#,
        git = github.git_url
    );
    let path = install.path().join("app.toml");
    std::fs::write(&path, profile).unwrap();
    install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    let _server = Server::start(&install);
    let install = std::sync::Arc::new(install);
    let i2 = install.clone();
    let out = tokio::task::spawn_blocking(move || {
        i2.run(&["run", "--repo", "acme/web", "--profile", "app", "push"])
    })
    .await
    .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert_eq!(line(&text, "web: "), "web: pushed");
    assert!(text.contains("web: listed again"), "{text}");
    let other = line(&text, "other: ");
    assert!(
        other.contains("Permission to acme/other.git denied"),
        "the token reaches only the session's repository: {other}"
    );
    let branch = airlock_tests::git::in_bare(&web, &["branch", "--format=%(refname:short)"])
        .unwrap()
        .lines()
        .find(|b| b.starts_with("airlock/"))
        .expect("the session branch was pushed")
        .to_string();
    let log = airlock_tests::git::in_bare(&web, &["log", "--format=%s", &branch]).unwrap();
    assert_eq!(log, "via the app\nseed\n");
    // One token, for the session's repository only, with only what git needs, reused for the
    // later requests.
    assert_eq!(
        github.token_requests(),
        vec![
            serde_json::json!({"repositories": ["web"], "permissions": {"contents": "write", "metadata": "read"}})
        ]
    );
    assert!(github.unexpected().is_empty(), "{:?}", github.unexpected());
    let audit = install.ok(&["audit", "export"]);
    assert!(!audit.contains("ghs_") && !text.contains("ghs_"));
    assert!(!audit.contains("PRIVATE KEY"));
}
