//! A local npm registry (HTTPS, its own test CA) serving real package tarballs that
//! scripts/test fetched from the npm registry into a cache directory, so a profile's setup
//! step can run a real `npm install` without the test reaching outside the machine.
//!
//! It answers packuments (`GET /<name>`, scoped names percent-encoded as npm sends them) built
//! from the tarballs' own `package.json`, with `sha512` integrity, and the tarballs
//! themselves. Optional dependencies for other platforms are listed with their `os`/`cpu` so
//! npm skips them, as it does against the real registry. Anything else is recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;

/// Where scripts/test puts the tarballs (`AIRLOCK_TEST_NPM_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_TEST_NPM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache/npm"))
}

struct Tarball {
    file: PathBuf,
    manifest: Value,
    integrity: String,
}

#[derive(Clone)]
struct Shared {
    /// By package name, then version.
    packages: Arc<BTreeMap<String, BTreeMap<String, Arc<Tarball>>>>,
    files: Arc<BTreeMap<String, Arc<Tarball>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
}

pub struct FakeRegistry {
    pub url: String,
    pub ca_pem: String,
    /// `name@version` of each package served.
    pub served: Vec<String>,
    shared: Shared,
    _dir: tempfile::TempDir,
}

const REGISTRY: &str = "https://registry.npmjs.org";

fn read_manifest(tgz: &Path) -> Option<Value> {
    let out = std::process::Command::new("tar")
        .args(["-xzOf"])
        .arg(tgz)
        .arg("package/package.json")
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// `os` and `cpu` of a platform variant named like `0.1.0-linux-arm64`.
fn platform_of(version: &str) -> Option<(&'static str, &'static str)> {
    let os = ["linux", "darwin", "win32"]
        .into_iter()
        .find(|o| version.contains(&format!("-{o}-")))?;
    let cpu = ["x64", "arm64"]
        .into_iter()
        .find(|c| version.ends_with(&format!("-{c}")))?;
    Some((os, cpu))
}

impl FakeRegistry {
    /// Serves every `.tgz` in `dir`; panics with how to fetch them when there are none.
    pub async fn start(dir: &Path) -> FakeRegistry {
        let mut packages: BTreeMap<String, BTreeMap<String, Arc<Tarball>>> = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut served = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "tgz") {
                continue;
            }
            let Some(manifest) = read_manifest(&path) else {
                continue;
            };
            let bytes = std::fs::read(&path).unwrap();
            let integrity = format!(
                "sha512-{}",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&bytes))
            );
            let name = manifest["name"].as_str().unwrap().to_string();
            let version = manifest["version"].as_str().unwrap().to_string();
            served.push(format!("{name}@{version}"));
            let t = Arc::new(Tarball {
                file: path.clone(),
                manifest,
                integrity,
            });
            files.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                t.clone(),
            );
            packages.entry(name).or_default().insert(version, t);
        }
        assert!(
            !served.is_empty(),
            "no npm tarballs in {}: scripts/test fetches them (npm pack @openai/codex@VERSION @openai/codex@VERSION-linux-x64 there)",
            dir.display()
        );
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::tls::TestCa::new("Fake npm registry test CA", tmp.path());
        let shared = Shared {
            packages: Arc::new(packages),
            files: Arc::new(files),
            unexpected: Arc::default(),
        };
        let app = Router::new().fallback(serve).with_state(shared.clone());
        let port =
            crate::tls::serve_https(app, ca.server_config(&["localhost", "127.0.0.1"])).await;
        FakeRegistry {
            url: format!("https://localhost:{port}"),
            ca_pem: ca.pem.clone(),
            served,
            shared,
            _dir: tmp,
        }
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.shared.unexpected.lock().unwrap().clone()
    }

    /// The newest version served of `name`.
    pub fn latest(&self, name: &str) -> Option<String> {
        self.shared.packages.get(name).and_then(|v| {
            v.keys()
                .filter(|k| platform_of(k).is_none())
                .max_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)))
                .cloned()
        })
    }
}

fn packument(s: &Shared, name: &str) -> Option<Value> {
    let versions = s.packages.get(name)?;
    let mut out = serde_json::Map::new();
    let mut latest = None;
    for (v, t) in versions {
        let file = t.file.file_name().unwrap().to_string_lossy().into_owned();
        let mut m = t.manifest.clone();
        m["dist"] =
            json!({"tarball": format!("{REGISTRY}/{name}/-/{file}"), "integrity": t.integrity});
        // Other platforms' builds, which npm skips by their os and cpu.
        for alias in m["optionalDependencies"]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .values()
        {
            let Some(spec) = alias
                .as_str()
                .and_then(|a| a.strip_prefix(&format!("npm:{name}@")))
            else {
                continue;
            };
            if !versions.contains_key(spec) {
                if let Some((os, cpu)) = platform_of(spec) {
                    out.insert(spec.to_string(), json!({"name": name, "version": spec, "os": [os], "cpu": [cpu],
                        "dist": {"tarball": format!("{REGISTRY}/{name}/-/not-served-{spec}.tgz"), "integrity": "sha512-AAAA"}}));
                }
            }
        }
        if platform_of(v).is_none() {
            latest = Some(v.clone());
        }
        out.insert(v.clone(), m);
    }
    Some(json!({"name": name, "dist-tags": {"latest": latest}, "versions": out}))
}

async fn serve(State(s): State<Shared>, req: Request) -> Response {
    let raw = req.uri().path().to_string();
    let path = raw
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%40", "@");
    if req.method() == "GET" {
        if let Some(file) = path.rsplit_once("/-/").map(|(_, f)| f.to_string()) {
            if let Some(t) = s.files.get(&file) {
                let bytes = tokio::fs::read(&t.file).await.unwrap();
                return ([("content-type", "application/octet-stream")], bytes).into_response();
            }
        } else if let Some(p) = packument(&s, path.trim_start_matches('/')) {
            return Json(p).into_response();
        }
    }
    s.unexpected
        .lock()
        .unwrap()
        .push(format!("{} {raw}", req.method()));
    (StatusCode::NOT_FOUND, Json(json!({"error": "Not found"}))).into_response()
}
