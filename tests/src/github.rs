//! A strict, stateful fake of GitHub: the REST API (plain HTTP on loopback) and git smart HTTP
//! (HTTPS with its own test CA), backed by one in-memory world, so what one step creates (a
//! pushed branch, a comment) really exists for the next step to see.
//!
//! Strict as GitHub is: every API call needs a `User-Agent` and a valid credential (the App's
//! RS256 JWT for `/app/...`, a personal access token or an installation token otherwise);
//! installation tokens work only on the repositories they were minted for; a pull request
//! needs its head branch to exist; unknown routes and malformed bodies are recorded as
//! unexpected, and a test ends with a failure when any were (the fake asserts it on drop).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

/// One comment on an issue or pull request, with every body it has had.
#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub body: String,
    /// Earlier bodies, oldest first (edits in place).
    pub history: Vec<String>,
    pub reactions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    pub author: String,
}

#[derive(Debug, Clone, Default)]
struct Issue {
    title: String,
    /// `(head, base)` for a pull request.
    pull: Option<(String, String)>,
    comments: Vec<u64>,
}

#[derive(Debug, Default)]
struct Repo {
    id: u64,
    permissions: HashMap<String, String>,
    issues: BTreeMap<u64, Issue>,
    pulls: Vec<Pull>,
    installation: Option<u64>,
}

struct Token {
    login: String,
    /// `None`: a personal access token (its user's permissions apply).
    repos: Option<Vec<String>>,
    /// An installation token's permissions, as minted (`{"contents": "write", ...}`).
    permissions: Value,
}

#[derive(Default)]
struct World {
    next_id: u64,
    users: HashMap<String, u64>,
    tokens: HashMap<String, Token>,
    repos: BTreeMap<String, Repo>,
    comments: HashMap<u64, (String, u64, Comment)>,
    review_comments: HashMap<u64, Comment>,
    /// Bodies of installation-token requests, in order.
    token_requests: Vec<Value>,
    unexpected: Vec<String>,
    api_calls: Vec<String>,
}

impl World {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[derive(Clone)]
struct Shared {
    world: Arc<Mutex<World>>,
    app_id: u64,
    app_public: Arc<jsonwebtoken::DecodingKey>,
    git_root: PathBuf,
    web_url: Arc<Mutex<String>>,
    bot: String,
}

/// The App's key pair, made once per test binary (RSA key generation is slow).
fn app_keys() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
        use rsa::pkcs8::EncodePublicKey;
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
        let pem = private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let public = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (pem, public)
    })
}

pub struct FakeGithub {
    /// `http://127.0.0.1:<port>`: `github.api_url`.
    pub api_url: String,
    /// `https://localhost:<port>`: where git is served (`github.git_upstream`).
    pub git_url: String,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub app_id: u64,
    /// The App's private key (PKCS#1 PEM, as GitHub hands it out): the `github-app` credential.
    pub app_key_pem: String,
    /// The App's bot login, the author of what installation tokens create.
    pub bot: String,
    shared: Shared,
    _dir: tempfile::TempDir,
}

