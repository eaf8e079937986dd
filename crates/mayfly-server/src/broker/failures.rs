//! Refusals anyone can provoke (bad evidence, forged signals) are audited as counts per
//! interval and source, not as one durable event each: a flood of garbage costs a map
//! increment, and the trail gets one summary event per source and interval.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use serde_json::json;

use crate::broker::Broker;
use crate::ledger::{AuditEvent, Batch};

/// Most sources counted apart in one interval; the rest are counted together.
const MAX_SOURCES: usize = 1024;
/// Most reasons counted apart per source.
const MAX_REASONS: usize = 32;
/// Policy denials of one subject recorded one by one in an interval; the rest are counted.
const DETAILED_DENIALS_PER_SUBJECT: u32 = 10;

/// One interval's refusals, by (audit kind, source) and reason.
#[derive(Debug, Default)]
pub struct FailureTally {
    counts: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    since: i64,
    by_source: HashMap<(&'static str, Option<IpAddr>), BTreeMap<String, u64>>,
    /// Denials recorded in full this interval, per subject.
    detailed: HashMap<String, u32>,
}

impl FailureTally {
    /// Counts one refusal of `kind` (e.g. `attest.failed`) from `source` for `reason`.
    pub fn count(&self, kind: &'static str, source: IpAddr, reason: &str) {
        let mut t = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if t.by_source.is_empty() {
            t.since = crate::clock::now_unix();
        }
        // Past the bound, sources share one row (`source_ip` null) and reasons one name.
        let key = if t.by_source.len() < MAX_SOURCES || t.by_source.contains_key(&(kind, Some(source))) {
            (kind, Some(source))
        } else {
            (kind, None)
        };
        let reasons = t.by_source.entry(key).or_default();
        let reason = if reasons.len() < MAX_REASONS || reasons.contains_key(reason) { reason } else { "other" };
        *reasons.entry(reason.chars().take(64).collect()).or_default() += 1;
    }

    /// Whether a policy denial of `subject` is recorded in full: the first few per
    /// interval are (they name the deciding policies); the rest are counted, so an
    /// attested caller that policy refuses cannot fill the trail by asking again and again.
    pub fn detailed_denial(&self, subject: &str) -> bool {
        let mut t = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if t.by_source.is_empty() && t.detailed.is_empty() {
            t.since = crate::clock::now_unix();
        }
        if t.detailed.len() >= MAX_SOURCES && !t.detailed.contains_key(subject) {
            return false;
        }
        let n = t.detailed.entry(subject.chars().take(256).collect()).or_default();
        *n += 1;
        *n <= DETAILED_DENIALS_PER_SUBJECT
    }

    /// The counts so far, as summary events; the tally starts again.
    pub fn drain(&self) -> Vec<AuditEvent> {
        let t = std::mem::take(&mut *self.counts.lock().unwrap_or_else(PoisonError::into_inner));
        // `detailed` starts again with the interval; what it let through is in the trail already.
        let until = crate::clock::now_unix();
        let mut events: Vec<AuditEvent> = t
            .by_source
            .into_iter()
            .map(|((kind, source), reasons)| {
                let total: u64 = reasons.values().sum();
                let detail = json!({
                    "source_ip": source.map(|s| s.to_string()), "count": total, "reasons": reasons,
                    "since": t.since, "until": until,
                });
                AuditEvent::new(kind, None, detail)
            })
            .collect();
        // A stable order keeps the trail readable.
        events.sort_by_key(|e| e.detail.to_string());
        events
    }
}

impl Broker {
    /// Counts a refusal anyone can provoke; it reaches the audit trail in the next summary.
    pub(crate) fn audit_failure(&self, source: IpAddr, reason: &str, kind: &'static str) {
        self.failures.count(kind, source, reason);
    }

    /// Writes the refusals counted since the last flush as summary events.
    pub async fn flush_failures(&self) {
        let events = self.failures.drain();
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.ledger.commit(Batch { events, ..Batch::default() }).await {
            tracing::error!(error = %e, "refusal summaries could not be recorded");
        }
    }
}
