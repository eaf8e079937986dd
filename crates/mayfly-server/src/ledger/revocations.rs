//! Revocation: selectors recorded in the ledger, an in-memory index that answers
//! "is this credential revoked?" in O(1), and a broadcast feed for subscribers. The
//! selector types and the index are shared with resource servers: the wire types live in
//! `mayfly-proto`, the index in `mayfly-verify`.

use std::sync::{Arc, RwLock};

use mayfly_proto::{LiftRequest, RevokeRequest};
use serde_json::json;
use tokio::sync::broadcast;

use crate::ledger::{AuditEvent, CredentialFilter, DbLeaseState, Ledger, LedgerError, Store};
use crate::spiffe::SpiffeId;
pub use mayfly_verify::revocation::{CredentialFacts, Revocation, RevocationIndex, RevocationKind, under_prefix};

/// Extra time a revocation is kept past the longest lifetime it covers (clock skew).
const KEEP_MARGIN_SECS: i64 = 300;

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No selector, or more than one.
    #[error("name exactly one of: jti, subject, subject_prefix, audience, task, issued_before, all")]
    Selector,
    /// A selector value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The selector matches no credential: probably a typo, so nothing was revoked.
    #[error("{0}")]
    NothingMatches(String),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// How long revocations are kept, and how far past their commit they reach.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The longest lifetime any credential has: every revocation is kept this long.
    pub credentials_secs: i64,
    /// The oldest evidence accepted: subject revocations are kept at least this long, so
    /// that evidence minted before one is refused for as long as it could be presented.
    pub evidence_secs: i64,
    /// Covered past the commit (subject, prefix, audience, all): what another replica
    /// issues before it has applied the revocation is still covered.
    pub propagation_secs: i64,
}

/// A subject as revocations store it: a SPIFFE ID in canonical form, or an opaque
/// subject a task acts for (`user:alice`), which must not pass for a SPIFFE ID.
fn canonical_subject(s: &str) -> Result<String, RevokeError> {
    if s.to_ascii_lowercase().contains("spiffe:") {
        return SpiffeId::parse(s).map(|id| id.to_string()).map_err(|e| RevokeError::Invalid(format!("subject: {e}")));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RevokeError::Invalid(
            "subject: a SPIFFE ID, or a subject without spaces or control characters".into(),
        ));
    }
    Ok(s.to_owned())
}

/// Revocations in force, and the feed of new ones.
pub struct Revocations {
    index: RwLock<RevocationIndex>,
    feed: broadcast::Sender<Revocation>,
    ledger: Ledger,
    retention: Retention,
    /// The longest lifetime any credential has: revocations are kept this long.
    max_ttl_secs: i64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

impl Revocations {
    /// Loads every revocation still in force.
    pub async fn load(ledger: Ledger, retention: Retention) -> Result<Arc<Self>, LedgerError> {
        let (feed, _) = broadcast::channel(4096);
        let this = Arc::new(Self {
            index: RwLock::new(RevocationIndex::default()),
            feed,
            ledger,
            max_ttl_secs: retention.credentials_secs,
            retention,
        });
        this.catch_up().await?;
        Ok(this)
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.ledger.store()
    }

    // A poisoned lock still holds a consistent index (every mutation is a single
    // call); recovering it keeps revocation enforced instead of failing open.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, RevocationIndex> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RevocationIndex> {
        self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Which revocation covers this credential, if any.
    pub fn revoked_by(&self, facts: &CredentialFacts<'_>) -> Option<RevocationKind> {
        self.read().revoked_by(facts)
    }

    /// Whether a subject or subject-prefix revocation in force (not lifted) names `subject`.
    pub fn names_subject(&self, subject: &str) -> bool {
        self.read().names_subject(subject)
    }

    /// Which subject or subject-prefix revocation covers evidence of `subject` minted at `minted_at`.
    pub fn subject_revoked(&self, subject: &str, minted_at: i64) -> Option<RevocationKind> {
        self.read().subject_revoked(subject, minted_at)
    }

    /// Whether the index is empty (nothing to check).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Highest cursor applied, and how many entries are in force.
    pub fn status(&self) -> (i64, usize) {
        let idx = self.read();
        (idx.cursor, idx.len())
    }

    /// New revocations as they are made.
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.feed.subscribe()
    }

