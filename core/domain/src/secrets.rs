//! Encryption of credentials at rest and the master key they are sealed under.
//!
//! Values are sealed with XChaCha20-Poly1305 (random 192-bit nonces, so no nonce bookkeeping)
//! with the credential's name as associated data, so a sealed value cannot be moved to another
//! credential's row. The master key comes from configuration or from a key file created with
//! mode 0600. Nothing here ever formats a key or a value: `Debug` of both is redacted.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Format byte of a sealed value, so the scheme can change without guessing.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the master key must be 32 bytes in base64 (generate one with `openssl rand -base64 32`)"
    )]
    BadKey,
    #[error(
        "the key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyFileTooOpen { path: String, mode: u32 },
    #[error("cannot read or create the key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "credential `{name}` cannot be decrypted with the configured master key (it was sealed under key {stored_key_id}, the configured key is {configured_key_id}); configure the original master key"
    )]
    WrongKey {
        name: String,
        stored_key_id: String,
        configured_key_id: String,
    },
    #[error("credential `{name}` is damaged: its stored bytes do not decrypt")]
    Corrupt { name: String },
}

/// The key that seals credential values.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id={})", self.id)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort: the key should not outlive its use in freed memory.
        self.key.iter_mut().for_each(|b| *b = 0);
    }
}

impl MasterKey {
    fn from_bytes(key: [u8; 32]) -> Self {
        let digest = Sha256::new_with_prefix(b"airlock master key id\0")
            .chain_update(key)
            .finalize();
        let id = hex::encode(&digest[..6]);
        Self { key, id }
    }

    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_bytes(key)
    }

    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = B64.decode(text.trim()).map_err(|_| SecretError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(Self::from_bytes(key))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.key)
    }

    /// A short public identifier of the key: safe to show, and it changes with the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key file, or creates it with mode 0600 when it does not exist.
    /// Returns the key and whether it was just created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SecretError> {
        let shown = path.display().to_string();
        let io_err = |source| SecretError::KeyFile {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_private(path)?;
                Ok((Self::from_base64(&text)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io_err)?;
                }
                let key = Self::generate();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut file = opts.open(path).map_err(io_err)?;
                file.write_all(format!("{}\n", key.to_base64()).as_bytes())
                    .map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
                Ok((key, true))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Seals `plaintext` for the credential `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a value sealed for `name` under the key `stored_key_id`.
    pub fn open(
        &self,
        name: &str,
        stored_key_id: &str,
        sealed: &[u8],
    ) -> Result<SecretValue, SecretError> {
        if stored_key_id != self.id {
            return Err(SecretError::WrongKey {
                name: name.to_string(),
                stored_key_id: stored_key_id.to_string(),
                configured_key_id: self.id.clone(),
            });
        }
        let corrupt = || SecretError::Corrupt {
            name: name.to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return Err(corrupt());
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .map(SecretValue)
            .map_err(|_| corrupt())
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::KeyFileTooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), SecretError> {
    Ok(())
}

/// A credential value in clear. It is only ever handed to the code that injects it; its
/// `Debug` is redacted and its memory is wiped on drop.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([REDACTED; {} bytes])", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_name_and_key() {
        let key = MasterKey::generate();
        let sealed = key.seal("github", b"ghp_secret");
        assert!(!sealed.windows(10).any(|w| w == b"ghp_secret"));
        assert_eq!(
            key.open("github", key.id(), &sealed).unwrap().expose(),
            b"ghp_secret"
        );
        assert!(matches!(
            key.open("openai", key.id(), &sealed),
            Err(SecretError::Corrupt { .. })
        ));
        let other = MasterKey::generate();
        let e = other.open("github", key.id(), &sealed).unwrap_err();
        assert!(e
            .to_string()
            .contains("cannot be decrypted with the configured master key"));
        assert!(!e.to_string().contains("ghp_secret"));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.id(), k2.id());
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_key_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_key_or_value() {
        let key = MasterKey::generate();
        assert!(!format!("{key:?}").contains(&key.to_base64()));
        let v = SecretValue::new(b"sk-live-123".to_vec());
        assert_eq!(format!("{v:?}"), "SecretValue([REDACTED; 11 bytes])");
    }
}
