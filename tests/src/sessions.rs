//! Helpers for tests of `command`-agent sessions through the real server and CLI.

use std::time::{Duration, Instant};

use crate::{Engine, Install, Server};

/// An installation with an admin and the given profiles (name, agent command, extra TOML).
pub async fn install_on(engine: Engine, profiles: &[(&str, &str, &str)]) -> Install {
    let mut install = Install::new(engine).await;
    Server::configure(&mut install);
    install.ok(&["migrate"]);
    install.add_admin();
    for (name, command, extra) in profiles {
        let text = format!(
            "name = \"{name}\"\n[agent]\nkind = \"command\"\ncommand = '''{command}'''\n{extra}\n"
        );
        let path = install.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        install.ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    }
    install
}

pub fn run(install: &Install, profile: &str, prompt: &str) -> std::process::Output {
    install.run(&["run", "--repo", "acme/web", "--profile", profile, prompt])
}

pub fn detach(install: &Install, profile: &str, prompt: &str) -> String {
    install
        .ok(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            profile,
            "--detach",
            prompt,
        ])
        .trim()
        .to_string()
}

pub fn show(install: &Install, id: &str) -> serde_json::Value {
    install.json(&["session", "show", id])
}

pub fn output_of(shown: &serde_json::Value) -> String {
    shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "command_output")
        .map(|e| e["payload"]["text"].as_str().unwrap().to_string())
        .collect()
}

pub fn notes_of(shown: &serde_json::Value) -> Vec<String> {
    shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "note")
        .map(|e| e["payload"]["text"].as_str().unwrap().to_string())
        .collect()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn state_of(install: &Install, id: &str) -> String {
    show(install, id)["session"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether a session in `state` has ended.
pub fn has_ended(state: &str) -> bool {
    !["queued", "starting", "running", "finishing"].contains(&state)
}

/// Waits until the session has ended (panics after `timeout`); returns its last state.
pub fn wait_ended(install: &Install, id: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let state = state_of(install, id);
        if has_ended(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} did not end within {timeout:?} (state {state})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many warm sandboxes are ready to be claimed, as `airlock sandbox list` shows them.
pub fn ready_warm(install: &Install) -> usize {
    install
        .json(&["sandbox", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "warm" && s["state"] == "ready")
        .count()
}
