//! sandboxd in a real sandbox, driven through the sandbox endpoint: exec with streamed output
//! and exit codes, PTY, stdin, files, cancel, the environment every process gets, the CA in
//! the trust store, and the token binding (a token presented by another sandbox, or from
//! another address, is refused).

use std::time::Duration;

use airlock_core::domain::{ProfileSpec, Role, Surface};
use airlock_core::store::{ApplyOutcome, NewSession, TokenKind};
use airlock_sandbox::{ExecEvent, ExecRequest, ExecStream};
use airlock_sandboxd::proto::{PtySize, Stream};
use airlock_tests::LocalStack;

/// Collects a process's output until it exits: (stdout+pty, stderr, exit code, signal).
async fn collect(mut s: ExecStream) -> (String, String, Option<i32>, Option<i32>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("the process did not finish within 30 s")
            .expect("the sandbox went away");
        match ev {
            ExecEvent::Output { stream, data, .. } => match stream {
                Stream::Stderr => err.extend(data),
                _ => out.extend(data),
            },
            ExecEvent::Exit { code, signal, .. } => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    code,
                    signal,
                )
            }
            ExecEvent::Failed { message, .. } => panic!("exec failed: {message}"),
        }
    }
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["bash".into(), "-c".into(), cmd.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxd_runs_processes_files_and_ptys_and_refuses_foreign_tokens() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nTUlJQnRlc3RBaXJsb2NrRGVwbG95bWVudENB\n-----END CERTIFICATE-----\n";
    std::fs::write(&ca, pem).unwrap();
    let gateway_port = airlock_tests::free_port();
    let stack = LocalStack::start(Some(gateway_port), Some(ca.clone())).await;
    let store = &stack.store;
    let hub = &stack.sandboxes.hub;
    let ada = store
        .add_human("Ada", "ada@example.com", Role::Admin)
        .await
        .unwrap();
    let spec = ProfileSpec::from_toml(
        "name = \"p\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n[env]\nGREETING = \"hello\"\n",
    )
    .unwrap();
    let ApplyOutcome::Created { profile_id, .. } = store.apply_profile(&spec, None).await.unwrap()
    else {
        panic!()
    };
    let pv = store.profile_version(&profile_id, None).await.unwrap();
    let session = store
        .create_session(NewSession {
            requester_id: ada.id,
            surface: Surface::Cli,
            thread_ref: Default::default(),
            repo: "acme/web".into(),
            profile_id: profile_id.clone(),
            profile_version: pv.version,
            prompt: "x".into(),
            trigger_id: None,
            thread_key: None,
            notify: None,
        })
        .await
        .unwrap();
    let a = stack
        .sandboxes
        .start(
            "session",
            &pv,
            Some(&session.id),
            &stack.sandboxes.settings.base_image,
        )
        .await
        .unwrap();
    hub.wait_connected(&a.id, Duration::from_secs(30))
        .await
        .unwrap();
    stack
        .sandboxes
        .bind(
            &a,
            &session,
            &pv.spec.env,
            airlock_core::ids::now_ms() + 600_000,
        )
        .await
        .unwrap();

    // Streamed output, stderr apart, exit code.
    let (out, err, code, _) = collect(
        hub.exec(&a.id, sh("echo out; echo err >&2; exit 3"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("out\n", "err\n", Some(3))
    );

    // The environment of every process: CA variables, proxy, session, profile env; never the
    // bootstrap token.
    let (env, _, _, _) = collect(hub.exec(&a.id, sh("env")).unwrap()).await;
    let host = stack.network.host_address;
    for want in [
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string(),
        "REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt".to_string(),
        "GIT_SSL_CAINFO=/etc/ssl/certs/ca-certificates.crt".to_string(),
        "NODE_EXTRA_CA_CERTS=/etc/airlock/ca.pem".to_string(),
        format!("AIRLOCK_SESSION={}", session.id),
        "GREETING=hello".to_string(),
        "NO_PROXY=localhost,127.0.0.1,::1".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
        let line = env
            .lines()
            .find(|l| l.starts_with(&format!("{var}=")))
            .unwrap_or_else(|| panic!("{var} is not set:\n{env}"));
        assert!(
            line.contains("alk_egr_") && line.ends_with(&format!("@{host}:{gateway_port}")),
            "{line}"
        );
    }
    assert!(
        !env.contains("alk_boot_") && !env.contains("AIRLOCK_BOOTSTRAP"),
        "{env}"
    );
    let (bundle, _, _, _) = collect(
        hub.exec(
            &a.id,
            sh("grep -c TUlJQnRlc3RBaXJsb2NrRGVwbG95bWVudENB /etc/ssl/certs/ca-certificates.crt"),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(
        bundle.trim(),
        "1",
        "the deployment CA is in the system trust store once"
    );

    // A terminal, with input.
    let req = ExecRequest {
        argv: vec![
            "bash".into(),
            "-c".into(),
            "tty; stty size; read line; echo got $line".into(),
        ],
        pty: Some(PtySize {
            rows: 30,
            cols: 100,
        }),
        keep_stdin: true,
        ..Default::default()
    };
    let s = hub.exec(&a.id, req).unwrap();
    let id = s.id;
    hub.stdin(&a.id, id, b"hello\n", false).unwrap();
    let (out, _, code, _) = collect(s).await;
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("30 100"), "{out}");
    assert!(out.contains("got hello"), "{out}");
    assert_eq!(code, Some(0));

    // Files, both ways, under the workspace.
    hub.write_file(&a.id, "notes/a.txt", b"line one\n", Some(0o600))
        .await
        .unwrap();
    let (data, truncated) = hub
        .read_file(&a.id, "/workspace/notes/a.txt", 1024)
        .await
        .unwrap();
    assert_eq!((data.as_slice(), truncated), (&b"line one\n"[..], false));
    let (data, truncated) = hub.read_file(&a.id, "notes/a.txt", 4).await.unwrap();
    assert_eq!((data.as_slice(), truncated), (&b"line"[..], true));
    let err = hub.read_file(&a.id, "nope.txt", 10).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot read /workspace/nope.txt"),
        "{err}"
    );

    // Cancel stops the process and what it started.
    let s = hub
        .exec(&a.id, sh("sleep 100 & sleep 100; echo never"))
        .unwrap();
    let id = s.id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    hub.cancel(&a.id, id).unwrap();
    let (out, _, code, signal) = collect(s).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((code, signal), (None, Some(15)), "{out}");
    let (ps, _, _, _) = collect(hub.exec(&a.id, sh("pgrep -c sleep || true")).unwrap()).await;
    assert_eq!(ps.trim(), "0", "children of a cancelled process survive");

    // Token binding. B is a second sandbox; tokens are tried from inside B with curl.
    let b = stack
        .sandboxes
        .start("warm", &pv, None, &stack.sandboxes.settings.base_image)
        .await
        .unwrap();
    hub.wait_connected(&b.id, Duration::from_secs(30))
        .await
        .unwrap();
    let a_token = store
        .issue_token(TokenKind::Sbx, &a.id, Some(&session.id), 600_000)
        .await
        .unwrap();
    let b_token = store
        .issue_token(TokenKind::Sbx, &b.id, None, 600_000)
        .await
        .unwrap();
    let url = format!("http://{host}:{}/sandbox/v1/connect", stack.endpoint_port);
    let try_token = |token: &str, sandbox: &str| {
        format!(
            "curl -s -m 2 -o /dev/null -w '%{{http_code}}\\n' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
             -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
             -H 'Authorization: Bearer {token}' -H 'X-Airlock-Sandbox: {sandbox}' {url}; true"
        )
    };
    let script = [
        try_token(&a_token, &a.id), // A's token, claimed for A, from B's address
        try_token(&a_token, &b.id), // A's token, claimed for B
        try_token("alk_sbx_madeup", &b.id),
        // B's own valid token from B: refused while B's sandboxd is connected, so a token
        // alone cannot stand in for sandboxd.
        try_token(&b_token, &b.id),
    ]
    .join("\n");
    let (codes, _, _, _) = collect(hub.exec(&b.id, sh(&script)).unwrap()).await;
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(codes, ["401", "401", "401", "409"], "{codes:?}");
    // A's token from the host (not A's address) is refused too.
    let host_try = std::process::Command::new("sh")
        .arg("-c")
        .arg(try_token(&a_token, &a.id))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host_try.stdout).trim(), "401");

    stack.sandboxes.release(&a, "test over").await;
    stack.sandboxes.release(&b, "test over").await;
}

