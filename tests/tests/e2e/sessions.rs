//! Sessions end to end, with real Docker, the real gateway and real git: `airlock run` with the
//! built-in agent (against a strict fake model server) and with a `command` agent, cloning
//! from and pushing to the fake GitHub, which then has a pull request naming the requester.
//! Neither the model key nor a git token is ever inside the sandbox.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::process::Command;
use std::time::{Duration, Instant};

use airlock_tests::model::Step;
use airlock_tests::stack::Stack;
use airlock_tests::{stderr, stdout, Engine};
use serde_json::json;

const CALC: &str = "def add(a, b):\n    return a - b\n";
const TEST: &str = "import unittest\nfrom calc import add\n\n\
class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\
if __name__ == '__main__':\n    unittest.main()\n";

fn files() -> Vec<(&'static str, &'static str)> {
    vec![("calc.py", CALC), ("test_calc.py", TEST)]
}

/// The commit at the tip of `branch`: its author, message and the fixed file.
fn tip(stack: &Stack, branch: &str) -> (String, String, String) {
    let log = stack
        .github
        .log("acme/web", branch, "%an <%ae>%n%B")
        .unwrap_or_else(|| panic!("branch {branch} was not pushed"));
    let mut lines = log.splitn(2, '\n');
    let author = lines.next().unwrap().to_string();
    let body = lines.next().unwrap_or("").to_string();
    let calc = airlock_tests::git::in_bare(
        &stack.github.bare("acme/web"),
        &["show", &format!("{branch}:calc.py")],
    )
    .unwrap();
    (author, body, calc)
}

