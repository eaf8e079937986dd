//! Policy reloads: on SIGHUP, and when the policy directory's contents change.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::Signal;

use super::jobs::Service;
use crate::authorize::PolicyEngine;
use crate::ledger::{AuditEvent, Ledger};

/// Watches the policy directory (every `interval`) and SIGHUP, and reloads; a failed
/// reload keeps the policies in force. Audited either way.
pub struct PolicyWatcher {
    engine: Arc<PolicyEngine>,
    ledger: Ledger,
    interval: Duration,
    /// Registered before the server serves, so a SIGHUP that follows cannot hit the
    /// default action (terminate); kept across a restart of the watcher.
    hup: Option<Signal>,
    /// The fingerprint of files that failed to load: not parsed again until they change.
    last_failed: Option<String>,
}

impl PolicyWatcher {
    /// A watcher of `engine`'s directory; `hup` is the SIGHUP stream, if it could be registered.
    pub fn new(engine: Arc<PolicyEngine>, ledger: Ledger, interval: Duration, hup: Option<Signal>) -> Self {
        Self { engine, ledger, interval, hup, last_failed: None }
    }
}

impl Service for PolicyWatcher {
    async fn serve(&mut self) {
        let Self { engine, ledger, interval, hup, last_failed } = self;
        loop {
            let forced = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(*interval) => false,
            };
            if !forced {
                // Cheap check first: only parse when the files changed.
                match engine.fingerprint_on_disk() {
                    Ok(fp) if fp == engine.current().fingerprint || Some(&fp) == last_failed.as_ref() => {
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read policy directory");
                        continue;
                    }
                }
            }
            match engine.reload() {
                Ok(Some(loaded)) => {
                    *last_failed = None;
                    tracing::info!(policies = loaded.count, "policies reloaded");
                    let ev = AuditEvent::new(
                        "policy.reloaded",
                        None,
                        json!({"policies": loaded.count, "fingerprint": loaded.fingerprint, "trigger": if forced {"SIGHUP"} else {"file change"}}),
                    );
                    if let Err(e) = ledger.audit(ev).await {
                        tracing::error!(error = %e, "audit of policy reload failed");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    *last_failed = engine.fingerprint_on_disk().ok();
                    tracing::error!(error = %e, "policy reload failed; the policies in force stay");
                    let ev = AuditEvent::new("policy.reload_failed", None, json!({"error": e.to_string()}));
                    if let Err(e) = ledger.audit(ev).await {
                        tracing::error!(error = %e, "audit of failed policy reload failed");
                    }
                }
            }
        }
    }
}
