//! What a signal is: its kinds, its subject, what it did, why it was refused.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::broker::BrokerError;
use crate::spiffe::SpiffeId;

/// The CAEP event types Mayfly acts on (OpenID CAEP 1.0).
pub const CAEP_SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP credential change (`change_type` revoke or delete kills).
pub const CAEP_CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// CAEP device compliance change (`current_status` not-compliant kills).
pub const CAEP_DEVICE_COMPLIANCE: &str = "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change";
/// CAEP assurance level change (re-decides with attribute `assurance_level`).
pub const CAEP_ASSURANCE_LEVEL: &str = "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change";
/// CAEP token claims change (re-decides with the changed claims as attributes).
pub const CAEP_TOKEN_CLAIMS: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
/// SSF stream verification (answered, nothing to do).
pub const SSF_VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// Mayfly's own event types, usable in a SET as in the JSON form.
pub const MAYFLY_EVENT_PREFIX: &str = "urn:mayfly:signal:";

/// What a signal says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// The workload runs somewhere else now (namespace, node, …): re-decide with the new attributes.
    WorkloadMoved,
    /// An attribute changed: re-decide.
    AttributeChanged,
    /// The workload is compromised, its session revoked, its pod deleted: revoke everything at once.
    WorkloadCompromised,
    /// The task was cancelled: end it (and everything under it).
    TaskCancelled,
}

impl SignalKind {
    /// The name in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::WorkloadMoved => "workload_moved",
            SignalKind::AttributeChanged => "attribute_changed",
            SignalKind::WorkloadCompromised => "workload_compromised",
            SignalKind::TaskCancelled => "task_cancelled",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "workload_moved" | "workload-moved" => SignalKind::WorkloadMoved,
            "attribute_changed" | "attribute-changed" => SignalKind::AttributeChanged,
            "workload_compromised" | "workload-compromised" => SignalKind::WorkloadCompromised,
            "task_cancelled" | "task-cancelled" => SignalKind::TaskCancelled,
            _ => return None,
        })
    }
}

/// Whom a signal is about: exactly one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalSubject {
    /// A SPIFFE ID.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// A SPIFFE ID prefix (the ID and everything below it).
    #[serde(default)]
    pub spiffe_prefix: Option<String>,
    /// A task id.
    #[serde(default)]
    pub task: Option<String>,
    /// Attested attributes every matching credential was issued with (e.g. `pod_uid`).
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// A signal, however it arrived.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// What happened.
    pub kind: SignalKind,
    /// Whom it concerns.
    pub subject: SignalSubject,
    /// The context as it is now (for moves and attribute changes).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Signal {
    /// Checks a signal without acting on it: one subject, well-formed, and what its kind needs.
    pub fn validate(&self) -> Result<(), SignalError> {
        let s = &self.subject;
        let named = [s.spiffe_id.is_some(), s.spiffe_prefix.is_some(), s.task.is_some(), s.attributes.is_some()];
        if named.iter().filter(|n| **n).count() != 1 {
            return Err(SignalError::Invalid(
                "a signal names exactly one subject: spiffe_id, spiffe_prefix, task or attributes".into(),
            ));
        }
        if s.attributes.as_ref().is_some_and(BTreeMap::is_empty) {
            return Err(SignalError::Invalid("subject.attributes names no attribute".into()));
        }
        if let Some(id) = &s.spiffe_id {
            SpiffeId::parse(id).map_err(|e| SignalError::Invalid(format!("subject.spiffe_id: {e}")))?;
        }
        if let Some(p) = &s.spiffe_prefix {
            SpiffeId::parse(p.trim_end_matches('/')).map_err(|e| {
                SignalError::Invalid(format!("subject.spiffe_prefix (a SPIFFE ID or trust domain): {e}"))
            })?;
        }
        if s.task.as_deref().is_some_and(|t| t.is_empty() || t.len() > 128) {
            return Err(SignalError::Invalid("subject.task is a task id".into()));
        }
        match self.kind {
            SignalKind::WorkloadMoved | SignalKind::AttributeChanged if self.attributes.is_empty() => {
                Err(SignalError::Invalid(format!("{} needs the new attributes", self.kind.as_str())))
            }
            SignalKind::WorkloadMoved | SignalKind::AttributeChanged if s.task.is_some() => Err(SignalError::Invalid(
                "a task can be cancelled or killed; its starter's context changes through the starter".into(),
            )),
            SignalKind::TaskCancelled if s.task.is_none() => {
                Err(SignalError::Invalid("task_cancelled names subject.task".into()))
            }
            _ => Ok(()),
        }
    }
}

impl SignalSubject {
    /// The same subject with its SPIFFE IDs in canonical form, as the ledger stores them.
    pub(super) fn canonical(&self) -> Self {
        let canon = |v: &Option<String>| {
            v.as_ref().map(|id| SpiffeId::parse(id).map(|p| p.to_string()).unwrap_or_else(|_| id.clone()))
        };
        Self {
            spiffe_id: canon(&self.spiffe_id),
            spiffe_prefix: canon(&self.spiffe_prefix.as_ref().map(|p| p.trim_end_matches('/').to_owned())),
            task: self.task.clone(),
            attributes: self.attributes.clone(),
        }
    }

    /// Whether its SPIFFE ID or prefix names `id`; true when it names neither.
    pub(super) fn names(&self, id: &str) -> bool {
        match (&self.spiffe_id, &self.spiffe_prefix) {
            (Some(wanted), _) => wanted == id,
            (_, Some(p)) => crate::ledger::revocations::under_prefix(id, p),
            _ => true,
        }
    }
}

/// Whether `attributes` hold every wanted value.
pub(super) fn has_all(attributes: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| attributes.get(k) == Some(v))
}

/// What a signal did.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct SignalOutcome {
    /// The signal's kind.
    pub kind: String,
    /// Live credentials (tokens and database leases) it concerned.
    pub matched: usize,
    /// Of those, revoked.
    pub revoked: usize,
    /// Of those, kept: they still pass policy in the new context.
    pub kept: usize,
    /// Tasks ended.
    pub tasks_ended: usize,
    /// Database leases whose revocation could not start now (the reaper and later
    /// signals retry); not counted in `revoked`.
    pub failed: usize,
}

/// Why a signal was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Malformed, names nothing or several things, or an event Mayfly does not know.
    #[error("{0}")]
    Invalid(String),
    /// The SET's issuer is not a configured sender.
    #[error("{0}")]
    UnknownSender(String),
    /// Signature, algorithm or key.
    #[error("{0}")]
    BadSignature(String),
    /// The SET is not addressed to this receiver.
    #[error("{0}")]
    WrongAudience(String),
    /// The SET was delivered before.
    #[error("{0}")]
    Replayed(String),
    /// The sender may not signal about this subject.
    #[error("{0}")]
    OutOfScope(String),
    /// Applying it failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl SignalError {
    /// The RFC 8935 §2.4 error code.
    pub fn set_error_code(&self) -> &'static str {
        match self {
            SignalError::Invalid(_) | SignalError::Replayed(_) => "invalid_request",
            SignalError::UnknownSender(_) => "invalid_issuer",
            SignalError::BadSignature(_) => "invalid_key",
            SignalError::WrongAudience(_) => "invalid_audience",
            SignalError::OutOfScope(_) => "access_denied",
            SignalError::Broker(_) => "invalid_request",
        }
    }
}
