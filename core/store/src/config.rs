//! The one typed configuration: `airlock.toml`, overridden key by key by `AIRLOCK_*`
//! environment variables, validated once at start-up.
//!
//! Every problem is reported as one line that names the key, where its value came from, and
//! what is expected. Values of secret keys (`secrets.master_key`) are never echoed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::line_of;

/// Environment variables with the `AIRLOCK_` prefix that are not configuration keys.
const RESERVED_ENV: &[&str] = &["AIRLOCK_CONFIG", "AIRLOCK_LOG", "AIRLOCK_LOG_FORMAT"];
/// Prefixes of environment variables used by Airlock's own test suites.
const RESERVED_ENV_PREFIXES: &[&str] = &["AIRLOCK_TEST_"];

/// How a configuration key's environment value is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    Secret,
    /// Paths; in a variable, separated by `:` like `PATH`.
    Paths,
    /// Words; in a variable, separated by commas like `NO_PROXY`.
    List,
}

/// Every configuration key, its kind, and what a valid value looks like. The environment
/// variable for `a.b_c` is `AIRLOCK_A_B_C`.
const KEYS: &[(&str, Kind, &str)] = &[
    ("data_dir", Kind::Str, "a directory path, e.g. ./var"),
    (
        "server.listen",
        Kind::Str,
        "an address and port, e.g. 127.0.0.1:8080",
    ),
    (
        "server.public_url",
        Kind::Str,
        "an http(s) URL, e.g. https://airlock.example.com",
    ),
    (
        "server.max_connections",
        Kind::Int,
        "connections the server keeps open at once, 16 to 100000 (more are closed when accepted)",
    ),
    (
        "database.url",
        Kind::Str,
        "sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
    ),
    (
        "database.max_connections",
        Kind::Int,
        "a whole number from 1 to 1000",
    ),
    (
        "secrets.master_key",
        Kind::Secret,
        "32 random bytes in base64 (e.g. `openssl rand -base64 32`)",
    ),
    (
        "secrets.key_file",
        Kind::Str,
        "a file path, e.g. ./var/master.key",
    ),
    (
        "docker.host",
        Kind::Str,
        "unix:///var/run/docker.sock or tcp://HOST:PORT",
    ),
    (
        "docker.base_image",
        Kind::Str,
        "an image repository name, e.g. airlock/base",
    ),
    (
        "sandbox.network",
        Kind::Str,
        "a Docker network name of at most 15 characters, e.g. airlock0",
    ),
    (
        "sandbox.subnet",
        Kind::Str,
        "an IPv4 network for sandboxes, e.g. 10.203.0.0/24",
    ),
    (
        "sandbox.endpoint_port",
        Kind::Int,
        "a TCP port from 1 to 65535 (sandboxd connects to it on the sandbox network)",
    ),
    (
        "sandbox.gateway_port",
        Kind::Int,
        "a TCP port from 1 to 65535 (the gateway listens on it on the sandbox network)",
    ),
    (
        "sandbox.sandboxd",
        Kind::Str,
        "the path of the sandboxd binary [default: next to the airlock binary]",
    ),
    (
        "sandbox.extra_ca_files",
        Kind::Paths,
        "PEM files of CA certificates sandboxes trust besides Airlock's own (a company's TLS-inspecting proxy), as a list (`:`-separated in the variable)",
    ),
    (
        "gateway.mode",
        Kind::Str,
        "`embedded` (airlock up runs the gateway) or `separate` (airlock gateway runs it)",
    ),
    (
        "gateway.extra_ca_file",
        Kind::Str,
        "a PEM file of CA certificates trusted for upstreams besides the system's",
    ),
    (
        "gateway.upstream_proxy",
        Kind::Str,
        "an HTTP proxy the gateway's own connections go through, http://HOST:PORT (a company network without direct access)",
    ),
    (
        "gateway.no_proxy",
        Kind::List,
        "hosts the gateway reaches without gateway.upstream_proxy, exact or as a domain suffix (comma-separated in the variable) [default: localhost, 127.0.0.1, ::1]",
    ),
    (
        "gateway.session_token_budget",
        Kind::Int,
        "model tokens one session may use, 0 for no limit",
    ),
    (
        "gateway.human_daily_token_budget",
        Kind::Int,
        "model tokens one human's sessions may use per UTC day, 0 for no limit",
    ),
    (
        "gateway.audit_backlog",
        Kind::Int,
        "audit records that may wait to be written before egress is refused with 503, 0 for the default (50000)",
    ),
    (
        "gateway.client_http2",
        Kind::Bool,
        "true to offer HTTP/2 to sandboxed clients; off by default because libcurl before 8.2 (git, curl) can send upload data twice over HTTP/2",
    ),
    (
        "broker.max_sessions",
        Kind::Int,
        "how many sessions may run at once on this deployment, 1 to 10000",
    ),
    (
        "broker.max_sessions_per_human",
        Kind::Int,
        "how many sessions one human may have running at once, 1 to 10000",
    ),
    (
        "broker.default_profile",
        Kind::Str,
        "the profile used when a request names none, e.g. default",
    ),
    (
        "retention.delivery_days",
        Kind::Int,
        "days a handled delivery's key and verdict are kept (what recognises a replay), 8 to 3650",
    ),
    (
        "retention.delivery_payload_days",
        Kind::Int,
        "days a delivery that was acted on keeps its payload, 0 (dropped once handled) to retention.delivery_days",
    ),
    (
        "retention.ignored_payload_hours",
        Kind::Int,
        "hours a delivery that needed nothing keeps its payload, 0 (dropped at once) to 720",
    ),
    (
        "git.author_name",
        Kind::Str,
        "the name on Airlock's commits, e.g. Airlock",
    ),
    (
        "git.author_email",
        Kind::Str,
        "the email address on Airlock's commits, e.g. airlock@example.com",
    ),
    (
        "github.api_url",
        Kind::Str,
        "an http(s) URL, e.g. https://api.github.com",
    ),
    (
        "github.web_url",
        Kind::Str,
        "an http(s) URL that git clones from, e.g. https://github.com",
    ),
    (
        "github.git_upstream",
        Kind::Str,
        "an http(s) URL the gateway sends git traffic for github.web_url to instead (a mirror or internal address)",
    ),
    (
        "github.app_id",
        Kind::Int,
        "the numeric id of your GitHub App",
    ),
    (
        "github.app_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "github.token_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "github.webhook_secret_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "github.min_permission",
        Kind::Str,
        "the least permission a commenter needs on the repository: read, write or admin",
    ),
    (
        "github.create_humans",
        Kind::Bool,
        "true to create a human for a GitHub account on its first request, false to require a link",
    ),
    (
        "github.bot_login",
        Kind::Str,
        "the bot's GitHub login, e.g. airlock",
    ),
    (
        "slack.api_url",
        Kind::Str,
        "an http(s) URL, e.g. https://slack.com/api",
    ),
    (
        "slack.bot_token_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "slack.signing_secret_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "discord.api_url",
        Kind::Str,
        "an http(s) URL, e.g. https://discord.com/api/v10",
    ),
    (
        "discord.bot_token_credential",
        Kind::Str,
        "the name of a stored credential (airlock credential list)",
    ),
    (
        "discord.public_key",
        Kind::Str,
        "the application's Ed25519 public key in hex (64 characters)",
    ),
    (
        "discord.application_id",
        Kind::Str,
        "the application's numeric id",
    ),
];

