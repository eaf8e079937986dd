//! Conditions a write depends on. A task or lease transition reads a row, decides, and
//! writes; between the read and the write another request (or another replica) may
//! have moved the row. A [`Guard`] names what the decision assumed; the store checks it
//! inside the write's own transaction, with the rows it reads locked (PostgreSQL
//! `FOR UPDATE`; a SQLite write transaction is exclusive), and writes nothing if it no
//! longer holds. So the database decides who wins a race, not a process-wide lock.

use super::{DbLease, DbLeaseState, TaskRecord, TaskState};

/// What a guarded write assumed when it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Task `id` is still stored as `stored` and stands at `at_now` at `now`
    /// ([`TaskRecord::state_at`]): a parent still active, a pending task still pending.
    Task { id: String, stored: TaskState, at_now: TaskState, now: i64 },
    /// The live tasks (pending or active at `now`) at or below `path` are exactly `live`:
    /// nothing started under it, and nothing in it ended, since it was read.
    LiveSubtree { path: String, live: Vec<String>, now: i64 },
    /// Lease `id` is still stored as `state`.
    Lease { id: String, state: DbLeaseState },
}

impl Guard {
    /// The rows a guard reads are locked in this order by every writer (tasks, then
    /// leases; by id within each), so two guarded writes wait for each other, never deadlock.
    pub(crate) fn lock_order(&self) -> (u8, &str) {
        match self {
            Guard::Task { id, .. } => (0, id),
            Guard::LiveSubtree { path, .. } => (0, path),
            Guard::Lease { id, .. } => (1, id),
        }
    }

    /// Whether the task rows read for this guard (`rows`: the one task, or the subtree)
    /// still match; `Err` says what changed.
    pub(crate) fn check_tasks(&self, rows: &[TaskRecord]) -> Result<(), String> {
        match self {
            Guard::Task { id, stored, at_now, now } => match rows.first() {
                None => Err(format!("task {id} is gone")),
                Some(t) if t.state != *stored || t.state_at(*now) != *at_now => {
                    Err(format!("task {id} is now {}", t.state_at(*now).as_str()))
                }
                Some(_) => Ok(()),
            },
            Guard::LiveSubtree { path, live, now } => {
                let mut found: Vec<&str> = rows
                    .iter()
                    .filter(|t| matches!(t.state_at(*now), TaskState::Pending | TaskState::Active))
                    .map(|t| t.id.as_str())
                    .collect();
                found.sort_unstable();
                let mut expected: Vec<&str> = live.iter().map(String::as_str).collect();
                expected.sort_unstable();
                if found == expected {
                    Ok(())
                } else {
                    Err(format!("the tasks under {path} changed while they were being ended"))
                }
            }
            Guard::Lease { .. } => Ok(()),
        }
    }

