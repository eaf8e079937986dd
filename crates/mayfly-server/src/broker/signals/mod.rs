//! Context-change signals: a workload moved, was compromised, changed an attribute, or
//! its task was cancelled. Signals that mean "kill" revoke at once; the others update
//! the context and re-decide every live credential of the subject with Cedar, revoking
//! what no longer passes. Signals come as Mayfly's own JSON (admin) or as Security Event
//! Tokens (RFC 8417) pushed by a configured sender (RFC 8935), verified against its JWKS.

mod model;
mod set;

pub use model::*;
pub use set::{SignalSender, VerifiedSet, verify_set};

/// Most live credentials one signal re-decides.
const MAX_MATCHED: i64 = 100_000;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::attest::WorkloadIdentity;
use crate::authorize::{ExchangeRequest, IssueRequest, PolicyEngine, Principal};
use crate::broker::{Broker, BrokerError, Unavailable};
use crate::ledger::RevokeError;
use crate::ledger::{AuditEvent, CredentialFilter, CredentialRecord, DbLease, DbLeaseState, IssuanceContext};
use crate::spiffe::SpiffeId;
use mayfly_proto::RevokeRequest;

/// Whether a recorded context has every attribute of `wanted`.
fn context_has(context: &Option<IssuanceContext>, wanted: &BTreeMap<String, String>) -> bool {
    context.as_ref().is_some_and(|c| has_all(&c.attributes, wanted))
}

fn parse_context(raw: Option<&str>) -> Option<IssuanceContext> {
    raw.and_then(IssuanceContext::parse)
}

