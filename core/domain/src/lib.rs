//! The domain vocabulary, shared by storage, the broker, the adapters and the admin page:
//! Human, Identity, Profile, Session, Event, Credential, Trigger, Delivery.
//!
//! Enums here are stored as their `as_str` text; parsing is strict so a bad value read from
//! the database or typed by a person is an error, never a silent default.
//!
//! No I/O: ids ([`ids`]), secret values that never print ([`secrets`]), times
//! ([`timefmt`]), where a session's thread is ([`thread`]) and the rendering of agent text for each surface ([`render`]) live here too,
//! so every other crate can depend on this one.

pub mod ids;
pub mod render;
pub mod secrets;
pub mod thread;
pub mod timefmt;

pub use thread::ThreadRef;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Implements `as_str`, `Display`, `FromStr` and a list of all values for a text enum.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "`{}` is not a {}; expected one of: {}",
                        s.chars().take(64).collect::<String>(),
                        $what,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// What a human may do in Airlock.
    Role, "role", { Admin => "admin", Member => "member" }
);

text_enum!(
    /// A chat or code host where a person has an account.
    Provider, "provider", { Slack => "slack", Github => "github", Discord => "discord" }
);

text_enum!(
    /// Where a session was asked for and where its updates go.
    Surface, "surface", {
        Cli => "cli", Slack => "slack", Github => "github", Discord => "discord",
        Trigger => "trigger", Web => "web",
    }
);

text_enum!(
    /// The life of a session. `queued -> starting -> running -> finishing` and then one end.
    SessionState, "session state", {
        Queued => "queued", Starting => "starting", Running => "running",
        Finishing => "finishing", Succeeded => "succeeded", Failed => "failed",
        Cancelled => "cancelled", TimedOut => "timed_out",
    }
);

impl SessionState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionState::Succeeded
                | SessionState::Failed
                | SessionState::Cancelled
                | SessionState::TimedOut
        )
    }

    /// Whether the state machine allows `self -> to`. Any live state may end (fail, be
    /// cancelled or time out); an ended session goes back to `queued` for a follow-up turn,
    /// and a session whose agent never started (the server stopped) goes back to the queue.
    pub fn can_become(self, to: SessionState) -> bool {
        use SessionState::*;
        match (self, to) {
            (Queued, Starting) | (Starting, Running) | (Running, Finishing) => true,
            (Starting, Queued) => true,
            (Finishing, Succeeded) => true,
            (from, Failed | Cancelled | TimedOut) => !from.is_terminal(),
            (from, Queued) => from.is_terminal(),
            _ => false,
        }
    }
}

text_enum!(
    /// Kinds of session events: the one record of what happened in a session.
    EventKind, "event kind", {
        State => "state", Turn => "turn", Message => "message", ToolCall => "tool_call",
        CommandOutput => "command_output", FileChange => "file_change", Summary => "summary",
        Note => "note", Git => "git",
    }
);

text_enum!(
    /// What a credential is for; it decides how the gateway may use it.
    CredentialKind, "credential kind", {
        Generic => "generic", ApiKey => "api-key", GithubToken => "github-token",
        GithubApp => "github-app", WebhookSecret => "webhook-secret",
    }
);

text_enum!(
    TriggerKind, "trigger kind", { Webhook => "webhook", Schedule => "schedule", Github => "github" }
);

text_enum!(
    DeliveryState, "delivery state", { Pending => "pending", Done => "done", Failed => "failed" }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Human {
    pub id: ids::HumanId,
    pub display_name: String,
    /// Used in `Co-authored-by` commit trailers.
    pub email: String,
    pub role: Role,
    pub created_at: i64,
    /// Since when the human may do nothing (no sessions, no sign-in); `None`: enabled.
    #[serde(default)]
    pub disabled_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: ids::IdentityId,
    pub human_id: ids::HumanId,
    pub provider: Provider,
    /// Slack team id, Discord guild id, or the GitHub host (`github.com`).
    pub workspace: String,
    /// The provider's stable user id (never the handle, which can change).
    pub external_id: String,
    pub handle: String,
    pub verified_at: Option<i64>,
    pub created_at: i64,
}

/// A validation problem in a profile, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile field `{field}`: {message}")]
pub struct ProfileError {
    pub field: String,
    pub message: String,
}

/// The host of `url` if it names this machine's loopback (or every address), which inside a
/// sandbox is the sandbox itself.
fn loopback_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?.to_string(),
        None => authority.split(':').next()?.to_string(),
    };
    let lower = host.to_ascii_lowercase();
    let is_loopback = lower == "localhost"
        || lower.ends_with(".localhost")
        || lower
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    is_loopback.then_some(host)
}