    /// Whether the lease row read for this guard still matches.
    pub(crate) fn check_lease(&self, row: Option<&DbLease>) -> Result<(), String> {
        match self {
            Guard::Lease { id, state } => match row {
                None => Err(format!("lease {id} is gone")),
                Some(l) if l.state != *state => Err(format!("lease {id} is now {}", l.state.as_str())),
                Some(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Sorts guards into the order their rows are locked in.
pub(crate) fn in_lock_order(guards: &[Guard]) -> Vec<&Guard> {
    let mut sorted: Vec<&Guard> = guards.iter().collect();
    sorted.sort_by(|a, b| a.lock_order().cmp(&b.lock_order()));
    sorted
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::sqlite::SqliteStore;
    use crate::ledger::{AuditEvent, Batch, Ledger, LedgerError, Store};

    fn task(id: &str, path: &str, state: TaskState) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            parent_id: None,
            path: path.into(),
            depth: path.matches('/').count() as i64,
            creator: "spiffe://td/a".into(),
            on_behalf_of: None,
            actor: "{}".into(),
            attributes: "{}".into(),
            purpose: "test".into(),
            scope: String::new(),
            audiences: None,
            created_at: 1,
            expires_at: 1_000,
            state,
            approval_deadline: None,
            decided_by: None,
            decided_at: None,
            ended_at: None,
            end_reason: None,
        }
    }

    #[test]
    fn task_json_columns_parse_through_their_accessors() {
        let mut t = task("a", "a", TaskState::Active);
        t.actor = r#"{"sub":"spiffe://td/w"}"#.into();
        t.attributes = r#"{"unix:uid":"1000"}"#.into();
        assert_eq!(t.actor_json().unwrap(), serde_json::json!({"sub": "spiffe://td/w"}));
        assert_eq!(t.attribute_map().unwrap().get("unix:uid").map(String::as_str), Some("1000"));
        // A malformed row is an error the caller handles, not a panic or a silent default.
        t.actor = "not json".into();
        t.attributes = "[]".into();
        assert!(t.actor_json().is_err());
        assert!(t.attribute_map().is_err());
    }

    fn write(tasks: Vec<TaskRecord>, guards: Vec<Guard>) -> Batch {
        let events = vec![AuditEvent::new("test.guarded", None, serde_json::json!({}))];
        Batch { tasks, guards, events, ..Batch::default() }
    }

    #[tokio::test]
    async fn a_guard_that_no_longer_holds_writes_nothing_and_others_in_the_same_group_still_commit() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let ledger = Ledger::start(store.clone(), 64).await.unwrap();
        ledger.commit(write(vec![task("p", "p", TaskState::Pending)], vec![])).await.unwrap();
        let pending =
            || Guard::Task { id: "p".into(), stored: TaskState::Pending, at_now: TaskState::Pending, now: 10 };
        // Two approvals decided on the same read: the first wins, the second finds it changed.
        let first = ledger.commit(write(vec![task("p", "p", TaskState::Active)], vec![pending()]));
        let second = ledger.commit(write(vec![task("p", "p", TaskState::Denied)], vec![pending()]));
        let unguarded = ledger.commit(write(vec![task("q", "q", TaskState::Active)], vec![]));
        let (first, second, unguarded) = tokio::join!(first, second, unguarded);
        assert!(first.is_ok(), "{first:?}");
        assert!(matches!(&second, Err(LedgerError::Changed(m)) if m.contains("task p is now active")), "{second:?}");
        assert!(unguarded.is_ok(), "a refused guard fails its own request only");
        assert_eq!(store.task("p").await.unwrap().unwrap().state, TaskState::Active);
        // The refused request's event was not chained: the chain still verifies.
        let events = store.audit_events_after(0, 100).await.unwrap();
        assert_eq!(events.len(), 3, "the first write, one approval and the unguarded write");
        ledger.close().await;
    }

    #[tokio::test]
    async fn a_subtree_guard_sees_a_task_started_under_it_since_it_was_read() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let ledger = Ledger::start(store.clone(), 64).await.unwrap();
        ledger.commit(write(vec![task("r", "r", TaskState::Active)], vec![])).await.unwrap();
        let live = vec!["r".to_owned()];
        let guard = Guard::LiveSubtree { path: "r".into(), live: live.clone(), now: 10 };
        // A sub-task starts after the subtree was read…
        let parent_active =
            Guard::Task { id: "r".into(), stored: TaskState::Active, at_now: TaskState::Active, now: 10 };
        ledger.commit(write(vec![task("c", "r/c", TaskState::Active)], vec![parent_active.clone()])).await.unwrap();
        // …so ending what was read would leave it running: refused.
        let end = ledger.commit(write(vec![task("r", "r", TaskState::Ended)], vec![guard])).await;
        assert!(matches!(end, Err(LedgerError::Changed(_))), "{end:?}");
        // Read again, both end together; a sub-task started afterwards finds its parent ended.
        let guard = Guard::LiveSubtree { path: "r".into(), live: vec!["c".into(), "r".into()], now: 10 };
        let ended = vec![task("r", "r", TaskState::Ended), task("c", "r/c", TaskState::Ended)];
        ledger.commit(write(ended, vec![guard])).await.unwrap();
        let late = ledger.commit(write(vec![task("d", "r/d", TaskState::Active)], vec![parent_active])).await;
        assert!(matches!(&late, Err(LedgerError::Changed(m)) if m.contains("task r is now ended")), "{late:?}");
        assert!(store.task("d").await.unwrap().is_none());
        // A sibling path sharing the prefix ("r2") is not under "r".
        let rows = vec![task("r2", "r2", TaskState::Active)];
        ledger.commit(write(rows, vec![])).await.unwrap();
        let guard = Guard::LiveSubtree { path: "r".into(), live: vec![], now: 10 };
        ledger.commit(write(vec![], vec![guard])).await.unwrap();
        ledger.close().await;
    }

    #[tokio::test]
    async fn commit_each_leaves_out_only_the_writes_whose_guard_failed() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let ledger = Ledger::start(store.clone(), 64).await.unwrap();
        ledger.commit(write(vec![task("p", "p", TaskState::Pending)], vec![])).await.unwrap();
        let active = Guard::Task { id: "p".into(), stored: TaskState::Active, at_now: TaskState::Active, now: 10 };
        let stale = write(vec![task("p", "p", TaskState::Ended)], vec![active]);
        let fine = write(vec![task("q", "q", TaskState::Active)], vec![]);
        assert_eq!(ledger.commit_each(vec![stale, fine]).await.unwrap(), vec![false, true]);
        assert_eq!(store.task("p").await.unwrap().unwrap().state, TaskState::Pending);
        assert!(store.task("q").await.unwrap().is_some());
        ledger.close().await;
    }

    #[tokio::test]
    async fn a_lease_guard_compares_the_stored_state() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let ledger = Ledger::start(store.clone(), 64).await.unwrap();
        let gone = Guard::Lease { id: "l".into(), state: DbLeaseState::Active };
        let r = ledger.commit(write(vec![], vec![gone])).await;
        assert!(matches!(&r, Err(LedgerError::Changed(m)) if m == "lease l is gone"), "{r:?}");
        ledger.close().await;
    }
}
