//! A whole deployment for end-to-end tests: an installation configured against the fake
//! GitHub (as a GitHub App) and the fake model API, with a human, the credentials, and a
//! running `airlock up`. Tests then act as a person would and look at what the fakes saw.

use crate::github::FakeGithub;
use crate::model::{FakeModel, Step};
use crate::{Engine, Install, Server};

/// The model API key and where the sandbox thinks the model lives.
pub const MODEL_HOST: &str = "api.model.test";
/// The host git clones from, as the sandbox sees it (`github.web_url`).
pub const GIT_HOST: &str = "github.test";
/// The GitHub webhook secret (GitHub's documented example).
pub const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";

/// How the deployment authenticates to GitHub.
pub enum GithubAuth {
    /// As the fake's GitHub App, installed on the repository.
    App,
    /// With a personal access token of this user (small installs).
    Token { login: &'static str },
}

pub struct Stack {
    pub github: FakeGithub,
    pub model: FakeModel,
    pub model_key: String,
    pub install: std::sync::Arc<Install>,
    pub server: Option<Server>,
    /// Servers killed by [`Stack::restart`], kept so their sandboxes live on.
    retired: Vec<Server>,
}

impl Stack {
    /// A deployment whose fake model answers `script`; `configure` may add settings before
    /// the server starts (e.g. limits), and `repo` is created with `files`.
    pub async fn new(
        engine: Engine,
        script: Vec<Step>,
        repo: &str,
        files: &[(&str, &str)],
        configure: impl FnOnce(&mut Install),
    ) -> Stack {
        Self::with_auth(engine, script, repo, files, GithubAuth::App, configure).await
    }

    /// As [`Stack::new`], with Airlock reaching GitHub as `auth` says.
    pub async fn with_auth(
        engine: Engine,
        script: Vec<Step>,
        repo: &str,
        files: &[(&str, &str)],
        auth: GithubAuth,
        configure: impl FnOnce(&mut Install),
    ) -> Stack {
        let model_key = format!("sk-test-{}", ulid::Ulid::new().to_string().to_lowercase());
        let model = FakeModel::start(&model_key, script).await;
        let github = FakeGithub::start().await;
        github.set_web_url(&format!("https://{GIT_HOST}"));
        github.create_repo(repo, files);
        github.install_app(&[repo]);
        let mut install = Install::new(engine).await;
        Server::configure(&mut install);
        let bundle = install.path().join("test-cas.pem");
        std::fs::write(&bundle, format!("{}\n{}", github.ca_pem, model.ca_pem)).unwrap();
        install
            .env("AIRLOCK_GATEWAY_EXTRA_CA_FILE", bundle.to_str().unwrap())
            .env("AIRLOCK_GITHUB_API_URL", &github.api_url)
            .env("AIRLOCK_GITHUB_WEB_URL", &format!("https://{GIT_HOST}"))
            .env("AIRLOCK_GITHUB_GIT_UPSTREAM", &github.git_url)
            .env("AIRLOCK_GITHUB_WEBHOOK_SECRET_CREDENTIAL", "github-webhook")
            .env("AIRLOCK_GITHUB_BOT_LOGIN", "airlock[bot]")
            .env("AIRLOCK_SERVER_PUBLIC_URL", "https://airlock.example.com")
            .env("AIRLOCK_GIT_AUTHOR_NAME", "Airlock")
            .env("AIRLOCK_GIT_AUTHOR_EMAIL", "airlock@example.com");
        let (auth_name, auth_kind, auth_value) = match &auth {
            GithubAuth::App => {
                install
                    .env("AIRLOCK_GITHUB_APP_ID", &github.app_id.to_string())
                    .env("AIRLOCK_GITHUB_APP_CREDENTIAL", "github-app");
                ("github-app", "github-app", github.app_key_pem.clone())
            }
            GithubAuth::Token { login } => {
                let token = format!("ghp_{}", ulid::Ulid::new().to_string().to_lowercase());
                github.add_token(&token, login);
                github.grant(repo, login, "write");
                install.env("AIRLOCK_GITHUB_TOKEN_CREDENTIAL", "github-token");
                ("github-token", "github-token", token)
            }
        };
        configure(&mut install);
        install.ok(&["migrate"]);
        install.add_admin();
        for (name, kind, value) in [
            ("model-key", "api-key", model_key.as_str()),
            (auth_name, auth_kind, auth_value.as_str()),
            (
                "github-webhook",
                "webhook-secret",
                "It's a Secret to Everybody",
            ),
        ] {
            let out = install.run_with_stdin(
                &["credential", "set", name, "--kind", kind],
                value.as_bytes(),
            );
            assert!(out.status.success(), "{}", crate::stderr(&out));
        }
        Stack {
            github,
            model,
            model_key,
            install: std::sync::Arc::new(install),
            server: None,
            retired: Vec::new(),
        }
    }

