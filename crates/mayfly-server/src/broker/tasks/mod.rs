//! Tasks: runtime identities that live exactly as long as one job.
//!
//! An attested workload starts a task (`spiffe://<td>/task/<id>`) with a purpose,
//! scopes and a lifetime, and gets a task token. Credentials issued with the task
//! token carry the task id and the RFC 8693 `act` chain; sub-tasks only narrow.
//! Policy may make a task wait for an approver. Ending a task writes one task
//! revocation per task in its subtree, whatever the number of tokens issued under it.

use std::net::IpAddr;

use serde_json::json;

use crate::attest::delegation::{Delegation, check_named_subject};
use crate::attest::task::{TASK_TOKEN_AUDIENCE, TaskIdentity, task_spiffe_id};
use crate::attest::{AttestError, WorkloadIdentity};
use crate::authorize::{ActForRequest, Principal, StartTaskRequest};
use crate::broker::{
    Broker, BrokerError, Caller, Conflict, Forbidden, InvalidRequest, InvalidTarget, Missing, RecordFacts, parse_scopes,
};
use crate::issue::{AccessTokenRequest, IssuedToken};
use crate::ledger::{AuditEvent, Batch, Guard, LedgerError, TaskRecord, TaskState};

mod delegation;
mod lifecycle;
mod narrowing;
mod reattest;
pub use narrowing::{Asked, narrow_to_parent};

/// Longest purpose accepted.
const MAX_PURPOSE_CHARS: usize = 256;
/// Most audiences a task may be limited to.
const MAX_AUDIENCES: usize = 16;
/// Longest audience accepted.
const MAX_AUDIENCE_BYTES: usize = 512;

/// A request to start a task.
#[derive(Clone)]
pub struct StartTaskParams {
    /// RFC 8693 token type of the evidence (a task token starts a sub-task).
    pub subject_token_type: String,
    /// The evidence. Secret.
    pub subject_token: String,
    /// Why the task exists.
    pub purpose: String,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Audiences it is limited to (none: any that policy allows).
    pub audiences: Vec<String>,
    /// Requested lifetime in seconds.
    pub ttl_seconds: Option<u64>,
    /// The subject it acts for.
    pub on_behalf_of: Option<String>,
    /// The parent task, for a sub-task started with the caller's own evidence.
    pub parent: Option<String>,
    /// RFC 8693 delegation: the caller's own evidence (`subject_token` is then the
    /// represented subject's proof), as (type, token). Secret.
    pub actor: Option<(String, String)>,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// What the starter must have proven (a Vault-compatible login role's attestor and
    /// bound attributes); `None`: anything policy allows.
    pub starter: Option<StarterRule>,
}

/// The purpose of every task a Vault-compatible login starts (`vault login <mount>/<role>`),
/// and the prefix of its scopes (`vault:<policy>`): only a start with a [`StarterRule`] may
/// use them, so Cedar can trust `principal.purpose` and `principal.scopes` for logins.
pub const LOGIN_PURPOSE_PREFIX: &str = "vault login ";
/// See [`LOGIN_PURPOSE_PREFIX`].
pub const LOGIN_SCOPE_PREFIX: &str = "vault:";

/// A rule on the workload that starts a task, checked right after attestation and
/// before policy: the Vault-compatible API's login roles (`bound_claims`).
#[derive(Debug, Clone, Default)]
pub struct StarterRule {
    /// The rule's name, for refusals ("vault role jwt/app").
    pub name: String,
    /// The attestor that must have verified the evidence.
    pub attestor: Option<String>,
    /// Attested attributes that must hold exactly these values.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl StarterRule {
    /// Refuses a caller the rule does not cover: a task token, another attestor, an
    /// attribute that is missing or differs (which one, not its expected value).
    fn check(&self, caller: &Caller) -> Result<(), BrokerError> {
        let refuse = |why| Err(Forbidden::StarterRule { rule: self.name.clone(), why }.into());
        let Caller::Workload(w) = caller else {
            return refuse(crate::broker::refusals::RuleMismatch::NotAWorkload);
        };
        if let Some(expected) = &self.attestor
            && *expected != w.attestor
        {
            return refuse(crate::broker::refusals::RuleMismatch::Attestor { actual: w.attestor.clone() });
        }
        if let Some((name, _)) = self.attributes.iter().find(|(k, v)| w.attributes.get(*k) != Some(*v)) {
            return refuse(crate::broker::refusals::RuleMismatch::Attribute { name: name.clone() });
        }
        Ok(())
    }
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for StartTaskParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartTaskParams")
            .field("subject_token_type", &self.subject_token_type)
            .field("purpose", &self.purpose)
            .field("scope", &self.scope)
            .field("audiences", &self.audiences)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("on_behalf_of", &self.on_behalf_of)
            .field("parent", &self.parent)
            .field("actor_token_type", &self.actor.as_ref().map(|(t, _)| t))
            .field("source_ip", &self.source_ip)
            .field("starter", &self.starter)
            .finish_non_exhaustive()
    }
}

