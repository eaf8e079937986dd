//! Writes signed checkpoints of the audit chain's head: every `every_events` events or
//! every `interval`, whichever comes first, and only when the head moved. Only the
//! leader writes. Writing one is not an audit event: it would move the head it anchors,
//! and an idle chain would never stop being checkpointed.

use std::sync::Arc;
use std::time::Duration;

use super::jobs::Periodic;
use crate::checkpoints::{CheckpointClaims, CheckpointError, sign};
use crate::keys::KeyRing;
use crate::ledger::{Store, StoredCheckpoint};

/// Longest wait between two looks at the chain's head.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Signs and stores checkpoints.
pub struct CheckpointWriter {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The active key signs.
    pub keys: Arc<KeyRing>,
    /// `iss` of the checkpoints (the server's issuer URL).
    pub issuer: String,
    /// A checkpoint once this many events were appended since the last one.
    pub every_events: u64,
    /// A checkpoint once this long has passed since the last one (if the head moved).
    pub interval: Duration,
}

/// The last checkpoint this writer knows of.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: i64,
    at_ms: i64,
}

impl CheckpointWriter {
    /// Writes a checkpoint of the head now if one is due after `last`; returns it when written.
    async fn write_if_due(&self, last: Option<Last>, now_ms: i64) -> Result<Option<StoredCheckpoint>, CheckpointError> {
        let Some((seq, hash)) = self.store.audit_head().await? else { return Ok(None) };
        if let Some(l) = last {
            if seq == l.seq {
                return Ok(None);
            }
            if seq < l.seq {
                // Events were removed since the last checkpoint: say so loudly. The new
                // checkpoint records the chain as it is; the earlier ones still show the cut.
                tracing::error!(
                    head = seq,
                    checkpoint = l.seq,
                    "the audit chain's head is below its last checkpoint: events were removed from the chain"
                );
            }
            let grown = seq.abs_diff(l.seq) >= self.every_events;
            let waited = now_ms.saturating_sub(l.at_ms) >= self.interval.as_millis() as i64;
            if !grown && !waited {
                return Ok(None);
            }
        }
        let iat = now_ms / 1000;
        let key = self.keys.active();
        let claims = CheckpointClaims { iss: self.issuer.clone(), seq, hash: hash.clone(), iat };
        let jws = sign(&key, &claims)?;
        let row = StoredCheckpoint { seq, hash, created_at: iat, kid: key.kid().to_owned(), jws };
        // On PostgreSQL the head may have been read before its batch's commit was flushed
        // (the group commit waits for the disk after releasing the head); this insert is a
        // synchronous commit after it in the WAL, so it is never durable without the events.
        self.store.insert_audit_checkpoint(&row).await?;
        Ok(Some(row))
    }

    /// How often the head is looked at: `min(interval, 1s)`.
    pub fn period(&self) -> Duration {
        self.interval.min(MAX_POLL)
    }

    /// The job that looks at the head once per [`CheckpointWriter::period`] while this
    /// replica leads ([`super::jobs::Runs::OnLeader`]).
    pub fn job(self) -> CheckpointJob {
        CheckpointJob { writer: self, last: None, known: false }
    }
}

/// A [`CheckpointWriter`] with what it knows of the last checkpoint.
pub struct CheckpointJob {
    writer: CheckpointWriter,
    last: Option<Last>,
    /// Whether `last` was read from the store since this replica took the lead.
    known: bool,
}

impl Periodic for CheckpointJob {
    fn standing_by(&mut self) {
        // Another replica may write meanwhile: read the last one again on taking over.
        self.known = false;
    }

    async fn run(&mut self) {
        if !self.known {
            match self.writer.store.latest_audit_checkpoints(1).await {
                Ok(rows) => {
                    self.last = rows.first().map(|r| Last { seq: r.seq, at_ms: r.created_at.saturating_mul(1000) });
                    self.known = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last audit checkpoint; will retry");
                    return;
                }
            }
        }
        let now_ms = crate::clock::now_unix_ms();
        match self.writer.write_if_due(self.last, now_ms).await {
            Ok(Some(row)) => {
                tracing::debug!(seq = row.seq, kid = %row.kid, "audit checkpoint written");
                metrics::counter!("mayfly_audit_checkpoints_total").increment(1);
                metrics::gauge!("mayfly_audit_checkpoint_seq").set(row.seq as f64);
                self.last = Some(Last { seq: row.seq, at_ms: now_ms });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "writing an audit checkpoint failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Kek;
    use crate::keys::config::KeysConfig;
    use crate::ledger::audit::{AuditEvent, ChainedAuditEvent, GENESIS_HASH};
    use crate::ledger::sqlite::SqliteStore;
    use crate::ledger::{Store, StoredBatch};

    async fn append(store: &SqliteStore, n: usize) {
        let (mut seq, mut prev) = store.audit_head().await.unwrap().unwrap_or((0, GENESIS_HASH.into()));
        let mut events = Vec::new();
        for _ in 0..n {
            let e = ChainedAuditEvent::chain(&AuditEvent::new("test", None, serde_json::json!({})), seq, &prev);
            (seq, prev) = (e.seq, e.hash.clone());
            events.push(e);
        }
        store.append(&mut StoredBatch { events, ..Default::default() }).await.unwrap();
    }

    #[tokio::test]
    async fn written_every_n_events_or_t_seconds_and_only_when_the_head_moved() {
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let kek = Kek::from_bytes(&[3; 32]).unwrap();
        let keys = Arc::new(
            KeyRing::load_or_create(store.as_ref(), &kek, KeysConfig::default().signing_profiles(), 600).await.unwrap(),
        );
        let w = CheckpointWriter {
            store: store.clone(),
            keys: keys.clone(),
            issuer: "https://mayfly.test".into(),
            every_events: 10,
            interval: Duration::from_secs(60),
        };
        assert!(w.write_if_due(None, 1_000).await.unwrap().is_none(), "no chain, no checkpoint");
        append(&store, 3).await;
        let first = w.write_if_due(None, 1_000).await.unwrap().expect("the first one at once");
        assert_eq!(first.seq, 3);
        let last = Some(Last { seq: 3, at_ms: 1_000 });
        append(&store, 9).await;
        assert!(w.write_if_due(last, 2_000).await.unwrap().is_none(), "9 events, 1 s: not due");
        append(&store, 1).await;
        assert_eq!(w.write_if_due(last, 2_000).await.unwrap().unwrap().seq, 13, "10 events: due");
        let last = Some(Last { seq: 13, at_ms: 2_000 });
        assert!(w.write_if_due(last, 999_000).await.unwrap().is_none(), "the head did not move: none");
        append(&store, 1).await;
        assert!(w.write_if_due(last, 61_000).await.unwrap().is_none(), "one event, 59 s: not due");
        let row = w.write_if_due(last, 62_000).await.unwrap().expect("60 s: due");
        assert_eq!((row.seq, row.created_at), (14, 62));

        let published = keys.jwks()["keys"].as_array().unwrap().clone();
        let v = crate::checkpoints::verify(&row.jws, &published).unwrap();
        assert_eq!(v.claims.hash, store.audit_head().await.unwrap().unwrap().1);
        let stored: Vec<i64> = store.audit_checkpoints_after(0, 10).await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(stored, [3, 13, 14]);
        assert_eq!(store.audit_head().await.unwrap().unwrap().0, 14, "no audit event for a checkpoint");
    }
}
