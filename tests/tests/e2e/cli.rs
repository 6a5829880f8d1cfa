//! The `airlock` command line as an administrator uses it, run as a real process against real
//! databases.

use std::time::{Duration, Instant};

use airlock_tests::{free_port, stderr, stdout, Engine, Install};

airlock_tests::on_both_engines!(
    an_admin_sets_up_people_profiles_and_credentials,
    audit_verify_catches_tampering
);

const PROFILE: &str = r#"
name = "rust-ci"
description = "Rust services"
repos = ["acme/*"]

[agent]
kind = "command"
command = "cargo test"

[[egress]]
host = "api.openai.com"
credential = "openai"
inject = { kind = "bearer" }
"#;

async fn an_admin_sets_up_people_profiles_and_credentials(engine: Engine) {
    let install = Install::new(engine).await;
    install.ok(&["migrate"]);

    let ada = install.json(&[
        "human",
        "add",
        "--name",
        "Ada Lovelace",
        "--email",
        "ada@example.com",
        "--admin",
    ]);
    assert_eq!(ada["role"], "admin");
    let text = install.ok(&[
        "human",
        "add",
        "--name",
        "Bob",
        "--email",
        "bob@example.com",
    ]);
    assert!(
        text.starts_with("Added Bob <bob@example.com> as member (hum_"),
        "{text}"
    );

    for (provider, workspace, id) in [
        ("slack", "T0001", "U0ADA"),
        ("github", "", "583231"),
        ("discord", "G1", "8035"),
    ] {
        let mut args = vec![
            "identity",
            "link",
            "--human",
            "ada@example.com",
            "--provider",
            provider,
            "--external-id",
            id,
        ];
        if !workspace.is_empty() {
            args.extend(["--workspace", workspace]);
        }
        install.ok(&args);
    }
    let listed = install.json(&["identity", "list", "--human", "ada@example.com"]);
    let providers: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["discord", "github", "slack"]);
    let humans = install.ok(&["human", "list"]);
    assert!(humans.contains("discord,github,slack"), "{humans}");

    // A second link of the same GitHub account is refused, in one line.
    let out = install.run(&[
        "identity",
        "link",
        "--human",
        "bob@example.com",
        "--provider",
        "github",
        "--external-id",
        "583231",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: the github account 583231 is already linked to a human; unlink it first\n"
    );

    // Profiles: apply, re-apply unchanged, change -> version 2; version 1 still readable.
    let file = install.path().join("rust-ci.toml");
    std::fs::write(&file, PROFILE).unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(
        install.ok(&["profile", "apply", "-f", f]),
        "Created profile rust-ci (version 1).\n"
    );
    assert_eq!(
        install.ok(&["profile", "apply", "-f", f]),
        "Profile rust-ci is unchanged (version 1).\n"
    );
    std::fs::write(&file, PROFILE.replace("cargo test", "cargo test --all")).unwrap();
    assert_eq!(
        install.ok(&["profile", "apply", "-f", f]),
        "Updated profile rust-ci to version 2.\n"
    );
    let v1 = install.ok(&["profile", "show", "rust-ci", "--version", "1"]);
    assert!(
        v1.contains("command = \"cargo test\"") && !v1.contains("--all"),
        "{v1}"
    );
    let list = install.ok(&["profile", "list"]);
    assert!(
        list.contains("rust-ci") && list.contains("command"),
        "{list}"
    );
    // A bad profile names the field.
    std::fs::write(&file, PROFILE.replace("api.openai.com", "not a host")).unwrap();
    let out = install.run(&["profile", "apply", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).ends_with("is not a valid profile: profile field `egress[0].host`: expected a host name like api.github.com or a pattern like *.example.com\n"), "{}", stderr(&out));

    // Credentials: from stdin, never echoed, never readable, never in the database in clear.
    let secret = "sk-e2e-9f8e7d6c5b4a39281706";
    let out = install.run_with_stdin(
        &["credential", "set", "openai", "--kind", "api-key"],
        format!("{secret}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Stored credential openai (api-key), encrypted. Its value is never shown again.\n"
    );
    let value_file = install.path().join("token.txt");
    std::fs::write(&value_file, "ghp_fromfile0000000000").unwrap();
    install.ok(&[
        "credential",
        "set",
        "github",
        "--kind",
        "github-token",
        "--from-file",
        value_file.to_str().unwrap(),
    ]);
    let out = install.run_with_stdin(
        &["credential", "set", "openai", "--kind", "api-key"],
        b"sk-rotated-value-1234\n",
    );
    assert_eq!(
        stdout(&out),
        "Rotated credential openai (api-key). The new value is in use from the next request.\n"
    );
    let out = install.run_with_stdin(&["credential", "set", "empty"], b"");
    assert_eq!(stderr(&out), "error: the credential value is empty; pipe it on stdin (`airlock credential set NAME < file`) or use --from-file\n");

    let mut everything = String::new();
    for args in [
        vec!["credential", "list"],
        vec!["--json", "credential", "list"],
        vec!["audit", "tail", "-n", "100"],
        vec!["audit", "export"],
        vec!["--json", "profile", "show", "rust-ci"],
        vec!["doctor"],
    ] {
        let out = install.run(&args);
        everything.push_str(&stdout(&out));
        everything.push_str(&stderr(&out));
    }
    assert!(everything.contains("openai") && everything.contains("github-token"));
    for value in [secret, "sk-rotated-value-1234", "ghp_fromfile0000000000"] {
        assert!(
            !everything.contains(value),
            "a credential value was printed"
        );
    }
    let db = install.raw_db().await;
    let dump: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM credentials")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(dump.len(), 2);
    for sealed in &dump {
        for value in [secret, "sk-rotated-value-1234", "ghp_fromfile0000000000"] {
            assert!(!sealed.windows(value.len()).any(|w| w == value.as_bytes()));
        }
    }
    if engine == Engine::Sqlite {
        // Nowhere in the database file either (WAL included).
        for name in ["var/airlock.db", "var/airlock.db-wal"] {
            if let Ok(bytes) = std::fs::read(install.path().join(name)) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{name}"
                );
            }
        }
        // The generated key file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(install.path().join("var/master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    install.ok(&["credential", "delete", "github"]);
    let out = install.run(&["credential", "delete", "github"]);
    assert_eq!(
        stderr(&out),
        "error: no credential `github`; see `airlock credential list`\n"
    );

    // Every change above is in the audit log, attributed to the CLI user.
    let entries = install.json(&["audit", "tail", "-n", "100"]);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "human.add",
        "identity.link",
        "profile.apply",
        "credential.set",
        "credential.rotate",
        "credential.delete",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(entries
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == airlock_tests::cli_actor()));
    // With `--as`, the human is named next to the account; an unknown one is refused.
    let ada_id = ada["id"].as_str().unwrap().to_string();
    let as_ada = install.run_with_stdin(
        &["--as", "ada@example.com", "credential", "set", "as-test"],
        b"v",
    );
    assert!(as_ada.status.success(), "{}", stderr(&as_ada));
    let last = install.json(&["audit", "tail", "-n", "1"])[0].clone();
    assert_eq!(last["action"], "credential.set");
    assert_eq!(
        last["actor"],
        format!("{} as human:{ada_id}", airlock_tests::cli_actor())
    );
    let nobody = install.run_with_stdin(
        &["credential", "set", "as-test", "--as", "nobody@example.com"],
        b"v",
    );
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        stderr(&nobody).starts_with("error: --as nobody@example.com: "),
        "{}",
        stderr(&nobody)
    );
    assert!(install
        .ok(&["audit", "verify"])
        .starts_with("The audit log is intact:"));

    // Sessions: none yet; an unknown one is a one-line error.
    assert_eq!(install.ok(&["session", "list"]), "(none)\n");
    let out = install.run(&["session", "cancel", "ses_nope"]);
    assert_eq!(
        stderr(&out),
        "error: no session `ses_nope`; see `airlock session list`\n"
    );
}

