//! Abusive connections from outside: a request head that never ends (slow loris), or a
//! connection that sends nothing, is closed after the server's header timeout; connections
//! beyond `server.max_connections` are closed at once; the server keeps answering everyone
//! else.

use std::time::{Duration, Instant};

use airlock_tests::{Engine, Install, Server};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_and_the_server_keeps_answering() {
    const MAX: usize = 64;
    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install.env("AIRLOCK_SERVER_MAX_CONNECTIONS", &MAX.to_string());
    install.ok(&["migrate"]);
    install.add_admin();
    let server = Server::start(&install);
    let addr = format!("127.0.0.1:{}", server.port);
    // One request on a new connection: its status, or the error when it gets no answer.
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    // Serving (Server::start returns once the port takes connections, which the kernel
    // does before `up` has finished setting up).
    let r = get("/healthz").await.unwrap();
    assert!(r.is_success() || r.as_u16() == 503, "{r}");
    // Up to server.max_connections, opened at once: the next one is closed at once,
    // unanswered; once they close, the server answers again.
    let mut full = Vec::new();
    for _ in 0..MAX {
        full.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let at = Instant::now();
    assert!(
        closed(extra, 5).await,
        "a connection beyond the bound stays open"
    );
    assert!(at.elapsed() < Duration::from_secs(2), "{:?}", at.elapsed());
    assert!(
        get("/login").await.is_err(),
        "a request got through with every connection taken"
    );
    drop(full);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get("/login").await.unwrap();
    assert_eq!(r, 200);

    // Fifty connections that start a request and never finish its head (none of them used
    // to be closed in 40 s), and ten that send nothing at all (nor were they).
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"POST /github/webhook HTTP/1.1\r\nHost: airlock\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(c);
    }
    for _ in 0..10 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Meanwhile, the server answers others.
    let r = get("/login").await.unwrap();
    assert_eq!(r, 200);
    let mut closed_after = Vec::new();
    for c in held {
        assert!(
            closed(c, 30).await,
            "a slow or silent connection was still open after 30 s"
        );
        closed_after.push(started.elapsed());
    }
    let last = closed_after.iter().max().unwrap();
    assert!(
        *last < Duration::from_secs(20),
        "slow connections closed after {last:?}"
    );
    eprintln!("60 slow-loris and silent connections closed within {last:?}");
    let r = get("/login").await.unwrap();
    assert_eq!(r, 200);
    drop(server);
}

/// Whether the server closes `c` within `secs`.
async fn closed(c: tokio::net::TcpStream, secs: u64) -> bool {
    airlock_tests::closed_within(c, secs).await.is_some()
}

/// Sixteen unsigned 24 MB posts at once used to take the server from ~40 MB to ~400 MB:
/// every body was read whole before its signature was checked. Unverified bodies now share a
/// bounded room (32 MB) and are held in the pieces they arrived in until verified; the posts
/// are refused, and the server stays small (here: 28 MB idle, 86 MB at the peak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_large_posts_at_once_do_not_grow_the_server() {
    let mut stack = airlock_tests::stack::Stack::new(
        Engine::Sqlite,
        vec![],
        "acme/web",
        &[("README", "hi\n")],
        |_| {},
    )
    .await;
    stack.start();
    let pid = stack.server.as_ref().unwrap().child.id();
    let idle = airlock_tests::rss_mb(pid);
    let url = format!("{}/github/webhook", stack.url());
    let (peak, statuses) = airlock_tests::unsigned_flood(&url, pid, 16, 24 << 20).await;
    eprintln!("RSS idle {idle} MB, peak under 16 unsigned 24 MB posts {peak} MB; {statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, Ok(401) | Ok(503) | Err(_))),
        "{statuses:?}"
    );
    assert!(
        peak < idle + 90,
        "the server grew from {idle} MB to {peak} MB"
    );
    // A real delivery still gets through afterwards.
    let ping = serde_json::to_vec(&airlock_tests::github::fixture("ping.event")).unwrap();
    let (status, _) = stack.github_webhook("ping", "d-ping", &ping, None).await;
    assert_eq!(status, 200);
}

/// Unsigned bodies sent slowly to every inbound endpoint (a head announcing 1 MB, 900 KB of
/// it, then nothing) used to be held whole each, as many as connections allowed: 160 of them
/// held about 144 MB. Every endpoint now reads into the one shared room for unverified bodies
/// (32 MB); the rest wait for room and are answered 503, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_unsigned_bodies_on_every_endpoint_share_one_bounded_room() {
    use airlock_tests::chats::{DiscordSide, SlackSide};
    let slack = SlackSide::start().await;
    let discord = DiscordSide::start().await;
    let mut stack = airlock_tests::stack::Stack::new(
        Engine::Sqlite,
        vec![],
        "acme/web",
        &[("README", "hi\n")],
        |i| {
            slack.configure(i);
            discord.configure(i);
        },
    )
    .await;
    SlackSide::credentials(&stack.install);
    DiscordSide::credentials(&stack.install);
    stack.start();
    discord.connected().await;
    let pid = stack.server.as_ref().unwrap().child.id();
    let idle = airlock_tests::rss_mb(pid);
    let addr = stack.url().trim_start_matches("http://").to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut held = Vec::new();
    for path in [
        "/slack/commands",
        "/slack/events",
        "/discord/interactions",
        "/hooks/no-such-trigger",
    ] {
        for _ in 0..40 {
            let (addr, mut stop) = (addr.clone(), stop_rx.clone());
            held.push(tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: airlock\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                );
                let _ = c.write_all(head.as_bytes()).await;
                let _ = c.write_all(&vec![b'a'; 900_000]).await;
                let _ = stop.changed().await;
            }));
        }
    }
    let mut peak = idle;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(airlock_tests::rss_mb(pid));
    }
    eprintln!("RSS idle {idle} MB, peak under 160 stalled unsigned 1 MB bodies {peak} MB");
    // Meanwhile the server answers.
    let r = reqwest::get(format!("{}/login", stack.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        peak < idle + 70,
        "the server grew from {idle} MB to {peak} MB"
    );
    let _ = stop_tx.send(true);
    for h in held {
        h.await.unwrap();
    }
}