/// A started task and its token.
#[derive(Debug, Clone)]
pub struct StartedTask {
    /// The task as stored.
    pub task: TaskRecord,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The task token. Secret.
    pub token: IssuedToken,
}

/// Who decides on a pending task.
#[derive(Debug, Clone)]
pub enum Approver {
    /// An operator, through the admin API.
    Admin,
    /// A workload that policy allows to approve.
    Workload(WorkloadIdentity),
}

impl Approver {
    fn name(&self) -> String {
        match self {
            Approver::Admin => "admin".to_owned(),
            Approver::Workload(w) => w.spiffe_id.to_string(),
        }
    }
}

/// The result of ending a task.
#[derive(Debug, Clone)]
pub struct EndedTask {
    /// The task as it is now.
    pub task: TaskRecord,
    /// Ids of the sub-tasks that ended with it.
    pub descendants: Vec<String>,
}

/// The `sub` and `act` of a credential issued under a task: with delegation, the
/// subject is the one the task acts for and the task is the actor; otherwise the task
/// is the subject and its starter the actor.
pub fn delegated_subject(t: &TaskIdentity) -> Result<(String, serde_json::Value), BrokerError> {
    let actor = t.task.actor_json().map_err(InvalidRequest::StoredActorChain)?;
    Ok(match &t.task.on_behalf_of {
        Some(subject) => (subject.clone(), json!({"sub": t.spiffe_id.to_string(), "act": actor})),
        None => (t.spiffe_id.to_string(), actor),
    })
}

/// Refuses a target (an audience, or `db:<database>/<role>`) that a task limited to
/// audiences does not name.
pub fn check_task_audience(task: &TaskRecord, target: &str) -> Result<(), BrokerError> {
    match task.audience_list() {
        Some(auds) if !auds.iter().any(|a| a == target) => {
            Err(InvalidTarget::OutsideTask { task: task.id.clone(), allowed: auds, target: target.to_owned() }.into())
        }
        _ => Ok(()),
    }
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), BrokerError> {
    if v.trim().is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(InvalidRequest::BadText { field, max }.into());
    }
    Ok(())
}

/// How many times `end_task` reads and ends a subtree that keeps changing under it.
const END_TASK_ATTEMPTS: usize = 8;

impl Broker {
    /// Starts a task for the attested caller. A task that policy allows only with
    /// approval starts `pending`; one policy does not allow at all is refused.
    pub async fn start_task(&self, p: StartTaskParams) -> Result<StartedTask, BrokerError> {
        check_text("purpose", &p.purpose, MAX_PURPOSE_CHARS)?;
        let mut scopes = parse_scopes(p.scope.as_deref())?;
        // A native start cannot pass for a login: the login's marks are set by the Vault path only.
        if p.starter.is_none() {
            let purpose = p.purpose.trim_start().to_ascii_lowercase();
            if purpose.starts_with(LOGIN_PURPOSE_PREFIX.trim_end()) {
                let value = p.purpose.chars().take(64).collect();
                return Err(InvalidRequest::ReservedForLogins { what: "purpose", value }.into());
            }
        }
        let mut audiences = p.audiences.clone();
        audiences.sort();
        audiences.dedup();
        if audiences.len() > MAX_AUDIENCES
            || audiences.iter().any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_BYTES || a.chars().any(char::is_control))
        {
            return Err(InvalidTarget::BadTaskAudiences { max: MAX_AUDIENCES, max_bytes: MAX_AUDIENCE_BYTES }.into());
        }
        let max = self.tasks.max_ttl.as_secs();
        let ttl = match p.ttl_seconds {
            Some(0) => return Err(InvalidRequest::ZeroTtl.into()),
            Some(t) if t > max => {
                return Err(InvalidRequest::TaskTtlAboveMax { ttl: t, max }.into());
            }
            Some(t) => t,
            None => self.tasks.default_ttl.as_secs(),
        } as i64;

