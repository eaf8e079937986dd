//! The embedded SQLite store (WAL). The default: no other server needed.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::Mutex;

use super::sql::{ROWS_PER_STATEMENT, last_per_id, portable_store};
use super::{AdminTokenRemoval, LedgerError, StoredAdminToken, StoredBatch};

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

portable_store!(SqliteStore, Sqlite, {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, LedgerError> {
        Ok(sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revocation_head(&self) -> Result<i64, LedgerError> {
        // AUTOINCREMENT's counter: it keeps cursors of revocations already dropped.
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn remove_admin_token(&self, id: &str) -> Result<AdminTokenRemoval, LedgerError> {
        // One statement holds SQLite's single write lock from the count to the delete:
        // two removals cannot both see another token left.
        let removed: Option<StoredAdminToken> = sqlx::query_as(
            "DELETE FROM admin_tokens WHERE id = $1 AND (SELECT COUNT(*) FROM admin_tokens) > 1 \
             RETURNING id, token_hash, name, created_at, last_used_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = removed {
            return Ok(AdminTokenRemoval::Removed(row));
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM admin_tokens WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(if exists.is_some() { AdminTokenRemoval::LastOne } else { AdminTokenRemoval::NotFound })
    }

    async fn append(&self, batch: &mut StoredBatch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One process writes a SQLite ledger, through this one writer: the events are
        // chained and the cursors numbered from the real head already.
        let tasks = last_per_id(&batch.tasks, |t| &t.id);
        let db_leases = last_per_id(&batch.db_leases, |l| &l.id);
        let mut conn = self.writer.lock().await;
        // A guarded write checks its guards first, in the same (exclusive) transaction.
        let guarded = !batch.guards.is_empty();
        if guarded {
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            if let Err(e) = check_guards(&mut conn, &batch.guards, "").await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
        // The whole group commit is one multi-statement query: one round trip to the
        // SQLite worker thread instead of one per statement (BEGIN, inserts, COMMIT).
        let mut q = QueryBuilder::<Sqlite>::new(if guarded { "" } else { "BEGIN IMMEDIATE;" });
        for chunk in batch.credentials.chunks(ROWS_PER_STATEMENT) {
            push_credentials(&mut q, chunk);
            q.push(";");
        }
        for chunk in tasks.chunks(ROWS_PER_STATEMENT / 2) {
            push_tasks(&mut q, chunk);
            q.push(";");
        }
        for chunk in db_leases.chunks(ROWS_PER_STATEMENT / 2) {
            push_db_leases(&mut q, chunk);
            q.push(";");
        }
        for chunk in batch.revocations.chunks(ROWS_PER_STATEMENT) {
            push_revocations(&mut q, chunk);
            q.push(";");
        }
        for chunk in batch.events.chunks(ROWS_PER_STATEMENT) {
            push_events(&mut q, chunk);
            q.push(";");
        }
        q.push(" COMMIT;");
        if let Err(e) = q.build().execute(&mut *conn).await {
            // A failed statement leaves the transaction open: end it, keeping nothing.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e.into());
        }
        Ok(())
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CredentialRecord, Store};

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
            context: None,
        }
    }

    #[tokio::test]
    async fn an_admin_token_made_before_named_tokens_existed_keeps_working_with_an_id() {
        // A database as the previous version left it: migrations before 0014, one token.
        let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before.migrations.iter().filter(|m| m.version < 14).cloned().collect();
        before.run(&pool).await.unwrap();
        // The old table allowed a name twice: the later one gets a suffix.
        sqlx::query(
            "INSERT INTO admin_tokens (token_hash, name, created_at) VALUES ('h1', 'initial', 5), ('h0', 'initial', 6)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.unwrap();
        let writer = Mutex::new(pool.acquire().await.unwrap().detach());
        let store = SqliteStore { pool, writer };
        let row = store.admin_token_by_hash("h1").await.unwrap().expect("the old token is still known");
        assert_eq!((row.name.as_str(), row.created_at, row.last_used_at), ("initial", 5, None));
        assert_eq!(row.id.len(), 16, "it got an id to be revoked by: {}", row.id);
        assert_eq!(store.admin_token_by_hash("h0").await.unwrap().unwrap().name, "initial-2");
        let dup = StoredAdminToken { id: "x".into(), token_hash: "h2".into(), ..row.clone() };
        assert!(matches!(store.insert_admin_token(&dup).await, Err(LedgerError::Conflict(_))), "names are unique");
    }

    #[tokio::test]
    async fn a_failed_group_commit_keeps_nothing_and_the_next_one_works() {
        let store = SqliteStore::in_memory().await.unwrap();
        store.append(&mut batch(vec![record("a")])).await.unwrap();
        // "b" then a duplicate "a": the statement fails, and "b" must not stay behind.
        assert!(store.append(&mut batch(vec![record("b"), record("a")])).await.is_err());
        assert!(store.credential("b").await.unwrap().is_none());
        store.append(&mut batch(vec![record("c")])).await.unwrap();
        assert!(store.credential("c").await.unwrap().is_some());
    }
}
