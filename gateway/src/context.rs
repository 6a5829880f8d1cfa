//! Who is asking and what they may do: the egress token of a request resolved to its sandbox,
//! session, human and compiled routes (cached for a few seconds, so an ended session's token
//! stops working quickly); the stored credential values (reloaded when they change); and the
//! model budgets.
//!
//! Credential values live here in memory only, for injection and the request guard. Nothing
//! here logs one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airlock_github::{Auth, Github, RepoToken, Scope};
use airlock_store::domain::CredentialKind;
use airlock_store::ids::{now_ms, HumanId, SandboxId, SessionId};
use airlock_store::plan::Plan;
use airlock_store::secrets::SecretValue;
use airlock_store::store::token_hash;
use airlock_store::Store;

use crate::routes::RouteTable;
use crate::scan::Needles;

/// How long a resolved token is trusted before the database is asked again.
const CTX_TTL: Duration = Duration::from_secs(5);
/// How long a refused token is remembered (so a client retrying a bad token is cheap).
const DENY_TTL: Duration = Duration::from_secs(1);
/// Values shorter than this are not looked for in requests: they would match by chance.
pub const GUARD_MIN_LEN: usize = 8;
/// The label the form guard reports for a `_method` field.
pub const METHOD_OVERRIDE: &str = "method override";
/// How a form body restates its method (Rails, Laravel, Symfony read these).
const METHOD_OVERRIDE_FIELDS: [&[u8]; 2] = [b"_method=", b"name=\"_method\""];

/// One sandbox's standing at the gateway.
pub struct Ctx {
    token: String,
    pub token_hash: String,
    pub sandbox_id: SandboxId,
    pub session_id: Option<SessionId>,
    pub human_id: Option<HumanId>,
    pub repo: Option<String>,
    pub profile: String,
    pub address: IpAddr,
    pub expires_at: i64,
    pub routes: RouteTable,
    /// The one branch this sandbox's session may push; `None` outside a session.
    pub branch: Option<String>,
    /// Credentials this sandbox's routes name (their values are scrubbed from everything
    /// that comes back, on every route).
    pub credentials: Vec<String>,
}

impl Ctx {
    /// The actor named in the audit log.
    pub fn actor(&self) -> String {
        match &self.human_id {
            Some(h) => format!("human:{h}"),
            None => format!("sandbox:{}", self.sandbox_id),
        }
    }
}

enum Cached {
    Valid(Instant, Arc<Ctx>),
    Denied(Instant),
}

