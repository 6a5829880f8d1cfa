//! Local repositories over git smart HTTP (`airlock repo add NAME PATH`). Sandboxes never
//! mount the host: they clone `https://git.airlock.internal/NAME.git` through the gateway,
//! whose route for it (added to the plan, `airlock_core::plan`) sends the request here with
//! the `airlock-local-git` credential injected. This endpoint answers nothing without that
//! credential, serves only registered local repositories, and only the three smart-HTTP
//! requests (`info/refs`, `git-upload-pack`, `git-receive-pack`), through `git http-backend`
//! run as the repository's owner. The gateway has checked the push (the session's branch
//! only); the repository refuses deletes and non-fast-forward updates besides.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_core::domain::CredentialKind;
use airlock_core::plan::LOCAL_GIT_CREDENTIAL;
use airlock_core::secrets::SecretValue;
use airlock_core::store::RepoLocation;
use airlock_core::{Store, StoreError};
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use futures_util::StreamExt as _;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest a git process may run for one request (a clone of a large repository included).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(600);
/// The most a push may send.
const MAX_PUSH_BYTES: u64 = 2 << 30;
/// The most the CGI header of `git http-backend` may be.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Where the gateway reaches this endpoint: the server's own address (loopback when it
/// listens on every address), under `/git`.
pub fn upstream(served_at: SocketAddr) -> String {
    let ip = match served_at.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/git", SocketAddr::new(ip, served_at.port()))
}

/// Makes the credential the gateway injects on requests here, unless it is stored already.
pub async fn ensure_credential(store: &Store) -> Result<(), StoreError> {
    if store.credential_info(LOCAL_GIT_CREDENTIAL).await?.is_some() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    store
        .set_credential(
            LOCAL_GIT_CREDENTIAL,
            CredentialKind::Generic,
            &SecretValue::new(value.into_bytes()),
            Some("system"),
        )
        .await
        .map(|_| ())
}

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/git/{*rest}", get(serve).post(serve))
        .with_state(store)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("Airlock's git endpoint: {why}\n")).into_response()
}

/// Whether the request carries the credential the gateway injects.
async fn authorized(store: &Store, headers: &HeaderMap) -> Result<bool, StoreError> {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
    else {
        return Ok(false);
    };
    let Some(password) = given
        .iter()
        .position(|b| *b == b':')
        .map(|i| &given[i + 1..])
    else {
        return Ok(false);
    };
    let expected = store.reveal_credential(LOCAL_GIT_CREDENTIAL).await?;
    Ok(bool::from(password.ct_eq(expected.expose().trim_ascii())))
}

/// The repository name and the smart-HTTP request of a path `NAME.git/<request>`.
fn parse(rest: &str) -> Option<(&str, &'static str)> {
    const REQUESTS: [&str; 3] = ["/info/refs", "/git-upload-pack", "/git-receive-pack"];
    let request = REQUESTS.into_iter().find(|r| rest.ends_with(r))?;
    let name = rest[..rest.len() - request.len()].strip_suffix(".git")?;
    airlock_core::domain::is_repo_ref(name).then_some((name, request))
}

async fn serve(
    State(store): State<Store>,
    method: Method,
    UrlPath(rest): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match authorized(&store, &headers).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "it answers Airlock's gateway only (sandboxes clone through it)",
            )
        }
        Err(e) => {
            tracing::warn!("the local git endpoint cannot read its credential: {e}");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "its credential is not set up",
            );
        }
    }
    let Some((name, request)) = parse(&rest) else {
        return refuse(StatusCode::NOT_FOUND, "not a smart-HTTP git request");
    };
    let query = query.unwrap_or_default();
    let allowed = match request {
        "/info/refs" => {
            method == Method::GET
                && (query == "service=git-upload-pack" || query == "service=git-receive-pack")
        }
        _ => method == Method::POST && query.is_empty(),
    };
    if !allowed {
        return refuse(StatusCode::BAD_REQUEST, "only smart HTTP is served");
    }
    let path = match store.repo(name).await {
        Ok(Some(r)) => match r.location {
            RepoLocation::Local { path } => path,
            RepoLocation::Remote { .. } => {
                return refuse(StatusCode::NOT_FOUND, "that repository is not a local one")
            }
        },
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such repository is registered"),
        Err(e) => {
            tracing::warn!("the local git endpoint cannot read the repositories: {e}");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read");
        }
    };
    match backend(Path::new(&path), &method, request, &query, &headers, body).await {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(repo = name, "the local git endpoint failed: {why}");
            refuse(StatusCode::BAD_GATEWAY, &why)
        }
    }
}

