//! Administration commands: humans, identities, profiles, credentials, sessions and the audit
//! log. Every change is written to the audit log with the acting user. Credential values are
//! read from stdin or a file, never from an argument (arguments end up in shell history and
//! `ps`), and never printed.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use airlock_core::domain::{CredentialKind, ProfileSpec, Provider, Role};
use airlock_core::secrets::SecretValue;
use airlock_core::service::{Actor, Sessions};
use airlock_core::store::{AccountRef, ApplyOutcome, NewAudit, SessionFilter, EVENT_PAGE};
use airlock_core::timefmt::{opt_rfc3339, rfc3339};
use airlock_core::Store;
use anyhow::{bail, Context as _};

use super::Ctx;
use crate::cli::{AuditCmd, CredentialCmd, HumanCmd, IdentityCmd, ProfileCmd, SessionCmd};
use crate::output::{cell, json, safe, table};

pub(crate) async fn audit(
    store: &Store,
    ctx: &Ctx,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    store.audit(entry(ctx, action, target, detail)).await?;
    Ok(())
}

/// An audit row of the acting CLI user.
pub(crate) fn entry(ctx: &Ctx, action: &str, target: &str, detail: serde_json::Value) -> NewAudit {
    NewAudit {
        actor: ctx.actor(),
        action: action.into(),
        target: target.into(),
        session_id: None,
        detail,
    }
}

/// `airlock human disable|enable`.
async fn set_disabled(ctx: &Ctx, store: &Store, human: &str, disable: bool) -> anyhow::Result<()> {
    let h = store.find_human(human).await?;
    let action = if disable {
        "human.disable"
    } else {
        "human.enable"
    };
    let h = store
        .set_human_disabled(
            &h.id,
            disable,
            entry(ctx, action, &h.id, serde_json::json!({})),
        )
        .await?;
    if ctx.json {
        json(&h)?;
    } else if disable {
        println!(
            "Disabled {} <{}>: they start no session and sign in nowhere until enabled.",
            safe(&h.display_name),
            safe(&h.email)
        );
    } else {
        println!("Enabled {} <{}>.", safe(&h.display_name), safe(&h.email));
    }
    Ok(())
}

