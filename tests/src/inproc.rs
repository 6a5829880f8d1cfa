//! The gateway in this process, on loopback, with a real store: one session whose sandbox is
//! this process at 127.0.0.1, with a route `api.bench.test` → `upstream_url` that injects
//! `key` as a bearer token. Every request takes the gateway's whole path (token check, route,
//! guard, injection, TLS both ways, scrubbing, audit). For benchmarks and for tests that need
//! the gateway without a sandbox.

use std::path::Path;

use airlock_core::domain::{ProfileSpec, Role, Surface};
use airlock_core::secrets::{MasterKey, SecretValue};
use airlock_core::store::{ApplyOutcome, NewSandbox, NewSession, TokenKind};
use airlock_core::Store;

pub struct InProcess {
    pub store: Store,
    /// The one session's branch: the only one its pushes may name.
    pub branch: String,
    /// The proxy URL with the egress token: `http://airlock:<token>@127.0.0.1:<port>`.
    pub proxy: String,
    /// The gateway's CA, for clients to trust.
    pub ca_pem: String,
    /// The database file (SQLite), for tests that hold its lock.
    pub db_path: std::path::PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start(
        upstream_url: &str,
        upstream_ca: &Path,
        key: &str,
        settings: airlock_gateway::GatewaySettings,
    ) -> anyhow::Result<InProcess> {
        let dir = tempfile::tempdir()?;
        let (master, _) = MasterKey::load_or_create(&dir.path().join("key"))?;
        let url = format!("sqlite://{}", dir.path().join("airlock.db").display());
        let store = Store::connect(&url, 5, master).await?;
        store.migrate().await?;
        let human = store
            .add_human("Bench", "bench@example.com", Role::Admin)
            .await?;
        store
            .set_credential(
                "model",
                "api-key".parse().unwrap(),
                &SecretValue::new(key.as_bytes().to_vec()),
                None,
            )
            .await?;
        let spec = ProfileSpec::from_toml(&format!(
        "name = \"bench\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n\
         [[egress]]\nhost = \"api.bench.test\"\ncredential = \"model\"\ninject = {{ kind = \"bearer\" }}\nupstream = \"{}\"\n",
        upstream_url
    ))?;
        let (profile_id, version) = match store.apply_profile(&spec, None).await? {
            ApplyOutcome::Created {
                profile_id,
                version,
            }
            | ApplyOutcome::Updated {
                profile_id,
                version,
            }
            | ApplyOutcome::Unchanged {
                profile_id,
                version,
            } => (profile_id, version),
        };
        let session = store
            .create_session(NewSession {
                requester_id: human.id.clone(),
                surface: Surface::Cli,
                thread_ref: Default::default(),
                repo: "acme/web".into(),
                profile_id: profile_id.clone(),
                profile_version: version,
                prompt: "bench".into(),
                trigger_id: None,
                thread_key: None,
                notify: None,
            })
            .await?;
        // The session's plan is what the gateway enforces (no plan, no routes).
        let plan = airlock_core::plan::Plan::build(
            &spec,
            version,
            &session,
            &human,
            &airlock_core::plan::PlanSettings {
                github: None,
                author_name: "Airlock".into(),
                author_email: "airlock@example.com".into(),
                local_git: None,
            },
            None,
        );
        store
            .set_session_plan(&session.id, &plan.to_json(), None)
            .await?;
        let sb = store
            .insert_sandbox(NewSandbox {
                role: "session",
                profile_id,
                profile_version: version,
                image: "none".into(),
                session_id: Some(session.id.clone()),
            })
            .await?;
        store
            .set_sandbox_started(&sb.id, "bench", "127.0.0.1")
            .await?;
        let token = store
            .issue_token(TokenKind::Egr, &sb.id, Some(&session.id), 3_600_000)
            .await?;

        let gateway = airlock_gateway::Gateway::start(
            store.clone(),
            airlock_gateway::GatewaySettings {
                extra_ca_file: Some(upstream_ca.to_path_buf()),
                ..settings
            },
        )
        .await?;
        let airlock_ca = gateway.ca_pem().to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gw_port = listener.local_addr()?.port();

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(gateway.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(InProcess {
            store,
            branch: plan.branch.clone(),
            proxy: format!("http://airlock:{token}@127.0.0.1:{gw_port}"),
            ca_pem: airlock_ca,
            db_path: dir.path().join("airlock.db"),
            shutdown: Some(tx),
            served: Some(served),
            _dir: dir,
        })
    }

    /// Stops accepting and waits until the gateway has written its audit records.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.served.take() {
            let _ = s.await;
        }
    }
}
