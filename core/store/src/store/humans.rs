//! Humans and their linked accounts (identities): the SQL for identity attribution.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_audit, NewAudit};
use super::{id_col, parse_col, Result, Store, StoreError};
use crate::domain::{is_email, Human, Identity, Provider, Role};
use crate::ids::{now_ms, HumanId, IdentityId};

const HUMAN_COLS: &str = "id, display_name, email, role, created_at, disabled_at";
const IDENTITY_COLS: &str =
    "id, human_id, provider, workspace, external_id, handle, verified_at, created_at";

fn human(row: &AnyRow) -> Result<Human> {
    Ok(Human {
        id: id_col(row, "id")?,
        display_name: row.try_get("display_name")?,
        email: row.try_get("email")?,
        role: parse_col(row.try_get("role")?)?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn identity(row: &AnyRow) -> Result<Identity> {
    Ok(Identity {
        id: id_col(row, "id")?,
        human_id: id_col(row, "human_id")?,
        provider: parse_col(row.try_get("provider")?)?,
        workspace: row.try_get("workspace")?,
        external_id: row.try_get("external_id")?,
        handle: row.try_get("handle")?,
        verified_at: row.try_get("verified_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// What identifies an account at a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRef<'a> {
    pub provider: Provider,
    pub workspace: &'a str,
    pub external_id: &'a str,
}

impl Store {
    pub async fn add_human(&self, display_name: &str, email: &str, role: Role) -> Result<Human> {
        let display_name = display_name.trim();
        if display_name.is_empty() || display_name.chars().count() > 200 {
            return Err(StoreError::Invalid(
                "a display name of 1 to 200 characters is required".into(),
            ));
        }
        if display_name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "the display name contains control characters".into(),
            ));
        }
        let email = email.trim();
        if !is_email(email) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not an email address (it is used in commit trailers)",
                email.chars().take(80).collect::<String>()
            )));
        }
        let now = now_ms();
        let h = Human {
            id: HumanId::new(),
            display_name: display_name.to_string(),
            email: email.to_string(),
            role,
            created_at: now,
            disabled_at: None,
        };
        sqlx::query(
            "INSERT INTO humans (id, display_name, email, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&h.id)
        .bind(&h.display_name)
        .bind(&h.email)
        .bind(role.as_str())
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| {
            StoreError::conflict_or(e, || {
                format!("a human with email {} already exists", h.email)
            })
        })?;
        Ok(h)
    }

    /// Gives a human another role; audited in the same transaction. The last enabled admin
    /// keeps the role (someone must be able to govern).
    pub async fn set_human_role(&self, id: &HumanId, role: Role, audit: NewAudit) -> Result<Human> {
        let demotes = |h: &Human| {
            (h.role == Role::Admin && role != Role::Admin && h.disabled_at.is_none())
                .then_some("take the admin role from")
        };
        let sql = "UPDATE humans SET role = $2, updated_at = $3 WHERE id = $1";
        self.change_human(id, audit, demotes, sql, role.as_str())
            .await
    }

    /// Disables (or enables) a human: a disabled one starts no session and signs in
    /// nowhere; their browser sessions end now. Audited in the same transaction. The last
    /// enabled admin cannot be disabled.
    pub async fn set_human_disabled(
        &self,
        id: &HumanId,
        disabled: bool,
        audit: NewAudit,
    ) -> Result<Human> {
        let sql = "UPDATE humans SET updated_at = $3, disabled_at = CASE WHEN $2 = 'disable' \
                   THEN COALESCE(disabled_at, $3) ELSE NULL END WHERE id = $1";
        let removes_admin = |h: &Human| {
            (disabled && h.role == Role::Admin && h.disabled_at.is_none()).then_some("disable")
        };
        let value = if disabled { "disable" } else { "enable" };
        let human = self
            .change_human(id, audit, removes_admin, sql, value)
            .await?;
        if disabled {
            sqlx::query("DELETE FROM web_sessions WHERE human_id = $1")
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        Ok(human)
    }

    /// One audited change of a human's row (`sql` with the id, `value` and the time).
    /// `removes_admin` says what the change does if it takes an enabled admin away; such a
    /// change is refused when the human is the last enabled admin.
    async fn change_human(
        &self,
        id: &HumanId,
        audit: NewAudit,
        removes_admin: impl Fn(&Human) -> Option<&'static str>,
        sql: &str,
        value: &str,
    ) -> Result<Human> {
        let mut tx = self.pool().begin().await?;
        // Take the write lock first (SQLite) and the row (PostgreSQL), so two admins
        // demoting each other cannot both pass the last-admin check.
        sqlx::query("UPDATE humans SET updated_at = updated_at WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {HUMAN_COLS} FROM humans WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("no human {id}; see `airlock human list`"))
            })?;
        let before = human(&row)?;
        if let Some(what) = removes_admin(&before) {
            let admins: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM humans WHERE role = 'admin' AND disabled_at IS NULL",
            )
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if admins <= 1 {
                return Err(StoreError::Conflict(format!(
                    "cannot {what} {}: they are the last enabled admin; make someone else an admin first",
                    before.email
                )));
            }
        }
        sqlx::query(sql)
            .bind(id)
            .bind(value)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        append_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        self.find_human(id).await
    }

    pub async fn list_humans(&self) -> Result<Vec<Human>> {
        let rows = sqlx::query(&format!(
            "SELECT {HUMAN_COLS} FROM humans ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(human).collect()
    }

    /// Finds a human by id (`hum_…`) or email (case-insensitive).
    pub async fn find_human(&self, id_or_email: &str) -> Result<Human> {
        let row = sqlx::query(&format!(
            "SELECT {HUMAN_COLS} FROM humans WHERE id = $1 OR lower(email) = lower($1)"
        ))
        .bind(id_or_email.trim())
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => human(&r),
            None => Err(StoreError::NotFound(format!(
                "no human with id or email `{}`; see `airlock human list`",
                id_or_email.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// Links an account to a human. An account belongs to at most one human.
    pub async fn link_identity(
        &self,
        human: &str,
        account: AccountRef<'_>,
        handle: &str,
        verified: bool,
    ) -> Result<Identity> {
        if account.external_id.trim().is_empty() || account.external_id.len() > 200 {
            return Err(StoreError::Invalid(
                "an external user id of 1 to 200 characters is required".into(),
            ));
        }
        if account.workspace.len() > 200 || handle.len() > 200 {
            return Err(StoreError::Invalid(
                "workspace and handle are at most 200 characters".into(),
            ));
        }
        let human = self.find_human(human).await?;
        let now = now_ms();
        let ident = Identity {
            id: IdentityId::new(),
            human_id: human.id.clone(),
            provider: account.provider,
            workspace: account.workspace.to_string(),
            external_id: account.external_id.to_string(),
            handle: handle.to_string(),
            verified_at: verified.then_some(now),
            created_at: now,
        };
        sqlx::query(&format!(
            "INSERT INTO identities ({IDENTITY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&ident.id)
        .bind(&ident.human_id)
        .bind(ident.provider.as_str())
        .bind(&ident.workspace)
        .bind(&ident.external_id)
        .bind(&ident.handle)
        .bind(ident.verified_at)
        .bind(ident.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            StoreError::conflict_or(e, || {
                format!(
                    "the {} account {} is already linked to a human; unlink it first",
                    account.provider, account.external_id
                )
            })
        })?;
        Ok(ident)
    }

    /// Removes a link, by identity id. Returns the removed identity.
    pub async fn unlink_identity(&self, identity_id: &IdentityId) -> Result<Identity> {
        let row = sqlx::query(&format!(
            "DELETE FROM identities WHERE id = $1 RETURNING {IDENTITY_COLS}"
        ))
        .bind(identity_id)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => identity(&r),
            None => Err(StoreError::NotFound(format!(
                "no identity `{identity_id}`; see `airlock identity list`"
            ))),
        }
    }

    pub async fn list_identities(&self, human_id: Option<&HumanId>) -> Result<Vec<Identity>> {
        let rows = match human_id {
            Some(h) => {
                sqlx::query(&format!(
                    "SELECT {IDENTITY_COLS} FROM identities WHERE human_id = $1 \
                     ORDER BY provider, created_at"
                ))
                .bind(h)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {IDENTITY_COLS} FROM identities ORDER BY human_id, provider, created_at"
                ))
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(identity).collect()
    }

    /// The human behind an account, if the account is linked.
    pub async fn human_for_account(&self, account: AccountRef<'_>) -> Result<Option<Human>> {
        let row = sqlx::query(
            "SELECT h.id, h.display_name, h.email, h.role, h.created_at, h.disabled_at \
             FROM identities i JOIN humans h ON h.id = i.human_id \
             WHERE i.provider = $1 AND i.workspace = $2 AND i.external_id = $3",
        )
        .bind(account.provider.as_str())
        .bind(account.workspace)
        .bind(account.external_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(human).transpose()
    }
}