    /// The route that lets the sandbox reach the fake model with the stored key.
    pub fn model_route(&self) -> String {
        format!(
            "[[egress]]\nhost = \"{MODEL_HOST}\"\ncredential = \"model-key\"\ninject = {{ kind = \"bearer\" }}\nupstream = \"{}\"\n",
            self.model.url
        )
    }

    /// The server's address.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.server.as_ref().expect("the server is started").port
        )
    }

    /// Posts a GitHub webhook delivery signed with the deployment's secret (or `signature`).
    pub async fn github_webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, String) {
        let sig = signature
            .map(str::to_string)
            .unwrap_or_else(|| crate::github::sign_webhook(WEBHOOK_SECRET, body));
        let r = reqwest::Client::new()
            .post(format!("{}/github/webhook", self.url()))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sig)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/044aadd")
            .body(body.to_vec())
            .send()
            .await
            .expect("the server answers");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Applies the `builtin` profile: Airlock's own agent against the fake model, through the
    /// gateway.
    pub fn builtin_profile(&self) {
        self.profile(&format!(
            "name = \"builtin\"\n[agent]\nkind = \"builtin\"\nmodel = \"fake-model\"\nbase_url = \"https://{MODEL_HOST}/v1\"\nmax_steps = 10\n{}",
            self.model_route()
        ));
    }

    /// Trusts another test CA for upstreams (before [`Stack::start`]).
    pub fn trust(&self, pem: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.install.path().join("test-cas.pem"))
            .unwrap();
        writeln!(f, "\n{pem}").unwrap();
    }

    /// Applies a profile (TOML text).
    pub fn profile(&self, toml: &str) {
        let path = self.install.path().join(format!(
            "profile-{}.toml",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::write(&path, toml).unwrap();
        self.install
            .ok(&["profile", "apply", "-f", path.to_str().unwrap()]);
    }

    pub fn start(&mut self) {
        self.server = Some(Server::start(&self.install));
    }

    /// `kill -9` of the server, then a new one on the same installation.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// `kill -9` of the server ([`Stack::start`] starts a new one).
    pub fn kill(&mut self) {
        if let Some(mut old) = self.server.take() {
            old.kill_hard();
            self.retired.push(old);
        }
    }

    /// Runs `airlock ARGS` on a worker thread (the fakes serve on the test's runtime).
    pub async fn airlock(&self, args: &[&str]) -> std::process::Output {
        let install = self.install.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            install.run(&refs)
        })
        .await
        .unwrap()
    }

    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let install = self.install.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            install.json(&refs)
        })
        .await
        .unwrap()
    }

    /// Waits (polling, up to `secs`) until `f` holds for the session list.
    pub async fn wait_sessions(
        &self,
        secs: u64,
        what: &str,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let list = self.json(&["session", "list", "--limit", "1000"]).await;
            let list = list.as_array().cloned().unwrap_or_default();
            if f(&list) {
                return list;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {list:#?}\n{}",
                self.server.as_ref().map(|s| s.log()).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
