//! Seven ways in, one policy, through each surface's real entry point: a Slack command and
//! thread, Slack's Stop and Retry buttons, a Discord mention and thread, a GitHub comment,
//! `airlock run` and `airlock session cancel`, the admin page, and a signed webhook trigger.
//! Each refuses the same request with the same sentence and no audit row, answers a request
//! in a busy conversation with the same words, and writes exactly one audit row of the same
//! shape for each change (start, stop, follow-up, retry), naming the person who acted.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use airlock_tests::chats::{
    self, DiscordSide, SlackSide, DISCORD_CHANNEL, SLACK_CHANNEL, SLACK_TEAM,
};
use airlock_tests::discord::BOT;
use airlock_tests::github::comment_fixture;
use airlock_tests::slack::BOT_USER;
use airlock_tests::stack::Stack;
use airlock_tests::{stderr, stdout, Engine};
use serde_json::{json, Value};

const REPO: &str = "Codertocat/Hello-World";
const ISSUE: u64 = 1;
/// Bob on each platform: the fixtures' GitHub commenter, a Slack and a Discord user.
const BOB_GITHUB: (&str, &str) = ("21031067", "Codertocat");
const BOB_SLACK: &str = "U0BOB0001";
const MAL_SLACK: &str = "U0MAL0001";
const BOB_DISCORD: u64 = 53908232506183680;

/// What everyone is told when Bob asks for the admins' profile.
const REFUSED: &str = "you may not use profile `admins`; an admin can add you to its `access`";
/// What everyone is told when they ask while their session works.
const BUSY: &str = "is still working on the previous request";

/// The audit actions of a change a person (or trigger) makes to a session.
const CHANGES: [&str; 5] = [
    "session.create",
    "session.follow_up",
    "session.retry",
    "session.cancel",
    "trigger.fire",
];

struct World {
    stack: Stack,
    slack: SlackSide,
    discord: DiscordSide,
    bob: String,
    ada: String,
}

/// A conversation on a surface, as that surface names it.
#[derive(Clone, Debug)]
enum Conv {
    /// The thread under this Slack message.
    Slack(String),
    /// This Discord thread.
    Discord(u64),
    /// The GitHub issue.
    Github,
    /// The command line names the session.
    Cli(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    Slack,
    Discord,
    Github,
    Cli,
}

impl Way {
    fn surface(self) -> &'static str {
        match self {
            Way::Slack => "slack",
            Way::Discord => "discord",
            Way::Github => "github",
            Way::Cli => "cli",
        }
    }
}

