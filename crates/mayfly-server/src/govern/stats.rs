//! Periodic ledger statistics: live credentials and standing exposure (the sum of the
//! remaining lifetime of every live credential: the figure Mayfly exists to shrink).
//! Derived from the ledger each time, so they are right across restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Leadership;
use super::jobs::Periodic;
use crate::ledger::Revocations;
use crate::ledger::revocations::CredentialFacts;
use crate::ledger::{AuditEvent, CredentialFilter, Ledger, LedgerError, Store};

/// Live counts by credential kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KindStats {
    /// Live (unexpired, unrevoked) credentials.
    pub live: u64,
    /// Sum of remaining lifetimes, in seconds.
    pub exposure_seconds: u64,
    /// Unexpired but revoked.
    pub revoked: u64,
}

/// The statistics at `now`. The totals are aggregated by the database; only while
/// revocations are in force are unexpired credentials read one by one, to tell the
/// revoked ones apart.
pub async fn scan(
    store: &dyn Store,
    revocations: &Revocations,
    now: i64,
) -> Result<BTreeMap<String, KindStats>, LedgerError> {
    if revocations.status().1 == 0 {
        let totals = store.unexpired_totals(now).await?;
        return Ok(totals
            .into_iter()
            .map(|(kind, n, exposure)| {
                (kind, KindStats { live: n.max(0) as u64, exposure_seconds: exposure.max(0) as u64, revoked: 0 })
            })
            .collect());
    }
    let mut out: BTreeMap<String, KindStats> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store
            .credentials(&CredentialFilter {
                live_at: Some(now),
                after: after.clone(),
                limit: 5000,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.jti.clone());
        for c in &page {
            let s = out.entry(c.kind.clone()).or_default();
            let facts = CredentialFacts {
                jti: &c.jti,
                subject: &c.subject,
                audience: &c.audience,
                task_id: c.task_id.as_deref(),
                issued_at: c.issued_at,
            };
            if revocations.revoked_by(&facts).is_some() {
                s.revoked += 1;
            } else {
                s.live += 1;
                s.exposure_seconds += (c.expires_at - now).max(0) as u64;
            }
        }
    }
    Ok(out)
}

/// How often the statistics are published.
pub const EVERY: Duration = Duration::from_secs(10);

/// Publishes the statistics as gauges at each run (the first at start), and counts
/// expiries: `mayfly_credentials_expired_total{kind}` starts from the ledger's count, so
/// it stays right across restarts. Each interval's expiries are audited as one
/// `credential.expired` event per kind (one event per token would double the audit
/// trail's size for no information the ledger does not already hold); with several
/// replicas, by the leader only.
pub struct Stats {
    ledger: Ledger,
    revocations: Arc<Revocations>,
    leadership: Leadership,
    counted_until: Option<i64>,
}

impl Stats {
    /// Statistics of what `ledger` recorded.
    pub fn new(ledger: Ledger, revocations: Arc<Revocations>, leadership: Leadership) -> Self {
        Self { ledger, revocations, leadership, counted_until: None }
    }
}

impl Periodic for Stats {
    async fn run(&mut self) {
        let store = self.ledger.store().clone();
        let revocations = &self.revocations;
        let now = crate::clock::now_unix();
        match store.count_expiring(self.counted_until.unwrap_or(i64::MIN), now).await {
            Ok(counts) => {
                for (kind, n) in counts {
                    metrics::counter!("mayfly_credentials_expired_total", "kind" => kind.clone())
                        .increment(n.max(0) as u64);
                    // The first count after start covers the whole history: already audited before.
                    if let Some(from) = self.counted_until
                        && self.leadership.is_leading()
                    {
                        let detail =
                            serde_json::json!({"kind": kind, "count": n, "expired_after": from, "expired_until": now});
                        if let Err(e) = self.ledger.audit(AuditEvent::new("credential.expired", None, detail)).await {
                            tracing::warn!(error = %e, "audit of expiries failed");
                        }
                    }
                }
                self.counted_until = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "expiry count failed"),
        }
        match scan(store.as_ref(), revocations, now).await {
            Ok(mut stats) => {
                // Always publish the access-token series, even at zero.
                stats.entry("jwt".to_owned()).or_default();
                for (kind, s) in stats {
                    metrics::gauge!("mayfly_live_credentials", "kind" => kind.clone()).set(s.live as f64);
                    metrics::gauge!("mayfly_standing_exposure_seconds", "kind" => kind.clone())
                        .set(s.exposure_seconds as f64);
                    metrics::gauge!("mayfly_revoked_unexpired_credentials", "kind" => kind).set(s.revoked as f64);
                }
                metrics::gauge!("mayfly_revocations_in_force").set(revocations.status().1 as f64);
            }
            Err(e) => tracing::warn!(error = %e, "ledger statistics scan failed"),
        }
    }
}
