//! Repositories registered with `airlock repo add`, for work without GitHub: a local git
//! repository on the server (served to sandboxes over smart HTTP, through the gateway), or
//! a git remote that is not GitHub (a bare repository, Gitea, GitLab over HTTPS), worked on
//! in push-only mode: the session's branch is pushed, no pull request is opened.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_audit, NewAudit};
use super::{Result, Store, StoreError};
use crate::domain::{is_credential_name, is_repo_ref};
use crate::ids::now_ms;

/// Where a registered repository is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RepoLocation {
    /// A git repository on this server: its absolute path (a work tree or a bare repository).
    Local { path: String },
    /// A git remote over HTTP(S) that is not GitHub.
    Remote {
        url: String,
        /// The credential the gateway injects (HTTP basic), if the remote needs one.
        credential: Option<String>,
        /// The user name sent with it (`oauth2` for GitLab, any for Gitea tokens).
        username: Option<String>,
        /// Where the gateway sends the traffic instead (a mirror, an internal address).
        upstream: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repo {
    pub name: String,
    #[serde(flatten)]
    pub location: RepoLocation,
    pub created_at: i64,
}

const COLS: &str = "name, kind, location, credential, username, upstream, created_at";

fn repo(row: &AnyRow) -> Result<Repo> {
    let kind: String = row.try_get("kind")?;
    let location: String = row.try_get("location")?;
    let location = match kind.as_str() {
        "local" => RepoLocation::Local { path: location },
        "remote" => RepoLocation::Remote {
            url: location,
            credential: row.try_get("credential")?,
            username: row.try_get("username")?,
            upstream: row.try_get("upstream")?,
        },
        other => {
            return Err(StoreError::Invalid(format!(
                "stored repository kind `{other}` is unknown"
            )))
        }
    };
    Ok(Repo {
        name: row.try_get("name")?,
        location,
        created_at: row.try_get("created_at")?,
    })
}

/// A URL the gateway can route: `http(s)://host[:port]/path` with no credentials in it.
pub fn check_remote_url(url: &str) -> std::result::Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("`{url}` is not a URL; expected https://HOST/PATH"));
    };
    if scheme != "https" && scheme != "http" {
        return Err(format!("`{url}`: only http(s) remotes are supported"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(
            "the URL holds a user name or password: store the secret with `airlock credential \
             set` and name it with --credential"
                .into(),
        );
    }
    if authority.is_empty() || path.trim_matches('/').is_empty() {
        return Err(format!(
            "`{url}`: expected https://HOST/PATH of a repository"
        ));
    }
    if url.contains(['?', '#', ' ']) {
        return Err(format!(
            "`{url}`: a query, fragment or space is not allowed"
        ));
    }
    Ok(())
}

impl Store {
    /// Registers a repository; refuses a name already taken. The audit row is written in
    /// the same transaction.
    pub async fn add_repo(&self, repo: &Repo, audit: NewAudit) -> Result<Repo> {
        if !is_repo_ref(&repo.name) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a repository name: use letters, digits, `-`, `_` and `.`, \
                 optionally OWNER/NAME",
                repo.name.chars().take(80).collect::<String>()
            )));
        }
        let (kind, location, credential, username, upstream) = match &repo.location {
            RepoLocation::Local { path } => {
                if !path.starts_with('/') {
                    return Err(StoreError::Invalid(
                        "a local repository's path must be absolute".into(),
                    ));
                }
                ("local", path.clone(), None, None, None)
            }
            RepoLocation::Remote {
                url,
                credential,
                username,
                upstream,
            } => {
                check_remote_url(url).map_err(StoreError::Invalid)?;
                if let Some(u) = upstream {
                    check_remote_url(&format!("{}/x", u.trim_end_matches('/')))
                        .map_err(|e| StoreError::Invalid(format!("--upstream: {e}")))?;
                }
                if let Some(c) = credential {
                    if !is_credential_name(c) {
                        return Err(StoreError::Invalid(format!(
                            "`{c}` is not a valid credential name"
                        )));
                    }
                }
                (
                    "remote",
                    url.clone(),
                    credential.clone(),
                    username.clone(),
                    upstream.clone(),
                )
            }
        };
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO repos ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&repo.name)
        .bind(kind)
        .bind(&location)
        .bind(credential)
        .bind(username)
        .bind(upstream)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::conflict_or(e, || {
                format!(
                    "a repository named `{}` is registered already (`airlock repo remove {}` first)",
                    repo.name, repo.name
                )
            })
        })?;
        append_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        self.repo(&repo.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no repository `{}`", repo.name)))
    }

    /// The registered repository `name`, if there is one (names are matched exactly).
    pub async fn repo(&self, name: &str) -> Result<Option<Repo>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM repos WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(repo).transpose()
    }

    /// The local repository registered at `path`, if any.
    pub async fn repo_at(&self, path: &str) -> Result<Option<Repo>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM repos WHERE kind = 'local' AND location = $1"
        ))
        .bind(path)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(repo).transpose()
    }

    pub async fn list_repos(&self) -> Result<Vec<Repo>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM repos ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(repo).collect()
    }

    /// Forgets a registration (the repository itself is not touched); audited with it.
    pub async fn remove_repo(&self, name: &str, audit: NewAudit) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query("DELETE FROM repos WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "no repository `{}` is registered (`airlock repo list`)",
                name.chars().take(80).collect::<String>()
            )));
        }
        append_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(())
    }
}