/// Runs `git http-backend` for one request on the repository at `path` and streams its
/// answer.
async fn backend(
    path: &Path,
    method: &Method,
    request: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("the repository at {} cannot be read: {e}", path.display()))?;
    let (Some(root), Some(base)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} is not a repository path", path.display()));
    };
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // As the repository's owner, so that what a push writes belongs to them.
    let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let mut cmd = if as_root && meta.uid() != 0 {
        let mut c = tokio::process::Command::new("setpriv");
        c.arg(format!("--reuid={}", meta.uid()))
            .arg(format!("--regid={}", meta.gid()))
            .arg("--clear-groups")
            .arg("git");
        c
    } else {
        tokio::process::Command::new("git")
    };
    let config = [
        ("safe.directory", path.display().to_string()),
        ("http.receivepack", "true".into()),
        ("http.uploadpack", "true".into()),
        ("receive.denyDeletes", "true".into()),
        ("receive.denyNonFastForwards", "true".into()),
    ];
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "airlock")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", format!("/{}{request}", base.to_string_lossy()))
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header(header::CONTENT_TYPE))
        .env("HTTP_CONTENT_ENCODING", header(header::CONTENT_ENCODING))
        .env(
            "GIT_PROTOCOL",
            headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
        .env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
            .env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run git http-backend: {e}"))?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("git http-backend has no pipes".into());
    };
    // The request body goes in as it arrives (bounded), so a push is never held in memory.
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut sent = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            sent += chunk.len() as u64;
            if sent > MAX_PUSH_BYTES || stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    // The process is reaped (or killed after its time) whatever happens to the answer.
    tokio::spawn(async move {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut err).await;
        match tokio::time::timeout(PROCESS_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if !status.success() => tracing::warn!(
                "git http-backend exited with {status}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("git http-backend ran past {PROCESS_TIMEOUT:?}; stopped");
                let _ = child.kill().await;
            }
        }
    });
    let mut out = BufReader::new(stdout);
    let mut response = Response::builder().status(StatusCode::OK);
    let mut read = 0usize;
    loop {
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .await
            .map_err(|e| format!("git http-backend's answer cannot be read: {e}"))?;
        read += n;
        if n == 0 || read > MAX_HEAD_BYTES {
            return Err("git http-backend gave no complete answer".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split(' ')
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response = response.status(code);
        } else if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.trim().as_bytes()),
            header::HeaderValue::from_str(v),
        ) {
            response = response.header(k, v);
        }
    }
    response
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(out)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_smart_http_requests_of_a_repository_name_are_served() {
        assert_eq!(parse("hello.git/info/refs"), Some(("hello", "/info/refs")));
        assert_eq!(
            parse("acme/web.git/git-receive-pack"),
            Some(("acme/web", "/git-receive-pack"))
        );
        assert_eq!(parse("hello.git/HEAD"), None);
        assert_eq!(parse("hello.git/objects/info/packs"), None);
        assert_eq!(parse("../etc.git/info/refs"), None);
        assert_eq!(parse("a/b/c.git/info/refs"), None);
        assert_eq!(parse("hello/info/refs"), None);
    }

    #[test]
    fn the_gateway_reaches_a_server_listening_everywhere_on_loopback() {
        let at = |s: &str| upstream(s.parse().unwrap());
        assert_eq!(at("0.0.0.0:8080"), "http://127.0.0.1:8080/git");
        assert_eq!(at("[::]:8080"), "http://[::1]:8080/git");
        assert_eq!(at("10.1.2.3:9000"), "http://10.1.2.3:9000/git");
    }
}
