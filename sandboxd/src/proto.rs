//! The protocol between sandboxd and the server's sandbox endpoint: JSON text frames over one
//! WebSocket that sandboxd opens (the sandbox dials out; nothing dials in).
//!
//! Connecting: `GET /sandbox/v1/connect` with `Authorization: Bearer <token>` and
//! `X-Airlock-Sandbox: <sandbox id>`. The first connection presents the one-time bootstrap
//! token (`alk_boot_…`, from [`BOOT_FILE`]); every connection is answered with
//! [`ToSandbox::Token`], a new token (`alk_sbx_…`) bound to this sandbox for the next
//! reconnect, and the one presented stops working. While a connection is live, no other may
//! open for the same sandbox. sandboxd is not dumpable, so the agent (same user) cannot read
//! its memory or environment.
//!
//! Durability: everything a command produces ([`FromSandbox::Output`], [`FromSandbox::Exit`],
//! [`FromSandbox::Failed`]) carries a sequence number and stays in sandboxd's outbox until the
//! server acknowledges it ([`ToSandbox::Ack`]) after storing it. After a reconnect the server
//! says which number it has ([`ToSandbox::Resume`]) and sandboxd sends the rest again, so a
//! server restart loses no output and commands keep running meanwhile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket path on the sandbox endpoint.
pub const CONNECT_PATH: &str = "/sandbox/v1/connect";
/// The header naming the sandbox a token is presented for.
pub const SANDBOX_HEADER: &str = "x-airlock-sandbox";
/// Where the deployment CA certificate is mounted (read-only) when there is one.
pub const CA_MOUNT: &str = "/etc/airlock/ca.pem";
/// The base image's preload that makes Node's `fetch` honour the proxy variables.
pub const NODE_PROXY_PRELOAD: &str = "/usr/local/lib/airlock/node-proxy.cjs";
/// Where the sandboxd binary is mounted (read-only).
pub const SANDBOXD_MOUNT: &str = "/opt/airlock/sandboxd";
/// The agent's working directory.
pub const WORKSPACE: &str = "/workspace";
/// Largest file `ReadFile` returns.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Where the runtime puts sandboxd's start-up settings ([`Boot`]) before the sandbox starts:
/// a file only sandboxd's user can read, which sandboxd removes once read. Nothing of it is
/// in the container's configuration, so no snapshot committed from the sandbox carries it.
pub const BOOT_DIR: &str = "/run/airlock-boot";
pub const BOOT_FILE: &str = "/run/airlock-boot/sandboxd.json";

/// sandboxd's start-up settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// `ws://<bridge address>:<port>`.
    pub endpoint: String,
    pub sandbox: String,
    /// The one-time bootstrap token (`alk_boot_…`).
    pub token: String,
}

