//! Group commit: concurrent issuance records are gathered into one transaction,
//! so a durable record costs one fsync per batch, not per request. The writer is
//! the only appender of audit events and revocations, which keeps the hash chain
//! linear and revocation cursors strictly increasing. At shutdown it is told to stop
//! ([`Ledger::close`]): it takes no new request, commits every one already queued, and ends.
//! A request with [`Guard`]s commits in a transaction of its own, so a guard that no
//! longer holds fails that request only.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::audit::GENESIS_HASH;
use super::{
    AuditEvent, ChainedAuditEvent, CredentialRecord, DbLease, Guard, LedgerError, Revocation, Store, StoredBatch,
    TaskRecord,
};

/// One atomic write: everything in it commits together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Issued credentials.
    pub credentials: Vec<CredentialRecord>,
    /// Task rows, inserted or replaced whole.
    pub tasks: Vec<TaskRecord>,
    /// Database lease rows, inserted or replaced whole.
    pub db_leases: Vec<DbLease>,
    /// Revocations (their `cursor` is assigned by the writer).
    pub revocations: Vec<Revocation>,
    /// Audit events (chained by the writer).
    pub events: Vec<AuditEvent>,
    /// What must still hold, checked in the same transaction: if one does not, nothing
    /// is written and the commit fails with [`LedgerError::Changed`].
    pub guards: Vec<Guard>,
}

struct WriteRequest {
    credentials: Vec<CredentialRecord>,
    tasks: Vec<TaskRecord>,
    db_leases: Vec<DbLease>,
    revocations: Vec<Revocation>,
    events: Vec<AuditEvent>,
    guards: Vec<Guard>,
    /// How many revocations it sent (they are moved into the stored batch).
    revocation_count: usize,
    done: oneshot::Sender<Result<Vec<Revocation>, WriteFailure>>,
}

/// Why a request was not committed, as its sender hears it.
enum WriteFailure {
    /// One of its guards no longer held.
    Changed(String),
    /// The store failed the transaction.
    Failed(String),
}

/// Where the chain and the revocation cursor stand after the last commit.
struct Heads {
    seq: i64,
    hash: String,
    revocation: i64,
}

/// Handle to the ledger writer. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<WriteRequest>,
    store: Arc<dyn Store>,
    /// Tells the writer to stop.
    stop: CancellationToken,
    /// Holds the writer task, to join it.
    writer: TaskTracker,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Ledger {
    /// Starts the writer task on top of `store`; at most `batch_max` requests share a transaction.
    pub async fn start(store: Arc<dyn Store>, batch_max: usize) -> Result<Self, LedgerError> {
        let head = store.audit_head().await?.unwrap_or((0, GENESIS_HASH.to_owned()));
        let revocation_head = store.revocation_head().await?;
        let (tx, rx) = mpsc::channel(65_536);
        let (stop, writer) = (CancellationToken::new(), TaskTracker::new());
        writer.spawn(run_writer(store.clone(), rx, head, revocation_head, batch_max.max(1), stop.clone()));
        writer.close();
        Ok(Self { tx, store, stop, writer })
    }

    /// Stops the writer and waits for it: requests already queued are committed (each
    /// one answered once its batch is durable, as always), later ones fail with
    /// [`LedgerError::WriterGone`]. Returns once the last group commit is over. Any clone
    /// may call it, more than once.
    pub async fn close(&self) {
        self.stop.cancel();
        self.writer.wait().await;
    }

    /// Whether the writer has ended (after [`Ledger::close`]).
    pub fn is_closed(&self) -> bool {
        self.writer.is_empty()
    }

    /// The store beneath the writer, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Durably commits a batch; returns its revocations as stored (with cursors).
    pub async fn commit(&self, batch: Batch) -> Result<Vec<Revocation>, LedgerError> {
        let Batch { credentials, tasks, db_leases, revocations, events, guards } = batch;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(WriteRequest {
                credentials,
                tasks,
                db_leases,
                revocation_count: revocations.len(),
                revocations,
                events,
                guards,
                done,
            })
            .await
            .map_err(|_| LedgerError::WriterGone)?;
        match wait.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(WriteFailure::Changed(msg))) => Err(LedgerError::Changed(msg)),
            Ok(Err(WriteFailure::Failed(msg))) => Err(LedgerError::Conflict(msg)),
            Err(_) => Err(LedgerError::WriterGone),
        }
    }

    /// Commits independent guarded `writes` as one batch when every guard holds; when one
    /// no longer does (another request or replica moved that row), commits each alone,
    /// leaving out those whose guard fails. Answers, per write, whether it was committed.
    pub async fn commit_each(&self, writes: Vec<Batch>) -> Result<Vec<bool>, LedgerError> {
        let mut all = Batch::default();
        for w in writes.iter().cloned() {
            all.credentials.extend(w.credentials);
            all.tasks.extend(w.tasks);
            all.db_leases.extend(w.db_leases);
            all.revocations.extend(w.revocations);
            all.events.extend(w.events);
            all.guards.extend(w.guards);
        }
        match self.commit(all).await {
            Ok(_) => return Ok(vec![true; writes.len()]),
            Err(LedgerError::Changed(_)) => {}
            Err(e) => return Err(e),
        }
        let mut committed = Vec::with_capacity(writes.len());
        for w in writes {
            match self.commit(w).await {
                Ok(_) => committed.push(true),
                Err(LedgerError::Changed(why)) => {
                    tracing::debug!(%why, "a row moved meanwhile; left to whoever moved it");
                    committed.push(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(committed)
    }

    /// Durably records credentials and audit events; returns once they are committed.
    pub async fn record(&self, credentials: Vec<CredentialRecord>, events: Vec<AuditEvent>) -> Result<(), LedgerError> {
        self.commit(Batch { credentials, events, ..Batch::default() }).await.map(|_| ())
    }

    /// Durably records revocations (their `cursor` is assigned here) with audit events;
    /// returns them as stored.
    pub async fn revoke(
        &self,
        revocations: Vec<Revocation>,
        events: Vec<AuditEvent>,
    ) -> Result<Vec<Revocation>, LedgerError> {
        self.commit(Batch { revocations, events, ..Batch::default() }).await
    }

    /// Durably records one audit event.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), LedgerError> {
        self.record(Vec::new(), vec![event]).await
    }
}

async fn run_writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<WriteRequest>,
    head: (i64, String),
    revocation_head: i64,
    batch_max: usize,
    stop: CancellationToken,
) {
    let mut heads = Heads { seq: head.0, hash: head.1, revocation: revocation_head };
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(batch_max);
    let mut stopping = false;
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled(), if !stopping => {
                // No new request gets in; those already queued are still received, and
                // `recv_many` answers 0 once they are all committed.
                stopping = true;
                rx.close();
                continue;
            }
            n = rx.recv_many(&mut batch, batch_max) => n,
        };
        if received == 0 {
            break;
        }
        // Unguarded requests share one transaction; each guarded one has its own.
        let (guarded, mut grouped): (Vec<_>, Vec<_>) = batch.drain(..).partition(|r| !r.guards.is_empty());
        commit_group(store.as_ref(), &mut grouped, &mut heads).await;
        for req in guarded {
            commit_group(store.as_ref(), &mut vec![req], &mut heads).await;
        }
    }
    tracing::debug!("the ledger writer stopped after its last group commit");
}