/// No file of the finished session's sandbox (kept as its session snapshot) holds a value.
fn assert_sandbox_clean(stack: &Stack, session: &serde_json::Value, secrets: &[String]) {
    let id = session["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let image = loop {
        let shown = stack.install.json(&["session", "show", id]);
        if let Some(img) = shown["events"].as_array().unwrap().iter().find_map(|e| {
            e["payload"]["text"]
                .as_str()
                .and_then(|t| t.strip_prefix("kept the session's files as "))
                .map(str::to_string)
        }) {
            break img;
        }
        assert!(Instant::now() < deadline, "no session snapshot was kept");
        std::thread::sleep(Duration::from_millis(200));
    };
    let patterns = stack.install.path().join("secrets.txt");
    std::fs::write(&patterns, secrets.join("\n")).unwrap();
    let scan = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -e; c=$(docker create {image} true); \
             docker cp $c:/workspace/repo/calc.py - | tar -xO | grep -c 'a + b'; \
             hits=$(docker export $c | grep -a -c -F -f {p} || true); docker rm $c >/dev/null; echo hits=$hits",
            p = patterns.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scan.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("1"), "the scan sees the sandbox's files");
    assert_eq!(
        lines.next(),
        Some("hits=0"),
        "a file in the sandbox holds a credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_agent_fixes_a_bug_and_a_pull_request_names_the_requester() {
    let script = vec![
        Step::Tools(vec![
            ("list_files", json!({})),
            ("read_file", json!({"path": "calc.py"})),
        ]),
        Step::Tools(vec![(
            "edit_file",
            json!({"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}),
        )]),
        Step::Tools(vec![(
            "shell",
            json!({"command": "python3 -m unittest -q test_calc"}),
        )]),
        Step::Answer(
            "Fixed `add`: it **subtracted**. The tests pass now. <script>alert(1)</script>",
        ),
    ];
    let mut stack = Stack::new(Engine::Sqlite, script, "acme/web", &files(), |_| {}).await;
    stack.builtin_profile();
    stack.start();
    let out = stack
        .airlock(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "builtin",
            "Fix the add function",
        ])
        .await;
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "{text}\n{err}\n{}",
        stack.server.as_ref().unwrap().log()
    );

    // What the person at the terminal saw: the steps, the answer, the pull request.
    assert!(err.contains("→ read_file: calc.py"), "{err}");
    assert!(err.contains("→ edit_file: calc.py"), "{err}");
    assert!(
        err.contains("→ shell: python3 -m unittest -q test_calc"),
        "{err}"
    );
    assert!(err.contains("✎ calc.py (edited)"), "{err}");
    assert!(text.contains("Fixed `add`"), "{text}");
    let pr_url = "https://github.test/acme/web/pull/1";
    assert!(err.contains(&format!("pull request: {pr_url}")), "{err}");

    // The model saw the test run's result (the tool loop is real), and the fake found nothing
    // wrong with any request (each carried the real key, injected by the gateway).
    let requests = stack.model.requests();
    assert_eq!(requests.len(), 4);
    let last = requests[3]["messages"].as_array().unwrap();
    let tool_result = last.iter().rev().find(|m| m["role"] == "tool").unwrap();
    assert!(
        tool_result["content"]
            .as_str()
            .unwrap()
            .starts_with("exit status 0"),
        "{tool_result}"
    );
    assert!(
        stack.model.problems().is_empty(),
        "{:?}",
        stack.model.problems()
    );

    // The branch: pushed, by the bot, with both trailers, with the fix.
    let sessions = stack.json(&["session", "list"]).await;
    let session = &sessions[0];
    let id = session["id"].as_str().unwrap();
    assert_eq!(session["state"], "succeeded", "{session}");
    let branch = format!(
        "airlock/{}-fix-the-add-function",
        id.to_lowercase().replace('_', "-")
    );
    assert_eq!(session["branch"], branch.as_str());
    assert_eq!(session["pull_request_url"], pr_url);
    let (author, body, calc) = tip(&stack, &branch);
    assert_eq!(author, "Airlock <airlock@example.com>");
    assert!(body.starts_with("Fix the add function\n"), "{body}");
    assert!(
        body.contains("Co-authored-by: Ada Lovelace <ada@example.com>\n"),
        "{body}"
    );
    assert!(body.contains(&format!("Airlock-Session: {id}")), "{body}");
    assert_eq!(calc, "def add(a, b):\n    return a + b\n");

    // The pull request: from that branch into main, naming the requester and the surface,
    // linking the session, with the agent's answer made safe.
    let pulls = stack.github.pulls("acme/web");
    assert_eq!(pulls.len(), 1);
    let pr = &pulls[0];
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str()),
        (branch.as_str(), "main")
    );
    assert_eq!(pr.title, "Fix the add function");
    assert_eq!(pr.author, "airlock[bot]");
    assert!(
        pr.body
            .contains("Requested by **Ada Lovelace** from the terminal (`airlock run`)"),
        "{}",
        pr.body
    );
    assert!(
        pr.body
            .contains(&format!("https://airlock.example.com/sessions/{id}")),
        "{}",
        pr.body
    );
    assert!(
        pr.body.contains("Fixed `add`: it **subtracted**."),
        "{}",
        pr.body
    );
    assert!(
        pr.body.contains("&lt;script&gt;") && !pr.body.contains("<script>"),
        "{}",
        pr.body
    );
    assert!(
        stack.github.unexpected().is_empty(),
        "{:?}",
        stack.github.unexpected()
    );
    // Installation tokens for this repository only, each with the least it needs: git gets
    // contents, the bot's own calls get pull requests and issues; none gets workflows.
    let requests = stack.github.token_requests();
    let git =
        json!({"repositories": ["web"], "permissions": {"contents": "write", "metadata": "read"}});
    let bot = json!({"repositories": ["web"], "permissions": {"pull_requests": "write", "issues": "write", "metadata": "read"}});
    assert!(
        requests.contains(&git) && requests.contains(&bot),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|r| r == &git || r == &bot),
        "{requests:?}"
    );

    // Neither the model key nor any git token was ever in the sandbox.
    let mut secrets = vec![stack.model_key.clone()];
    secrets.extend(stack.github.issued_tokens());
    assert!(secrets.len() >= 2);
    assert_sandbox_clean(&stack, session, &secrets);
    let audit = stack.airlock(&["audit", "export"]).await;
    for s in &secrets {
        assert!(
            !stdout(&audit).contains(s.as_str()),
            "the audit log holds a credential"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_agent_session_pushes_its_change_and_opens_a_pull_request() {
    let mut stack = Stack::new(Engine::Sqlite, vec![], "acme/web", &files(), |_| {}).await;
    stack.profile(
        "name = \"fix\"\n[agent]\nkind = \"command\"\ncommand = \"sed -i 's/a - b/a + b/' calc.py && python3 -m unittest -q test_calc 2>&1 && echo tests passed\"\n",
    );
    stack.start();
    let out = stack
        .airlock(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "fix",
            "make add add",
        ])
        .await;
    let (text, err) = (stdout(&out), stderr(&out));
    if !out.status.success() {
        let s = stack.json(&["session", "list"]).await;
        let shown = stack
            .json(&["session", "show", s[0]["id"].as_str().unwrap()])
            .await;
        panic!(
            "{text}\n{err}\n{shown:#}\n{}",
            stack.server.as_ref().unwrap().log()
        );
    }
    assert!(text.contains("tests passed"), "{text}");
    let session = &stack.json(&["session", "list"]).await[0];
    let branch = session["branch"].as_str().unwrap().to_string();
    assert!(
        branch.starts_with("airlock/ses-") && branch.ends_with("-make-add-add"),
        "{branch}"
    );
    let (author, body, calc) = tip(&stack, &branch);
    assert_eq!(author, "Airlock <airlock@example.com>");
    assert!(
        body.contains("Co-authored-by: Ada Lovelace <ada@example.com>"),
        "{body}"
    );
    assert!(calc.contains("a + b"));
    let pulls = stack.github.pulls("acme/web");
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert!(pulls[0].body.contains("Requested by **Ada Lovelace**"));
    assert!(
        err.contains("pull request: https://github.test/acme/web/pull/1"),
        "{err}"
    );

    // A follow-up in the same session continues from its files and pushes to the same
    // branch; no second pull request.
    let id = session["id"].as_str().unwrap();
    let out = stack.airlock(&["run", "--session", id, "again"]).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let shown = stack.json(&["session", "show", id]).await;
    assert_eq!(shown["session"]["state"], "succeeded");
    // The fix was already there, so nothing changed: nothing pushed, still one pull request.
    assert!(stderr(&out).contains("nothing to push"), "{}", stderr(&out));
    assert_eq!(stack.github.pulls("acme/web").len(), 1);
}

/// The real Codex CLI, installed with npm (from a local registry holding the real package)
/// into the profile's snapshot, talks to the fake model through the gateway over HTTP
/// (server-sent events), edits the file, runs the tests, and the session pushes the branch
/// and opens the pull request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_from_npm_runs_the_same_session_through_the_gateway() {
    codex_session(false).await;
}

