//! Task housekeeping: tasks whose lifetime or approval deadline is over are recorded
//! as expired or denied, with an audit event, shortly after the moment passes. Their
//! state is already right before that (it is derived from the time when read).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

/// Sweeps every `every` until the process stops.
pub async fn run(broker: Arc<Broker>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match broker.retire_due_tasks(crate::clock::now_unix()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "tasks retired by time"),
            Err(e) => tracing::warn!(error = %e, "task sweep failed"),
        }
    }
}