impl FakeGithub {
    pub async fn start() -> FakeGithub {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::TestCa::new("Fake GitHub test CA", dir.path());
        let git_root = dir.path().join("git");
        std::fs::create_dir_all(&git_root).unwrap();
        let (private, public) = app_keys();
        let shared = Shared {
            world: Arc::new(Mutex::new(World {
                next_id: 1000,
                ..Default::default()
            })),
            app_id: 4242,
            app_public: Arc::new(
                jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            ),
            git_root: git_root.clone(),
            web_url: Arc::new(Mutex::new(String::new())),
            bot: "airlock[bot]".into(),
        };
        let api = Router::new()
            .route("/{*path}", any(api))
            .with_state(shared.clone());
        let api_port = crate::tls::serve_http(api).await;
        let git = Router::new()
            .route("/{*path}", any(git))
            .with_state(shared.clone());
        let git_port =
            crate::tls::serve_https(git, ca.server_config(&["localhost", "127.0.0.1"])).await;
        FakeGithub {
            api_url: format!("http://127.0.0.1:{api_port}"),
            git_url: format!("https://localhost:{git_port}"),
            ca_pem: ca.pem.clone(),
            ca_file: ca.file.clone(),
            app_id: shared.app_id,
            app_key_pem: private.clone(),
            bot: shared.bot.clone(),
            shared,
            _dir: dir,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap()
    }

    /// The web address Airlock is configured with (`github.web_url`), used in `html_url`s.
    pub fn set_web_url(&self, url: &str) {
        *self.shared.web_url.lock().unwrap() = url.trim_end_matches('/').to_string();
    }

    /// A user, with a stable numeric id.
    pub fn add_user(&self, login: &str) -> u64 {
        let mut w = self.world();
        if let Some(id) = w.users.get(login) {
            return *id;
        }
        let id = w.id();
        w.users.insert(login.to_string(), id);
        id
    }

    /// A repository `owner/name` with a README (and `files`) on `main`; returns the bare repo.
    pub fn create_repo(&self, full_name: &str, files: &[(&str, &str)]) -> PathBuf {
        let (owner, name) = full_name.split_once('/').unwrap();
        let bare =
            crate::git::create_bare_repo_with(&self.shared.git_root.join(owner), name, files);
        let mut w = self.world();
        let id = w.id();
        w.repos.insert(
            full_name.to_string(),
            Repo {
                id,
                ..Default::default()
            },
        );
        bare
    }

    /// Gives `login` a permission on a repository: `admin`, `write`, `read` or `none`.
    pub fn grant(&self, repo: &str, login: &str, permission: &str) {
        self.add_user(login);
        let mut w = self.world();
        w.repos
            .get_mut(repo)
            .expect("no such repo")
            .permissions
            .insert(login.to_string(), permission.to_string());
    }

    /// Installs the App on these repositories; returns the installation id.
    pub fn install_app(&self, repos: &[&str]) -> u64 {
        let mut w = self.world();
        let id = w.id();
        for r in repos {
            w.repos.get_mut(*r).expect("no such repo").installation = Some(id);
        }
        id
    }

    /// A personal access token of `login`.
    pub fn add_token(&self, token: &str, login: &str) {
        self.add_user(login);
        self.world().tokens.insert(
            token.to_string(),
            Token {
                login: login.to_string(),
                repos: None,
                permissions: Value::Null,
            },
        );
    }

    /// An issue (or, with `pull = Some((head, base))`, a pull request) with this number.
    pub fn open_issue(&self, repo: &str, number: u64, title: &str, pull: Option<(&str, &str)>) {
        let mut w = self.world();
        let r = w.repos.get_mut(repo).expect("no such repo");
        r.issues.insert(
            number,
            Issue {
                title: title.to_string(),
                pull: pull.map(|(h, b)| (h.to_string(), b.to_string())),
                comments: Vec::new(),
            },
        );
        if let Some((head, base)) = pull {
            r.pulls.push(Pull {
                number,
                title: title.to_string(),
                body: String::new(),
                head: head.to_string(),
                base: base.to_string(),
                author: "someone".into(),
            });
        }
    }

    /// A comment by a person (as a webhook would report it), so reactions to it can be seen.
    pub fn add_comment(&self, repo: &str, number: u64, author: &str, body: &str) -> u64 {
        let id = self.world().id();
        self.put_comment(repo, number, id, author, body);
        id
    }

    /// A comment with a given id (the one a fixture payload names).
    pub fn put_comment(&self, repo: &str, number: u64, id: u64, author: &str, body: &str) -> u64 {
        let mut w = self.world();
        w.repos
            .get_mut(repo)
            .and_then(|r| r.issues.get_mut(&number))
            .expect("no such issue")
            .comments
            .push(id);
        w.comments.insert(
            id,
            (
                repo.to_string(),
                number,
                Comment {
                    id,
                    author: author.into(),
                    body: body.into(),
                    history: Vec::new(),
                    reactions: Vec::new(),
                },
            ),
        );
        id
    }

    /// A pull-request review comment by a person, with the id its payload names.
    pub fn put_review_comment(&self, id: u64, author: &str, body: &str) -> u64 {
        let mut w = self.world();
        w.review_comments.insert(
            id,
            Comment {
                id,
                author: author.into(),
                body: body.into(),
                history: Vec::new(),
                reactions: Vec::new(),
            },
        );
        id
    }

    /// A branch of `repo` made from `main` with `files` changed, as someone else pushed it.
    pub fn create_branch(&self, repo: &str, branch: &str, files: &[(&str, &str)]) {
        let bare = self.bare(repo);
        let work = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(work.path())
                .env("GIT_AUTHOR_NAME", "Someone")
                .env("GIT_AUTHOR_EMAIL", "someone@example.com")
                .env("GIT_COMMITTER_NAME", "Someone")
                .env("GIT_COMMITTER_EMAIL", "someone@example.com")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        git(&["clone", "-q", bare.to_str().unwrap(), "."]);
        git(&["checkout", "-q", "-b", branch]);
        for (path, text) in files {
            std::fs::write(work.path().join(path), text).unwrap();
        }
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "work in progress"]);
        git(&["push", "-q", "origin", branch]);
    }

    /// The comments on an issue or pull request, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        let w = self.world();
        let Some(issue) = w.repos.get(repo).and_then(|r| r.issues.get(&number)) else {
            return Vec::new();
        };
        issue
            .comments
            .iter()
            .filter_map(|id| w.comments.get(id).map(|(_, _, c)| c.clone()))
            .collect()
    }

    pub fn comment(&self, id: u64) -> Option<Comment> {
        let w = self.world();
        w.comments
            .get(&id)
            .map(|(_, _, c)| c.clone())
            .or_else(|| w.review_comments.get(&id).cloned())
    }

    pub fn pulls(&self, repo: &str) -> Vec<Pull> {
        self.world()
            .repos
            .get(repo)
            .map(|r| r.pulls.clone())
            .unwrap_or_default()
    }

    /// Bodies of the installation-token requests the App made.
    pub fn token_requests(&self) -> Vec<Value> {
        self.world().token_requests.clone()
    }

    /// Every installation token the App was given (to prove none reached a sandbox).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.world()
            .tokens
            .iter()
            .filter(|(_, t)| t.repos.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `METHOD /path` of every API call, in order.
    pub fn api_calls(&self) -> Vec<String> {
        self.world().api_calls.clone()
    }

    /// Requests the fake did not recognise or found malformed.
    pub fn unexpected(&self) -> Vec<String> {
        self.world().unexpected.clone()
    }

    /// The bare repository of `owner/name`.
    pub fn bare(&self, full_name: &str) -> PathBuf {
        self.shared.git_root.join(format!("{full_name}.git"))
    }

    /// `git log` of a branch as `%s` lines, or `None` when it does not exist.
    pub fn log(&self, repo: &str, branch: &str, format: &str) -> Option<String> {
        crate::git::in_bare(
            &self.bare(repo),
            &["log", &format!("--format={format}"), branch, "--"],
        )
    }

    pub fn branches(&self, repo: &str) -> Vec<String> {
        crate::git::in_bare(
            &self.bare(repo),
            &["for-each-ref", "--format=%(refname:short)", "refs/heads"],
        )
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// A real webhook payload from `../shared/fixtures/github/` (`<event>.<action>.json`).
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/github")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixtures are JSON")
}

