//! The embedded SQLite store (WAL). The default: no other server needed.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::Mutex;

use super::{
    AuditFilter, ChainedAuditEvent, CredentialFilter, CredentialRecord, DbLease, DbLeaseState, JoinTokenRow,
    LedgerError, RedeemOutcome, Revocation, RevocationKind, Store, StoredBatch, StoredEntry, StoredSigningKey,
    StoredSvidAuthority, TaskFilter, TaskRecord, TaskState,
};

/// Rows per multi-row INSERT, well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 256;

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The group-commit writer's own connection: no pool hand-off on the hot path.
    writer: Mutex<SqliteConnection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    /// `full_sync` makes each commit survive power loss, not just a process crash.
    pub async fn open(path: &Path, full_sync: bool) -> Result<Self, LedgerError> {
        // Created empty with mode 0600 first: SQLite gives its -wal and -shm files the
        // database file's mode, so the whole ledger stays private to the owner.
        if !path.exists() {
            crate::fsutil::write_private(path, b"").map_err(|e| LedgerError::Database(sqlx::Error::Io(e)))?;
        }
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
        let name = format!("file:mayfly-{}?mode=memory&cache=shared", crate::ids::random_hex(8));
        Self::connect(SqliteConnectOptions::from_str(&name)?).await
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<Self, LedgerError> {
        // A local file answers or fails on use; pinging it before each acquire only costs a round trip.
        let pool =
            SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(opts.clone()).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let writer = Mutex::new(SqliteConnection::connect_with(&opts).await?);
        Ok(Self { pool, writer })
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

fn revocation_from_row(r: &SqliteRow) -> Result<Revocation, LedgerError> {
    let kind: String = r.try_get("kind")?;
    Ok(Revocation {
        cursor: r.try_get("seq")?,
        kind: RevocationKind::parse(&kind)
            .ok_or_else(|| LedgerError::Conflict(format!("unknown revocation kind {kind:?} in storage")))?,
        value: r.try_get("value")?,
        issued_before: r.try_get("issued_before")?,
        revoked_at: r.try_get("revoked_at")?,
        expires_at: r.try_get("expires_at")?,
        reason: r.try_get("reason")?,
    })
}

fn task_from_row(r: &SqliteRow) -> Result<TaskRecord, LedgerError> {
    let state: String = r.try_get("state")?;
    Ok(TaskRecord {
        id: r.try_get("id")?,
        parent_id: r.try_get("parent_id")?,
        path: r.try_get("path")?,
        depth: r.try_get("depth")?,
        creator: r.try_get("creator")?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        actor: r.try_get("actor")?,
        attributes: r.try_get("attributes")?,
        purpose: r.try_get("purpose")?,
        scope: r.try_get("scope")?,
        audiences: r.try_get("audiences")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        state: TaskState::parse(&state)
            .ok_or_else(|| LedgerError::Conflict(format!("task has unknown state {state:?}")))?,
        approval_deadline: r.try_get("approval_deadline")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
    })
}

fn db_lease_from_row(r: &SqliteRow) -> Result<DbLease, LedgerError> {
    let state: String = r.try_get("state")?;
    Ok(DbLease {
        id: r.try_get("id")?,
        issuer: r.try_get("issuer")?,
        role: r.try_get("role")?,
        username: r.try_get("username")?,
        subject: r.try_get("subject")?,
        task_id: r.try_get("task_id")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        max_expires_at: r.try_get("max_expires_at")?,
        state: DbLeaseState::parse(&state)
            .ok_or_else(|| LedgerError::Conflict(format!("lease has unknown state {state:?}")))?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
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
        max_uses: r.try_get("max_uses")?,
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

    async fn svid_authorities(&self) -> Result<Vec<StoredSvidAuthority>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM svid_authorities ORDER BY created_at, id").fetch_all(&self.pool).await?;
        let row = |r: &SqliteRow| -> Result<StoredSvidAuthority, sqlx::Error> {
            Ok(StoredSvidAuthority {
                id: r.try_get("id")?,
                ca_cert: r.try_get("ca_cert")?,
                sealed_ca_key: r.try_get("sealed_ca_key")?,
                sealed_jwt_key: r.try_get("sealed_jwt_key")?,
                created_at: r.try_get("created_at")?,
                not_after: r.try_get("not_after")?,
                retired_at: r.try_get("retired_at")?,
                published_until: r.try_get("published_until")?,
            })
        };
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    async fn insert_svid_authority(
        &self,
        new: &StoredSvidAuthority,
        retire: Option<(&str, i64, i64)>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        if let Some((old, retired_at, published_until)) = retire {
            let res = sqlx::query(
                "UPDATE svid_authorities SET retired_at = ?, published_until = ? WHERE id = ? AND retired_at IS NULL",
            )
            .bind(retired_at)
            .bind(published_until)
            .bind(old)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                return Err(LedgerError::Conflict(format!("SVID authority {old} is not the active one")));
            }
        }
        sqlx::query(
            "INSERT INTO svid_authorities (id, ca_cert, sealed_ca_key, sealed_jwt_key, created_at, not_after) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(&new.ca_cert)
        .bind(&new.sealed_ca_key)
        .bind(&new.sealed_jwt_key)
        .bind(new.created_at)
        .bind(new.not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn workload_entries(&self) -> Result<Vec<StoredEntry>, LedgerError> {
        let rows = sqlx::query("SELECT id, spec, created_at FROM workload_entries ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        let row = |r: &SqliteRow| -> Result<StoredEntry, sqlx::Error> {
            Ok(StoredEntry { id: r.try_get("id")?, spec: r.try_get("spec")?, created_at: r.try_get("created_at")? })
        };
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    async fn insert_workload_entry(&self, entry: &StoredEntry) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO workload_entries (id, spec, created_at) VALUES (?, ?, ?)")
            .bind(&entry.id)
            .bind(&entry.spec)
            .bind(entry.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_workload_entry(&self, id: &str) -> Result<bool, LedgerError> {
        let res = sqlx::query("DELETE FROM workload_entries WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(res.rows_affected() == 1)
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

    async fn append(&self, batch: &StoredBatch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let StoredBatch { credentials, tasks, db_leases, revocations, events } = batch;
        // The whole group commit is one multi-statement query: one round trip to the
        // SQLite worker thread instead of one per statement (BEGIN, inserts, COMMIT).
        let mut q = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE;");
        for chunk in credentials.chunks(ROWS_PER_STATEMENT) {
            q.push(
                " INSERT INTO credentials (jti, kind, subject, audience, scope, task_id, client_id, issued_at, \
                 expires_at, key_id, binding, fingerprint, max_uses) ",
            );
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.jti)
                    .push_bind(&c.kind)
                    .push_bind(&c.subject)
                    .push_bind(&c.audience)
                    .push_bind(&c.scope)
                    .push_bind(&c.task_id)
                    .push_bind(&c.client_id)
                    .push_bind(c.issued_at)
                    .push_bind(c.expires_at)
                    .push_bind(&c.key_id)
                    .push_bind(&c.binding)
                    .push_bind(&c.fingerprint)
                    .push_bind(c.max_uses);
            });
            q.push(";");
        }
        for chunk in tasks.chunks(ROWS_PER_STATEMENT / 2) {
            q.push(
                " INSERT OR REPLACE INTO tasks (id, parent_id, path, depth, creator, on_behalf_of, actor, attributes, \
                 purpose, scope, audiences, created_at, expires_at, state, approval_deadline, decided_by, decided_at, \
                 ended_at, end_reason) ",
            );
            q.push_values(chunk, |mut b, t| {
                b.push_bind(&t.id)
                    .push_bind(&t.parent_id)
                    .push_bind(&t.path)
                    .push_bind(t.depth)
                    .push_bind(&t.creator)
                    .push_bind(&t.on_behalf_of)
                    .push_bind(&t.actor)
                    .push_bind(&t.attributes)
                    .push_bind(&t.purpose)
                    .push_bind(&t.scope)
                    .push_bind(&t.audiences)
                    .push_bind(t.created_at)
                    .push_bind(t.expires_at)
                    .push_bind(t.state.as_str())
                    .push_bind(t.approval_deadline)
                    .push_bind(&t.decided_by)
                    .push_bind(t.decided_at)
                    .push_bind(t.ended_at)
                    .push_bind(&t.end_reason);
            });
            q.push(";");
        }
        for chunk in db_leases.chunks(ROWS_PER_STATEMENT / 2) {
            q.push(
                " INSERT OR REPLACE INTO db_leases (id, issuer, role, username, subject, task_id, created_at, \
                 expires_at, max_expires_at, state, attempts, next_attempt_at, last_error, ended_at, end_reason) ",
            );
            q.push_values(chunk, |mut b, l| {
                b.push_bind(&l.id)
                    .push_bind(&l.issuer)
                    .push_bind(&l.role)
                    .push_bind(&l.username)
                    .push_bind(&l.subject)
                    .push_bind(&l.task_id)
                    .push_bind(l.created_at)
                    .push_bind(l.expires_at)
                    .push_bind(l.max_expires_at)
                    .push_bind(l.state.as_str())
                    .push_bind(l.attempts)
                    .push_bind(l.next_attempt_at)
                    .push_bind(&l.last_error)
                    .push_bind(l.ended_at)
                    .push_bind(&l.end_reason);
            });
            q.push(";");
        }
        for chunk in revocations.chunks(ROWS_PER_STATEMENT) {
            q.push(" INSERT INTO revocations (seq, kind, value, issued_before, revoked_at, expires_at, reason) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.cursor)
                    .push_bind(r.kind.as_str())
                    .push_bind(&r.value)
                    .push_bind(r.issued_before)
                    .push_bind(r.revoked_at)
                    .push_bind(r.expires_at)
                    .push_bind(&r.reason);
            });
            q.push(";");
        }
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            q.push(" INSERT INTO audit_events (seq, ts_ms, kind, subject, detail, prev_hash, hash) ");
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.seq)
                    .push_bind(e.ts_ms)
                    .push_bind(&e.kind)
                    .push_bind(&e.subject)
                    .push_bind(&e.detail)
                    .push_bind(&e.prev_hash)
                    .push_bind(&e.hash);
            });
            q.push(";");
        }
        q.push(" COMMIT;");
        let mut conn = self.writer.lock().await;
        if let Err(e) = q.build().execute(&mut *conn).await {
            // A failed statement leaves the transaction open: end it, keeping nothing.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e.into());
        }
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

    async fn revocation_head(&self) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>("seq")).transpose()?.unwrap_or(0))
    }

    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(revocation_from_row).collect()
    }

    async fn drop_expired_revocations(&self, now: i64) -> Result<u64, LedgerError> {
        let res = sqlx::query("DELETE FROM revocations WHERE expires_at <= ?").bind(now).execute(&self.pool).await?;
        Ok(res.rows_affected())
    }

    async fn credentials(&self, f: &CredentialFilter) -> Result<Vec<CredentialRecord>, LedgerError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM credentials WHERE 1 = 1");
        if let Some(v) = &f.subject {
            q.push(" AND subject = ").push_bind(v);
        }
        if let Some(v) = &f.subject_prefix {
            // The prefix itself, or anything below it on a path-segment boundary: a range
            // ['<p>/', '<p>0') ('0' follows '/'), so the subject index is used.
            let p = v.trim_end_matches('/');
            q.push(" AND (subject = ")
                .push_bind(p.to_owned())
                .push(" OR (subject >= ")
                .push_bind(format!("{p}/"))
                .push(" AND subject < ")
                .push_bind(format!("{p}0"))
                .push("))");
        }
        if let Some(v) = &f.task_id {
            q.push(" AND task_id = ").push_bind(v);
        }
        if let Some(v) = &f.kind {
            q.push(" AND kind = ").push_bind(v);
        }
        if let Some(v) = &f.audience {
            q.push(" AND audience = ").push_bind(v);
        }
        if let Some(t) = f.live_at {
            q.push(" AND expires_at > ").push_bind(t);
        }
        if let Some(t) = f.expired_at {
            q.push(" AND expires_at <= ").push_bind(t);
        }
        if let Some(a) = &f.after {
            q.push(" AND jti > ").push_bind(a);
        }
        q.push(" ORDER BY jti LIMIT ").push_bind(f.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(credential_from_row).collect::<Result<_, _>>()?)
    }

    async fn count_expiring(&self, after: i64, until: i64) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT kind, COUNT(*) AS n FROM credentials WHERE expires_at > ? AND expires_at <= ? GROUP BY kind",
        )
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("n")?))).collect()
    }

    async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<ChainedAuditEvent>, LedgerError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM audit_events WHERE seq > ");
        q.push_bind(f.after);
        if let Some(v) = &f.subject {
            q.push(" AND subject = ").push_bind(v);
        }
        match &f.kind {
            Some(k) if k.ends_with('.') => {
                q.push(" AND substr(kind, 1, length(").push_bind(k).push(")) = ").push_bind(k);
            }
            Some(k) => {
                q.push(" AND kind = ").push_bind(k);
            }
            None => {}
        }
        if let Some(t) = f.since_ms {
            q.push(" AND ts_ms >= ").push_bind(t);
        }
        if let Some(t) = f.until_ms {
            q.push(" AND ts_ms < ").push_bind(t);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(f.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, LedgerError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn task_subtree(&self, path: &str) -> Result<Vec<TaskRecord>, LedgerError> {
        // The path itself, or a range ['<p>/', '<p>0') ('0' follows '/') for its descendants.
        let rows = sqlx::query("SELECT * FROM tasks WHERE path = ? OR (path >= ? AND path < ?) ORDER BY path")
            .bind(path)
            .bind(format!("{path}/"))
            .bind(format!("{path}0"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>, LedgerError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM tasks WHERE 1 = 1");
        if let Some(v) = &f.creator {
            q.push(" AND creator = ").push_bind(v);
        }
        if let Some(v) = f.state {
            q.push(" AND state = ").push_bind(v.as_str());
        }
        if let Some(t) = f.live_at {
            q.push(" AND expires_at > ").push_bind(t);
        }
        if let Some(a) = &f.after {
            q.push(" AND id > ").push_bind(a);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(f.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn tasks_due(&self, now: i64, limit: i64) -> Result<Vec<TaskRecord>, LedgerError> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE state IN ('pending', 'active') \
             AND (expires_at <= ? OR (state = 'pending' AND approval_deadline <= ?)) ORDER BY id LIMIT ?",
        )
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn db_lease(&self, id: &str) -> Result<Option<DbLease>, LedgerError> {
        let row = sqlx::query("SELECT * FROM db_leases WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(db_lease_from_row).transpose()
    }

    async fn db_leases(
        &self,
        states: &[DbLeaseState],
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DbLease>, LedgerError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM db_leases WHERE 1 = 1");
        if !states.is_empty() {
            q.push(" AND state IN (");
            let mut sep = q.separated(", ");
            for st in states {
                sep.push_bind(st.as_str());
            }
            q.push(")");
        }
        if let Some(a) = after {
            q.push(" AND id > ").push_bind(a.to_owned());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(db_lease_from_row).collect()
    }

    async fn use_credential(&self, jti: &str) -> Result<bool, LedgerError> {
        let res = sqlx::query(
            "UPDATE credentials SET uses = uses + 1 WHERE jti = ? AND max_uses IS NOT NULL AND uses < max_uses",
        )
        .bind(jti)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, LedgerError> {
        let row = sqlx::query("SELECT * FROM credentials WHERE jti = ?").bind(jti).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(credential_from_row).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(credentials: Vec<CredentialRecord>) -> StoredBatch {
        StoredBatch { credentials, ..StoredBatch::default() }
    }

    fn record(jti: &str) -> CredentialRecord {
        CredentialRecord {
            jti: jti.into(),
            kind: "jwt".into(),
            subject: "spiffe://td/a".into(),
            audience: "aud".into(),
            scope: String::new(),
            task_id: None,
            client_id: "spiffe://td/a".into(),
            issued_at: 1,
            expires_at: 2,
            key_id: "k".into(),
            binding: None,
            fingerprint: "f".into(),
            max_uses: None,
        }
    }

    #[tokio::test]
    async fn a_failed_group_commit_keeps_nothing_and_the_next_one_works() {
        let store = SqliteStore::in_memory().await.unwrap();
        store.append(&batch(vec![record("a")])).await.unwrap();
        // "b" then a duplicate "a": the statement fails, and "b" must not stay behind.
        assert!(store.append(&batch(vec![record("b"), record("a")])).await.is_err());
        assert!(store.credential("b").await.unwrap().is_none());
        store.append(&batch(vec![record("c")])).await.unwrap();
        assert!(store.credential("c").await.unwrap().is_some());
    }
}