        let now = crate::clock::now_unix();
        // Checked before any evidence is spent (a join token is single use).
        if p.actor.is_none()
            && let Some(obo) = &p.on_behalf_of
        {
            check_named_subject(obo, self.task_attestor.trust_domain()).map_err(Forbidden::NamedSubject)?;
        }
        // A delegation lasts no longer than the proof of it.
        let mut proof_expires_at = None;
        let (caller, proven) = match &p.actor {
            None => (self.attest(&p.subject_token_type, &p.subject_token, p.source_ip, now).await?, None),
            Some((actor_type, actor_token)) => {
                if p.parent.is_some() || actor_type == mayfly_proto::TOKEN_TYPE_TASK {
                    return Err(InvalidRequest::DelegationNotRoot.into());
                }
                // Checked before the actor's evidence is spent (a join token is single use).
                let proof_types = [
                    mayfly_proto::TOKEN_TYPE_JWT,
                    mayfly_proto::TOKEN_TYPE_ID_TOKEN,
                    mayfly_proto::TOKEN_TYPE_ACCESS_TOKEN,
                ];
                if !proof_types.contains(&p.subject_token_type.as_str()) {
                    return Err(
                        AttestError::UnsupportedTokenType(p.subject_token_type.chars().take(200).collect()).into()
                    );
                }
                let caller = self.attest(actor_type, actor_token, p.source_ip, now).await?;
                let (subject, proof_expires) = self.delegating_subject(&caller, &p, now).await?;
                if p.on_behalf_of.as_ref().is_some_and(|obo| *obo != subject) {
                    return Err(Forbidden::OtherSubject { proven: subject }.into());
                }
                proof_expires_at = proof_expires;
                (caller, Some(subject))
            }
        };
        if let Some(rule) = &p.starter {
            rule.check(&caller)?;
        }
        let delegation = match (&proven, &p.on_behalf_of) {
            (Some(_), _) => Some(Delegation::Proof),
            (None, Some(_)) => Some(Delegation::Policy),
            (None, None) => None,
        };
        let on_behalf_of = proven.or_else(|| p.on_behalf_of.clone());
        let parent = self.parent_for(&caller, p.parent.as_deref(), now).await?;

        let id = crate::ids::time_ordered_id();
        let spiffe_id = task_spiffe_id(self.task_attestor.trust_domain(), &id)?;
        let mut expires_at = proof_expires_at.map_or(now + ttl, |exp: i64| exp.min(now + ttl));
        let (path, depth, attributes, actor, on_behalf_of) = match &parent {
            None => {
                let Caller::Workload(w) = &caller else {
                    return Err(InvalidRequest::TaskTokenWithoutTask.into());
                };
                // A root task's scopes are asked for freely; a login's are its role's. (A
                // sub-task's narrow its parent's, so a login's sub-task may keep them.)
                if p.starter.is_none()
                    && let Some(s) = scopes.iter().find(|s| s.starts_with(LOGIN_SCOPE_PREFIX))
                {
                    return Err(InvalidRequest::ReservedForLogins { what: "scope", value: s.clone() }.into());
                }
                (id.clone(), 1, w.attributes.clone(), json!({"sub": w.spiffe_id.to_string()}), on_behalf_of.clone())
            }
            Some(parent) => {
                let t = &parent.task;
                let asked =
                    Asked { scopes: p.scope.is_some().then_some(scopes), audiences, on_behalf_of: &on_behalf_of };
                (scopes, audiences) = narrow_to_parent(t, asked, self.tasks.max_depth)?;
                // A sub-task never outlives its parent.
                expires_at = expires_at.min(t.expires_at);
                let parent_actor = t.actor_json().unwrap_or_else(|_| json!({"sub": t.creator}));
                let actor = json!({"sub": parent.spiffe_id.to_string(), "act": parent_actor});
                (format!("{}/{id}", t.path), t.depth + 1, parent.attributes.clone(), actor, t.on_behalf_of.clone())
            }
        };
        let mut record = TaskRecord {
            id: id.clone(),
            parent_id: parent.as_ref().map(|t| t.task.id.clone()),
            path,
            depth,
            creator: match &parent {
                Some(t) => t.spiffe_id.to_string(),
                None => caller.spiffe_id(),
            },
            on_behalf_of,
            actor: actor.to_string(),
            attributes: serde_json::to_string(&attributes).unwrap_or_else(|_| "{}".into()),
            purpose: p.purpose.trim().to_owned(),
            scope: scopes.join(" "),
            audiences: (!audiences.is_empty()).then(|| json!(audiences).to_string()),
            created_at: now,
            expires_at,
            state: TaskState::Active,
            approval_deadline: None,
            decided_by: None,
            decided_at: None,
            ended_at: None,
            end_reason: None,
        };