pub struct Sessions {
    store: Store,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Sessions {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The context of an egress token presented from `peer`; `None` for a token that is
    /// unknown, expired, not an egress token, or presented from another address than its
    /// sandbox's (the caller answers 407 and says nothing about which).
    pub async fn authorize(&self, token: &str, peer: IpAddr) -> Option<Arc<Ctx>> {
        let hash = token_hash(token);
        let ctx = self.lookup(&hash, token).await?;
        (ctx.address == peer).then_some(ctx)
    }

    /// The current context of an already authorised tunnel (the session may have ended).
    pub async fn revalidate(&self, ctx: &Ctx) -> Option<Arc<Ctx>> {
        self.lookup(&ctx.token_hash, &ctx.token).await
    }

    async fn lookup(&self, hash: &str, token: &str) -> Option<Arc<Ctx>> {
        {
            let cache = self.cache.lock().expect("ctx cache");
            match cache.get(hash) {
                Some(Cached::Valid(at, ctx)) if at.elapsed() < CTX_TTL => {
                    return (ctx.expires_at > now_ms()).then(|| ctx.clone());
                }
                Some(Cached::Denied(at)) if at.elapsed() < DENY_TTL => return None,
                _ => {}
            }
        }
        let loaded = match self.load(token, hash).await {
            Ok(ctx) => ctx.map(Arc::new),
            Err(e) => {
                tracing::warn!("cannot check an egress token: {e}");
                None
            }
        };
        let mut cache = self.cache.lock().expect("ctx cache");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(
            hash.to_string(),
            match &loaded {
                Some(ctx) => Cached::Valid(Instant::now(), ctx.clone()),
                None => Cached::Denied(Instant::now()),
            },
        );
        loaded
    }

    async fn load(
        &self,
        token: &str,
        hash: &str,
    ) -> Result<Option<Ctx>, airlock_store::StoreError> {
        let Some(binding) = self.store.check_token(token).await? else {
            return Ok(None);
        };
        if binding.kind != "egr" {
            return Ok(None);
        }
        let sb = self.store.sandbox(&binding.sandbox_id).await?;
        let Some(address) = sb.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) else {
            return Ok(None);
        };
        if sb.state == "gone" {
            return Ok(None);
        }
        let pv = self
            .store
            .profile_version(&sb.profile_id, Some(sb.profile_version))
            .await?;
        // A session's sandbox gets exactly its plan's routes (and no tunnels unless the
        // profile allows them in sessions); a build sandbox, running the setup steps, its
        // profile's routes and passthrough; any other unbound sandbox nothing.
        let mut egress = Vec::new();
        let mut passthrough = Vec::new();
        let mut branch = None;
        let (human_id, repo) = match &binding.session_id {
            Some(id) => {
                let s = self.store.session(id).await?;
                if s.state.is_terminal() {
                    return Ok(None);
                }
                if let Some(plan) = s.plan.as_ref().and_then(Plan::from_json) {
                    egress = plan.routes;
                    passthrough = plan.passthrough;
                    branch = Some(plan.branch).filter(|b| !b.is_empty());
                }
                (Some(s.requester_id), Some(s.repo))
            }
            None if sb.role == "build" => {
                egress = pv.spec.egress.clone();
                passthrough = pv.spec.passthrough.clone();
                (None, None)
            }
            None => (None, None),
        };
        let mut credentials: Vec<String> =
            egress.iter().filter_map(|r| r.credential.clone()).collect();
        credentials.sort();
        credentials.dedup();
        let routes = RouteTable::from_parts(&egress, &passthrough);
        Ok(Some(Ctx {
            token: token.to_string(),
            token_hash: hash.to_string(),
            sandbox_id: sb.id,
            session_id: binding.session_id,
            human_id,
            repo,
            profile: pv.spec.name.clone(),
            address,
            expires_at: binding.expires_at,
            routes,
            branch,
            credentials,
        }))
    }
}

/// The stored credentials, in clear, and the guard that looks for any of them in requests.
/// A session's scrubber is cached by the names of its credentials and its minted tokens' ids.
type ScrubberKey = (Vec<String>, Vec<i64>);

pub struct SecretSet {
    values: HashMap<String, (CredentialKind, SecretValue)>,
    /// `github-app` credentials, ready to mint installation tokens (with their own caches).
    apps: HashMap<String, Result<Github, String>>,
    pub guard: Option<Arc<Needles>>,
    /// The guard for form bodies on routes with method limits: also `_method` fields.
    pub form_guard: Option<Arc<Needles>>,
    /// Scrubbers by the credentials they cover (and the minted tokens' expiry times).
    scrubbers: Mutex<HashMap<ScrubberKey, Option<Arc<Needles>>>>,
}

/// What a route's credential puts into a request.
pub enum Injected<'a> {
    Stored(&'a SecretValue),
    Minted(RepoToken),
}

impl Injected<'_> {
    pub fn expose(&self) -> &[u8] {
        match self {
            Injected::Stored(v) => v.expose(),
            Injected::Minted(t) => t.token.expose(),
        }
    }
}

impl SecretSet {
    /// What is scrubbed from everything coming back to `ctx`'s sandbox: the values of every
    /// credential its routes name, and the installation tokens minted for its repository.
    pub fn scrubber(&self, ctx: &Ctx) -> Option<Arc<Needles>> {
        let mut minted = Vec::new();
        for name in &ctx.credentials {
            if let (Some(Ok(app)), Some(repo)) = (self.apps.get(name), &ctx.repo) {
                if let Some(t) = app.cached_repo_token(repo, Scope::Git) {
                    minted.push(t);
                }
            }
        }
        let key = (
            ctx.credentials.clone(),
            minted.iter().map(|t| t.expires_at).collect::<Vec<_>>(),
        );
        let mut cache = self.scrubbers.lock().expect("scrubbers");
        if let Some(n) = cache.get(&key) {
            return n.clone();
        }
        let mut values: Vec<(Vec<u8>, String)> = Vec::new();
        for name in &ctx.credentials {
            if let Some((kind, v)) = self.values.get(name) {
                if *kind != CredentialKind::GithubApp {
                    values.push((trimmed(v.expose()).to_vec(), name.clone()));
                }
            }
        }
        for t in &minted {
            values.push((t.token.expose().to_vec(), "a minted GitHub token".into()));
        }
        let needles = Needles::new(values).map(Arc::new);
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(key, needles.clone());
        needles
    }