fn perr(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        message: message.into(),
    }
}

/// A profile as written by an admin (`airlock profile apply -f FILE`): what a sandbox is
/// made of and what it may reach. Stored as immutable, numbered versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub sandbox: SandboxSpec,
    pub agent: AgentSpec,
    /// Plain environment for the agent. Never credentials: those stay in the gateway.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
    /// Routes the gateway allows, with the credential it injects on each.
    #[serde(default)]
    pub egress: Vec<RouteSpec>,
    /// Hosts tunnelled without interception (e.g. package registries), port 443 only and
    /// never to an internal address. By default only while the setup steps run (snapshot
    /// builds): a tunnel cannot be checked, so sessions get one only where
    /// `passthrough_in_sessions` says so.
    #[serde(default)]
    pub passthrough: Vec<String>,
    #[serde(default)]
    pub passthrough_in_sessions: bool,
    /// Repositories this profile may work on: `owner/name` or `owner/*`. Empty means any.
    #[serde(default)]
    pub repos: Vec<String>,
    #[serde(default)]
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Image to start from; defaults to the Airlock base image.
    #[serde(default)]
    pub image: Option<String>,
    /// Shell steps run once in a build sandbox; the result becomes the profile's snapshot.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Start sessions from the newest snapshot of this profile.
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// Started, unbound sandboxes to keep ready.
    #[serde(default)]
    pub warm_pool: u32,
}

fn yes() -> bool {
    true
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            image: None,
            setup: Vec::new(),
            snapshot: true,
            warm_pool: 0,
        }
    }
}

/// The agent that works in the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AgentSpec {
    /// A shell command whose output is the result.
    Command { command: String },
    /// Airlock's tool-calling loop against an OpenAI-compatible chat-completions API.
    Builtin {
        model: String,
        /// The OpenAI-compatible API (`…/v1`); the profile needs an egress route for its host.
        #[serde(default)]
        base_url: Option<String>,
        #[serde(default)]
        max_steps: Option<u32>,
        #[serde(default)]
        max_tokens: Option<u64>,
    },
    Codex {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        args: Vec<String>,
    },
    ClaudeCode {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        args: Vec<String>,
    },
    Opencode {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        args: Vec<String>,
    },
    Aider {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
    /// Longest a session may run, in seconds.
    pub wall_clock_secs: u64,
    /// Longest a session may go without output, in seconds.
    pub idle_secs: u64,
    /// Output kept per turn, in MB: beyond it the first and last halves are kept and what
    /// lies between is replaced by a note saying how much was left out.
    pub output_mb: u64,
    /// Output kept per session (all its turns), in MB: a turn may keep only what is left of
    /// it, though always at least 1 MB (its first and last half megabyte).
    pub session_output_mb: u64,
    /// Keep every byte of output, unbounded by the two limits above, as a gzip file in the
    /// data directory (`logs/<session>.log.gz`; admin page and `airlock session log`).
    pub output_log: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpus: 2.0,
            memory_mb: 4096,
            pids: 512,
            wall_clock_secs: 3600,
            idle_secs: 900,
            output_mb: 16,
            session_output_mb: 64,
            output_log: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// `api.github.com` or `*.example.com`.
    pub host: String,
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Allowed methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Name of the credential injected on this route.
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub inject: Option<Inject>,
    /// Send the traffic here instead (e.g. a self-hosted model server).
    #[serde(default)]
    pub upstream: Option<String>,
}

fn root_path() -> String {
    "/".into()
}

/// How the gateway puts a credential into a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Inject {
    Bearer,
    Basic {
        username: String,
    },
    Header {
        name: String,
        #[serde(default)]
        prefix: String,
    },
    Query {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Roles whose members may use the profile.
    pub roles: Vec<Role>,
    /// Further humans (by email) who may use it whatever their role.
    pub humans: Vec<String>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            roles: vec![Role::Admin, Role::Member],
            humans: Vec::new(),
        }
    }
}

