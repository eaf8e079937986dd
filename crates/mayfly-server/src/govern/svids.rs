//! SVID authority rotation: the CA and JWT-SVID key are replaced at half their
//! lifetime; the retired pair stays in the bundles until what it signed has expired.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Leadership;
use super::jobs::Periodic;
use crate::issue::svid::SvidAuthorities;
use crate::keys::Kek;
use crate::ledger::{AuditEvent, Ledger};

/// How often the rotation deadline is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Rotates when due (audited), and drops retired generations from the bundles once
/// what they signed has expired. Runs on every replica (each prunes its own bundles);
/// only the leader rotates, the other replicas pick the new generation up from the store.
pub struct SvidRotation {
    /// The authorities.
    pub authorities: Arc<SvidAuthorities>,
    /// Records rotations.
    pub ledger: Ledger,
    /// Seals the new generation.
    pub kek: Arc<Kek>,
    /// Whether this replica rotates.
    pub leadership: Leadership,
}

impl Periodic for SvidRotation {
    async fn run(&mut self) {
        self.authorities.prune();
        if !self.leadership.is_leading() || crate::clock::now_unix() < self.authorities.rotation_due_at() {
            return;
        }
        match self.authorities.rotate(self.ledger.store().as_ref(), &self.kek).await {
            Ok(id) => {
                let event =
                    AuditEvent::new("svid_authorities.rotated", None, json!({"authority": id, "trigger": "half-life"}));
                if let Err(e) = self.ledger.audit(event).await {
                    tracing::error!(error = %e, "audit of the SVID authority rotation failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "SVID authority rotation failed; will retry"),
        }
    }
}
