//! Credentials: write-only from the outside. A value goes in sealed under the master key and
//! comes out only through [`Store::reveal_credential`], for the gateway that injects it.
//! Listing returns names, kinds and times, never values, and no error carries a value.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_col, Result, Store, StoreError};
use crate::domain::{is_credential_name, CredentialKind};
use crate::ids::now_ms;
use crate::secrets::SecretValue;

/// The largest credential value accepted (a PEM private key is a few KiB).
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;

/// What may be shown about a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    pub name: String,
    pub kind: CredentialKind,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn info(row: &AnyRow) -> Result<CredentialInfo> {
    Ok(CredentialInfo {
        name: row.try_get("name")?,
        kind: parse_col(row.try_get("kind")?)?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates or replaces (rotates) a credential. Returns whether it already existed.
    pub async fn set_credential(
        &self,
        name: &str,
        kind: CredentialKind,
        value: &SecretValue,
        created_by: Option<&str>,
    ) -> Result<bool> {
        if !is_credential_name(name) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a valid credential name: use 1-128 letters, digits, `-`, `_` or `.`",
                name.chars().take(80).collect::<String>()
            )));
        }
        if value.is_empty() {
            return Err(StoreError::Invalid("the credential value is empty".into()));
        }
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(StoreError::Invalid(format!(
                "the credential value is {} bytes; at most {MAX_CREDENTIAL_BYTES} are accepted",
                value.len()
            )));
        }
        let sealed = self.key().seal(name, value.expose());
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let replaced = sqlx::query(
            "UPDATE credentials SET kind = $2, sealed = $3, key_id = $4, updated_at = $5 \
             WHERE name = $1",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(&sealed)
        .bind(self.key().id())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !replaced {
            sqlx::query(
                "INSERT INTO credentials (name, kind, sealed, key_id, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(name)
            .bind(kind.as_str())
            .bind(&sealed)
            .bind(self.key().id())
            .bind(created_by)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::conflict_or(e, || format!("credential {name} was created concurrently; set it again")))?;
        }
        tx.commit().await?;
        Ok(replaced)
    }

    pub async fn list_credentials(&self) -> Result<Vec<CredentialInfo>> {
        let rows = sqlx::query(
            "SELECT name, kind, created_by, created_at, updated_at FROM credentials ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(info).collect()
    }

    pub async fn credential_info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        let row = sqlx::query(
            "SELECT name, kind, created_by, created_at, updated_at FROM credentials WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(info).transpose()
    }

    /// The value in clear. Only the gateway (which injects it) and the server's own
    /// integrations (which sign with it) may call this.
    pub async fn reveal_credential(&self, name: &str) -> Result<SecretValue> {
        let row = sqlx::query("SELECT sealed, key_id FROM credentials WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(no_such(name)))?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let key_id: String = row.try_get("key_id")?;
        Ok(self.key().open(name, &key_id, &sealed)?)
    }

    pub async fn delete_credential(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM credentials WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(no_such(name)));
        }
        Ok(())
    }
}

fn no_such(name: &str) -> String {
    format!(
        "no credential `{}`; see `airlock credential list`",
        name.chars().take(80).collect::<String>()
    )
}