/// What an agent tries to take sandboxd's place: its memory, environment, descriptors and
/// ptrace (same user), every readable process's memory and environment, any file: no
/// endpoint token anywhere, so nothing to stand in for sandboxd with.
const TAKE_SANDBOXD: &str = r#"
import ctypes, glob, os, re
libc = ctypes.CDLL(None, use_errno=True)
def cmd(p):
    try:
        return open(p + "/cmdline", "rb").read()
    except OSError:
        return b""
pids = [int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*") if cmd(p).startswith(b"/opt/airlock/sandboxd")]
pid = [p for p in pids if b"agent" not in cmd(f"/proc/{p}")][0]
for what in ["environ", "mem", "maps", "fd"]:
    try:
        if what == "fd":
            os.listdir(f"/proc/{pid}/fd")
        else:
            open(f"/proc/{pid}/{what}", "rb").read(1)
        print(what, "readable")
    except OSError as e:
        print(what, "denied")
r = libc.ptrace(16, pid, None, None)
print("ptrace", "attached" if r == 0 else "denied")
token = re.compile(rb"alk_(?:sbx|boot)_[A-Za-z0-9_-]{20,}")
found = set()
for p in glob.glob("/proc/[0-9]*"):
    for f in ["environ", "cmdline"]:
        try:
            found |= set(token.findall(open(p + "/" + f, "rb").read()))
        except OSError:
            pass
    try:
        mem = open(p + "/mem", "rb")
        for line in open(p + "/maps").read().splitlines():
            lo, hi = [int(x, 16) for x in line.split()[0].split("-")]
            if "r" not in line.split()[1] or hi - lo > 1 << 28:
                continue
            try:
                mem.seek(lo)
                found |= set(token.findall(mem.read(hi - lo)))
            except (OSError, ValueError, OverflowError):
                pass
    except OSError:
        pass
for root in ["/run", "/tmp", "/home", "/workspace", "/etc"]:
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                found |= set(token.findall(open(os.path.join(dirpath, f), "rb").read(1 << 20)))
            except OSError:
                pass
print("tokens found", len(found))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_cannot_read_sandboxd_or_stand_in_for_it() {
    let stack = LocalStack::start(None, None).await;
    let store = &stack.store;
    let hub = &stack.sandboxes.hub;
    let spec =
        ProfileSpec::from_toml("name = \"p\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n")
            .unwrap();
    let ApplyOutcome::Created { profile_id, .. } = store.apply_profile(&spec, None).await.unwrap()
    else {
        panic!()
    };
    let pv = store.profile_version(&profile_id, None).await.unwrap();
    let a = stack
        .sandboxes
        .start("warm", &pv, None, &stack.sandboxes.settings.base_image)
        .await
        .unwrap();
    hub.wait_connected(&a.id, Duration::from_secs(30))
        .await
        .unwrap();
    let req = ExecRequest {
        argv: vec!["python3".into(), "-c".into(), TAKE_SANDBOXD.into()],
        ..Default::default()
    };
    let (out, err, code, _) = collect(hub.exec(&a.id, req).unwrap()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "environ denied",
            "mem denied",
            "maps denied",
            "fd denied",
            "ptrace denied",
            "tokens found 0",
        ],
        "{err}"
    );
    stack.sandboxes.release(&a, "test over").await;
}