/// The same with the provider's WebSocket transport (as Codex's built-in OpenAI provider
/// uses it, `permessage-deflate` offered): the gateway relays, scrubs and meters the frames,
/// and the fake model sees the real key and no compression extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_over_a_websocket_runs_the_same_session_through_the_gateway() {
    codex_session(true).await;
}

async fn codex_session(websocket: bool) {
    let registry =
        airlock_tests::registry::FakeRegistry::start(&airlock_tests::registry::cache_dir()).await;
    let version = registry
        .latest("@openai/codex")
        .expect("the cache holds @openai/codex");
    let script = vec![
        Step::Tools(vec![(
            "exec_command",
            json!({"cmd": "sed -i 's/a - b/a + b/' calc.py && python3 -m unittest -q test_calc && echo TESTS-OK"}),
        )]),
        Step::Answer("Fixed `add` with Codex; the tests pass."),
    ];
    let mut stack = Stack::new(Engine::Sqlite, script, "acme/web", &files(), |_| {}).await;
    stack.trust(&registry.ca_pem);
    stack.profile(&format!(
        r#"name = "codex"
[sandbox]
setup = ["npm install --global --prefix \"$HOME/.local\" --no-audit --no-fund --no-update-notifier @openai/codex@{version}", "\"$HOME/.local/bin/codex\" --version"]
[agent]
kind = "codex"
model = "fake-model"
args = ["-c", "model_provider=\"airlock\"", "-c", 'model_providers.airlock={{name="Airlock gateway", base_url="https://{model}/v1", env_key="OPENAI_API_KEY", wire_api="responses", supports_websockets={websocket}}}']
[env]
PATH = "/home/agent/.local/bin:/usr/local/bin:/usr/bin:/bin"
[limits]
wall_clock_secs = 600
[[egress]]
host = "registry.npmjs.org"
methods = ["GET"]
upstream = "{registry}"
{route}"#,
        model = airlock_tests::stack::MODEL_HOST,
        registry = registry.url,
        route = stack.model_route()
    ));
    stack.start();
    let out = stack
        .airlock(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "codex",
            "Fix the add function",
        ])
        .await;
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "{text}\n{err}\n{}",
        stack.server.as_ref().unwrap().log()
    );
    assert!(
        err.contains(&format!("codex-cli {version}")),
        "the setup step ran codex: {err}"
    );
    assert!(text.contains("TESTS-OK"), "{text}");
    assert!(text.contains("Fixed `add` with Codex"), "{text}");
    assert!(
        registry.unexpected().is_empty(),
        "{:?}",
        registry.unexpected()
    );
    // Codex spoke the Responses API through the gateway with the real key.
    let requests = stack.model.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(
        requests[1]["input"].to_string().contains("TESTS-OK"),
        "Codex sent the command's output back"
    );
    assert!(
        stack.model.problems().is_empty(),
        "{:?}",
        stack.model.problems()
    );
    let want = if websocket { "websocket" } else { "http" };
    assert_eq!(stack.model.transports(), vec![want; 2]);
    if websocket {
        // The gateway relays frames it can read: no compression extension reaches upstream.
        let offers = stack.model.ws_offers();
        assert!(
            !offers.is_empty() && offers.iter().all(Option::is_none),
            "{offers:?}"
        );
    }
    let session = &stack.json(&["session", "list"]).await[0];
    let branch = session["branch"].as_str().unwrap();
    let (author, body, calc) = tip(&stack, branch);
    assert_eq!(author, "Airlock <airlock@example.com>");
    assert!(
        body.contains("Co-authored-by: Ada Lovelace <ada@example.com>"),
        "{body}"
    );
    assert!(calc.contains("a + b"));
    assert_eq!(stack.github.pulls("acme/web").len(), 1);
    let mut secrets = vec![stack.model_key.clone()];
    secrets.extend(stack.github.issued_tokens());
    assert_sandbox_clean(&stack, session, &secrets);
}

