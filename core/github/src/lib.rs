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

use airlock_store::ids::now_ms;
use airlock_store::secrets::SecretValue;

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

/// The host of a GitHub web address (`https://github.com` -> `github.com`): the workspace of
/// GitHub identities.
pub fn web_host(web_url: &str) -> String {
    let rest = web_url.split_once("://").map(|(_, r)| r).unwrap_or(web_url);
    rest.split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
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

/// What an installation token is minted for; each gets only the permissions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Git through the gateway: clone and push (contents write).
    Git,
    /// Airlock's own calls: pull requests, comments and reactions. Never contents or
    /// workflows.
    Bot,
}

impl Scope {
    fn permissions(self) -> serde_json::Value {
        match self {
            Scope::Git => serde_json::json!({"contents": "write", "metadata": "read"}),
            Scope::Bot => serde_json::json!({
                "pull_requests": "write", "issues": "write", "metadata": "read"
            }),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Scope::Git => "git",
            Scope::Bot => "bot",
        }
    }
}

#[derive(Serialize)]
struct TokenRequest<'a> {
    repositories: [&'a str; 1],
    permissions: serde_json::Value,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: String,
}

/// A repository's client and the token it was made with.
type RepoClient = (Arc<SecretValue>, octocrab::Octocrab);

/// The GitHub API for one deployment. Cheap to clone.
#[derive(Clone)]
pub struct Github {
    api_url: String,
    auth: Auth,
    tokens: Arc<Mutex<HashMap<String, RepoToken>>>,
    /// A client per repository, kept while its token is the current one.
    clients: Arc<std::sync::Mutex<HashMap<String, RepoClient>>>,
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
        Some((o, n)) if airlock_store::domain::is_repo(repo) => Ok((o, n)),
        _ => Err(GithubError::BadRepo(repo.chars().take(120).collect())),
    }
}

