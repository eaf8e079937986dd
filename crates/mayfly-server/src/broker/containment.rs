//! Containment: revoking a subject contains it. Its credentials die (the revocation
//! index), evidence it held from before is refused on every issuance path (see
//! [`Broker::admit`]), the tasks it started or acted for end with everything under them,
//! and its database users are dropped. A block also refuses new issuance until lifted.

use mayfly_proto::{LiftRequest, RevokeRequest};

use crate::attest::AttestError;
use crate::broker::{Broker, Caller};
use crate::ledger::RevokeError;
use crate::ledger::revocations::{CredentialFacts, under_prefix};
use crate::ledger::{CredentialRecord, Revocation, RevocationKind, TaskFilter, TaskRecord};

impl Broker {
    /// Revokes by selector, in force before it returns; a subject (or prefix) revocation
    /// also ends the live tasks the subject started or acts for, and starts dropping its
    /// database users. Those follow-ups are best effort once the revocation is recorded:
    /// the revocation alone already refuses everything they would stop.
    pub async fn revoke(&self, req: &RevokeRequest, actor: &str) -> Result<Revocation, RevokeError> {
        self.contain(req, actor).await.map(|(rev, _)| rev)
    }

    /// [`Broker::revoke`], also answering how many tasks it ended.
    pub(crate) async fn contain(&self, req: &RevokeRequest, actor: &str) -> Result<(Revocation, usize), RevokeError> {
        let rev = self.revocations.revoke(req, actor).await?;
        let mut tasks_ended = 0;
        if matches!(rev.kind, RevocationKind::Subject | RevocationKind::SubjectPrefix) {
            let reason = format!("{} {} revoked", rev.kind.as_str(), rev.value);
            let now = crate::clock::now_unix();
            match self.end_tasks_under(rev.kind, &rev.value, actor, &reason, now).await {
                Ok(0) => {}
                Ok(n) => {
                    tasks_ended = n;
                    tracing::info!(tasks = n, subject = %rev.value, "revocation ended tasks");
                }
                Err(e) => tracing::warn!(error = %e, "revocation: ending the subject's tasks failed"),
            }
            if let Err(e) = self.reap_db_leases(now).await {
                tracing::warn!(error = %e, "revocation: dropping the subject's database users failed; the reaper retries");
            }
        }
        metrics::counter!("mayfly_revocations_total", "selector" => rev.kind.as_str()).increment(1);
        Ok((rev, tasks_ended))
    }

    /// Ends the blocks on a selector. What they revoked stays revoked.
    pub async fn lift(&self, req: &LiftRequest, actor: &str) -> Result<Revocation, RevokeError> {
        self.revocations.lift(req, actor).await
    }