fn env_name(key: &str) -> String {
    format!("AIRLOCK_{}", key.replace('.', "_").to_uppercase())
}

fn expected(key: &str) -> Option<&'static str> {
    KEYS.iter().find(|(k, _, _)| *k == key).map(|(_, _, e)| *e)
}

fn is_secret(key: &str) -> bool {
    KEYS.iter()
        .any(|(k, kind, _)| *k == key && *kind == Kind::Secret)
}

/// A configuration problem, displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key at fault (`server.listen`), or empty for a file-level problem.
    pub key: String,
    /// Where the value came from: a file path or an environment variable.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}: {}", self.origin, self.message)
        } else {
            write!(
                f,
                "config key `{}` (from {}): {}",
                self.key, self.origin, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A string that must never be printed: its `Debug` is redacted and it is skipped when the
/// configuration is shown.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Airlock keeps its files (database, key file, certificates).
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub secrets: SecretsConfig,
    pub docker: DockerConfig,
    pub sandbox: SandboxConfig,
    pub gateway: GatewayConfig,
    pub broker: BrokerConfig,
    pub retention: RetentionConfig,
    pub git: GitConfig,
    pub github: Option<GithubConfig>,
    pub slack: Option<SlackConfig>,
    pub discord: Option<DiscordConfig>,
    /// Model prices for the admin overview's cost estimate, by model name as the API
    /// reports it (`[prices."gpt-4.1"] input = 2.0, output = 8.0`, USD per million tokens).
    pub prices: BTreeMap<String, Price>,
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// The estimated cost of `input` and `output` tokens, in US dollars.
    pub fn cost(&self, input: i64, output: i64) -> f64 {
        (input as f64 * self.input + output as f64 * self.output) / 1_000_000.0
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./var"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            secrets: SecretsConfig::default(),
            docker: DockerConfig::default(),
            sandbox: SandboxConfig::default(),
            gateway: GatewayConfig::default(),
            broker: BrokerConfig::default(),
            retention: RetentionConfig::default(),
            git: GitConfig::default(),
            github: None,
            slack: None,
            discord: None,
            prices: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The address people and chat services use to reach this server; defaults to
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// Connections open at once (each also costs a file descriptor: see `LimitNOFILE` in
    /// the systemd unit).
    pub max_connections: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Defaults to `sqlite://<data_dir>/airlock.db`.
    pub url: Option<String>,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The master key itself (base64). When absent, the key file is used (and created).
    pub master_key: Option<SecretString>,
    /// Defaults to `<data_dir>/master.key`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    pub host: String,
    /// The repository of the sandbox base image; the tag is the hash of its recipe.
    pub base_image: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: "unix:///var/run/docker.sock".into(),
            base_image: "airlock/base".into(),
        }
    }
}