    fn apply(&self, revs: &[Revocation]) {
        let mut idx = self.write();
        for r in revs {
            if idx.apply(r) {
                let _ = self.feed.send(r.clone());
            }
        }
    }

    /// Applies, in cursor order, every committed entry newer than the index: the only
    /// way entries enter the index, so two revocations committed concurrently can never
    /// be applied out of order (which would skip the lower cursor).
    pub async fn catch_up(&self) -> Result<(), LedgerError> {
        loop {
            let after = self.status().0;
            let batch = self.store().revocations_after(after, 1000).await?;
            if batch.is_empty() {
                return Ok(());
            }
            self.apply(&batch);
        }
    }

    /// Drops entries whose covered credentials have all expired, from the index and storage.
    pub async fn drop_expired(&self, now: i64) -> Result<u64, LedgerError> {
        self.write().prune(now);
        self.store().drop_expired_revocations(now).await
    }

    /// Validates a request, records the revocation durably with an audit event, and applies it.
    pub async fn revoke(&self, req: &RevokeRequest, actor: &str) -> Result<Revocation, RevokeError> {
        let now = crate::clock::now_unix();
        let reach = self.retention.propagation_secs.max(0);
        let keep_until = now + reach + self.max_ttl_secs + KEEP_MARGIN_SECS;
        // A subject's evidence is refused as long as it could be presented.
        let keep_subject = now + reach + self.max_ttl_secs.max(self.retention.evidence_secs) + KEEP_MARGIN_SECS;
        let selectors = [
            req.jti.is_some(),
            req.subject.is_some(),
            req.subject_prefix.is_some(),
            req.audience.is_some(),
            req.task.is_some(),
            req.issued_before.is_some(),
            req.all,
        ];
        if selectors.iter().filter(|s| **s).count() != 1 {
            return Err(RevokeError::Selector);
        }
        if !req.block && req.block_seconds.is_some() {
            return Err(RevokeError::Invalid("block_seconds needs block = true".into()));
        }
        if req.block && (req.jti.is_some() || req.task.is_some() || req.issued_before.is_some()) {
            return Err(RevokeError::Invalid(
                "only subject, subject_prefix, audience and all can block new issuance".into(),
            ));
        }
        // A block moves the end of the revocation's reach into the future: nothing it
        // covers is issued until then (or until lifted).
        let blocked_until = match (req.block, req.block_seconds) {
            (false, _) => None,
            (true, None) => Some(i64::MAX),
            (true, Some(0)) => return Err(RevokeError::Invalid("block_seconds must be at least 1".into())),
            (true, Some(secs)) => Some(now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))),
        };
        let nonempty = |v: &str, what: &str| {
            let v = v.trim();
            if v.is_empty() {
                Err(RevokeError::Invalid(format!("{what} is empty; to revoke everything, send all = true")))
            } else if v.len() > 2048 {
                Err(RevokeError::Invalid(format!("{what} is longer than 2048 bytes")))
            } else {
                Ok(v.to_owned())
            }
        };
        let live = |mut f: CredentialFilter| {
            f.live_at = Some(now);
            f.limit = 1;
            f
        };
        let (kind, value, issued_before, expires_at, probe) = if let Some(jti) = &req.jti {
            let jti = nonempty(jti, "jti")?;
            let rec = self
                .store()
                .credential(&jti)
                .await?
                .ok_or_else(|| RevokeError::NothingMatches(format!("no credential has jti {jti:?}")))?;
            // Kept as long as the credential lives, so a verifier learns of it in time.
            (RevocationKind::Jti, jti, now, rec.expires_at.max(now) + KEEP_MARGIN_SECS, None)
        } else if let Some(s) = &req.subject {
            let s = canonical_subject(&nonempty(s, "subject")?)?;
            let probe = live(CredentialFilter { subject: Some(s.clone()), ..Default::default() });
            (RevocationKind::Subject, s, now, keep_subject, Some(probe))
        } else if let Some(p) = &req.subject_prefix {
            let p = nonempty(p, "subject_prefix")?;
            // Stored as the canonical ID, so the index matches what credentials carry.
            let p = SpiffeId::parse(p.trim_end_matches('/'))
                .map_err(|e| RevokeError::Invalid(format!("subject_prefix must be a SPIFFE ID or trust domain ({e})")))?
                .to_string();
            let probe = live(CredentialFilter { subject_prefix: Some(p.clone()), ..Default::default() });
            (RevocationKind::SubjectPrefix, p, now, keep_subject, Some(probe))
        } else if let Some(a) = &req.audience {
            let a = nonempty(a, "audience")?;
            let probe = live(CredentialFilter { audience: Some(a.clone()), ..Default::default() });
            (RevocationKind::Audience, a, now, keep_until, Some(probe))
        } else if let Some(t) = &req.task {
            let t = nonempty(t, "task")?;
            let probe = live(CredentialFilter { task_id: Some(t.clone()), ..Default::default() });
            (RevocationKind::Task, t, now, keep_until, Some(probe))
        } else if let Some(t) = req.issued_before {
            if t > now {
                return Err(RevokeError::Invalid(
                    "issued_before is in the future; it would revoke credentials not issued yet".into(),
                ));
            }
            (RevocationKind::IssuedBefore, String::new(), t, t + self.max_ttl_secs + KEEP_MARGIN_SECS, None)
        } else {
            (RevocationKind::IssuedBefore, String::new(), now, keep_until, None)
        };
        // A block is wanted for what is to come, whatever is live now.
        if blocked_until.is_none()
            && let Some(probe) = probe
            && self.store().credentials(&probe).await?.is_empty()
            && !self.open_db_lease_matches(kind, &value).await?
            && !self.live_task_matches(kind, &value, now).await?
        {
            return Err(RevokeError::NothingMatches(format!(
                "no live credential matches {} {value:?}; nothing was revoked (to refuse its evidence and new \
                 issuance anyway, send block = true)",
                kind.as_str()
            )));
        }
        // "Until now" means until the commit, not until the request arrived: the probe
        // above may have taken a while, and tokens issued meanwhile must be covered; and
        // past it by the propagation margin, for replicas that apply it a moment later.
        let committed_at = crate::clock::now_unix();
        let issued_before = match kind {
            _ if issued_before != now => issued_before,
            RevocationKind::Jti | RevocationKind::Task => committed_at,
            _ => committed_at + reach,
        };
        let (issued_before, expires_at) = match blocked_until {
            Some(until) => (until, until.saturating_add(self.max_ttl_secs + KEEP_MARGIN_SECS)),
            None => (issued_before, expires_at),
        };
        let rev = Revocation {
            cursor: 0,
            kind,
            value,
            issued_before,
            revoked_at: committed_at,
            expires_at,
            reason: req.reason.clone().map(|r| r.chars().take(500).collect()),
            lift: false,
        };
        let detail = json!({
            "selector": kind.as_str(), "value": rev.value, "issued_before": issued_before,
            "blocked_until": blocked_until, "reason": rev.reason, "actor": actor,
        });
        let subject =
            matches!(kind, RevocationKind::Subject | RevocationKind::SubjectPrefix).then(|| rev.value.clone());
        let stored =
            self.ledger.revoke(vec![rev], vec![AuditEvent::new("credential.revoked", subject, detail)]).await?;
        // Entries enter the index only through catch_up, in cursor order.
        self.catch_up().await?;
        stored.into_iter().next().ok_or_else(|| RevokeError::Ledger(LedgerError::WriterGone))
    }

    /// Revokes credentials by `jti` (with each one's expiry), all in one commit with one
    /// audit event, in force before it returns: what a signal decided no longer passes.
    pub async fn revoke_jtis(&self, jtis: &[(String, i64)], reason: &str, actor: &str) -> Result<(), LedgerError> {
        if jtis.is_empty() {
            return Ok(());
        }
        let now = crate::clock::now_unix();
        let reason: String = reason.chars().take(500).collect();
        let revocations = jtis
            .iter()
            .map(|(jti, expires_at)| Revocation {
                cursor: 0,
                kind: RevocationKind::Jti,
                value: jti.clone(),
                issued_before: now,
                revoked_at: now,
                expires_at: (*expires_at).max(now) + KEEP_MARGIN_SECS,
                reason: Some(reason.clone()),
                lift: false,
            })
            .collect();
        let detail = json!({"selector": "jti", "count": jtis.len(), "reason": reason, "actor": actor});
        self.ledger.revoke(revocations, vec![AuditEvent::new("credential.revoked", None, detail)]).await?;
        self.catch_up().await
    }

    /// Ends the blocks on one selector now: new issuance resumes, and what the blocks and
    /// earlier revocations covered (everything issued until now) stays revoked. A subject
    /// revocation without a block can be lifted too: Workload API identities, which it
    /// keeps from being re-issued, are served again. Audited.
    pub async fn lift(&self, req: &LiftRequest, actor: &str) -> Result<Revocation, RevokeError> {
        let named = [req.subject.is_some(), req.subject_prefix.is_some(), req.audience.is_some(), req.all];
        if named.iter().filter(|n| **n).count() != 1 {
            return Err(RevokeError::Invalid("name exactly one of: subject, subject_prefix, audience, all".into()));
        }
        let (kind, value) = if let Some(s) = &req.subject {
            (RevocationKind::Subject, canonical_subject(s.trim())?)
        } else if let Some(p) = &req.subject_prefix {
            let p = p.trim().trim_end_matches('/');
            let id = SpiffeId::parse(p).map_err(|e| RevokeError::Invalid(format!("subject_prefix: {e}")))?;
            (RevocationKind::SubjectPrefix, id.to_string())
        } else if let Some(a) = &req.audience {
            (RevocationKind::Audience, a.trim().to_owned())
        } else {
            (RevocationKind::IssuedBefore, String::new())
        };
        let now = crate::clock::now_unix();
        let keep_until = now + self.max_ttl_secs + KEEP_MARGIN_SECS;
        // Stored blocks first: a lift recorded without this would leave a block in storage
        // that returns once the lift's own entry is dropped. Retrying a failed lift is safe.
        let lifted = self.store().lift_blocks(kind, &value, now, keep_until).await?;
        if lifted == 0 && !self.read().in_force(kind, &value) {
            return Err(RevokeError::NothingMatches(format!(
                "no revocation of {} {value:?} is in force",
                kind.as_str()
            )));
        }
        let rev = Revocation {
            cursor: 0,
            kind,
            value,
            issued_before: now,
            revoked_at: now,
            expires_at: keep_until,
            reason: req.reason.clone().map(|r| r.chars().take(500).collect()),
            lift: true,
        };
        let detail = json!({"selector": kind.as_str(), "value": rev.value, "lifted_at": now, "reason": rev.reason,
                            "actor": actor});
        let subject =
            matches!(kind, RevocationKind::Subject | RevocationKind::SubjectPrefix).then(|| rev.value.clone());
        let stored = self.ledger.revoke(vec![rev], vec![AuditEvent::new("revocation.lifted", subject, detail)]).await?;
        self.catch_up().await?;
        stored.into_iter().next().ok_or_else(|| RevokeError::Ledger(LedgerError::WriterGone))
    }

    /// Whether a live task falls under a subject selector (its starter or the subject it acts for).
    async fn live_task_matches(&self, kind: RevocationKind, value: &str, now: i64) -> Result<bool, LedgerError> {
        if !matches!(kind, RevocationKind::Subject | RevocationKind::SubjectPrefix) {
            return Ok(false);
        }
        let filter = crate::ledger::TaskFilter { live_at: Some(now), limit: 10_000, ..Default::default() };
        let tasks = self.store().tasks(&filter).await?;
        Ok(tasks.iter().any(|t| {
            let hit = |id: &str| match kind {
                RevocationKind::Subject => id == value,
                _ => crate::ledger::revocations::under_prefix(id, value),
            };
            hit(&t.creator) || t.on_behalf_of.as_deref().is_some_and(hit)
        }))
    }

    /// Whether an open database lease falls under a selector (its users are credentials too).
    async fn open_db_lease_matches(&self, kind: RevocationKind, value: &str) -> Result<bool, LedgerError> {
        let open = [DbLeaseState::Creating, DbLeaseState::Active, DbLeaseState::Revoking];
        let leases = self.store().db_leases(&open, None, 100_000).await?;
        Ok(leases.iter().any(|l| match kind {
            RevocationKind::Subject => l.subject == value,
            RevocationKind::SubjectPrefix => crate::ledger::revocations::under_prefix(&l.subject, value),
            RevocationKind::Audience => l.audience() == value,
            RevocationKind::Task => l.task_id.as_deref() == Some(value),
            RevocationKind::Jti | RevocationKind::IssuedBefore => false,
        }))
    }
}
