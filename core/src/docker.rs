//! The connection to the Docker engine, kept behind one small client. Every object Airlock
//! creates carries the `org.airlock.*` labels and is found again by label.

use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

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
