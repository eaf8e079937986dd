//! Task tokens as evidence: a task token proves the bearer acts as that task.
//!
//! A task token is a Mayfly access token for the audience [`TASK_TOKEN_AUDIENCE`]
//! whose subject is the task's SPIFFE ID. It is revoked with its task, so a token
//! of an ended task fails here like any revoked token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AttestError;
use crate::ledger::{RevocationKind, Store, TaskRecord, TaskState};
use crate::spiffe::SpiffeId;
use crate::verify::{TokenVerifier, VerifyError};

/// The audience of task tokens: only Mayfly accepts them.
pub const TASK_TOKEN_AUDIENCE: &str = "urn:mayfly:task";

/// A task, as the subject of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity {
    /// `spiffe://<td>/task/<id>`.
    pub spiffe_id: SpiffeId,
    /// The task as stored.
    pub task: TaskRecord,
    /// The starter's attested attributes.
    pub attributes: BTreeMap<String, String>,
    /// SPIFFE IDs of its actor chain, nearest first: its creator, that creator's creator, ….
    pub actors: Vec<String>,
}

impl TaskIdentity {
    /// The identity of a stored task.
    pub fn from_record(task: TaskRecord, trust_domain: &str) -> Result<Self, AttestError> {
        let spiffe_id = task_spiffe_id(trust_domain, &task.id)?;
        let attributes =
            task.attribute_map().map_err(|e| AttestError::BadClaim(format!("stored task attributes: {e}")))?;
        let actor = task.actor_json().map_err(|e| AttestError::BadClaim(format!("stored task actor chain: {e}")))?;
        Ok(Self { spiffe_id, attributes, actors: actor_chain(&actor), task })
    }

    /// Whether a SPIFFE ID names a task (its path starts with `/task/`).
    pub fn is_task_id(spiffe_id: &str) -> bool {
        SpiffeId::parse(spiffe_id).is_ok_and(|id| id.path().starts_with("/task/"))
    }
}

/// `spiffe://<td>/task/<id>`.
pub fn task_spiffe_id(trust_domain: &str, id: &str) -> Result<SpiffeId, AttestError> {
    SpiffeId::new(trust_domain, &format!("task/{id}")).map_err(|e| AttestError::Mapping(e.to_string()))
}

/// The `sub` of every actor in an RFC 8693 `act` chain, outermost first.
pub fn actor_chain(act: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = Some(act);
    while let Some(a) = cur {
        match a.get("sub").and_then(|s| s.as_str()) {
            Some(sub) => out.push(sub.to_owned()),
            None => break,
        }
        cur = a.get("act");
    }
    out
}

/// How long an active task, as read, is reused. Ending a task writes a task revocation that
/// every token of it is checked against on each request: on this replica at once, so nothing
/// changes here; on other replicas of a shared store within their revocation catch-up
/// (`govern::revocations::EVERY`, tested to be no shorter than this), where a read per
/// request would have seen the end as soon as it committed. That is the price: on a shared
/// store, a task's end reaches another replica's task path up to this much later, as it
/// already reached every token issued under the task.
pub const ACTIVE_TASK_REUSE: Duration = Duration::from_millis(500);
/// Active tasks remembered at most.
const ACTIVE_TASKS_REMEMBERED: usize = 10_000;

/// Verifies task tokens and loads their task.
#[derive(Clone)]
pub struct TaskAttestor {
    verifier: TokenVerifier,
    store: Arc<dyn Store>,
    trust_domain: String,
    /// Active tasks as read, and when: a task's record changes only when it ends (which its
    /// revocation reports) and its expiry is computed at each use.
    active: Arc<quick_cache::sync::Cache<String, (Instant, Arc<TaskIdentity>)>>,
}

impl std::fmt::Debug for TaskAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAttestor").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl TaskAttestor {
    /// An attestor for task tokens of this server.
    pub fn new(verifier: TokenVerifier, store: Arc<dyn Store>, trust_domain: String) -> Self {
        Self { verifier, store, trust_domain, active: Arc::new(quick_cache::sync::Cache::new(ACTIVE_TASKS_REMEMBERED)) }
    }

    /// The trust domain tasks live in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The verifier of Mayfly's own access tokens.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Verifies a task token; the task may be pending or active, never ended, denied or expired.
    pub async fn attest(&self, token: &str, now: i64) -> Result<TaskIdentity, AttestError> {
        if token.len() > super::MAX_SUBJECT_TOKEN_BYTES {
            return Err(AttestError::Malformed(format!("longer than {} bytes", super::MAX_SUBJECT_TOKEN_BYTES)));
        }
        let claims = self.verifier.verify(token, Some(TASK_TOKEN_AUDIENCE), now).map_err(|e| match e {
            VerifyError::Revoked(RevocationKind::Task) => AttestError::TaskNotActive(TaskState::Ended),
            VerifyError::Expired => AttestError::Expired,
            other => AttestError::TaskToken(other),
        })?;
        let id = claims.task_id.as_deref().ok_or_else(|| AttestError::BadClaim("task_id".into()))?;
        self.live_task(id, now).await
    }

    /// A task that is pending or active now, never ended, denied or expired.
    /// Callers check the task's revocation first (a task token's or an access token's facts
    /// carry its id): an active task is reused for [`ACTIVE_TASK_REUSE`] after it is read.
    pub async fn live_task(&self, id: &str, now: i64) -> Result<TaskIdentity, AttestError> {
        if let Some((read_at, task)) = self.active.get(id)
            && read_at.elapsed() < ACTIVE_TASK_REUSE
            && task.task.state_at(now) == TaskState::Active
        {
            return Ok(TaskIdentity::clone(&task));
        }
        // Stamped before the read: a slow read must not make what it saw look newer.
        let read_at = Instant::now();
        let task = self.store.task(id).await?.ok_or_else(|| AttestError::BadClaim("task_id".into()))?;
        let stored_active = task.state == TaskState::Active;
        match task.state_at(now) {
            TaskState::Pending | TaskState::Active => {
                let identity = TaskIdentity::from_record(task, &self.trust_domain)?;
                if stored_active {
                    self.active.insert(id.to_owned(), (read_at, Arc::new(identity.clone())));
                }
                Ok(identity)
            }
            other => {
                self.active.remove(id);
                Err(AttestError::TaskNotActive(other))
            }
        }
    }
}
