//! The Docker provider: hardened containers on an internal network whose only reachable host
//! address is the gateway's (decision 0003).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, ListContainersOptions, ListImagesOptions,
    RemoveContainerOptions, RemoveImageOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::runtime::{
    ContainerSpec, ExecOutput, ImageInfo, Instance, Network, Result, Runtime, RuntimeError,
};
use super::{LABEL_DEPLOYMENT, LABEL_MANAGED};
use airlock_sandboxd::proto::{CA_MOUNT, SANDBOXD_MOUNT, WORKSPACE};

/// The user agents run as (created by the base image recipe).
pub const AGENT_USER: &str = "1000:1000";

#[derive(Debug, Clone)]
pub struct DockerRuntimeConfig {
    pub deployment: String,
    /// Network name; also the Linux bridge name (at most 15 characters).
    pub network: String,
    pub subnet: String,
    /// Host ports sandboxes may reach on the bridge address (sandbox endpoint, gateway).
    pub allowed_ports: Vec<u16>,
}

pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerRuntimeConfig,
}

/// Runs `iptables -w ARGS`: its error output when it fails.
fn iptables(args: &[&str]) -> std::result::Result<(), String> {
    let out = std::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// What [`DockerRuntime::teardown`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TornDown {
    pub containers: usize,
    pub network: bool,
    pub firewall: bool,
}

fn api(e: bollard::errors::Error) -> RuntimeError {
    let text = format!("Docker: {e}");
    // Docker's words when the network's pool is used up ("no available IPv4 addresses on
    // this network's address pools"): a wait, not a failure.
    if text.contains("no available IPv4 addresses") || text.contains("no available addresses") {
        RuntimeError::NoAddress(text)
    } else if engine_down(&e) {
        RuntimeError::EngineDown(format!("the Docker engine does not answer ({text})"))
    } else {
        RuntimeError::Failed(text)
    }
}

/// Errors that mean the engine itself is not there (its socket refused or gone, the
/// connection cut, no answer in time), not that it refused a request.
fn engine_down(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::SocketNotFoundError(_)
            | E::RequestTimeoutError
            | E::IOError { .. }
            | E::HyperLegacyError { .. }
            | E::HyperResponseError { .. }
    )
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub use airlock_store::config::{host_address, subnet_capacity};

impl DockerRuntime {
    pub fn new(docker: Docker, cfg: DockerRuntimeConfig) -> DockerRuntime {
        DockerRuntime { docker, cfg }
    }

    fn label_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_DEPLOYMENT}={}", self.cfg.deployment)],
        )])
    }

    /// Installs the INPUT rules that leave sandboxes only the allowed ports on the bridge
    /// address. Idempotent: the chain is flushed and refilled, the jump added once.
    fn firewall(&self, bridge: &str, host: Ipv4Addr) -> Result<()> {
        let chain = format!("AIRLOCK-{bridge}");
        let chain = &chain[..chain.len().min(28)];
        let ipt = iptables;
        let fail = |e: String| {
            RuntimeError::Unavailable(format!(
                "cannot install the sandbox firewall on bridge {bridge}: {e}. Airlock needs root \
                 (or CAP_NET_ADMIN) and iptables (`apt-get install iptables`) to keep sandboxes \
                 away from the host"
            ))
        };
        if ipt(&["-n", "-L", chain]).is_err() {
            ipt(&["-N", chain]).map_err(fail)?;
        }
        ipt(&["-F", chain]).map_err(fail)?;
        let host = host.to_string();
        for port in &self.cfg.allowed_ports {
            let port = port.to_string();
            ipt(&[
                "-A", chain, "-p", "tcp", "-d", &host, "--dport", &port, "-j", "RETURN",
            ])
            .map_err(fail)?;
        }
        ipt(&["-A", chain, "-j", "DROP"]).map_err(fail)?;
        if ipt(&["-C", "INPUT", "-i", bridge, "-j", chain]).is_err() {
            ipt(&["-I", "INPUT", "1", "-i", bridge, "-j", chain]).map_err(fail)?;
        }
        Ok(())
    }

    /// Undoes [`Runtime::prepare`] and what sessions left: removes this deployment's
    /// containers (warm sandboxes, kept workspaces), its network and its firewall chain.
    /// Images (the base image, snapshots) stay. Idempotent: what is already gone is skipped.
    pub async fn teardown(&self) -> Result<TornDown> {
        let mut done = TornDown::default();
        for i in self.list().await? {
            self.remove(&i.id).await?;
            done.containers += 1;
        }
        let name = &self.cfg.network;
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(net) => {
                let labels = net.labels.unwrap_or_default();
                if labels.get(LABEL_DEPLOYMENT) == Some(&self.cfg.deployment) {
                    self.docker.remove_network(name).await.map_err(api)?;
                    done.network = true;
                }
            }
            Err(e) if is_404(&e) => {}
            Err(e) => return Err(api(e)),
        }
        let chain = format!("AIRLOCK-{name}");
        let chain = &chain[..chain.len().min(28)];
        while iptables(&["-D", "INPUT", "-i", name, "-j", chain]).is_ok() {}
        if iptables(&["-F", chain]).is_ok() && iptables(&["-X", chain]).is_ok() {
            done.firewall = true;
        }
        Ok(done)
    }

    fn instance_of(&self, r: bollard::models::ContainerInspectResponse) -> Instance {
        let state = r.state.unwrap_or_default();
        let labels: BTreeMap<String, String> = r
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let address = r
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.cfg.network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok());
        Instance {
            id: r.id.unwrap_or_default(),
            labels,
            running: state.running.unwrap_or(false),
            address,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        }
    }
}

