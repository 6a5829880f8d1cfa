//! Profiles and their immutable, numbered versions. Applying a spec that differs from the
//! current version adds a version; applying the same spec again changes nothing. Versions are
//! never updated or removed (the database refuses it too), so a session can always say exactly
//! what it ran with.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{id_col, Result, Store, StoreError};
use crate::domain::ProfileSpec;
use crate::ids::{now_ms, ProfileId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub id: ProfileId,
    pub name: String,
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileVersion {
    pub profile_id: ProfileId,
    pub version: i64,
    pub spec: ProfileSpec,
    pub spec_hash: String,
    pub created_by: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum ApplyOutcome {
    Created { profile_id: ProfileId, version: i64 },
    Updated { profile_id: ProfileId, version: i64 },
    Unchanged { profile_id: ProfileId, version: i64 },
}

fn profile(row: &AnyRow) -> Result<Profile> {
    Ok(Profile {
        id: id_col(row, "id")?,
        name: row.try_get("name")?,
        current_version: row.try_get("current_version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn version_row(row: &AnyRow) -> Result<ProfileVersion> {
    let spec: String = row.try_get("spec")?;
    Ok(ProfileVersion {
        profile_id: id_col(row, "profile_id")?,
        version: row.try_get("version")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Invalid(format!("stored profile spec is invalid: {e}")))?,
        spec_hash: row.try_get("spec_hash")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

const VERSION_COLS: &str = "profile_id, version, spec, spec_hash, created_by, created_at";

impl Store {
    /// Stores `spec` as the profile's next version, unless it equals the current one.
    pub async fn apply_profile(
        &self,
        spec: &ProfileSpec,
        created_by: Option<&str>,
    ) -> Result<ApplyOutcome> {
        spec.validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        // The canonical JSON of the typed spec: formatting and comments in the file do not
        // make a new version, a changed value does.
        let json = serde_json::to_string(spec)
            .map_err(|e| StoreError::Invalid(format!("cannot encode the profile: {e}")))?;
        let hash = hex::encode(Sha256::digest(json.as_bytes()));
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // Claim the profile row first (a write), so concurrent applies of one profile queue up
        // instead of racing for the same version number.
        let current = sqlx::query(
            "UPDATE profiles SET updated_at = $2 WHERE name = $1 RETURNING id, current_version",
        )
        .bind(&spec.name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let (profile_id, next, created) = match current {
            None => {
                let id = ProfileId::new();
                sqlx::query(
                    "INSERT INTO profiles (id, name, current_version, created_at, updated_at) \
                     VALUES ($1, $2, 1, $3, $3)",
                )
                .bind(&id)
                .bind(&spec.name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::conflict_or(e, || {
                        format!(
                            "profile {} was created concurrently; apply again",
                            spec.name
                        )
                    })
                })?;
                (id, 1, true)
            }
            Some(row) => {
                let id: ProfileId = row.try_get("id")?;
                let cur: i64 = row.try_get("current_version")?;
                let cur_hash: Option<String> = sqlx::query_scalar(
                    "SELECT spec_hash FROM profile_versions WHERE profile_id = $1 AND version = $2",
                )
                .bind(&id)
                .bind(cur)
                .fetch_optional(&mut *tx)
                .await?;
                if cur_hash.as_deref() == Some(hash.as_str()) {
                    tx.rollback().await?;
                    return Ok(ApplyOutcome::Unchanged {
                        profile_id: id,
                        version: cur,
                    });
                }
                sqlx::query("UPDATE profiles SET current_version = $2 WHERE id = $1")
                    .bind(&id)
                    .bind(cur + 1)
                    .execute(&mut *tx)
                    .await?;
                (id, cur + 1, false)
            }
        };
        sqlx::query(&format!(
            "INSERT INTO profile_versions ({VERSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&profile_id)
        .bind(next)
        .bind(&json)
        .bind(&hash)
        .bind(created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if created {
            ApplyOutcome::Created {
                profile_id,
                version: next,
            }
        } else {
            ApplyOutcome::Updated {
                profile_id,
                version: next,
            }
        })
    }

    pub async fn list_profiles(&self) -> Result<Vec<Profile>> {
        let rows = sqlx::query(
            "SELECT id, name, current_version, created_at, updated_at FROM profiles ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(profile).collect()
    }

    /// How many warm sandboxes the current profile versions keep ready, in all.
    pub async fn warm_pool_total(&self) -> Result<u32> {
        let mut total = 0;
        for p in self.list_profiles().await? {
            total += self
                .profile_version(&p.id, None)
                .await?
                .spec
                .sandbox
                .warm_pool;
        }
        Ok(total)
    }

    /// Finds a profile by name or id.
    pub async fn find_profile(&self, name_or_id: &str) -> Result<Profile> {
        let row = sqlx::query(
            "SELECT id, name, current_version, created_at, updated_at FROM profiles \
             WHERE name = $1 OR id = $1",
        )
        .bind(name_or_id)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => profile(&r),
            None => Err(StoreError::NotFound(format!(
                "no profile `{}`; see `airlock profile list`",
                name_or_id.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// A version of a profile; `None` means the current one.
    pub async fn profile_version(
        &self,
        profile_id: &ProfileId,
        version: Option<i64>,
    ) -> Result<ProfileVersion> {
        let row = match version {
            Some(v) => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLS} FROM profile_versions WHERE profile_id = $1 AND version = $2"
                ))
                .bind(profile_id)
                .bind(v)
                .fetch_optional(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT v.profile_id, v.version, v.spec, v.spec_hash, v.created_by, v.created_at \
                     FROM profile_versions v JOIN profiles p \
                       ON p.id = v.profile_id AND p.current_version = v.version \
                     WHERE p.id = $1",
                )
                .bind(profile_id)
                .fetch_optional(self.pool())
                .await?
            }
        };
        match row {
            Some(r) => version_row(&r),
            None => Err(StoreError::NotFound(match version {
                Some(v) => format!("profile {profile_id} has no version {v}"),
                None => format!("profile {profile_id} has no versions"),
            })),
        }
    }

    pub async fn list_profile_versions(
        &self,
        profile_id: &ProfileId,
    ) -> Result<Vec<ProfileVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM profile_versions WHERE profile_id = $1 ORDER BY version"
        ))
        .bind(profile_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(version_row).collect()
    }
}
