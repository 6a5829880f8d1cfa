//! Sandboxes as the broker sees them: start one (cold, from the profile's newest snapshot, or
//! claimed from the warm pool), bind it to a session, keep a session snapshot, remove it,
//! build profile snapshots, keep warm pools filled, and reconcile with the runtime after a
//! restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_sandboxd::proto::{tool_env, Boot};
use sha2::{Digest, Sha256};

use super::hub::Hub;
use super::runtime::{ContainerSpec, ExecOutput, Runtime, RuntimeError};
use super::{
    LABEL_PROFILE, LABEL_PROFILE_VERSION, LABEL_ROLE, LABEL_SANDBOX, LABEL_SERVER, LABEL_SESSION,
    LABEL_SETUP, LABEL_SNAPSHOT,
};
use airlock_store::domain::ProfileSpec;
use airlock_store::ids::{now_ms, SandboxId, SessionId};
use airlock_store::store::{
    settle, NewSandbox, NewSnapshot, Profile, ProfileVersion, Sandbox, Session, Snapshot, Store,
    TokenKind, BOOTSTRAP_TTL_MS,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] airlock_store::store::StoreError),
    #[error(transparent)]
    Hub(#[from] super::hub::HubError),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// Deployment-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The sandbox endpoint as sandboxes reach it, e.g. `ws://10.203.0.1:7480`.
    pub endpoint: String,
    /// The gateway as sandboxes reach it (`host:port`), when one runs.
    pub gateway: Option<String>,
    pub sandboxd: PathBuf,
    pub ca_cert: Option<PathBuf>,
    /// The base image reference (`airlock/base:<recipe hash>`).
    pub base_image: String,
    /// How long a started sandbox may take to connect.
    pub connect_timeout: Duration,
    /// Who creates sandboxes here: the server's id, or `cli` for `airlock snapshot build`.
    /// Reconciliation leaves other owners' live sandboxes alone.
    pub owner: String,
}

pub struct Sandboxes {
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub hub: Arc<Hub>,
    pub settings: SandboxSettings,
}

/// Where a session's sandbox came from, for events and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Warm,
    Cold { image: String },
}

/// What reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Sessions whose sandbox is alive (sandbox ids), to re-attach to.
    pub alive: Vec<(SessionId, SandboxId)>,
    /// Sessions whose sandbox vanished, with the reason.
    pub vanished: Vec<(SessionId, String)>,
    /// Containers removed because nothing needs them.
    pub removed: Vec<String>,
}

