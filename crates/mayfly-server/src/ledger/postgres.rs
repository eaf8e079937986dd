//! The PostgreSQL store: one database shared by several stateless Mayfly replicas.
//!
//! What sharing needs beyond the portable SQL:
//! - one audit chain under concurrent writers: a group commit locks the single row of
//!   `ledger_heads`, re-chains its events after the real head (another replica may have
//!   appended since) and numbers its revocations, so cursors follow commit order;
//! - change notifications: triggers `pg_notify` on revocations, keys, SVID authorities
//!   and entries, and every replica LISTENs, so a revocation is enforced everywhere at once;
//! - one leader for background work: a session advisory lock on a dedicated connection,
//!   released by PostgreSQL the moment that replica's connection dies.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, Postgres, QueryBuilder};
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinHandle;

use super::sql::{ROWS_PER_STATEMENT, last_per_id, portable_store};
use super::{AdminTokenRemoval, LedgerError, StoreChange, StoredAdminToken, StoredBatch};

/// The channel every replica listens on.
const CHANGES_CHANNEL: &str = "mayfly_changes";
/// The advisory lock whose holder runs background work ("mayfly" in ASCII, then 1).
const LEADER_LOCK: i64 = 0x6d61_7966_6c79_0001;

/// The leader connection and whether it holds the lock.
#[derive(Default)]
struct Leadership {
    conn: Option<PgConnection>,
    leading: bool,
}