/// Docker's embedded DNS server, which every container on a user-defined network gets.
const EMBEDDED_DNS: &str = "127.0.0.11";

/// Makes the embedded DNS server unreachable from a running container, in the container's own
/// network namespace (where the agent, without capabilities, cannot change it): lookups of a
/// neighbouring container's name fail, and so do external names, which Docker before 26.0
/// forwards outside even for internal networks (CVE-2024-29018). Sandboxes need no resolver:
/// the gateway resolves names. Rejected, not dropped, so a lookup fails at once.
fn block_dns(pid: i64) -> Result<()> {
    if pid <= 0 {
        return Err(RuntimeError::Failed(
            "the sandbox container has no process to fence in".into(),
        ));
    }
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "iptables",
            "-w",
            "-I",
            "OUTPUT",
            "1",
            "-d",
        ])
        .args([EMBEDDED_DNS, "-j", "REJECT"])
        .output()
        .map_err(|e| RuntimeError::Unavailable(format!("cannot run nsenter: {e}")))?;
    if !out.status.success() {
        return Err(RuntimeError::Unavailable(format!(
            "cannot block DNS inside the sandbox: {}. Airlock needs root (nsenter and iptables) \
             to keep sandboxes from resolving names",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A tar holding `sandboxd.json` in a directory only the agent user owns.
fn boot_tar(boot: &airlock_sandboxd::proto::Boot) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(boot).map_err(std::io::Error::other)?;
    let mut tar = tar::Builder::new(Vec::new());
    let dir = std::path::Path::new(airlock_sandboxd::proto::BOOT_DIR)
        .file_name()
        .unwrap_or_default();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(0);
    h.set_mtime(0);
    tar.append_data(&mut h, dir, std::io::empty())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o400);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(json.len() as u64);
    h.set_mtime(0);
    let file = std::path::Path::new(airlock_sandboxd::proto::BOOT_FILE);
    let rel = std::path::Path::new(dir).join(file.file_name().unwrap_or_default());
    tar.append_data(&mut h, rel, json.as_slice())?;
    tar.into_inner()
}

impl DockerRuntime {
    async fn put_boot(&self, id: &str, boot: &airlock_sandboxd::proto::Boot) -> Result<()> {
        let tar = boot_tar(boot).map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let parent = std::path::Path::new(airlock_sandboxd::proto::BOOT_DIR)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        self.docker
            .upload_to_container(
                id,
                Some(bollard::query_parameters::UploadToContainerOptions {
                    path: parent,
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(api)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn prepare(&self) -> Result<Network> {
        let name = &self.cfg.network;
        if name.is_empty() || name.len() > 15 {
            return Err(RuntimeError::Unavailable(format!(
                "sandbox.network `{name}` must be 1 to 15 characters (it is also the bridge's interface name)"
            )));
        }
        let host = host_address(&self.cfg.subnet).ok_or_else(|| {
            RuntimeError::Unavailable(format!(
                "sandbox.subnet `{}` is not an IPv4 network such as 10.203.0.0/24",
                self.cfg.subnet
            ))
        })?;
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(net) => {
                let labels = net.labels.unwrap_or_default();
                if labels.get(LABEL_DEPLOYMENT) != Some(&self.cfg.deployment) {
                    return Err(RuntimeError::Unavailable(format!(
                        "the Docker network `{name}` exists but does not belong to this Airlock deployment; choose another sandbox.network"
                    )));
                }
                if net.internal != Some(true) {
                    return Err(RuntimeError::Unavailable(format!(
                        "the Docker network `{name}` is not internal; remove it (`docker network rm {name}`) and Airlock will recreate it"
                    )));
                }
            }
            Err(e) if is_404(&e) => {
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    internal: Some(true),
                    enable_ipv6: Some(false),
                    ipam: Some(Ipam {
                        driver: Some("default".into()),
                        config: Some(vec![IpamConfig {
                            subnet: Some(self.cfg.subnet.clone()),
                            gateway: Some(host.to_string()),
                            ..Default::default()
                        }]),
                        options: None,
                    }),
                    options: Some(HashMap::from([
                        ("com.docker.network.bridge.name".into(), name.clone()),
                        (
                            "com.docker.network.bridge.enable_icc".into(),
                            "false".into(),
                        ),
                        (
                            "com.docker.network.bridge.enable_ip_masquerade".into(),
                            "false".into(),
                        ),
                    ])),
                    labels: Some(HashMap::from([
                        (LABEL_MANAGED.into(), "true".into()),
                        (LABEL_DEPLOYMENT.into(), self.cfg.deployment.clone()),
                    ])),
                    ..Default::default()
                };
                self.docker.create_network(req).await.map_err(|e| {
                    RuntimeError::Unavailable(format!(
                        "cannot create the sandbox network `{name}` ({}): {e}; if the subnet overlaps another network, set sandbox.subnet",
                        self.cfg.subnet
                    ))
                })?;
            }
            Err(e) => return Err(api(e)),
        }
        self.firewall(name, host)?;
        Ok(Network {
            name: name.clone(),
            host_address: host,
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_DEPLOYMENT.into(), self.cfg.deployment.clone());
        let mut binds = vec![format!("{}:{SANDBOXD_MOUNT}:ro", spec.sandboxd.display())];
        if let Some(ca) = &spec.ca_cert {
            binds.push(format!("{}:{CA_MOUNT}:ro", ca.display()));
        }
        let memory = (spec.limits.memory_mb as i64) * 1024 * 1024;
        let host_config = HostConfig {
            binds: Some(binds),
            network_mode: Some(self.cfg.network.clone()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            pids_limit: Some(spec.limits.pids as i64),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.limits.cpus * 1e9) as i64),
            init: Some(true),
            ipc_mode: Some("private".into()),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".into(), "1m".into()),
                    ("max-file".into(), "1".into()),
                ])),
            }),
            ..Default::default()
        };
        let mut cmd = vec![SANDBOXD_MOUNT.to_string()];
        cmd.extend(spec.args.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(AGENT_USER.into()),
            working_dir: Some(WORKSPACE.into()),
            entrypoint: Some(cmd),
            cmd: Some(vec![]),
            labels: Some(labels),
            hostname: Some("sandbox".into()),
            host_config: Some(host_config),
            network_disabled: Some(false),
            ..Default::default()
        };
        let name = format!("airlock-{}", spec.sandbox_id.replace('_', "-"));
        let opts = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match &e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::Failed(format!(
                    "the image {} does not exist; run `airlock image build` (or `airlock snapshot build`)",
                    spec.image
                )),
                _ => api(e),
            })?;
        if let Some(boot) = &spec.boot {
            if let Err(e) = self.put_boot(&created.id, boot).await {
                let _ = self.remove(&created.id).await;
                return Err(e);
            }
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<Instance> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api)?;
        let r = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(api)?;
        let pid = r.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
        // Before anything but sandboxd runs in it: no DNS answers inside the sandbox.
        if let Err(e) = block_dns(pid) {
            let _ = self.remove(id).await;
            return Err(e);
        }
        Ok(self.instance_of(r))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            signal: None,
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            // Already being removed.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    async fn commit(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo> {
        let mut all: HashMap<String, String> = labels.clone().into_iter().collect();
        all.insert(LABEL_MANAGED.into(), "true".into());
        all.insert(LABEL_DEPLOYMENT.into(), self.cfg.deployment.clone());
        let opts = CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            pause: true,
            ..Default::default()
        };
        // The container's own environment (sandboxd's bootstrap) must not become the image's.
        let config = bollard::models::ContainerConfig {
            labels: Some(all),
            env: Some(vec![]),
            ..Default::default()
        };
        let done = self
            .docker
            .commit_container(opts, config)
            .await
            .map_err(api)?;
        let reference = format!("{repo}:{tag}");
        let img = self.docker.inspect_image(&reference).await.map_err(api)?;
        Ok(ImageInfo {
            id: done.id,
            tags: vec![reference],
            labels: img
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            size: img.size.unwrap_or(0),
        })
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.label_filter()),
            ..Default::default()
        };
        let found = self.docker.list_containers(Some(opts)).await.map_err(api)?;
        let mut out = Vec::new();
        for c in found {
            let Some(id) = c.id else { continue };
            if let Some(i) = self.inspect(&id).await? {
                out.push(i);
            }
        }
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<Option<Instance>> {
        match self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(r) => Ok(Some(self.instance_of(r))),
            Err(e) if is_404(&e) => Ok(None),
            Err(e) => Err(api(e)),
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &BTreeMap<String, String>,
        on_output: &mut (dyn for<'a> FnMut(ExecOutput<'a>) + Send),
    ) -> Result<i64> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(argv.to_vec()),
                    env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    user: Some(AGENT_USER.to_string()),
                    working_dir: Some(WORKSPACE.to_string()),
                    ..Default::default()
                },
            )
            .await
            .map_err(api)?;
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await.map_err(api)?
        {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(api)? {
                    bollard::container::LogOutput::StdOut { message } => {
                        on_output(ExecOutput::Stdout(&message))
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        on_output(ExecOutput::Stderr(&message))
                    }
                    _ => {}
                }
            }
        }
        let done = self.docker.inspect_exec(&exec.id).await.map_err(api)?;
        Ok(done.exit_code.unwrap_or(-1))
    }

    async fn image_exists(&self, reference: &str) -> Result<bool> {
        crate::engine::image_exists(&self.docker, reference)
            .await
            .map_err(|e| RuntimeError::Failed(e.to_string()))
    }

    async fn images(&self) -> Result<Vec<ImageInfo>> {
        let opts = ListImagesOptions {
            filters: Some(self.label_filter()),
            ..Default::default()
        };
        let found = self.docker.list_images(Some(opts)).await.map_err(api)?;
        Ok(found
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                labels: i.labels.into_iter().collect(),
                size: i.size,
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<()> {
        let opts = RemoveImageOptions {
            force: true,
            noprune: false,
        };
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_address;

    #[test]
    fn the_host_address_is_the_first_of_the_subnet() {
        assert_eq!(
            host_address("10.203.0.0/24"),
            Some("10.203.0.1".parse().unwrap())
        );
        assert_eq!(host_address("10.203.0.5/24"), None);
        assert_eq!(host_address("10.203.0.0"), None);
        assert_eq!(host_address("nonsense/24"), None);
        assert_eq!(host_address("10.0.0.0/31"), None);
    }

    /// An engine whose socket went away (stopped, restarting) is "down", a wait for the
    /// sessions; an engine that answers with an error is not.
    #[tokio::test]
    async fn an_engine_that_went_away_is_down_and_one_that_refuses_is_not() {
        use super::{api, DockerRuntime, DockerRuntimeConfig};
        use crate::{Runtime, RuntimeError};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let docker = bollard::Docker::connect_with_unix(
            path.to_str().unwrap(),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let runtime = DockerRuntime::new(
            docker,
            DockerRuntimeConfig {
                deployment: "dep_test".into(),
                network: "airlocktest".into(),
                subnet: "10.203.0.0/24".into(),
                allowed_ports: vec![],
            },
        );
        match runtime.inspect("some-container").await {
            Err(RuntimeError::EngineDown(why)) => {
                assert!(
                    why.starts_with("the Docker engine does not answer"),
                    "{why}"
                )
            }
            other => panic!("expected EngineDown, got {other:?}"),
        }
        let refused = api(bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "conflict".into(),
        });
        assert!(matches!(refused, RuntimeError::Failed(_)), "{refused:?}");
    }
}
