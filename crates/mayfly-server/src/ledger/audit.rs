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

/// What kind of break a chain report names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// An event's hash does not match its contents.
    Altered,
    /// An event does not point at its predecessor's hash.
    Unlinked,
    /// Sequence numbers skip.
    Gap,
    /// The chain ends before an event a checkpoint anchors: its tail was removed.
    Truncated,
    /// The event a checkpoint anchors has another hash: the chain was rewritten and re-hashed.
    Rewritten,
    /// A stored checkpoint is not one Mayfly signed (forged, or its key is gone).
    BadCheckpoint,
}

impl From<&ChainBreak> for BreakKind {
    fn from(b: &ChainBreak) -> Self {
        match b {
            ChainBreak::Altered { .. } => BreakKind::Altered,
            ChainBreak::Unlinked { .. } => BreakKind::Unlinked,
            ChainBreak::Gap { .. } => BreakKind::Gap,
        }
    }
}

/// A point the chain must still pass through: event `seq` with hash `hash`, as a
/// signed checkpoint recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The event's sequence number.
    pub seq: i64,
    /// The hash it had when the checkpoint was signed.
    pub hash: String,
    /// Where it comes from, for messages (e.g. "the checkpoint signed at 2026-12-01T10:00:00Z").
    pub source: String,
}

/// The result of walking the audit chain.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// Whether every link holds (and every checkpoint checked matches).
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    /// The first broken link, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_break: Option<String>,
    /// What kind of break, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_kind: Option<BreakKind>,
    /// The last event checked: the chain's head when the walk completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<i64>,
    /// That event's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// Checkpoints the chain was checked against (stored ones and any given).
    #[serde(default)]
    pub checkpoints_checked: u64,
}

impl ChainReport {
    /// Marks the report broken, unless an earlier break is already named.
    pub fn fail(&mut self, kind: BreakKind, message: String) {
        if self.ok {
            self.ok = false;
            self.break_kind = Some(kind);
            self.first_break = Some(message);
        }
    }
}

/// Walks the whole audit chain and names the first broken link.
pub async fn verify_chain(store: &dyn super::Store) -> Result<ChainReport, super::LedgerError> {
    verify_chain_against(store, &[]).await
}

/// Walks the whole audit chain, names the first broken link, and checks that the chain
/// still passes through every anchor: an anchor past the head means the tail was cut
/// off; another hash at an anchor's `seq` means the chain was rewritten and re-hashed
/// (which the links alone cannot show).
pub async fn verify_chain_against(
    store: &dyn super::Store,
    anchors: &[Anchor],
) -> Result<ChainReport, super::LedgerError> {
    let mut anchors: Vec<&Anchor> = anchors.iter().collect();
    anchors.sort_by_key(|a| a.seq);
    let mut next_anchor = 0;
    let mut report = ChainReport {
        ok: true,
        checked: 0,
        first_break: None,
        break_kind: None,
        head_seq: None,
        head_hash: None,
        checkpoints_checked: 0,
    };
    let mut v = ChainVerifier::default();
    let mut after = 0;
    'walk: loop {
        let batch = store.audit_events_after(after, 5000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            if let Err(b) = v.push(e) {
                report.fail(BreakKind::from(&b), b.to_string());
                break 'walk;
            }
            while let Some(a) = anchors.get(next_anchor).filter(|a| a.seq <= e.seq) {
                next_anchor += 1;
                report.checkpoints_checked += 1;
                // Events come without gaps (checked above), so an anchor is passed only
                // at its own event, unless it names no event at all (seq below 1).
                if a.seq != e.seq || a.hash != e.hash {
                    report.fail(
                        BreakKind::Rewritten,
                        format!(
                            "event {}: its hash {} is not the {} that {} signed (the chain was rewritten \
                             and re-hashed from this event or before it)",
                            a.seq,
                            short(&e.hash),
                            short(&a.hash),
                            a.source
                        ),
                    );
                    break 'walk;
                }
            }
        }
    }
    report.checked = v.checked;
    if v.last_seq > 0 {
        report.head_seq = Some(v.last_seq);
        report.head_hash = Some(v.last_hash.clone());
    }
    if report.ok
        && let Some(a) = anchors.get(next_anchor)
    {
        report.checkpoints_checked += 1;
        report.fail(
            BreakKind::Truncated,
            format!(
                "the chain ends at event {} but {} anchors event {} (events were removed from the end of the chain)",
                v.last_seq, a.source, a.seq
            ),
        );
    }
    Ok(report)
}

/// The first 16 hex digits of a hash: enough to tell two apart in a message.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
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

    async fn store_with(events: &[ChainedAuditEvent]) -> crate::ledger::sqlite::SqliteStore {
        use crate::ledger::Store;
        let store = crate::ledger::sqlite::SqliteStore::in_memory().await.unwrap();
        let mut batch = crate::ledger::StoredBatch { events: events.to_vec(), ..Default::default() };
        store.append(&mut batch).await.unwrap();
        store
    }

    fn anchor(e: &ChainedAuditEvent) -> Anchor {
        Anchor { seq: e.seq, hash: e.hash.clone(), source: "the test checkpoint".into() }
    }

    #[tokio::test]
    async fn anchors_catch_a_cut_tail_and_a_rehashed_chain() {
        let events = chain(6);
        let store = store_with(&events).await;
        let r = verify_chain_against(&store, &[anchor(&events[3]), anchor(&events[5])]).await.unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.checked, r.checkpoints_checked, r.head_seq), (6, 2, Some(6)));

        // The tail cut off: the first four events alone, against a checkpoint of the sixth.
        let store = store_with(&events[..4]).await;
        let r = verify_chain_against(&store, &[anchor(&events[5])]).await.unwrap();
        assert_eq!(r.break_kind, Some(BreakKind::Truncated), "{r:?}");
        assert!(r.first_break.unwrap().contains("ends at event 4"));
        assert!(verify_chain(&store).await.unwrap().ok, "the links alone cannot tell");

        // The third event edited and everything after it re-hashed: every link holds.
        let mut forged = events[..2].to_vec();
        for (i, e) in events[2..].iter().enumerate() {
            let ev = AuditEvent {
                ts_ms: e.ts_ms,
                kind: e.kind.clone(),
                subject: e.subject.clone(),
                detail: serde_json::json!({"i": 100 + i}),
            };
            let prev = forged.last().unwrap();
            forged.push(ChainedAuditEvent::chain(&ev, prev.seq, &prev.hash.clone()));
        }
        let store = store_with(&forged).await;
        assert!(verify_chain(&store).await.unwrap().ok, "the links alone cannot tell");
        let r = verify_chain_against(&store, &[anchor(&events[4])]).await.unwrap();
        assert_eq!(r.break_kind, Some(BreakKind::Rewritten), "{r:?}");
        assert!(r.first_break.unwrap().starts_with("event 5:"));
        // An anchor before the edit still holds.
        assert!(verify_chain_against(&store, &[anchor(&events[1])]).await.unwrap().ok);
    }
}