impl ProfileSpec {
    /// Parses and validates a profile file.
    pub fn from_toml(text: &str) -> Result<ProfileSpec, ProfileError> {
        let de = toml::Deserializer::new(text);
        let spec: ProfileSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner
                .message()
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let line = inner.span().map(|s| line_of(text, s.start));
            let msg = match line {
                Some(l) if !msg.starts_with("missing field") => format!("{msg} (line {l})"),
                _ => msg,
            };
            perr(
                if path == "." {
                    "(top level)".to_string()
                } else {
                    path
                },
                msg,
            )
        })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), ProfileError> {
        if !is_name(&self.name) {
            return Err(perr(
                "name",
                "use 1-64 lower-case letters, digits and dashes, starting with a letter",
            ));
        }
        if let Some(image) = &self.sandbox.image {
            if image.is_empty() || image.contains(char::is_whitespace) {
                return Err(perr(
                    "sandbox.image",
                    "expected an image reference like airlock/base:TAG",
                ));
            }
        }
        for (i, step) in self.sandbox.setup.iter().enumerate() {
            if step.trim().is_empty() {
                return Err(perr(format!("sandbox.setup[{i}]"), "is empty"));
            }
        }
        if self.sandbox.warm_pool > 32 {
            return Err(perr("sandbox.warm_pool", "at most 32"));
        }
        match &self.agent {
            AgentSpec::Command { command } if command.trim().is_empty() => {
                return Err(perr("agent.command", "is empty"));
            }
            AgentSpec::Builtin {
                model,
                max_steps,
                base_url,
                ..
            } => {
                if model.trim().is_empty() {
                    return Err(perr("agent.model", "is empty"));
                }
                if let Some(u) = base_url {
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err(perr(
                            "agent.base_url",
                            "expected an http(s) URL like https://api.openai.com/v1",
                        ));
                    }
                    if let Some(host) = loopback_host(u) {
                        return Err(perr(
                            "agent.base_url",
                            format!(
                                "points at {host}, which inside the sandbox is the sandbox \
                                 itself (its only way out is Airlock's gateway): keep a name only \
                                 the gateway knows, e.g. https://models.airlock.internal/v1, and \
                                 give it an [[egress]] route with upstream = \"http://127.0.0.1:11434\" \
                                 (where the gateway, on the host, finds the server); see \
                                 templates/profiles/local-model.toml"
                            ),
                        ));
                    }
                }
                if *max_steps == Some(0) {
                    return Err(perr("agent.max_steps", "must be at least 1"));
                }
            }
            _ => {}
        }
        for key in self.env.keys() {
            let ok = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(perr(
                    format!("env.{key}"),
                    "is not a valid environment variable name",
                ));
            }
        }
        let l = &self.limits;
        if !(l.cpus > 0.0 && l.cpus <= 256.0) {
            return Err(perr(
                "limits.cpus",
                "expected a number of CPUs above 0 and at most 256",
            ));
        }
        if !(64..=1_048_576).contains(&l.memory_mb) {
            return Err(perr("limits.memory_mb", "expected 64 to 1048576 (MiB)"));
        }
        if !(16..=1_000_000).contains(&l.pids) {
            return Err(perr("limits.pids", "expected 16 to 1000000"));
        }
        if !(10..=7 * 24 * 3600).contains(&l.wall_clock_secs) {
            return Err(perr(
                "limits.wall_clock_secs",
                "expected 10 seconds to 7 days",
            ));
        }
        if !(10..=7 * 24 * 3600).contains(&l.idle_secs) {
            return Err(perr("limits.idle_secs", "expected 10 seconds to 7 days"));
        }
        if !(1..=1024).contains(&l.output_mb) {
            return Err(perr("limits.output_mb", "expected 1 to 1024 (MB per turn)"));
        }
        if !(1..=16 * 1024).contains(&l.session_output_mb) {
            return Err(perr(
                "limits.session_output_mb",
                "expected 1 to 16384 (MB per session)",
            ));
        }
        for (i, r) in self.egress.iter().enumerate() {
            let f = |name: &str| format!("egress[{i}].{name}");
            if !is_host_pattern(&r.host) {
                return Err(perr(
                    f("host"),
                    "expected a host name like api.github.com or a pattern like *.example.com",
                ));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(perr(f("path_prefix"), "must start with /"));
            }
            for m in &r.methods {
                const METHODS: &[&str] =
                    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                if !METHODS.contains(&m.as_str()) {
                    return Err(perr(
                        f("methods"),
                        format!("expected upper-case methods from {}", METHODS.join(", ")),
                    ));
                }
            }
            match (&r.credential, &r.inject) {
                (Some(c), Some(inject)) => {
                    if !is_credential_name(c) {
                        return Err(perr(f("credential"), "is not a valid credential name"));
                    }
                    if let Inject::Header { name, .. } | Inject::Query { name } = inject {
                        if name.is_empty()
                            || !name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                        {
                            return Err(perr(
                                f("inject.name"),
                                "expected a header or parameter name",
                            ));
                        }
                    }
                }
                (Some(_), None) => {
                    return Err(perr(
                        f("inject"),
                        "say how to inject the credential, e.g. inject = { kind = \"bearer\" }",
                    ))
                }
                (None, Some(_)) => return Err(perr(f("credential"), "is required with inject")),
                (None, None) => {}
            }
            if let Some(u) = &r.upstream {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    return Err(perr(f("upstream"), "expected an http(s) URL"));
                }
            }
        }
        for (i, h) in self.passthrough.iter().enumerate() {
            if !is_host_pattern(h) {
                return Err(perr(
                    format!("passthrough[{i}]"),
                    "expected a host name or *.suffix pattern",
                ));
            }
        }
        for (i, repo) in self.repos.iter().enumerate() {
            if !is_repo_pattern(repo) {
                return Err(perr(
                    format!("repos[{i}]"),
                    "expected owner/name, owner/* or the name of a registered repository",
                ));
            }
        }
        for (i, email) in self.access.humans.iter().enumerate() {
            if !is_email(email) {
                return Err(perr(
                    format!("access.humans[{i}]"),
                    "expected an email address",
                ));
            }
        }
        Ok(())
    }

    /// Whether `repo` (`owner/name`) is one this profile may work on.
    pub fn allows_repo(&self, repo: &str) -> bool {
        self.repos.is_empty()
            || self.repos.iter().any(|p| match p.strip_suffix("/*") {
                Some(owner) => repo
                    .split_once('/')
                    .is_some_and(|(o, _)| o.eq_ignore_ascii_case(owner)),
                None => p.eq_ignore_ascii_case(repo),
            })
    }

    /// Whether `human` may start sessions with this profile.
    pub fn allows_human(&self, human: &Human) -> bool {
        self.access.roles.contains(&human.role)
            || self
                .access
                .humans
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&human.email))
    }
}