async fn audit_verify_catches_tampering(engine: Engine) {
    let install = Install::new(engine).await;
    install.ok(&["migrate"]);
    for i in 0..5 {
        install.ok(&[
            "human",
            "add",
            "--name",
            &format!("Person {i}"),
            "--email",
            &format!("p{i}@example.com"),
        ]);
    }
    assert_eq!(install.json(&["audit", "verify"])["rows_checked"], 5);
    let db = install.raw_db().await;
    match engine {
        Engine::Sqlite => {
            sqlx::query("DROP TRIGGER audit_log_no_update")
                .execute(&db)
                .await
                .unwrap();
            sqlx::query("DROP TRIGGER audit_log_no_delete")
                .execute(&db)
                .await
                .unwrap();
        }
        Engine::Postgres => {
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
                .execute(&db)
                .await
                .unwrap();
        }
    }
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&db)
        .await
        .unwrap();
    let out = install.run(&["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify must fail on a tampered log"
    );
    assert_eq!(
        stdout(&out),
        "The audit log has been tampered with (4 rows checked):\n  - row 2 was edited: its content does not match its hash\n  - row 4 is missing\n"
    );
}

#[tokio::test]
async fn doctor_says_docker_is_not_running_and_how_to_fix_it() {
    let mut install = Install::new(Engine::Sqlite).await;
    let dead_socket = install.path().join("docker.sock");
    install.env(
        "AIRLOCK_DOCKER_HOST",
        &format!("unix://{}", dead_socket.display()),
    );
    let out = install.run(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[FAIL] docker       the Docker engine is not running or not reachable"),
        "{text}"
    );
    assert!(
        text.contains("start it with `dockerd >/var/log/dockerd.log 2>&1 &`"),
        "{text}"
    );
    assert!(text.contains("check(s) failed"), "{text}");

    // Same with a TCP engine address nobody listens on, and in JSON for scripts.
    let mut install = Install::new(Engine::Sqlite).await;
    install.env(
        "AIRLOCK_DOCKER_HOST",
        &format!("tcp://127.0.0.1:{}", free_port()),
    );
    let out = install.run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let docker = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "docker")
        .unwrap();
    assert_eq!(docker["status"], "fail");
}

