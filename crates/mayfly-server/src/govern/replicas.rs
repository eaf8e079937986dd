//! Several replicas on one shared store: which one runs background work (the leader),
//! and how each picks up what the others changed (revocations, signing keys, SVID
//! authorities, registration entries). On the embedded store both are trivial: the
//! process always leads, and nothing else writes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::jobs::Service;
use crate::attest::entries::Entries;
use crate::issue::svid::SvidAuthorities;
use crate::keys::{Kek, KeyRing};
use crate::ledger::Revocations;
use crate::ledger::{AuditEvent, Ledger, Store, StoreChange};

/// How often leadership is claimed (or, by the leader, confirmed).
const ELECTION_EVERY: Duration = Duration::from_secs(1);
/// How often shared state is re-read even without a notification.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// Whether this replica runs background work now. Cheap to clone and to ask.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Always the leader: for a store no other process writes.
    pub fn always() -> Self {
        Self(watch::channel(true).1)
    }

    /// Leadership as `rx` says, for tests.
    #[cfg(test)]
    pub(crate) fn following(rx: watch::Receiver<bool>) -> Self {
        Self(rx)
    }

    /// Whether this replica leads at the moment.
    pub fn is_leading(&self) -> bool {
        *self.0.borrow()
    }
}

/// The election for a shared store (run it as a [`Service`]), or [`Leadership::always`]
/// and no election for a store no other process writes.
pub fn elect(ledger: Ledger) -> (Leadership, Option<Election>) {
    if !ledger.store().is_shared() {
        metrics::gauge!("mayfly_leader").set(1.0);
        return (Leadership::always(), None);
    }
    let (tx, rx) = watch::channel(false);
    metrics::gauge!("mayfly_leader").set(0.0);
    (Leadership(rx), Some(Election { ledger, tx }))
}

/// Claims leadership (or, leading, confirms it) every second.
pub struct Election {
    ledger: Ledger,
    tx: watch::Sender<bool>,
}

impl Service for Election {
    async fn serve(&mut self) {
        let Self { ledger, tx } = self;
        loop {
            let leading = match ledger.store().try_lead().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach storage to claim leadership; background work paused here");
                    false
                }
            };
            if leading != *tx.borrow() {
                tx.send_replace(leading);
                metrics::gauge!("mayfly_leader").set(if leading { 1.0 } else { 0.0 });
                if leading {
                    tracing::info!("this replica now runs background work (expiry, reaping, sweeps, rotation)");
                    let event = AuditEvent::new("replica.leading", None, json!({"pid": std::process::id()}));
                    if let Err(e) = ledger.audit(event).await {
                        tracing::warn!(error = %e, "audit of leadership failed");
                    }
                } else {
                    tracing::warn!("this replica no longer runs background work");
                }
            }
            tokio::time::sleep(ELECTION_EVERY).await;
        }
    }
}

/// What a replica keeps in memory that other replicas can change.
pub struct SharedState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The key-encryption key, to open keys another replica created.
    pub kek: Arc<Kek>,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// SVID authorities.
    pub svids: Arc<SvidAuthorities>,
    /// Registration entries.
    pub entries: Arc<Entries>,
    /// Revocations in force.
    pub revocations: Arc<Revocations>,
    /// What signals said about workloads' contexts.
    pub contexts: Arc<crate::attest::contexts::SubjectContexts>,
}

/// Follows other replicas' changes (run it as a [`Service`]): at once on a notification,
/// and every few seconds regardless, so a notification lost with a connection costs
/// seconds, not correctness. `None` for a store nobody else writes.
pub fn follow(state: SharedState) -> Option<Follower> {
    let changes = state.store.changes()?;
    Some(Follower { state, changes })
}

/// Applies other replicas' changes to what this one keeps in memory.
pub struct Follower {
    state: SharedState,
    changes: broadcast::Receiver<StoreChange>,
}

impl Service for Follower {
    async fn serve(&mut self) {
        let Self { state: s, changes } = self;
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        loop {
            let change = tokio::select! {
                c = changes.recv() => match c {
                    Ok(c) => c,
                    // Fell behind: some notifications were dropped, so refresh everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => StoreChange::All,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => StoreChange::All,
            };
            if StoreChange::Revocations.covered_by(change)
                && let Err(e) = s.revocations.catch_up().await
            {
                tracing::warn!(error = %e, "revocation catch-up failed");
            }
            if StoreChange::SigningKeys.covered_by(change)
                && let Err(e) = s.keys.reload(s.store.as_ref(), &s.kek).await
            {
                tracing::warn!(error = %e, "signing key reload failed");
            }
            if StoreChange::SvidAuthorities.covered_by(change)
                && let Err(e) = s.svids.reload(s.store.as_ref(), &s.kek).await
            {
                tracing::warn!(error = %e, "SVID authority reload failed");
            }
            if StoreChange::Entries.covered_by(change)
                && let Err(e) = s.entries.reload().await
            {
                tracing::warn!(error = %e, "registration entry reload failed");
            }
            if StoreChange::SubjectContexts.covered_by(change)
                && let Err(e) = s.contexts.reload().await
            {
                tracing::warn!(error = %e, "signalled context reload failed");
            }
        }
    }
}
