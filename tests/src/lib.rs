//! Helpers for end-to-end tests: run the real `airlock` binary in a scratch directory against a
//! real database (SQLite, or a fresh PostgreSQL database when `AIRLOCK_TEST_POSTGRES_URL` is
//! set), as a person at a terminal would. Fakes of the external services join this crate as
//! the integrations land.

pub mod chats;
pub mod connect_proxy;
pub mod console;
pub mod discord;
pub mod git;
pub mod github;
pub mod hostile;
pub mod inproc;
pub mod model;
pub mod registry;
pub mod seed;
pub mod sessions;
pub mod slack;
pub mod stack;
pub mod tls;
pub mod upstream;
pub mod websocket;

/// What a fake does when it is dropped (each fake is strict by default): a test that ends
/// with calls the fake did not expect fails, even if it never looked; a test already failing
/// is left to its own message.
pub fn fail_on_unexpected(fake: &str, seen: Vec<String>) {
    if std::thread::panicking() {
        return;
    }
    assert!(
        seen.is_empty(),
        "{fake} saw calls it did not expect: {seen:#?}"
    );
}

/// Declares each named `async fn NAME(engine: Engine)` as two tests: `sqlite::NAME` and
/// `postgres::NAME`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Engine::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Engine::Postgres).await }
            )*
        }
    };
}

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The `airlock` binary: `AIRLOCK_TEST_BIN` when set (scripts/test builds the workspace first
/// and sets it), otherwise built once per test run from the current sources.
pub fn airlock_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("AIRLOCK_TEST_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.exists(),
                "AIRLOCK_TEST_BIN={} does not exist",
                bin.display()
            );
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "airlock", "--bin", "airlock"])
            .status()
            .expect("cannot run cargo to build the airlock binary");
        assert!(status.success(), "building the airlock binary failed");
        // target/debug/deps/<test> -> target/debug/airlock
        let exe = std::env::current_exe().expect("no current exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("unexpected test binary location");
        let bin = dir.join("airlock");
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Which database a scratch installation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A scratch installation: its own directory (data dir, key file, SQLite file) and database.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    env: Vec<(String, String)>,
}

impl Install {
    pub async fn new(engine: Engine) -> Install {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = match engine {
            Engine::Sqlite => format!("sqlite://{}", dir.path().join("var/airlock.db").display()),
            Engine::Postgres => fresh_postgres_database().await,
        };
        let env = vec![("AIRLOCK_DATABASE_URL".to_string(), database_url.clone())];
        Install {
            dir,
            database_url,
            env,
        }
    }

    /// Adds an environment variable for every command run in this installation.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment variables set for this installation's commands.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// Runs `airlock ARGS` in the installation's directory, with `stdin` piped in.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(airlock_bin());
        cmd.args(args).current_dir(self.dir.path()).env_clear();
        for (k, v) in std::env::vars() {
            if k == "PATH" || k == "HOME" {
                cmd.env(k, v);
            }
        }
        cmd.env("AIRLOCK_LOG", "warn").env("USER", "tester");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start airlock");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("airlock did not finish")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, b"")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "airlock {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds Ada Lovelace <ada@example.com>, an admin: the person most tests act as.
    pub fn add_admin(&self) {
        self.ok(&[
            "human",
            "add",
            "--name",
            "Ada Lovelace",
            "--email",
            "ada@example.com",
            "--admin",
        ]);
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("airlock {args:?} printed invalid JSON ({e}): {text}"))
    }

    /// The installation's store, opened with its own master key (run `migrate` first).
    pub async fn store(&self) -> airlock_core::Store {
        let key = std::fs::read_to_string(self.path().join("var/master.key"))
            .expect("the installation's master key (run `migrate` first)");
        let key = airlock_core::secrets::MasterKey::from_base64(key.trim()).expect("master key");
        let store = airlock_core::Store::connect(&self.database_url, 4, key)
            .await
            .expect("open the database");
        store
            .check_master_key()
            .await
            .expect("the installation's key");
        store
    }

    /// A raw connection to the installation's database, to inspect or tamper with it.
    pub async fn raw_db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }
}

