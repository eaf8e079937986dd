//! Audit events and their SHA-256 hash chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit event before it is placed in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What happened, e.g. `token.issued`, `attest.failed`, `policy.denied`.
    pub kind: String,
    /// The SPIFFE ID (or other principal) it concerns.
    pub subject: Option<String>,
    /// Details as JSON. Never secret values: tokens appear as `jti` and keyed fingerprint.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// A new event stamped now.
    pub fn new(kind: &str, subject: Option<String>, detail: serde_json::Value) -> Self {
        Self { ts_ms: crate::clock::now_unix_ms(), kind: kind.to_owned(), subject, detail }
    }
}

/// An event in the chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ChainedAuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What happened.
    pub kind: String,
    /// Whom it concerns.
    pub subject: Option<String>,
    /// Details, as the JSON text that was hashed.
    pub detail: String,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// SHA-256 over this event's fields and `prev_hash`.
    pub hash: String,
}

impl ChainedAuditEvent {
    /// Places `event` after the event with sequence `prev_seq` and hash `prev_hash`.
    pub fn chain(event: &AuditEvent, prev_seq: i64, prev_hash: &str) -> Self {
        let detail = event.detail.to_string();
        let seq = prev_seq + 1;
        let hash = event_hash(seq, event.ts_ms, &event.kind, event.subject.as_deref(), &detail, prev_hash);
        Self {
            seq,
            ts_ms: event.ts_ms,
            kind: event.kind.clone(),
            subject: event.subject.clone(),
            detail,
            prev_hash: prev_hash.to_owned(),
            hash,
        }
    }

    /// Moves the event to follow `prev_seq`/`prev_hash` instead: a shared store does this
    /// when another replica appended since this one last looked at the chain's head.
    pub fn rechain(&mut self, prev_seq: i64, prev_hash: &str) {
        self.seq = prev_seq + 1;
        prev_hash.clone_into(&mut self.prev_hash);
        self.hash = event_hash(self.seq, self.ts_ms, &self.kind, self.subject.as_deref(), &self.detail, prev_hash);
    }

    /// Whether the stored hash matches the event's contents.
    pub fn hash_is_valid(&self) -> bool {
        event_hash(self.seq, self.ts_ms, &self.kind, self.subject.as_deref(), &self.detail, &self.prev_hash)
            == self.hash
    }
}

/// Length-prefixed fields, so that no two different events hash the same bytes.
fn event_hash(seq: i64, ts_ms: i64, kind: &str, subject: Option<&str>, detail: &str, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"mayfly-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    for field in [Some(kind), subject, Some(detail), Some(prev_hash)] {
        match field {
            Some(f) => {
                h.update([1u8]);
                h.update((f.len() as u64).to_be_bytes());
                h.update(f.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    hex::encode(h.finalize())
}

/// Where a chain stopped being valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// An event's hash does not match its contents (edited).
    #[error("event {seq}: its hash does not match its contents (the event was altered)")]
    Altered {
        /// The event.
        seq: i64,
    },
    /// An event does not point at the previous event's hash (removed or reordered).
    #[error("event {seq}: prev_hash does not match event {prev}'s hash (an event was removed or reordered)")]
    Unlinked {
        /// The event.
        seq: i64,
        /// The event before it.
        prev: i64,
    },
    /// Sequence numbers skip.
    #[error("event {seq}: expected sequence number {expected} (an event is missing)")]
    Gap {
        /// The event found.
        seq: i64,
        /// The number expected.
        expected: i64,
    },
}

/// Incremental verifier: feed events in order; it names the first broken link.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    last_seq: i64,
    last_hash: String,
    /// Events checked so far.
    pub checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { last_seq: 0, last_hash: GENESIS_HASH.to_owned(), checked: 0 }
    }
}

impl ChainVerifier {
    /// Checks the next event.
    pub fn push(&mut self, e: &ChainedAuditEvent) -> Result<(), ChainBreak> {
        if e.seq != self.last_seq + 1 {
            return Err(ChainBreak::Gap { seq: e.seq, expected: self.last_seq + 1 });
        }
        if !e.hash_is_valid() {
            return Err(ChainBreak::Altered { seq: e.seq });
        }
        if e.prev_hash != self.last_hash {
            return Err(ChainBreak::Unlinked { seq: e.seq, prev: self.last_seq });
        }
        self.last_seq = e.seq;
        self.last_hash.clone_from(&e.hash);
        self.checked += 1;
        Ok(())
    }
}

/// The result of walking the audit chain.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    /// The first broken link, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_break: Option<String>,
}

/// Walks the whole audit chain and names the first broken link.
pub async fn verify_chain(store: &dyn super::Store) -> Result<ChainReport, super::LedgerError> {
    let mut v = ChainVerifier::default();
    let mut after = 0;
    loop {
        let batch = store.audit_events_after(after, 5000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            if let Err(b) = v.push(e) {
                return Ok(ChainReport { ok: false, checked: v.checked, first_break: Some(b.to_string()) });
            }
        }
    }
    Ok(ChainReport { ok: true, checked: v.checked, first_break: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<ChainedAuditEvent> {
        let mut out: Vec<ChainedAuditEvent> = Vec::new();
        for i in 0..n {
            let ev = AuditEvent::new("test", Some(format!("s{i}")), serde_json::json!({"i": i}));
            let (seq, prev) = out.last().map(|e| (e.seq, e.hash.clone())).unwrap_or((0, GENESIS_HASH.into()));
            out.push(ChainedAuditEvent::chain(&ev, seq, &prev));
        }
        out
    }

    #[test]
    fn valid_chain_verifies() {
        let mut v = ChainVerifier::default();
        for e in chain(5) {
            v.push(&e).unwrap();
        }
        assert_eq!(v.checked, 5);
    }

    #[test]
    fn names_first_broken_link() {
        let mut events = chain(5);
        events[2].detail = r#"{"i":99}"#.into();
        let mut v = ChainVerifier::default();
        let err = events.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert_eq!(err, ChainBreak::Altered { seq: 3 });

        let mut events = chain(5);
        events.remove(1);
        let mut v = ChainVerifier::default();
        let err = events.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert_eq!(err, ChainBreak::Gap { seq: 3, expected: 2 });
    }
}
