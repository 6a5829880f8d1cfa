//! A session that prints far more than anyone reads: it ends normally (no acknowledgement
//! deadlock between broker, hub and sandboxd), its stored output is bounded to the profile's
//! `limits.output_mb` with a note of what was left out, and the server's memory stays flat.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::sessions::{detach, install_on, notes_of, output_of, show, state_of};
use airlock_tests::{Engine, Server};

/// The resident memory of a process, in MB.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_printing_200_mb_ends_normally_with_its_output_bounded() {
    // 200 MB of 100-byte lines; then a last line to find in the kept tail.
    let install = install_on(
        Engine::Sqlite,
        &[(
            "loud",
            "head -c 200000000 /dev/zero | tr '\\0' x | fold -w 99; echo the-very-end",
            "[limits]\noutput_mb = 8\nidle_secs = 60\n",
        )],
    )
    .await;
    let server = Server::start(&install);
    let pid = server.child.id();
    let id = detach(&install, "loud", "print a lot");
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_mb(pid));
        let state = state_of(&install, &id);
        if !["queued", "starting", "running", "finishing"].contains(&state.as_str()) {
            assert_eq!(state, "succeeded", "{:#}", show(&install, &id)["session"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the session did not end within 300 s (state {state})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = show(&install, &id);
    peak = peak.max(rss_mb(pid));
    let output = output_of(&shown);
    // 4 MB of head and 4 MB of tail (within one event's piece), not 200 MB.
    assert!(
        output.len() <= 8 * 1024 * 1024 + 64 * 1024,
        "{} bytes of output stored",
        output.len()
    );
    assert!(
        output.len() >= 8 * 1024 * 1024 - 64 * 1024,
        "{}",
        output.len()
    );
    assert!(output.starts_with(&"x".repeat(99)), "the head is kept");
    assert!(
        output.trim_end().ends_with("the-very-end"),
        "the tail is kept"
    );
    let notes = notes_of(&shown);
    let note = notes
        .iter()
        .find(|n| n.contains("of output truncated here"))
        .unwrap_or_else(|| panic!("no truncation note: {notes:?}"));
    assert!(note.contains("limits.output_mb = 8 MB"), "{note}");
    let dropped = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["payload"]["truncated_bytes"].as_u64())
        .expect("the note says how many bytes were left out");
    assert_eq!(
        dropped as usize + output.len(),
        200_000_000 + 200_000_000 / 99 + "the-very-end\n".len(),
        "head + tail + truncated = everything printed"
    );
    println!(
        "200 MB session: {:.1} s, {} bytes stored, {dropped} truncated, server RSS peak {peak} MB",
        started.elapsed().as_secs_f64(),
        output.len()
    );
    assert!(peak < 150, "the server's RSS peaked at {peak} MB");
}
