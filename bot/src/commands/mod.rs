//! The commands. Each loads what it needs (configuration, store, Docker) and nothing more, so
//! `doctor` and `--help` work on a machine where the rest is broken.

mod admin;
mod doctor;
mod repos;
pub mod sandboxes;
mod triggers;
pub mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_core::secrets::MasterKey;
use airlock_core::{Config, Store, StoreError};
use anyhow::{bail, Context as _};

use crate::cli::{Cli, Command, ImageCmd};
use crate::output;

/// What every command gets: the configuration and how to print.
pub struct Ctx {
    pub config: Config,
    pub json: bool,
    /// The configuration file in use (none: the defaults and `AIRLOCK_*` variables).
    pub config_file: Option<PathBuf>,
    /// `--as HUMAN`, as given.
    pub as_human: Option<String>,
    /// `--as HUMAN`, found in the store when it is first opened.
    pub acting_for: std::sync::OnceLock<airlock_core::domain::Human>,
}

/// Where the configuration is looked for when neither `--config` nor `AIRLOCK_CONFIG` names
/// it, in order.
pub const CONFIG_FILES: &[&str] = &["airlock.toml", "/etc/airlock/airlock.toml"];

/// The configuration file to read: the one named, else the first of [`CONFIG_FILES`] that
/// exists.
pub fn config_file(named: Option<&Path>) -> Option<PathBuf> {
    named
        .map(Path::to_path_buf)
        .or_else(|| CONFIG_FILES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

impl Ctx {
    /// Where the configuration came from, for messages about a missing deployment.
    fn config_origin(&self) -> String {
        match &self.config_file {
            Some(f) => format!(" (data_dir {}, from {})", self.config.data_dir.display(), f.display()),
            None => format!(
                " (data_dir {}: no airlock.toml in {} or /etc/airlock, and no --config or AIRLOCK_CONFIG)",
                self.config.data_dir.display(),
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "this directory".into())
            ),
        }
    }

    /// The master key from configuration, or from the key file. A missing key file is made
    /// only for a database that belongs to no deployment yet: run from the wrong directory
    /// (another `data_dir`, the same database), a command used to make a second key and
    /// suggest `airlock migrate`, the start of a second, empty deployment.
    ///
    /// Only a command that sets a deployment up (`create`: `migrate`, `up`) makes a key.
    pub async fn master_key(&self, create: bool) -> anyhow::Result<MasterKey> {
        let path = match &self.config.secrets.master_key {
            Some(k) => return Ok(MasterKey::from_base64(k.expose())?),
            None => self.config.key_file(),
        };
        if !path.exists() {
            // What the database says decides: a connection error is the one to report.
            let recorded = self.deployment_key_id().await;
            if let Ok(Some(id)) = &recorded {
                bail!(
                    "the database {} belongs to a deployment whose master key is {id}, and there \
                     is no key file at {}: run this where that deployment's airlock.toml is, or \
                     name it with --config or AIRLOCK_CONFIG (or restore the key file); Airlock \
                     does not make a new key for a database that has one",
                    airlock_core::store::redact_url(&self.config.database_url()),
                    path.display()
                );
            }
            // A database that cannot be asked: that error, before any key file is made.
            recorded?;
            if !create {
                bail!(
                    "there is no master key file at {}{}: run this where the deployment's \
                     airlock.toml is, or name it with --config or AIRLOCK_CONFIG; to set up a new \
                     deployment here, run `airlock migrate` (or `airlock up`)",
                    path.display(),
                    self.config_origin()
                );
            }
        }
        let (key, created) = MasterKey::load_or_create(&path)?;
        if created {
            tracing::info!(path = %path.display(), key_id = key.id(), "created a new master key file; back it up: credentials cannot be read without it");
        }
        Ok(key)
    }

    /// The id of the master key the configured database was set up with, if it was: `None`
    /// for a database that does not exist yet or has no deployment.
    async fn deployment_key_id(&self) -> anyhow::Result<Option<String>> {
        let url = self.config.database_url();
        if let Some(path) = sqlite_file(&url) {
            if !std::path::Path::new(&path).is_file() {
                return Ok(None);
            }
        }
        let store = Store::connect(&url, 1, MasterKey::generate()).await?;
        let id = store.master_key_id().await;
        store.close().await;
        Ok(id?)
    }

    /// Opens the store. With `migrate`, applies pending migrations; without, refuses to work
    /// on a database whose schema is behind.
    pub async fn store(&self, migrate: bool) -> anyhow::Result<Store> {
        let url = self.config.database_url();
        if let (false, Some(path)) = (migrate, sqlite_file(&url)) {
            if !std::path::Path::new(&path).is_file() {
                bail!(
                    "there is no Airlock database at {path}{}: run this where the deployment's \
                     airlock.toml is, or name it with --config or AIRLOCK_CONFIG; to set up a \
                     new deployment here, run `airlock migrate` (or `airlock up`)",
                    self.config_origin()
                );
            }
        }
        let key = self.master_key(migrate).await?;
        let store = Store::connect(
            &self.config.database_url(),
            self.config.database.max_connections,
            key,
        )
        .await?;
        if migrate {
            store.migrate().await?;
        } else {
            let pending = store.pending_migrations().await?;
            if !pending.is_empty() {
                return Err(
                    if pending.len() == airlock_core::store::migration_count(store.kind()) {
                        StoreError::NotMigrated.into()
                    } else {
                        anyhow::anyhow!(
                            "{} database migration(s) are pending; run `airlock migrate`",
                            pending.len()
                        )
                    },
                );
            }
            store.check_master_key().await?;
        }
        if let (Some(who), None) = (&self.as_human, self.acting_for.get()) {
            let human = store
                .find_human(who)
                .await
                .with_context(|| format!("--as {}", output::safe(who)))?;
            let _ = self.acting_for.set(human);
        }
        Ok(store)
    }

    /// Who is acting, for the audit log: `cli:` and the operating-system account running
    /// this command ([`os_user`]), and with `--as`, the human: `cli:alice as human:hum_…`.
    pub fn actor(&self) -> String {
        let os = format!("cli:{}", output::safe(&os_user()));
        match self.acting_for.get() {
            Some(h) => format!("{os} as human:{}", h.id),
            None => os,
        }
    }
}

/// The file of a `sqlite://` database URL.
fn sqlite_file(url: &str) -> Option<String> {
    let path = url.strip_prefix("sqlite://")?;
    Some(path.split('?').next().unwrap_or(path).to_string())
}

/// The operating-system account running this process, by its real user id (not `$USER`,
/// which whoever starts a process sets, and which cron and systemd leave unset): its name
/// in `/etc/passwd`, else `uid N`; with the account that ran `sudo`, when there is one.
pub fn os_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        });
    let Some(uid) = uid else {
        return "unknown".into();
    };
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let mut f = l.split(':');
            let (name, _, id) = (f.next()?, f.next()?, f.next()?);
            (id == uid && !name.is_empty()).then(|| name.to_string())
        })
    });
    let name = name.unwrap_or_else(|| format!("uid {uid}"));
    match std::env::var("SUDO_USER") {
        Ok(by) if !by.is_empty() && by != name => format!("{name} (sudo by {by})"),
        _ => name,
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = std::env::vars();
    let config_file = config_file(cli.config.as_deref());
    let config = match Config::load(config_file.as_deref(), env) {
        Ok(c) => c,
        Err(e) if matches!(cli.command, Command::Doctor) => {
            return Ok(doctor::report_config_error(&e.to_string(), cli.json));
        }
        Err(e) => bail!(e),
    };
    let ctx = Ctx {
        config,
        json: cli.json,
        config_file,
        as_human: cli.as_human,
        acting_for: std::sync::OnceLock::new(),
    };
    match cli.command {
        Command::Up => up::up(&ctx).await.map(|()| ExitCode::SUCCESS),
        Command::Down => up::down(&ctx).await,
        Command::Gateway => up::gateway(&ctx).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate => migrate(&ctx).await,
        Command::Doctor => Ok(doctor::run(&ctx).await),
        Command::Human(c) => admin::human(&ctx, c).await,
        Command::Identity(c) => admin::identity(&ctx, c).await,
        Command::Profile(c) => admin::profile(&ctx, c).await,
        Command::Credential(c) => admin::credential(&ctx, c).await,
        Command::Session(c) => admin::session(&ctx, c).await,
        Command::Audit(c) => admin::audit_cmd(&ctx, c).await,
        Command::Image(ImageCmd::Build) => image_build(&ctx).await,
        Command::Run(a) => sandboxes::run(&ctx, a).await,
        Command::Snapshot(c) => sandboxes::snapshot(&ctx, c).await,
        Command::Sandbox(c) => sandboxes::sandbox(&ctx, c).await,
        Command::Trigger(c) => triggers::trigger(&ctx, c).await,
        Command::Repo(c) => repos::repo(&ctx, c).await,
    }
}

