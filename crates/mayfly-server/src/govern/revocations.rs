//! Revocation upkeep: picks up revocations other replicas committed, and drops those
//! whose covered credentials have all expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::jobs::Periodic;
use crate::ledger::Revocations;

/// How often revocations made elsewhere are picked up.
pub const EVERY: Duration = Duration::from_millis(500);
/// How often expired revocations are dropped.
const DROP_EXPIRED_EVERY: Duration = Duration::from_secs(60);

/// The upkeep of the revocations in force, on every replica.
pub struct RevocationUpkeep {
    revocations: Arc<Revocations>,
    last_gc: Instant,
}

impl RevocationUpkeep {
    /// Upkeep of `revocations`.
    pub fn new(revocations: Arc<Revocations>) -> Self {
        Self { revocations, last_gc: Instant::now() }
    }
}

impl Periodic for RevocationUpkeep {
    async fn run(&mut self) {
        if let Err(e) = self.revocations.catch_up().await {
            tracing::warn!(error = %e, "revocation catch-up failed");
        }
        if self.last_gc.elapsed() >= DROP_EXPIRED_EVERY {
            self.last_gc = Instant::now();
            match self.revocations.drop_expired(crate::clock::now_unix()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "expired revocations dropped"),
                Err(e) => tracing::warn!(error = %e, "revocation garbage collection failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_active_task_is_reused_no_longer_than_other_replicas_take_to_learn_its_end() {
        assert!(crate::attest::task::ACTIVE_TASK_REUSE <= super::EVERY);
    }
}