/// Where sandboxes live: an internal Docker network whose only reachable host address is the
/// bridge's own, with the sandbox endpoint and the gateway listening there (decision 0003).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub network: String,
    pub subnet: String,
    pub endpoint_port: u16,
    pub gateway_port: u16,
    pub sandboxd: Option<PathBuf>,
    /// CA certificates (PEM files) sandboxes trust besides the gateway's.
    pub extra_ca_files: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            network: "airlock0".into(),
            subnet: "10.203.0.0/24".into(),
            endpoint_port: 7480,
            gateway_port: 7481,
            sandboxd: None,
            extra_ca_files: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// The sandboxd binary: configured, or next to the running executable.
    pub fn sandboxd_path(&self) -> PathBuf {
        self.sandboxd.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("sandboxd")))
                .unwrap_or_else(|| PathBuf::from("sandboxd"))
        })
    }
}

/// The egress gateway (decision 0007). It listens on `sandbox.gateway_port` on the sandbox
/// network's bridge address.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub mode: GatewayMode,
    pub extra_ca_file: Option<PathBuf>,
    /// `http://HOST:PORT` the gateway's own connections go through.
    pub upstream_proxy: Option<String>,
    /// Hosts reached without the upstream proxy.
    pub no_proxy: Vec<String>,
    pub session_token_budget: u64,
    pub human_daily_token_budget: u64,
    pub audit_backlog: u64,
    pub client_http2: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            mode: GatewayMode::Embedded,
            extra_ca_file: None,
            upstream_proxy: None,
            no_proxy: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            session_token_budget: 0,
            human_daily_token_budget: 0,
            audit_backlog: 0,
            client_http2: false,
        }
    }
}

/// How many sessions run at once, and which profile a request without one gets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub max_sessions: u32,
    pub max_sessions_per_human: u32,
    pub default_profile: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 4,
            max_sessions_per_human: 2,
            default_profile: None,
        }
    }
}

/// How long what arrived from outside is kept (decision 0015). A delivery's key outlives
/// every replay window (GitHub comments older than a week are ignored; Slack and Discord
/// sign a 5-minute window), so a key is never dropped while a replay could still be accepted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub delivery_days: u32,
    pub delivery_payload_days: u32,
    pub ignored_payload_hours: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delivery_days: 30,
            delivery_payload_days: 7,
            ignored_payload_hours: 0,
        }
    }
}

/// Who Airlock's commits are by (the requester is named in a `Co-authored-by` trailer).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    pub author_name: String,
    pub author_email: String,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            author_name: "Airlock".into(),
            author_email: "airlock@users.noreply.github.com".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// `airlock up` runs the gateway.
    Embedded,
    /// `airlock gateway` runs it, as its own process.
    Separate,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Where repositories are cloned from (`<web_url>/OWNER/NAME.git`), as the sandbox sees it.
    #[serde(default = "default_github_web")]
    pub web_url: String,
    /// Where the gateway sends git traffic for `web_url` instead (a mirror, an internal address).
    #[serde(default)]
    pub git_upstream: Option<String>,
    pub app_id: Option<u64>,
    /// Credential holding the GitHub App's private key (PEM).
    pub app_credential: Option<String>,
    /// Credential holding a personal access token (small installs, instead of an App).
    pub token_credential: Option<String>,
    /// Credential holding the webhook secret; without it the server takes no GitHub
    /// webhooks (a CLI-only setup: sessions still clone, push and open pull requests).
    #[serde(default)]
    pub webhook_secret_credential: Option<String>,
    #[serde(default = "default_bot_login")]
    pub bot_login: String,
    /// The least permission on the repository a commenter needs (`read`, `write`, `admin`).
    #[serde(default = "default_min_permission")]
    pub min_permission: String,
    /// Create a human for a GitHub account on first use (otherwise it must be linked).
    #[serde(default)]
    pub create_humans: bool,
}

