//! The sandbox base image, built offline: the recipe under `deploy/images/base/` debootstraps a
//! minimal Debian, and the result is imported into Docker as `<repo>:<recipe hash>`. The image
//! is rebuilt only when the recipe changes.

use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::{stream, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::engine::{image_exists, DockerError, LABEL_MANAGED, LABEL_RECIPE};

/// The recipe, compiled in so the binary builds the image it expects wherever it runs.
pub const RECIPE: &str = include_str!("../../../deploy/images/base/recipe.sh");

/// The tag of the base image: the first 16 hex digits of the recipe's SHA-256.
pub fn recipe_tag() -> String {
    hex::encode(&Sha256::digest(RECIPE.as_bytes())[..8])
}

/// The full reference of the base image for the repository `repo`.
pub fn base_image_ref(repo: &str) -> String {
    format!("{repo}:{}", recipe_tag())
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{0}")]
    Prerequisite(String),
    #[error("the image recipe failed ({0}); its output above says why")]
    Recipe(String),
    #[error("cannot import the image into Docker: {0}")]
    Import(String),
    #[error("I/O error while building the image: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`build_base_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    AlreadyPresent(String),
    Built(String),
}

/// Builds the base image unless the current recipe's image is already present. The recipe's
/// output goes to this process's stderr, so a person sees the progress.
pub async fn build_base_image(
    docker: &Docker,
    repo: &str,
    work_dir: &Path,
) -> Result<Built, ImageError> {
    let reference = base_image_ref(repo);
    if image_exists(docker, &reference).await? {
        return Ok(Built::AlreadyPresent(reference));
    }
    if which("debootstrap").is_none() {
        return Err(ImageError::Prerequisite(
            "debootstrap is not installed; run `apt-get install -y debootstrap` (scripts/up and scripts/test do)".into(),
        ));
    }
    std::fs::create_dir_all(work_dir)?;
    let dir = tempfile_dir(work_dir)?;
    let result = build_in(docker, repo, &reference, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| Built::Built(reference))
}

async fn build_in(
    docker: &Docker,
    repo: &str,
    reference: &str,
    dir: &Path,
) -> Result<(), ImageError> {
    let script = dir.join("recipe.sh");
    let root = dir.join("rootfs");
    std::fs::write(&script, RECIPE)?;
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .await?;
    if !status.success() {
        return Err(ImageError::Recipe(status.to_string()));
    }
    let mut tar = tokio::process::Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let stdout = tar
        .stdout
        .take()
        .ok_or_else(|| ImageError::Import("tar has no output".into()))?;
    let body = stream::unfold(stdout, |mut out| async move {
        let mut buf = vec![0u8; 1 << 20];
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((bytes::Bytes::from(buf), out))
            }
        }
    });
    let tag = reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![
            format!("LABEL {LABEL_MANAGED}=true"),
            format!("LABEL {LABEL_RECIPE}={}", recipe_tag()),
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "CMD [\"/bin/bash\"]".into(),
        ],
        ..Default::default()
    };
    let import: Vec<_> = docker
        .create_image(Some(options), Some(bollard::body_stream(body)), None)
        .map_err(|e| ImageError::Import(e.to_string()))
        .try_collect()
        .await?;
    let status = tar.wait().await?;
    if !status.success() {
        return Err(ImageError::Import(format!("tar {status}")));
    }
    tracing::debug!(steps = import.len(), "image imported");
    if !image_exists(docker, reference).await? {
        return Err(ImageError::Import(format!(
            "{reference} is not present after the import"
        )));
    }
    Ok(())
}

fn tempfile_dir(parent: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = parent.join(format!("image-build-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The path of an executable on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tag_follows_the_recipe() {
        let tag = super::recipe_tag();
        assert_eq!(tag.len(), 16);
        assert_eq!(
            super::base_image_ref("airlock/base"),
            format!("airlock/base:{tag}")
        );
    }
}