impl Sandboxes {
    /// The image a profile's sessions start from, and the hash that identifies its setup.
    pub fn setup_hash(&self, spec: &ProfileSpec) -> String {
        let mut h = Sha256::new();
        h.update(self.base_of(spec).as_bytes());
        for step in &spec.sandbox.setup {
            h.update([0u8]);
            h.update(step.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }

    fn base_of(&self, spec: &ProfileSpec) -> String {
        spec.sandbox
            .image
            .clone()
            .unwrap_or_else(|| self.settings.base_image.clone())
    }

    /// The image new sandboxes of this profile version start from: the newest snapshot of its
    /// setup (built first if there is none), or the plain image when there is no setup.
    pub async fn image_for(
        &self,
        profile: &Profile,
        pv: &ProfileVersion,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String> {
        let spec = &pv.spec;
        if spec.sandbox.setup.is_empty() || !spec.sandbox.snapshot {
            return Ok(self.base_of(spec));
        }
        let hash = self.setup_hash(spec);
        if let Some(s) = self.store.newest_snapshot(&profile.id, &hash).await? {
            if self.runtime.image_exists(&s.image).await? {
                return Ok(s.image);
            }
        }
        log(&format!(
            "profile {} has no snapshot of its current setup; building one",
            profile.name
        ));
        Ok(self.build_snapshot(profile, pv, log).await?.image)
    }

    /// Creates and starts a sandbox with sandboxd, and records it. It connects by itself.
    pub async fn start(
        &self,
        role: &'static str,
        pv: &ProfileVersion,
        session: Option<&SessionId>,
        image: &str,
    ) -> Result<Sandbox> {
        let row = self
            .store
            .insert_sandbox(NewSandbox {
                role,
                profile_id: pv.profile_id.clone(),
                profile_version: pv.version,
                image: image.to_string(),
                session_id: session.cloned(),
            })
            .await?;
        let boot = self
            .store
            .issue_token(TokenKind::Boot, &row.id, session, BOOTSTRAP_TTL_MS)
            .await?;
        let mut labels = self.labels(&row.id, pv, role);
        if let Some(s) = session {
            labels.insert(LABEL_SESSION.into(), s.into());
        }
        let spec = ContainerSpec {
            sandbox_id: row.id.to_string(),
            image: image.to_string(),
            labels,
            boot: Some(Boot {
                endpoint: self.settings.endpoint.clone(),
                sandbox: row.id.to_string(),
                token: boot,
            }),
            args: vec![],
            limits: pv.spec.limits.clone(),
            sandboxd: self.settings.sandboxd.clone(),
            ca_cert: self.settings.ca_cert.clone(),
        };
        self.create_and_start(&row, &spec).await
    }

    fn labels(&self, sandbox: &str, pv: &ProfileVersion, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_SANDBOX.to_string(), sandbox.to_string()),
            (LABEL_PROFILE.to_string(), pv.profile_id.to_string()),
            (LABEL_PROFILE_VERSION.to_string(), pv.version.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
            (LABEL_SERVER.to_string(), self.settings.owner.clone()),
        ])
    }

    async fn create_and_start(&self, row: &Sandbox, spec: &ContainerSpec) -> Result<Sandbox> {
        let cid = match self.runtime.create(spec).await {
            Ok(cid) => cid,
            Err(e) => {
                self.store.set_sandbox_gone(&row.id, &e.to_string()).await?;
                return Err(e.into());
            }
        };
        // Record the container first, so a crash right here still leaves it findable.
        self.store.set_sandbox_started(&row.id, &cid, "").await?;
        match self.runtime.start(&cid).await {
            Ok(inst) => {
                let addr = inst.address.map(|a| a.to_string()).unwrap_or_default();
                self.store.set_sandbox_started(&row.id, &cid, &addr).await?;
                Ok(self.store.sandbox(&row.id).await?)
            }
            Err(e) => {
                let _ = self.runtime.remove(&cid).await;
                self.store.set_sandbox_gone(&row.id, &e.to_string()).await?;
                Err(e.into())
            }
        }
    }

    /// A connected sandbox for a session: a warm one if the pool has one, else a new one
    /// from the session's own snapshot (a follow-up) or the profile's image.
    pub async fn acquire(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(Sandbox, Origin)> {
        let follow_up = self.store.session_snapshot(&session.id).await?;
        if follow_up.is_none() {
            while let Some(sb) = self
                .store
                .claim_warm_sandbox(&pv.profile_id, pv.version, &session.id)
                .await?
            {
                if self.hub.is_connected(&sb.id) {
                    return Ok((sb, Origin::Warm));
                }
                self.release(&sb, "a warm sandbox had lost its connection")
                    .await;
            }
        }
        let image = match follow_up {
            Some(s) if self.runtime.image_exists(&s.image).await? => s.image,
            _ => self.image_for(profile, pv, log).await?,
        };
        let sb = self.start("session", pv, Some(&session.id), &image).await?;
        if let Err(e) = self
            .hub
            .wait_connected(&sb.id, self.settings.connect_timeout)
            .await
        {
            self.release(&sb, &e.to_string()).await;
            return Err(e.into());
        }
        Ok((sb, Origin::Cold { image }))
    }

    /// Binds a sandbox to its session: the egress token, the proxy, and the plan's
    /// environment, valid until `deadline_ms`.
    pub async fn bind(
        &self,
        sb: &Sandbox,
        session: &Session,
        env: &BTreeMap<String, String>,
        deadline_ms: i64,
    ) -> Result<()> {
        let ttl = (deadline_ms - now_ms()).max(60_000);
        let proxy = self.egress_proxy(&sb.id, Some(&session.id), ttl).await?;
        self.store
            .bind_tokens(&sb.id, &session.id, deadline_ms)
            .await?;
        self.store.set_session_sandbox(&session.id, &sb.id).await?;
        self.hub.bind(&sb.id, &session.id, proxy, env.clone())?;
        Ok(())
    }

    /// The proxy URL a sandbox uses, with a new egress token in it; `None` without a gateway.
    async fn egress_proxy(
        &self,
        sandbox: &SandboxId,
        session: Option<&SessionId>,
        ttl_ms: i64,
    ) -> Result<Option<String>> {
        let Some(gw) = &self.settings.gateway else {
            return Ok(None);
        };
        let token = self
            .store
            .issue_token(TokenKind::Egr, sandbox, session, ttl_ms)
            .await?;
        Ok(Some(format!("http://airlock:{token}@{gw}")))
    }

    /// Saves a session's files as its session snapshot (for follow-ups).
    pub async fn keep_session_snapshot(
        &self,
        sb: &Sandbox,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
    ) -> Result<Snapshot> {
        let cid = sb.container_id.clone().unwrap_or_default();
        let tag = format!("session-{}", session.id.replace('_', "-"));
        let repo = snapshot_repo(&profile.name);
        let labels = BTreeMap::from([
            (LABEL_SNAPSHOT.to_string(), "session".to_string()),
            (LABEL_SESSION.to_string(), session.id.to_string()),
            (LABEL_PROFILE.to_string(), pv.profile_id.to_string()),
            (LABEL_PROFILE_VERSION.to_string(), pv.version.to_string()),
        ]);
        let _ = self.runtime.stop(&cid, Duration::from_secs(2)).await;
        let img = self.runtime.commit(&cid, &repo, &tag, &labels).await?;
        let image = format!("{repo}:{tag}");
        if let Some(old) = self.store.session_snapshot(&session.id).await? {
            self.store.delete_snapshot(&old.id).await?;
        }
        Ok(self
            .store
            .insert_snapshot(NewSnapshot {
                image,
                kind: "session",
                profile_id: pv.profile_id.to_string(),
                profile_version: pv.version,
                setup_hash: self.setup_hash(&pv.spec),
                session_id: Some(session.id.to_string()),
                size_bytes: Some(img.size),
            })
            .await?)
    }

    /// Removes a sandbox and forgets it. Never fails: a container that cannot be removed now
    /// (the engine is restarting, say) is removed by a task that tries again with back-off
    /// for half an hour, and after that by reconciliation at the next start.
    pub async fn release(&self, sb: &Sandbox, reason: &str) {
        self.hub.forget(&sb.id);
        if let Some(cid) = &sb.container_id {
            if let Err(e) = self.runtime.remove(cid).await {
                tracing::warn!(sandbox = %sb.id, "cannot remove the sandbox container now, trying again: {e}");
                let (runtime, cid, id) = (self.runtime.clone(), cid.clone(), sb.id.clone());
                tokio::spawn(async move {
                    let mut delay = Duration::from_secs(2);
                    let mut waited = Duration::ZERO;
                    while waited < Duration::from_secs(1800) {
                        tokio::time::sleep(delay).await;
                        waited += delay;
                        delay = (delay * 2).min(Duration::from_secs(60));
                        match runtime.remove(&cid).await {
                            Ok(()) => {
                                tracing::info!(sandbox = %id, "removed the sandbox container");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(sandbox = %id, "still cannot remove the sandbox container: {e}")
                            }
                        }
                    }
                    tracing::warn!(sandbox = %id, "gave up removing the sandbox container; the next start removes it");
                });
            }
        }
        if let Err(e) = self.store.set_sandbox_gone(&sb.id, reason).await {
            tracing::warn!(sandbox = %sb.id, "cannot record the sandbox as gone: {e}");
        }
    }

    /// Runs the profile's setup steps in a build sandbox and commits the result as
    /// `airlock-snapshot/<profile>:<n>`. Output of each step goes to `log`.
    pub async fn build_snapshot(
        &self,
        profile: &Profile,
        pv: &ProfileVersion,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Snapshot> {
        let spec = &pv.spec;
        let base = self.base_of(spec);
        if !self.runtime.image_exists(&base).await? {
            return Err(SandboxError::Setup(format!(
                "the image {base} does not exist; run `airlock image build` first"
            )));
        }
        let row = self
            .store
            .insert_sandbox(NewSandbox {
                role: "build",
                profile_id: pv.profile_id.clone(),
                profile_version: pv.version,
                image: base.clone(),
                session_id: None,
            })
            .await?;
        let cspec = ContainerSpec {
            sandbox_id: row.id.to_string(),
            image: base,
            labels: self.labels(&row.id, pv, "build"),
            boot: None,
            args: vec!["--hold".into()],
            limits: spec.limits.clone(),
            sandboxd: self.settings.sandboxd.clone(),
            ca_cert: self.settings.ca_cert.clone(),
        };
        let sb = self.create_and_start(&row, &cspec).await?;
        let result = self.run_setup(&sb, profile, pv, log).await;
        match result {
            Ok(snapshot) => {
                self.release(&sb, "snapshot built").await;
                Ok(snapshot)
            }
            Err(e) => {
                self.release(&sb, &e.to_string()).await;
                Err(e)
            }
        }
    }

    async fn run_setup(
        &self,
        sb: &Sandbox,
        profile: &Profile,
        pv: &ProfileVersion,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Snapshot> {
        let cid = sb.container_id.clone().unwrap_or_default();
        let proxy = self.egress_proxy(&sb.id, None, 3600 * 1000).await?;
        // Setup steps run through the runtime's exec, which cannot look into the image first.
        let mut env = tool_env(proxy.as_deref(), self.settings.ca_cert.is_some(), false);
        env.insert("HOME".into(), "/home/agent".into());
        env.extend(pv.spec.env.clone());
        let steps = pv.spec.sandbox.setup.clone();
        for (i, step) in steps.iter().enumerate() {
            log(&format!("setup step {}/{}: {step}", i + 1, steps.len()));
            let argv = vec!["bash".to_string(), "-lc".to_string(), step.clone()];
            let mut out = |o: ExecOutput<'_>| {
                let bytes = match o {
                    ExecOutput::Stdout(b) | ExecOutput::Stderr(b) => b,
                };
                for line in String::from_utf8_lossy(bytes).lines() {
                    log(line);
                }
            };
            let code = self.runtime.exec(&cid, &argv, &env, &mut out).await?;
            if code != 0 {
                return Err(SandboxError::Setup(format!(
                    "setup step {} of profile {} (`{}`) exited with status {code}; fix it and run `airlock snapshot build {}` again",
                    i + 1,
                    profile.name,
                    step.chars().take(120).collect::<String>(),
                    profile.name
                )));
            }
        }
        let repo = snapshot_repo(&profile.name);
        let hash = self.setup_hash(&pv.spec);
        let labels = BTreeMap::from([
            (LABEL_SNAPSHOT.to_string(), "profile".to_string()),
            (LABEL_PROFILE.to_string(), pv.profile_id.to_string()),
            (LABEL_PROFILE_VERSION.to_string(), pv.version.to_string()),
            (LABEL_SETUP.to_string(), hash.clone()),
        ]);
        let _ = self.runtime.stop(&cid, Duration::from_secs(2)).await;
        let mut n = self.store.count_profile_snapshots(&profile.id).await? + 1;
        loop {
            let tag = n.to_string();
            let image = format!("{repo}:{tag}");
            if self.runtime.image_exists(&image).await? {
                n += 1;
                continue;
            }
            let img = self.runtime.commit(&cid, &repo, &tag, &labels).await?;
            let snap = self
                .store
                .insert_snapshot(NewSnapshot {
                    image,
                    kind: "profile",
                    profile_id: pv.profile_id.to_string(),
                    profile_version: pv.version,
                    setup_hash: hash,
                    session_id: None,
                    size_bytes: Some(img.size),
                })
                .await?;
            log(&format!("snapshot {} committed", snap.image));
            return Ok(snap);
        }
    }

    /// Keeps each profile's warm pool at its size: starts what is missing (they become ready
    /// when sandboxd connects) and removes warm sandboxes of outdated profile versions.
    pub async fn fill_warm_pools(self: &Arc<Self>) -> Result<()> {
        let live = self.store.live_sandboxes().await?;
        for profile in self.store.list_profiles().await? {
            let pv = self.store.profile_version(&profile.id, None).await?;
            let want = pv.spec.sandbox.warm_pool as usize;
            let mut have = 0;
            for sb in live
                .iter()
                .filter(|s| s.role == "warm" && s.profile_id == profile.id)
            {
                if sb.profile_version != pv.version || have >= want {
                    self.release(sb, "the warm pool shrank or its profile changed")
                        .await;
                } else {
                    have += 1;
                }
            }
            if have >= want {
                continue;
            }
            let mut quiet = |_: &str| {};
            let image = match self.image_for(&profile, &pv, &mut quiet).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(profile = %profile.name, "cannot fill the warm pool: {e}");
                    continue;
                }
            };
            for _ in have..want {
                let sb = self.start("warm", &pv, None, &image).await?;
                let me = self.clone();
                tokio::spawn(async move {
                    match me
                        .hub
                        .wait_connected(&sb.id, me.settings.connect_timeout)
                        .await
                    {
                        Ok(()) => {
                            if let Err(e) = me.store.set_sandbox_ready(&sb.id).await {
                                tracing::warn!(sandbox = %sb.id, "{e}");
                            }
                        }
                        Err(e) => me.release(&sb, &e.to_string()).await,
                    }
                });
            }
        }
        Ok(())
    }

    /// Compares what the runtime runs with what the database expects, after a (re)start.
    /// `sessions` are the live sessions this server must take back, with their sandbox ids.
    pub async fn reconcile(
        &self,
        sessions: &[(SessionId, Option<SandboxId>)],
    ) -> Result<Reconciled> {
        let mut out = Reconciled::default();
        let instances = self.runtime.list().await?;
        let wanted: BTreeMap<&str, &str> = sessions
            .iter()
            .filter_map(|(s, sb)| sb.as_deref().map(|sb| (sb, s.as_str())))
            .collect();
        for inst in &instances {
            // Labels are Airlock's own, set when the container was made.
            let sandbox = SandboxId::from_stored(inst.label(LABEL_SANDBOX).unwrap_or(""));
            let sandbox = &sandbox;
            // Another owner's sandbox (a snapshot build running from the CLI, say) is left
            // alone unless the database says it is over, or it is a build older than a day.
            if inst
                .label(LABEL_SERVER)
                .is_some_and(|o| o != self.settings.owner)
                && !wanted.contains_key(sandbox.as_str())
            {
                let stale = match self.store.sandbox(sandbox).await {
                    Ok(row) => {
                        row.state == "gone"
                            || (row.role == "build" && now_ms() - row.created_at > 24 * 3600 * 1000)
                    }
                    Err(_) => true,
                };
                if !stale {
                    continue;
                }
            }
            let keep = inst.running && wanted.contains_key(sandbox.as_str());
            if !keep {
                self.hub.forget(sandbox);
                self.runtime.remove(&inst.id).await?;
                if !sandbox.is_empty() {
                    settle("a sandbox removed at start-up", || {
                        self.store
                            .set_sandbox_gone(sandbox, "removed at start-up: nothing needed it")
                    })
                    .await;
                }
                out.removed.push(inst.id.clone());
            }
        }
        for (session, sandbox) in sessions {
            let inst = sandbox.as_deref().and_then(|sb| {
                instances
                    .iter()
                    .find(|i| i.label(LABEL_SANDBOX) == Some(sb))
            });
            match (sandbox, inst) {
                (Some(sb), Some(i)) if i.running => out.alive.push((session.clone(), sb.clone())),
                (Some(sb), Some(i)) => {
                    let why = if i.oom_killed {
                        "its sandbox ran out of memory and stopped while the server was down"
                            .to_string()
                    } else {
                        format!(
                            "its sandbox stopped while the server was down (exit code {})",
                            i.exit_code.unwrap_or(-1)
                        )
                    };
                    settle("a sandbox gone while the server was down", || {
                        self.store.set_sandbox_gone(sb, &why)
                    })
                    .await;
                    out.vanished.push((session.clone(), why));
                }
                (Some(sb), None) => {
                    let why = format!(
                        "its sandbox {sb} vanished while the server was down (the container no longer exists)"
                    );
                    settle("a sandbox gone while the server was down", || {
                        self.store.set_sandbox_gone(sb, &why)
                    })
                    .await;
                    out.vanished.push((session.clone(), why));
                }
                (None, _) => out.vanished.push((
                    session.clone(),
                    "the server stopped before the session's sandbox had started".into(),
                )),
            }
        }
        // Rows the runtime no longer knows.
        for sb in self.store.live_sandboxes().await? {
            if sb.role == "build" {
                continue; // a build in progress elsewhere records its own end
            }
            let exists = instances
                .iter()
                .any(|i| i.label(LABEL_SANDBOX) == Some(sb.id.as_str()));
            if !exists {
                self.store
                    .set_sandbox_gone(&sb.id, "its container no longer exists")
                    .await?;
            }
        }
        Ok(out)
    }

    /// Removes profile snapshots but the newest `keep` per profile (and any whose setup is
    /// outdated), and session snapshots older than `session_max_age_ms`. Returns the images.
    pub async fn prune(&self, keep: usize, session_max_age_ms: i64) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut kept: BTreeMap<String, usize> = BTreeMap::new();
        let now = now_ms();
        for s in self.store.list_snapshots().await? {
            let drop = if s.kind == "session" {
                now - s.created_at > session_max_age_ms
            } else {
                let current = self.store.profile_version(&s.profile_id, None).await;
                let fresh = matches!(&current, Ok(pv) if self.setup_hash(&pv.spec) == s.setup_hash);
                let n = kept.entry(s.profile_id.to_string()).or_default();
                if fresh && *n < keep {
                    *n += 1;
                    false
                } else {
                    true
                }
            };
            if drop {
                self.runtime.remove_image(&s.image).await?;
                self.store.delete_snapshot(&s.id).await?;
                removed.push(s.image);
            }
        }
        Ok(removed)
    }
}

/// The image repository of a profile's snapshots.
pub fn snapshot_repo(profile: &str) -> String {
    format!("airlock-snapshot/{profile}")
}