/// A comment event's fixture as GitHub would send it now: the comment written a moment ago
/// (Airlock ignores comments more than a week old as replays).
pub fn comment_fixture(name: &str) -> Value {
    event_fixture(name)
}

/// An event's fixture as GitHub would send it now: the comment written, the issue or pull
/// request updated a moment ago (Airlock ignores events more than a week old as replays).
pub fn event_fixture(name: &str) -> Value {
    let mut p = fixture(name);
    let now = Value::from(
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    );
    if p.get("comment").is_some() {
        p["comment"]["created_at"] = now.clone();
    }
    for item in ["issue", "pull_request"] {
        if p.get(item).is_some() {
            p[item]["updated_at"] = now.clone();
        }
    }
    p
}

/// `sha256=<hex>` over `body` with `secret`: the `X-Hub-Signature-256` GitHub sends.
pub fn sign_webhook(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn err(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

fn user_json(login: &str, id: u64) -> Value {
    let kind = if login.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    };
    json!({"login": login, "id": id, "node_id": format!("U_{id}"), "type": kind, "site_admin": false,
           "url": format!("https://api.github.com/users/{login}"), "html_url": format!("https://github.com/{login}")})
}

/// Who a request is from.
enum Caller {
    App,
    Token {
        login: String,
        repos: Option<Vec<String>>,
        permissions: Value,
    },
}

/// What a call needs of its token.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Read,
    Contents,
    PullRequests,
    /// Issue comments and reactions (on a pull request, pull-request write also does).
    Issues,
}

