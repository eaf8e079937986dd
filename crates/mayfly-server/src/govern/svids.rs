//! SVID authority rotation: the CA and JWT-SVID key are replaced at half their
//! lifetime; the retired pair stays in the bundles until what it signed has expired.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Leadership;
use crate::issue::svid::SvidAuthorities;
use crate::keys::Kek;
use crate::ledger::{AuditEvent, Ledger};

/// How often the rotation deadline is checked.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Rotates when due (audited), and drops retired generations from the bundles once
/// what they signed has expired, until the process stops. Only the leader rotates;
/// the other replicas pick the new generation up from the store.
pub async fn run(authorities: Arc<SvidAuthorities>, ledger: Ledger, kek: Arc<Kek>, leadership: Leadership) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        authorities.prune();
        if !leadership.is_leading() || crate::clock::now_unix() < authorities.rotation_due_at() {
            continue;
        }
        match authorities.rotate(ledger.store().as_ref(), &kek).await {
            Ok(id) => {
                let event =
                    AuditEvent::new("svid_authorities.rotated", None, json!({"authority": id, "trigger": "half-life"}));
                if let Err(e) = ledger.audit(event).await {
                    tracing::error!(error = %e, "audit of the SVID authority rotation failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "SVID authority rotation failed; will retry"),
        }
    }
}
