//! The connection to the Docker engine, kept behind one small client. Every object Airlock
//! creates carries the `org.airlock.*` labels and is found again by label.

use std::time::Duration;

/// The engine client [`connect`] returns.
pub use bollard::Docker;
use bollard::API_DEFAULT_VERSION;

/// Label set on everything Airlock creates.
pub const LABEL_MANAGED: &str = "org.airlock.managed";
/// Label holding the hash of the image recipe an image was built from.
pub const LABEL_RECIPE: &str = "org.airlock.recipe";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{0}")]
    Unreachable(String),
    #[error("Docker error: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// How to get a Docker engine going, for messages.
pub const START_HINT: &str = "start it with `dockerd >/var/log/dockerd.log 2>&1 &` (or `systemctl start docker`), install it with `apt-get install docker.io`, or set docker.host";

/// Connects to the engine at `host` (`unix://…`, `tcp://…`, `http://…`) and agrees on an API
/// version (Debian's engine speaks an older one than bollard's default).
pub async fn connect(host: &str) -> Result<Docker, DockerError> {
    let unreachable = |why: String| {
        DockerError::Unreachable(format!(
            "the Docker engine at {host} is not reachable ({why}); {START_HINT}"
        ))
    };
    let docker = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, 120, API_DEFAULT_VERSION)
    } else {
        let addr = host.replacen("tcp://", "http://", 1);
        Docker::connect_with_http(&addr, 120, API_DEFAULT_VERSION)
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(5), docker.ping())
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// Whether an image with this reference exists locally.
pub async fn image_exists(docker: &Docker, reference: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Known problems of a Docker engine version that matter to sandboxes, in words for
/// `airlock doctor`; empty when none is known.
///
/// CVE-2024-29018: before 26.0.0 (fixed also in 25.0.5 and 23.0.11), the embedded DNS server
/// of an `--internal` network forwards queries for outside names, a way out of the sandbox
/// network. Airlock blocks that server inside every sandbox either way.
pub fn known_problems(version: &str) -> Vec<String> {
    let core = version.split(['+', '-', '~']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), minor, patch) = (parts.next(), parts.next(), parts.next()) else {
        return vec![format!(
            "Airlock cannot read the version `{version}`; check it against CVE-2024-29018 yourself"
        )];
    };
    let minor = minor.flatten().unwrap_or(0);
    let patch = patch.flatten().unwrap_or(0);
    let fixed = match major {
        0..=22 => false,
        23 => (minor, patch) >= (0, 11),
        24 => false,
        25 => (minor, patch) >= (0, 5),
        _ => true,
    };
    if fixed {
        Vec::new()
    } else {
        vec![format!(
            "Docker {version} is affected by CVE-2024-29018 (the DNS server of internal networks \
             forwards outside queries); Airlock blocks that DNS server inside every sandbox, so \
             sandboxes resolve no names either way, but upgrading to Docker 26 or later is wise"
        )]
    }
}

/// The engine's networks and their IPv4 subnets (`name`, `10.0.0.0/24`), for checks that a
/// subnet is free.
pub async fn network_subnets(docker: &Docker) -> Result<Vec<(String, String)>, DockerError> {
    let nets = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await?;
    Ok(nets
        .into_iter()
        .flat_map(|n| {
            let name = n.name.unwrap_or_default();
            n.ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .map(move |s| (name.clone(), s))
                .collect::<Vec<_>>()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::known_problems;

    #[test]
    fn versions_affected_by_the_dns_flaw_are_named() {
        for v in ["20.10.24+dfsg1", "24.0.7", "25.0.4", "23.0.10", "1.13.1"] {
            let p = known_problems(v);
            assert!(
                p.len() == 1 && p[0].contains("CVE-2024-29018"),
                "{v}: {p:?}"
            );
        }
        for v in ["26.0.0", "28.2.2", "25.0.5", "23.0.11", "27.1.1-ce"] {
            assert!(known_problems(v).is_empty(), "{v}");
        }
        assert!(known_problems("unknown")[0].contains("cannot read"));
    }
}
