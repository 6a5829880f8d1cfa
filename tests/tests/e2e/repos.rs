//! Repositories without GitHub (`airlock repo add`): a local repository is cloned by the
//! sandbox through the gateway from the server's own git endpoint, and gets the session's
//! branch pushed back into it; a git remote that is not GitHub is worked on push-only.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use airlock_tests::git::{git, work_tree};
use airlock_tests::sessions::{install_on, output_of, show};
use airlock_tests::upstream::Upstream;
use airlock_tests::{cli_actor, stderr, stdout, Engine, Server};

/// A work tree with one commit on `main` (a Makefile whose `test` passes), owned by `uid`.
fn local_repo(dir: &Path, uid: u32) {
    work_tree(
        dir,
        &[
            ("Makefile", "test:\n\t@echo '1 test passed'\n"),
            ("README.md", "hello\n"),
        ],
    );
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every file under `dir` and who owns it, for the files not owned by `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.uid() != uid {
                bad.push(format!("{} ({})", e.path().display(), meta.uid()));
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repository_is_cloned_through_the_gateway_and_gets_the_branch_back() {
    // The agent changes a file, runs the tests, and tries to push `main` itself (refused).
    let install = install_on(
        Engine::Sqlite,
        &[(
            "edit",
            "echo 'changed by the agent' >> README.md && make test && \
             git -c user.name=x -c user.email=x@x commit -qam sneaky && \
             (git push origin HEAD:refs/heads/main 2>&1 | sed 's/^/push-main: /'); \
             git reset -q --hard HEAD~1 && echo 'changed by the agent' >> README.md && \
             echo '# aider chat' > .aider.chat.history.md && mkdir -p .aider.tags.cache.v4 && \
             touch .aider.tags.cache.v4/cache.db",
            "",
        )],
    )
    .await;
    let repo = install.path().join("hello");
    local_repo(&repo, 65534);
    let main_before = git(&repo, &["rev-parse", "main"]);
    let server = Server::start(&install);

    // The endpoint the gateway uses answers nobody else.
    let anonymous = reqwest::get(format!(
        "http://127.0.0.1:{}/git/hello.git/info/refs?service=git-upload-pack",
        server.port
    ))
    .await
    .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // `--repo ./hello` registers the path on first use, under its directory's name.
    let out = install.run(&[
        "run",
        "--repo",
        "./hello",
        "--profile",
        "edit",
        "make it say more",
    ]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}\n{}", server.log());
    assert!(
        err.contains("Registered ./hello as repository `hello`."),
        "{err}"
    );
    let branch = git(
        &repo,
        &["branch", "--list", "airlock/*", "--format=%(refname:short)"],
    );
    let branch = branch.trim();
    assert!(branch.starts_with("airlock/ses-"), "{branch:?}");
    let canonical = repo.canonicalize().unwrap();
    assert!(
        err.contains(&format!(
            "succeeded: branch `{branch}` is in {}; `git diff main...{branch}`",
            canonical.display()
        )),
        "{text}\n{err}"
    );
    // The change is on the branch, with the trailers; `main` is where it was.
    let diff = git(&repo, &["diff", &format!("main...{branch}")]);
    assert!(diff.contains("+changed by the agent"), "{diff}");
    // The agents' own files (Aider's history and caches) are not part of the change.
    let files = git(&repo, &["diff", "--name-only", &format!("main...{branch}")]);
    assert_eq!(files.trim(), "README.md", "{files}");
    let message = git(&repo, &["log", "-1", "--format=%B", branch]);
    assert!(
        message.contains("Co-authored-by: Ada Lovelace <ada@example.com>")
            && message.contains("Airlock-Session: ses_"),
        "{message}"
    );
    assert_eq!(git(&repo, &["rev-parse", "main"]), main_before);
    let session = install.json(&["session", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let output = output_of(&show(&install, &session));
    assert!(output.contains("1 test passed"), "{output}");
    assert!(
        output.contains("push-main: ") && output.contains("Airlock"),
        "the push to main is refused by the gateway: {output}"
    );
    // What the push wrote belongs to the repository's owner, not to the server's account.
    assert_eq!(not_owned_by(&repo, 65534), Vec::<String>::new());
    // The work tree of the person is untouched: still on main, nothing uncommitted.
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");

    // The registration is listed and was audited as the OS account.
    let repos = install.json(&["repo", "list"]);
    assert_eq!(repos[0]["name"], "hello");
    assert_eq!(repos[0]["kind"], "local");
    assert_eq!(repos[0]["path"], canonical.to_str().unwrap());
    let audit = install.json(&["audit", "tail"]);
    let added = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "repo.add")
        .expect("repo.add audited");
    assert_eq!(added["actor"], cli_actor());
    assert_eq!(added["target"], "hello");

    // Registering the same name twice, a path that is not a repository, and a repository
    // without a commit are refused with the reason.
    let again = install.run(&["repo", "add", "hello", repo.to_str().unwrap()]);
    assert!(
        stderr(&again).contains("a repository named `hello` is registered already"),
        "{}",
        stderr(&again)
    );
    let plain = install.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let not_git = install.run(&["repo", "add", "plain", plain.to_str().unwrap()]);
    assert!(
        stderr(&not_git).contains("is not a git repository"),
        "{}",
        stderr(&not_git)
    );
    git(&plain, &["init", "-q"]);
    let empty = install.run(&["repo", "add", "plain", plain.to_str().unwrap()]);
    assert!(
        stderr(&empty).contains("has no commit yet"),
        "{}",
        stderr(&empty)
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_is_not_github_gets_the_branch_pushed_over_https_and_no_pull_request() {
    let token = format!("gitea-{}", airlock_tests::random(""));
    let upstream = Upstream::start("unused-api-key", &token).await;
    let bare = upstream.create_repo("app");
    let mut install = install_on(
        Engine::Sqlite,
        &[("edit", "echo pushed-only > CHANGES && env | sort", "")],
    )
    .await;
    install.env(
        "AIRLOCK_GATEWAY_EXTRA_CA_FILE",
        upstream.ca_file.to_str().unwrap(),
    );
    let set = install.run_with_stdin(&["credential", "set", "gitea"], token.as_bytes());
    assert!(set.status.success(), "{}", stderr(&set));
    // A credential inside the URL is refused: it would end up in the sandbox.
    let leaky = install.run(&[
        "repo",
        "add",
        "team/app",
        &format!("https://x:{token}@git.example.test/app.git"),
    ]);
    assert!(
        stderr(&leaky).contains("holds a user name or password"),
        "{}",
        stderr(&leaky)
    );
    assert!(!stderr(&leaky).contains(&token));
    install.ok(&[
        "repo",
        "add",
        "team/app",
        "https://git.example.test/app.git",
        "--credential",
        "gitea",
        "--username",
        "x-access-token",
        "--upstream",
        &upstream.url(),
    ]);
    let server = Server::start(&install);
    let out = install.run(&["run", "--repo", "team/app", "--profile", "edit", "note it"]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}\n{}", server.log());
    assert!(
        err.contains(
            "to https://git.example.test/app.git; no pull request is opened there (push-only)"
        ),
        "{err}"
    );
    let branches =
        airlock_tests::git::in_bare(&bare, &["branch", "--list", "airlock/*"]).unwrap_or_default();
    let branch = branches.trim().trim_start_matches("* ").to_string();
    assert!(branch.starts_with("airlock/ses-"), "{branches:?}");
    let file = airlock_tests::git::in_bare(&bare, &["show", &format!("{branch}:CHANGES")]);
    assert_eq!(file.as_deref(), Some("pushed-only\n"));
    let shown = show(
        &install,
        install.json(&["session", "list"])[0]["id"]
            .as_str()
            .unwrap(),
    );
    assert!(shown["session"]["pull_request_url"].is_null());
    // Nothing of the token reached the sandbox.
    let output = output_of(&shown);
    assert!(!output.contains(&token), "{output}");
    drop(server);
}