pub async fn human(ctx: &Ctx, cmd: HumanCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        HumanCmd::Add {
            name,
            email,
            role,
            admin,
            password_stdin,
        } => {
            let role = if admin {
                Role::Admin
            } else {
                role.unwrap_or(Role::Member)
            };
            let password = if password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let h = store.add_human(&name, &email, role).await?;
            if let Some(p) = &password {
                store.set_password(&h.id, p).await?;
            }
            audit(
                &store,
                ctx,
                "human.add",
                &h.id,
                serde_json::json!({ "email": h.email, "role": role }),
            )
            .await?;
            if ctx.json {
                json(&h)?;
            } else {
                println!(
                    "Added {} <{}> as {} ({}).",
                    safe(&h.display_name),
                    safe(&h.email),
                    role,
                    h.id
                );
                println!("Link their chat and GitHub accounts with `airlock identity link --human {} …`.", safe(&h.email));
            }
        }
        HumanCmd::Password { human } => {
            let h = store.find_human(&human).await?;
            let password = read_password()?;
            store.set_password(&h.id, &password).await?;
            audit(&store, ctx, "human.password", &h.id, serde_json::json!({})).await?;
            if ctx.json {
                json(&serde_json::json!({"human": h.id, "password": "set"}))?;
            } else {
                println!("Set the admin page password of {}.", safe(&h.email));
            }
        }
        HumanCmd::Role { human, role } => {
            let h = store.find_human(&human).await?;
            let h = store
                .set_human_role(
                    &h.id,
                    role,
                    entry(
                        ctx,
                        "human.role",
                        &h.id,
                        serde_json::json!({ "role": role }),
                    ),
                )
                .await?;
            if ctx.json {
                json(&h)?;
            } else {
                println!(
                    "{} <{}> is now {}.",
                    safe(&h.display_name),
                    safe(&h.email),
                    role
                );
            }
        }
        HumanCmd::Disable { human } => set_disabled(ctx, &store, &human, true).await?,
        HumanCmd::Enable { human } => set_disabled(ctx, &store, &human, false).await?,
        HumanCmd::List => {
            let humans = store.list_humans().await?;
            let identities = store.list_identities(None).await?;
            if ctx.json {
                json(&humans)?;
            } else {
                table(
                    &["ID", "NAME", "EMAIL", "ROLE", "ACCOUNTS", "ADDED"],
                    humans
                        .iter()
                        .map(|h| {
                            let mut accounts: Vec<&str> = identities
                                .iter()
                                .filter(|i| i.human_id == h.id)
                                .map(|i| i.provider.as_str())
                                .collect();
                            accounts.dedup();
                            vec![
                                h.id.to_string(),
                                cell(&h.display_name, 40),
                                cell(&h.email, 50),
                                if h.disabled_at.is_some() {
                                    format!("{} (disabled)", h.role)
                                } else {
                                    h.role.to_string()
                                },
                                if accounts.is_empty() {
                                    "-".into()
                                } else {
                                    accounts.join(",")
                                },
                                rfc3339(h.created_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn identity(ctx: &Ctx, cmd: IdentityCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        IdentityCmd::Link {
            human,
            provider,
            workspace,
            external_id,
            handle,
        } => {
            let workspace = match (provider, workspace) {
                (_, Some(w)) if !w.trim().is_empty() => w.trim().to_string(),
                (Provider::Github, _) => ctx
                    .config
                    .github
                    .as_ref()
                    .map(|g| airlock_core::github::web_host(&g.web_url))
                    .unwrap_or_else(|| "github.com".to_string()),
                (Provider::Slack, _) => {
                    bail!("--workspace is required for slack: the team id, e.g. T0123ABCD")
                }
                (Provider::Discord, _) => {
                    bail!("--workspace is required for discord: the server (guild) id")
                }
            };
            let handle = handle.unwrap_or_else(|| external_id.clone());
            let account = AccountRef {
                provider,
                workspace: &workspace,
                external_id: &external_id,
            };
            // Linked by an administrator, who vouches for it: verified.
            let ident = store.link_identity(&human, account, &handle, true).await?;
            let h = store.find_human(&ident.human_id).await?;
            audit(
                &store,
                ctx,
                "identity.link",
                &ident.id,
                serde_json::json!({ "human": h.id, "provider": provider, "workspace": workspace, "external_id": external_id }),
            )
            .await?;
            if ctx.json {
                json(&ident)?;
            } else {
                println!(
                    "Linked {} account {} ({}) in {} to {} <{}> ({}).",
                    provider,
                    safe(&external_id),
                    safe(&handle),
                    safe(&workspace),
                    safe(&h.display_name),
                    safe(&h.email),
                    ident.id
                );
            }
        }
        IdentityCmd::Unlink { id } => {
            let ident = store.unlink_identity(&id).await?;
            audit(
                &store,
                ctx,
                "identity.unlink",
                &ident.id,
                serde_json::json!({ "human": ident.human_id, "provider": ident.provider }),
            )
            .await?;
            if ctx.json {
                json(&ident)?;
            } else {
                println!(
                    "Unlinked {} account {} ({}).",
                    ident.provider,
                    safe(&ident.external_id),
                    ident.id
                );
            }
        }
        IdentityCmd::List { human } => {
            let human_id = match human {
                Some(h) => Some(store.find_human(&h).await?.id),
                None => None,
            };
            let idents = store.list_identities(human_id.as_ref()).await?;
            if ctx.json {
                json(&idents)?;
            } else {
                table(
                    &[
                        "ID",
                        "HUMAN",
                        "PROVIDER",
                        "WORKSPACE",
                        "USER ID",
                        "HANDLE",
                        "VERIFIED",
                    ],
                    idents
                        .iter()
                        .map(|i| {
                            vec![
                                i.id.to_string(),
                                i.human_id.to_string(),
                                i.provider.to_string(),
                                cell(&i.workspace, 30),
                                cell(&i.external_id, 30),
                                cell(&i.handle, 30),
                                opt_rfc3339(i.verified_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn profile(ctx: &Ctx, cmd: ProfileCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCmd::Apply { file } => {
            // Parse before touching the database: a bad file is reported even when it is down.
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec = ProfileSpec::from_toml(&text)
                .with_context(|| format!("{} is not a valid profile", file.display()))?;
            let store = ctx.store(false).await?;
            let outcome = store.apply_profile(&spec, Some(&ctx.actor())).await?;
            let (verb, id, version) = match &outcome {
                ApplyOutcome::Created {
                    profile_id,
                    version,
                } => ("created", profile_id, *version),
                ApplyOutcome::Updated {
                    profile_id,
                    version,
                } => ("updated", profile_id, *version),
                ApplyOutcome::Unchanged {
                    profile_id,
                    version,
                } => ("unchanged", profile_id, *version),
            };
            if verb != "unchanged" {
                audit(
                    &store,
                    ctx,
                    "profile.apply",
                    id,
                    serde_json::json!({ "name": spec.name, "version": version }),
                )
                .await?;
            }
            if ctx.json {
                json(&outcome)?;
            } else {
                match verb {
                    "created" => println!("Created profile {} (version 1).", spec.name),
                    "updated" => println!("Updated profile {} to version {version}.", spec.name),
                    _ => println!("Profile {} is unchanged (version {version}).", spec.name),
                }
            }
            // What would fail later, said now: a route whose credential is not stored is
            // refused at request time.
            for r in &spec.egress {
                if let Some(name) = &r.credential {
                    if store.credential_info(name).await?.is_none() {
                        eprintln!(
                            "warning: the route for {} names the credential `{name}`, which is not stored; its requests will fail until `airlock credential set {name}`",
                            r.host
                        );
                    }
                }
            }
        }
        ProfileCmd::List => {
            let store = ctx.store(false).await?;
            let profiles = store.list_profiles().await?;
            if ctx.json {
                json(&profiles)?;
            } else {
                let mut rows = Vec::new();
                for p in &profiles {
                    let v = store.profile_version(&p.id, None).await?;
                    rows.push(vec![
                        p.name.clone(),
                        p.current_version.to_string(),
                        agent_name(&v.spec).to_string(),
                        cell(&v.spec.description, 50),
                        rfc3339(p.updated_at),
                    ]);
                }
                table(
                    &["NAME", "VERSION", "AGENT", "DESCRIPTION", "UPDATED"],
                    rows,
                );
            }
        }
        ProfileCmd::Show { name, version } => {
            let store = ctx.store(false).await?;
            let p = store.find_profile(&name).await?;
            let v = store.profile_version(&p.id, version).await?;
            if ctx.json {
                json(&v)?;
            } else {
                println!(
                    "# profile {} version {} of {} ({}), created {}{}",
                    p.name,
                    v.version,
                    p.current_version,
                    p.id,
                    rfc3339(v.created_at),
                    v.created_by
                        .as_deref()
                        .map(|b| format!(" by {}", safe(b)))
                        .unwrap_or_default()
                );
                print!("{}", safe_multiline(&toml::to_string_pretty(&v.spec)?));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn agent_name(spec: &ProfileSpec) -> &'static str {
    use airlock_core::domain::AgentSpec::*;
    match spec.agent {
        Command { .. } => "command",
        Builtin { .. } => "builtin",
        Codex { .. } => "codex",
        ClaudeCode { .. } => "claude-code",
        Opencode { .. } => "opencode",
        Aider { .. } => "aider",
    }
}

fn safe_multiline(s: &str) -> String {
    s.lines().map(safe).collect::<Vec<_>>().join("\n") + "\n"
}

/// A password from stdin (one line; the newline is not part of it).
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.chars().count() < 12 {
        bail!("the password is too short: use at least 12 characters");
    }
    Ok(p)
}

/// Reads a credential value: the file, or stdin. One trailing newline is dropped (what `echo`
/// and editors add); anything else is kept byte for byte.
fn read_value(from_file: Option<&std::path::Path>) -> anyhow::Result<SecretValue> {
    let mut bytes = Vec::new();
    match from_file {
        Some(path) => {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("Paste the value, then press Enter and Ctrl-D: ");
                let _ = std::io::stderr().flush();
            }
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read the value from stdin")?;
        }
    }
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    if bytes.is_empty() {
        bail!("the credential value is empty; pipe it on stdin (`airlock credential set NAME < file`) or use --from-file");
    }
    Ok(SecretValue::new(bytes))
}

pub async fn credential(ctx: &Ctx, cmd: CredentialCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CredentialCmd::Set {
            name,
            kind,
            from_file,
        } => {
            if !airlock_core::domain::is_credential_name(&name) {
                bail!("`{}` is not a valid credential name: use 1-128 letters, digits, `-`, `_` or `.`", cell(&name, 80));
            }
            let store = ctx.store(false).await?;
            let value = read_value(from_file.as_deref())?;
            if kind == CredentialKind::GithubApp {
                if let Err(e) = airlock_core::github::check_app_key(value.expose()) {
                    bail!("{e}; store the .pem file GitHub gave when you generated the App's private key");
                }
            }
            let rotated = store
                .set_credential(&name, kind, &value, Some(&ctx.actor()))
                .await?;
            drop(value);
            audit(
                &store,
                ctx,
                if rotated {
                    "credential.rotate"
                } else {
                    "credential.set"
                },
                &name,
                serde_json::json!({ "kind": kind }),
            )
            .await?;
            if ctx.json {
                json(&serde_json::json!({ "name": name, "kind": kind, "rotated": rotated }))?;
            } else if rotated {
                println!("Rotated credential {name} ({kind}). The new value is in use from the next request.");
            } else {
                println!(
                    "Stored credential {name} ({kind}), encrypted. Its value is never shown again."
                );
            }
        }
        CredentialCmd::List => {
            let store = ctx.store(false).await?;
            let creds = store.list_credentials().await?;
            if ctx.json {
                json(&creds)?;
            } else {
                table(
                    &["NAME", "KIND", "SET BY", "UPDATED"],
                    creds
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.kind.to_string(),
                                cell(c.created_by.as_deref().unwrap_or("-"), 30),
                                rfc3339(c.updated_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        CredentialCmd::Delete { name } => {
            let store = ctx.store(false).await?;
            store.delete_credential(&name).await?;
            audit(
                &store,
                ctx,
                "credential.delete",
                &name,
                serde_json::json!({}),
            )
            .await?;
            if ctx.json {
                json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("Deleted credential {name}.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn session(ctx: &Ctx, cmd: SessionCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        SessionCmd::List(args) => {
            let requester_id = match args.human {
                Some(h) => Some(store.find_human(&h).await?.id),
                None => None,
            };
            let filter = SessionFilter {
                state: args.state,
                requester_id,
                surface: args.surface,
                limit: Some(args.limit),
                before: None,
            };
            let sessions = store.list_sessions(&filter).await?;
            if ctx.json {
                json(&sessions)?;
            } else {
                table(
                    &[
                        "ID",
                        "STATE",
                        "REPO",
                        "SURFACE",
                        "REQUESTER",
                        "CREATED",
                        "PROMPT",
                    ],
                    sessions
                        .iter()
                        .map(|s| {
                            vec![
                                s.id.to_string(),
                                s.state.to_string(),
                                cell(&s.repo, 40),
                                s.surface.to_string(),
                                s.requester_id.to_string(),
                                rfc3339(s.created_at),
                                cell(&s.prompt, 50),
                            ]
                        })
                        .collect(),
                );
            }
        }
        SessionCmd::Show { id } => {
            let s = store.session(&id).await?;
            let usage = store.session_usage(&id).await?;
            // Events are read and printed a page at a time: a session can hold a lot.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if ctx.json {
                // One JSON object, written as it is read: {"session", "model_usage", "events"}.
                out.write_all(b"{\"session\":")?;
                serde_json::to_writer(&mut out, &s)?;
                out.write_all(b",\"model_usage\":")?;
                serde_json::to_writer(&mut out, &usage)?;
                out.write_all(b",\"events\":[")?;
            } else {
                let requester = store.find_human(&s.requester_id).await?;
                writeln!(out, "Session   {}", s.id)?;
                writeln!(
                    out,
                    "State     {}{}",
                    s.state,
                    s.reason
                        .as_deref()
                        .map(|r| format!(" ({})", safe(r)))
                        .unwrap_or_default()
                )?;
                writeln!(out, "Repo      {}", safe(&s.repo))?;
                writeln!(
                    out,
                    "Requester {} <{}>",
                    safe(&requester.display_name),
                    safe(&requester.email)
                )?;
                writeln!(out, "Surface   {}", s.surface)?;
                writeln!(
                    out,
                    "Profile   {} version {}",
                    s.profile_id, s.profile_version
                )?;
                writeln!(
                    out,
                    "Models    {} calls, {} input and {} output tokens",
                    usage.calls, usage.input_tokens, usage.output_tokens
                )?;
                writeln!(
                    out,
                    "Created   {}   started {}   finished {}",
                    rfc3339(s.created_at),
                    opt_rfc3339(s.started_at),
                    opt_rfc3339(s.finished_at)
                )?;
                writeln!(out, "Prompt    {}", cell(&s.prompt, 500))?;
                writeln!(out)?;
            }
            let mut after = 0;
            let mut first = true;
            loop {
                let page = store.events(&id, after, EVENT_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    if ctx.json {
                        if !first {
                            out.write_all(b",")?;
                        }
                        serde_json::to_writer(&mut out, e)?;
                    } else {
                        writeln!(
                            out,
                            "{:>5}  {}  {:<14} {}",
                            e.seq,
                            rfc3339(e.at),
                            e.kind.to_string(),
                            cell(&e.payload.to_string(), 200)
                        )?;
                    }
                    first = false;
                }
            }
            if ctx.json {
                out.write_all(b"]}\n")?;
            }
            out.flush()?;
        }
        SessionCmd::Log { id } => {
            let s = store.session(&id).await?;
            let dir = ctx.config.data_dir.join("logs");
            let path = airlock_core::output_log::path(&dir, &s.id)
                .context("the session id cannot name a log file")?;
            let file = std::fs::File::open(&path).with_context(|| {
                format!(
                    "no full output log for session {} at {} (kept only for profiles with \
                     limits.output_log = true, on the server that ran the session)",
                    s.id,
                    path.display()
                )
            })?;
            // Every turn is a gzip member: read them all, in order, a buffer at a time.
            let mut log = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            std::io::copy(&mut log, &mut out).context("cannot read the log")?;
            out.flush()?;
        }
        SessionCmd::Follow { id, last } => {
            let s = store.session(&id).await?;
            return super::sandboxes::follow(ctx, &store, &s.id, Some(last)).await;
        }
        SessionCmd::Cancel { id, reason } => {
            let reason = reason
                .unwrap_or_else(|| format!("cancelled by {} from the command line", ctx.actor()));
            let s = Sessions::new(store.clone(), None)
                .stop(&Actor::operator(ctx.actor()), &id, Some(reason))
                .await?;
            if ctx.json {
                json(&s)?;
            } else {
                println!("Cancelled session {}.", s.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit_cmd(ctx: &Ctx, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let store = ctx.store(false).await?;
    match cmd {
        AuditCmd::Tail { lines } => {
            let entries = store.audit_tail(lines).await?;
            if ctx.json {
                json(&entries)?;
            } else {
                table(
                    &["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
                    entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.seq.to_string(),
                                rfc3339(e.at),
                                cell(&e.actor, 30),
                                cell(&e.action, 30),
                                cell(&e.target, 40),
                                cell(&e.detail.to_string(), 80),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => {
            let verdict = store.verify_audit().await?;
            if ctx.json {
                json(&verdict)?;
            } else if verdict.is_intact() {
                println!(
                    "The audit log is intact: {} rows, hash chain verified.",
                    verdict.rows_checked
                );
            } else {
                println!(
                    "The audit log has been tampered with ({} rows checked):",
                    verdict.rows_checked
                );
                for p in &verdict.problems {
                    println!("  - {p}");
                }
            }
            Ok(if verdict.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCmd::Export { output, since } => {
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = match since {
                Some(at) => store.audit_seq_before(at).await?,
                None => 0,
            };
            let mut count = 0u64;
            loop {
                let page = store.audit_page(after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                    count += 1;
                }
            }
            out.flush()?;
            if let Some(p) = output {
                eprintln!("Exported {count} audit entries to {}.", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