impl Broker {
    /// Takes in a pushed Security Event Token (RFC 8935) from one of `senders`: verified,
    /// every event checked before anything is applied, its `jti` spent once for all
    /// replicas and restarts (a replay is refused), then each event applied. A SET that
    /// could not be applied releases its `jti`, so the sender's retry is not a replay.
    pub async fn receive_set(&self, token: &str, senders: &[SignalSender], now: i64) -> Result<(), SignalError> {
        let set = verify_set(token, senders, now)?;
        for signal in &set.signals {
            signal.validate()?;
        }
        let store = self.ledger.store();
        let key = format!("set-jti:{}:{}", set.sender, set.jti);
        if !store.meta_put_if_absent(&key, b"").await.map_err(|e| SignalError::Broker(e.into()))? {
            return Err(SignalError::Replayed(format!("SET {} was delivered before", set.jti)));
        }
        for signal in &set.signals {
            if let Err(e) = self.apply_signal(signal, &set.sender).await {
                // Signals are idempotent: what an earlier event of this SET did is safe to do again.
                if let Err(err) = store.meta_delete(&key).await {
                    tracing::warn!(error = %err, "could not release the jti of a SET that failed");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies a signal: kills, or re-decides every live credential of its subject in the
    /// new context and revokes what no longer passes. Audited with the counts.
    pub async fn apply_signal(&self, signal: &Signal, sender: &str) -> Result<SignalOutcome, SignalError> {
        signal.validate()?;
        let s = &signal.subject.canonical();
        let actor = format!("signal:{sender}");
        let reason = format!("signal {} from {sender}", signal.kind.as_str());
        let kill = signal.kind == SignalKind::WorkloadCompromised;
        let mut outcome = SignalOutcome { kind: signal.kind.as_str().into(), ..Default::default() };
        if let Some(task) = &s.task {
            let why = signal.reason.as_deref().unwrap_or(&reason);
            let ended = self.end_task(task, &actor, Some(why)).await?;
            outcome.tasks_ended = 1 + ended.descendants.len();
        } else {
            let now = crate::clock::now_unix();
            // A move sticks to the workload: later requests are decided in the new context.
            if !kill && let Some(id) = &s.spiffe_id {
                self.contexts.record(id, &signal.attributes).await.map_err(BrokerError::Ledger)?;
            }
            let (tokens, leases) = self.signal_matches(s, now).await?;
            outcome.matched = tokens.len() + leases.len();
            let tokens = std::sync::Arc::new(tokens);
            let denied = if kill {
                vec![true; tokens.len()]
            } else {
                // CPU-bound (a Cedar decision per token): on the blocking pool, across cores.
                let (policies, changed, all) = (self.policies.clone(), signal.attributes.clone(), tokens.clone());
                tokio::task::spawn_blocking(move || denied_tokens(&policies, &all, &changed, now))
                    .await
                    .map_err(|_| BrokerError::from(Unavailable::RedecideFailed))?
            };
            let revoke_tokens: Vec<(String, i64)> =
                tokens.iter().zip(&denied).filter(|(_, d)| **d).map(|(t, _)| (t.jti.clone(), t.expires_at)).collect();
            let revoke_leases: Vec<&DbLease> =
                leases.iter().filter(|l| kill || !self.still_allowed_lease(l, &signal.attributes, now)).collect();
            // A kill of a SPIFFE ID (or prefix) is a subject revocation: it also covers SVIDs
            // and whatever is issued while this runs. So is a move that nothing of the
            // subject survives: one row instead of one per token. Otherwise each falls alone.
            let all_fall = revoke_tokens.len() == tokens.len() && revoke_leases.len() == leases.len();
            let subject_kill = match (&s.spiffe_id, &s.spiffe_prefix) {
                (Some(id), _) if kill || (all_fall && !tokens.is_empty()) => {
                    Some(RevokeRequest { subject: Some(id.clone()), ..Default::default() })
                }
                (_, Some(p)) if kill => Some(RevokeRequest { subject_prefix: Some(p.clone()), ..Default::default() }),
                _ => None,
            };
            // A kill contains the subject (its tasks end with the revocation); a move's
            // tasks are re-decided below instead.
            let mut ended_by_revocation = 0;
            match subject_kill {
                Some(mut req) => {
                    req.reason = Some(reason.clone());
                    let revoked = if kill {
                        self.contain(&req, &actor).await.map(|(_, ended)| ended)
                    } else {
                        self.revocations.revoke(&req, &actor).await.map(|_| 0)
                    };
                    match revoked {
                        Ok(ended) => ended_by_revocation = ended,
                        Err(RevokeError::NothingMatches(_)) => {}
                        Err(RevokeError::Ledger(e)) => return Err(BrokerError::Ledger(e).into()),
                        Err(e) => return Err(SignalError::Invalid(e.to_string())),
                    }
                }
                None => {
                    self.revocations.revoke_jtis(&revoke_tokens, &reason, &actor).await.map_err(BrokerError::Ledger)?
                }
            }
            let mut revoked_leases = 0;
            for l in &revoke_leases {
                match self.revoke_db_lease(&l.id, &actor).await {
                    Ok(_) => revoked_leases += 1,
                    // Ended meanwhile, or its database is down: the reaper carries on.
                    Err(e) => {
                        tracing::warn!(lease = %l.id, error = %e, "signal: lease not revoked now");
                        outcome.failed += 1;
                    }
                }
            }
            outcome.revoked = revoke_tokens.len() + revoked_leases;
            outcome.kept = outcome.matched - revoke_tokens.len() - revoke_leases.len();
            outcome.tasks_ended = ended_by_revocation
                + if kill {
                    self.end_tasks_of(s, &tokens, &leases, &actor, &reason, now).await?
                } else {
                    self.end_tasks_no_longer_allowed(s, &signal.attributes, &actor, &reason, now).await?
                };
        }
        let detail = json!({
            "kind": signal.kind.as_str(), "sender": sender, "subject": subject_json(s),
            "attributes": signal.attributes, "reason": signal.reason, "matched": outcome.matched,
            "revoked": outcome.revoked, "kept": outcome.kept, "tasks_ended": outcome.tasks_ended,
            "failed": outcome.failed,
        });
        self.ledger
            .audit(AuditEvent::new("signal.applied", s.spiffe_id.clone(), detail))
            .await
            .map_err(BrokerError::Ledger)?;
        metrics::counter!("mayfly_signals_total", "kind" => signal.kind.as_str()).increment(1);
        Ok(outcome)
    }

    /// Ends the live tasks that the killed workloads started: those the subject names, and
    /// the holders of the matched credentials. Returns how many ended.
    async fn end_tasks_of(
        &self,
        s: &SignalSubject,
        tokens: &[CredentialRecord],
        leases: &[DbLease],
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<usize, SignalError> {
        let creators: std::collections::BTreeSet<&str> = tokens
            .iter()
            .map(|t| t.subject.as_str())
            .chain(leases.iter().map(|l| l.subject.as_str()))
            .chain(s.spiffe_id.as_deref())
            .collect();
        let mut ended = 0;
        for t in self.live_tasks(None, now).await? {
            let by_prefix =
                s.spiffe_prefix.as_deref().is_some_and(|p| crate::ledger::revocations::under_prefix(&t.creator, p));
            // A sub-task may already have ended with its parent.
            if (creators.contains(t.creator.as_str()) || by_prefix)
                && self.end_task(&t.id, actor, Some(reason)).await.is_ok()
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Re-decides the live tasks that the subject's workloads started, as if started in
    /// the changed context, and ends those policy no longer allows (everything under them
    /// goes with them). A task whose starter's context was not recorded cannot be
    /// re-decided and ends. Returns how many ended.
    async fn end_tasks_no_longer_allowed(
        &self,
        s: &SignalSubject,
        changed: &BTreeMap<String, String>,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<usize, SignalError> {
        let store = self.ledger.store();
        let mut ended = 0;
        for t in self.live_tasks(s.spiffe_id.clone(), now).await? {
            // A sub-task is decided with its root and ends with it.
            if t.parent_id.is_some() || !s.names(&t.creator) {
                continue;
            }
            let Ok(task) = crate::attest::task::TaskIdentity::from_record(t, self.task_attestor.trust_domain()) else {
                continue;
            };
            if s.attributes.as_ref().is_some_and(|wanted| !has_all(&task.attributes, wanted)) {
                continue;
            }
            let filter = CredentialFilter {
                task_id: Some(task.task.id.clone()),
                kind: Some("task".into()),
                limit: 1,
                ..Default::default()
            };
            let token = store.credentials(&filter).await.map_err(BrokerError::Ledger)?;
            let context = token.first().and_then(|c| c.context.as_deref());
            let allowed = workload_now(&task.task.creator, context, changed)
                .is_some_and(|(starter, ip)| self.redecide_task(&task, &starter, ip, now).allowed);
            if !allowed && self.end_task(&task.task.id, actor, Some(reason)).await.is_ok() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Live tokens and open database leases a subject selector names.
    async fn signal_matches(
        &self,
        s: &SignalSubject,
        now: i64,
    ) -> Result<(Vec<CredentialRecord>, Vec<DbLease>), SignalError> {
        let store = self.ledger.store();
        let filter = CredentialFilter {
            subject: s.spiffe_id.clone(),
            subject_prefix: s.spiffe_prefix.clone(),
            live_at: Some(now),
            limit: MAX_MATCHED,
            ..Default::default()
        };
        let mut tokens = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .credentials(&CredentialFilter { after: after.clone(), limit: 5000, ..filter.clone() })
                .await
                .map_err(BrokerError::Ledger)?;
            let Some(last) = page.last() else { break };
            after = Some(last.jti.clone());
            tokens.extend(page.into_iter().filter(|c| c.kind == "jwt"));
            if tokens.len() as i64 >= MAX_MATCHED {
                break;
            }
        }
        // A lease still being created is finished (or undone) by its replica first; it is
        // revoked by the subject revocation of a kill, or re-decided by the next signal.
        let open = [DbLeaseState::Active];
        let mut leases = store.db_leases(&open, None, MAX_MATCHED).await.map_err(BrokerError::Ledger)?;
        leases.retain(|l| s.names(&l.subject));
        if let Some(wanted) = &s.attributes {
            tokens.retain(|t| context_has(&parse_context(t.context.as_deref()), wanted));
            leases.retain(|l| context_has(&parse_context(l.context.as_deref()), wanted));
        }
        // Already revoked ones need no decision.
        tokens.retain(|t| {
            let facts = crate::ledger::revocations::CredentialFacts {
                jti: &t.jti,
                subject: &t.subject,
                audience: &t.audience,
                task_id: t.task_id.as_deref(),
                issued_at: t.issued_at,
            };
            self.revocations.revoked_by(&facts).is_none()
        });
        Ok((tokens, leases))
    }

    fn still_allowed_lease(&self, l: &DbLease, changed: &BTreeMap<String, String>, now: i64) -> bool {
        let Some((identity, source_ip)) = workload_now(&l.subject, l.context.as_deref(), changed) else {
            return false;
        };
        let Some(db) = self.databases.get(&l.issuer) else { return false };
        self.policies
            .decide_issue(&IssueRequest {
                principal: Principal::Workload(&identity),
                database: &l.issuer,
                kind: db.config.kind.as_str(),
                role: &l.role,
                ttl_seconds: (l.expires_at - now).max(1),
                source_ip,
                now,
            })
            .allowed
    }
}

/// Which of `tokens` policy no longer allows in the changed context (in order), decided
/// on every core; a decision that could not be made counts as denied.
fn denied_tokens(
    policies: &PolicyEngine,
    tokens: &[CredentialRecord],
    changed: &BTreeMap<String, String>,
    now: i64,
) -> Vec<bool> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = tokens.len().div_ceil(threads).max(512);
    std::thread::scope(|scope| {
        let parts: Vec<_> = tokens
            .chunks(chunk)
            .map(|part| {
                let handle = scope.spawn(move || {
                    part.iter().map(|t| !token_still_allowed(policies, t, changed, now)).collect::<Vec<_>>()
                });
                (part.len(), handle)
            })
            .collect();
        parts.into_iter().flat_map(|(n, h)| h.join().unwrap_or_else(|_| vec![true; n])).collect()
    })
}

/// The workload as it is now: its recorded context with the signal's attributes over it.
/// `None` when nothing was recorded (a task's credential): such a credential fails closed.
fn workload_now(
    subject: &str,
    context: Option<&str>,
    changed: &BTreeMap<String, String>,
) -> Option<(WorkloadIdentity, std::net::IpAddr)> {
    let ctx = parse_context(context)?;
    let mut attributes = ctx.attributes;
    attributes.extend(changed.iter().map(|(k, v)| (k.clone(), v.clone())));
    let identity = WorkloadIdentity { spiffe_id: SpiffeId::parse(subject).ok()?, attestor: ctx.attestor, attributes };
    Some((identity, ctx.source_ip.parse().ok()?))
}

/// Whether the same exchange would still be allowed for this token in the changed context.
fn token_still_allowed(
    policies: &PolicyEngine,
    t: &CredentialRecord,
    changed: &BTreeMap<String, String>,
    now: i64,
) -> bool {
    let Some((identity, source_ip)) = workload_now(&t.subject, t.context.as_deref(), changed) else {
        return false;
    };
    let scopes: Vec<String> = t.scope.split_whitespace().map(str::to_owned).collect();
    let binding: Value = t.binding.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    policies
        .decide_exchange(&ExchangeRequest {
            principal: Principal::Workload(&identity),
            audience: &t.audience,
            scopes: &scopes,
            ttl_seconds: (t.expires_at - now).max(1),
            source_ip,
            now,
            dpop: binding.get("jkt").is_some(),
            mtls: binding.get("x5t#S256").is_some(),
            max_uses: t.max_uses.unwrap_or(0),
        })
        .allowed
}

fn subject_json(s: &SignalSubject) -> Value {
    json!({"spiffe_id": s.spiffe_id, "spiffe_prefix": s.spiffe_prefix, "task": s.task, "attributes": s.attributes})
}