impl std::fmt::Debug for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boot")
            .field("endpoint", &self.endpoint)
            .field("sandbox", &self.sandbox)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Messages from the server to sandboxd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToSandbox {
    /// The sandbox token that replaces the bootstrap token (sent once, after the exchange).
    Token {
        token: String,
    },
    /// Sent after every connect: the server has stored everything up to `acked`.
    Resume {
        acked: u64,
    },
    /// Binds a (possibly pre-started) sandbox to a session: the proxy and environment every
    /// process started from now on gets.
    Bind {
        session: String,
        /// `http://egress-token@gateway:port`; sandboxd sets `HTTP(S)_PROXY` from it.
        proxy: Option<String>,
        env: BTreeMap<String, String>,
    },
    /// Starts a process. `argv[0]` is looked up on `PATH`.
    Exec {
        id: u64,
        argv: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Run on a pseudo-terminal of this size (stdout and stderr arrive merged).
        #[serde(default)]
        pty: Option<PtySize>,
        /// Bytes for stdin (base64); stdin is closed after them unless `keep_stdin`.
        #[serde(default)]
        stdin: Option<String>,
        #[serde(default)]
        keep_stdin: bool,
        /// Keep its output until the server acknowledges it, and replay it after a reconnect
        /// (the agent's run). Other processes' messages carry `seq: 0` and are not kept.
        #[serde(default)]
        durable: bool,
    },
    /// More stdin for a running process (base64), or its end.
    Stdin {
        id: u64,
        data: String,
        #[serde(default)]
        eof: bool,
    },
    Resize {
        id: u64,
        rows: u16,
        cols: u16,
    },
    /// Stops a process and everything it started (SIGTERM, then SIGKILL after 2 s).
    Cancel {
        id: u64,
    },
    ReadFile {
        id: u64,
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    WriteFile {
        id: u64,
        path: String,
        /// base64
        data: String,
        #[serde(default)]
        mode: Option<u32>,
    },
    Ack {
        seq: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

/// Messages from sandboxd to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromSandbox {
    /// First message of every connection.
    Hello {
        version: u32,
        sandbox: String,
        /// Processes still running (ids), e.g. after a reconnect.
        running: Vec<u64>,
    },
    /// Output of a process (base64).
    Output {
        seq: u64,
        id: u64,
        stream: Stream,
        data: String,
    },
    /// A process ended. `code` is its exit status, `signal` the signal that killed it.
    Exit {
        seq: u64,
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
        /// The kernel's OOM killer ran in this sandbox while the process lived.
        oom_killed: bool,
        duration_ms: u64,
    },
    /// A process could not be started.
    Failed { seq: u64, id: u64, message: String },
    /// The contents of a file (base64).
    File {
        id: u64,
        data: String,
        size: u64,
        truncated: bool,
    },
    /// A request without output (write, stdin, resize, cancel) succeeded.
    Done { id: u64 },
    /// A request failed.
    Error { id: u64, message: String },
    /// Every few seconds: what is running and when output was last seen.
    Heartbeat { running: Vec<u64>, idle_ms: u64 },
}

impl FromSandbox {
    /// The sequence number of a durable message.
    pub fn seq(&self) -> Option<u64> {
        match self {
            FromSandbox::Output { seq, .. }
            | FromSandbox::Exit { seq, .. }
            | FromSandbox::Failed { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// Environment of `sandboxd agent`: the run (an [`AgentRun`] as JSON) and the prompt.
pub const ENV_AGENT: &str = "AIRLOCK_AGENT";
pub const ENV_PROMPT: &str = "AIRLOCK_PROMPT";
/// Where sessions clone their repository; the agent works there.
pub const REPO_DIR: &str = "/workspace/repo";

/// What `sandboxd agent` runs: Airlock's own tool-calling loop, or an external coding CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgentRun {
    Builtin {
        model: String,
        /// The OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
        base_url: String,
        max_steps: u32,
        /// Model tokens (input and output) the run may use; 0 for no limit.
        max_tokens: u64,
        /// The system prompt (from `templates/prompts/`).
        system: String,
    },
    Codex {
        model: Option<String>,
        args: Vec<String>,
    },
    ClaudeCode {
        model: Option<String>,
        args: Vec<String>,
    },
    Opencode {
        model: Option<String>,
        args: Vec<String>,
    },
    Aider {
        model: Option<String>,
        args: Vec<String>,
    },
}

/// One line of `sandboxd agent`'s stdout: a session event, normalised from whatever the
/// agent speaks. `kind` is the session event kind it becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent said something (markdown).
    Message { text: String },
    /// The agent used a tool; `input` is bounded.
    ToolCall {
        tool: String,
        input: serde_json::Value,
    },
    /// Output of a command the agent ran.
    CommandOutput { text: String },
    /// A file the agent created, changed or removed.
    FileChange { path: String, change: String },
    /// The end of the run: the agent's final answer, or why it stopped.
    Summary { text: String, ok: bool },
}

/// The system trust store most tools read (sandboxd adds the deployment CA to it).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment every process in a sandbox starts from (sandboxd's processes and snapshot
/// setup steps alike): a plain `PATH` and locale, the trust-store variables that tools read,
/// the deployment CA for Node when it is mounted, and the gateway as proxy when there is one
/// (upper and lower case: curl reads only the lower-case `http_proxy`). `node_preload`: the
/// image has [`NODE_PROXY_PRELOAD`], so Node's `fetch` is pointed at the proxy too.
pub fn tool_env(
    proxy: Option<&str>,
    ca_mounted: bool,
    node_preload: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("LANG", "C.UTF-8");
    for k in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CURL_CA_BUNDLE",
    ] {
        set(k, SYSTEM_BUNDLE);
    }
    if ca_mounted {
        set("NODE_EXTRA_CA_CERTS", CA_MOUNT);
    }
    if let Some(proxy) = proxy {
        for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
            set(k, proxy);
        }
        set("NO_PROXY", "localhost,127.0.0.1,::1");
        set("no_proxy", "localhost,127.0.0.1,::1");
        if node_preload {
            set("NODE_OPTIONS", &format!("--require={NODE_PROXY_PRELOAD}"));
        }
    }
    env
}

/// Describes an exit for people: "exited with status 2", "was killed by signal 9 (SIGKILL)".
pub fn describe_exit(code: Option<i32>, signal: Option<i32>, oom_killed: bool) -> String {
    if oom_killed && signal == Some(9) {
        return "was killed because the sandbox ran out of memory (raise limits.memory_mb in the profile)".into();
    }
    match (code, signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => {
            let name = match s {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {s}{name}")
        }
        (None, None) => "ended without a status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let m = ToSandbox::Exec {
            id: 7,
            argv: vec!["bash".into(), "-c".into(), "echo hi".into()],
            cwd: None,
            env: BTreeMap::new(),
            pty: Some(PtySize { rows: 24, cols: 80 }),
            stdin: None,
            keep_stdin: false,
            durable: true,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"type":"exec","id":7"#), "{text}");
        assert_eq!(serde_json::from_str::<ToSandbox>(&text).unwrap(), m);
        let e: FromSandbox = serde_json::from_str(
            r#"{"type":"exit","seq":3,"id":7,"code":null,"signal":9,"oom_killed":true,"duration_ms":5}"#,
        )
        .unwrap();
        assert_eq!(e.seq(), Some(3));
    }

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(describe_exit(Some(2), None, false), "exited with status 2");
        assert_eq!(
            describe_exit(None, Some(9), false),
            "was killed by signal 9 (SIGKILL)"
        );
        assert!(describe_exit(None, Some(9), true).contains("ran out of memory"));
    }
}