        // Policy: allowed now, allowed only once approved, or not at all.
        let identity = TaskIdentity::from_record(record.clone(), self.task_attestor.trust_domain())?;
        let principal = match &parent {
            Some(parent) => Principal::Task(parent),
            None => caller.principal(),
        };
        // Acting for a subject that gave no proof takes an explicit permission (a sub-task
        // inherits its root's subject, decided when the root started).
        if parent.is_none()
            && delegation == Some(Delegation::Policy)
            && let Some(subject) = &record.on_behalf_of
        {
            let decision = self.policies.decide_act_for(&ActForRequest {
                principal,
                subject,
                scopes: &scopes,
                ttl_seconds: expires_at - now,
                source_ip: p.source_ip,
                now,
            });
            let detail = || json!({"action": "act_for", "on_behalf_of": subject, "purpose": record.purpose});
            self.check_decision(&caller, &decision, detail, p.source_ip).await?;
        }
        let ask = |approved| StartTaskRequest {
            principal,
            task: &identity,
            ttl_seconds: expires_at - now,
            audiences: &audiences,
            approved,
            source_ip: p.source_ip,
            now,
        };
        let decision = self.policies.decide_start_task(&ask(false));
        let decision = if decision.allowed {
            decision
        } else {
            let with_approval = self.policies.decide_start_task(&ask(true));
            if with_approval.allowed {
                record.state = TaskState::Pending;
                record.approval_deadline =
                    Some((now + self.tasks.approval_timeout.as_secs() as i64).min(record.expires_at));
                with_approval
            } else {
                let detail = json!({"action": "start_task", "purpose": record.purpose, "scopes": scopes,
                                    "ttl_seconds": expires_at - now, "parent": record.parent_id});
                return Err(self.deny(&caller, &decision, detail, p.source_ip).await);
            }
        };

