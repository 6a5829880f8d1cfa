//! Benchmark (not a test): the gateway's cost, next to the same requests sent directly to the
//! upstream and through mitmproxy doing the same header injection, all in one run.
//!
//! - latency: small keep-alive HTTPS requests one after another on one connection, p50/p99;
//! - throughput: the same requests from 16 connections at once, requests/s;
//! - bulk: a 100 MB response body, MB/s, in nine rounds of one transfer each way (through the
//!   gateway it is scrubbed as it streams); the ratio is the median of the rounds' ratios.
//!
//!     scripts/bench-gateway        # installs mitmproxy from PyPI into target/, then runs this
//!
//! The gateway runs in-process on loopback with a real store; the "sandbox" is this program,
//! registered at 127.0.0.1 with a real egress token, so every request takes the gateway's
//! whole path: token check, route match, guard, injection, TLS both ways, scrubbing, audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::inproc::InProcess;
use airlock_tests::upstream::Upstream;

const BULK: usize = 100 * 1024 * 1024;
const BULK_RUNS: usize = 9;

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
}

async fn measure(name: &str, client: reqwest::Client, base: &str, seconds: u64) -> Figures {
    let small = format!("{base}/small");
    // Warm up: connections, TLS sessions, leaf certificates, caches.
    for _ in 0..200 {
        let r = client.get(&small).send().await.expect("warm-up request");
        assert_eq!(
            r.status(),
            200,
            "{name}: {}",
            r.text().await.unwrap_or_default()
        );
        r.bytes().await.unwrap();
    }
    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let t = Instant::now();
        let r = client.get(&small).send().await.unwrap();
        r.bytes().await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // `seconds = 0` measures the bulk transfers only (for a profiler): no latency figures.
    let at = |q: usize| lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1)));
    let (p50, p99) = (*at(50).unwrap_or(&f64::NAN), *at(99).unwrap_or(&f64::NAN));

    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, small, done) = (client.clone(), small.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let r = client.get(&small).send().await.unwrap();
                    r.bytes().await.unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rps =
        done.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    println!(
        "{name:<28} p50 {p50:>6.3} ms   p99 {p99:>6.3} ms   {rps:>8.0} req/s   (n = {})",
        lat.len()
    );
    Figures {
        p50_ms: p50,
        p99_ms: p99,
        rps,
    }
}