#[tokio::test]
async fn doctor_names_missing_integration_credentials() {
    let install = Install::new(Engine::Sqlite).await;
    install.ok(&["migrate"]);
    std::fs::write(
        install.path().join("airlock.toml"),
        "[slack]\nbot_token_credential = \"slack-bot\"\nsigning_secret_credential = \"slack-signing\"\n",
    )
    .unwrap();
    install.run_with_stdin(&["credential", "set", "slack-bot"], b"xoxb-1");
    let out = install.run(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("[FAIL] integrations missing credentials: slack-signing (named by slack.signing_secret_credential)"), "{text}");
}

#[tokio::test]
async fn bad_command_lines_give_one_line_errors() {
    let install = Install::new(Engine::Sqlite).await;
    install.ok(&["migrate"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--bogus"], 2, "error: unexpected argument '--bogus' found (see `airlock --help`)"),
        (&["frobnicate"], 2, "error: unrecognized subcommand 'frobnicate' (see `airlock --help`)"),
        (&["human", "add", "--name", "x"], 2, "error: the following required arguments were not provided: --email <EMAIL> (see `airlock --help`)"),
        (&["human", "add", "--name", "x", "--email", "y", "--role", "owner"], 2, "error: invalid value 'owner' for '--role <ROLE>': `owner` is not a role; expected one of: admin, member (see `airlock --help`)"),
        (&["human", "add", "--name", "x", "--email", "not-an-email"], 1, "error: `not-an-email` is not an email address (it is used in commit trailers)"),
        (&["human", "add", "--name", "", "--email", "a@b.co"], 1, "error: a display name of 1 to 200 characters is required"),
        (&["session", "list", "--limit", "0"], 2, "error: invalid value '0' for '--limit <LIMIT>': 0 is not in 1..=10000 (see `airlock --help`)"),
        (&["session", "list", "--state", "done"], 2, "error: invalid value 'done' for '--state <STATE>': `done` is not a session state; expected one of: queued, starting, running, finishing, succeeded, failed, cancelled, timed_out (see `airlock --help`)"),
        (&["identity", "link", "--human", "nobody@example.com", "--provider", "github", "--external-id", "1"], 1, "error: no human with id or email `nobody@example.com`; see `airlock human list`"),
        (&["identity", "link", "--human", "x", "--provider", "slack", "--external-id", "U1"], 1, "error: --workspace is required for slack: the team id, e.g. T0123ABCD"),
        (&["profile", "apply", "-f", "/nonexistent/p.toml"], 1, "error: cannot read /nonexistent/p.toml: No such file or directory (os error 2)"),
        (&["profile", "show", "nope"], 1, "error: no profile `nope`; see `airlock profile list`"),
        (&["credential", "set", "bad name"], 1, "error: `bad name` is not a valid credential name: use 1-128 letters, digits, `-`, `_` or `.`"),
        (&["audit", "tail", "-n", "-5"], 2, "error: unexpected argument '-5' found (see `airlock --help`)"),
        (&["--config", "/nonexistent/airlock.toml", "human", "list"], 1, "error: config: /nonexistent/airlock.toml: cannot read the file: No such file or directory (os error 2)"),
    ];
    for (args, code, want) in cases {
        let out = install.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "airlock {args:?}: {err}");
        assert_eq!(err.trim_end(), *want, "airlock {args:?}");
        assert_eq!(
            err.lines().count(),
            1,
            "airlock {args:?} printed more than one line: {err}"
        );
        assert!(!err.contains("panicked"));
    }
}