/// A new, empty database on the test PostgreSQL server.
pub async fn fresh_postgres_database() -> String {
    let admin_url = std::env::var("AIRLOCK_TEST_POSTGRES_URL").expect(
        "AIRLOCK_TEST_POSTGRES_URL is not set: run scripts/test, which starts a throw-away PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let admin = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!(
        "airlock_e2e_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// Polls `f` every 100 ms until it gives a value; after `secs`, fails naming `what` and
/// whatever `context` says of the state of things.
pub async fn poll<T>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The headers a webhook trigger's sender signs with: `X-Airlock-Timestamp` (`ts`) and
/// `X-Airlock-Signature-256` over `<ts>.<body>` with `secret`.
pub fn sign_hook(secret: &str, ts: i64, body: &[u8]) -> [(&'static str, String); 2] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    [
        ("X-Airlock-Timestamp", ts.to_string()),
        (
            "X-Airlock-Signature-256",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        ),
    ]
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A value no other test run has: `prefix` and a fresh ULID.
pub fn random(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The first line of an agent's output that starts with `tag` (probes tag each line).
pub fn line<'a>(text: &'a str, tag: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no `{tag}` line in the agent's output:\n{text}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TCP port free on every address (servers under test bind it on loopback or on a sandbox
/// bridge address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `airlock up` of an installation, on its own sandbox network (random name and
/// subnet, so tests can run side by side), killed and cleaned up on drop.
pub struct Server {
    pub child: std::process::Child,
    pub port: u16,
    pub network: String,
    pub subnet_prefix: String,
    pub endpoint_port: u16,
    pub gateway_port: u16,
    dir: PathBuf,
}

impl Server {
    /// Settings for a fresh sandbox network; call before [`Server::start`].
    pub fn configure(install: &mut Install) -> (String, String) {
        let n: u32 = rand_u32();
        let network = format!("alk{:06x}", n & 0xff_ffff);
        let prefix = format!("10.{}.{}", 100 + (n >> 8) % 150, n % 250);
        install
            .env("AIRLOCK_SANDBOX_NETWORK", &network)
            .env("AIRLOCK_SANDBOX_SUBNET", &format!("{prefix}.0/24"))
            .env("AIRLOCK_SANDBOX_ENDPOINT_PORT", &free_port().to_string())
            .env("AIRLOCK_SANDBOX_GATEWAY_PORT", &free_port().to_string())
            .env(
                "AIRLOCK_SERVER_LISTEN",
                &format!("127.0.0.1:{}", free_port()),
            );
        (network, prefix)
    }

    /// Starts `airlock up` and waits until it answers.
    pub fn start(install: &Install) -> Server {
        let get = |k: &str| {
            install
                .env
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{k} is not configured; call Server::configure first"))
        };
        let listen = get("AIRLOCK_SERVER_LISTEN");
        let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let network = get("AIRLOCK_SANDBOX_NETWORK");
        let subnet = get("AIRLOCK_SANDBOX_SUBNET");
        let mut cmd = Command::new(airlock_bin());
        cmd.arg("up").current_dir(install.path()).env_clear();
        for (k, v) in std::env::vars() {
            if k == "PATH" || k == "HOME" {
                cmd.env(k, v);
            }
        }
        cmd.env("AIRLOCK_LOG", "info").env("USER", "tester");
        for (k, v) in &install.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(install.path().join("server.log"))
            .expect("server log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start airlock up");
        let mut server = Server {
            child,
            port,
            network,
            subnet_prefix: subnet.trim_end_matches(".0/24").to_string(),
            endpoint_port: get("AIRLOCK_SANDBOX_ENDPOINT_PORT").parse().unwrap(),
            gateway_port: get("AIRLOCK_SANDBOX_GATEWAY_PORT").parse().unwrap(),
            dir: install.path().to_path_buf(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("airlock up exited with {status}:\n{}", server.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "airlock up did not answer within 60 s:\n{}",
                server.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The host's address on the sandbox network.
    pub fn host_address(&self) -> String {
        format!("{}.1", self.subnet_prefix)
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The containers of this deployment (by label), as `docker ps` sees them.
    pub fn containers(&self) -> Vec<String> {
        let deployment = self.deployment();
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=org.airlock.deployment={deployment}"),
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn deployment(&self) -> String {
        let out = Command::new("docker")
            .args([
                "network",
                "inspect",
                "-f",
                "{{index .Labels \"org.airlock.deployment\"}}",
                &self.network,
            ])
            .output()
            .expect("docker network inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_hard();
        remove_deployment(&self.deployment(), &self.network);
    }
}

/// Removes what a test deployment left in Docker (containers and images by label), its
/// network, and its firewall chain.
fn remove_deployment(deployment: &str, network: &str) {
    let mut script = String::new();
    if !deployment.is_empty() {
        let d = deployment;
        script.push_str(&format!(
            "docker ps -aq --filter label=org.airlock.deployment={d} | xargs -r docker rm -f >/dev/null 2>&1; \
             docker images -q --filter label=org.airlock.deployment={d} | xargs -r docker rmi -f >/dev/null 2>&1; "
        ));
    }
    let net = network;
    script.push_str(&format!(
        "docker network rm {net} >/dev/null 2>&1; iptables -w -D INPUT -i {net} -j AIRLOCK-{net} 2>/dev/null; \
         iptables -w -F AIRLOCK-{net} 2>/dev/null; iptables -w -X AIRLOCK-{net} 2>/dev/null; true"
    ));
    let _ = Command::new("sh").arg("-c").arg(script).status();
}

fn rand_u32() -> u32 {
    let u = ulid::Ulid::new();
    (u.random() as u32) ^ std::process::id()
}

/// The sandbox stack in-process, without the server: a SQLite store, the Docker runtime on its
/// own network and firewall, the sandbox endpoint, and the manager. For tests and benchmarks
/// that talk to sandboxd directly. Cleans up its containers, images and network on drop.
pub struct LocalStack {
    pub dir: tempfile::TempDir,
    pub store: airlock_core::Store,
    pub sandboxes: std::sync::Arc<airlock_sandbox::Sandboxes>,
    pub network: airlock_sandbox::Network,
    pub endpoint_port: u16,
    pub deployment: String,
}

impl LocalStack {
    /// `gateway_port`: a host port sandboxes may also reach (given to them as their proxy).
    pub async fn start(gateway_port: Option<u16>, ca_cert: Option<PathBuf>) -> LocalStack {
        use airlock_sandbox::docker::{DockerRuntime, DockerRuntimeConfig};
        use airlock_sandbox::{Hub, Runtime, SandboxSettings, Sandboxes};
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, _) =
            airlock_core::secrets::MasterKey::load_or_create(&dir.path().join("key")).expect("key");
        let url = format!("sqlite://{}", dir.path().join("airlock.db").display());
        let store = airlock_core::Store::connect(&url, 5, key)
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let docker = airlock_sandbox::engine::connect("unix:///var/run/docker.sock")
            .await
            .expect("Docker is not running");
        let endpoint_port = free_port();
        let n = rand_u32();
        let deployment = store.deployment_id().await.expect("deployment");
        let mut allowed = vec![endpoint_port];
        allowed.extend(gateway_port);
        let runtime = std::sync::Arc::new(DockerRuntime::new(
            docker,
            DockerRuntimeConfig {
                deployment: deployment.clone(),
                network: format!("alks{:06x}", n & 0xff_ffff),
                subnet: format!("10.{}.{}.0/24", 100 + (n >> 8) % 150, n % 250),
                allowed_ports: allowed,
            },
        ));
        let network = runtime.prepare().await.expect("sandbox network");
        let hub = Hub::new(store.clone());
        let listener = tokio::net::TcpListener::bind((network.host_address, endpoint_port))
            .await
            .expect("endpoint");
        tokio::spawn(hub.clone().serve_endpoint(
            listener,
            airlock_serve::Limits::SANDBOX_ENDPOINT,
            std::future::pending(),
        ));
        let sandboxd = airlock_bin()
            .parent()
            .map(|d| d.join("sandboxd"))
            .filter(|p| p.is_file())
            .expect("sandboxd is not built next to airlock: cargo build --workspace --bins");
        let runtime: std::sync::Arc<dyn Runtime> = runtime;
        let sandboxes = std::sync::Arc::new(Sandboxes {
            store: store.clone(),
            runtime,
            hub,
            settings: SandboxSettings {
                endpoint: format!("ws://{}:{endpoint_port}", network.host_address),
                gateway: gateway_port.map(|p| format!("{}:{p}", network.host_address)),
                sandboxd,
                ca_cert,
                base_image: airlock_sandbox::image::base_image_ref("airlock/base"),
                connect_timeout: std::time::Duration::from_secs(30),
                owner: "srv_local".into(),
            },
        });
        LocalStack {
            dir,
            store,
            sandboxes,
            network,
            endpoint_port,
            deployment,
        }
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        remove_deployment(&self.deployment, &self.network.name);
    }
}

/// `count` unsigned GitHub deliveries of `size` bytes posted to `url` at once, while the
/// resident memory of `pid` (the server) is watched: its highest value (MB) and each post's
/// status (an error when the server closed the connection while the body was being sent).
pub async fn unsigned_flood(
    url: &str,
    pid: u32,
    count: usize,
    size: usize,
) -> (u64, Vec<Result<u16, String>>) {
    let body = vec![b'x'; size];
    let posts: Vec<_> = (0..count)
        .map(|_| {
            let (url, body) = (url.to_string(), body.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .header("X-GitHub-Event", "issue_comment")
                    .header("X-GitHub-Delivery", ulid::Ulid::new().to_string())
                    .header("X-Hub-Signature-256", "sha256=00")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut peak = rss_mb(pid);
    let mut statuses = Vec::new();
    for p in posts {
        while !p.is_finished() {
            peak = peak.max(rss_mb(pid));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        statuses.push(p.await.unwrap());
    }
    (peak.max(rss_mb(pid)), statuses)
}

/// The resident memory of a process, in MB (0 once it has gone).
pub fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Gives Ada (see [`Install::add_admin`]) an admin-page password and signs her in; returns
/// the `Cookie` header value of her web session.
pub async fn admin_cookie(install: &Install) -> String {
    const PASSWORD: &str = "a long test password";
    let out = install.run_with_stdin(
        &["human", "password", "ada@example.com"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let store = airlock_core::Store::connect(
        &install.database_url,
        1,
        airlock_core::secrets::MasterKey::generate(),
    )
    .await
    .expect("open the database");
    let (token, _) = store
        .sign_in("ada@example.com", PASSWORD)
        .await
        .unwrap()
        .expect("sign in");
    store.close().await;
    format!("airlock_session={token}")
}

/// Runs `airlock ARGS` in the installation, reading its stdout as it comes and sampling its
/// memory: (stdout bytes, stdout lines, peak RSS in MB). Panics if it fails.
pub fn run_sampled(install: &Install, args: &[&str]) -> (u64, u64, u64) {
    use std::io::Read;
    let mut cmd = Command::new(airlock_bin());
    cmd.args(args)
        .current_dir(install.path())
        .env("AIRLOCK_LOG", "warn");
    for (k, v) in install.env_pairs() {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start airlock");
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while std::path::Path::new(&format!("/proc/{pid}/status")).exists() {
                peak.fetch_max(rss_mb(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let mut stdout = child.stdout.take().unwrap();
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdout.read(&mut buf).expect("read stdout");
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    let status = child.wait().expect("airlock did not finish");
    assert!(status.success(), "airlock {args:?} failed");
    let _ = sampler.join();
    (
        bytes,
        lines,
        peak.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// What Airlock's CLI records as the actor of what it does on this machine: `cli:` and the
/// account running the tests, as `id -un` names it (the tests set `USER=tester`, which
/// Airlock must not believe).
pub fn cli_actor() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    format!("cli:{}", String::from_utf8_lossy(&out.stdout).trim())
}

/// When the peer closes `c` (after whatever it sends first: a 408, say), if within `secs`.
pub async fn closed_within(mut c: tokio::net::TcpStream, secs: u64) -> Option<std::time::Instant> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return std::time::Instant::now(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}
