//! Admin page sign-ins: argon2id password hashes on humans, and browser sessions kept as the
//! hash of their cookie with the CSRF token their forms carry. No password, cookie or token
//! is stored in clear or logged.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sqlx::Row;

use super::{sandboxes::token_hash, Result, Store, StoreError};
use crate::domain::Human;
use crate::ids::{now_ms, HumanId};

/// How long a sign-in lasts.
pub const WEB_SESSION_MS: i64 = 12 * 3600 * 1000;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub human: Human,
    pub csrf: String,
}

fn random_token(prefix: &str) -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

impl Store {
    /// Sets (or replaces) a human's password for the admin page.
    pub async fn set_password(&self, human_id: &HumanId, password: &str) -> Result<()> {
        if password.chars().count() < 12 {
            return Err(StoreError::Invalid(
                "a password needs at least 12 characters".into(),
            ));
        }
        let salt = SaltString::generate(&mut rand_core_06::OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| StoreError::Invalid(format!("cannot hash the password: {e}")))?
            .to_string();
        let n = sqlx::query("UPDATE humans SET password_hash = $2, updated_at = $3 WHERE id = $1")
            .bind(human_id)
            .bind(hash)
            .bind(now_ms())
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("no human {human_id}")));
        }
        Ok(())
    }

    /// Signs in with email and password: a new browser session's cookie token, or `None`
    /// (the same answer whether the email or the password was wrong).
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<(String, WebSession)>> {
        let row = sqlx::query(
            "SELECT id, password_hash, disabled_at FROM humans WHERE lower(email) = lower($1)",
        )
        .bind(email.trim())
        .fetch_optional(self.pool())
        .await?;
        // Without a human (or a password) the check runs against a throw-away hash, so a
        // wrong email takes as long as a wrong password.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = || {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut rand_core_06::OsRng);
                    Argon2::default()
                        .hash_password(random_token("").as_bytes(), &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        };
        let (id, hash): (Option<String>, String) = match &row {
            Some(r) => (
                Some(r.try_get("id")?),
                r.try_get::<Option<String>, _>("password_hash")?
                    .unwrap_or_else(dummy),
            ),
            None => (None, dummy()),
        };
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let (Some(id), true) = (id, ok) else {
            return Ok(None);
        };
        // Checked after the password, so the answer takes as long either way.
        let disabled: Option<i64> = match &row {
            Some(r) => r.try_get("disabled_at")?,
            None => None,
        };
        if disabled.is_some() {
            return Ok(None);
        }
        let token = random_token("alk_web_");
        let csrf = random_token("");
        let now = now_ms();
        sqlx::query(
            "INSERT INTO web_sessions (token_hash, human_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(&token))
        .bind(&id)
        .bind(&csrf)
        .bind(now)
        .bind(now + WEB_SESSION_MS)
        .execute(self.pool())
        .await?;
        let human = self.find_human(&id).await?;
        Ok(Some((token, WebSession { human, csrf })))
    }

    /// The browser session of a cookie token, if valid and unexpired.
    pub async fn web_session(&self, token: &str) -> Result<Option<WebSession>> {
        let row = sqlx::query(
            "SELECT human_id, csrf FROM web_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let human = self
            .find_human(&r.try_get::<String, _>("human_id")?)
            .await?;
        if human.disabled_at.is_some() {
            return Ok(None);
        }
        Ok(Some(WebSession {
            human,
            csrf: r.try_get("csrf")?,
        }))
    }

    pub async fn sign_out(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1 OR expires_at < $2")
            .bind(token_hash(token))
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
