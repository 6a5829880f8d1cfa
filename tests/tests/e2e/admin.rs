//! The admin page in a real browser: headless Chromium driven through chromedriver (Debian's
//! packages) from Rust with fantoccini. A person signs in, watches a running session's log
//! grow without reloading, stops it, sets a credential whose value then appears in no page
//! and no response, and hostile text (agent output, a profile's description, a person's
//! name) is shown as text and never runs. A form without its CSRF token gets 403; the pages
//! fit a 375-pixel phone.
//!
//! Needs root, Docker, the base image, chromium and chromium-driver (scripts/test installs
//! them all).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::sessions::{detach, install_on, state_of};
use airlock_tests::{free_port, Engine, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";
/// What hostile text tries to do: set this global.
const XSS: &str = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>";

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is not installed; scripts/test installs it");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1200,900",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("cannot start a Chromium session");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    async fn pwned(&self) -> bool {
        !self
            .js("return typeof window.__pwned === 'undefined';")
            .await
            .as_bool()
            .unwrap()
    }

    async fn text(&self) -> String {
        self.js("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn wait_text(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text().await;
            if t.contains(what) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what:?}:\n{t}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_a_session_live_sets_a_credential_and_nothing_hostile_runs() {
    let slow =
        format!("for i in 1 2 3 4 5 6 7 8; do echo \"line $i {XSS}\"; sleep 1; done; sleep 300");
    let mut install = install_on(Engine::Sqlite, &[]).await;
    let profile = install.path().join("slow.toml");
    std::fs::write(
        &profile,
        format!("name = \"slow\"\ndescription = '''Runs {XSS}'''\n[agent]\nkind = \"command\"\ncommand = '''{slow}'''\n"),
    )
    .unwrap();
    install.ok(&["profile", "apply", "-f", profile.to_str().unwrap()]);
    let quick = install.path().join("quick.toml");
    std::fs::write(
        &quick,
        "name = \"quick\"\n[agent]\nkind = \"command\"\ncommand = 'echo \"started from the page: $AIRLOCK_PROMPT\"'\n",
    )
    .unwrap();
    install.ok(&["profile", "apply", "-f", quick.to_str().unwrap()]);
    // Ada can sign in; a human's name is hostile too.
    let out = install.run_with_stdin(
        &["human", "password", "ada@example.com"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", airlock_tests::stderr(&out));
    let out = install.run_with_stdin(
        &[
            "human",
            "add",
            "--name",
            "Mallory <img src=x onerror=window.__pwned=3>",
            "--email",
            "mallory@example.com",
            "--password-stdin",
        ],
        b"short\n",
    );
    assert!(!out.status.success(), "a short password is refused");
    install.ok(&[
        "human",
        "add",
        "--name",
        "Mallory <img src=x onerror=window.__pwned=3>",
        "--email",
        "mallory@example.com",
    ]);
    // A profile name cannot carry markup at all.
    let bad = install.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"<script>\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = install.run(&["profile", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success() && airlock_tests::stderr(&out).contains("profile field `name`"));
    let public = format!("http://{}", install_env(&install, "AIRLOCK_SERVER_LISTEN"));
    install.env("AIRLOCK_SERVER_PUBLIC_URL", &public);
    let server = Server::start(&install);
    let base = format!("http://127.0.0.1:{}", server.port);
    let id = detach(&install, "slow", "count slowly");

    let b = Browser::start().await;
    // Signed out: the pages send you to sign in.
    b.client.goto(&format!("{base}/credentials")).await.unwrap();
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    b.fill("input[name=email]", "ada@example.com").await;
    b.fill("input[name=password]", "not the password").await;
    b.click("form button").await;
    b.wait_text("The email or the password is wrong.", 10).await;
    b.fill("input[name=email]", "ada@example.com").await;
    b.fill("input[name=password]", PASSWORD).await;
    b.click("form button").await;
    b.wait_text("Sessions per day", 10).await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/overview");
    let cookies = b.client.get_all_cookies().await.unwrap();
    let session_cookie = cookies
        .iter()
        .find(|c| c.name() == "airlock_session")
        .expect("a session cookie");
    assert_eq!(session_cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", session_cookie.same_site()), "Some(Strict)");

    // The running session's log grows while the page stays loaded.
    b.client
        .goto(&format!("{base}/sessions/{id}"))
        .await
        .unwrap();
    b.js("window.__marker = 'still the same page'; return 1;")
        .await;
    let t = b.wait_text("line 2 ", 30).await;
    assert!(
        !t.contains("line 6 "),
        "the page was opened early in the run:\n{t}"
    );
    let t = b.wait_text("line 6 ", 30).await;
    assert_eq!(
        b.js("return window.__marker;").await,
        json!("still the same page"),
        "no reload"
    );
    assert!(
        t.contains(&format!("line 6 {XSS}")),
        "hostile output is shown as text:\n{t}"
    );
    assert!(!b.pwned().await, "agent output ran as script");
    // The plan is on the page.
    assert!(t.contains("Plan") && t.contains("Profile slow v1"), "{t}");

    // Stop it from the page.
    b.click("form[action$='/stop'] button").await;
    b.wait_text("stopped by Ada Lovelace on the admin page", 20)
        .await;
    assert_eq!(state_of(&install, &id), "cancelled");

    // A new session from the page: Ada's, through the same service (its audit row says so).
    b.client.goto(&format!("{base}/sessions")).await.unwrap();
    b.click("details.new-session summary").await;
    b.fill("form[action='/sessions/new'] input[name=repo]", "acme/web")
        .await;
    b.click("form[action='/sessions/new'] select[name=profile] option[value=quick]")
        .await;
    b.fill(
        "form[action='/sessions/new'] textarea[name=prompt]",
        "say hi",
    )
    .await;
    b.click("form[action='/sessions/new'] button").await;
    let t = b.wait_text("started from the page", 60).await;
    let path = b.client.current_url().await.unwrap().path().to_string();
    let started = path.trim_start_matches("/sessions/").to_string();
    assert!(started.starts_with("ses_") && started != id, "{path}\n{t}");
    let shown = install.json(&["session", "show", &started]);
    assert_eq!(shown["session"]["surface"], "web", "{shown}");
    assert_eq!(shown["session"]["prompt"], "say hi");
    let audit = install.ok(&["audit", "tail", "-n", "50"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("session.create") && l.contains(&started)),
        "{audit}"
    );
    // An empty prompt is refused with a reason, and starts nothing.
    b.client.goto(&format!("{base}/sessions")).await.unwrap();
    b.js("document.querySelector('details.new-session').open = true; document.querySelector(\"textarea[name=prompt]\").removeAttribute('required'); return 1;")
        .await;
    b.click("form[action='/sessions/new'] button").await;
    b.wait_text("say what the agent should do", 10).await;

    // Hostile names and descriptions elsewhere.
    b.client.goto(&format!("{base}/profiles")).await.unwrap();
    let t = b.wait_text("Profiles", 10).await;
    assert!(t.contains(&format!("Runs {XSS}")), "{t}");
    b.client.goto(&format!("{base}/humans")).await.unwrap();
    let t = b.wait_text("Humans", 10).await;
    assert!(
        t.contains("Mallory <img src=x onerror=window.__pwned=3>"),
        "{t}"
    );
    assert!(!b.pwned().await, "a name or description ran as script");

    // A credential, set from the page: its value shows up nowhere afterwards.
    let value = format!("sk-live-{}", ulid::Ulid::new().to_string().to_lowercase());
    b.client.goto(&format!("{base}/credentials")).await.unwrap();
    b.fill("input[name=name]", "web-key").await;
    b.fill("input[name=value]", &value).await;
    b.click("form.stack button").await;
    b.wait_text(
        "Stored credential web-key. Its value is never shown again.",
        10,
    )
    .await;
    assert!(!b.client.source().await.unwrap().contains(&value));
    let http = reqwest::Client::new();
    let cookie = format!("airlock_session={}", session_cookie.value());
    let mut bodies = Vec::new();
    for path in [
        "/sessions",
        &format!("/sessions/{id}"),
        "/humans",
        "/profiles",
        "/credentials",
        "/triggers",
        "/audit",
        "/audit.jsonl",
        "/audit?q=web-key",
        &format!("/sessions/{id}/events?after=0"),
        "/healthz",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r
            .headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string());
        if path != "/healthz" {
            assert!(
                csp.as_deref().is_some_and(
                    |c| c.contains("script-src 'self'") && !c.contains("unsafe-inline")
                ),
                "{path}: {csp:?}"
            );
        }
        bodies.push((path.to_string(), r.text().await.unwrap()));
    }
    for (path, body) in &bodies {
        assert!(
            !body.contains(&value),
            "{path} shows the credential's value"
        );
    }
    assert!(bodies
        .iter()
        .any(|(p, b)| p == "/audit.jsonl" && b.contains("credential.set")));
    for args in [
        vec!["--json", "credential", "list"],
        vec!["audit", "export"],
    ] {
        assert!(!install.ok(&args).contains(&value));
    }

    // Forms without their CSRF token are refused.
    for form in [
        vec![("name", "x"), ("kind", "generic"), ("value", "v")],
        vec![
            ("name", "x"),
            ("kind", "generic"),
            ("value", "v"),
            ("csrf", "guess"),
        ],
    ] {
        let r = http
            .post(format!("{base}/credentials"))
            .header("Cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(
        !install.ok(&["credential", "list"]).contains(" x "),
        "nothing was stored"
    );

    // A phone: the pages fit 375 pixels.
    b.client.set_window_size(375, 812).await.unwrap();
    for path in [
        "/sessions",
        &format!("/sessions/{id}"),
        "/credentials",
        "/audit",
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        let width = b
            .js("return document.documentElement.scrollWidth;")
            .await
            .as_u64()
            .unwrap();
        let inner = b.js("return window.innerWidth;").await.as_u64().unwrap();
        let widest = b
            .js("let w = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1); return w.map(e => e.tagName + '.' + e.className).slice(0, 5).join(', ');")
            .await;
        assert!(
            width <= inner,
            "{path} is {width} px wide on a {inner} px screen: {widest}"
        );
    }
    assert!(!b.pwned().await);
    b.client.clone().close().await.unwrap();
}

fn install_env(install: &airlock_tests::Install, key: &str) -> String {
    install
        .env_pairs()
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap()
}

/// Ten wrong passwords used to be answered at 0.05 s each and then the right one accepted.
/// Now an account is locked after five, with a doubling wait, refused before any password is
/// hashed (the right one too, until the wait ends), and each wrong one is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_account_for_a_while_and_are_audited() {
    const PASSWORD: &str = "a long test password";
    let mut install = airlock_tests::Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install.ok(&["migrate"]);
    install.add_admin();
    airlock_tests::console::set_password(&install, "ada@example.com", PASSWORD);
    let server = Server::start(&install);
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = airlock_tests::console::client();
    // The login form's CSRF token and its cookie.
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let cookie = airlock_tests::console::cookie(&form, "airlock_login");
    let csrf = cookie.trim_start_matches("airlock_login=").to_string();
    let try_password = |password: &'static str| {
        let (http, base, cookie, csrf) = (http.clone(), base.clone(), cookie.clone(), csrf.clone());
        async move {
            let r = http
                .post(format!("{base}/login"))
                .header("Cookie", cookie)
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("email", "ada@example.com"),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry, r.text().await.unwrap())
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, _, _) = try_password("guess").await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..4], [401, 401, 401, 401], "{statuses:?}");
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
    // The right password during the lock-out: refused too, with how long to wait.
    let (status, retry, page) = try_password(PASSWORD).await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("Too many wrong passwords"), "{page}");
    let wait: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Once the wait is over, the right password signs in.
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let (status, _, page) = try_password(PASSWORD).await;
    assert_eq!(status, 303, "{page}");
    // The five wrong passwords that were checked are in the audit log, with the address.
    let audit = install.ok(&["audit", "export"]);
    let failed: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["action"] == "web.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 5, "{audit}");
    assert!(failed
        .iter()
        .all(|r| r["target"] == "ada@example.com" && r["detail"]["address"] == "127.0.0.1"));
    drop(server);
}

