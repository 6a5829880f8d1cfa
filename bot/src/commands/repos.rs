//! `airlock repo`: repositories without GitHub. A local git repository is served by the
//! server to sandboxes through the gateway (`crate::git`), and sessions push their branch
//! back into it; a git remote that is not GitHub is worked on push-only. `airlock run --repo
//! ./path` registers a local path on first use.

use std::path::Path;
use std::process::ExitCode;

use airlock_core::store::{Repo, RepoLocation};
use airlock_core::timefmt::rfc3339;
use airlock_core::Store;
use anyhow::{bail, Context as _};

use super::admin::entry;
use super::Ctx;
use crate::cli::RepoCmd;
use crate::output::{cell, json, safe, table};

pub async fn repo(ctx: &Ctx, cmd: RepoCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        RepoCmd::Add(a) => {
            let location = if is_url(&a.location) {
                if let Some(c) = &a.credential {
                    if store.credential_info(c).await?.is_none() {
                        eprintln!(
                            "warning: the credential `{}` is not stored yet; pushes will be refused until `airlock credential set {}` has run",
                            safe(c),
                            safe(c)
                        );
                    }
                }
                RepoLocation::Remote {
                    url: a.location.trim_end_matches('/').to_string(),
                    credential: a.credential,
                    username: a.username,
                    upstream: a.upstream.map(|u| u.trim_end_matches('/').to_string()),
                }
            } else {
                if a.credential.is_some() || a.upstream.is_some() {
                    bail!("--credential and --upstream are for remotes (https://…); a local repository needs neither");
                }
                RepoLocation::Local {
                    path: local_repository(Path::new(&a.location))?,
                }
            };
            let r = add(ctx, &store, &a.name, location).await?;
            print_added(ctx, &r)?;
        }
        RepoCmd::List => {
            let repos = store.list_repos().await?;
            if ctx.json {
                json(&repos)?;
            } else if repos.is_empty() {
                println!(
                    "No repositories are registered. Add one with `airlock repo add NAME PATH`."
                );
            } else {
                table(
                    &["NAME", "KIND", "WHERE", "ADDED"],
                    repos
                        .iter()
                        .map(|r| {
                            let (kind, at) = describe(&r.location);
                            vec![
                                cell(&r.name, 60),
                                kind.into(),
                                cell(&at, 100),
                                rfc3339(r.created_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        RepoCmd::Remove { name } => {
            store
                .remove_repo(
                    &name,
                    entry(ctx, "repo.remove", &name, serde_json::json!({})),
                )
                .await?;
            if ctx.json {
                json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!(
                    "Forgot repository {}; its files are untouched.",
                    safe(&name)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Whether `--repo` names a path rather than a repository (`./app`, `/srv/app`, `~/app`).
pub fn is_path(repo: &str) -> bool {
    repo == "."
        || repo.starts_with("./")
        || repo.starts_with("../")
        || repo.starts_with('/')
        || repo.starts_with('~')
}

fn describe(l: &RepoLocation) -> (&'static str, String) {
    match l {
        RepoLocation::Local { path } => ("local", path.clone()),
        RepoLocation::Remote { url, upstream, .. } => (
            "push-only",
            match upstream {
                Some(u) => format!("{url} (via {u})"),
                None => url.clone(),
            },
        ),
    }
}

async fn add(ctx: &Ctx, store: &Store, name: &str, location: RepoLocation) -> anyhow::Result<Repo> {
    let (kind, at) = describe(&location);
    let audit = entry(
        ctx,
        "repo.add",
        name,
        serde_json::json!({ "kind": kind, "location": at }),
    );
    let repo = Repo {
        name: name.to_string(),
        location,
        created_at: 0,
    };
    Ok(store.add_repo(&repo, audit).await?)
}

fn print_added(ctx: &Ctx, r: &Repo) -> anyhow::Result<()> {
    if ctx.json {
        return json(r);
    }
    match &r.location {
        RepoLocation::Local { path } => println!(
            "Registered local repository {} at {}. Sessions clone it through the gateway and \
             push their branch back into it: airlock run --repo {} \"…\"",
            safe(&r.name),
            safe(path),
            safe(&r.name)
        ),
        RepoLocation::Remote { url, .. } => println!(
            "Registered {} at {} (push-only: sessions push their branch there, no pull request \
             is opened): airlock run --repo {} \"…\"",
            safe(&r.name),
            safe(url),
            safe(&r.name)
        ),
    }
    Ok(())
}

/// `--repo ./path`: the registered name of the local repository at `path`, registered now
/// under its directory's name if it is not yet.
pub async fn registered_name(ctx: &Ctx, store: &Store, path: &str) -> anyhow::Result<String> {
    let expanded = match path.strip_prefix('~') {
        Some(rest) => format!("{}{rest}", std::env::var("HOME").unwrap_or_default()),
        None => path.to_string(),
    };
    let at = local_repository(Path::new(&expanded))?;
    if let Some(r) = store.repo_at(&at).await? {
        return Ok(r.name);
    }
    let base = Path::new(&at)
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".git").to_string())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('.').to_string();
    if store.repo(&name).await?.is_some() {
        bail!(
            "a different repository is registered as `{}`; register this one under another name: airlock repo add NAME {}",
            safe(&name),
            safe(&at)
        );
    }
    let r = add(ctx, store, &name, RepoLocation::Local { path: at }).await?;
    if !ctx.json {
        eprintln!(
            "Registered {} as repository `{}`.",
            safe(path),
            safe(&r.name)
        );
    }
    Ok(r.name)
}

/// The absolute path of the git repository at `path` (its top level for a work tree), or
/// why it is not one Airlock can work on.
fn local_repository(path: &Path) -> anyhow::Result<String> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("{} cannot be read", path.display()))?;
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-c")
            .arg("safe.directory=*")
            .arg("-C")
            .arg(&canon)
            .args(args)
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).trim().to_string(),
                )
            })
    };
    let (ok, bare) = git(&["rev-parse", "--is-bare-repository"]).context("cannot run git")?;
    if !ok {
        bail!(
            "{} is not a git repository (`git init` makes one)",
            canon.display()
        );
    }
    let (ok, top) = if bare == "true" {
        git(&["rev-parse", "--absolute-git-dir"])?
    } else {
        git(&["rev-parse", "--show-toplevel"])?
    };
    if !ok || top.is_empty() {
        bail!(
            "cannot find the top of the git repository at {}",
            canon.display()
        );
    }
    let (has_commit, _) = git(&["rev-parse", "--verify", "-q", "HEAD"])?;
    if !has_commit {
        bail!("the repository at {top} has no commit yet: sessions start from a commit, so make one first");
    }
    Ok(top)
}