fn caller(s: &Shared, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
    if headers.get("user-agent").is_none() {
        return Err(Box::new(err(StatusCode::FORBIDDEN, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header")));
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("token "))
        .unwrap_or("");
    if token.is_empty() {
        return Err(Box::new(err(
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
        )));
    }
    if token.matches('.').count() == 2 {
        // GitHub takes the App id as a number or a string in `iss`, and at most ten minutes
        // between `iat` and `exp`.
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_required_spec_claims(&["exp"]);
        let claims = match jsonwebtoken::decode::<Value>(token, &s.app_public, &v) {
            Ok(d) => d.claims,
            Err(e) => {
                return Err(Box::new(err(
                    StatusCode::UNAUTHORIZED,
                    &format!("A JSON web token could not be decoded: {e}"),
                )))
            }
        };
        let iss = match &claims["iss"] {
            Value::Number(n) => n.to_string(),
            Value::String(t) => t.clone(),
            _ => String::new(),
        };
        let span = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
        if iss != s.app_id.to_string() || !(1..=600).contains(&span) {
            return Err(Box::new(err(
                StatusCode::UNAUTHORIZED,
                "'Issued at' or 'Expiration' time is invalid, or the issuer is not this App",
            )));
        }
        return Ok(Caller::App);
    }
    let w = s.world.lock().unwrap();
    match w.tokens.get(token) {
        Some(t) => Ok(Caller::Token {
            login: t.login.clone(),
            repos: t.repos.clone(),
            permissions: t.permissions.clone(),
        }),
        None => Err(Box::new(err(StatusCode::UNAUTHORIZED, "Bad credentials"))),
    }
}

fn may(w: &World, caller: &Caller, repo: &str, need: Need) -> bool {
    let write = need != Need::Read;
    match caller {
        Caller::App => false,
        Caller::Token {
            repos: Some(repos),
            permissions,
            ..
        } => {
            let has = |p: &str| permissions[p] == "write";
            repos.iter().any(|r| r == repo)
                && match need {
                    Need::Read => true,
                    Need::Contents => has("contents"),
                    Need::PullRequests => has("pull_requests"),
                    Need::Issues => has("issues") || has("pull_requests"),
                }
        }
        Caller::Token {
            login, repos: None, ..
        } => {
            let p = w
                .repos
                .get(repo)
                .and_then(|r| r.permissions.get(login))
                .map(String::as_str)
                .unwrap_or("none");
            if write {
                matches!(p, "admin" | "write")
            } else {
                p != "none"
            }
        }
    }
}

async fn api(
    State(s): State<Shared>,
    method: Method,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    let body = axum::body::to_bytes(req.into_body(), 25 * 1024 * 1024)
        .await
        .unwrap_or_default();
    s.world
        .lock()
        .unwrap()
        .api_calls
        .push(format!("{method} {path}"));
    let caller = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => {
            s.world
                .lock()
                .unwrap()
                .unexpected
                .push(format!("{method} {path}: refused credentials"));
            return *r;
        }
    };
    let answer = route(&s, &method, &path, &caller, &body);
    if answer.status() == StatusCode::NOT_FOUND
        || answer.status() == StatusCode::UNPROCESSABLE_ENTITY
    {
        s.world
            .lock()
            .unwrap()
            .unexpected
            .push(format!("{method} {path}: {}", answer.status()));
    }
    answer
}

fn parse_body(body: &Bytes) -> Option<Value> {
    serde_json::from_slice::<Value>(body).ok()
}

fn route(s: &Shared, method: &Method, path: &str, caller: &Caller, body: &Bytes) -> Response {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let web = s.web_url.lock().unwrap().clone();
    let mut w = s.world.lock().unwrap();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["repos", o, r, "installation"]) => {
            if !matches!(caller, Caller::App) {
                return err(StatusCode::UNAUTHORIZED, "A JSON web token is required");
            }
            match w
                .repos
                .get(&format!("{o}/{r}"))
                .and_then(|r| r.installation)
            {
                Some(id) => Json(json!({"id": id, "app_id": s.app_id, "account": {"login": o}}))
                    .into_response(),
                None => err(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if !matches!(caller, Caller::App) {
                return err(StatusCode::UNAUTHORIZED, "A JSON web token is required");
            }
            let Ok(id) = id.parse::<u64>() else {
                return err(StatusCode::NOT_FOUND, "Not Found");
            };
            let Some(req) = parse_body(body) else {
                return err(StatusCode::BAD_REQUEST, "Problems parsing JSON");
            };
            w.token_requests.push(req.clone());
            let installed: Vec<String> = w
                .repos
                .iter()
                .filter(|(_, r)| r.installation == Some(id))
                .map(|(n, _)| n.clone())
                .collect();
            if installed.is_empty() {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let repos = match req.get("repositories").and_then(Value::as_array) {
                Some(names) => {
                    let mut out = Vec::new();
                    for n in names {
                        let Some(full) = n
                            .as_str()
                            .and_then(|n| installed.iter().find(|f| f.ends_with(&format!("/{n}"))))
                        else {
                            return err(StatusCode::UNPROCESSABLE_ENTITY, "There is at least one repository that does not exist or is not accessible to the parent installation.");
                        };
                        out.push(full.clone());
                    }
                    out
                }
                None => installed,
            };
            let token = format!("ghs_{}", ulid::Ulid::new().to_string().to_lowercase());
            // The token gets what was asked for; without a request, the App's full grant.
            let permissions = req.get("permissions").cloned().unwrap_or_else(
                || json!({"contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"}),
            );
            if permissions.get("workflows").is_some() {
                w.unexpected
                    .push("an installation token asked for workflows".into());
            }
            w.tokens.insert(
                token.clone(),
                Token {
                    login: s.bot.clone(),
                    repos: Some(repos.clone()),
                    permissions: permissions.clone(),
                },
            );
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let expires = expires
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            (
                StatusCode::CREATED,
                Json(json!({"token": token, "expires_at": expires, "permissions": permissions,
                            "repository_selection": "selected",
                            "repositories": repos.iter().map(|r| json!({"full_name": r})).collect::<Vec<_>>()})),
            )
                .into_response()
        }
        ("GET", ["repos", o, r]) => {
            let full = format!("{o}/{r}");
            if !w.repos.contains_key(&full) || !may(&w, caller, &full, Need::Read) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let id = w.repos[&full].id;
            Json(json!({"id": id, "name": r, "full_name": full, "default_branch": "main", "private": true,
                        "html_url": format!("{web}/{full}"), "clone_url": format!("{web}/{full}.git")}))
            .into_response()
        }
        ("GET", ["repos", o, r, "collaborators", user, "permission"]) => {
            let full = format!("{o}/{r}");
            if !w.repos.contains_key(&full) || !may(&w, caller, &full, Need::Read) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let Some(uid) = w.users.get(*user).copied() else {
                return err(StatusCode::NOT_FOUND, "Not Found");
            };
            let p = w.repos[&full]
                .permissions
                .get(*user)
                .cloned()
                .unwrap_or_else(|| "none".into());
            Json(json!({"permission": p, "role_name": p, "user": user_json(user, uid)}))
                .into_response()
        }
        ("GET", ["repos", o, r, "pulls", n]) => {
            let full = format!("{o}/{r}");
            if !may(&w, caller, &full, Need::Read) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let n: u64 = n.parse().unwrap_or(0);
            match w
                .repos
                .get(&full)
                .and_then(|r| r.pulls.iter().find(|p| p.number == n))
            {
                Some(p) => Json(pull_json(&web, &full, p)).into_response(),
                None => err(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        ("POST", ["repos", o, r, "pulls"]) => {
            let full = format!("{o}/{r}");
            if !w.repos.contains_key(&full) || !may(&w, caller, &full, Need::PullRequests) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let Some(req) = parse_body(body) else {
                return err(StatusCode::BAD_REQUEST, "Problems parsing JSON");
            };
            let field = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(title), Some(head), Some(base)) =
                (field("title"), field("head"), field("base"))
            else {
                return err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed: title, head and base are required",
                );
            };
            let bare = s.git_root.join(format!("{full}.git"));
            let exists = |b: &str| {
                crate::git::in_bare(
                    &bare,
                    &["rev-parse", "--verify", "-q", &format!("refs/heads/{b}")],
                )
                .is_some()
            };
            if !exists(&head) || !exists(&base) {
                return err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed: head or base does not exist",
                );
            }
            let login = caller.login();
            let repo = w.repos.get_mut(&full).unwrap();
            if repo.pulls.iter().any(|p| p.head == head && p.base == base) {
                return err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("Validation Failed: A pull request already exists for {o}:{head}."),
                );
            }
            let number = repo
                .issues
                .keys()
                .max()
                .copied()
                .unwrap_or(0)
                .max(repo.pulls.iter().map(|p| p.number).max().unwrap_or(0))
                + 1;
            let pull = Pull {
                number,
                title: title.clone(),
                body: field("body").unwrap_or_default(),
                head: head.clone(),
                base: base.clone(),
                author: login,
            };
            repo.issues.insert(
                number,
                Issue {
                    title,
                    pull: Some((head, base)),
                    comments: Vec::new(),
                },
            );
            repo.pulls.push(pull.clone());
            (StatusCode::CREATED, Json(pull_json(&web, &full, &pull))).into_response()
        }
        ("GET", ["repos", o, r, "issues", n]) => {
            let full = format!("{o}/{r}");
            if !may(&w, caller, &full, Need::Read) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let n: u64 = n.parse().unwrap_or(0);
            match w.repos.get(&full).and_then(|r| r.issues.get(&n)) {
                Some(i) => {
                    let mut j = json!({"number": n, "title": i.title, "state": "open",
                                       "html_url": format!("{web}/{full}/issues/{n}")});
                    if i.pull.is_some() {
                        j["pull_request"] = json!({"url": format!("https://api.github.com/repos/{full}/pulls/{n}")});
                    }
                    Json(j).into_response()
                }
                None => err(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        ("POST", ["repos", o, r, "issues", n, "comments"]) => {
            let full = format!("{o}/{r}");
            if !may(&w, caller, &full, Need::Issues) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let n: u64 = n.parse().unwrap_or(0);
            let text = match comment_body(body) {
                Ok(t) => t,
                Err(why) => return err(StatusCode::UNPROCESSABLE_ENTITY, why),
            };
            if !w
                .repos
                .get(&full)
                .is_some_and(|r| r.issues.contains_key(&n))
            {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let login = caller.login();
            let id = w.id();
            w.repos
                .get_mut(&full)
                .unwrap()
                .issues
                .get_mut(&n)
                .unwrap()
                .comments
                .push(id);
            let c = Comment {
                id,
                author: login,
                body: text,
                history: Vec::new(),
                reactions: Vec::new(),
            };
            let j = comment_json(&web, &full, n, &c, &w);
            w.comments.insert(id, (full, n, c));
            (StatusCode::CREATED, Json(j)).into_response()
        }
        ("PATCH", ["repos", o, r, "issues", "comments", id]) => {
            let full = format!("{o}/{r}");
            if !may(&w, caller, &full, Need::Issues) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let id: u64 = id.parse().unwrap_or(0);
            let text = match comment_body(body) {
                Ok(t) => t,
                Err(why) => return err(StatusCode::UNPROCESSABLE_ENTITY, why),
            };
            let login = caller.login();
            let Some((repo, n, mut c)) = w.comments.get(&id).cloned() else {
                return err(StatusCode::NOT_FOUND, "Not Found");
            };
            if repo != full || c.author != login {
                return err(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by integration",
                );
            }
            let old = std::mem::replace(&mut c.body, text);
            c.history.push(old);
            let j = comment_json(&web, &full, n, &c, &w);
            w.comments.insert(id, (repo, n, c));
            Json(j).into_response()
        }
        ("POST", ["repos", o, r, kind @ ("issues" | "pulls"), "comments", id, "reactions"]) => {
            let full = format!("{o}/{r}");
            if !may(&w, caller, &full, Need::Issues) {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let id: u64 = id.parse().unwrap_or(0);
            let Some(content) = parse_body(body)
                .and_then(|b| b.get("content").and_then(Value::as_str).map(str::to_string))
            else {
                return err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed: content is required",
                );
            };
            const KINDS: &[&str] = &[
                "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
            ];
            if !KINDS.contains(&content.as_str()) {
                return err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed: content is not a reaction",
                );
            }
            let target = if *kind == "issues" {
                w.comments
                    .get_mut(&id)
                    .filter(|(repo, _, _)| *repo == full)
                    .map(|(_, _, c)| c)
            } else {
                w.review_comments.get_mut(&id)
            };
            let Some(c) = target else {
                return err(StatusCode::NOT_FOUND, "Not Found");
            };
            c.reactions.push(content.clone());
            (
                StatusCode::CREATED,
                Json(json!({"id": id * 10, "content": content})),
            )
                .into_response()
        }
        _ => err(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// A comment's text as GitHub checks it: present, at most 65,536 characters.
fn comment_body(body: &Bytes) -> Result<String, &'static str> {
    let text = parse_body(body)
        .and_then(|b| b.get("body").and_then(Value::as_str).map(str::to_string))
        .ok_or("Validation Failed: body is required")?;
    if text.chars().count() > 65536 {
        return Err("Validation Failed: body is too long (maximum is 65536 characters)");
    }
    Ok(text)
}

impl Caller {
    /// Who a write is by (the App's JWT cannot write; routes check that first).
    fn login(&self) -> String {
        match self {
            Caller::Token { login, .. } => login.clone(),
            Caller::App => unreachable!("a JWT cannot write to a repository"),
        }
    }
}

fn pull_json(web: &str, full: &str, p: &Pull) -> Value {
    json!({"id": p.number + 900_000, "number": p.number, "state": "open", "title": p.title, "body": p.body,
           "html_url": format!("{web}/{full}/pull/{}", p.number),
           "url": format!("https://api.github.com/repos/{full}/pulls/{}", p.number),
           "head": {"ref": p.head, "repo": {"full_name": full}}, "base": {"ref": p.base, "repo": {"full_name": full}},
           "user": {"login": p.author}})
}

fn comment_json(web: &str, full: &str, n: u64, c: &Comment, w: &World) -> Value {
    let uid = w.users.get(&c.author).copied().unwrap_or(1);
    json!({"id": c.id, "node_id": format!("IC_{}", c.id), "body": c.body,
           "html_url": format!("{web}/{full}/issues/{n}#issuecomment-{}", c.id),
           "url": format!("https://api.github.com/repos/{full}/issues/comments/{}", c.id),
           "user": user_json(&c.author, uid), "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

/// Git smart HTTP at `/<owner>/<name>.git/...`, behind Basic auth with a token that may act on
/// the repository (read to fetch, write to push).
async fn git(State(s): State<Shared>, Path(path): Path<String>, req: Request) -> Response {
    let mut segs = path.splitn(3, '/');
    let (Some(owner), Some(name)) = (segs.next(), segs.next()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(name) = name.strip_suffix(".git") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let full = format!("{owner}/{name}");
    let push = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("git-receive-pack"))
        || path.ends_with("git-receive-pack");
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let denied = || {
        (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"GitHub\"")],
            "fake github: Invalid username or token.\n",
        )
            .into_response()
    };
    let Some((_, token)) = auth.as_deref().and_then(|a| a.split_once(':')) else {
        return denied();
    };
    let login = {
        let w = s.world.lock().unwrap();
        let Some(t) = w.tokens.get(token) else {
            return denied();
        };
        let caller = Caller::Token {
            login: t.login.clone(),
            repos: t.repos.clone(),
            permissions: t.permissions.clone(),
        };
        let need = if push { Need::Contents } else { Need::Read };
        if !w.repos.contains_key(&full) || !may(&w, &caller, &full, need) {
            return (
                StatusCode::FORBIDDEN,
                format!(
                    "fake github: Permission to {full}.git denied to {}.\n",
                    t.login
                ),
            )
                .into_response();
        }
        t.login.clone()
    };
    crate::git::http_backend(&s.git_root, &login, req).await
}

/// Strict by default (see [`crate::fail_on_unexpected`]).
impl Drop for FakeGithub {
    fn drop(&mut self) {
        let seen = self
            .shared
            .world
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unexpected
            .clone();
        crate::fail_on_unexpected("the fake GitHub", seen);
    }
}