    /// The value to inject for credential `name` on a request of `ctx`: the stored value, or
    /// for a GitHub App an installation token limited to the session's repository. `Err`
    /// explains, without any value, why there is none.
    pub async fn injected(&self, name: &str, ctx: &Ctx) -> Result<Injected<'_>, String> {
        let Some((kind, value)) = self.values.get(name) else {
            return Err(format!(
                "names the credential `{name}`, which is not stored. An admin can set it with \
                 `airlock credential set {name}`"
            ));
        };
        if *kind != CredentialKind::GithubApp {
            return Ok(Injected::Stored(value));
        }
        let github = match self.apps.get(name) {
            Some(Ok(g)) => g,
            Some(Err(why)) => {
                return Err(format!(
                    "uses the GitHub App credential `{name}`, but {why}"
                ))
            }
            None => {
                return Err(format!(
                    "names the credential `{name}`, which is not loaded yet"
                ))
            }
        };
        let Some(repo) = &ctx.repo else {
            return Err(format!(
                "uses the GitHub App credential `{name}`, which mints tokens for a session's \
                 repository, and this sandbox has no session"
            ));
        };
        github
            .repo_token(repo, Scope::Git)
            .await
            .map(Injected::Minted)
            .map_err(|e| format!("uses the GitHub App credential `{name}`: {e}"))
    }
}

pub struct Secrets {
    store: Store,
    current: RwLock<Arc<SecretSet>>,
    fingerprint: Mutex<Option<(i64, i64)>>,
    github_api_url: Option<String>,
    github_app_id: Option<u64>,
}

impl Secrets {
    pub fn new(store: Store, github_api_url: Option<String>, github_app_id: Option<u64>) -> Self {
        Self {
            store,
            current: RwLock::new(Arc::new(SecretSet {
                values: HashMap::new(),
                apps: HashMap::new(),
                guard: None,
                form_guard: Needles::build(Vec::new(), &METHOD_OVERRIDE_FIELDS, METHOD_OVERRIDE)
                    .map(Arc::new),
                scrubbers: Mutex::new(HashMap::new()),
            })),
            fingerprint: Mutex::new(None),
            github_api_url,
            github_app_id,
        }
    }

    fn app(&self, pem: &[u8]) -> Result<Github, String> {
        let (Some(api), Some(app_id)) = (&self.github_api_url, self.github_app_id) else {
            return Err("github.app_id is not configured".into());
        };
        Auth::app(app_id, pem)
            .map(|auth| Github::new(api, auth))
            .map_err(|e| e.to_string())
    }

    pub fn current(&self) -> Arc<SecretSet> {
        self.current.read().expect("secrets lock").clone()
    }

    /// Reloads the values if the stored set changed since the last look.
    pub async fn refresh(&self) -> Result<(), airlock_store::StoreError> {
        let fp = self.store.credentials_fingerprint().await?;
        if *self.fingerprint.lock().expect("fingerprint") == Some(fp) {
            return Ok(());
        }
        let all = self.store.reveal_all_credentials().await?;
        let guarded: Vec<(Vec<u8>, String)> = all
            .iter()
            .filter(|c| trimmed(c.value.expose()).len() >= GUARD_MIN_LEN)
            .map(|c| (trimmed(c.value.expose()).to_vec(), c.name.clone()))
            .collect();
        let guard = Needles::new(guarded.clone()).map(Arc::new);
        let form_guard =
            Needles::build(guarded, &METHOD_OVERRIDE_FIELDS, METHOD_OVERRIDE).map(Arc::new);
        let apps = all
            .iter()
            .filter(|c| c.kind == CredentialKind::GithubApp)
            .map(|c| (c.name.clone(), self.app(c.value.expose())))
            .collect();
        let values = all
            .into_iter()
            .map(|c| (c.name, (c.kind, c.value)))
            .collect();
        *self.current.write().expect("secrets lock") = Arc::new(SecretSet {
            values,
            apps,
            guard,
            form_guard,
            scrubbers: Mutex::new(HashMap::new()),
        });
        *self.fingerprint.lock().expect("fingerprint") = Some(fp);
        Ok(())
    }
}

