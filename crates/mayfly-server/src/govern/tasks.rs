//! Housekeeping by time: tasks whose lifetime or approval deadline is over are recorded
//! as expired or denied (their state is already right before that: it is derived from
//! the time when read); tasks whose starter (or subject) was revoked end, whichever
//! replica took the revocation; database users whose lease expired or was revoked are dropped,
//! and failed drops retried; users no lease accounts for are swept. With several
//! replicas, only the leader does this; it also finishes what a dead replica left half-done.

use std::sync::Arc;
use std::time::Duration;

use super::jobs::Periodic;
use crate::broker::Broker;

/// How often users without a lease are looked for.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// On a shared store, a lease still `creating` after this long belongs to a replica that
/// died mid-creation (a live one finishes within its database timeouts).
const ABANDONED_AFTER_SECS: i64 = 120;

/// How often the sweep runs.
pub const EVERY: Duration = Duration::from_secs(1);

/// The sweep, run on the leader only ([`super::jobs::Runs::OnLeader`]).
pub struct TaskSweep {
    broker: Arc<Broker>,
    shared: bool,
    last_orphan_sweep: std::time::Instant,
    was_leading: bool,
    revocations_seen: i64,
}

impl TaskSweep {
    /// A sweep of what `broker` issued.
    pub fn new(broker: Arc<Broker>) -> Self {
        let shared = broker.ledger().store().is_shared();
        Self {
            broker,
            shared,
            last_orphan_sweep: std::time::Instant::now(),
            was_leading: !shared,
            revocations_seen: -1,
        }
    }
}

impl Periodic for TaskSweep {
    fn standing_by(&mut self) {
        self.was_leading = false;
    }

    async fn run(&mut self) {
        let broker = &self.broker;
        // A replica that has just taken over finishes what the last leader left at once.
        let took_over = !std::mem::replace(&mut self.was_leading, true);
        let now = crate::clock::now_unix();
        match broker.retire_due_tasks(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "tasks retired by time"),
            Err(e) => tracing::warn!(error = %e, "task sweep failed"),
        }
        // New revocations: end the tasks they contain that no replica ended yet.
        let cursor = broker.revocations().status().0;
        if cursor != self.revocations_seen {
            match broker.end_tasks_of_revoked_subjects(now).await {
                Ok(0) => self.revocations_seen = cursor,
                Ok(n) => {
                    self.revocations_seen = cursor;
                    tracing::info!(tasks = n, "tasks of revoked subjects ended");
                }
                Err(e) => tracing::warn!(error = %e, "ending the tasks of revoked subjects failed"),
            }
        }
        match broker.reap_db_leases(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(users = n, "database users dropped"),
            Err(e) => tracing::warn!(error = %e, "database lease sweep failed"),
        }
        if took_over || self.last_orphan_sweep.elapsed() >= ORPHAN_SWEEP_EVERY {
            self.last_orphan_sweep = std::time::Instant::now();
            if self.shared
                && let Err(e) = broker.reconcile_db_leases(Some(now - ABANDONED_AFTER_SECS)).await
            {
                tracing::warn!(error = %e, "reconciling abandoned database leases failed");
            }
            if let Err(e) = broker.sweep_db_users().await {
                tracing::warn!(error = %e, "orphan sweep failed");
            }
        }
    }
}
