//! What the gateway keeps: the deployment's certificate authority (its private key sealed
//! under the master key) and metered model usage. Credential values for injection come from
//! [`Store::reveal_all_credentials`]; nothing here returns or logs one.

use serde::Serialize;
use sqlx::Row;

use super::{parse_col, Result, Store};
use crate::domain::CredentialKind;
use crate::ids::{now_ms, HumanId, SessionId};
use crate::secrets::SecretValue;

/// The name the CA's private key is sealed under (associated data of the seal).
const CA_SEAL_NAME: &str = "gateway-ca";

/// The deployment CA: certificate in PEM, private key (PKCS#8 PEM) in clear in memory only.
pub struct GatewayCa {
    pub cert_pem: String,
    pub key_pem: SecretValue,
}

/// Tokens one model response used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewUsage {
    pub session_id: Option<String>,
    pub human_id: Option<String>,
    pub sandbox_id: String,
    pub host: String,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Tokens used, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotal {
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl UsageTotal {
    pub fn tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }
}

/// A stored credential with its value, for the gateway only.
pub struct RevealedCredential {
    pub name: String,
    pub kind: CredentialKind,
    pub value: SecretValue,
}

impl Store {
    /// The deployment CA, made by `make` on first use. Two servers starting at once agree on
    /// one: the first insert wins and both read it back.
    pub async fn gateway_ca(
        &self,
        make: impl FnOnce() -> (String, SecretValue),
    ) -> Result<GatewayCa> {
        if let Some(ca) = self.read_gateway_ca().await? {
            return Ok(ca);
        }
        let (cert_pem, key_pem) = make();
        let sealed = self.key().seal(CA_SEAL_NAME, key_pem.expose());
        let sql = match self.kind() {
            super::DatabaseKind::Sqlite => {
                "INSERT OR IGNORE INTO gateway_ca (id, cert_pem, key_sealed, key_id, created_at) \
                 VALUES (1, $1, $2, $3, $4)"
            }
            super::DatabaseKind::Postgres => {
                "INSERT INTO gateway_ca (id, cert_pem, key_sealed, key_id, created_at) \
                 VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
            }
        };
        sqlx::query(sql)
            .bind(&cert_pem)
            .bind(sealed)
            .bind(self.key().id())
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(self
            .read_gateway_ca()
            .await?
            .expect("the CA row exists after an insert"))
    }

    async fn read_gateway_ca(&self) -> Result<Option<GatewayCa>> {
        let Some(row) =
            sqlx::query("SELECT cert_pem, key_sealed, key_id FROM gateway_ca WHERE id = 1")
                .fetch_optional(self.pool())
                .await?
        else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get("key_sealed")?;
        let key_id: String = row.try_get("key_id")?;
        Ok(Some(GatewayCa {
            cert_pem: row.try_get("cert_pem")?,
            key_pem: self.key().open(CA_SEAL_NAME, &key_id, &sealed)?,
        }))
    }

    /// Every stored credential with its value: the gateway injects some and refuses requests
    /// that carry any of them.
    pub async fn reveal_all_credentials(&self) -> Result<Vec<RevealedCredential>> {
        let rows = sqlx::query("SELECT name, kind, sealed, key_id FROM credentials ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let sealed: Vec<u8> = r.try_get("sealed")?;
                let key_id: String = r.try_get("key_id")?;
                Ok(RevealedCredential {
                    value: self.key().open(&name, &key_id, &sealed)?,
                    kind: parse_col(r.try_get("kind")?)?,
                    name,
                })
            })
            .collect()
    }

    /// A fingerprint of the credential set (count and newest change): when it changes, the
    /// gateway reloads the values.
    pub async fn credentials_fingerprint(&self) -> Result<(i64, i64)> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(updated_at), 0) AS t FROM credentials")
                .fetch_one(self.pool())
                .await?;
        Ok((row.try_get("n")?, row.try_get("t")?))
    }

    pub async fn record_usage(&self, rows: &[NewUsage]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let now = now_ms();
        for u in rows {
            sqlx::query(
                "INSERT INTO model_usage (session_id, human_id, sandbox_id, host, model, \
                 input_tokens, output_tokens, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&u.session_id)
            .bind(&u.human_id)
            .bind(&u.sandbox_id)
            .bind(&u.host)
            .bind(&u.model)
            .bind(u.input_tokens)
            .bind(u.output_tokens)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Tokens a session has used.
    pub async fn session_usage(&self, session_id: &SessionId) -> Result<UsageTotal> {
        self.usage_where("session_id = $1", session_id, 0).await
    }

    /// Tokens a human's sessions have used since `since_ms`.
    pub async fn human_usage_since(&self, human_id: &HumanId, since_ms: i64) -> Result<UsageTotal> {
        self.usage_where("human_id = $1 AND at >= $2", human_id, since_ms)
            .await
    }

    async fn usage_where(&self, cond: &str, id: &str, since: i64) -> Result<UsageTotal> {
        let sql = format!(
            "SELECT COUNT(*) AS calls, CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS i, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS o FROM model_usage WHERE {cond}"
        );
        let mut q = sqlx::query(&sql).bind(id);
        if cond.contains("$2") {
            q = q.bind(since);
        }
        let row = q.fetch_one(self.pool()).await?;
        Ok(UsageTotal {
            calls: row.try_get("calls")?,
            input_tokens: row.try_get("i")?,
            output_tokens: row.try_get("o")?,
        })
    }
}