impl Github {
    pub fn new(api_url: &str, auth: Auth) -> Github {
        Github {
            api_url: api_url.trim_end_matches('/').to_string(),
            auth,
            tokens: Arc::new(Mutex::new(HashMap::new())),
            clients: Arc::new(std::sync::Mutex::new(HashMap::new())),
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

    /// The installation token for `repo` and `scope` already minted and still good, if any
    /// (without waiting for a mint in progress).
    pub fn cached_repo_token(&self, repo: &str, scope: Scope) -> Option<RepoToken> {
        let key = format!("{}:{}", scope.key(), repo.to_ascii_lowercase());
        let tokens = self.tokens.try_lock().ok()?;
        tokens
            .get(&key)
            .filter(|t| t.expires_at > now_ms())
            .cloned()
    }

    /// A token that may act on `repo` (and, for an App, on nothing else, with only the
    /// permissions `scope` needs), minted or cached.
    pub async fn repo_token(&self, repo: &str, scope: Scope) -> Result<RepoToken> {
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
        let cache_key = format!("{}:{}", scope.key(), repo.to_ascii_lowercase());
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
                    permissions: scope.permissions(),
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
        let t = self.repo_token(repo, Scope::Bot).await?;
        let key = repo.to_ascii_lowercase();
        if let Some((tok, c)) = self.clients.lock().expect("clients").get(&key) {
            if Arc::ptr_eq(tok, &t.token) {
                return Ok(c.clone());
            }
        }
        let c = self.client(&String::from_utf8_lossy(t.token.expose()))?;
        self.clients
            .lock()
            .expect("clients")
            .insert(key, (t.token.clone(), c.clone()));
        Ok(c)
    }
}

/// A pull request, as far as Airlock needs one.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PullRequest {
    pub number: u64,
    pub html_url: String,
    #[serde(default)]
    pub head: Option<BranchRef>,
    #[serde(default)]
    pub base: Option<BranchRef>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct BranchRef {
    #[serde(rename = "ref")]
    pub name: String,
    #[serde(default)]
    pub repo: Option<RepoName>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RepoName {
    pub full_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct CommentRef {
    pub id: u64,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Deserialize)]
struct Permission {
    permission: String,
}

#[derive(Deserialize)]
struct RepoInfo {
    default_branch: String,
}

impl Github {
    async fn call<R: serde::de::DeserializeOwned>(
        &self,
        repo: &str,
        what: &str,
        method: http::Method,
        route: String,
        body: Option<serde_json::Value>,
    ) -> Result<R> {
        let client = self.for_repo(repo).await?;
        let r = match method {
            http::Method::GET => client.get(route, None::<&()>).await,
            http::Method::POST => client.post(route, body.as_ref()).await,
            http::Method::PATCH => client.patch(route, body.as_ref()).await,
            _ => unreachable!("only GET, POST and PATCH are used"),
        };
        r.map_err(|e| GithubError::from_octocrab(what, e))
    }

    /// Opens a pull request from `head` into `base`.
    pub async fn create_pull(
        &self,
        repo: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest> {
        self.call(
            repo,
            &format!("opening a pull request on {repo}"),
            http::Method::POST,
            format!("/repos/{repo}/pulls"),
            Some(serde_json::json!({"title": title, "head": head, "base": base, "body": body})),
        )
        .await
    }

    pub async fn pull(&self, repo: &str, number: u64) -> Result<PullRequest> {
        self.call(
            repo,
            &format!("reading pull request #{number} of {repo}"),
            http::Method::GET,
            format!("/repos/{repo}/pulls/{number}"),
            None,
        )
        .await
    }

    pub async fn default_branch(&self, repo: &str) -> Result<String> {
        let r: RepoInfo = self
            .call(
                repo,
                &format!("reading {repo}"),
                http::Method::GET,
                format!("/repos/{repo}"),
                None,
            )
            .await?;
        Ok(r.default_branch)
    }

    /// A comment on issue or pull request `number`.
    pub async fn comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef> {
        self.call(
            repo,
            &format!("commenting on {repo}#{number}"),
            http::Method::POST,
            format!("/repos/{repo}/issues/{number}/comments"),
            Some(serde_json::json!({ "body": body })),
        )
        .await
    }

    pub async fn edit_comment(&self, repo: &str, id: u64, body: &str) -> Result<CommentRef> {
        self.call(
            repo,
            &format!("editing a comment on {repo}"),
            http::Method::PATCH,
            format!("/repos/{repo}/issues/comments/{id}"),
            Some(serde_json::json!({ "body": body })),
        )
        .await
    }

    /// A reaction (`eyes`, `+1`, …) to an issue comment, or with `review` to a pull-request
    /// review comment.
    pub async fn react(
        &self,
        repo: &str,
        comment_id: u64,
        review: bool,
        content: &str,
    ) -> Result<()> {
        let kind = if review { "pulls" } else { "issues" };
        let _: serde_json::Value = self
            .call(
                repo,
                &format!("reacting to a comment on {repo}"),
                http::Method::POST,
                format!("/repos/{repo}/{kind}/comments/{comment_id}/reactions"),
                Some(serde_json::json!({ "content": content })),
            )
            .await?;
        Ok(())
    }

    /// `login`'s permission on `repo`: `admin`, `write`, `read` or `none`.
    pub async fn permission(&self, repo: &str, login: &str) -> Result<String> {
        let p: Permission = self
            .call(
                repo,
                &format!("checking {login}'s permission on {repo}"),
                http::Method::GET,
                format!("/repos/{repo}/collaborators/{login}/permission"),
                None,
            )
            .await?;
        Ok(p.permission)
    }
}

/// The deployment's GitHub client, made from `[github]` and the stored credential, and made
/// again when credentials change (so a rotated key or token is used from then on).
pub struct GithubSource {
    store: airlock_store::Store,
    config: airlock_store::config::GithubConfig,
    current: Mutex<Option<((i64, i64), Github)>>,
}

impl GithubSource {
    pub fn new(
        store: airlock_store::Store,
        config: airlock_store::config::GithubConfig,
    ) -> GithubSource {
        GithubSource {
            store,
            config,
            current: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &airlock_store::config::GithubConfig {
        &self.config
    }

    /// The credential git traffic uses (the App's key or the token).
    pub fn credential(&self) -> Option<&str> {
        self.config
            .app_credential
            .as_deref()
            .or(self.config.token_credential.as_deref())
    }

    pub async fn get(&self) -> std::result::Result<Github, String> {
        let fp = self
            .store
            .credentials_fingerprint()
            .await
            .map_err(|e| e.to_string())?;
        let mut cur = self.current.lock().await;
        if let Some((at, g)) = cur.as_ref() {
            if *at == fp {
                return Ok(g.clone());
            }
        }
        let name = self
            .credential()
            .ok_or("no GitHub credential is configured")?
            .to_string();
        let value = self.store.reveal_credential(&name).await.map_err(|e| {
            format!("the GitHub credential `{name}` cannot be read ({e}); set it with `airlock credential set {name}`")
        })?;
        let auth = match self.config.app_id {
            Some(id) if self.config.app_credential.is_some() => {
                Auth::app(id, value.expose()).map_err(|e| e.to_string())?
            }
            _ => Auth::Token(Arc::new(value)),
        };
        let g = Github::new(&self.config.api_url, auth);
        *cur = Some((fp, g.clone()));
        Ok(g)
    }
}
