//! Sandboxes against a real Docker engine, through the real server (`airlock up`) and CLI:
//! the network wall, the limits, snapshots, warm starts, and recovery after `kill -9`.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::sessions::{
    detach, install_on, notes_of, output_of, ready_warm, run, show, state_of, wait_for,
};
use airlock_tests::{stderr, stdout, Engine, Install, Server};

async fn install_with(profiles: &[(&str, &str, &str)]) -> Install {
    install_on(Engine::Sqlite, profiles).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_inside_a_sandbox_only_the_allowed_host_ports_answer() {
    let install = install_with(&[
        ("peer", "python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 & echo serving; sleep 60", ""),
        ("probe", r#"probe() { if timeout 3 bash -c "echo > /dev/tcp/$2/$3" 2>/dev/null; then echo "$1: reached"; else echo "$1: blocked"; fi; }
probe gateway-port "$HOST" "$GATEWAY_PORT"
probe host-other-port "$HOST" "$HOST_PORT"
probe host-main-address "$MAIN_IP" "$HOST_PORT"
probe other-sandbox "$PEER" 8000
probe outside 1.1.1.1 80
if getent hosts example.com >/dev/null 2>&1; then echo "dns: resolved"; else echo "dns: blocked"; fi
timeout 4 getent hosts "$PEER_NAME" >/dev/null 2>&1; echo "dns-peer: exit $?"
timeout 4 getent hosts example.com >/dev/null 2>&1; echo "dns-outside: exit $?"
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
q = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
try:
    s.sendto(q, ("127.0.0.11", 53))
    s.recv(512)
    print("dns-direct: answered")
except (ConnectionRefusedError, PermissionError):
    print("dns-direct: refused")
except socket.timeout:
    print("dns-direct: timed out")
'

if [ -e /var/run/docker.sock ] || [ -e /run/docker.sock ]; then echo "docker-socket: present"; else echo "docker-socket: absent"; fi
echo "uid: $(id -u)"
grep -E '^CapEff' /proc/self/status
grep -E '^NoNewPrivs' /proc/self/status
touch /etc/should-not-write 2>/dev/null && echo "etc: writable" || echo "etc: read-only to the agent"
"#, ""),
    ])
    .await;
    let server = Server::start(&install);
    let host = server.host_address();
    // The gateway listens on the bridge address (the one host address a sandbox may reach:
    // the control that shows the probe works); another listener on every address.
    let other = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let host_port = other.local_addr().unwrap().port();
    let main_ip = String::from_utf8(
        std::process::Command::new("hostname")
            .arg("-I")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .split_whitespace()
    .next()
    .unwrap_or("127.0.0.1")
    .to_string();
    std::thread::spawn(move || for _ in other.incoming() {});

    let peer = detach(&install, "peer", "serve");
    wait_for("the peer sandbox to serve", Duration::from_secs(60), || {
        output_of(&show(&install, &peer)).contains("serving")
    });
    let sandboxes = install.json(&["sandbox", "list"]);
    let peer_row = sandboxes
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == peer.as_str())
        .expect("the peer sandbox is listed");
    let peer_ip = peer_row["address"]
        .as_str()
        .expect("the peer sandbox has an address")
        .to_string();
    // Docker names the container after the sandbox, and its DNS would answer for that name.
    let peer_name = format!(
        "airlock-{}",
        peer_row["id"].as_str().unwrap().replace('_', "-")
    );

    // The probe reads its targets from the profile's environment.
    let probe_profile = format!(
        "name = \"probe\"\n[agent]\nkind = \"command\"\ncommand = '''{}'''\n[env]\nHOST = \"{host}\"\nGATEWAY_PORT = \"{}\"\nHOST_PORT = \"{host_port}\"\nMAIN_IP = \"{main_ip}\"\nPEER = \"{peer_ip}\"\nPEER_NAME = \"{peer_name}\"\n",
        std::fs::read_to_string(install.path().join("probe.toml"))
            .unwrap()
            .split("'''")
            .nth(1)
            .unwrap(),
        server.gateway_port
    );
    std::fs::write(install.path().join("probe2.toml"), probe_profile).unwrap();
    install.ok(&[
        "profile",
        "apply",
        "-f",
        install.path().join("probe2.toml").to_str().unwrap(),
    ]);
    let out = run(&install, "probe", "probe");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for line in [
        "gateway-port: reached",
        "host-other-port: blocked",
        "host-main-address: blocked",
        "other-sandbox: blocked",
        "outside: blocked",
        "dns: blocked",
        // Not found at once (exit 2), not a timeout (124): there is no resolver at all, for a
        // neighbour's name or any other.
        "dns-peer: exit 2",
        "dns-outside: exit 2",
        "dns-direct: refused",
        "docker-socket: absent",
        "uid: 1000",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "etc: read-only to the agent",
    ] {
        assert!(
            text.contains(line),
            "expected `{line}` in the probe's output:\n{text}"
        );
    }
    install.ok(&["session", "cancel", &peer]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_fork_bombs_memory_hogs_and_long_runs() {
    let install = install_with(&[
        (
            "forks",
            r#"python3 -c '
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        n += 1
except OSError as e:
    print("fork failed after", n, "processes:", e.strerror, flush=True)
'"#,
            "[limits]\npids = 64",
        ),
        (
            "hog",
            "python3 -c 'x = bytearray(600 * 1024 * 1024); print(len(x))'",
            "[limits]\nmemory_mb = 128",
        ),
        (
            "slow",
            "echo started; sleep 120",
            "[limits]\nwall_clock_secs = 10",
        ),
        (
            "quiet",
            "echo started; sleep 120",
            "[limits]\nwall_clock_secs = 600\nidle_secs = 10",
        ),
    ])
    .await;
    let server = Server::start(&install);
    // Runs meanwhile: a command that goes silent.
    let quiet = detach(&install, "quiet", "say nothing");

    let out = run(&install, "forks", "fork");
    let text = stdout(&out);
    let n: u64 = text
        .split("fork failed after ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork bomb was not stopped:\n{text}\n{}", stderr(&out)));
    assert!(n < 64, "{n} processes started under a limit of 64");

    let out = run(&install, "hog", "eat memory");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("failed") && err.contains("ran out of memory"),
        "{err}"
    );

    let started = Instant::now();
    let out = run(&install, "slow", "take your time");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("timed_out")
            && err.contains("ran longer than the wall-clock limit of 10 s")
            && err.contains("limits.wall_clock_secs"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(stdout(&out).contains("started"));

    wait_for("the silent session to end", Duration::from_secs(60), || {
        state_of(&install, &quiet) == "timed_out"
    });
    let reason = show(&install, &quiet)["session"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("produced no output for 10 s") && reason.contains("limits.idle_secs"),
        "{reason}"
    );
    // Nothing is left running.
    wait_for("sandboxes to be removed", Duration::from_secs(10), || {
        server.containers().is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_start_from_the_snapshot_and_follow_ups_resume_the_files() {
    let install = install_with(&[(
        "prepared",
        r#"cat /home/agent/setup-marker; bash /workspace/tools/hello.sh; echo "$AIRLOCK_PROMPT" >> notes.txt; echo "--"; cat notes.txt"#,
        r#"[sandbox]
setup = [
  "date +%s%N > /home/agent/setup-marker",
  "mkdir -p /workspace/tools && echo 'echo the tool works' > /workspace/tools/hello.sh",
]"#,
    )])
    .await;
    let built = install.run(&["snapshot", "build", "prepared"]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(stdout(&built).contains("Built airlock-snapshot/prepared:1"));
    let marker = |text: &str| text.lines().next().unwrap_or("").to_string();

    let _server = Server::start(&install);
    let first = detach(&install, "prepared", "first note");
    wait_for("the first session", Duration::from_secs(60), || {
        state_of(&install, &first) == "succeeded"
    });
    let shown = show(&install, &first);
    let text = output_of(&shown);
    assert!(text.contains("the tool works"), "{text}");
    assert!(
        notes_of(&shown)
            .iter()
            .any(|n| n.contains("started a sandbox from airlock-snapshot/prepared:1")),
        "{:?}",
        notes_of(&shown)
    );
    let out = run(&install, "prepared", "another");
    assert!(out.status.success());
    assert_eq!(
        marker(&stdout(&out)),
        marker(&text),
        "setup ran again instead of starting from the snapshot"
    );

    // A follow-up resumes the first session's files.
    let out = install.run(&["run", "--session", &first, "second note"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let notes: Vec<&str> = text.split("--\n").nth(1).unwrap().lines().collect();
    assert_eq!(notes, ["first note", "second note"], "{text}");

    let list = install.ok(&["snapshot", "list"]);
    assert!(
        list.contains("airlock-snapshot/prepared:1") && list.contains("session"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_sandbox_is_claimed_and_refilled() {
    warm_pool(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_server_continues_live_sessions_and_removes_what_vanished() {
    kill_9(Engine::Sqlite).await
}

/// The claim, lease and recovery queries on PostgreSQL.
mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_pool_sandbox_is_claimed_and_refilled() {
        warm_pool(Engine::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_kill_9_the_server_continues_live_sessions_and_removes_what_vanished() {
        kill_9(Engine::Postgres).await
    }
}

async fn warm_pool(engine: Engine) {
    let install = install_on(
        engine,
        &[(
            "warm",
            "echo hello from $AIRLOCK_SESSION",
            "[sandbox]\nwarm_pool = 1",
        )],
    )
    .await;
    let _server = Server::start(&install);
    wait_for("a warm sandbox", Duration::from_secs(60), || {
        ready_warm(&install) == 1
    });
    let id = detach(&install, "warm", "hi");
    wait_for("the session", Duration::from_secs(30), || {
        state_of(&install, &id) == "succeeded"
    });
    let shown = show(&install, &id);
    assert!(
        notes_of(&shown)
            .iter()
            .any(|n| n.starts_with("claimed a warm sandbox")),
        "{:?}",
        notes_of(&shown)
    );
    // Bound at claim time: the session's own id reached the agent's environment.
    assert!(output_of(&shown).contains(&format!("hello from {id}")));
    wait_for("the pool to refill", Duration::from_secs(60), || {
        ready_warm(&install) == 1
    });
}

async fn kill_9(engine: Engine) {
    let install = install_on(
        engine,
        &[(
            "ticks",
            "for i in $(seq 1 10); do echo tick $i; sleep 1; done",
            "",
        )],
    )
    .await;
    let mut server = Server::start(&install);
    let keep = detach(&install, "ticks", "count");
    let lose = detach(&install, "ticks", "count too");
    wait_for("both sessions to tick", Duration::from_secs(60), || {
        output_of(&show(&install, &keep)).contains("tick 2")
            && output_of(&show(&install, &lose)).contains("tick 2")
    });
    server.kill_hard();
    // While the server is down, one sandbox disappears for good.

    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker rm -f $(docker ps -q --filter label=org.airlock.session={lose}) >/dev/null"
        ))
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::start(&install);

    wait_for(
        "the surviving session to end",
        Duration::from_secs(60),
        || state_of(&install, &keep) == "succeeded",
    );
    let text = output_of(&show(&install, &keep));
    for i in 1..=10 {
        assert_eq!(
            text.matches(&format!("tick {i}\n")).count(),
            1,
            "tick {i} lost or repeated across the restart:\n{text}"
        );
    }
    wait_for("the lost session to fail", Duration::from_secs(30), || {
        state_of(&install, &lose) == "failed"
    });
    let reason = show(&install, &lose)["session"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("vanished"), "{reason}");
    wait_for("no container to remain", Duration::from_secs(15), || {
        server.containers().is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_starting_leaves_a_running_cli_snapshot_build_alone() {
    let install = install_with(&[(
        "slowsetup",
        "cat /home/agent/done",
        "[sandbox]\nsetup = [\"sleep 6 && echo built > /home/agent/done\"]",
    )])
    .await;
    let mut build = std::process::Command::new(airlock_tests::airlock_bin());
    build
        .args(["snapshot", "build", "slowsetup"])
        .current_dir(install.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("AIRLOCK_LOG", "warn");
    for (k, v) in install.env_pairs() {
        build.env(k, v);
    }
    let build = build
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Start the server while the build sandbox runs its setup.
    wait_for("the build sandbox", Duration::from_secs(30), || {
        install
            .json(&["sandbox", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["role"] == "build")
    });
    let _server = Server::start(&install);
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build was disturbed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&install, "slowsetup", "check");
    assert_eq!(stdout(&out).trim(), "built");
}

/// `airlock down` removes what `up` set up on the engine (the warm sandbox, the network, its
/// firewall chain) and keeps the data; refused while the server runs; `up` afterwards sets
/// it all up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_removes_what_up_set_up_and_keeps_the_data() {
    let install = install_on(
        Engine::Sqlite,
        &[("warm", "echo hello", "[sandbox]\nwarm_pool = 1")],
    )
    .await;
    let mut server = Server::start(&install);
    wait_for("a warm sandbox", Duration::from_secs(60), || {
        ready_warm(&install) == 1
    });
    let network = server.network.clone();
    let chain = format!("AIRLOCK-{network}");
    let exists = |what: &[&str]| {
        std::process::Command::new(what[0])
            .args(&what[1..])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(server.containers().len(), 1);
    assert!(exists(&["docker", "network", "inspect", &network]));
    assert!(exists(&["iptables", "-w", "-n", "-L", &chain]));

    let refused = install.run(&["down"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("stop `airlock up` first"),
        "{}",
        stderr(&refused)
    );
    let containers = server.containers();
    server.kill_hard();
    let out = install.ok(&["down"]);
    assert!(
        out.starts_with("Removed 1 sandbox container(s), the network ")
            && out.contains("Kept the database"),
        "{out}"
    );
    assert!(
        !exists(&["docker", "network", "inspect", &network]),
        "the network is still there"
    );
    assert!(
        !exists(&["iptables", "-w", "-n", "-L", &chain]),
        "the firewall chain is still there"
    );
    for c in containers {
        assert!(
            !exists(&["docker", "inspect", &c]),
            "container {c} is still there"
        );
    }
    assert!(
        !exists(&["iptables", "-w", "-C", "INPUT", "-i", &network, "-j", &chain]),
        "the INPUT jump is still there"
    );
    // The data stays: the profile and the audit record of the down.
    assert!(install.ok(&["profile", "list"]).contains("warm"));
    let audit = install.ok(&["audit", "tail", "-n", "1"]);
    assert!(audit.contains("deployment.down"), "{audit}");
    // Again: nothing to do, no error.
    assert!(install
        .ok(&["down"])
        .starts_with("Removed 0 sandbox container(s)."));
    // And up sets it up again.
    let _server = Server::start(&install);
    wait_for("a warm sandbox again", Duration::from_secs(60), || {
        ready_warm(&install) == 1
    });
    assert!(exists(&["iptables", "-w", "-n", "-L", &chain]));
}