/// PostgreSQL-backed [`Store`](super::Store), safe for several replicas at once.
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    changes: broadcast::Sender<StoreChange>,
    listener: JoinHandle<()>,
    leadership: Mutex<Leadership>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options hold the password: never printed.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The URL without its secrets, for messages: the password (in the authority or as a
/// `password=` parameter) is replaced, and other parameters are dropped but named.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
            u.set_query(None);
            if !names.is_empty() {
                u.set_query(Some(&names.iter().map(|k| format!("{k}=REDACTED")).collect::<Vec<_>>().join("&")));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// How long the leader may take to confirm or claim its lock before it counts as lost.
const LEADER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

impl PostgresStore {
    /// Connects, applies migrations and starts listening for other replicas' changes.
    pub async fn connect(url: &str, settings: &crate::ledger::config::PostgresConfig) -> Result<Self, LedgerError> {
        // Statements carry credential ids and sealed keys: sqlx must never log them.
        let options = PgConnectOptions::from_str(url)?
            .application_name("mayfly")
            .disable_statement_logging()
            // A replica that stalls inside a group commit (a black-holed network) must not
            // hold the heads row, and with it every replica's writes, for long: others
            // give up waiting after lock_timeout, and PostgreSQL ends the stalled session.
            .options([
                ("lock_timeout", "10s"),
                ("statement_timeout", "60s"),
                ("idle_in_transaction_session_timeout", "30s"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A broken connection fails one statement and is dropped; pinging each time
            // would cost a round trip on every request.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let (changes, _) = broadcast::channel(1024);
        let listener = tokio::spawn(listen(pool.clone(), changes.clone()));
        Ok(Self { pool, options, changes, listener, leadership: Mutex::new(Leadership::default()) })
    }

    async fn append_in(&self, batch: &mut StoredBatch) -> Result<(), LedgerError> {
        let mut guard = CloseUnlessDone(Some(self.pool.acquire().await?));
        if let Some(conn) = guard.0.as_mut() {
            match append_on(conn, batch).await {
                // Rolled back: the session is clean and goes back to the pool.
                Err(e @ LedgerError::Changed(_)) => {
                    guard.0.take();
                    return Err(e);
                }
                other => other?,
            }
        }
        // Only a session whose transaction is over goes back to the pool.
        guard.0.take();
        Ok(())
    }

    async fn try_lead_in(&self, slot: &mut Leadership) -> Result<bool, LedgerError> {
        let conn = match &mut slot.conn {
            Some(c) => c,
            None => slot.conn.insert(self.options.connect().await?),
        };
        if slot.leading {
            // Still holding it as long as the session lives.
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            return Ok(true);
        }
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut *conn).await?;
        slot.leading = got;
        Ok(got)
    }
}

/// Holds the connection of a group commit: unless the commit finished, the session may
/// be inside a transaction (failed, or abandoned mid-way), so it is closed, never reused.
struct CloseUnlessDone(Option<sqlx::pool::PoolConnection<Postgres>>);

impl Drop for CloseUnlessDone {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// One group commit on `conn`, in four round trips: begin; the credentials with the lock
/// on the chain's head; the events, revocations and the head's move; commit, then wait
/// for the disk. The transaction is driven by hand so that the last two go in one trip.
async fn append_on(conn: &mut PgConnection, batch: &mut StoredBatch) -> Result<(), LedgerError> {
    // Rows locked in id order by every replica: two batches touching the same rows
    // wait for each other instead of deadlocking.
    let mut tasks = last_per_id(&batch.tasks, |t| &t.id);
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut db_leases = last_per_id(&batch.db_leases, |l| &l.id);
    db_leases.sort_by(|a, b| a.id.cmp(&b.id));
    // READ COMMITTED, explicitly: under REPEATABLE READ a commit waiting on the heads
    // row would fail instead of reading the head another replica just moved.
    // The commit does not wait for the disk: PostgreSQL holds row locks until a commit
    // returns, and waiting for the WAL flush under the heads lock would serialise every
    // replica's group commits on the disk. Durability comes at the end, before anyone
    // is told, and a later commit (another replica's, chained after this one) can only
    // become durable with everything before it in the WAL, so the chain cannot fork.
    sqlx::raw_sql("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    // A guarded write checks what it depends on first, with those rows locked until it ends.
    if !batch.guards.is_empty()
        && let Err(e) = check_guards(conn, &batch.guards, " FOR UPDATE").await
    {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        return Err(e);
    }
    let chained = !batch.events.is_empty() || !batch.revocations.is_empty();
    let credential_chunks: Vec<_> = batch.credentials.chunks(ROWS_PER_STATEMENT).collect();
    // When the head is locked, the last credentials ride in the statement that locks it.
    let (with_lock, alone) = match credential_chunks.split_last() {
        Some((last, rest)) if chained => (Some(*last), rest),
        _ => (None, &credential_chunks[..]),
    };
    for chunk in alone {
        let mut q = QueryBuilder::<Postgres>::new("");
        push_credentials(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    for chunk in tasks.chunks(ROWS_PER_STATEMENT / 2) {
        let mut q = QueryBuilder::<Postgres>::new("");
        push_tasks(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    for chunk in db_leases.chunks(ROWS_PER_STATEMENT / 2) {
        let mut q = QueryBuilder::<Postgres>::new("");
        push_db_leases(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    if chained {
        let mut q = QueryBuilder::<Postgres>::new("");
        if let Some(chunk) = with_lock {
            q.push("WITH c AS (");
            push_credentials(&mut q, chunk);
            q.push(") ");
        }
        q.push("SELECT audit_seq, audit_hash, revocation_seq FROM ledger_heads WHERE id = 1 FOR UPDATE");
        let (mut seq, mut hash, mut cursor): (i64, String, i64) = q.build_query_as().fetch_one(&mut *conn).await?;
        let in_place = batch.events.first().is_none_or(|e| e.seq == seq + 1 && e.prev_hash == hash);
        for e in &mut batch.events {
            if !in_place {
                e.rechain(seq, &hash);
            }
            (seq, hash) = (e.seq, e.hash.clone());
        }
        for r in &mut batch.revocations {
            cursor += 1;
            r.cursor = cursor;
        }
        // Under the lock, as few round trips as possible: every chunk but the last of
        // each kind on its own, then the last ones and the heads' move in one statement.
        let revocation_chunks: Vec<_> = batch.revocations.chunks(ROWS_PER_STATEMENT).collect();
        let event_chunks: Vec<_> = batch.events.chunks(ROWS_PER_STATEMENT).collect();
        let (last_revocations, earlier_revocations) = revocation_chunks.split_last().unzip();
        let (last_events, earlier_events) = event_chunks.split_last().unzip();
        for chunk in earlier_revocations.unwrap_or_default() {
            let mut q = QueryBuilder::<Postgres>::new("");
            push_revocations(&mut q, chunk);
            q.build().execute(&mut *conn).await?;
        }
        for chunk in earlier_events.unwrap_or_default() {
            let mut q = QueryBuilder::<Postgres>::new("");
            push_events(&mut q, chunk);
            q.build().execute(&mut *conn).await?;
        }
        let mut q = QueryBuilder::<Postgres>::new("WITH ");
        if let Some(chunk) = last_revocations {
            q.push("r AS (");
            push_revocations(&mut q, chunk);
            q.push("), ");
        }
        if let Some(chunk) = last_events {
            q.push("e AS (");
            push_events(&mut q, chunk);
            q.push("), ");
        }
        q.push("h AS (SELECT 1) UPDATE ledger_heads SET audit_seq = ")
            .push_bind(seq)
            .push(", audit_hash = ")
            .push_bind(hash)
            .push(", revocation_seq = ")
            .push_bind(cursor)
            .push(" WHERE id = 1");
        q.build().execute(&mut *conn).await?;
    }
    // The commit releases the head at once; then a synchronous commit of a transaction
    // with an id flushes the WAL up to its own commit record, and so past the batch's.
    // One round trip: if the first COMMIT fails, nothing after it runs.
    sqlx::raw_sql("COMMIT; BEGIN; SELECT txid_current(); COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Forwards notifications from other replicas (and our own) to subscribers; after a lost
/// connection it announces `All`, since notifications sent meanwhile are gone.
async fn listen(pool: PgPool, changes: broadcast::Sender<StoreChange>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let _ = changes.send(StoreChange::All);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let _ = changes.send(StoreChange::parse(n.payload()));
                }
                // Connection lost; the next call reconnects and listens again.
                Ok(None) => {
                    let _ = changes.send(StoreChange::All);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the change notifications; reconnecting");
                    let _ = changes.send(StoreChange::All);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

portable_store!(PostgresStore, Postgres, {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn changes(&self) -> Option<broadcast::Receiver<StoreChange>> {
        Some(self.changes.subscribe())
    }

    async fn try_lead(&self) -> Result<bool, LedgerError> {
        let mut slot = self.leadership.lock().await;
        // A silently dead connection would block for minutes while another replica takes
        // the lock: past the timeout, this replica stops leading.
        let result = match tokio::time::timeout(LEADER_CHECK_TIMEOUT, self.try_lead_in(&mut slot)).await {
            Ok(r) => r,
            Err(_) => Err(LedgerError::Database(sqlx::Error::PoolTimedOut)),
        };
        if result.is_err() {
            // The session is gone or unusable, and with it any lock it held.
            *slot = Leadership::default();
        }
        result
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, LedgerError> {
        let (seq, hash): (i64, String) =
            sqlx::query_as("SELECT audit_seq, audit_hash FROM ledger_heads WHERE id = 1").fetch_one(&self.pool).await?;
        Ok((seq > 0).then_some((seq, hash)))
    }

    async fn revocation_head(&self) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar("SELECT revocation_seq FROM ledger_heads WHERE id = 1").fetch_one(&self.pool).await?)
    }

    async fn append(&self, batch: &mut StoredBatch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.append_in(batch).await
    }

    async fn remove_admin_token(&self, id: &str) -> Result<AdminTokenRemoval, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // Every token row locked, in the same order on every replica: two removals take
        // turns, and the second counts what the first left (READ COMMITTED skips the row
        // the first deleted), so the last token is never removed.
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM admin_tokens ORDER BY id FOR UPDATE").fetch_all(&mut *tx).await?;
        if !ids.iter().any(|i| i == id) {
            return Ok(AdminTokenRemoval::NotFound);
        }
        if ids.len() < 2 {
            return Ok(AdminTokenRemoval::LastOne);
        }
        let removed: StoredAdminToken = sqlx::query_as(
            "DELETE FROM admin_tokens WHERE id = $1 RETURNING id, token_hash, name, created_at, last_used_at",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AdminTokenRemoval::Removed(removed))
    }
});
