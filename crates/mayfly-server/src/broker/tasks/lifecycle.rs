//! A task's life after it starts: approved or denied, ended with its subtree, retired by
//! time. Each transition is a write guarded on the state it was decided from, so the
//! database, not a lock in one process, decides between racing requests and replicas.

use super::*;
use crate::attest::task::{TaskIdentity, task_spiffe_id};
use crate::authorize::ApproveRequest;
use crate::broker::{Broker, BrokerError, Caller, Conflict, Forbidden};
use crate::ledger::{AuditEvent, Batch, Guard, LedgerError, Revocation, RevocationKind, TaskRecord, TaskState};
use serde_json::json;
use std::net::IpAddr;

/// How `end_live_subtree` guards its write.
#[derive(Debug, Clone, Copy)]
enum Whole {
    /// Only if the live subtree is still exactly what was read.
    Guarded,
    /// Each task only from the state it was read in; tasks started meanwhile are left for the next round.
    AsRead,
}

fn ended_task(id: &str, task: TaskRecord, ended: Vec<TaskRecord>) -> EndedTask {
    let descendants = ended.iter().filter(|t| t.id != id).map(|t| t.id.clone()).collect();
    let this = ended.iter().find(|t| t.id == id).cloned().unwrap_or(task);
    metrics::counter!("mayfly_tasks_ended_total").increment(1);
    EndedTask { task: this, descendants }
}

impl Broker {
    /// The workload that `token` proves, as an approver: approvers are workloads, never
    /// tasks (a task approving tasks would let a chain approve itself).
    pub async fn workload_approver(
        &self,
        token_type: &str,
        token: &str,
        source_ip: IpAddr,
    ) -> Result<Approver, BrokerError> {
        if token_type == mayfly_proto::TOKEN_TYPE_TASK {
            return Err(Forbidden::TaskCannotApprove.into());
        }
        match self.attest(token_type, token, source_ip, crate::clock::now_unix()).await? {
            Caller::Workload(w) => Ok(Approver::Workload(w)),
            Caller::Task(_) => Err(Forbidden::TaskCannotApprove.into()),
        }
    }

    /// Approves or denies a pending task.
    pub async fn decide_task(
        &self,
        id: &str,
        approver: Approver,
        approve: bool,
        source_ip: IpAddr,
    ) -> Result<TaskRecord, BrokerError> {
        let now = crate::clock::now_unix();
        let mut task = self.task(id).await?;
        // Decided on this read; the write is guarded on it, so of two approvers (here or on
        // another replica) one wins and the other is told the task changed.
        let still_pending = Guard::Task { id: id.to_owned(), stored: task.state, at_now: TaskState::Pending, now };
        match task.state_at(now) {
            TaskState::Pending => {}
            state => return Err(Conflict::NotPending { task: id.to_owned(), state }.into()),
        }
        let identity = TaskIdentity::from_record(task.clone(), self.task_attestor.trust_domain())?;
        let mut policies = Vec::new();
        if let Approver::Workload(w) = &approver {
            let me = w.spiffe_id.to_string();
            if me == task.creator || identity.actors.contains(&me) {
                let detail = json!({"task_id": id, "approve": approve, "reason": "self-approval",
                                    "source_ip": source_ip.to_string()});
                self.audit_best_effort(AuditEvent::new("task.approval_refused", Some(me), detail)).await;
                return Err(Forbidden::OwnTaskDecision { approver: w.spiffe_id.clone(), task: id.to_owned() }.into());
            }
            let decision =
                self.policies.decide_approve(&ApproveRequest { approver: w, task: &identity, source_ip, now });
            let caller = Caller::Workload(w.clone());
            let detail = || json!({"action": "approve", "task_id": id, "approve": approve});
            self.check_decision(&caller, &decision, detail, source_ip).await?;
            policies = decision.policies;
        }
        task.state = if approve { TaskState::Active } else { TaskState::Denied };
        task.decided_by = Some(approver.name());
        task.decided_at = Some(now);
        let kind = if approve { "task.approved" } else { "task.denied" };
        let detail = json!({"task_id": id, "approver": approver.name(), "policies": policies,
                            "source_ip": source_ip.to_string()});
        self.ledger
            .commit(Batch {
                tasks: vec![task.clone()],
                events: vec![AuditEvent::new(kind, Some(identity.spiffe_id.to_string()), detail)],
                guards: vec![still_pending],
                ..Batch::default()
            })
            .await
            .map_err(|e| match e {
                LedgerError::Changed(why) => BrokerError::from(Conflict::DecidedMeanwhile { why }),
                other => other.into(),
            })?;
        Ok(task)
    }

