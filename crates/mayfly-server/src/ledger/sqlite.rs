//! The embedded SQLite store (WAL). The default: no other server needed.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::{ChainedAuditEvent, CredentialRecord, JoinTokenRow, LedgerError, RedeemOutcome, Store, StoredSigningKey};

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    /// `full_sync` makes each commit survive power loss, not just a process crash.
    pub async fn open(path: &Path, full_sync: bool) -> Result<Self, LedgerError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if full_sync { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::connect(opts).await
    }

    /// An in-memory database, for tests and offline tools.
    pub async fn in_memory() -> Result<Self, LedgerError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.shared_cache(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<Self, LedgerError> {
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn key_from_row(r: &SqliteRow) -> Result<StoredSigningKey, sqlx::Error> {
    Ok(StoredSigningKey {
        kid: r.try_get("kid")?,
        alg: r.try_get("alg")?,
        sealed_private_key: r.try_get("sealed_private_key")?,
        created_at: r.try_get("created_at")?,
        retired_at: r.try_get("retired_at")?,
        published_until: r.try_get("published_until")?,
    })
}

fn event_from_row(r: &SqliteRow) -> Result<ChainedAuditEvent, sqlx::Error> {
    Ok(ChainedAuditEvent {
        seq: r.try_get("seq")?,
        ts_ms: r.try_get("ts_ms")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn credential_from_row(r: &SqliteRow) -> Result<CredentialRecord, sqlx::Error> {
    Ok(CredentialRecord {
        jti: r.try_get("jti")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        audience: r.try_get("audience")?,
        scope: r.try_get("scope")?,
        task_id: r.try_get("task_id")?,
        client_id: r.try_get("client_id")?,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
        key_id: r.try_get("key_id")?,
        binding: r.try_get("binding")?,
        fingerprint: r.try_get("fingerprint")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, LedgerError> {
        let res = sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at, kid").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private_key, created_at, retired_at, published_until) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.sealed_private_key)
        .bind(key.created_at)
        .bind(key.retired_at)
        .bind(key.published_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rotate_signing_key(
        &self,
        new: &StoredSigningKey,
        old_kid: &str,
        retired_at: i64,
        published_until: i64,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE signing_keys SET retired_at = ?, published_until = ? WHERE kid = ? AND retired_at IS NULL",
        )
        .bind(retired_at)
        .bind(published_until)
        .bind(old_kid)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Err(LedgerError::Conflict(format!("signing key {old_kid} is not the active key")));
        }
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private_key, created_at, retired_at, published_until) \
             VALUES (?, ?, ?, ?, NULL, NULL)",
        )
        .bind(&new.kid)
        .bind(&new.alg)
        .bind(&new.sealed_private_key)
        .bind(new.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_admin_token(&self, token_hash: &str, name: &str, created_at: i64) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO admin_tokens (token_hash, name, created_at) VALUES (?, ?, ?)")
            .bind(token_hash)
            .bind(name)
            .bind(created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn admin_token_exists(&self, token_hash: &str) -> Result<bool, LedgerError> {
        let row = sqlx::query("SELECT 1 FROM admin_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn admin_token_count(&self) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    async fn insert_join_token(&self, row: &JoinTokenRow) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, spiffe_path, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.token_hash)
        .bind(&row.spiffe_path)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn redeem_join_token(&self, token_hash: &str, now: i64) -> Result<RedeemOutcome, LedgerError> {
        // One conditional UPDATE: two concurrent redemptions cannot both succeed.
        let row = sqlx::query(
            "UPDATE join_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? \
             RETURNING id, token_hash, spiffe_path, created_at, expires_at",
        )
        .bind(now)
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(RedeemOutcome::Redeemed(JoinTokenRow {
                id: r.try_get("id")?,
                token_hash: r.try_get("token_hash")?,
                spiffe_path: r.try_get("spiffe_path")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            }));
        }
        let why = sqlx::query("SELECT used_at FROM join_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match why {
            None => RedeemOutcome::Unknown,
            Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => RedeemOutcome::AlreadyUsed,
            Some(_) => RedeemOutcome::Expired,
        })
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, LedgerError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        })
    }

    async fn append(&self, credentials: &[CredentialRecord], events: &[ChainedAuditEvent]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for c in credentials {
            sqlx::query(
                "INSERT INTO credentials (jti, kind, subject, audience, scope, task_id, client_id, issued_at, \
                 expires_at, key_id, binding, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&c.jti)
            .bind(&c.kind)
            .bind(&c.subject)
            .bind(&c.audience)
            .bind(&c.scope)
            .bind(&c.task_id)
            .bind(&c.client_id)
            .bind(c.issued_at)
            .bind(c.expires_at)
            .bind(&c.key_id)
            .bind(&c.binding)
            .bind(&c.fingerprint)
            .execute(&mut *tx)
            .await?;
        }
        for e in events {
            sqlx::query(
                "INSERT INTO audit_events (seq, ts_ms, kind, subject, detail, prev_hash, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(e.seq)
            .bind(e.ts_ms)
            .bind(&e.kind)
            .bind(&e.subject)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_events_after(&self, after: i64, limit: i64) -> Result<Vec<ChainedAuditEvent>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, LedgerError> {
        let row = sqlx::query("SELECT * FROM credentials WHERE jti = ?").bind(jti).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(credential_from_row).transpose()?)
    }
}
