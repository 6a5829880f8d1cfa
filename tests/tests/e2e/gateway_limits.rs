//! A sandbox cannot hold the gateway's connections: a connection that sends nothing, or a
//! request head that never ends, is closed after the header timeout; tunnels count against
//! the sandbox's connections for as long as they are open (also after the CONNECT is
//! answered), and a tunnel whose TLS handshake never comes is closed after the same time.
//! Each used to stay open for as long as the sandbox liked.

use std::time::{Duration, Instant};

use airlock_tests::inproc::InProcess;
use airlock_tests::upstream::Upstream;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use airlock_tests::closed_within as closed;

/// A tunnel through the gateway to `host`, answered 200 and left without a TLS handshake.
async fn tunnel(addr: &str, auth: &str, host: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut byte).await.unwrap(),
            1,
            "the tunnel closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_hold_the_gateways_connections() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    const PER_SANDBOX: usize = 5;
    let key = "sk-limits-0123456789abcdef";
    let upstream = Upstream::start(key, "unused-git-token").await;
    let gw = InProcess::start(
        &upstream.url(),
        &upstream.ca_file,
        key,
        airlock_gateway::GatewaySettings {
            limits: Some(airlock_serve::Limits {
                header_timeout: TIMEOUT,
                per_peer: PER_SANDBOX,
                ..airlock_serve::Limits::GATEWAY
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (userinfo, addr) = gw
        .proxy
        .trim_start_matches("http://")
        .split_once('@')
        .unwrap();
    let addr = addr.to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(userinfo);
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(gw.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(&gw.proxy).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let get = || async {
        client
            .get("https://api.bench.test/small")
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(get().await.unwrap(), 200, "the gateway works");

    // Silent, and a head that never ends: both closed after the timeout, not before.
    let started = Instant::now();
    let silent = TcpStream::connect(&addr).await.unwrap();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET http://api.bench.test/ HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    for (what, c) in [("silent", silent), ("slow", slow)] {
        let at = closed(c, 20)
            .await
            .unwrap_or_else(|| panic!("a {what} connection is open after 20 s"));
        let after = at - started;
        assert!(
            after >= TIMEOUT - Duration::from_millis(200) && after < TIMEOUT * 4,
            "the {what} connection closed after {after:?}"
        );
    }

    // Tunnels hold the sandbox's places: with all of them open, the next connection is
    // closed at once, unanswered.
    let mut tunnels = Vec::new();
    for _ in 0..PER_SANDBOX {
        tunnels.push(tunnel(&addr, &auth, "api.bench.test").await);
    }
    let opened = Instant::now();
    let extra = TcpStream::connect(&addr).await.unwrap();
    let at = closed(extra, 5)
        .await
        .expect("a connection beyond the bound stays open");
    assert!(at - opened < Duration::from_secs(1), "{:?}", at - opened);
    assert!(
        get().await.is_err(),
        "a request got through with every place taken"
    );

    // The tunnels never start TLS: closed after the timeout, and the sandbox's places come back.
    for t in tunnels {
        let at = closed(t, 20)
            .await
            .expect("a tunnel without TLS is open after 20 s");
        assert!(at - opened < TIMEOUT * 4, "{:?}", at - opened);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get().await.unwrap(), 200, "the gateway works again");
}
