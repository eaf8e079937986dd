//! SVID authority rotation: the CA and JWT-SVID key are replaced at half their
//! lifetime; the retired pair stays in the bundles until what it signed has expired.

use std::sync::Arc;
use std::time::Duration;

use crate::issue::svid::SvidAuthorities;
use crate::keys::Kek;
use crate::ledger::Store;

/// How often the rotation deadline is checked.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Rotates when due, until the process stops.
pub async fn run(authorities: Arc<SvidAuthorities>, store: Arc<dyn Store>, kek: Arc<Kek>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if let Err(e) = authorities.rotate_if_due(store.as_ref(), &kek).await {
            tracing::error!(error = %e, "SVID authority rotation failed; will retry");
        }
    }
}