async fn migrate(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let key = ctx.master_key(true).await?;
    let store = Store::connect(&ctx.config.database_url(), 2, key).await?;
    let pending = store.pending_migrations().await?;
    store.migrate().await?;
    // The deployment's key is recorded now, so that no other key is ever made for it.
    store.check_master_key().await?;
    if ctx.json {
        output::json(&serde_json::json!({ "applied": pending }))?;
    } else if pending.is_empty() {
        println!("The database is up to date.");
    } else {
        for m in &pending {
            println!("applied {m}");
        }
        println!("The database is up to date.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn image_build(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let docker = airlock_sandbox::engine::connect(&ctx.config.docker.host).await?;
    let work = ctx.config.data_dir.join("tmp");
    let repo = &ctx.config.docker.base_image;
    if !ctx.json {
        eprintln!(
            "Building {} if missing (a first build takes a minute or two)…",
            airlock_sandbox::image::base_image_ref(repo)
        );
    }
    let built = airlock_sandbox::image::build_base_image(&docker, repo, &work)
        .await
        .context("cannot build the sandbox base image")?;
    let (reference, fresh) = match built {
        airlock_sandbox::image::Built::AlreadyPresent(r) => (r, false),
        airlock_sandbox::image::Built::Built(r) => (r, true),
    };
    if ctx.json {
        output::json(&serde_json::json!({ "image": reference, "built": fresh }))?;
    } else if fresh {
        println!("Built {reference}.");
    } else {
        println!("{reference} is present (its recipe is unchanged).");
    }
    Ok(ExitCode::SUCCESS)
}
