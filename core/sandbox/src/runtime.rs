//! The runtime behind sandboxes: a small trait so that another provider (Kubernetes) can be
//! added without touching the broker. Docker is the one provider today ([`super::docker`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use airlock_store::domain::Limits;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// The sandbox network has no free address: a sandbox can start once one is released.
    #[error("{0}")]
    NoAddress(String),
    /// The engine does not answer (stopped, restarting, its socket gone): a sandbox can start
    /// once it answers again.
    #[error("{0}")]
    EngineDown(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Where sandboxes live on the network: the one host address they can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub host_address: Ipv4Addr,
}

/// Everything needed to create one sandbox.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub sandbox_id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// sandboxd's start-up settings (endpoint, sandbox id, bootstrap token), put where only
    /// sandboxd reads them ([`airlock_sandboxd::proto::BOOT_FILE`]), never in the container's
    /// configuration (which a snapshot would keep). `None` for build sandboxes. The agent's
    /// environment arrives over the sandbox connection.
    pub boot: Option<airlock_sandboxd::proto::Boot>,
    /// Arguments for sandboxd (`--hold` for build sandboxes).
    pub args: Vec<String>,
    pub limits: Limits,
    /// The sandboxd binary on the host, mounted read-only.
    pub sandboxd: PathBuf,
    /// The deployment CA certificate on the host, mounted read-only when present.
    pub ca_cert: Option<PathBuf>,
}

/// A sandbox as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub address: Option<Ipv4Addr>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl Instance {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub size: i64,
}

/// Output of a runtime-level exec (used for snapshot builds, where no sandboxd session runs).
pub enum ExecOutput<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

#[async_trait]
pub trait Runtime: Send + Sync {
    /// Creates (or checks) the sandbox network and its firewall.
    async fn prepare(&self) -> Result<Network>;
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;
    /// Starts a created sandbox and returns it with its address.
    async fn start(&self, id: &str) -> Result<Instance>;
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a sandbox, running or not; removing one that is gone is not an error.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Saves a sandbox's files as an image `repo:tag` with these labels.
    async fn commit(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo>;
    /// Every sandbox of this deployment, found by label.
    async fn list(&self) -> Result<Vec<Instance>>;
    async fn inspect(&self, id: &str) -> Result<Option<Instance>>;
    /// Runs a command as the agent user and returns its exit code.
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &BTreeMap<String, String>,
        on_output: &mut (dyn for<'a> FnMut(ExecOutput<'a>) + Send),
    ) -> Result<i64>;
    async fn image_exists(&self, reference: &str) -> Result<bool>;
    /// Images of this deployment (snapshots), found by label.
    async fn images(&self) -> Result<Vec<ImageInfo>>;
    async fn remove_image(&self, reference: &str) -> Result<()>;
}