/// Small installs: a personal access token instead of a GitHub App, for git and the pull
/// request alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_access_token_works_instead_of_an_app() {
    let mut stack = Stack::with_auth(
        Engine::Sqlite,
        vec![],
        "acme/web",
        &files(),
        airlock_tests::stack::GithubAuth::Token { login: "ada-bot" },
        |_| {},
    )
    .await;
    stack.profile("name = \"fix\"\n[agent]\nkind = \"command\"\ncommand = \"sed -i 's/a - b/a + b/' calc.py\"\n");
    stack.start();
    let out = stack
        .airlock(&["run", "--repo", "acme/web", "--profile", "fix", "fix add"])
        .await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let pulls = stack.github.pulls("acme/web");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].author, "ada-bot", "opened with the token");
    assert!(
        stack.github.token_requests().is_empty(),
        "no App tokens were minted"
    );
    let (_, _, calc) = tip(&stack, &pulls[0].head);
    assert!(calc.contains("a + b"));
    assert!(
        stack.github.unexpected().is_empty(),
        "{:?}",
        stack.github.unexpected()
    );
}

/// The per-human daily model budget: once a human's sessions have spent it, their next
/// session's model calls are refused with a clear error (and the session says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_humans_daily_model_budget_refuses_further_calls_once_spent() {
    let script = vec![Step::Answer("First answer."), Step::Answer("never sent")];
    let mut stack = Stack::new(Engine::Sqlite, script, "acme/web", &files(), |install| {
        install.env("AIRLOCK_GATEWAY_HUMAN_DAILY_TOKEN_BUDGET", "100");
    })
    .await;
    stack.builtin_profile();
    stack.start();
    let first = stack
        .airlock(&["run", "--repo", "acme/web", "--profile", "builtin", "look"])
        .await;
    assert!(
        first.status.success(),
        "{}\n{}",
        stdout(&first),
        stderr(&first)
    );
    // 120 tokens used of 100: the next session's first call is refused.
    let second = stack
        .airlock(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "builtin",
            "look again",
        ])
        .await;
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("the requester's daily model budget is spent (120 of 100 tokens today)")
            && err.contains("gateway.human_daily_token_budget"),
        "{err}"
    );
    assert_eq!(
        stack.model.requests().len(),
        1,
        "the refused call never reached the model"
    );
}
