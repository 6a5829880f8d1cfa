//! A session that prints far more than anyone reads: it ends normally (no acknowledgement
//! deadlock between broker, hub and sandboxd), its stored output is bounded to the profile's
//! `limits.output_mb` with a note of what was left out, and the server's memory stays flat.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::sessions::{
    detach, has_ended, install_on, notes_of, output_of, show, state_of, wait_ended,
};
use airlock_tests::{admin_cookie, rss_mb, run_sampled, Engine, Server};

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
        if has_ended(&state) {
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
    let took = started.elapsed().as_secs_f64();

    // Its admin page shows a window of the latest output, with a way to the earlier part.
    let cookie = admin_cookie(&install).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", server.port);
    let mut page_bytes = 0;
    for _ in 0..2 {
        let page = client
            .get(format!("{base}/sessions/{id}"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(
            html.contains("the-very-end"),
            "the latest output is on the page"
        );
        assert!(
            html.contains("Earlier events"),
            "older output is a link away"
        );
        page_bytes = html.len();
        peak = peak.max(rss_mb(pid));
    }
    assert!(
        page_bytes < 3 * 1024 * 1024,
        "the page is {page_bytes} bytes"
    );
    // `session show`, text and JSON, streams: its own memory stays small too.
    let (text_bytes, _, text_rss) = run_sampled(&install, &["session", "show", &id]);
    let (json_bytes, _, json_rss) = run_sampled(&install, &["--json", "session", "show", &id]);
    peak = peak.max(rss_mb(pid));
    println!(
        "200 MB session: {took:.1} s, {} bytes stored, {dropped} truncated, server RSS peak \
         {peak} MB (after two page views of {page_bytes} bytes); session show: {text_bytes} \
         bytes in {text_rss} MB, --json {json_bytes} bytes in {json_rss} MB",
        output.len()
    );
    assert!(peak < 150, "the server's RSS peaked at {peak} MB");
    assert!(
        text_rss < 150 && json_rss < 150,
        "session show took {text_rss} / {json_rss} MB"
    );
}

/// Output is bounded per session too: a follow-up keeps only what is left of
/// `limits.session_output_mb` (at least 1 MB), and its note says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_at_most_its_session_output_across_turns() {
    // Each turn prints 3 MB; a turn may keep 2 MB, the session 3 MB.
    let install = install_on(
        Engine::Sqlite,
        &[(
            "chatty",
            "head -c 3000000 /dev/zero | tr '\\0' y | fold -w 99; echo turn-end",
            "[limits]\noutput_mb = 2\nsession_output_mb = 3\n",
        )],
    )
    .await;
    let _server = Server::start(&install);
    let id = detach(&install, "chatty", "first");
    let ended = |id: &str| {
        let state = wait_ended(&install, id, Duration::from_secs(120));
        assert_eq!(state, "succeeded");
    };
    ended(&id);
    let first = output_of(&show(&install, &id)).len();
    install.ok(&["run", "--session", &id, "--detach", "second"]);
    // The follow-up is queued at once; wait for the second turn's end.
    std::thread::sleep(Duration::from_millis(500));
    ended(&id);
    let shown = show(&install, &id);
    let both = output_of(&shown).len();
    let second = both - first;
    let mb = 1024 * 1024;
    assert!(
        (2 * mb - 64 * 1024..=2 * mb + 64 * 1024).contains(&first),
        "first turn kept {first}"
    );
    // 3 MB for the session, 2 MB of it used: the second turn keeps 1 MB.
    assert!(
        (mb - 64 * 1024..=mb + 64 * 1024).contains(&second),
        "second turn kept {second}"
    );
    let notes = notes_of(&shown);
    assert!(
        notes.iter().any(|n| n.contains("limits.output_mb = 2 MB")),
        "{notes:?}"
    );
    // What the first turn stored (head and tail are whole events, so a little under 2 MB
    // depending on how the output arrived in pieces), as the second turn's note says it.
    let stored_mb: f64 = notes
        .iter()
        .find_map(|n| {
            let rest = n.split("already stored ").nth(1)?;
            let (mb, tail) = rest.split_once(" MB")?;
            tail.starts_with(" of its limits.session_output_mb = 3 MB")
                .then(|| mb.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no note of the session's limit: {notes:?}"));
    assert!(
        (1.85..=2.05).contains(&stored_mb),
        "the note says {stored_mb} MB stored: {notes:?}"
    );
    assert!(output_of(&shown).trim_end().ends_with("turn-end"));
}

/// With `limits.output_log`, every byte is kept as a gzip file in the data directory (not in
/// the events table), whole across turns, for `airlock session log` and the admin page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_output_log_keeps_every_byte_outside_the_events() {
    let install = install_on(
        Engine::Sqlite,
        &[(
            "logged",
            "head -c 3000000 /dev/zero | tr '\\0' z | fold -w 99; echo \"end of $AIRLOCK_PROMPT\"",
            "[limits]\noutput_mb = 1\noutput_log = true\n",
        )],
    )
    .await;
    let server = Server::start(&install);
    let id = detach(&install, "logged", "turn-one");
    let ended = |id: &str| {
        let state = wait_ended(&install, id, Duration::from_secs(120));
        assert_eq!(state, "succeeded");
    };
    ended(&id);
    install.ok(&["run", "--session", &id, "--detach", "turn-two"]);
    std::thread::sleep(Duration::from_millis(500));
    ended(&id);
    // The events keep about 1 MB a turn; the log keeps both turns whole, in order.
    let stored = output_of(&show(&install, &id)).len();
    assert!(stored < 3 * 1024 * 1024, "{stored} bytes in the events");
    let one_turn = 3_000_000 + 3_000_000 / 99 + "end of turn-one\n".len();
    let log = install.ok(&["session", "log", &id]);
    let want = format!(
        "{0}end of turn-one\n{0}end of turn-two\n",
        // fold leaves the last, short line without its newline; echo follows on it.
        format!("{}\n", "z".repeat(99)).repeat(3_000_000 / 99) + &"z".repeat(3_000_000 % 99)
    );
    assert_eq!(log.len(), want.len(), "one turn is about {one_turn} bytes");
    assert!(log == want, "the log differs from what was printed");
    // The admin page links it and serves the same bytes, gzipped.
    let cookie = admin_cookie(&install).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{base}/sessions/{id}"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("/sessions/{id}/output.log.gz")));
    let gz = client
        .get(format!("{base}/sessions/{id}/output.log.gz"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(gz.status(), 200);
    assert_eq!(gz.headers()["content-type"], "application/gzip");
    let bytes = gz.bytes().await.unwrap();
    assert!(
        bytes.len() < want.len() / 10,
        "{} bytes: not compressed?",
        bytes.len()
    );
    let file = install.path().join(format!("var/logs/{id}.log.gz"));
    assert_eq!(std::fs::read(&file).unwrap(), bytes.to_vec());
    // Signed out, or a name that is not a session: nothing.
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/sessions/{id}/output.log.gz"))
        .send()
        .await
        .unwrap();
    assert!(anon.status().is_redirection(), "{}", anon.status());
    assert_eq!(anon.headers()["location"], "/login");
    let odd = client
        .get(format!(
            "{base}/sessions/..%2F..%2Fairlock.db/output.log.gz"
        ))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 404);
}
