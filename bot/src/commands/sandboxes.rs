//! `airlock run`, `airlock snapshot …`, `airlock sandbox list`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airlock_core::domain::{EventKind, Human, Role, SessionState, Surface};
use airlock_core::ids::SessionId;
use airlock_core::service::{Actor, Request, Requested, Sessions};
use airlock_core::store::{SessionEvent, EVENT_PAGE};
use airlock_core::Store;
use anyhow::{bail, Context as _};

use super::Ctx;
use crate::app;
use crate::cli::{RunArgs, SandboxCmd, SnapshotCmd};
use crate::output;

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    let prompt = args.prompt.join(" ");
    let service = Sessions::new(store.clone(), ctx.config.broker.default_profile.clone());
    let session = if let Some(id) = &args.session {
        // A follow-up acts for the session's requester, or the one named with --as.
        let requester = match ctx.acting_for.get() {
            Some(h) => h.clone(),
            None => {
                store
                    .find_human(&store.session(id).await?.requester_id)
                    .await?
            }
        };
        service
            .follow_up(&cli_actor(ctx, requester), id, &prompt, None)
            .await?
    } else {
        let requester = match ctx.acting_for.get() {
            Some(h) => h.clone(),
            None => {
                let admins: Vec<_> = store
                    .list_humans()
                    .await?
                    .into_iter()
                    .filter(|h| h.role == Role::Admin)
                    .collect();
                match admins.len() {
                    1 => admins.into_iter().next().expect("one admin"),
                    0 => bail!("say who is asking with --as EMAIL (there is no admin to default to; add one with `airlock human add --admin`)"),
                    _ => bail!("say who is asking with --as EMAIL (there are several admins)"),
                }
            }
        };
        let repo = match args.repo.as_deref() {
            Some(r) if super::repos::is_path(r) => {
                super::repos::registered_name(ctx, &store, r).await?
            }
            r => r.unwrap_or_default().to_string(),
        };
        let request = Request {
            repo,
            profile: args.profile.clone(),
            prompt: prompt.clone(),
            thread: None,
            reference: airlock_core::domain::ThreadRef::None(
                airlock_core::domain::thread::NoThread {
                    cli: Some(ctx.actor()),
                    trigger: None,
                },
            ),
        };
        match service.request(&cli_actor(ctx, requester), request).await? {
            Requested::Started(s) | Requested::Continued(s) | Requested::Busy(s) => s,
        }
    };
    if ctx.json && args.detach {
        output::json(&session)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !ctx.json {
        eprintln!("Session {} queued.", session.id);
    }
    if args.detach {
        println!("{}", session.id);
        return Ok(ExitCode::SUCCESS);
    }
    follow(ctx, &store, &session.id, None).await
}

/// `airlock run` acts for a person (the requester), on the command line of `ctx.actor()`.
fn cli_actor(ctx: &Ctx, requester: Human) -> Actor {
    Actor::human(requester, Surface::Cli, ctx.actor())
}

/// Prints a session's events as they arrive until it ends (first the `last` of those so
/// far, when given); exit 0 only if it succeeded. Interrupted (Ctrl-C), it says how to
/// re-attach: the session goes on.
pub async fn follow(
    ctx: &Ctx,
    store: &Store,
    id: &SessionId,
    last: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::select! {
        code = follow_events(ctx, store, id, last) => code,
        _ = interrupted => {
            if !ctx.json {
                eprintln!(
                    "\nStopped following; session {id} goes on. Re-attach with `airlock session follow {id}`, or stop it with `airlock session cancel {id}`."
                );
            }
            Ok(ExitCode::from(130))
        }
    }
}

