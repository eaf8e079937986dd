//! What the API reads, through the broker: records, the audit trail and its checkpoints,
//! tasks, database leases, revocations, storage health. Handlers never reach the store
//! themselves; what a read means (a task's state now, a use of a limited-use token) is
//! decided here, once.

use crate::broker::Broker;
use crate::keys::{Kek, KeyRingError};
use crate::ledger::audit::{Anchor, ChainReport};
use crate::ledger::{
    AuditFilter, ChainedAuditEvent, CredentialFilter, CredentialRecord, DbLease, DbLeaseState, LedgerError, Revocation,
    StoredCheckpoint, TaskFilter, TaskRecord, TaskState,
};

/// Which tasks to list: a stored or derived state, `live` (pending or active now), or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSelection {
    /// Pending or active now.
    Live,
    /// Every task.
    All,
    /// Tasks in this state now.
    In(TaskState),
}

/// One page of tasks.
#[derive(Debug, Clone)]
pub struct TaskListing {
    /// The tasks, ordered by id.
    pub tasks: Vec<TaskRecord>,
    /// The id to page after, when there may be more.
    pub next_after: Option<String>,
}

impl Broker {
    /// Issued credentials matching `filter`.
    pub async fn credentials(&self, filter: &CredentialFilter) -> Result<Vec<CredentialRecord>, LedgerError> {
        self.ledger.store().credentials(filter).await
    }

    /// Audit events matching `filter`.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<ChainedAuditEvent>, LedgerError> {
        self.ledger.store().audit_query(filter).await
    }

    /// Signed checkpoints of the audit chain after sequence `after`.
    pub async fn audit_checkpoints_after(&self, after: i64, limit: i64) -> Result<Vec<StoredCheckpoint>, LedgerError> {
        self.ledger.store().audit_checkpoints_after(after, limit).await
    }

    /// The latest signed checkpoint, if one was written.
    pub async fn latest_audit_checkpoint(&self) -> Result<Option<StoredCheckpoint>, LedgerError> {
        Ok(self.ledger.store().latest_audit_checkpoints(1).await?.pop())
    }

    /// Verifies the audit chain against its stored checkpoints, `keys` and an exported anchor.
    pub async fn verify_audit_chain(
        &self,
        keys: &[serde_json::Value],
        exported: Option<Anchor>,
    ) -> Result<ChainReport, LedgerError> {
        crate::checkpoints::verify_chain(self.ledger.store().as_ref(), Some(keys), exported).await
    }

    /// The public JWK of every stored signing key (published or retired), opened under `kek`.
    pub async fn stored_public_keys(&self, kek: &Kek) -> Result<Vec<serde_json::Value>, KeyRingError> {
        crate::keys::stored_public_keys(self.ledger.store().as_ref(), kek).await
    }

    /// Database leases in `states` (all when empty), after id `after`.
    pub async fn db_leases(
        &self,
        states: &[DbLeaseState],
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DbLease>, LedgerError> {
        self.ledger.store().db_leases(states, after, limit).await
    }

    /// Revocations after `cursor`, in cursor order.
    pub async fn revocations_after(&self, cursor: i64, limit: i64) -> Result<Vec<Revocation>, LedgerError> {
        self.ledger.store().revocations_after(cursor, limit).await
    }

    /// The storage backend's name and whether it answers now.
    pub async fn storage_health(&self) -> (&'static str, Result<(), LedgerError>) {
        let store = self.ledger.store();
        (store.backend(), store.ping().await)
    }

    /// Whether the limited-use token `jti` has a use left; with `spend`, uses one (atomically).
    pub async fn use_of_limited_token(&self, jti: &str, spend: bool) -> Result<bool, LedgerError> {
        let store = self.ledger.store();
        if spend { store.use_credential(jti).await } else { store.has_uses_left(jti).await }
    }

    /// A page of tasks started by `creator` (or anyone), by their state at `now`. States
    /// that time derives (expired, denied by deadline) are filtered after reading, so
    /// pages are read until this one is full.
    pub async fn list_tasks(
        &self,
        selection: TaskSelection,
        creator: Option<String>,
        after: Option<String>,
        limit: i64,
        now: i64,
    ) -> Result<TaskListing, LedgerError> {
        let mut filter = TaskFilter {
            creator,
            // An ended task stays ended: that stored state narrows the query.
            state: match selection {
                TaskSelection::In(TaskState::Ended) => Some(TaskState::Ended),
                _ => None,
            },
            live_at: (selection == TaskSelection::Live).then_some(now),
            after,
            limit,
        };
        let mut tasks = Vec::new();
        loop {
            let rows = self.ledger.store().tasks(&filter).await?;
            let full = rows.len() as i64 == filter.limit;
            filter.after = rows.last().map(|t| t.id.clone());
            for t in rows {
                let keep = match selection {
                    TaskSelection::Live => matches!(t.state_at(now), TaskState::Pending | TaskState::Active),
                    TaskSelection::In(wanted) => t.state_at(now) == wanted,
                    TaskSelection::All => true,
                };
                if keep && (tasks.len() as i64) < limit {
                    tasks.push(t);
                }
            }
            if (tasks.len() as i64) >= limit {
                let next_after = tasks.last().map(|t: &TaskRecord| t.id.clone());
                return Ok(TaskListing { tasks, next_after });
            }
            if !full {
                return Ok(TaskListing { tasks, next_after: None });
            }
        }
    }
}
