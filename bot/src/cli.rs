//! The command line, parsed with clap's derive API. Help text lives on the types, so it cannot
//! drift from what the commands accept.

use std::path::PathBuf;

use airlock_core::domain::{CredentialKind, Provider, Role, SessionState, Surface};
use airlock_core::ids::{IdentityId, SessionId};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Run autonomous coding agents from chat and GitHub, in sandboxes that hold no credentials"
)]
pub struct Cli {
    /// Configuration file [default: ./airlock.toml if present]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "AIRLOCK_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Act for this human (id or email): `run` asks as them, and every command's audit
    /// rows name them next to the operating-system account
    #[arg(long = "as", global = true, value_name = "HUMAN")]
    pub as_human: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (migrates the database first)
    Up,
    /// Remove what `up` set up on the Docker engine (sandboxes, their network and firewall
    /// chain), keeping the data: the database, keys, logs and images. Refused while the
    /// server runs or a session is unfinished.
    Down,
    /// Run only the egress gateway (for gateway.mode = "separate")
    Gateway,
    /// Apply pending database migrations
    Migrate,
    /// Check configuration, database, Docker, the base image, ports and integrations
    Doctor,
    /// People who may use Airlock
    #[command(subcommand)]
    Human(HumanCmd),
    /// Chat and GitHub accounts linked to humans
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Sandbox profiles (immutable, numbered versions)
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Secrets the gateway injects; values can be set, never read back
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Agent sessions
    #[command(subcommand)]
    Session(SessionCmd),
    /// The hash-chained audit log
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The sandbox base image
    #[command(subcommand)]
    Image(ImageCmd),
    /// Ask an agent to work on a repository and follow the session here
    Run(RunArgs),
    /// Prepared profile snapshots and kept session snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Sandboxes that exist now
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Webhooks, schedules and GitHub events that start sessions
    #[command(subcommand)]
    Trigger(TriggerCmd),
    /// Repositories without GitHub: local ones, and git remotes worked on push-only
    #[command(subcommand)]
    Repo(RepoCmd),
}

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Register a repository: a local git repository (PATH; the server serves it to
    /// sandboxes through the gateway and sessions push their branch back into it), or a git
    /// remote that is not GitHub (https://HOST/PATH; the branch is pushed, no pull request)
    Add(RepoAddArgs),
    /// List registered repositories
    List,
    /// Forget a registration (the repository itself is not touched)
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct RepoAddArgs {
    /// The name sessions use (`airlock run --repo NAME`): letters, digits, `-`, `_`, `.`,
    /// optionally OWNER/NAME
    pub name: String,
    /// A local repository's path, or a remote's https://HOST/PATH URL
    pub location: String,
    /// For a remote: the credential the gateway sends (HTTP basic), e.g. a Gitea or GitLab
    /// token stored with `airlock credential set`
    #[arg(long)]
    pub credential: Option<String>,
    /// For a remote: the user name sent with the credential [default: airlock]
    #[arg(long, requires = "credential")]
    pub username: Option<String>,
    /// For a remote: where the gateway sends its traffic instead (a mirror, an internal
    /// address), as http(s)://HOST[:PORT]
    #[arg(long)]
    pub upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TriggerCmd {
    /// Add a trigger
    Add(Box<TriggerAddArgs>),
    /// List triggers
    List,
    /// Show a trigger
    Show { name: String },
    /// Let a trigger fire again
    Enable { name: String },
    /// Stop a trigger from firing
    Disable { name: String },
    /// Delete a trigger
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct TriggerAddArgs {
    /// The trigger's name (lower-case letters, digits, dashes)
    pub name: String,
    /// `webhook` (POST /hooks/<id>), `schedule` (cron) or `github` (an event)
    #[arg(long, value_parser = parse_enum::<airlock_core::domain::TriggerKind>)]
    pub kind: airlock_core::domain::TriggerKind,
    #[arg(long)]
    pub profile: String,
    /// The repository its sessions work on, OWNER/NAME
    #[arg(long)]
    pub repo: String,
    /// The human its sessions are attributed to (id or email) [default: the only admin]
    #[arg(long)]
    pub owner: Option<String>,
    /// Where the sessions report: github:OWNER/NAME#N, slack:TEAM/CHANNEL,
    /// discord:GUILD/CHANNEL, origin (the issue or pull request of a GitHub event), none
    #[arg(long, default_value = "none")]
    pub reply: String,
    /// The prompt template (fields of the event as {{ field.path }})
    #[arg(long, conflicts_with_all = ["prompt_file", "template"])]
    pub prompt: Option<String>,
    /// The prompt template, from a file
    #[arg(long, conflicts_with = "template")]
    pub prompt_file: Option<PathBuf>,
    /// A template of templates/prompts/ by name, e.g. review-pull-request
    #[arg(long)]
    pub template: Option<String>,
    /// Webhook: the credential holding the HMAC secret (airlock credential set NAME --kind webhook-secret)
    #[arg(long)]
    pub secret_credential: Option<String>,
    /// Schedule: a cron expression, e.g. "0 9 * * MON"
    #[arg(long)]
    pub cron: Option<String>,
    /// Schedule: the time zone of the cron expression
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// GitHub: issues.labeled, issues.opened or pull_request.opened
    #[arg(long)]
    pub event: Option<String>,
    /// GitHub issues.labeled: the label [default: airlock]
    #[arg(long)]
    pub label: Option<String>,
    /// GitHub pull_request.opened: only pull requests into this branch
    #[arg(long)]
    pub base: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The repository: OWNER/NAME on GitHub, a name registered with `airlock repo add`, or
    /// the path of a local git repository (`./app`, registered under its directory's name)
    #[arg(long, required_unless_present = "session")]
    pub repo: Option<String>,
    /// The profile [default: the only profile, if there is one]
    #[arg(long)]
    pub profile: Option<String>,
    /// Continue an ended session with a follow-up
    #[arg(long, conflicts_with_all = ["repo", "profile"])]
    pub session: Option<SessionId>,
    /// Queue the session and return without following it
    #[arg(long)]
    pub detach: bool,
    /// What the agent should do
    #[arg(required = true, num_args = 1.., value_name = "PROMPT")]
    pub prompt: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Run a profile's setup steps in a build sandbox and commit the result
    Build {
        /// Profile name
        profile: String,
    },
    /// List snapshots, newest first
    List,
    /// Remove outdated profile snapshots and old session snapshots
    Prune {
        /// Profile snapshots to keep per profile
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
        keep: u32,
        /// Remove session snapshots older than this many days
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=3650))]
        session_days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// List the sandboxes this deployment has, from the database and the runtime
    List,
}

#[derive(Debug, Subcommand)]
pub enum HumanCmd {
    /// Add a human
    Add {
        /// Display name, e.g. "Ada Lovelace"
        #[arg(long)]
        name: String,
        /// Email address, used in commit trailers
        #[arg(long)]
        email: String,
        /// Role [default: member]
        #[arg(long, value_parser = parse_enum::<Role>, conflicts_with = "admin")]
        role: Option<Role>,
        /// Shorthand for --role admin
        #[arg(long)]
        admin: bool,
        /// Read a password for the admin page from stdin (at least 12 characters)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a human's password for the admin page, read from stdin
    Password {
        /// The human (id or email)
        human: String,
    },
    /// List humans
    List,
    /// Give a human another role
    Role {
        /// The human (id or email)
        human: String,
        #[arg(value_parser = parse_enum::<Role>)]
        role: Role,
    },
    /// Disable a human: they start no session and sign in nowhere (their history stays)
    Disable {
        /// The human (id or email)
        human: String,
    },
    /// Enable a disabled human again
    Enable {
        /// The human (id or email)
        human: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// Link an account to a human
    Link {
        /// The human: id (hum_…) or email
        #[arg(long)]
        human: String,
        #[arg(long, value_parser = parse_enum::<Provider>)]
        provider: Provider,
        /// Slack team id, Discord guild id, or GitHub host [github: the host of github.web_url]
        #[arg(long)]
        workspace: Option<String>,
        /// The provider's user id (Slack U…, GitHub numeric id, Discord snowflake)
        #[arg(long)]
        external_id: String,
        /// The account's handle, for display
        #[arg(long)]
        handle: Option<String>,
    },
    /// Remove a link
    Unlink {
        /// Identity id (idn_…), from `airlock identity list`
        id: IdentityId,
    },
    /// List linked accounts
    List {
        /// Only this human's (id or email)
        #[arg(long)]
        human: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Create a profile or add a version from a TOML file
    Apply {
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// List profiles
    List,
    /// Show a profile version
    Show {
        /// Profile name
        name: String,
        /// Version [default: the current one]
        #[arg(long)]
        version: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Store or rotate a credential; the value is read from stdin or --from-file
    Set {
        name: String,
        #[arg(long, value_parser = parse_enum::<CredentialKind>, default_value = "generic")]
        kind: CredentialKind,
        /// Read the value from this file instead of stdin
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List credentials (names and kinds; never values)
    List,
    /// Delete a credential
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// List sessions, newest first
    List(SessionListArgs),
    /// Show a session and its events
    Show { id: SessionId },
    /// Print a session's full output, as kept by a profile with `limits.output_log = true`
    Log { id: SessionId },
    /// Re-attach to a session: its latest events, then the rest as they come, until it ends
    /// (exit 0 only if it succeeded)
    Follow {
        id: SessionId,
        /// How many of the events so far to print first
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(0..=100000))]
        last: i64,
    },
    /// Cancel a session
    Cancel {
        id: SessionId,
        /// Why, shown to the requester
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SessionListArgs {
    #[arg(long, value_parser = parse_enum::<SessionState>)]
    pub state: Option<SessionState>,
    /// Requester (id or email)
    #[arg(long)]
    pub human: Option<String>,
    #[arg(long, value_parser = parse_enum::<Surface>)]
    pub surface: Option<Surface>,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10000))]
    pub limit: i64,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The newest entries
    Tail {
        #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100000))]
        lines: i64,
    },
    /// Recompute the hash chain; exits non-zero if any row was edited or removed
    Verify,
    /// Write every entry as JSON lines, oldest first
    Export {
        /// File to write [default: stdout]
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only entries written at or after this time (2026-12-01 or RFC 3339)
        #[arg(long, value_name = "TIME", value_parser = airlock_core::timefmt::parse_time)]
        since: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build the sandbox base image unless the current recipe's image exists
    Build,
}

fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks names, flags and defaults only when asked (or on first use in debug).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