/// The 1-based line of byte offset `at` in `text` (byte-wise, so any offset is safe).
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A name for profiles and the like: `rust-ci`.
pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Credential names: letters, digits, `-`, `_`, `.`; 1-128 characters.
pub fn is_credential_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && s.len() <= 254
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>' || c.is_control())
                && !domain.contains('@')
        }
        None => false,
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `host.example.com`, or `*.example.com` for any sub-domain.
pub fn is_host_pattern(s: &str) -> bool {
    match s.strip_prefix("*.") {
        Some(suffix) => suffix.contains('.') && is_hostname(suffix),
        None => is_hostname(s),
    }
}

fn is_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s != "."
        && s != ".."
}

/// `owner/name`.
pub fn is_repo(s: &str) -> bool {
    matches!(s.split_once('/'), Some((o, n)) if is_repo_part(o) && is_repo_part(n))
}

/// What a session may name as its repository: `owner/name` (GitHub), or the name of a
/// repository registered with `airlock repo add` (`name` or `owner/name`).
pub fn is_repo_ref(s: &str) -> bool {
    is_repo(s) || is_repo_part(s)
}

fn is_repo_pattern(s: &str) -> bool {
    is_repo_ref(s) || matches!(s.strip_suffix("/*"), Some(o) if is_repo_part(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"
name = "rust-ci"
description = "Rust services"
repos = ["acme/*", "other/tool"]
passthrough = ["crates.io", "*.crates.io"]

[sandbox]
setup = ["cargo fetch"]
warm_pool = 2

[agent]
kind = "builtin"
model = "gpt-5"
max_steps = 40

[env]
RUST_LOG = "info"

[limits]
memory_mb = 2048
wall_clock_secs = 1800

[[egress]]
host = "api.openai.com"
path_prefix = "/v1/"
methods = ["POST"]
credential = "openai"
inject = { kind = "bearer" }

[[egress]]
host = "github.com"
credential = "github"
inject = { kind = "basic", username = "x-access-token" }

[access]
roles = ["admin"]
humans = ["ada@example.com"]
"#;

    #[test]
    fn a_complete_profile_parses_with_defaults_filled_in() {
        let p = ProfileSpec::from_toml(FULL).unwrap();
        assert_eq!(p.name, "rust-ci");
        assert_eq!(p.limits.memory_mb, 2048);
        assert_eq!(p.limits.pids, 512);
        assert_eq!(p.egress[1].path_prefix, "/");
        assert!(p.sandbox.snapshot);
        assert!(matches!(
            p.agent,
            AgentSpec::Builtin {
                max_steps: Some(40),
                ..
            }
        ));
        assert!(p.allows_repo("acme/web") && p.allows_repo("Other/Tool"));
        assert!(!p.allows_repo("evil/web"));
    }

    #[test]
    fn profile_errors_name_the_field() {
        let cases = [
            ("name = \"Bad Name\"\n[agent]\nkind = \"command\"\ncommand = \"make\"", "profile field `name`: use 1-64 lower-case letters, digits and dashes, starting with a letter"),
            ("name = \"x\"\n[agent]\nkind = \"robot\"", "profile field `agent.kind`: unknown variant `robot`, expected one of `command`, `builtin`, `codex`, `claude-code`, `opencode`, `aider` (line 3)"),
            ("name = \"x\"\n[agent]\nkind = \"command\"\ncommand = \"make\"\n[[egress]]\nhost = \"*\"", "profile field `egress[0].host`: expected a host name like api.github.com or a pattern like *.example.com"),
            ("name = \"x\"\n[agent]\nkind = \"command\"\ncommand = \"make\"\n[[egress]]\nhost = \"a.com\"\ncredential = \"k\"", "profile field `egress[0].inject`: say how to inject the credential, e.g. inject = { kind = \"bearer\" }"),
            ("name = \"x\"\n[agent]\nkind = \"command\"\ncommand = \"make\"\n[limits]\nmemory_mb = 1", "profile field `limits.memory_mb`: expected 64 to 1048576 (MiB)"),
            ("name = \"x\"\n[agent]\nkind = \"command\"\ncommand = \"make\"\n[env]\n\"1BAD\" = \"v\"", "profile field `env.1BAD`: is not a valid environment variable name"),
            ("name = \"x\"\nimage = \"y\"\n[agent]\nkind = \"command\"\ncommand = \"make\"", "profile field `image`: unknown field `image`, expected one of `name`, `description`, `sandbox`, `agent`, `env`, `limits`, `egress`, `passthrough`, `passthrough_in_sessions`, `repos`, `access` (line 2)"),
            ("name = \"x\"", "profile field `(top level)`: missing field `agent`"),
            ("name = \"x\"\n[agent]\nkind = \"builtin\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:11434/v1\"", "profile field `agent.base_url`: points at 127.0.0.1, which inside the sandbox is the sandbox itself (its only way out is Airlock's gateway): keep a name only the gateway knows, e.g. https://models.airlock.internal/v1, and give it an [[egress]] route with upstream = \"http://127.0.0.1:11434\" (where the gateway, on the host, finds the server); see templates/profiles/local-model.toml"),
        ];
        for url in [
            "http://localhost:8000/v1",
            "http://[::1]:8000/v1",
            "https://0.0.0.0/v1",
            "http://u@LOCALHOST/v1",
        ] {
            assert!(loopback_host(url).is_some(), "{url}");
        }
        for url in [
            "https://api.openai.com/v1",
            "https://models.airlock.internal/v1",
            "http://10.0.0.5:8000/v1",
        ] {
            assert!(loopback_host(url).is_none(), "{url}");
        }
        for (text, want) in cases {
            assert_eq!(
                ProfileSpec::from_toml(text).unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn the_state_machine_allows_only_the_documented_moves() {
        use SessionState::*;
        assert!(Queued.can_become(Starting));
        assert!(Running.can_become(TimedOut));
        assert!(Succeeded.can_become(Queued));
        assert!(!Queued.can_become(Running));
        assert!(!Succeeded.can_become(Failed));
        assert!(!Running.can_become(Succeeded));
        assert!(!Queued.can_become(Queued));
        assert!(Starting.can_become(Queued));
        assert!(!Running.can_become(Queued));
    }

    #[test]
    fn text_enums_round_trip_and_reject_unknown_values() {
        for s in SessionState::ALL {
            assert_eq!(s.as_str().parse::<SessionState>().unwrap(), *s);
        }
        assert_eq!(
            "owner".parse::<Role>().unwrap_err(),
            "`owner` is not a role; expected one of: admin, member"
        );
    }

    proptest! {
        #[test]
        fn any_profile_text_parses_or_gives_a_one_line_error(text in "\\PC{0,300}") {
            if let Err(e) = ProfileSpec::from_toml(&text) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