/// Commits `group` in one transaction and answers each request in it.
async fn commit_group(store: &dyn Store, group: &mut Vec<WriteRequest>, heads: &mut Heads) {
    if group.is_empty() {
        return;
    }
    let mut out = StoredBatch::default();
    let (mut s, mut h, mut r) = (heads.seq, heads.hash.clone(), heads.revocation);
    for req in group.iter_mut() {
        out.credentials.append(&mut req.credentials);
        out.tasks.append(&mut req.tasks);
        out.db_leases.append(&mut req.db_leases);
        out.guards.append(&mut req.guards);
        for mut rev in req.revocations.drain(..) {
            r += 1;
            rev.cursor = r;
            out.revocations.push(rev);
        }
        for ev in &req.events {
            let c = ChainedAuditEvent::chain(ev, s, &h);
            s = c.seq;
            h.clone_from(&c.hash);
            out.events.push(c);
        }
    }
    tracing::trace!(requests = group.len(), "ledger group commit");
    let result = store.append(&mut out).await;
    match &result {
        // Heads move only once the batch is committed, to where the store put it
        // (a shared store may have moved it past other replicas' writes).
        Ok(()) => {
            if let Some(last) = out.events.last() {
                (heads.seq, heads.hash) = (last.seq, last.hash.clone());
            }
            if let Some(last) = out.revocations.last() {
                heads.revocation = last.cursor;
            }
        }
        Err(LedgerError::Changed(why)) => tracing::debug!(%why, "guarded write refused"),
        Err(e) => tracing::error!(error = %e, records = out.credentials.len(), "ledger batch failed"),
    }
    // Each request gets back its own revocations, as stored, in the order it sent them.
    let mut stored = out.revocations.into_iter();
    for req in group.drain(..) {
        let reply = match &result {
            Ok(()) => Ok(stored.by_ref().take(req.revocation_count).collect()),
            Err(LedgerError::Changed(why)) => Err(WriteFailure::Changed(why.clone())),
            Err(e) => Err(WriteFailure::Failed(e.to_string())),
        };
        let _ = req.done.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sqlite::SqliteStore;

    #[tokio::test]
    async fn close_commits_every_queued_request_and_refuses_later_ones() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let ledger = Ledger::start(store.clone(), 16).await.unwrap();
        // Queued before the writer has run once: close must still commit every one of them.
        let mut answers = Vec::new();
        for i in 0..300 {
            let (done, wait) = oneshot::channel();
            let event = AuditEvent::new("test.queued", None, serde_json::json!({ "i": i }));
            let req = WriteRequest {
                credentials: Vec::new(),
                tasks: Vec::new(),
                db_leases: Vec::new(),
                revocations: Vec::new(),
                events: vec![event],
                guards: Vec::new(),
                revocation_count: 0,
                done,
            };
            assert!(ledger.tx.try_send(req).is_ok());
            answers.push(wait);
        }
        assert!(!ledger.is_closed());
        ledger.close().await;
        assert!(ledger.is_closed(), "the writer task has ended");
        for a in answers {
            assert!(matches!(a.await, Ok(Ok(_))), "each queued request is answered as committed");
        }
        assert_eq!(store.audit_head().await.unwrap().map(|h| h.0), Some(300), "every queued event is stored");
        let late = ledger.audit(AuditEvent::new("test.late", None, serde_json::json!({}))).await;
        assert!(matches!(late, Err(LedgerError::WriterGone)), "{late:?}");
        ledger.close().await;
    }
}