    /// Ends a task and every live sub-task below it, revoking everything issued under
    /// them: one revocation per task, whatever the number of tokens.
    pub async fn end_task(&self, id: &str, actor: &str, reason: Option<&str>) -> Result<EndedTask, BrokerError> {
        let reason = reason.map(|r| r.chars().take(500).collect::<String>());
        // The subtree is read, then ended in one write guarded on what was read: a sub-task
        // started meanwhile (here or on another replica) fails the guard, and the subtree
        // is read again. Each retry sees more of the tree, so a few usually suffice.
        for _ in 0..END_TASK_ATTEMPTS {
            let now = crate::clock::now_unix();
            let task = self.task(id).await?;
            match task.state_at(now) {
                TaskState::Pending | TaskState::Active => {}
                state => return Err(Conflict::TaskOver { task: id.to_owned(), state }.into()),
            }
            match self.end_live_subtree(&task.path, id, actor, reason.as_deref(), now, Whole::Guarded).await {
                Ok(ended) => return Ok(ended_task(id, task, ended)),
                Err(BrokerError::Ledger(LedgerError::Changed(why))) => {
                    tracing::debug!(task = %id, %why, "the subtree changed while it was being ended; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        // A holder of a task token that keeps starting sub-tasks must not keep its task
        // alive: end what is read without the subtree guard, then what appeared under it,
        // round after round. A sub-task starts only under a parent still active, so each
        // round can leave new tasks one level deeper only, and depth is bounded.
        tracing::warn!(task = %id, "sub-tasks kept starting while the task was being ended; ending it level by level");
        let task = self.task(id).await?;
        let mut ended = Vec::new();
        for _ in 0..(2 * self.tasks.max_depth + 2) {
            let now = crate::clock::now_unix();
            match self.end_live_subtree(&task.path, id, actor, reason.as_deref(), now, Whole::AsRead).await {
                Ok(round) if round.is_empty() => break,
                Ok(round) => ended.extend(round),
                // One of them was ended meanwhile by another request: read again.
                Err(BrokerError::Ledger(LedgerError::Changed(_))) => {}
                Err(e) => return Err(e),
            }
        }
        if ended.is_empty() {
            return Err(Conflict::TaskOver { task: id.to_owned(), state: TaskState::Ended }.into());
        }
        Ok(ended_task(id, task, ended))
    }

    /// Ends every live task at or below `path` (`id` is the root being ended), with one
    /// task revocation each, in force before it returns; returns the tasks it ended. The
    /// write fails with [`LedgerError::Changed`] if the live subtree is no longer what was read.
    async fn end_live_subtree(
        &self,
        path: &str,
        id: &str,
        actor: &str,
        reason: Option<&str>,
        now: i64,
        whole: Whole,
    ) -> Result<Vec<TaskRecord>, BrokerError> {
        let subtree = self.ledger.store().task_subtree(path).await?;
        let mut as_read = Vec::new();
        let mut ended = Vec::new();
        let mut revocations = Vec::new();
        let mut events = Vec::new();
        for mut t in subtree {
            if !matches!(t.state_at(now), TaskState::Pending | TaskState::Active) {
                continue;
            }
            let cause = if t.id == id { reason.map(str::to_owned) } else { Some(format!("parent task {id} ended")) };
            as_read.push(Guard::Task { id: t.id.clone(), stored: t.state, at_now: t.state_at(now), now });
            t.state = TaskState::Ended;
            t.ended_at = Some(now);
            t.end_reason = cause.clone();
            revocations.push(Revocation {
                cursor: 0,
                kind: RevocationKind::Task,
                value: t.id.clone(),
                // A task never comes back, so the revocation covers everything issued under
                // it, even a request that attested just before this commit and signs after it.
                issued_before: t.expires_at,
                revoked_at: now,
                // Everything under the task expires with it; a margin covers clock skew.
                expires_at: t.expires_at + 300,
                reason: cause.clone(),
                lift: false,
            });
            let subject = task_spiffe_id(self.task_attestor.trust_domain(), &t.id)?.to_string();
            let detail = json!({"task_id": t.id, "actor": actor, "reason": cause, "root": id});
            events.push(AuditEvent::new("task.ended", Some(subject), detail));
            ended.push(t);
        }
        if ended.is_empty() {
            return Ok(ended);
        }
        let guards = match whole {
            Whole::Guarded => {
                vec![Guard::LiveSubtree {
                    path: path.to_owned(),
                    live: ended.iter().map(|t| t.id.clone()).collect(),
                    now,
                }]
            }
            // Each task still only from the state it was read in: two enders never both end one.
            Whole::AsRead => as_read,
        };
        self.ledger
            .commit(Batch { tasks: ended.clone(), revocations, events, guards, ..Batch::default() })
            .await
            .map_err(BrokerError::Ledger)?;
        // The revocations enter the index (and the feed) before the caller hears "ended".
        self.revocations.catch_up().await?;
        Ok(ended)
    }

    /// Records the end of tasks whose time is up: a pending task past its approval
    /// deadline is denied, a task past its lifetime expired. Nothing needs revoking:
    /// everything issued under a task expires with it. Returns how many changed.
    pub async fn retire_due_tasks(&self, now: i64) -> Result<usize, BrokerError> {
        let due = self.ledger.store().tasks_due(now, 500).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut writes = Vec::new();
        for mut t in due {
            let subject = task_spiffe_id(self.task_attestor.trust_domain(), &t.id)?.to_string();
            // Retired only as read: a task ended or decided meanwhile keeps that outcome.
            let as_read = Guard::Task { id: t.id.clone(), stored: t.state, at_now: t.state_at(now), now };
            let event = match t.state_at(now) {
                TaskState::Denied => {
                    t.state = TaskState::Denied;
                    t.decided_by = Some("approval deadline".into());
                    t.decided_at = t.approval_deadline;
                    let detail = json!({"task_id": t.id, "approval_deadline": t.approval_deadline});
                    AuditEvent::new("task.approval_expired", Some(subject), detail)
                }
                TaskState::Expired => {
                    t.state = TaskState::Expired;
                    t.ended_at = Some(t.expires_at);
                    t.end_reason = Some("lifetime over".into());
                    let detail = json!({"task_id": t.id, "expires_at": t.expires_at});
                    AuditEvent::new("task.expired", Some(subject), detail)
                }
                _ => continue,
            };
            writes.push(Batch { tasks: vec![t], events: vec![event], guards: vec![as_read], ..Batch::default() });
        }
        let committed = self.ledger.commit_each(writes).await?;
        Ok(committed.into_iter().filter(|c| *c).count())
    }
}