/// A value as it is injected: without the line break a file or a pipe may have added.
pub fn trimmed(value: &[u8]) -> &[u8] {
    let start = value.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let end = value.len()
        - value[start..]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    &value[start..end]
}

/// Model budgets: tokens per session, and per human per UTC day (0 = no limit).
pub struct Budgets {
    store: Store,
    session_max: i64,
    human_daily_max: i64,
    /// Tokens used, by `s:<session>` or `h:<human>:<day>`, with when they were read.
    used: Mutex<HashMap<String, (Instant, i64)>>,
}

const DAY_MS: i64 = 86_400_000;
/// How long a used-tokens figure is kept before re-reading it (other gateways meter too).
const USED_TTL: Duration = Duration::from_secs(15);

impl Budgets {
    pub fn new(store: Store, session_max: u64, human_daily_max: u64) -> Self {
        Self {
            store,
            session_max: session_max.min(i64::MAX as u64) as i64,
            human_daily_max: human_daily_max.min(i64::MAX as u64) as i64,
            used: Mutex::new(HashMap::new()),
        }
    }

    fn keys(ctx: &Ctx) -> (Option<String>, Option<String>) {
        let day = now_ms() / DAY_MS;
        (
            ctx.session_id.as_ref().map(|s| format!("s:{s}")),
            ctx.human_id.as_ref().map(|h| format!("h:{h}:{day}")),
        )
    }

    async fn used(&self, key: &str) -> i64 {
        if let Some((at, n)) = self.used.lock().expect("budgets").get(key) {
            if at.elapsed() < USED_TTL {
                return *n;
            }
        }
        let total = match key.split(':').collect::<Vec<_>>()[..] {
            // The keys are made here from the sandbox's own binding.
            ["s", id] => self.store.session_usage(&SessionId::from_stored(id)).await,
            ["h", id, day] => {
                let since = day.parse::<i64>().unwrap_or(0) * DAY_MS;
                self.store
                    .human_usage_since(&HumanId::from_stored(id), since)
                    .await
            }
            _ => return 0,
        };
        let n = match total {
            Ok(t) => t.tokens(),
            Err(e) => {
                tracing::warn!("cannot read model usage: {e}");
                return 0;
            }
        };
        self.used
            .lock()
            .expect("budgets")
            .insert(key.to_string(), (Instant::now(), n));
        n
    }

    /// Why a model call must be refused now, in words for the agent; `None` to allow it.
    pub async fn refusal(&self, ctx: &Ctx) -> Option<String> {
        let (session, human) = Self::keys(ctx);
        if let (Some(key), true) = (session, self.session_max > 0) {
            let used = self.used(&key).await;
            if used >= self.session_max {
                return Some(format!(
                    "Airlock: this session has used its model budget ({used} of {} tokens). \
                     Further model calls are refused; an admin can raise gateway.session_token_budget.",
                    self.session_max
                ));
            }
        }
        if let (Some(key), true) = (human, self.human_daily_max > 0) {
            let used = self.used(&key).await;
            if used >= self.human_daily_max {
                return Some(format!(
                    "Airlock: the requester's daily model budget is spent ({used} of {} tokens today). \
                     It renews at 00:00 UTC; an admin can raise gateway.human_daily_token_budget.",
                    self.human_daily_max
                ));
            }
        }
        None
    }

    /// Counts tokens just metered, before they reach the database.
    pub fn add(&self, ctx: &Ctx, tokens: i64) {
        let (session, human) = Self::keys(ctx);
        let mut used = self.used.lock().expect("budgets");
        for key in [session, human].into_iter().flatten() {
            if let Some((_, n)) = used.get_mut(&key) {
                *n += tokens;
            }
        }
    }
}