fn default_min_permission() -> String {
    "write".into()
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}
fn default_github_web() -> String {
    "https://github.com".into()
}
fn default_bot_login() -> String {
    "airlock".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(default = "default_slack_api")]
    pub api_url: String,
    pub bot_token_credential: String,
    pub signing_secret_credential: String,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    #[serde(default = "default_discord_api")]
    pub api_url: String,
    pub bot_token_credential: String,
    pub public_key: String,
    pub application_id: String,
}

fn default_discord_api() -> String {
    "https://discord.com/api/v10".into()
}

impl Config {
    /// Loads the configuration as `airlock` does: the file named by `path` (or, when `None`,
    /// `./airlock.toml` if it exists), then the `AIRLOCK_*` variables in `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => (Some(t), p.display().to_string()),
                Err(e) => {
                    return Err(ConfigError {
                        key: String::new(),
                        origin: p.display().to_string(),
                        message: format!("cannot read the file: {e}"),
                    })
                }
            },
            None => {
                let p = Path::new("airlock.toml");
                match std::fs::read_to_string(p) {
                    Ok(t) => (Some(t), p.display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
                    Err(e) => {
                        return Err(ConfigError {
                            key: String::new(),
                            origin: p.display().to_string(),
                            message: format!("cannot read the file: {e}"),
                        })
                    }
                }
            }
        };
        Self::from_parts(text.as_deref(), &origin, env)
    }

    /// Builds the configuration from file text (if any) and environment pairs.
    pub fn from_parts(
        file_text: Option<&str>,
        file_origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file_text {
            Some(text) => parse_toml(text, file_origin)?,
            None => toml::Table::new(),
        };
        // Where each leaf came from, for error messages.
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AIRLOCK_"))
            .collect();
        env.sort();
        for (name, value) in env {
            if RESERVED_ENV.contains(&name.as_str())
                || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                continue;
            }
            let Some((key, kind, hint)) = KEYS.iter().find(|(k, _, _)| env_name(k) == name) else {
                return Err(ConfigError {
                    key: String::new(),
                    origin: name.clone(),
                    message: "is not a known setting; see docs/configuration.md for the list"
                        .into(),
                });
            };
            let v = match kind {
                Kind::Str | Kind::Secret => toml::Value::String(value),
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| toml::Value::String(p.trim().to_string()))
                        .collect(),
                ),
                Kind::Paths => toml::Value::Array(
                    value
                        .split(':')
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| toml::Value::String(p.to_string()))
                        .collect(),
                ),
                Kind::Bool => match value.trim() {
                    "true" | "1" | "yes" => toml::Value::Boolean(true),
                    "false" | "0" | "no" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError {
                            key: key.to_string(),
                            origin: name,
                            message: format!("expected {hint}"),
                        })
                    }
                },
                Kind::Int => match value.trim().parse::<i64>() {
                    Ok(i) => toml::Value::Integer(i),
                    Err(_) => {
                        return Err(ConfigError {
                            key: key.to_string(),
                            origin: name,
                            message: format!("expected {hint}"),
                        })
                    }
                },
            };
            set_path(&mut table, key, v);
            origins.insert(key.to_string(), name);
        }
        let origin_of = |key: &str| -> String {
            origins.get(key).cloned().unwrap_or_else(|| {
                if file_origin.is_empty() {
                    "defaults".into()
                } else {
                    file_origin.to_string()
                }
            })
        };
        let value = toml::Value::Table(table);
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner().to_string();
            let message = match (expected(&key), is_secret(&key)) {
                (_, true) => "expected a string".to_string(),
                (Some(hint), false) => format!("{}; expected {hint}", first_line(&inner)),
                (None, false) => first_line(&inner).to_string(),
            };
            ConfigError {
                origin: origin_of(&key),
                key,
                message,
            }
        })?;
        config.validate().map_err(|(key, message)| ConfigError {
            origin: origin_of(key),
            key: key.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Semantic checks serde cannot express.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (model, p) in &self.prices {
            if !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0) {
                return Err((
                    "prices",
                    format!("the price of `{model}` must be two non-negative numbers (USD per million tokens)"),
                ));
            }
        }
        let want = |key: &'static str| (key, format!("expected {}", expected(key).unwrap_or("")));
        if self.data_dir.as_os_str().is_empty() {
            return Err(want("data_dir"));
        }
        if !(16..=100_000).contains(&self.server.max_connections) {
            return Err(want("server.max_connections"));
        }
        if let Some(url) = &self.server.public_url {
            if !is_http_url(url) {
                return Err(want("server.public_url"));
            }
        }
        if let Some(url) = &self.database.url {
            if DatabaseKind::of_url(url).is_none() {
                return Err(want("database.url"));
            }
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return Err(want("database.max_connections"));
        }
        if let Some(key) = &self.secrets.master_key {
            if crate::secrets::MasterKey::from_base64(key.expose()).is_err() {
                return Err(want("secrets.master_key"));
            }
        }
        let host = &self.docker.host;
        if !(host.starts_with("unix://") && host.len() > "unix://".len()
            || host.starts_with("tcp://") && host.len() > "tcp://".len()
            || is_http_url(host))
        {
            return Err(want("docker.host"));
        }
        if !is_image_repo(&self.docker.base_image) {
            return Err(want("docker.base_image"));
        }
        let sb = &self.sandbox;
        if sb.network.is_empty()
            || sb.network.len() > 15
            || !sb
                .network
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(want("sandbox.network"));
        }
        if host_address(&sb.subnet).is_none() {
            return Err(want("sandbox.subnet"));
        }
        if sb.endpoint_port == 0 {
            return Err(want("sandbox.endpoint_port"));
        }
        if sb.gateway_port == 0 || sb.gateway_port == sb.endpoint_port {
            return Err((
                "sandbox.gateway_port",
                "expected a TCP port from 1 to 65535, different from sandbox.endpoint_port".into(),
            ));
        }
        if let Some(p) = &self.gateway.upstream_proxy {
            let rest = p.strip_prefix("http://").unwrap_or("");
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
                return Err(want("gateway.upstream_proxy"));
            }
        }
        for path in &self.sandbox.extra_ca_files {
            let pem = std::fs::read_to_string(path).unwrap_or_default();
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err((
                    "sandbox.extra_ca_files",
                    format!(
                        "{} is not a readable PEM file of certificates",
                        path.display()
                    ),
                ));
            }
        }
        if let Some(path) = &self.gateway.extra_ca_file {
            if !path.is_file() {
                return Err((
                    "gateway.extra_ca_file",
                    format!(
                        "{} is not a file; expected {}",
                        path.display(),
                        expected("gateway.extra_ca_file").unwrap_or("")
                    ),
                ));
            }
        }
        let b = &self.broker;
        let r = &self.retention;
        if !(8..=3650).contains(&r.delivery_days) {
            return Err(want("retention.delivery_days"));
        }
        if r.delivery_payload_days > r.delivery_days {
            return Err(want("retention.delivery_payload_days"));
        }
        if r.ignored_payload_hours > 720 {
            return Err(want("retention.ignored_payload_hours"));
        }
        if !(1..=10_000).contains(&b.max_sessions) {
            return Err(want("broker.max_sessions"));
        }
        if !(1..=10_000).contains(&b.max_sessions_per_human) {
            return Err(want("broker.max_sessions_per_human"));
        }
        // Every running session's sandbox needs an address on the sandbox network.
        if let Some(room) = subnet_capacity(&self.sandbox.subnet) {
            if b.max_sessions > room {
                return Err((
                    "broker.max_sessions",
                    format!(
                        "is {} but sandbox.subnet {} has addresses for {room} sandboxes (warm \
                         pools take theirs too); widen the subnet (a /20 holds 4093) or lower \
                         broker.max_sessions",
                        b.max_sessions, self.sandbox.subnet
                    ),
                ));
            }
        }
        if let Some(p) = &b.default_profile {
            if !crate::domain::is_name(p) {
                return Err(want("broker.default_profile"));
            }
        }
        if self.git.author_name.trim().is_empty() || self.git.author_name.contains(['<', '>', '\n'])
        {
            return Err(want("git.author_name"));
        }
        if !crate::domain::is_email(&self.git.author_email) {
            return Err(want("git.author_email"));
        }
        if let Some(gh) = &self.github {
            if !is_http_url(&gh.api_url) {
                return Err(want("github.api_url"));
            }
            if !is_http_url(&gh.web_url)
                || gh.web_url.trim_end_matches('/').matches('/').count() > 2
            {
                return Err(want("github.web_url"));
            }
            if let Some(u) = &gh.git_upstream {
                if !is_http_url(u) {
                    return Err(want("github.git_upstream"));
                }
            }
            if !["read", "write", "admin"].contains(&gh.min_permission.as_str()) {
                return Err(want("github.min_permission"));
            }
            match (gh.app_id, &gh.app_credential, &gh.token_credential) {
                (Some(_), Some(_), _) | (None, None, Some(_)) => {}
                (Some(_), None, _) => {
                    return Err((
                        "github.app_credential",
                        "is required with github.app_id: name the credential that holds the App's private key".into(),
                    ))
                }
                (None, Some(_), _) => {
                    return Err(("github.app_id", "is required with github.app_credential".into()))
                }
                (None, None, None) => {
                    return Err((
                        "github.token_credential",
                        "set either github.app_id and github.app_credential (GitHub App) or github.token_credential (personal access token)".into(),
                    ))
                }
            }
        }
        if let Some(slack) = &self.slack {
            if !is_http_url(&slack.api_url) {
                return Err(want("slack.api_url"));
            }
        }
        if let Some(discord) = &self.discord {
            if !is_http_url(&discord.api_url) {
                return Err(want("discord.api_url"));
            }
            let k = &discord.public_key;
            if k.len() != 64 || !k.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(want("discord.public_key"));
            }
            if discord.application_id.is_empty()
                || !discord.application_id.chars().all(|c| c.is_ascii_digit())
            {
                return Err(want("discord.application_id"));
            }
        }
        Ok(())
    }

    /// The database URL in effect (the default is SQLite under `data_dir`).
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("airlock.db").display()),
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.server.listen),
        }
    }

    /// Names of the credentials the configured integrations expect to find in the store.
    pub fn referenced_credentials(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(gh) = &self.github {
            if let Some(c) = &gh.app_credential {
                out.push(("github.app_credential", c.clone()));
            }
            if let Some(c) = &gh.token_credential {
                out.push(("github.token_credential", c.clone()));
            }
            if let Some(c) = &gh.webhook_secret_credential {
                out.push(("github.webhook_secret_credential", c.clone()));
            }
        }
        if let Some(s) = &self.slack {
            out.push(("slack.bot_token_credential", s.bot_token_credential.clone()));
            out.push((
                "slack.signing_secret_credential",
                s.signing_secret_credential.clone(),
            ));
        }
        if let Some(d) = &self.discord {
            out.push((
                "discord.bot_token_credential",
                d.bot_token_credential.clone(),
            ));
        }
        out
    }
}

