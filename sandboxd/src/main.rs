//! sandboxd: the daemon inside each sandbox. It dials out to the server's sandbox endpoint
//! with a one-time bootstrap token (exchanged at once for a token bound to this sandbox),
//! then runs the processes the server asks for, on pipes or a PTY, reads and writes files,
//! and streams output back. It never holds a credential: every request out of the sandbox
//! goes through the gateway, whose address it puts in each process's proxy variables.
//!
//! `sandboxd --hold` only installs the deployment CA and waits; build sandboxes use it.
//! `sandboxd agent` runs a session's agent (see `agent/`).

mod agent;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_sandboxd::outbox::Outbox;
use airlock_sandboxd::proto::{
    tool_env, Boot, FromSandbox, PtySize, Stream, ToSandbox, BOOT_FILE, CA_MOUNT, CONNECT_PATH,
    MAX_READ_BYTES, NODE_PROXY_PRELOAD, PROTOCOL_VERSION, SANDBOX_HEADER, SYSTEM_BUNDLE, WORKSPACE,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Unacknowledged output kept for replay; past this, sandboxd stops reading from processes
/// (they block on their pipes) until the server catches up.
const OUTBOX_LIMIT: usize = 32 * 1024 * 1024;
const CHUNK: usize = 32 * 1024;
const HEARTBEAT: Duration = Duration::from_secs(5);

fn log(msg: impl std::fmt::Display) {
    eprintln!("sandboxd: {msg}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("sandboxd {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("agent") {
        return agent::main().await;
    }
    // The agent runs as the same user: it must not read this process's memory, environment
    // or file descriptors (/proc/<pid>/mem, environ, fd, ptrace all need a dumpable process
    // or CAP_SYS_PTRACE, which no sandbox has). Children get the flag reset by exec.
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        log("cannot make sandboxd non-dumpable; refusing to run");
        return std::process::ExitCode::from(2);
    }
    match install_ca() {
        Ok(true) => log("installed the deployment CA into the system trust store"),
        Ok(false) => {}
        Err(e) => log(format!("could not install the deployment CA: {e}")),
    }
    if args.iter().any(|a| a == "--hold") {
        wait_for_term().await;
        return std::process::ExitCode::SUCCESS;
    }
    let boot = match read_boot() {
        Ok(b) => b,
        Err(e) => {
            log(e);
            return std::process::ExitCode::from(2);
        }
    };
    let Boot {
        endpoint,
        sandbox,
        token,
    } = boot;
    let mut daemon = Daemon::new(sandbox, token);
    tokio::select! {
        code = daemon.run(&endpoint) => std::process::ExitCode::from(code),
        _ = wait_for_term() => {
            daemon.kill_all();
            std::process::ExitCode::SUCCESS
        }
    }
}

/// Reads the start-up settings the runtime left, then removes them: they are in this
/// process's memory only from here on.
fn read_boot() -> Result<Boot, String> {
    let text = std::fs::read_to_string(BOOT_FILE).map_err(|e| {
        format!("cannot read {BOOT_FILE} ({e}); sandboxd runs inside an Airlock sandbox")
    })?;
    // The directory stays (its parent belongs to root); the file goes.
    std::fs::remove_file(BOOT_FILE)
        .map_err(|e| format!("cannot remove {BOOT_FILE} after reading it: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{BOOT_FILE} is not valid: {e}"))
}

async fn wait_for_term() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Adds the deployment CA (when mounted) to the system bundle, once.
fn install_ca() -> std::io::Result<bool> {
    let ca = match std::fs::read_to_string(CA_MOUNT) {
        Ok(ca) => ca,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let _ = std::fs::write(
        "/usr/local/share/ca-certificates/airlock/airlock-deployment.crt",
        &ca,
    );
    let bundle = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
    if !bundle.contains(ca.trim()) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(SYSTEM_BUNDLE)?;
        use std::io::Write;
        writeln!(f, "\n# Airlock deployment CA\n{}", ca.trim())?;
    }
    Ok(true)
}

/// What a running process leaves behind for the main loop.
enum ProcEvent {
    Output {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    Exit {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
        duration_ms: u64,
    },
    Failed {
        id: u64,
        message: String,
    },
    Ended {
        id: u64,
    },
}

struct Proc {
    pgid: i32,
    stdin: Option<mpsc::Sender<Option<Vec<u8>>>>,
    pty: Option<Arc<OwnedFd>>,
}

struct Bound {
    session: String,
    proxy: Option<String>,
    env: BTreeMap<String, String>,
}

struct Daemon {
    sandbox: String,
    token: String,
    outbox: Outbox,
    procs: HashMap<u64, Proc>,
    /// Processes whose output is kept until acknowledged.
    durable: std::collections::HashSet<u64>,
    bound: Option<Bound>,
    last_output: Instant,
    events_tx: mpsc::Sender<ProcEvent>,
    events_rx: mpsc::Receiver<ProcEvent>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum ConnectError {
    Refused(String),
    Other(String),
}

impl Daemon {
    fn new(sandbox: String, bootstrap: String) -> Daemon {
        let (events_tx, events_rx) = mpsc::channel(64);
        Daemon {
            sandbox,
            token: bootstrap,
            outbox: Outbox::default(),
            procs: HashMap::new(),
            durable: std::collections::HashSet::new(),
            bound: None,
            last_output: Instant::now(),
            events_tx,
            events_rx,
        }
    }

    /// Connects, serves, and reconnects until the server refuses this sandbox for good.
    async fn run(&mut self, endpoint: &str) -> u8 {
        let mut refusals = 0;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.connect(endpoint).await {
                Ok(ws) => {
                    refusals = 0;
                    backoff = Duration::from_millis(50);
                    if let Err(e) = self.serve(ws).await {
                        log(format!("connection lost: {e}"));
                    }
                }
                Err(ConnectError::Refused(why)) => {
                    refusals += 1;
                    log(format!("the server refused this sandbox: {why}"));
                    if refusals >= 5 {
                        self.kill_all();
                        return 3;
                    }
                }
                Err(ConnectError::Other(why)) => {
                    if backoff >= Duration::from_secs(1) {
                        log(format!("cannot reach the sandbox endpoint: {why}"));
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Ws, ConnectError> {
        let url = format!("{}{CONNECT_PATH}", endpoint.trim_end_matches('/'));
        let mut req = url
            .into_client_request()
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let headers = req.headers_mut();
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| ConnectError::Other("bad token".into()))?;
        headers.insert("authorization", auth);
        headers.insert(
            SANDBOX_HEADER,
            self.sandbox
                .parse()
                .map_err(|_| ConnectError::Other("bad sandbox id".into()))?,
        );
        match tokio::time::timeout(
            Duration::from_secs(10),
            // No Nagle: exec requests and output are small messages that must not wait for the
            // peer's delayed ACK (about 40 ms a message otherwise).
            tokio_tungstenite::connect_async_with_config(req, None, true),
        )
        .await
        {
            Err(_) => Err(ConnectError::Other("no answer within 10 s".into())),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp)))
                if resp.status().as_u16() == 401 || resp.status().as_u16() == 403 =>
            {
                Err(ConnectError::Refused(format!("HTTP {}", resp.status())))
            }
            Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
        }
    }

    async fn send(ws: &mut Ws, msg: &FromSandbox) -> Result<(), String> {
        let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
        ws.send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    async fn serve(&mut self, mut ws: Ws) -> Result<(), String> {
        let hello = FromSandbox::Hello {
            version: PROTOCOL_VERSION,
            sandbox: self.sandbox.clone(),
            running: self.running(),
        };
        Self::send(&mut ws, &hello).await?;
        let mut resumed = false;
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        loop {
            let can_read_procs = self.outbox.bytes() < OUTBOX_LIMIT;
            tokio::select! {
                msg = ws.next() => {
                    let msg = match msg {
                        None => return Err("closed by the server".into()),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(m)) => m,
                    };
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => return Err("closed by the server".into()),
                        _ => continue,
                    };
                    let req: ToSandbox = match serde_json::from_str(text.as_str()) {
                        Ok(r) => r,
                        Err(e) => { log(format!("ignoring a message I do not understand: {e}")); continue; }
                    };
                    if let ToSandbox::Resume { acked } = req {
                        self.outbox.acknowledge(acked);
                        for text in self.outbox.pending() {
                            ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                        }
                        resumed = true;
                        continue;
                    }
                    if let Some(reply) = self.handle(req).await {
                        Self::send(&mut ws, &reply).await?;
                    }
                }
                ev = self.events_rx.recv(), if can_read_procs => {
                    let Some(ev) = ev else { continue };
                    if let Some((text, kept)) = self.record(ev) {
                        if resumed || !kept {
                            ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                        }
                    }
                }
                _ = beat.tick() => {
                    let hb = FromSandbox::Heartbeat {
                        running: self.running(),
                        idle_ms: self.last_output.elapsed().as_millis() as u64,
                    };
                    Self::send(&mut ws, &hb).await?;
                }
            }
        }
    }

    fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.procs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Numbers a durable process's event and keeps it until acknowledged; returns the text
    /// to send (and whether it must wait for the server's `Resume`).
    fn record(&mut self, ev: ProcEvent) -> Option<(String, bool)> {
        let id = match &ev {
            ProcEvent::Output { id, .. }
            | ProcEvent::Exit { id, .. }
            | ProcEvent::Failed { id, .. }
            | ProcEvent::Ended { id } => *id,
        };
        let durable = self.durable.contains(&id);
        let seq = if durable {
            self.outbox.next_number()
        } else {
            0
        };
        let msg = match ev {
            ProcEvent::Ended { id } => {
                self.procs.remove(&id);
                self.durable.remove(&id);
                return None;
            }
            ProcEvent::Output { id, stream, data } => {
                self.last_output = Instant::now();
                FromSandbox::Output {
                    seq,
                    id,
                    stream,
                    data: B64.encode(data),
                }
            }
            ProcEvent::Exit {
                id,
                code,
                signal,
                oom_killed,
                duration_ms,
            } => {
                self.last_output = Instant::now();
                FromSandbox::Exit {
                    seq,
                    id,
                    code,
                    signal,
                    oom_killed,
                    duration_ms,
                }
            }
            ProcEvent::Failed { id, message } => {
                self.procs.remove(&id);
                self.durable.remove(&id);
                FromSandbox::Failed { seq, id, message }
            }
        };
        let text = serde_json::to_string(&msg).ok()?;
        if !durable {
            return Some((text, false));
        }
        self.outbox.keep(text.clone());
        Some((text, true))
    }

    async fn handle(&mut self, req: ToSandbox) -> Option<FromSandbox> {
        match req {
            ToSandbox::Token { token } => {
                self.token = token;
                None
            }
            ToSandbox::Resume { .. } => None,
            ToSandbox::Ack { seq } => {
                self.outbox.acknowledge(seq);
                None
            }
            ToSandbox::Bind {
                session,
                proxy,
                env,
            } => {
                self.bound = Some(Bound {
                    session,
                    proxy,
                    env,
                });
                None
            }
            ToSandbox::Exec {
                id,
                argv,
                cwd,
                env,
                pty,
                stdin,
                keep_stdin,
                durable,
            } => {
                if self.procs.contains_key(&id) {
                    return Some(FromSandbox::Error {
                        id,
                        message: format!("process {id} is already running"),
                    });
                }
                let stdin = match stdin.map(|s| B64.decode(s)).transpose() {
                    Ok(s) => s,
                    Err(_) => {
                        return Some(FromSandbox::Error {
                            id,
                            message: "stdin is not valid base64".into(),
                        })
                    }
                };
                let env = self.child_env(&env, pty.is_some());
                if durable {
                    self.durable.insert(id);
                }
                match spawn(
                    id,
                    &argv,
                    cwd.as_deref(),
                    env,
                    pty,
                    stdin,
                    keep_stdin,
                    self.events_tx.clone(),
                ) {
                    Ok(proc) => {
                        self.procs.insert(id, proc);
                    }
                    Err(message) => {
                        let _ = self.events_tx.try_send(ProcEvent::Failed { id, message });
                    }
                }
                None
            }
            ToSandbox::Stdin { id, data, eof } => {
                let Some(tx) = self.procs.get(&id).and_then(|p| p.stdin.clone()) else {
                    return Some(FromSandbox::Error {
                        id,
                        message: format!("process {id} is not running or its stdin is closed"),
                    });
                };
                let Ok(bytes) = B64.decode(data) else {
                    return Some(FromSandbox::Error {
                        id,
                        message: "stdin is not valid base64".into(),
                    });
                };
                if !bytes.is_empty() {
                    let _ = tx.send(Some(bytes)).await;
                }
                if eof {
                    let _ = tx.send(None).await;
                }
                Some(FromSandbox::Done { id })
            }
            ToSandbox::Resize { id, rows, cols } => {
                let Some(fd) = self.procs.get(&id).and_then(|p| p.pty.clone()) else {
                    return Some(FromSandbox::Error {
                        id,
                        message: format!("process {id} has no terminal"),
                    });
                };
                set_winsize(&fd, PtySize { rows, cols });
                Some(FromSandbox::Done { id })
            }
            ToSandbox::Cancel { id } => {
                if let Some(p) = self.procs.get(&id) {
                    terminate_group(p.pgid);
                }
                Some(FromSandbox::Done { id })
            }
            ToSandbox::ReadFile {
                id,
                path,
                max_bytes,
            } => Some(read_file(id, &path, max_bytes.unwrap_or(MAX_READ_BYTES)).await),
            ToSandbox::WriteFile {
                id,
                path,
                data,
                mode,
            } => Some(write_file(id, &path, &data, mode).await),
        }
    }

    /// The environment of every process: a clean base, the CA and proxy variables, the
    /// session's environment, then the request's own.
    fn child_env(&self, extra: &BTreeMap<String, String>, pty: bool) -> BTreeMap<String, String> {
        let proxy = self.bound.as_ref().and_then(|b| b.proxy.as_deref());
        let mut env = tool_env(
            proxy,
            Path::new(CA_MOUNT).exists(),
            Path::new(NODE_PROXY_PRELOAD).exists(),
        );
        let (user, home) = current_user();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.to_string());
        };
        set("HOME", &home);
        set("USER", &user);
        set("LOGNAME", &user);
        set("TERM", if pty { "xterm-256color" } else { "dumb" });
        set("AIRLOCK_SANDBOX", &self.sandbox);
        if let Some(b) = &self.bound {
            set("AIRLOCK_SESSION", &b.session);
            for (k, v) in &b.env {
                env.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in extra {
            env.insert(k.clone(), v.clone());
        }
        env
    }

    fn kill_all(&mut self) {
        for p in self.procs.values() {
            kill_group(p.pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn current_user() -> (String, String) {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(u)) => (u.name, u.dir.to_string_lossy().into_owned()),
        _ => (
            format!("{}", nix::unistd::getuid().as_raw()),
            WORKSPACE.into(),
        ),
    }
}

fn kill_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// SIGTERM to the process group now, SIGKILL two seconds later.
fn terminate_group(pgid: i32) {
    kill_group(pgid, nix::sys::signal::Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
    });
}

fn set_winsize(fd: &OwnedFd, size: PtySize) {
    let ws = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer on a valid fd.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// How many times the kernel's OOM killer has run in this sandbox's memory cgroup.
fn oom_kills() -> u64 {
    for path in [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("oom_kill ") {
                    return n.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

fn resolve(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(WORKSPACE).join(p)
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    id: u64,
    argv: &[String],
    cwd: Option<&str>,
    env: BTreeMap<String, String>,
    pty: Option<PtySize>,
    stdin: Option<Vec<u8>>,
    keep_stdin: bool,
    tx: mpsc::Sender<ProcEvent>,
) -> Result<Proc, String> {
    let Some(program) = argv.first() else {
        return Err("nothing to run: the command is empty".into());
    };
    let cwd = resolve(cwd.unwrap_or(WORKSPACE));
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&env)
        .current_dir(&cwd);
    let started = Instant::now();
    let oom_before = oom_kills();
    let describe = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound if !cwd.is_dir() => {
            format!(
                "cannot run `{program}`: the directory {} does not exist",
                cwd.display()
            )
        }
        std::io::ErrorKind::NotFound => format!("cannot run `{program}`: command not found"),
        _ => format!("cannot run `{program}`: {e}"),
    };
    match pty {
        None => {
            cmd.process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(false);
            let mut child = cmd.spawn().map_err(describe)?;
            let pgid = child.id().unwrap_or(0) as i32;
            let out = child.stdout.take().expect("piped stdout");
            let err = child.stderr.take().expect("piped stderr");
            let child_stdin = child.stdin.take().expect("piped stdin");
            let stdin_tx = feed_stdin(child_stdin, stdin, keep_stdin);
            let r1 = tokio::spawn(pump(id, Stream::Stdout, out, tx.clone()));
            let r2 = tokio::spawn(pump(id, Stream::Stderr, err, tx.clone()));
            tokio::spawn(async move {
                let status = child.wait().await;
                let _ = r1.await;
                let _ = r2.await;
                finish(id, status, started, oom_before, &tx).await;
            });
            Ok(Proc {
                pgid,
                stdin: stdin_tx,
                pty: None,
            })
        }
        Some(size) => {
            let pair = nix::pty::openpty(None, None).map_err(|e| format!("no terminal: {e}"))?;
            let master = Arc::new(pair.master);
            set_winsize(&master, size);
            let slave = pair.slave;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("no terminal: {e}"));
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().map_err(describe)?;
            drop(cmd);
            let pgid = child.id() as i32;
            let reader = std::fs::File::from(dup(&master)?);
            let writer = std::fs::File::from(dup(&master)?);
            let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(16);
            if let Some(bytes) = stdin {
                let _ = stdin_tx.try_send(Some(bytes));
            }
            std::thread::spawn(move || {
                use std::io::Write;
                let mut writer = writer;
                while let Some(Some(bytes)) = stdin_rx.blocking_recv() {
                    if writer.write_all(&bytes).is_err() {
                        break;
                    }
                }
            });
            let tx2 = tx.clone();
            let pump = std::thread::spawn(move || {
                use std::io::Read;
                let mut reader = reader;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let ev = ProcEvent::Output {
                                id,
                                stream: Stream::Pty,
                                data: buf[..n].to_vec(),
                            };
                            if tx2.blocking_send(ev).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let status = tokio::task::spawn_blocking(move || {
                    let s = child.wait();
                    let _ = pump.join();
                    s
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                finish(id, status, started, oom_before, &tx).await;
            });
            Ok(Proc {
                pgid,
                stdin: Some(stdin_tx),
                pty: Some(master),
            })
        }
    }
}

/// Writes the initial stdin, then whatever arrives, closing stdin at the end.
fn feed_stdin(
    mut pipe: tokio::process::ChildStdin,
    initial: Option<Vec<u8>>,
    keep: bool,
) -> Option<mpsc::Sender<Option<Vec<u8>>>> {
    let (tx, mut rx) = mpsc::channel::<Option<Vec<u8>>>(16);
    tokio::spawn(async move {
        if let Some(bytes) = initial {
            if pipe.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if !keep {
            return;
        }
        while let Some(Some(bytes)) = rx.recv().await {
            if pipe.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    keep.then_some(tx)
}

async fn pump(
    id: u64,
    stream: Stream,
    mut r: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::Sender<ProcEvent>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let ev = ProcEvent::Output {
                    id,
                    stream,
                    data: buf[..n].to_vec(),
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn finish(
    id: u64,
    status: std::io::Result<std::process::ExitStatus>,
    started: Instant,
    oom_before: u64,
    tx: &mpsc::Sender<ProcEvent>,
) {
    let ev = match status {
        Ok(s) => ProcEvent::Exit {
            id,
            code: s.code(),
            signal: s.signal(),
            oom_killed: oom_kills() > oom_before,
            duration_ms: started.elapsed().as_millis() as u64,
        },
        Err(e) => ProcEvent::Failed {
            id,
            message: format!("lost track of the process: {e}"),
        },
    };
    let _ = tx.send(ev).await;
    let _ = tx.send(ProcEvent::Ended { id }).await;
}

async fn read_file(id: u64, path: &str, max: u64) -> FromSandbox {
    let path = resolve(path);
    let max = max.min(MAX_READ_BYTES);
    let result = async {
        let mut f = tokio::fs::File::open(&path).await?;
        let size = f.metadata().await?.len();
        let mut data = Vec::with_capacity(size.min(max) as usize);
        (&mut f).take(max).read_to_end(&mut data).await?;
        Ok::<_, std::io::Error>((data, size))
    }
    .await;
    match result {
        Ok((data, size)) => FromSandbox::File {
            id,
            truncated: size > data.len() as u64,
            size,
            data: B64.encode(&data),
        },
        Err(e) => FromSandbox::Error {
            id,
            message: format!("cannot read {}: {e}", path.display()),
        },
    }
}

async fn write_file(id: u64, path: &str, data: &str, mode: Option<u32>) -> FromSandbox {
    let path = resolve(path);
    let Ok(bytes) = B64.decode(data) else {
        return FromSandbox::Error {
            id,
            message: "the file contents are not valid base64".into(),
        };
    };
    let result = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&path, &bytes).await?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .await?;
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    match result {
        Ok(()) => FromSandbox::Done { id },
        Err(e) => FromSandbox::Error {
            id,
            message: format!("cannot write {}: {e}", path.display()),
        },
    }
}