#[tokio::test]
async fn bad_configuration_gives_one_line_errors() {
    // (airlock.toml, environment, the one line expected)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[server]\nlisten = \"localhost\"\n", &[], "error: config key `server.listen` (from airlock.toml): invalid socket address syntax; expected an address and port, e.g. 127.0.0.1:8080"),
        ("[database]\nmax_connections = \"ten\"\n", &[], "error: config key `database.max_connections` (from airlock.toml): invalid type: string \"ten\", expected u32; expected a whole number from 1 to 1000"),
        ("[server\n", &[], "error: config: airlock.toml: line 1: invalid table header"),
        ("", &[("AIRLOCK_DATABASE_URL", "mysql://db")], "error: config key `database.url` (from AIRLOCK_DATABASE_URL): expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB"),
        ("", &[("AIRLOCK_SECRETS_MASTER_KEY", "too-short")], "error: config key `secrets.master_key` (from AIRLOCK_SECRETS_MASTER_KEY): expected 32 random bytes in base64 (e.g. `openssl rand -base64 32`)"),
        ("", &[("AIRLOCK_LISTEN", "127.0.0.1:1")], "error: config: AIRLOCK_LISTEN: is not a known setting; see docs/configuration.md for the list"),
        ("colour = \"blue\"\n", &[], "error: config key `colour` (from airlock.toml): unknown field `colour`, expected one of `data_dir`, `server`, `database`, `secrets`, `docker`, `sandbox`, `gateway`, `broker`, `retention`, `git`, `github`, `slack`, `discord`, `prices`"),
    ];
    for (file, env, want) in cases {
        let mut install = Install::new(Engine::Sqlite).await;
        for (k, v) in *env {
            install.env(k, v);
        }
        std::fs::write(install.path().join("airlock.toml"), file).unwrap();
        for args in [&["human", "list"][..], &["up"][..]] {
            let out = install.run(args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{file:?} {env:?}: {err}");
            assert_eq!(err.trim_end(), *want, "{file:?} {env:?}");
            assert!(!err.contains("too-short"));
        }
        // doctor reports it as its one failed check.
        let out = install.run(&["doctor"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stdout(&out).starts_with("[FAIL] config"),
            "{}",
            stdout(&out)
        );
    }
    // A database that cannot be reached is one line too, password hidden.
    let mut install = Install::new(Engine::Sqlite).await;
    install.env(
        "AIRLOCK_DATABASE_URL",
        &format!(
            "postgres://airlock:hunter2@127.0.0.1:{}/airlock",
            free_port()
        ),
    );
    let out = install.run(&["human", "list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot open the database postgres://airlock:***@127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
}

#[tokio::test]
async fn up_serves_health_and_stops_cleanly_on_sigterm() {
    let mut install = Install::new(Engine::Sqlite).await;
    let port = free_port();
    install.env("AIRLOCK_SERVER_LISTEN", &format!("127.0.0.1:{port}"));
    let mut child = std::process::Command::new(airlock_tests::airlock_bin())
        .arg("up")
        .current_dir(install.path())
        .env("AIRLOCK_DATABASE_URL", &install.database_url)
        .env("AIRLOCK_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        // This test is about the HTTP side; sandboxes are tested in sandboxes.rs.
        .env(
            "AIRLOCK_DOCKER_HOST",
            format!("unix://{}/no-docker.sock", install.path().display()),
        )
        .env("AIRLOCK_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(r) = reqwest::get(&url).await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "airlock up did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["service"], "airlock");
    assert_eq!(body["database"], "ok");

    // It migrated on start: admin commands work against the same database.
    install.ok(&[
        "human",
        "add",
        "--name",
        "Ada",
        "--email",
        "ada@example.com",
    ]);
    // doctor sees the running server on the port instead of calling it a conflict.
    let doctor = install.run(&["doctor"]);
    assert!(
        stdout(&doctor).contains(&format!(
            "[ok  ] listen       127.0.0.1:{port}: Airlock is already serving here"
        )),
        "{}",
        stdout(&doctor)
    );
    // A second server on the same port says what to do, in one line.
    let second = install.run(&["up"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).trim_end().ends_with(&format!("cannot listen on 127.0.0.1:{port}: the address is in use; stop the other program or set server.listen (AIRLOCK_SERVER_LISTEN)")), "{}", stderr(&second));

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "airlock up did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "airlock up exited with {status}");
}

/// A Docker engine answering only what `doctor` asks, as an engine of `version` would.
async fn fake_engine(version: &'static str) -> u16 {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        let path = req.uri().path().to_string();
        if path.ends_with("/version") {
            axum::Json(serde_json::json!({"Version": version, "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64"}))
                .into_response()
        } else if path.ends_with("/_ping") {
            "OK".into_response()
        } else {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"message": format!("no such thing: {path}")})),
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_docker_version_and_the_dns_flaw_it_has() {
    for (version, affected) in [("20.10.24+dfsg1", true), ("26.1.5", false)] {
        let port = fake_engine(version).await;
        let mut install = Install::new(Engine::Sqlite).await;
        install.ok(&["migrate"]);
        install.env("AIRLOCK_DOCKER_HOST", &format!("tcp://127.0.0.1:{port}"));
        let out = install.run(&["doctor"]);
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.contains("docker version"))
            .unwrap_or_else(|| panic!("no docker version line:\n{text}"));
        assert!(line.contains(&format!("Docker {version}")), "{line}");
        if affected {
            assert!(line.starts_with("[warn]"), "{line}");
            assert!(
                line.contains("affected by CVE-2024-29018")
                    && line.contains("Airlock blocks that DNS server inside every sandbox"),
                "{line}"
            );
        } else {
            assert!(line.starts_with("[ok  ]"), "{line}");
            assert!(line.contains("not affected by CVE-2024-29018"), "{line}");
        }
    }
}

/// The CLI finds its deployment from any directory through its configuration file, and a
/// command run where there is no deployment neither makes one nor a second master key for
/// an existing database: it says where it looked and what to do. Run from another
/// directory, a command used to create `./var/master.key` there and suggest `airlock
/// migrate`, the start of a second, empty deployment.
#[tokio::test]
async fn the_cli_finds_its_deployment_from_anywhere_and_never_makes_a_second_key() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let data = home.path().join("var");
    let config = home.path().join("airlock.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", data.display())).unwrap();
    let airlock = |dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(airlock_tests::airlock_bin());
        cmd.args(args).current_dir(dir).env_clear();
        for (k, v) in std::env::vars() {
            if k == "PATH" || k == "HOME" {
                cmd.env(k, v);
            }
        }
        cmd.env("AIRLOCK_LOG", "warn").envs(env.iter().copied());
        cmd.output().unwrap()
    };
    let config_s = config.to_str().unwrap();
    let out = airlock(elsewhere.path(), &[], &["--config", config_s, "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = airlock(
        elsewhere.path(),
        &[("AIRLOCK_CONFIG", config_s)],
        &[
            "human",
            "add",
            "--name",
            "Ada",
            "--email",
            "ada@example.com",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // From its own directory, ./airlock.toml; from anywhere, AIRLOCK_CONFIG or --config.
    for (dir, env, args) in [
        (home.path(), &[][..], &["human", "list", "--json"][..]),
        (
            elsewhere.path(),
            &[("AIRLOCK_CONFIG", config_s)][..],
            &["human", "list", "--json"][..],
        ),
        (
            elsewhere.path(),
            &[][..],
            &["--config", config_s, "human", "list", "--json"][..],
        ),
    ] {
        let out = airlock(dir, env, args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("ada@example.com"), "{}", stdout(&out));
    }
    // Elsewhere with nothing named: refused, naming where it looked; nothing is made there.
    let out = airlock(elsewhere.path(), &[], &["human", "list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: there is no Airlock database at ./var/airlock.db (data_dir ./var: no airlock.toml in ")
            && err.contains("or name it with --config or AIRLOCK_CONFIG; to set up a new deployment here, run `airlock migrate`"),
        "{err}"
    );
    // The existing database named, but not its key file: no second key for it.
    let db = format!("sqlite://{}", data.join("airlock.db").display());
    for args in [&["migrate"][..], &["human", "list"][..]] {
        let out = airlock(elsewhere.path(), &[("AIRLOCK_DATABASE_URL", &db)], args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("belongs to a deployment whose master key is")
                || err.contains("there is no master key file at ./var/master.key"),
            "{args:?}: {err}"
        );
    }
    let made: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(
        made.is_empty(),
        "files were made where no deployment is: {made:?}"
    );
    // The deployment's key is the one it had.
    let out = airlock(home.path(), &[], &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Doctor's checks of what would fail later, each seen failing and then passing: no
/// database (reported, not made), a route's credential not stored (also warned by `profile
/// apply`), no git integration (then a registered repository), a port in use, and a
/// sandbox subnet another Docker network uses.
#[tokio::test]
async fn doctor_catches_what_fails_later_both_ways() {
    let mut install = Install::new(Engine::Sqlite).await;
    let doctor = |install: &Install| stdout(&install.run(&["doctor"]));
    // A check's line as `[status] name detail`, without the padding.
    let line = |text: &str, name: &str| -> String {
        text.lines()
            .find_map(|l| {
                let (status, rest) = l.split_once("] ")?;
                let detail = rest.strip_prefix(name)?;
                detail
                    .starts_with(' ')
                    .then(|| format!("{status}] {name} {}", detail.trim_start()))
            })
            .unwrap_or_else(|| panic!("no `{name}` check in:\n{text}"))
    };
    // No database: reported, and doctor makes none (nor a key).
    let text = doctor(&install);
    assert!(
        line(&text, "database").starts_with("[FAIL] database there is no database at "),
        "{text}"
    );
    assert!(!install.path().join("var").exists(), "doctor created files");

    install.ok(&["migrate"]);
    let profile = install.path().join("p.toml");
    std::fs::write(
        &profile,
        "name = \"p\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n[[egress]]\nhost = \"api.example.com\"\ncredential = \"model-key\"\ninject = { kind = \"bearer\" }\n",
    )
    .unwrap();
    let out = install.run(&["profile", "apply", "-f", profile.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("warning: the route for api.example.com names the credential `model-key`, which is not stored"),
        "{}",
        stderr(&out)
    );
    let text = doctor(&install);
    assert_eq!(
        line(&text, "profile credentials"),
        "[FAIL] profile credentials not stored: model-key (profile p, route api.example.com)",
        "{text}"
    );
    assert!(
        line(&text, "git")
            .starts_with("[warn] git no git integration is configured: sessions will not clone"),
        "{text}"
    );
    assert!(
        line(&text, "database").starts_with("[ok  ] database"),
        "{text}"
    );
    install.run_with_stdin(&["credential", "set", "model-key"], b"sk-1");
    // A registered local repository is a git integration.
    let repo = install.path().join("hello");
    airlock_tests::git::work_tree(&repo, &[]);
    install.ok(&["repo", "add", "hello", repo.to_str().unwrap()]);
    // A port the gateway wants, held by another program.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    install.env("AIRLOCK_SANDBOX_GATEWAY_PORT", &held.to_string());
    // The endpoint's port is one nobody holds (the default may be another deployment's).
    install.env(
        "AIRLOCK_SANDBOX_ENDPOINT_PORT",
        &airlock_tests::free_port().to_string(),
    );
    let text = doctor(&install);
    assert_eq!(
        line(&text, "profile credentials"),
        "[ok  ] profile credentials 1 route credential(s), all stored",
        "{text}"
    );
    assert!(
        line(&text, "git").starts_with("[ok  ] git 1 registered repository (`airlock repo list`)"),
        "{text}"
    );
    assert_eq!(
        line(&text, "ports"),
        format!("[FAIL] ports sandbox.gateway_port {held} is in use by another program"),
        "{text}"
    );
    drop(holder);
    let text = doctor(&install);
    assert!(
        line(&text, "ports").starts_with("[ok  ] ports sandbox endpoint "),
        "{text}"
    );

    // A Docker network on the sandbox subnet.
    let name = format!("alk-doc-{}", std::process::id());
    let subnet = "10.251.7.0/24";
    let made = std::process::Command::new("docker")
        .args(["network", "create", "--subnet", subnet, &name])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    install.env("AIRLOCK_SANDBOX_SUBNET", "10.251.7.0/24");
    let text = doctor(&install);
    let clash = line(&text, "sandbox subnet");
    let _ = std::process::Command::new("docker")
        .args(["network", "rm", &name])
        .output();
    assert_eq!(
        clash,
        format!("[FAIL] sandbox subnet sandbox.subnet {subnet} overlaps the Docker network(s) {name} ({subnet})"),
        "{text}"
    );
    install.env("AIRLOCK_SANDBOX_SUBNET", "10.251.8.0/24");
    install.env("AIRLOCK_GITHUB_TOKEN_CREDENTIAL", "gh");
    install.env("AIRLOCK_GITHUB_WEBHOOK_SECRET_CREDENTIAL", "gh-hook");
    let text = doctor(&install);
    assert!(
        line(&text, "sandbox subnet")
            .starts_with("[ok  ] sandbox subnet 10.251.8.0/24 is not used"),
        "{text}"
    );
    assert!(line(&text, "git").starts_with("[ok  ] git"), "{text}");
}