async fn follow_events(
    ctx: &Ctx,
    store: &Store,
    id: &SessionId,
    last: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let newest = store.last_event_seq(id).await?;
    let mut after = match last {
        Some(n) => store.event_seq_before_last(id, n).await?,
        None => newest,
    };
    let started = Instant::now();
    let mut hinted = false;
    loop {
        let events = store.events(id, after, EVENT_PAGE).await?;
        for e in &events {
            after = e.seq;
            print_event(ctx, e)?;
        }
        let s = store.session(id).await?;
        if s.state.is_terminal() && events.is_empty() {
            if !ctx.json {
                let reason = s.reason.as_deref().unwrap_or("");
                eprintln!("Session {} {}: {}", s.id, s.state, output::safe(reason));
            }
            return Ok(if s.state == SessionState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if !hinted && s.state == SessionState::Queued && started.elapsed() > Duration::from_secs(10)
        {
            eprintln!(
                "The session is still queued: is `airlock up` running against this database?"
            );
            hinted = true;
        }
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

fn print_event(ctx: &Ctx, e: &SessionEvent) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(e);
    }
    let text = |k: &str| e.payload.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match e.kind {
        EventKind::CommandOutput => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(output::safe_multiline(text("text")).as_bytes())?;
            out.flush()?;
        }
        EventKind::State => eprintln!("[{}]", output::safe(text("to"))),
        EventKind::Note => eprintln!("· {}", output::safe(text("text"))),
        EventKind::Message => println!("{}", output::safe_multiline(text("text"))),
        EventKind::ToolCall => {
            let input = &e.payload["input"];
            let shown = input
                .get("command")
                .or_else(|| input.get("path"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| input.to_string());
            eprintln!(
                "→ {}: {}",
                output::safe(text("tool")),
                output::safe(&airlock_core::render::one_line(&shown, 200))
            );
        }
        EventKind::FileChange => eprintln!(
            "✎ {} ({})",
            output::safe(text("path")),
            output::safe(text("change"))
        ),
        // A `command` agent's summary repeats its output, already printed as it came.
        EventKind::Summary if e.payload["runner"] == "agent" => {
            println!("\n{}", output::safe_multiline(text("text")));
        }
        EventKind::Git => {
            let branch = output::safe(text("branch"));
            match e.payload["pull_request"]["url"].as_str() {
                Some(url) => eprintln!("⇡ pushed {branch}; pull request: {}", output::safe(url)),
                None if e.payload["pushed"] == true => eprintln!("⇡ pushed {branch}"),
                None => eprintln!("· nothing to push: no file changed"),
            }
        }
        _ => {}
    }
    Ok(())
}

pub async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        SnapshotCmd::Build { profile } => {
            let profile = store.find_profile(&profile).await?;
            let pv = store.profile_version(&profile.id, None).await?;
            if pv.spec.sandbox.setup.is_empty() {
                bail!(
                    "profile {} has no setup steps; its sessions start from the image itself",
                    profile.name
                );
            }
            let (sandboxes, _) = app::stack(&ctx.config, &store, "cli").await?;
            let json = ctx.json;
            let mut log = move |line: &str| {
                if !json {
                    eprintln!("{}", output::safe(line));
                }
            };
            let snap = sandboxes
                .build_snapshot(&profile, &pv, &mut log)
                .await
                .context("the snapshot build failed")?;
            if ctx.json {
                output::json(&snap)?;
            } else {
                println!("Built {}.", snap.image);
            }
        }
        SnapshotCmd::List => {
            let snaps = store.list_snapshots().await?;
            let names: std::collections::HashMap<airlock_core::ids::ProfileId, String> = store
                .list_profiles()
                .await?
                .into_iter()
                .map(|p| (p.id, p.name))
                .collect();
            if ctx.json {
                output::json(&snaps)?;
            } else {
                let rows = snaps
                    .iter()
                    .map(|s| {
                        vec![
                            output::cell(&s.image, 80),
                            s.kind.clone(),
                            names.get(&s.profile_id).cloned().unwrap_or_default(),
                            s.profile_version.to_string(),
                            s.session_id.as_deref().unwrap_or_default().to_string(),
                            format!("{} MB", s.size_bytes.unwrap_or(0) / 1_000_000),
                            airlock_core::timefmt::rfc3339(s.created_at),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "IMAGE", "KIND", "PROFILE", "VERSION", "SESSION", "SIZE", "CREATED",
                    ],
                    rows,
                );
            }
        }
        SnapshotCmd::Prune { keep, session_days } => {
            let (sandboxes, _) = app::stack(&ctx.config, &store, "cli").await?;
            let removed = sandboxes
                .prune(keep as usize, session_days as i64 * 24 * 3600 * 1000)
                .await?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": removed }))?;
            } else if removed.is_empty() {
                println!("Nothing to prune.");
            } else {
                for r in &removed {
                    println!("removed {r}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sandbox(ctx: &Ctx, cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        SandboxCmd::List => {
            let live = store.live_sandboxes().await?;
            if ctx.json {
                output::json(&live)?;
            } else {
                let rows = live
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.role.clone(),
                            s.state.clone(),
                            s.session_id.as_deref().unwrap_or_default().to_string(),
                            s.address.clone().unwrap_or_default(),
                            output::cell(&s.image, 60),
                            airlock_core::timefmt::rfc3339(s.created_at),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "SANDBOX", "ROLE", "STATE", "SESSION", "ADDRESS", "IMAGE", "CREATED",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
