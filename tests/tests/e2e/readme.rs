//! The README's first-session section, run exactly as written (extracted from README.md, so
//! the two cannot drift) by bash in a fresh home directory, against a running `airlock up`
//! with no GitHub and no model key: both sessions succeed, the second one's branch lands in
//! the local repository, and the gateway let nothing out but the local git endpoint and the
//! model server on loopback.
//!
//! What the test stands in for: `scripts/up` (the server is started here, and the CLI finds
//! the deployment through its `AIRLOCK_*` variables instead of `/etc/airlock/airlock.toml`),
//! the release build (the debug binary is `airlock` on PATH), and Ollama (a strict fake
//! OpenAI-compatible server on 127.0.0.1:11434, where the shipped profile points).
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::path::Path;
use std::process::Command;

use airlock_tests::git::git;
use airlock_tests::model::{FakeModel, Step};
use airlock_tests::{airlock_bin, stderr, stdout, Engine, Install, Server};
use serde_json::json;

/// The shell block between `<!-- first-session -->` and `<!-- /first-session -->`.
fn first_session_block(readme: &str) -> String {
    let start = readme
        .find("<!-- first-session -->")
        .expect("README.md has a first-session section");
    let end = readme[start..]
        .find("<!-- /first-session -->")
        .expect("the first-session section is closed")
        + start;
    let section = &readme[start..end];
    let code = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("the section holds one ```sh block");
    code.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_first_session_runs_as_written_with_no_github_and_no_model_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = first_session_block(&readme);
    assert!(
        block.contains("airlock run --repo hello --profile command")
            && block.contains("--profile local-model"),
        "the section runs both sessions:\n{block}"
    );

    // Ollama's address, where templates/profiles/local-model.toml points.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:11434")
        .await
        .expect("127.0.0.1:11434 (Ollama's port) must be free for this test");
    let model = FakeModel::start_local(
        listener,
        vec![
            Step::Tools(vec![(
                "write_file",
                json!({"path": "CONTRIBUTING.md", "content": "Run the tests with `make test`.\n"}),
            )]),
            Step::Tools(vec![("shell", json!({"command": "make test"}))]),
            Step::Answer("Added CONTRIBUTING.md; `make test` passes."),
        ],
    )
    .await;

    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    let data = install.path().join("var");
    install.env("AIRLOCK_DATA_DIR", data.to_str().unwrap());
    install.ok(&["migrate"]);
    let server = Server::start(&install);

    // A fresh home, and `airlock` on PATH as scripts/up puts it.
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join(".local-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(airlock_bin(), bin.join("airlock")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&block)
        .current_dir(&root)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", path);
    for (k, v) in install.env_pairs() {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "the README's commands failed:\n{text}\n{err}\n{}",
        server.log()
    );
    // The commands say what happened; they do not log at a person.
    assert!(!err.contains(" INFO "), "{err}");

    // Both sessions succeeded: the tests ran in the first, the second left a branch.
    let sessions = install.json(&["session", "list"]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    assert!(
        sessions.iter().all(|s| s["state"] == "succeeded"),
        "{sessions:#?}"
    );
    assert!(text.contains("all 3 tests passed"), "{text}");
    let hello = home.path().join("hello");
    let branch = git(
        &hello,
        &["branch", "--list", "airlock/*", "--format=%(refname:short)"],
    );
    let branch = branch.trim();
    assert!(text.contains(branch), "the block lists the branch:\n{text}");
    assert!(
        err.contains(&format!("branch `{branch}` is in {}", hello.display())),
        "{err}"
    );
    assert_eq!(
        git(&hello, &["show", &format!("{branch}:CONTRIBUTING.md")]),
        "Run the tests with `make test`.\n"
    );
    assert_eq!(model.problems(), Vec::<String>::new());
    assert_eq!(model.requests().len(), 3);

    // Nothing went anywhere but the local git endpoint and the model on loopback.
    let audit = install.json(&["audit", "tail", "-n", "1000"]);
    let hosts: std::collections::BTreeSet<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("egress."))
        })
        .map(|e| e["target"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        hosts
            .iter()
            .all(|h| h.starts_with("git.airlock.internal")
                || h.starts_with("models.airlock.internal")),
        "{hosts:?}"
    );
    assert!(
        hosts
            .iter()
            .any(|h| h.starts_with("models.airlock.internal")),
        "{hosts:?}"
    );
    drop(server);
}
