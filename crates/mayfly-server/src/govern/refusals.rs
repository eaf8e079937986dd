//! Refusal summaries: the counts of refusals anyone can provoke, written to the audit
//! trail once per interval (see [`crate::broker::failures`]).

use std::sync::Arc;

use super::jobs::Periodic;
use crate::broker::Broker;

/// Flushes the refusal counts at each run (on every replica: each counts its own).
pub struct RefusalSummaries(pub Arc<Broker>);

impl Periodic for RefusalSummaries {
    async fn run(&mut self) {
        self.0.flush_failures().await;
    }
}