    /// Ends every live task started by, or acting for, a subject the selector names
    /// (sub-tasks end with their roots). Returns how many ended.
    pub(crate) async fn end_tasks_under(
        &self,
        kind: RevocationKind,
        value: &str,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<usize, crate::broker::BrokerError> {
        let named = |id: &str| match kind {
            RevocationKind::Subject => id == value,
            _ => under_prefix(id, value),
        };
        let mut ended = 0;
        for t in self.live_tasks(None, now).await? {
            let hit = named(&t.creator)
                || t.on_behalf_of.as_deref().is_some_and(named)
                || crate::attest::task::task_spiffe_id(self.task_attestor.trust_domain(), &t.id)
                    .is_ok_and(|id| named(&id.to_string()));
            // A sub-task may already have ended with its parent.
            if hit && self.end_task(&t.id, actor, Some(reason)).await.is_ok() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends the live tasks that admission now refuses: a starter, an actor or the subject
    /// they act for was revoked after they started. The revoking replica ends them at
    /// once; this pass (run by the leader whenever new revocations arrive) catches what
    /// that missed: tasks started on a replica that had not applied the revocation yet,
    /// or an ending that failed. Returns how many ended.
    pub async fn end_tasks_of_revoked_subjects(&self, now: i64) -> Result<usize, crate::broker::BrokerError> {
        if self.revocations.is_empty() {
            return Ok(0);
        }
        let mut ended = 0;
        for t in self.live_tasks(None, now).await? {
            let id = t.id.clone();
            let Ok(identity) = crate::attest::task::TaskIdentity::from_record(t, self.task_attestor.trust_domain())
            else {
                continue;
            };
            if let Err(AttestError::SubjectRevoked { subject, kind }) =
                self.admit(&Caller::Task(Box::new(identity)), now)
            {
                let reason = format!("{} {subject} revoked", kind.as_str());
                // A sub-task may already have ended with its parent.
                if self.end_task(&id, "mayfly", Some(&reason)).await.is_ok() {
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    /// Every task live at `now` (of `creator` only, if given), page by page.
    pub(crate) async fn live_tasks(
        &self,
        creator: Option<String>,
        now: i64,
    ) -> Result<Vec<TaskRecord>, crate::broker::BrokerError> {
        let mut filter = TaskFilter { creator, live_at: Some(now), limit: 1000, ..Default::default() };
        let mut live = Vec::new();
        loop {
            let page = self.ledger.store().tasks(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = Some(last.id.clone());
            live.extend(page);
        }
        Ok(live)
    }

    /// Admission of a proven caller: evidence minted before a revocation of its subject
    /// (or during a block) is refused, on every issuance path. A task is evidence of
    /// everyone in its chain, minted when it started: a task started by a workload revoked
    /// since (or acting for a subject revoked since) issues nothing more.
    pub(crate) fn admit(&self, caller: &Caller, minted_at: i64) -> Result<(), AttestError> {
        // Revocations are kept as long as evidence is accepted: older evidence could
        // outlive the revocation that refuses it.
        if matches!(caller, Caller::Workload(_))
            && crate::clock::now_unix().saturating_sub(minted_at) > self.max_evidence_age_secs
        {
            return Err(AttestError::EvidenceTooOld(self.max_evidence_age_secs));
        }
        if self.revocations.is_empty() {
            return Ok(());
        }
        let check = |subject: &str, at: i64| match self.revocations.subject_revoked(subject, at) {
            Some(kind) => Err(AttestError::SubjectRevoked { subject: subject.to_owned(), kind }),
            None => Ok(()),
        };
        match caller {
            Caller::Workload(w) => check(&w.spiffe_id.to_string(), minted_at),
            Caller::Task(t) => {
                let started = t.task.created_at;
                check(&t.spiffe_id.to_string(), started)?;
                for actor in &t.actors {
                    check(actor, started)?;
                }
                match &t.task.on_behalf_of {
                    Some(subject) => check(subject, started),
                    None => Ok(()),
                }
            }
        }
    }

    /// Refuses to deliver credentials that a revocation in force already covers: a block
    /// (of their subject, audience, or everything) stops issuance here, on every path, and
    /// a credential minted in the same second as a revocation is not handed out dead.
    pub(crate) fn check_not_born_revoked(&self, records: &[CredentialRecord]) -> Result<(), RevokeBlocked> {
        for r in records {
            self.refuse_if_revoked(&CredentialFacts {
                jti: &r.jti,
                subject: &r.subject,
                audience: &r.audience,
                task_id: r.task_id.as_deref(),
                issued_at: r.issued_at,
            })?;
        }
        Ok(())
    }

    /// [`Broker::check_not_born_revoked`] for one credential about to be issued.
    pub(crate) fn refuse_if_revoked(&self, facts: &CredentialFacts<'_>) -> Result<(), RevokeBlocked> {
        match self.revocations.revoked_by(facts) {
            Some(kind) => Err(RevokeBlocked { kind, subject: facts.subject.into(), audience: facts.audience.into() }),
            None => Ok(()),
        }
    }
}

/// A credential about to be issued is already covered by a revocation in force.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "issuance to {subject} for {audience} is blocked by a revocation ({}) in force; nothing was issued",
    kind.as_str()
)]
pub struct RevokeBlocked {
    /// The selector that covers it.
    pub kind: RevocationKind,
    /// The credential's subject.
    pub subject: String,
    /// Its audience.
    pub audience: String,
}
