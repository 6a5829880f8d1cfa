//! `airlock trigger`: webhooks, schedules and GitHub events that start sessions.

use std::process::ExitCode;

use airlock_core::domain::{Role, TriggerKind};
use airlock_core::store::{NewAudit, NewTrigger};
use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::{TriggerAddArgs, TriggerCmd};
use crate::output::{self, safe};

const EVENTS: &[&str] = &["issues.labeled", "issues.opened", "pull_request.opened"];

/// `github:OWNER/NAME#N`, `slack:TEAM/CHANNEL`, `discord:GUILD/CHANNEL`, `origin`, `none`.
fn parse_reply(text: &str) -> anyhow::Result<Value> {
    let bad = || {
        anyhow::anyhow!(
            "`--reply {}` is not a destination; use github:OWNER/NAME#N, slack:TEAM/CHANNEL, discord:GUILD/CHANNEL, origin or none",
            safe(text)
        )
    };
    Ok(match text.split_once(':') {
        None if text == "none" => json!({}),
        None if text == "origin" => json!({"surface": "origin"}),
        Some(("github", rest)) => {
            let (repo, n) = rest.split_once('#').ok_or_else(bad)?;
            let n: u64 = n.parse().map_err(|_| bad())?;
            if !airlock_core::domain::is_repo(repo) {
                return Err(bad());
            }
            json!({"surface": "github", "repo": repo, "issue": n})
        }
        Some(("slack", rest)) => {
            let (team, channel) = rest.split_once('/').ok_or_else(bad)?;
            json!({"surface": "slack", "team": team, "channel": channel, "thread_ts": null})
        }
        Some(("discord", rest)) => {
            let (guild, channel) = rest.split_once('/').ok_or_else(bad)?;
            json!({"surface": "discord", "guild": guild, "channel": channel})
        }
        _ => return Err(bad()),
    })
}

fn prompt_of(a: &TriggerAddArgs) -> anyhow::Result<String> {
    let text = match (&a.prompt, &a.prompt_file, &a.template) {
        (Some(p), _, _) => p.clone(),
        (_, Some(f), _) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (_, _, Some(name)) => {
            if !airlock_core::domain::is_name(name) {
                bail!("`--template {}` is not a template name", safe(name));
            }
            let path = std::path::Path::new("templates/prompts").join(format!("{name}.md"));
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (run from Airlock's directory, or use --prompt-file)",
                    path.display()
                )
            })?
        }
        _ => bail!("give the prompt with --prompt, --prompt-file or --template"),
    };
    // A template that does not parse is refused now, not when the trigger fires.
    if let Err(e) = airlock_adapters::triggers::render(&text, &json!({})) {
        if e.starts_with("the prompt template is not valid") {
            bail!(e);
        }
    }
    Ok(text)
}

pub async fn trigger(ctx: &Ctx, cmd: TriggerCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        TriggerCmd::Add(a) => {
            let profile = store.find_profile(&a.profile).await?;
            let owner = match &a.owner {
                Some(o) => store.find_human(o).await?,
                None => {
                    let admins: Vec<_> = store
                        .list_humans()
                        .await?
                        .into_iter()
                        .filter(|h| h.role == Role::Admin)
                        .collect();
                    if admins.len() != 1 {
                        bail!("say whose the trigger's sessions are with --owner EMAIL");
                    }
                    admins.into_iter().next().expect("one admin")
                }
            };
            let mut config = json!({ "prompt": prompt_of(&a)? });
            match a.kind {
                TriggerKind::Webhook => {
                    let Some(secret) = &a.secret_credential else {
                        bail!("a webhook trigger needs --secret-credential NAME (airlock credential set NAME --kind webhook-secret)");
                    };
                    if store.credential_info(secret).await?.is_none() {
                        bail!("there is no credential `{}`; set it first with `airlock credential set {} --kind webhook-secret`", safe(secret), safe(secret));
                    }
                }
                TriggerKind::Schedule => {
                    let Some(cron) = &a.cron else {
                        bail!("a schedule trigger needs --cron, e.g. --cron \"0 9 * * MON\"");
                    };
                    airlock_adapters::triggers::check_schedule(cron, &a.timezone)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    config["cron"] = json!(cron);
                    config["timezone"] = json!(a.timezone);
                }
                TriggerKind::Github => {
                    let event = a.event.clone().unwrap_or_default();
                    if !EVENTS.contains(&event.as_str()) {
                        bail!(
                            "a GitHub trigger needs --event, one of: {}",
                            EVENTS.join(", ")
                        );
                    }
                    config["event"] = json!(event);
                    if event == "issues.labeled" {
                        config["label"] =
                            json!(a.label.clone().unwrap_or_else(|| "airlock".into()));
                    }
                    if let Some(b) = &a.base {
                        config["base"] = json!(b);
                    }
                }
            }
            let reply = parse_reply(&a.reply)?;
            if reply["surface"] == "origin" && a.kind != TriggerKind::Github {
                bail!("--reply origin is for GitHub triggers (the issue or pull request of the event)");
            }
            let t = store
                .create_trigger(&NewTrigger {
                    name: a.name.clone(),
                    kind: a.kind,
                    config,
                    profile_id: profile.id.clone(),
                    repo: a.repo.clone(),
                    reply,
                    owner_id: owner.id.clone(),
                    secret_credential: a.secret_credential.clone(),
                })
                .await?;
            store
                .audit(NewAudit {
                    actor: ctx.actor(),
                    action: "trigger.add".into(),
                    target: t.id.to_string(),
                    session_id: None,
                    detail: json!({"name": t.name, "kind": t.kind, "repo": t.repo, "owner": owner.id}),
                })
                .await?;
            if ctx.json {
                output::json(&t)?;
            } else {
                println!(
                    "Added trigger {} ({}), sessions as {}.",
                    t.name,
                    t.id,
                    safe(&owner.email)
                );
                if t.kind == TriggerKind::Webhook {
                    println!(
                        "POST {}/hooks/{} and {}.",
                        ctx.config.public_url(),
                        t.id,
                        airlock_adapters::triggers::HOOK_HOW
                    );
                }
            }
        }
        TriggerCmd::List => {
            let all = store.list_triggers().await?;
            if ctx.json {
                output::json(&all)?;
            } else {
                let rows = all
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.kind.to_string(),
                            t.repo.clone(),
                            if t.enabled { "enabled" } else { "disabled" }.into(),
                            airlock_core::timefmt::opt_rfc3339(t.last_fired_at),
                            t.id.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "KIND", "REPO", "STATE", "LAST FIRED", "ID"], rows);
            }
        }
        TriggerCmd::Show { name } => {
            let t = store.trigger(&name).await?;
            output::json(&t)?;
        }
        TriggerCmd::Enable { name } => {
            let t = store.trigger(&name).await?;
            store.set_trigger_enabled(&t.id, true).await?;
            println!("Trigger {} will fire.", t.name);
        }
        TriggerCmd::Disable { name } => {
            let t = store.trigger(&name).await?;
            store.set_trigger_enabled(&t.id, false).await?;
            println!("Trigger {} will not fire until enabled.", t.name);
        }
        TriggerCmd::Delete { name } => {
            let t = store.trigger(&name).await?;
            store.delete_trigger(&t.id).await?;
            store
                .audit(NewAudit {
                    actor: ctx.actor(),
                    action: "trigger.delete".into(),
                    target: t.id.to_string(),
                    session_id: None,
                    detail: json!({"name": t.name}),
                })
                .await?;
            println!("Deleted trigger {}.", t.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
