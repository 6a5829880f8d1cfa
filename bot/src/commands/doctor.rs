//! `airlock doctor`: checks a deployment and says what to fix. It never stops at the first
//! problem, never waits long on a dead service, and exits non-zero when anything failed.

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use airlock_core::secrets::MasterKey;
use airlock_core::store::redact_url;
use airlock_core::{Store, StoreError};
use serde::Serialize;

use super::Ctx;
use crate::output::safe;

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix,
    }
}

fn print(checks: &[Check], json: bool) -> ExitCode {
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if json {
        let _ = crate::output::json(&serde_json::json!({ "ok": failed == 0, "checks": checks }));
    } else {
        for c in checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("[{mark}] {:<12} {}", c.name, safe(&c.detail));
            if let Some(fix) = &c.fix {
                println!("       {:<12} fix: {}", "", safe(fix));
            }
        }
        println!();
        if failed == 0 {
            println!("Everything Airlock needs is in place.");
        } else {
            println!("{failed} check(s) failed; fix them and run `airlock doctor` again.");
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The configuration did not load: that is the one finding.
pub fn report_config_error(error: &str, json: bool) -> ExitCode {
    print(
        &[check(
            "config",
            Status::Fail,
            error,
            Some("correct the key named above in airlock.toml or the AIRLOCK_* variable (docs/configuration.md)".into()),
        )],
        json,
    )
}

/// Whether the sandbox subnet has an address for every session the broker may run at once
/// plus every warm sandbox the profiles keep, with the numbers.
fn capacity_check(cfg: &airlock_core::config::Config, warm: u32) -> Check {
    let subnet = &cfg.sandbox.subnet;
    let sessions = cfg.broker.max_sessions;
    let Some(room) = airlock_sandbox::docker::subnet_capacity(subnet) else {
        return check(
            "capacity",
            Status::Fail,
            format!("sandbox.subnet `{subnet}` is not an IPv4 network"),
            None,
        );
    };
    let need = sessions + warm;
    let detail = format!(
        "sandbox.subnet {subnet} has addresses for {room} sandboxes; broker.max_sessions = \
         {sessions} and the profiles' warm pools = {warm} need {need}"
    );
    if need > room {
        check(
            "capacity",
            Status::Warn,
            detail,
            Some(format!(
                "widen sandbox.subnet (a /20 holds 4093), lower broker.max_sessions or shrink \
                 the warm pools; until then {} session(s) may wait for an address",
                need - room
            )),
        )
    } else {
        check("capacity", Status::Ok, detail, None)
    }
}

pub async fn run(ctx: &Ctx) -> ExitCode {
    let cfg = &ctx.config;
    let mut checks = vec![check("config", Status::Ok, "loaded and valid", None)];

    // Master key.
    let key = match &cfg.secrets.master_key {
        Some(k) => match MasterKey::from_base64(k.expose()) {
            Ok(key) => {
                checks.push(check(
                    "master key",
                    Status::Ok,
                    format!("from configuration (id {})", key.id()),
                    None,
                ));
                Some(key)
            }
            Err(e) => {
                checks.push(check("master key", Status::Fail, e.to_string(), None));
                None
            }
        },
        None => {
            let path = cfg.key_file();
            if path.exists() {
                match MasterKey::load_or_create(&path) {
                    Ok((key, _)) => {
                        checks.push(check(
                            "master key",
                            Status::Ok,
                            format!("{} (id {})", path.display(), key.id()),
                            None,
                        ));
                        Some(key)
                    }
                    Err(e) => {
                        checks.push(check("master key", Status::Fail, e.to_string(), None));
                        None
                    }
                }
            } else {
                checks.push(check(
                    "master key",
                    Status::Warn,
                    format!("{} does not exist yet; `airlock up` creates it", path.display()),
                    Some("back the key file up once created: stored credentials cannot be read without it".into()),
                ));
                None
            }
        }
    };

    // Database.
    let url = cfg.database_url();
    let probe_key = key.clone().unwrap_or_else(MasterKey::generate);
    // A database file that is not there is reported, not made: doctor creates nothing.
    let missing_file = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !std::path::Path::new(p).is_file())
        .map(str::to_string);
    let store = match &missing_file {
        Some(path) => {
            checks.push(check(
                "database",
                Status::Fail,
                format!("there is no database at {path}"),
                Some("run `airlock migrate` to set up a deployment here (`airlock up` also migrates), or point --config at the deployment's airlock.toml".into()),
            ));
            Ok(Err(None))
        }
        None => tokio::time::timeout(Duration::from_secs(10), Store::connect(&url, 2, probe_key))
            .await
            .map(|r| r.map_err(Some)),
    };
    let store = match store {
        Ok(Err(None)) => None,
        Ok(Ok(s)) => Some(s),
        Ok(Err(Some(e))) => {
            checks.push(check(
                "database",
                Status::Fail,
                e.to_string(),
                Some(database_fix(&url)),
            ));
            None
        }
        Err(_) => {
            checks.push(check(
                "database",
                Status::Fail,
                format!("{} did not answer within 10 s", redact_url(&url)),
                Some(database_fix(&url)),
            ));
            None
        }
    };
    // Repositories registered with `airlock repo add` (for the git check below).
    let mut registered = 0;
    if let Some(store) = &store {
        match store.pending_migrations().await {
            Ok(p) if p.is_empty() => {
                let key_state = match &key {
                    Some(_) => match store.check_master_key().await {
                        Ok(()) => Ok("master key matches"),
                        Err(e @ StoreError::WrongMasterKey { .. }) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Ok("master key not checked"),
                };
                match key_state {
                    Ok(note) => checks.push(check(
                        "database",
                        Status::Ok,
                        format!(
                            "{} ({}, schema up to date, {note})",
                            redact_url(&url),
                            kind_name(store)
                        ),
                        None,
                    )),
                    Err(e) => checks.push(check("database", Status::Fail, e, None)),
                }
            }
            Ok(p) => checks.push(check(
                "database",
                Status::Warn,
                format!(
                    "{} reachable; {} migration(s) pending",
                    redact_url(&url),
                    p.len()
                ),
                Some("run `airlock migrate` (`airlock up` also migrates)".into()),
            )),
            Err(e) => checks.push(check(
                "database",
                Status::Fail,
                e.to_string(),
                Some(database_fix(&url)),
            )),
        }
        if let Ok(warm) = store.warm_pool_total().await {
            checks.push(capacity_check(cfg, warm));
        }
        if let Some(c) = profile_credentials(store).await {
            checks.push(c);
        }
        registered = store.list_repos().await.map(|r| r.len()).unwrap_or(0);
        store.close().await;
    }

    // Docker and the base image.
    match airlock_sandbox::engine::connect(&cfg.docker.host).await {
        Ok(docker) => {
            let version = docker
                .version()
                .await
                .ok()
                .and_then(|v| v.version)
                .unwrap_or_else(|| "unknown".into());
            checks.push(check(
                "docker",
                Status::Ok,
                format!("engine {version} at {}", cfg.docker.host),
                None,
            ));
            let problems = airlock_sandbox::engine::known_problems(&version);
            if problems.is_empty() {
                checks.push(check(
                    "docker version",
                    Status::Ok,
                    format!(
                        "Docker {version} is not affected by CVE-2024-29018 (and Airlock blocks \
                         Docker's DNS inside every sandbox anyway)"
                    ),
                    None,
                ));
            }
            for p in problems {
                checks.push(check(
                    "docker version",
                    Status::Warn,
                    p,
                    Some("upgrade the Docker engine (26.0 or later)".into()),
                ));
            }
            // Another network on the sandbox subnet: Docker refuses to create Airlock's, or
            // traffic for those addresses goes to the wrong place.
            match airlock_sandbox::engine::network_subnets(&docker).await {
                Ok(nets) => {
                    let clash: Vec<String> = nets
                        .iter()
                        .filter(|(name, subnet)| {
                            *name != cfg.sandbox.network
                                && airlock_core::config::subnets_overlap(
                                    subnet,
                                    &cfg.sandbox.subnet,
                                )
                        })
                        .map(|(name, subnet)| format!("{name} ({subnet})"))
                        .collect();
                    if clash.is_empty() {
                        checks.push(check(
                            "sandbox subnet",
                            Status::Ok,
                            format!(
                                "{} is not used by another Docker network",
                                cfg.sandbox.subnet
                            ),
                            None,
                        ));
                    } else {
                        checks.push(check(
                            "sandbox subnet",
                            Status::Fail,
                            format!(
                                "sandbox.subnet {} overlaps the Docker network(s) {}",
                                cfg.sandbox.subnet,
                                clash.join(", ")
                            ),
                            Some("set sandbox.subnet to a free range (e.g. 10.203.0.0/24) or remove that network".into()),
                        ));
                    }
                }
                Err(e) => checks.push(check(
                    "sandbox subnet",
                    Status::Warn,
                    format!("not checked: cannot list Docker's networks ({e})"),
                    None,
                )),
            }
            let reference = airlock_sandbox::image::base_image_ref(&cfg.docker.base_image);
            match airlock_sandbox::engine::image_exists(&docker, &reference).await {
                Ok(true) => checks.push(check("base image", Status::Ok, reference, None)),
                Ok(false) => checks.push(check(
                    "base image",
                    Status::Fail,
                    format!("{reference} is missing"),
                    Some("run `airlock image build` (about two minutes; needs debootstrap)".into()),
                )),
                Err(e) => checks.push(check("base image", Status::Fail, e.to_string(), None)),
            }
        }
        Err(e) => {
            checks.push(check(
                "docker",
                Status::Fail,
                "the Docker engine is not running or not reachable",
                Some(e.to_string()),
            ));
            checks.push(check(
                "base image",
                Status::Fail,
                "not checked: Docker is not reachable",
                None,
            ));
        }
    }

    // What sandboxes need besides Docker: sandboxd next to airlock, and iptables for the
    // firewall that keeps them off the host.
    let sandboxd = cfg.sandbox.sandboxd_path();
    checks.push(if sandboxd.is_file() {
        check("sandboxd", Status::Ok, sandboxd.display().to_string(), None)
    } else {
        check(
            "sandboxd",
            Status::Fail,
            format!("{} does not exist", sandboxd.display()),
            Some("build it (`cargo build -p airlock-sandboxd`, scripts/up does) or set sandbox.sandboxd".into()),
        )
    });
    checks.push(match airlock_sandbox::image::which("iptables") {
        Some(p) => check(
            "firewall",
            Status::Ok,
            format!("iptables at {}", p.display()),
            None,
        ),
        None => check(
            "firewall",
            Status::Fail,
            "iptables is not installed: sandboxes cannot be kept off the host",
            Some("apt-get install iptables (and run airlock as root or with CAP_NET_ADMIN)".into()),
        ),
    });

    // The listening port. Whether this deployment's server holds it decides the next check.
    let listen = cfg.server.listen;
    let mut ours = false;
    match TcpListener::bind(listen) {
        Ok(l) => {
            drop(l);
            checks.push(check(
                "listen",
                Status::Ok,
                format!("{listen} is free"),
                None,
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            ours = super::up::is_airlock_at(listen).await;
            if ours {
                checks.push(check(
                    "listen",
                    Status::Ok,
                    format!("{listen}: Airlock is already serving here"),
                    None,
                ));
            } else {
                checks.push(check(
                    "listen",
                    Status::Fail,
                    format!("{listen} is in use by another program"),
                    Some("stop that program or set server.listen (AIRLOCK_SERVER_LISTEN) to a free address".into()),
                ));
            }
        }
        Err(e) => checks.push(check(
            "listen",
            Status::Fail,
            format!("cannot listen on {listen}: {e}"),
            Some("set server.listen to an address of this machine".into()),
        )),
    }

    // The sandbox-facing ports (bound on the sandbox bridge by `up`): free, unless this
    // deployment's own server holds them.
    let ports = [
        ("sandbox.endpoint_port", cfg.sandbox.endpoint_port),
        ("sandbox.gateway_port", cfg.sandbox.gateway_port),
    ];
    let mut busy = Vec::new();
    if cfg.sandbox.endpoint_port == cfg.sandbox.gateway_port {
        busy.push(format!(
            "sandbox.endpoint_port and sandbox.gateway_port are both {}",
            cfg.sandbox.gateway_port
        ));
    }
    if !ours {
        for (key, port) in ports {
            if let Err(e) = TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)) {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    busy.push(format!("{key} {port} is in use by another program"));
                }
            }
        }
    }
    checks.push(if busy.is_empty() {
        check(
            "ports",
            Status::Ok,
            format!(
                "sandbox endpoint {} and gateway {}{}",
                cfg.sandbox.endpoint_port,
                cfg.sandbox.gateway_port,
                if ours { " (held by the running Airlock)" } else { " are free" }
            ),
            None,
        )
    } else {
        check(
            "ports",
            Status::Fail,
            busy.join("; "),
            Some("stop the other program or set sandbox.endpoint_port / sandbox.gateway_port (AIRLOCK_SANDBOX_ENDPOINT_PORT, AIRLOCK_SANDBOX_GATEWAY_PORT)".into()),
        )
    });

    // Where sessions get their code from.
    let git = match (cfg.github.is_some(), registered) {
        (false, 0) => check(
            "git",
            Status::Warn,
            "no git integration is configured: sessions will not clone a repository (the agent \
             starts in an empty directory) and nothing is pushed",
            Some(
                "register a local repository with `airlock repo add NAME PATH`, or add [github] \
                 with a token or an App to airlock.toml (README: GitHub)"
                    .into(),
            ),
        ),
        (false, n) => check(
            "git",
            Status::Ok,
            format!(
                "{n} registered repositor{} (`airlock repo list`); without [github], other \
                 repositories are not cloned",
                if n == 1 { "y" } else { "ies" }
            ),
            None,
        ),
        (true, 0) => check(
            "git",
            Status::Ok,
            "sessions clone from and push to GitHub (github.web_url)",
            None,
        ),
        (true, n) => check(
            "git",
            Status::Ok,
            format!("sessions clone from GitHub (github.web_url) and {n} registered repositories"),
            None,
        ),
    };
    checks.push(git);

    // Integrations: the credentials they name must be stored.
    let wanted = cfg.referenced_credentials();
    if wanted.is_empty() {
        checks.push(check(
            "integrations",
            Status::Ok,
            "none configured (add [github], [slack] or [discord] to airlock.toml)",
            None,
        ));
    } else if let (Some(key), true) = (key, store.is_some()) {
        match Store::connect(&url, 2, key).await {
            Ok(store) => {
                let mut missing = Vec::new();
                for (setting, name) in &wanted {
                    match store.credential_info(name).await {
                        Ok(Some(_)) => {}
                        Ok(None) => missing.push(format!("{name} (named by {setting})")),
                        Err(e) => missing.push(format!("{name}: {e}")),
                    }
                }
                let names: Vec<&str> = ["github", "slack", "discord"]
                    .into_iter()
                    .filter(|n| match *n {
                        "github" => cfg.github.is_some(),
                        "slack" => cfg.slack.is_some(),
                        _ => cfg.discord.is_some(),
                    })
                    .collect();
                if missing.is_empty() {
                    checks.push(check(
                        "integrations",
                        Status::Ok,
                        format!("{}: credentials present", names.join(", ")),
                        None,
                    ));
                } else {
                    checks.push(check(
                        "integrations",
                        Status::Fail,
                        format!("missing credentials: {}", missing.join(", ")),
                        Some("store each with `airlock credential set NAME < value-file`".into()),
                    ));
                }
                store.close().await;
            }
            Err(e) => checks.push(check("integrations", Status::Fail, e.to_string(), None)),
        }
    } else {
        checks.push(check(
            "integrations",
            Status::Warn,
            "not checked: the database or master key is not available",
            None,
        ));
    }

    print(&checks, ctx.json)
}

/// Credentials that profiles' routes name but the store does not have: each such route
/// fails at request time (`None` when the profiles cannot be read).
async fn profile_credentials(store: &Store) -> Option<Check> {
    let mut missing = Vec::new();
    let mut named = 0;
    for p in store.list_profiles().await.ok()? {
        let v = store.profile_version(&p.id, None).await.ok()?;
        for r in &v.spec.egress {
            if let Some(name) = &r.credential {
                named += 1;
                if !matches!(store.credential_info(name).await, Ok(Some(_))) {
                    missing.push(format!("{name} (profile {}, route {})", p.name, r.host));
                }
            }
        }
    }
    Some(if missing.is_empty() {
        check(
            "profile credentials",
            Status::Ok,
            format!("{named} route credential(s), all stored"),
            None,
        )
    } else {
        check(
            "profile credentials",
            Status::Fail,
            format!("not stored: {}", missing.join(", ")),
            Some("store each with `airlock credential set NAME < value-file`".into()),
        )
    })
}

fn kind_name(store: &Store) -> &'static str {
    match store.kind() {
        airlock_core::store::DatabaseKind::Sqlite => "SQLite",
        airlock_core::store::DatabaseKind::Postgres => "PostgreSQL",
    }
}

fn database_fix(url: &str) -> String {
    if url.starts_with("sqlite:") {
        "check that the directory of the database file is writable, or set database.url".into()
    } else {
        "check that PostgreSQL is running and database.url (AIRLOCK_DATABASE_URL) has the right host, user and password".into()
    }
}