/// One transfer of the 100 MB body: MB/s.
async fn bulk(name: &str, client: &reqwest::Client, base: &str) -> f64 {
    let t = Instant::now();
    let mut r = client
        .get(format!("{base}/blob?size={BULK}"))
        .send()
        .await
        .unwrap();
    let mut n = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len();
    }
    assert_eq!(n, BULK, "{name}: the whole body arrived");
    BULK as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn client(ca_pem: &str, proxy: Option<&str>, bearer: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .http1_only()
        .pool_max_idle_per_host(64)
        .no_proxy();
    if let Some(p) = proxy {
        b = b.proxy(reqwest::Proxy::all(p).unwrap());
    }
    if let Some(key) = bearer {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        b = b.default_headers(h);
    }
    b.build().unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let key = "sk-bench-0123456789abcdef";
    let upstream = Upstream::start(key, "unused-git-token").await;

    let mut gw = InProcess::start(
        &upstream.url(),
        &upstream.ca_file,
        key,
        airlock_gateway::GatewaySettings::default(),
    )
    .await?;
    let store = gw.store.clone();
    let airlock_ca = gw.ca_pem.clone();
    let proxy = gw.proxy.clone();
    let dir = tempfile::tempdir()?;

    // mitmproxy, injecting the same header with a two-line addon.
    let mitm_dir = dir.path().join("mitm");
    std::fs::create_dir_all(&mitm_dir)?;
    let addon = mitm_dir.join("inject.py");
    std::fs::write(
        &addon,
        format!("class Inject:\n    def request(self, flow):\n        flow.request.headers['authorization'] = 'Bearer {key}'\n\naddons = [Inject()]\n"),
    )?;
    // For a profiler: AIRLOCK_BENCH_ONLY=gateway (or =direct) measures that way alone.
    if let Ok(only) = std::env::var("AIRLOCK_BENCH_ONLY") {
        let (c, base) = match only.as_str() {
            "gateway" => (
                client(&airlock_ca, Some(&proxy), None),
                "https://api.bench.test".to_string(),
            ),
            "direct" => (client(&upstream.ca_pem, None, Some(key)), upstream.url()),
            other => anyhow::bail!("AIRLOCK_BENCH_ONLY={other}: say gateway or direct"),
        };
        let figures = measure(&only, c.clone(), &base, seconds).await;
        let mut rates = Vec::new();
        for _ in 0..BULK_RUNS {
            rates.push(bulk(&only, &c, &base).await);
        }
        println!(
            "{only}: {:.3} ms p50, {:.0} MB/s",
            figures.p50_ms,
            median(rates)
        );
        return Ok(());
    }
    let mitm_port = airlock_tests::free_port();
    let mitmdump = std::env::var("MITMDUMP").unwrap_or_else(|_| "mitmdump".into());
    let mut mitm = std::process::Command::new(&mitmdump)
        .args([
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            &mitm_port.to_string(),
            "--set",
            &format!("confdir={}", mitm_dir.display()),
            "--set",
            &format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream.ca_file.display()
            ),
            "--set",
            "stream_large_bodies=1m",
            "-s",
            addon.to_str().unwrap(),
        ])
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {mitmdump} (run scripts/bench-gateway): {e}"))?;
    let mitm_ca_path = mitm_dir.join("mitmproxy-ca-cert.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(mitm_ca_path.exists() && std::net::TcpStream::connect(("127.0.0.1", mitm_port)).is_ok())
    {
        anyhow::ensure!(Instant::now() < deadline, "mitmproxy did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mitm_ca = std::fs::read_to_string(&mitm_ca_path)?;

    println!(
        "small GET over keep-alive HTTPS (HTTP/1.1), {seconds} s each; 16 connections for req/s; a {} MB body for MB/s",
        BULK / 1024 / 1024
    );
    let ways = [
        (
            "direct (client sends key)",
            client(&upstream.ca_pem, None, Some(key)),
            upstream.url(),
        ),
        (
            "Airlock gateway (injects)",
            client(&airlock_ca, Some(&proxy), None),
            "https://api.bench.test".to_string(),
        ),
        (
            "mitmproxy (injects)",
            client(
                &mitm_ca,
                Some(&format!("http://127.0.0.1:{mitm_port}")),
                None,
            ),
            upstream.url(),
        ),
    ];
    let mut figures = Vec::new();
    for (name, c, base) in &ways {
        figures.push(measure(name, c.clone(), base, seconds).await);
    }
    let [direct, through, mitm_figs] = <[Figures; 3]>::try_from(figures).ok().unwrap();
    // The bulk transfers in rounds, one of each way per round, so that all three see the
    // same machine: on a shared two-core machine one transfer alone varies twofold from
    // minute to minute, and measuring all of one way first makes the ratio a matter of luck.
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut ratios = Vec::new();
    for _ in 0..BULK_RUNS {
        for (i, (name, c, base)) in ways.iter().enumerate() {
            rates[i].push(bulk(name, c, base).await);
        }
        ratios.push(rates[1].last().unwrap() / rates[0].last().unwrap());
    }
    let _ = mitm.kill();
    let [d_mb, g_mb, m_mb] = rates.map(median);
    println!(
        "100 MB body, median of {BULK_RUNS} rounds: direct {d_mb:.1} MB/s, gateway {g_mb:.1} MB/s, mitmproxy {m_mb:.1} MB/s"
    );
    println!();
    println!(
        "gateway adds {:.3} ms at p50 ({:.3} ms at p99) over direct; goal: at most 0.3 ms",
        through.p50_ms - direct.p50_ms,
        through.p99_ms - direct.p99_ms
    );
    println!(
        "gateway req/s = {:.1}x mitmproxy's (goal: at least 10x); {:.2}x direct",
        through.rps / mitm_figs.rps,
        through.rps / direct.rps
    );
    println!(
        "bulk: gateway {g_mb:.0} MB/s = {:.2}x direct (the median of the rounds' ratios; goal: at least 0.6x), {:.1}x mitmproxy",
        median(ratios),
        g_mb / m_mb
    );
    // Stop the gateway (it writes what waits), then show the audit log kept every request.
    gw.stop().await;
    let verdict = store.verify_audit().await?;
    println!(
        "audit log: {} rows, chain intact: {}",
        verdict.rows_checked,
        verdict.is_intact()
    );
    Ok(())
}