impl World {
    async fn new() -> World {
        let slack = SlackSide::start().await;
        let discord = DiscordSide::start().await;
        let mut stack = Stack::new(Engine::Sqlite, vec![], REPO, &[("README", "hi\n")], |i| {
            slack.configure(i);
            discord.configure(i);
        })
        .await;
        let install = &stack.install;
        SlackSide::credentials(install);
        DiscordSide::credentials(install);
        for (name, email) in [("Bob", "bob@example.com"), ("Mallory", "mal@example.com")] {
            install.ok(&["human", "add", "--name", name, "--email", email]);
        }
        chats::link(
            install,
            "bob@example.com",
            "slack",
            SLACK_TEAM,
            BOB_SLACK,
            "bob",
        );
        chats::link(
            install,
            "mal@example.com",
            "slack",
            SLACK_TEAM,
            MAL_SLACK,
            "mal",
        );
        DiscordSide::link(install, "bob@example.com", BOB_DISCORD, "bob");
        chats::link(
            install,
            "bob@example.com",
            "github",
            "",
            BOB_GITHUB.0,
            BOB_GITHUB.1,
        );
        stack.github.grant(REPO, BOB_GITHUB.1, "write");
        stack
            .github
            .open_issue(REPO, ISSUE, "Spelling error in the README file", None);
        stack.profile("name = \"hold\"\nrepos = [\"Codertocat/*\"]\n[agent]\nkind = \"command\"\ncommand = \"sleep 300\"\n");
        stack.profile("name = \"admins\"\n[access]\nroles = [\"admin\"]\n[agent]\nkind = \"command\"\ncommand = \"true\"\n");
        let humans = install.json(&["human", "list"]);
        let id_of = |email: &str| {
            humans
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["email"] == email)
                .map(|h| h["id"].as_str().unwrap().to_string())
                .unwrap()
        };
        let (bob, ada) = (id_of("bob@example.com"), id_of("ada@example.com"));
        stack.start();
        discord.connected().await;
        World {
            stack,
            slack,
            discord,
            bob,
            ada,
        }
    }

    fn url(&self) -> String {
        self.stack.url()
    }

    async fn wait<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        airlock_tests::poll(what, secs, f, || {
            format!(
                "Slack {:#?}\nDiscord {:?}\nGitHub {:#?}\n{}",
                self.slack.slack.messages(SLACK_CHANNEL),
                self.discord.discord.problems(),
                self.stack.github.comments(REPO, ISSUE),
                self.stack.server.as_ref().unwrap().log()
            )
        })
        .await
    }

    /// The newest audit row's sequence number.
    async fn head(&self) -> i64 {
        let rows = self.stack.json(&["audit", "tail", "-n", "1"]).await;
        rows.as_array()
            .and_then(|r| r.last())
            .map_or(0, |r| r["seq"].as_i64().unwrap())
    }

    /// The rows of changes to sessions written after `seq`.
    async fn changes_since(&self, seq: i64) -> Vec<Value> {
        let rows = self.stack.json(&["audit", "tail", "-n", "1000"]).await;
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["seq"].as_i64().unwrap() > seq)
            .filter(|r| CHANGES.contains(&r["action"].as_str().unwrap()))
            .cloned()
            .collect()
    }

    /// Exactly one change since `seq`: `action` on `session` by `actor` on `surface`.
    async fn one_change(&self, seq: i64, action: &str, session: &str, actor: &str, surface: &str) {
        let rows = self.changes_since(seq).await;
        assert_eq!(rows.len(), 1, "{action} on {surface}: {rows:#?}");
        let r = &rows[0];
        assert_eq!(
            (
                r["action"].as_str(),
                r["actor"].as_str(),
                r["target"].as_str(),
                r["session_id"].as_str(),
                r["detail"]["surface"].as_str()
            ),
            (
                Some(action),
                Some(actor),
                Some(session),
                Some(session),
                Some(surface)
            ),
            "{r:#}"
        );
    }

    async fn no_change(&self, seq: i64, what: &str) {
        let rows = self.changes_since(seq).await;
        assert!(rows.is_empty(), "{what} wrote audit rows: {rows:#?}");
    }

    async fn sessions(&self) -> Vec<Value> {
        let list = self
            .stack
            .json(&["session", "list", "--limit", "1000"])
            .await;
        list.as_array().unwrap().clone()
    }

    async fn state(&self, session: &str) -> String {
        let s = self.stack.json(&["session", "show", session]).await;
        s["session"]["state"].as_str().unwrap().to_string()
    }

    async fn wait_state(&self, session: &str, want: &str) {
        self.wait_state_in(session, &[want]).await
    }

    /// Waits until the session is queued or working again.
    async fn wait_live(&self, session: &str) {
        self.wait_state_in(session, &["queued", "starting", "running"])
            .await
    }

    async fn wait_state_in(&self, session: &str, want: &[&str]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !want.contains(&self.state(session).await.as_str()) {
            if std::time::Instant::now() >= deadline {
                let shown = self.stack.json(&["session", "show", session]).await;
                panic!(
                    "{session} never became {want:?}: {:#}\nSlack {:#?}\nGitHub {:#?}\n{}",
                    shown["session"],
                    self.said(Way::Slack),
                    self.said(Way::Github),
                    self.stack.server.as_ref().unwrap().log()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The bot's top-level Slack messages (each the status of one session's thread).
    fn slack_roots(&self) -> Vec<String> {
        self.slack
            .slack
            .messages(SLACK_CHANNEL)
            .into_iter()
            .filter(|m| m.user == BOT_USER && m.thread_ts.is_none())
            .map(|m| m.ts)
            .collect()
    }

    /// Everything the bot has said to Bob on `way`, oldest first.
    fn said(&self, way: Way) -> Vec<String> {
        match way {
            Way::Slack => {
                let mut out: Vec<String> = self
                    .slack
                    .slack
                    .messages(SLACK_CHANNEL)
                    .into_iter()
                    .filter(|m| m.user == BOT_USER && m.thread_ts.is_some())
                    .map(|m| m.shown())
                    .collect();
                out.extend(
                    self.slack
                        .slack
                        .ephemerals()
                        .into_iter()
                        .filter(|e| e.user == BOB_SLACK)
                        .map(|e| e.text),
                );
                out
            }
            Way::Discord => self
                .discord
                .discord
                .threads(DISCORD_CHANNEL)
                .into_iter()
                .flat_map(|t| self.discord.discord.messages(t.id))
                .filter(|m| m.author == BOT)
                .map(|m| m.content)
                .collect(),
            Way::Github => self
                .stack
                .github
                .comments(REPO, ISSUE)
                .into_iter()
                .filter(|c| c.author == self.stack.github.bot)
                .map(|c| c.body)
                .collect(),
            Way::Cli => vec![],
        }
    }

    /// Bob writes `text` on `way`, in `conv` or anew; returns what he is told that has
    /// `expect` in it (Slack's command and the command line answer at once).
    async fn ask(&self, way: Way, conv: Option<&Conv>, text: &str, expect: &str) -> String {
        let seen = self.said(way);
        if let Some(answer) = self.send(way, conv, text).await {
            assert!(answer.contains(expect), "{way:?}: {answer}");
            return answer;
        }
        self.wait(&format!("an answer with {expect:?} on {way:?}"), 30, || {
            self.said(way)
                .into_iter()
                .find(|m| m.contains(expect) && !seen.contains(m))
        })
        .await
    }

    /// Sends Bob's `text` on `way`, in `conv` or anew; the answer when it comes at once.
    async fn send(&self, way: Way, conv: Option<&Conv>, text: &str) -> Option<String> {
        match (way, conv) {
            (Way::Slack, None) => {
                let answer = self.slack.slash(&self.url(), BOB_SLACK, text).await;
                Some(answer["text"].as_str().unwrap().to_string())
            }
            (Way::Slack, Some(Conv::Slack(root))) => {
                let status = self
                    .slack
                    .reply_in_thread(&self.url(), BOB_SLACK, root, text)
                    .await;
                assert_eq!(status, 200);
                None
            }
            (Way::Discord, None) => {
                let text = format!("<@{BOT}> {text}");
                self.discord
                    .discord
                    .say(DISCORD_CHANNEL, BOB_DISCORD, "bob", &text);
                None
            }
            (Way::Discord, Some(Conv::Discord(thread))) => {
                self.discord.discord.say(*thread, BOB_DISCORD, "bob", text);
                None
            }
            (Way::Github, None | Some(Conv::Github)) => {
                let id = 900_000_000 + ulid::Ulid::new().random() as u64 % 1_000_000;
                let body = format!("@airlock {text}");
                self.stack
                    .github
                    .put_comment(REPO, ISSUE, id, BOB_GITHUB.1, &body);
                let mut p = comment_fixture("issue_comment.created");
                p["comment"]["body"] = json!(body);
                p["comment"]["id"] = json!(id);
                let (status, _) = self
                    .stack
                    .github_webhook(
                        "issue_comment",
                        &ulid::Ulid::new().to_string(),
                        &serde_json::to_vec(&p).unwrap(),
                        None,
                    )
                    .await;
                assert_eq!(status, 202);
                None
            }
            (Way::Cli, conv) => {
                let mut args: Vec<String> = ["run", "--as", "bob@example.com", "--detach"]
                    .map(String::from)
                    .to_vec();
                if let Some(Conv::Cli(id)) = conv {
                    args.extend(["--session".into(), id.clone(), text.into()]);
                } else {
                    // The command line takes as flags what the chats take in the text.
                    let (options, prompt): (Vec<&str>, Vec<&str>) =
                        text.split(' ').partition(|w| w.contains('='));
                    args.extend(options.iter().map(|o| format!("--{o}")));
                    args.push(prompt.join(" "));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = self.stack.airlock(&args).await;
                Some(format!("{}{}", stdout(&out), stderr(&out)))
            }
            (way, conv) => panic!("{way:?} has no conversation {conv:?}"),
        }
    }

    /// Bob asks on `way` for work that holds its sandbox; the session and its conversation.
    async fn start(&self, way: Way) -> (String, Conv) {
        let known: Vec<String> = self
            .sessions()
            .await
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let (roots, threads) = (
            self.slack_roots().len(),
            self.discord.discord.threads(DISCORD_CHANNEL).len(),
        );
        let answer = self
            .send(way, None, &format!("hold on repo={REPO} profile=hold"))
            .await;
        let session = self.wait_new_session(&known).await;
        assert_eq!(session["surface"], way.surface());
        assert_eq!(session["requester_id"], self.bob.as_str());
        let id = session["id"].as_str().unwrap().to_string();
        if let Some(answer) = answer {
            assert!(answer.contains(&id), "{way:?}: {answer}");
        }
        let conv = match way {
            Way::Slack => Conv::Slack(
                self.wait("the session's Slack thread", 30, || {
                    self.slack_roots().into_iter().nth(roots)
                })
                .await,
            ),
            Way::Discord => Conv::Discord(
                self.wait("the session's Discord thread", 30, || {
                    let all = self.discord.discord.threads(DISCORD_CHANNEL);
                    all.get(threads).map(|t| t.id)
                })
                .await,
            ),
            Way::Github => Conv::Github,
            Way::Cli => Conv::Cli(id.clone()),
        };
        (id, conv)
    }

    async fn wait_new_session(&self, known: &[String]) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let fresh: Vec<Value> = self
                .sessions()
                .await
                .into_iter()
                .filter(|s| !known.contains(&s["id"].as_str().unwrap().to_string()))
                .collect();
            match fresh.len() {
                0 => {}
                1 => return fresh.into_iter().next().unwrap(),
                _ => panic!("one request made {} sessions: {fresh:#?}", fresh.len()),
            }
            assert!(std::time::Instant::now() < deadline, "no new session");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Bob stops the session of `conv` on `way`.
    async fn stop(&self, way: Way, conv: &Conv) {
        match (way, conv) {
            (Way::Cli, Conv::Cli(id)) => {
                let out = self.stack.airlock(&["session", "cancel", id]).await;
                assert!(out.status.success(), "{}", stderr(&out));
            }
            // GitHub's answer is the status comment itself.
            (Way::Github, _) => {
                self.send(way, Some(conv), "stop").await;
            }
            _ => {
                self.ask(way, Some(conv), "stop", "Stopping session").await;
            }
        }
    }
}

/// The operator at the terminal, as the CLI audits them (`cli:USER`; the tests' `USER` is
/// `tester`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_refuses_answers_and_audits_the_same_way() {
    let w = World::new().await;
    let bob = format!("human:{}", w.bob);
    for way in [Way::Slack, Way::Discord, Way::Github, Way::Cli] {
        let surface = way.surface();
        // Refused: the admins' profile. The same sentence, no session, no row.
        let before = w.head().await;
        let n = w.sessions().await.len();
        w.ask(
            way,
            None,
            &format!("fix it repo={REPO} profile=admins"),
            REFUSED,
        )
        .await;
        w.no_change(before, "a refused request").await;
        assert_eq!(
            w.sessions().await.len(),
            n,
            "a refused request made a session on {surface}"
        );

        // Started: one `session.create` row, by Bob, on this surface.
        let before = w.head().await;
        let (session, conv) = w.start(way).await;
        w.one_change(before, "session.create", &session, &bob, surface)
            .await;

        // Asked again while it works: the same words, no row.
        let before = w.head().await;
        w.ask(way, Some(&conv), "and the docs too", BUSY).await;
        w.no_change(before, "a request in a busy conversation")
            .await;

        // Stopped: one `session.cancel` row by whoever stopped it.
        let before = w.head().await;
        w.stop(way, &conv).await;
        w.wait_state(&session, "cancelled").await;
        let stopper = if way == Way::Cli {
            airlock_tests::cli_actor()
        } else {
            bob.clone()
        };
        w.one_change(before, "session.cancel", &session, &stopper, surface)
            .await;

        // Asked again in the conversation: the same session continues, one `session.follow_up`.
        let before = w.head().await;
        w.send(way, Some(&conv), "one more thing").await;
        w.wait_live(&session).await;
        w.one_change(before, "session.follow_up", &session, &bob, surface)
            .await;
        let out = w.stack.airlock(&["session", "cancel", &session]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        w.wait_state(&session, "cancelled").await;
    }
    slack_buttons(&w).await;
    admin_page(&w).await;
    webhook_trigger(&w).await;
    assert!(
        w.slack.slack.problems().is_empty(),
        "{:?}",
        w.slack.slack.problems()
    );
}

/// Slack's buttons: Mallory (who neither asked nor is an admin) is refused; Bob's Stop and
/// Retry each write one row.
async fn slack_buttons(w: &World) {
    let bob = format!("human:{}", w.bob);
    let (session, conv) = w.start(Way::Slack).await;
    let Conv::Slack(root) = conv else {
        unreachable!()
    };
    let before = w.head().await;
    let ephemerals = w.slack.slack.ephemerals().len();
    let click = SlackSide::button(MAL_SLACK, &root, "airlock_stop", &session);
    assert_eq!(w.slack.click(&w.url(), &click).await, 200);
    let told = w
        .wait("Mallory's refusal", 30, || {
            w.slack
                .slack
                .ephemerals()
                .into_iter()
                .skip(ephemerals)
                .find(|e| e.user == MAL_SLACK)
        })
        .await;
    assert!(
        told.text
            .to_lowercase()
            .contains("only the person who asked, or an admin, can do that"),
        "{told:?}"
    );
    w.no_change(before, "a stranger's Stop").await;
    assert_ne!(w.state(&session).await, "cancelled");

    let before = w.head().await;
    let click = SlackSide::button(BOB_SLACK, &root, "airlock_stop", &session);
    assert_eq!(w.slack.click(&w.url(), &click).await, 200);
    w.wait_state(&session, "cancelled").await;
    w.one_change(before, "session.cancel", &session, &bob, "slack")
        .await;

    let before = w.head().await;
    let click = SlackSide::button(BOB_SLACK, &root, "airlock_retry", &session);
    assert_eq!(w.slack.click(&w.url(), &click).await, 200);
    w.wait_live(&session).await;
    w.one_change(before, "session.retry", &session, &bob, "slack")
        .await;
    let out = w.stack.airlock(&["session", "cancel", &session]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The admin page: Ada stops Bob's session (one row, by Ada, on the web); stopping it again
/// is refused with the service's sentence and no row; the "New session" form starts one
/// (one row) or is refused like every surface (no row).
async fn admin_page(w: &World) {
    let (session, _) = w.start(Way::Cli).await;
    let cookie = airlock_tests::admin_cookie(&w.stack.install).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{}/sessions/{session}", w.url()))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
        .to_string();
    let stop = || async {
        let r = http
            .post(format!("{}/sessions/{session}/stop", w.url()))
            .header("Cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let before = w.head().await;
    let (status, _) = stop().await;
    assert_eq!(status, 303);
    w.wait_state(&session, "cancelled").await;
    w.one_change(
        before,
        "session.cancel",
        &session,
        &format!("human:{}", w.ada),
        "web",
    )
    .await;
    let before = w.head().await;
    let (status, body) = stop().await;
    assert_eq!(status, 409);
    assert!(
        body.contains(&format!(
            "session {session} is cancelled already; there is nothing to stop"
        )),
        "{body}"
    );
    w.no_change(before, "a second stop").await;

    // Ada starts a session from the page's form: one `session.create` row, hers, on the web;
    // a repository the profile may not work on is refused with the service's sentence and
    // no row.
    let start = |repo: &'static str| {
        let (http, cookie, csrf, url) = (http.clone(), cookie.clone(), csrf.clone(), w.url());
        async move {
            let r = http
                .post(format!("{url}/sessions/new"))
                .header("Cookie", &cookie)
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("repo", repo),
                    ("profile", "hold"),
                    ("prompt", "from the page"),
                ])
                .send()
                .await
                .unwrap();
            let to = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            (r.status().as_u16(), to, r.text().await.unwrap())
        }
    };
    let before = w.head().await;
    let (status, to, _) = start(REPO).await;
    assert_eq!(status, 303);
    let started = to.unwrap().trim_start_matches("/sessions/").to_string();
    w.one_change(
        before,
        "session.create",
        &started,
        &format!("human:{}", w.ada),
        "web",
    )
    .await;
    let out = w.stack.airlock(&["session", "cancel", &started]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let before = w.head().await;
    let (status, _, body) = start("Other/Repo").await;
    assert_eq!(status, 400);
    assert!(
        body.replace("&#39;", "'").contains(
            "profile `hold` may not work on Other/Repo; an admin can add it to the profile's `repos`"
        ),
        "{body}"
    );
    w.no_change(before, "a refused start").await;
}

/// A webhook trigger acts for its owner, Bob: his access holds (the admins' profile is
/// refused with the service's sentence for an owner), and a firing writes one `trigger.fire`
/// row naming the trigger.
async fn webhook_trigger(w: &World) {
    let out = w.stack.install.run_with_stdin(
        &[
            "credential",
            "set",
            "hook-secret",
            "--kind",
            "webhook-secret",
        ],
        b"s3cret-hook-key",
    );
    assert!(out.status.success());
    let add = |name: &str, profile: &str| {
        w.stack.install.json(&[
            "trigger",
            "add",
            name,
            "--kind",
            "webhook",
            "--profile",
            profile,
            "--repo",
            REPO,
            "--owner",
            "bob@example.com",
            "--secret-credential",
            "hook-secret",
            "--prompt",
            "hold on",
        ])
    };
    let post = |id: String| async move {
        let body = b"{}".to_vec();
        let mut r = reqwest::Client::new()
            .post(format!("{}/hooks/{id}", w.url()))
            .header("Content-Type", "application/json")
            .header("X-Airlock-Delivery", ulid::Ulid::new().to_string());
        let now = airlock_tests::unix_now();
        for (k, v) in airlock_tests::sign_hook("s3cret-hook-key", now, &body) {
            r = r.header(k, v);
        }
        let r = r.body(body).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let refused = add("for-admins", "admins");
    let before = w.head().await;
    let (status, answer) = post(refused["id"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("the trigger's owner bob@example.com may not use profile `admins`"),
        "{answer}"
    );
    w.no_change(before, "a refused firing").await;

    let trigger = add("holder", "hold");
    let id = trigger["id"].as_str().unwrap().to_string();
    let before = w.head().await;
    let (status, answer) = post(id.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let session = answer["session"].as_str().unwrap().to_string();
    w.one_change(
        before,
        "trigger.fire",
        &session,
        &format!("trigger:{id}"),
        "trigger",
    )
    .await;
    let shown = w.stack.json(&["session", "show", &session]).await;
    assert_eq!(shown["session"]["requester_id"], w.bob.as_str());
    let out = w.stack.airlock(&["session", "cancel", &session]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}