/// The console pages: the overview (sessions per day, tokens and cost per human and profile
/// from `[prices]`, integration status), human management (add, role, disable, link, the
/// last admin kept), and a session's page with its output in one block per command and the
/// branch's changes with a diff. Each page fits 1280 and 375 pixels; with
/// `AIRLOCK_SCREENSHOTS_DIR` set (scripts/screenshots), each is saved there as a PNG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_use_and_cost_manages_humans_and_shows_changes() {
    let install = install_on(
        Engine::Sqlite,
        &[(
            "edit",
            "echo '1 test passed'; printf 'def add(a, b):\\n    return a + b\\n' > calc.py; echo done",
            "",
        )],
    )
    .await;
    std::fs::write(
        install.path().join("airlock.toml"),
        "[prices.\"gpt-test\"]\ninput = 2.0\noutput = 8.0\n",
    )
    .unwrap();
    let out = install.run_with_stdin(
        &["human", "password", "ada@example.com"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", airlock_tests::stderr(&out));
    // A local repository, so the session's branch has changes to show.
    let repo = install.path().join("calc");
    airlock_tests::git::work_tree(&repo, &[("calc.py", "def add(a, b):\n    return a - b\n")]);
    install.ok(&["repo", "add", "calc", repo.to_str().unwrap()]);
    let server = Server::start(&install);
    let base = format!("http://127.0.0.1:{}", server.port);
    let out = install.run(&["run", "--repo", "calc", "--profile", "edit", "fix add"]);
    assert!(out.status.success(), "{}", airlock_tests::stderr(&out));
    let id = install.json(&["session", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Model use as the gateway meters it: a priced model and one without a price.
    let store = install.store().await;
    let ada = store.find_human("ada@example.com").await.unwrap();
    let usage = |model: &str, i, o| airlock_core::store::NewUsage {
        session_id: Some(id.clone()),
        human_id: Some(ada.id.to_string()),
        sandbox_id: "sbx_test".into(),
        host: "api.model.test".into(),
        model: Some(model.into()),
        input_tokens: i,
        output_tokens: o,
    };
    store
        .record_usage(&[
            usage("gpt-test", 1_000_000, 250_000),
            usage("local-llm", 10, 5),
        ])
        .await
        .unwrap();
    store.close().await;

    let b = Browser::start().await;
    b.client.set_window_size(1280, 900).await.unwrap();
    b.client.goto(&format!("{base}/login")).await.unwrap();
    b.fill("input[name=email]", "ada@example.com").await;
    b.fill("input[name=password]", PASSWORD).await;
    b.click("form button").await;
    // Signed in, the console opens on the overview.
    let t = b.wait_text("Sessions per day", 10).await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/overview");
    assert!(t.contains("1 session(s) in the last 14 days"), "{t}");
    assert!(t.contains("Estimated cost: $4.00 + unpriced"), "{t}");
    assert!(t.contains("no price for local-llm"), "{t}");
    // Ada: 1,250,015 tokens; $4.00 for the priced model, and some unpriced.
    assert!(t.contains("1,250,015\t2\t$4.00 + unpriced"), "{t}");
    let bars = b
        .js("return document.querySelectorAll('svg.chart rect').length;")
        .await;
    assert_eq!(bars, json!(1), "one day with one succeeded session");
    assert!(t.contains("Docker\tthe engine answers"), "{t}");
    assert!(t.contains("Gateway\tserving sandboxes on "), "{t}");
    assert!(t.contains("GitHub\tnot configured"), "{t}");

    // Humans: add Bob, make him an admin, link his GitHub account, disable and enable him;
    // Ada, once the only enabled admin, cannot be disabled.
    b.client.goto(&format!("{base}/humans")).await.unwrap();
    b.fill("form[action='/humans'] input[name=name]", "Bob Marley")
        .await;
    b.fill(
        "form[action='/humans'] input[name=email]",
        "bob@example.com",
    )
    .await;
    b.click("form[action='/humans'] button").await;
    b.wait_text("Added Bob Marley <bob@example.com> as member.", 10)
        .await;
    let bob = "tr[data-email='bob@example.com']";
    b.click(&format!("{bob} select[name=role] option[value=admin]"))
        .await;
    b.click(&format!("{bob} form[action$='/role'] button"))
        .await;
    b.wait_text("Bob Marley is now admin.", 10).await;
    b.click(&format!("{bob} details summary")).await;
    b.fill(&format!("{bob} input[name=external_id]"), "9919")
        .await;
    b.fill(&format!("{bob} input[name=handle]"), "bobm").await;
    b.click(&format!("{bob} form[action$='/link'] button"))
        .await;
    let t = b
        .wait_text("Linked github account bobm to Bob Marley.", 10)
        .await;
    assert!(t.contains("github bobm (github.com)"), "{t}");
    b.click(&format!("{bob} form[action$='/disable'] button"))
        .await;
    b.wait_text("Disabled Bob Marley", 10).await;
    let ada_row = "tr[data-email='ada@example.com']";
    b.click(&format!("{ada_row} form[action$='/disable'] button"))
        .await;
    b.wait_text(
        "cannot disable ada@example.com: they are the last enabled admin",
        10,
    )
    .await;
    // Disabled, Bob starts nothing.
    let refused = install.run(&[
        "--as",
        "bob@example.com",
        "run",
        "--repo",
        "calc",
        "--profile",
        "edit",
        "x",
    ]);
    assert!(
        airlock_tests::stderr(&refused).contains("bob@example.com is disabled in Airlock"),
        "{}",
        airlock_tests::stderr(&refused)
    );
    b.click(&format!("{bob} form[action$='/enable'] button"))
        .await;
    b.wait_text("Enabled Bob Marley.", 10).await;
    let audit = install.json(&["audit", "tail", "-n", "20"]);
    for action in [
        "human.add",
        "human.role",
        "identity.link",
        "human.disable",
        "human.enable",
    ] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["actor"] == format!("human:{}", ada.id)),
            "{action} by Ada:\n{audit:#}"
        );
    }

    // The audit log reads as who did what: names, and details as key and value.
    b.client
        .goto(&format!("{base}/audit?q=human.role"))
        .await
        .unwrap();
    let row = b
        .js("let r = [...document.querySelectorAll('tr.audit-row')].find(r => r.innerText.includes('human.role')); return r ? r.innerText : '';")
        .await;
    let row = row.as_str().unwrap_or("");
    assert!(
        row.contains("Ada Lovelace") && row.contains("role\nadmin"),
        "{row:?}"
    );

    // The session: output in one block, the branch's changes with the diff.
    b.client
        .goto(&format!("{base}/sessions/{id}"))
        .await
        .unwrap();
    let t = b.wait_text("Changes", 10).await;
    assert!(t.contains("1 file(s) changed"), "{t}");
    assert!(t.contains("calc.py\t+1\t-1"), "{t}");
    let diff = b
        .js("return [...document.querySelectorAll('pre.diff .add, pre.diff .del')].map(e => e.className + ':' + e.textContent).join('|');")
        .await;
    assert_eq!(diff, json!("del:-    return a - b|add:+    return a + b"));
    let blocks = b
        .js("return [...document.querySelectorAll('#log details.step')].map(d => d.querySelector('pre').textContent).join('|');")
        .await;
    assert_eq!(
        blocks,
        json!("1 test passed\ndone\n"),
        "one block for the command's output"
    );

    // Every page at both widths; screenshots when asked for.
    let shots = std::env::var_os("AIRLOCK_SCREENSHOTS_DIR").map(std::path::PathBuf::from);
    let pages = [
        ("overview", "/overview".to_string()),
        ("sessions", "/sessions".to_string()),
        ("session", format!("/sessions/{id}")),
        ("humans", "/humans".to_string()),
        ("profiles", "/profiles".to_string()),
        ("credentials", "/credentials".to_string()),
        ("triggers", "/triggers".to_string()),
        ("audit", "/audit".to_string()),
    ];
    for (width, height, label) in [(1280, 900, "desktop"), (375, 812, "phone")] {
        b.client.set_window_size(width, height).await.unwrap();
        for (name, path) in &pages {
            b.client.goto(&format!("{base}{path}")).await.unwrap();
            let overflow = b
                .js("return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).map(e => e.tagName + '.' + e.className).slice(0, 5).join(', ');")
                .await;
            assert_eq!(overflow, json!(""), "{path} overflows {width} px");
            if let Some(dir) = &shots {
                std::fs::create_dir_all(dir).unwrap();
                let png = b.client.screenshot().await.unwrap();
                std::fs::write(dir.join(format!("{name}-{label}.png")), png).unwrap();
                if *name == "session" {
                    b.js("document.getElementById('changes').scrollIntoView(); return 1;")
                        .await;
                    let png = b.client.screenshot().await.unwrap();
                    std::fs::write(dir.join(format!("session-changes-{label}.png")), png).unwrap();
                }
            }
        }
    }
    assert!(!b.pwned().await);
    b.client.clone().close().await.unwrap();
    drop(server);
}
