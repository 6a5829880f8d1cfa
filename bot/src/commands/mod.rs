//! The commands. Each loads what it needs (configuration, store, Docker) and nothing more, so
//! `doctor` and `--help` work on a machine where the rest is broken.

mod admin;
mod doctor;
pub mod sandboxes;
mod triggers;
pub mod up;

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
}

impl Ctx {
    /// The master key from configuration, or from the key file (created when missing).
    pub fn master_key(&self) -> anyhow::Result<MasterKey> {
        match &self.config.secrets.master_key {
            Some(k) => Ok(MasterKey::from_base64(k.expose())?),
            None => {
                let path = self.config.key_file();
                let (key, created) = MasterKey::load_or_create(&path)?;
                if created {
                    tracing::info!(path = %path.display(), key_id = key.id(), "created a new master key file; back it up: credentials cannot be read without it");
                }
                Ok(key)
            }
        }
    }

    /// Opens the store. With `migrate`, applies pending migrations; without, refuses to work
    /// on a database whose schema is behind.
    pub async fn store(&self, migrate: bool) -> anyhow::Result<Store> {
        let key = self.master_key()?;
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
        Ok(store)
    }

    /// Who is acting, for the audit log.
    pub fn actor(&self) -> String {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        format!("cli:{}", output::safe(&user))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = std::env::vars();
    let config = match Config::load(cli.config.as_deref(), env) {
        Ok(c) => c,
        Err(e) if matches!(cli.command, Command::Doctor) => {
            return Ok(doctor::report_config_error(&e.to_string(), cli.json));
        }
        Err(e) => bail!(e),
    };
    let ctx = Ctx {
        config,
        json: cli.json,
    };
    match cli.command {
        Command::Up => up::up(&ctx).await.map(|()| ExitCode::SUCCESS),
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
    }
}

async fn migrate(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let key = ctx.master_key()?;
    let store = Store::connect(&ctx.config.database_url(), 2, key).await?;
    let pending = store.pending_migrations().await?;
    store.migrate().await?;
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
