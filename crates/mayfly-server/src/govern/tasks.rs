//! Housekeeping by time: tasks whose lifetime or approval deadline is over are recorded
//! as expired or denied (their state is already right before that: it is derived from
//! the time when read); database users whose lease expired or was revoked are dropped,
//! and failed drops retried; users no lease accounts for are swept.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

/// How often users without a lease are looked for.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Sweeps every `every` until the process stops.
pub async fn run(broker: Arc<Broker>, every: Duration) {
    let mut last_orphan_sweep = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let now = crate::clock::now_unix();
        match broker.retire_due_tasks(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "tasks retired by time"),
            Err(e) => tracing::warn!(error = %e, "task sweep failed"),
        }
        match broker.reap_db_leases(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(users = n, "database users dropped"),
            Err(e) => tracing::warn!(error = %e, "database lease sweep failed"),
        }
        if last_orphan_sweep.elapsed() >= ORPHAN_SWEEP_EVERY {
            last_orphan_sweep = std::time::Instant::now();
            if let Err(e) = broker.sweep_db_users().await {
                tracing::warn!(error = %e, "orphan sweep failed");
            }
        }
    }
}