/// The two supported database engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of_url(url: &str) -> Option<DatabaseKind> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            (!rest.trim_start_matches('/').is_empty() || rest.contains(":memory:"))
                .then_some(DatabaseKind::Sqlite)
        } else if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            (!rest.is_empty()).then_some(DatabaseKind::Postgres)
        } else {
            None
        }
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

fn is_image_repo(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.contains(':')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e.span().map(|span| line_of(text, span.start));
        let message = match line {
            Some(l) => format!("line {l}: {}", first_line(e.message())),
            None => first_line(e.message()).to_string(),
        };
        ConfigError {
            key: String::new(),
            origin: origin.to_string(),
            message,
        }
    })
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut cur = table;
    for part in parts {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => unreachable!("replaced by a table above"),
        };
    }
    cur.insert(last.to_string(), value);
}

/// The environment variable that sets `key`, for documentation and error messages.
pub fn env_var_for(key: &str) -> Option<String> {
    KEYS.iter()
        .find(|(k, _, _)| *k == key)
        .map(|(k, _, _)| env_name(k))
}

/// All configuration keys with their environment variables and expected values.
pub fn documented_keys() -> Vec<(&'static str, String, &'static str)> {
    KEYS.iter().map(|(k, _, e)| (*k, env_name(k), *e)).collect()
}

