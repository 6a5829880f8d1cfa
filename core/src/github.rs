//! Airlock's side of the GitHub API (octocrab): authenticating as the GitHub App or with a
//! personal access token, installation tokens limited to one repository (cached until shortly
//! before they expire), and the few calls the broker and the GitHub adapter make: comments,
//! reactions, permissions, pull requests.
//!
//! Tokens and the App's private key stay in memory here; no error or log line contains one.
//! The API base URL is configurable (`github.api_url`), so GitHub Enterprise Server works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::ids::now_ms;
use crate::secrets::SecretValue;

/// An installation token is used until this long before it expires, then minted again.
const REFRESH_BEFORE_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("the GitHub App's private key is not an RSA key in PEM form: {0}")]
    BadKey(String),
    #[error("the GitHub App is not installed on {repo}; install it there (or grant it the repository) and try again")]
    NotInstalled { repo: String },
    #[error("GitHub answered {status} to {what}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach GitHub for {what}: {reason}")]
    Transport { what: String, reason: String },
    #[error("`{0}` is not a repository; expected OWNER/NAME")]
    BadRepo(String),
}

impl GithubError {
    /// The HTTP status GitHub answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Api { status, .. } => Some(*status),
            GithubError::NotInstalled { .. } => Some(404),
            _ => None,
        }
    }

    fn from_octocrab(what: &str, e: octocrab::Error) -> GithubError {
        match e {
            octocrab::Error::GitHub { source, .. } => GithubError::Api {
                what: what.to_string(),
                status: source.status_code.as_u16(),
                message: source.message.chars().take(300).collect(),
            },
            other => {
                // octocrab's errors never carry the token; keep only the first line.
                let reason = other.to_string();
                GithubError::Transport {
                    what: what.to_string(),
                    reason: reason
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect(),
                }
            }
        }
    }
}

pub type Result<T, E = GithubError> = std::result::Result<T, E>;

/// How Airlock authenticates to GitHub.
#[derive(Clone)]
pub enum Auth {
    /// A GitHub App: JWTs signed with its private key, then installation tokens per repository.
    App {
        app_id: u64,
        key: Arc<jsonwebtoken::EncodingKey>,
    },
    /// A personal access token (or any token that works as one).
    Token(Arc<SecretValue>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::App { app_id, .. } => write!(f, "Auth::App({app_id})"),
            Auth::Token(_) => f.write_str("Auth::Token(***)"),
        }
    }
}

impl Auth {
    /// A GitHub App from its id and its private key (the PEM file GitHub gives).
    pub fn app(app_id: u64, private_key_pem: &[u8]) -> Result<Auth> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|e| GithubError::BadKey(e.to_string()))?;
        Ok(Auth::App {
            app_id,
            key: Arc::new(key),
        })
    }
}

/// Checks that `pem` is a private key a GitHub App could sign with.
pub fn check_app_key(pem: &[u8]) -> Result<()> {
    Auth::app(1, pem).map(|_| ())
}

/// A token for one repository, and when it stops working (ms since the epoch; `i64::MAX` for
/// a personal access token).
#[derive(Clone)]
pub struct RepoToken {
    pub token: Arc<SecretValue>,
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct InstallationRef {
    id: u64,
}

#[derive(Serialize)]
struct TokenRequest<'a> {
    repositories: [&'a str; 1],
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: String,
}

/// The GitHub API for one deployment. Cheap to clone.
#[derive(Clone)]
pub struct Github {
    api_url: String,
    auth: Auth,
    tokens: Arc<Mutex<HashMap<String, RepoToken>>>,
}

impl std::fmt::Debug for Github {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Github")
            .field("api_url", &self.api_url)
            .field("auth", &self.auth)
            .finish()
    }
}

fn split_repo(repo: &str) -> Result<(&str, &str)> {
    match repo.split_once('/') {
        Some((o, n)) if crate::domain::is_repo(repo) => Ok((o, n)),
        _ => Err(GithubError::BadRepo(repo.chars().take(120).collect())),
    }
}

impl Github {
    pub fn new(api_url: &str, auth: Auth) -> Github {
        Github {
            api_url: api_url.trim_end_matches('/').to_string(),
            auth,
            tokens: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    fn client(&self, token: &str) -> Result<octocrab::Octocrab> {
        octocrab::Octocrab::builder()
            .base_uri(self.api_url.as_str())
            .map_err(|e| GithubError::from_octocrab("the API address", e))?
            .personal_token(token.to_string())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| GithubError::from_octocrab("a client", e))
    }

    /// A token that may act on `repo` (and, for an App, on nothing else), minted or cached.
    pub async fn repo_token(&self, repo: &str) -> Result<RepoToken> {
        let (owner, name) = split_repo(repo)?;
        let (app_id, key) = match &self.auth {
            Auth::Token(t) => {
                return Ok(RepoToken {
                    token: t.clone(),
                    expires_at: i64::MAX,
                })
            }
            Auth::App { app_id, key } => (*app_id, key.clone()),
        };
        let cache_key = repo.to_ascii_lowercase();
        // One mint at a time per deployment: concurrent requests for the same repository wait
        // for the first one's token instead of minting their own.
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = tokens.get(&cache_key) {
            if t.expires_at - REFRESH_BEFORE_MS > now_ms() {
                return Ok(t.clone());
            }
        }
        let jwt = octocrab::auth::create_jwt(app_id.into(), &key)
            .map_err(|e| GithubError::BadKey(e.to_string()))?;
        let app = self.client(&jwt)?;
        let what = format!("the App's installation on {owner}/{name}");
        let inst: InstallationRef = app
            .get(format!("/repos/{owner}/{name}/installation"), None::<&()>)
            .await
            .map_err(|e| match GithubError::from_octocrab(&what, e) {
                GithubError::Api { status: 404, .. } => GithubError::NotInstalled {
                    repo: format!("{owner}/{name}"),
                },
                other => other,
            })?;
        let what = format!("an installation token for {owner}/{name}");
        let answer: TokenAnswer = app
            .post(
                format!("/app/installations/{}/access_tokens", inst.id),
                Some(&TokenRequest {
                    repositories: [name],
                }),
            )
            .await
            .map_err(|e| GithubError::from_octocrab(&what, e))?;
        let expires_at = time::OffsetDateTime::parse(
            &answer.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_else(|_| now_ms() + 10 * 60 * 1000);
        let token = RepoToken {
            token: Arc::new(SecretValue::new(answer.token.into_bytes())),
            expires_at,
        };
        tokens.insert(cache_key, token.clone());
        Ok(token)
    }

    /// A client acting on `repo` with its token.
    pub async fn for_repo(&self, repo: &str) -> Result<octocrab::Octocrab> {
        let t = self.repo_token(repo).await?;
        self.client(&String::from_utf8_lossy(t.token.expose()))
    }
}