        let token = self.issuer.issue(&AccessTokenRequest {
            subject: &identity.spiffe_id.to_string(),
            audience: TASK_TOKEN_AUDIENCE,
            client_id: &record.creator,
            scopes: &scopes,
            ttl_seconds: expires_at - now,
            now,
            task_id: Some(&id),
            act: Some(&actor),
            cnf: None,
            max_uses: None,
            context: None,
        })?;
        let sub = spiffe_id.to_string();
        // A root task's token keeps what its starter proved, so a signal can re-decide the task.
        let context = caller.issuance_context(p.source_ip);
        let facts = RecordFacts {
            kind: "task",
            subject: &sub,
            audience: TASK_TOKEN_AUDIENCE,
            task_id: Some(&id),
            client_id: &record.creator,
            confirmation: None,
            max_uses: None,
            context: context.as_deref(),
        };
        let detail = json!({"attestor": caller.attestor(), "source_ip": p.source_ip.to_string()});
        let (credential, token_event) = self.issued_record(&token, &facts, detail);
        self.check_not_born_revoked(std::slice::from_ref(&credential))?;
        // The parent may end between the check above and this write, here or on another
        // replica: the write is guarded on it, so the database decides, and a sub-task
        // never starts under an ended parent.
        let guards = match &record.parent_id {
            Some(parent_id) => {
                let now = crate::clock::now_unix();
                vec![Guard::Task { id: parent_id.clone(), stored: TaskState::Active, at_now: TaskState::Active, now }]
            }
            None => Vec::new(),
        };
        let event_kind = if record.state == TaskState::Pending { "task.pending" } else { "task.started" };
        let detail = json!({
            "task_id": id, "parent": record.parent_id, "purpose": record.purpose, "scope": record.scope,
            "audiences": audiences, "expires_at": expires_at, "on_behalf_of": record.on_behalf_of,
            "delegation": delegation.map(Delegation::as_str), "act": actor,
            "policies": decision.policies, "approval_deadline": record.approval_deadline,
            "source_ip": p.source_ip.to_string(),
        });
        let written = self
            .ledger
            .commit(Batch {
                credentials: vec![credential],
                tasks: vec![record.clone()],
                events: vec![AuditEvent::new(event_kind, Some(sub.clone()), detail), token_event],
                guards,
                ..Batch::default()
            })
            .await;
        if let (Err(LedgerError::Changed(why)), Some(parent_id)) = (&written, &record.parent_id) {
            // `why` names the parent and its state now ("task … is now ended").
            tracing::debug!(parent = %parent_id, "sub-task refused: its parent changed");
            return Err(Conflict::ParentChanged { why: why.clone() }.into());
        }
        written?;
        metrics::counter!("mayfly_tasks_started_total", "state" => record.state.as_str()).increment(1);
        Ok(StartedTask { task: record, spiffe_id: sub, token })
    }

    /// The parent of a new task: the caller itself when it is a task, or a task the
    /// calling workload started, named by `parent`.
    async fn parent_for(
        &self,
        caller: &Caller,
        parent: Option<&str>,
        now: i64,
    ) -> Result<Option<TaskIdentity>, BrokerError> {
        let parent = match (caller, parent) {
            (Caller::Task(t), None) => return self.active_parent(TaskIdentity::clone(t)).map(Some),
            (Caller::Task(t), Some(id)) if id == t.task.id => {
                return self.active_parent(TaskIdentity::clone(t)).map(Some);
            }
            (Caller::Task(t), Some(id)) => {
                return Err(Forbidden::NotYourParent { task: t.task.id.clone(), parent: id.to_owned() }.into());
            }
            (Caller::Workload(_), None) => return Ok(None),
            (Caller::Workload(w), Some(id)) => (w, id),
        };
        let (w, id) = parent;
        let not_yours =
            || BrokerError::from(Forbidden::NotYourTask { parent: id.to_owned(), caller: w.spiffe_id.clone() });
        // The same answer for "no such task" and "not yours": ids of others' tasks stay private.
        let task = self.ledger.store().task(id).await?.ok_or_else(not_yours)?;
        if task.creator != w.spiffe_id.to_string() {
            return Err(not_yours());
        }
        match task.state_at(now) {
            TaskState::Active => {}
            state => return Err(Conflict::ParentNotActive { parent: id.to_owned(), state }.into()),
        }
        let identity = TaskIdentity::from_record(task, self.task_attestor.trust_domain())?;
        self.active_parent(identity).map(Some)
    }

    fn active_parent(&self, t: TaskIdentity) -> Result<TaskIdentity, BrokerError> {
        if t.task.state == TaskState::Pending {
            return Err(BrokerError::TaskPending { task: t.task.id.clone() });
        }
        Ok(t)
    }

    /// A task by id.
    pub async fn task(&self, id: &str) -> Result<TaskRecord, BrokerError> {
        self.ledger.store().task(id).await?.ok_or_else(|| BrokerError::NotFound(Missing::Task(id.to_owned())))
    }

    /// Proves a task token and checks it may act on task `id`: its own task or one below it.
    pub async fn task_caller(&self, token: &str, id: &str, source_ip: IpAddr) -> Result<TaskIdentity, BrokerError> {
        let now = crate::clock::now_unix();
        let Caller::Task(t) = self.attest(mayfly_proto::TOKEN_TYPE_TASK, token, source_ip, now).await? else {
            return Err(InvalidRequest::NotTaskToken.into());
        };
        if t.task.id == id {
            return Ok(*t);
        }
        let target = self.ledger.store().task(id).await?;
        match target {
            Some(target) if target.path.starts_with(&format!("{}/", t.task.path)) => Ok(*t),
            _ => Err(Forbidden::OutsideSubtree { task: t.task.id }.into()),
        }
    }

    /// Policy's decision on a live task, were its starter to start it now as `starter`.
    pub(crate) fn redecide_task(
        &self,
        task: &TaskIdentity,
        starter: &WorkloadIdentity,
        source_ip: IpAddr,
        now: i64,
    ) -> crate::authorize::Decision {
        let audiences = task.task.audience_list().unwrap_or_default();
        self.policies.decide_start_task(&StartTaskRequest {
            principal: Principal::Workload(starter),
            task,
            ttl_seconds: (task.task.expires_at - now).max(0),
            audiences: &audiences,
            // An approval given stays given; pending tasks are judged as if approved, so
            // they keep waiting for their approver.
            approved: task.task.decided_by.is_some() || task.task.state == TaskState::Pending,
            source_ip,
            now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_evidence_and_the_actor_token() {
        let p = StartTaskParams {
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            subject_token: "eyJ-subject-secret".into(),
            purpose: "deploy".into(),
            scope: None,
            audiences: vec![],
            ttl_seconds: None,
            on_behalf_of: None,
            parent: None,
            actor: Some(("urn:ietf:params:oauth:token-type:jwt".into(), "eyJ-actor-secret".into())),
            source_ip: IpAddr::from([127, 0, 0, 1]),
            starter: None,
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("eyJ-subject-secret") && !shown.contains("eyJ-actor-secret"), "{shown}");
        assert!(shown.contains("deploy"), "{shown}");
    }
}