/// The `.1` of an IPv4 subnet such as `10.203.0.0/24`.
pub fn host_address(subnet: &str) -> Option<Ipv4Addr> {
    let (net, bits) = subnet.split_once('/')?;
    let bits: u8 = bits.parse().ok()?;
    let net: Ipv4Addr = net.parse().ok()?;
    if !(8..=29).contains(&bits) {
        return None;
    }
    let n = u32::from(net);
    let mask = u32::MAX << (32 - bits);
    if n & !mask != 0 {
        return None;
    }
    Some(Ipv4Addr::from(n + 1))
}

/// Whether two IPv4 networks (`10.203.0.0/24`) share any address; `false` when either is
/// not an IPv4 network (an IPv6 one cannot clash with the sandbox subnet).
pub fn subnets_overlap(a: &str, b: &str) -> bool {
    let range = |s: &str| -> Option<(u32, u32)> {
        let (net, bits) = s.split_once('/')?;
        let bits: u32 = bits.parse().ok()?;
        let net: Ipv4Addr = net.parse().ok()?;
        if bits > 32 {
            return None;
        }
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        let start = u32::from(net) & mask;
        Some((start, start | !mask))
    };
    match (range(a), range(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
        _ => false,
    }
}

/// How many sandboxes a subnet can address: all of it but the network and broadcast
/// addresses and the bridge's own (`None` for a subnet [`host_address`] refuses).
pub fn subnet_capacity(subnet: &str) -> Option<u32> {
    host_address(subnet)?;
    let bits: u32 = subnet.split_once('/')?.1.parse().ok()?;
    Some((1u32 << (32 - bits)) - 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subnets_overlap_when_they_share_an_address() {
        for (a, b, overlap) in [
            ("10.203.0.0/24", "10.203.0.0/24", true),
            ("10.203.0.0/24", "10.203.0.128/25", true),
            ("10.203.0.0/24", "10.0.0.0/8", true),
            ("10.203.0.0/24", "10.203.1.0/24", false),
            ("172.17.0.0/16", "10.203.0.0/24", false),
            ("10.203.0.0/24", "0.0.0.0/0", true),
            ("10.203.0.0/24", "fd00::/64", false),
            ("10.203.0.0/24", "nonsense", false),
        ] {
            assert_eq!(subnets_overlap(a, b), overlap, "{a} {b}");
            assert_eq!(subnets_overlap(b, a), overlap, "{b} {a}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(file: Option<&str>, pairs: &[(&str, &str)]) -> String {
        Config::from_parts(file, "airlock.toml", env(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_token_only_github_setup_needs_no_webhook_secret() {
        let c = Config::from_parts(
            Some("[github]\ntoken_credential = \"github-token\"\n"),
            "airlock.toml",
            env(&[]),
        )
        .unwrap();
        let gh = c.github.as_ref().unwrap();
        assert_eq!(gh.webhook_secret_credential, None);
        assert_eq!(
            c.referenced_credentials(),
            [("github.token_credential", "github-token".to_string())]
        );
    }

    #[test]
    fn no_file_and_no_env_gives_the_documented_defaults() {
        let c = Config::from_parts(None, "", env(&[])).unwrap();
        assert_eq!(c.database_url(), "sqlite://./var/airlock.db");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.docker.host, "unix:///var/run/docker.sock");
        assert_eq!(c.key_file(), PathBuf::from("./var/master.key"));
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn environment_overrides_the_file_key_by_key() {
        let file = "[server]\nlisten = \"127.0.0.1:9000\"\n[database]\nmax_connections = 4\n";
        let c = Config::from_parts(
            Some(file),
            "airlock.toml",
            env(&[
                ("AIRLOCK_DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
                ("AIRLOCK_DATABASE_MAX_CONNECTIONS", "7"),
                ("AIRLOCK_CONFIG", "ignored.toml"),
                ("AIRLOCK_TEST_POSTGRES_URL", "ignored"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.database_url(), "postgres://u:p@127.0.0.1/db");
        assert_eq!(c.database.max_connections, 7);
    }

    #[test]
    fn bad_values_name_the_key_the_origin_and_what_is_expected() {
        // (airlock.toml, environment, the one line expected)
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                Some("[server]\nlisten = \"localhost\"\n"),
                &[],
                "config key `server.listen` (from airlock.toml): invalid socket address syntax; expected an address and port, e.g. 127.0.0.1:8080",
            ),
            (
                None,
                &[("AIRLOCK_SERVER_LISTEN", "nope")],
                "config key `server.listen` (from AIRLOCK_SERVER_LISTEN): invalid socket address syntax; expected an address and port, e.g. 127.0.0.1:8080",
            ),
            (
                None,
                &[("AIRLOCK_DATABASE_MAX_CONNECTIONS", "many")],
                "config key `database.max_connections` (from AIRLOCK_DATABASE_MAX_CONNECTIONS): expected a whole number from 1 to 1000",
            ),
            (
                None,
                &[("AIRLOCK_DATABASE_MAX_CONNECTIONS", "0")],
                "config key `database.max_connections` (from AIRLOCK_DATABASE_MAX_CONNECTIONS): expected a whole number from 1 to 1000",
            ),
            (
                Some("[database]\nurl = \"mysql://x\"\n"),
                &[],
                "config key `database.url` (from airlock.toml): expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
            ),
            (
                Some("[server]\nlisten = \"127.0.0.1:1\"\ncolour = \"blue\"\n"),
                &[],
                "config key `server.colour` (from airlock.toml): unknown field `colour`, expected one of `listen`, `public_url`, `max_connections`",
            ),
            (
                Some("[retention]\ndelivery_days = 3\n"),
                &[],
                "config key `retention.delivery_days` (from airlock.toml): expected days a handled delivery's key and verdict are kept (what recognises a replay), 8 to 3650",
            ),
            (
                None,
                &[("AIRLOCK_RETENTION_DELIVERY_PAYLOAD_DAYS", "60")],
                "config key `retention.delivery_payload_days` (from AIRLOCK_RETENTION_DELIVERY_PAYLOAD_DAYS): expected days a delivery that was acted on keeps its payload, 0 (dropped once handled) to retention.delivery_days",
            ),
            (
                Some("[server\nlisten = 1"),
                &[],
                "config: airlock.toml: line 1: invalid table header",
            ),
            (
                None,
                &[("AIRLOCK_SERVR_LISTEN", "127.0.0.1:1")],
                "config: AIRLOCK_SERVR_LISTEN: is not a known setting; see docs/configuration.md for the list",
            ),
            (
                Some("[github]\nwebhook_secret_credential = \"gh-hook\"\n"),
                &[],
                "config key `github.token_credential` (from airlock.toml): set either github.app_id and github.app_credential (GitHub App) or github.token_credential (personal access token)",
            ),
            (
                Some("[broker]\nmax_sessions = 300\n[sandbox]\nsubnet = \"10.9.0.0/24\"\n"),
                &[],
                "config key `broker.max_sessions` (from airlock.toml): is 300 but sandbox.subnet 10.9.0.0/24 has addresses for 253 sandboxes (warm pools take theirs too); widen the subnet (a /20 holds 4093) or lower broker.max_sessions",
            ),
            (
                Some("[docker]\nhost = \"/var/run/docker.sock\"\n"),
                &[],
                "config key `docker.host` (from airlock.toml): expected unix:///var/run/docker.sock or tcp://HOST:PORT",
            ),
        ];
        for (file, pairs, want) in cases {
            assert_eq!(&err(*file, pairs), want, "file={file:?} env={pairs:?}");
        }
    }

    #[test]
    fn a_bad_master_key_is_reported_without_echoing_it() {
        let msg = err(
            None,
            &[("AIRLOCK_SECRETS_MASTER_KEY", "hunter2-not-base64")],
        );
        assert!(msg.starts_with("config key `secrets.master_key` (from AIRLOCK_SECRETS_MASTER_KEY): expected 32 random bytes"), "{msg}");
        assert!(!msg.contains("hunter2"));
        let msg = err(Some("[secrets]\nmaster_key = 42\n"), &[]);
        assert!(!msg.contains("42"), "{msg}");
    }

    #[test]
    fn the_master_key_never_appears_when_the_config_is_shown() {
        let key = crate::secrets::MasterKey::generate().to_base64();
        let c = Config::from_parts(None, "", env(&[("AIRLOCK_SECRETS_MASTER_KEY", &key)])).unwrap();
        assert!(!format!("{c:?}").contains(&key));
        assert!(!toml::to_string(&c).unwrap().contains(&key));
    }

    #[test]
    fn every_key_has_a_distinct_environment_variable_and_is_accepted() {
        let mut names: Vec<String> = KEYS.iter().map(|(k, _, _)| env_name(k)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        // A file that sets every key is accepted: the list matches the struct.
        let key = crate::secrets::MasterKey::generate().to_base64();
        let ca = tempfile::NamedTempFile::new().unwrap();
        let file = format!(
            r#"data_dir = "/srv/airlock"
[server]
listen = "0.0.0.0:80"
public_url = "https://airlock.example.com"
[database]
url = "postgres://a:b@db/airlock"
max_connections = 20
[secrets]
master_key = "{key}"
key_file = "/srv/key"
[docker]
host = "tcp://127.0.0.1:2375"
base_image = "registry.local/airlock/base"
[gateway]
extra_ca_file = "{ca}"
upstream_proxy = "http://proxy.corp:3128"
[broker]
max_sessions = 8
max_sessions_per_human = 3
default_profile = "default"
[git]
author_name = "Airlock Bot"
author_email = "bot@example.com"
[github]
api_url = "https://ghe.example.com/api/v3"
web_url = "https://ghe.example.com"
git_upstream = "https://git-mirror.internal"
app_id = 12
app_credential = "gh-app"
token_credential = "gh-pat"
webhook_secret_credential = "gh-hook"
bot_login = "airlock-bot"
min_permission = "admin"
create_humans = true
[sandbox]
sandboxd = "/opt/airlock/sandboxd"
[slack]
api_url = "https://slack.example.com/api"
bot_token_credential = "slack-bot"
signing_secret_credential = "slack-signing"
[discord]
api_url = "https://discord.example.com/api/v10"
bot_token_credential = "discord-bot"
public_key = "{pk}"
application_id = "1234"
"#,
            pk = "ab".repeat(32),
            ca = ca.path().display(),
        );
        let c = Config::from_parts(Some(&file), "airlock.toml", env(&[])).unwrap();
        let shown = toml::Value::try_from(&c).unwrap();
        let mut leaves = Vec::new();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&p, v, out);
                    }
                }
                _ => out.push(prefix.to_string()),
            }
        }
        walk("", &shown, &mut leaves);
        leaves.sort();
        let mut keys: Vec<String> = KEYS.iter().map(|(k, _, _)| k.to_string()).collect();
        keys.sort();
        assert_eq!(leaves, keys);
    }

    proptest! {
        #[test]
        fn any_file_text_gives_a_config_or_one_line_error(text in "\\PC{0,200}") {
            if let Err(e) = Config::from_parts(Some(&text), "airlock.toml", Vec::new()) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }

        #[test]
        fn any_env_value_gives_a_config_or_one_line_error(
            idx in 0..KEYS.len(), value in "\\PC{0,80}"
        ) {
            let name = env_name(KEYS[idx].0);
            if let Err(e) = Config::from_parts(None, "", vec![(name, value)]) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
