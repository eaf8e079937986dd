//! Refusal summaries: the counts of refusals anyone can provoke, written to the audit
//! trail once per interval (see [`crate::broker::failures`]).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

/// Flushes the refusal counts every `every` until the process stops.
pub async fn run(broker: Arc<Broker>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        broker.flush_failures().await;
    }
}
