//! Context-change signals: a workload moved, was compromised, changed an attribute, or
//! its task was cancelled. Signals that mean "kill" revoke at once; the others update
//! the context and re-decide every live credential of the subject with Cedar, revoking
//! what no longer passes. Signals come as Mayfly's own JSON (admin) or as Security Event
//! Tokens (RFC 8417) pushed by a configured sender (RFC 8935), verified against its JWKS.

use std::collections::BTreeMap;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::attest::WorkloadIdentity;
use crate::authorize::{ExchangeRequest, IssueRequest, PolicyEngine, Principal};
use crate::broker::{Broker, BrokerError};
use crate::ledger::RevokeError;
use crate::ledger::{AuditEvent, CredentialFilter, CredentialRecord, DbLease, DbLeaseState, IssuanceContext};
use crate::spiffe::SpiffeId;
use mayfly_proto::RevokeRequest;

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
/// How old a SET's `iat` may be.
const MAX_SET_AGE_SECS: i64 = 300;
/// How far in the future a SET's `iat` may be (clock skew).
const MAX_SET_FUTURE_SECS: i64 = 60;
/// Most live credentials one signal re-decides.
const MAX_MATCHED: i64 = 100_000;

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

    fn parse(s: &str) -> Option<Self> {
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
    fn canonical(&self) -> Self {
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
    fn names(&self, id: &str) -> bool {
        match (&self.spiffe_id, &self.spiffe_prefix) {
            (Some(wanted), _) => wanted == id,
            (_, Some(p)) => crate::ledger::revocations::under_prefix(id, p),
            _ => true,
        }
    }
}

/// Whether `attributes` hold every wanted value.
fn has_all(attributes: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
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

/// A configured SET sender, its keys loaded.
pub struct SignalSender {
    /// Name, for audit records.
    pub name: String,
    /// The `iss` of its SETs.
    pub issuer: String,
    /// The `aud` its SETs must carry.
    pub audience: String,
    /// What it may signal about (`None`: anything in the trust domain).
    pub subject_prefix: Option<String>,
    keys: JwkSet,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for SignalSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalSender").field("name", &self.name).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl SignalSender {
    /// Loads a sender's JWKS from a file; `none` and HMAC are never accepted.
    pub fn load(cfg: &crate::broker::config::SignalSenderConfig) -> Result<Self, String> {
        let keys = read_jwks(&cfg.jwks_file)?;
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            match a.as_str() {
                "RS256" => algorithms.push(Algorithm::RS256),
                "ES256" => algorithms.push(Algorithm::ES256),
                "EdDSA" => algorithms.push(Algorithm::EdDSA),
                "PS256" => algorithms.push(Algorithm::PS256),
                other => return Err(format!("signals.senders {:?}: algorithm {other:?} is not accepted", cfg.name)),
            }
        }
        let subject_prefix = cfg.subject_prefix.as_ref().map(|p| p.trim_end_matches('/').to_owned());
        if let Some(p) = &subject_prefix {
            SpiffeId::parse(p).map_err(|e| format!("signals.senders {:?}: subject_prefix: {e}", cfg.name))?;
        }
        Ok(Self {
            name: cfg.name.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            subject_prefix,
            keys,
            algorithms,
        })
    }
}

fn read_jwks(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a JWK Set: {e}", path.display()))
}

/// A verified SET's claims.
#[derive(Debug)]
pub struct VerifiedSet {
    /// The sender.
    pub sender: String,
    /// `jti`.
    pub jti: String,
    /// The signals its events mean.
    pub signals: Vec<Signal>,
}

/// Verifies a SET (RFC 8417) from one of `senders` and turns its events into signals.
pub fn verify_set(token: &str, senders: &[SignalSender], now: i64) -> Result<VerifiedSet, SignalError> {
    if token.len() > 16 * 1024 {
        return Err(SignalError::Invalid("the SET is larger than 16 KiB".into()));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| SignalError::Invalid("the body is not a compact JWS (an unsigned SET is refused)".into()))?;
    // RFC 7515 §4.1.9: the media type with or without its "application/" prefix.
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    if !matches!(typ.as_deref(), Some("secevent+jwt" | "application/secevent+jwt")) {
        return Err(SignalError::Invalid("a SET carries typ \"secevent+jwt\" (RFC 8417 §2.3)".into()));
    }
    // The issuer picks the keys; read unverified only to choose them.
    let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| SignalError::Invalid("the SET's payload is not base64url JSON".into()))?;
    let iss = unverified["iss"].as_str().ok_or_else(|| SignalError::Invalid("the SET has no iss".into()))?;
    let sender = senders.iter().find(|s| s.issuer == iss).ok_or_else(|| {
        // Unverified text: bounded before it reaches an answer or the audit trail.
        let iss: String = iss.chars().take(200).collect();
        SignalError::UnknownSender(format!("no signal sender is configured for issuer {iss:?}"))
    })?;
    if !sender.algorithms.contains(&header.alg) {
        return Err(SignalError::BadSignature(format!(
            "algorithm {:?} is not accepted from {}",
            header.alg, sender.name
        )));
    }
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => sender.keys.find(kid).into_iter().collect(),
        None => sender.keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(SignalError::BadSignature(format!("no key of {} matches the SET's kid", sender.name)));
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.validate_exp = false;
    validation.required_spec_claims = ["iss", "aud"].iter().map(|s| s.to_string()).collect();
    validation.set_issuer(&[&sender.issuer]);
    validation.set_audience(&[&sender.audience]);
    use jsonwebtoken::errors::ErrorKind;
    let mut audience_wrong = false;
    let claims = candidates.iter().find_map(|jwk| {
        let key = DecodingKey::from_jwk(jwk).ok()?;
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(d) => Some(d.claims),
            Err(e) => {
                // The signature verified with this key; only the audience is wrong.
                let kind = e.into_kind();
                audience_wrong |= matches!(kind, ErrorKind::InvalidAudience)
                    || matches!(&kind, ErrorKind::MissingRequiredClaim(c) if c == "aud");
                None
            }
        }
    });
    let Some(claims) = claims else {
        return Err(if audience_wrong {
            SignalError::WrongAudience(format!("the SET is not addressed to {}", sender.audience))
        } else {
            SignalError::BadSignature(format!("the SET's signature does not verify with {}'s keys", sender.name))
        });
    };
    let iat = claims["iat"].as_i64().ok_or_else(|| SignalError::Invalid("the SET has no iat".into()))?;
    if iat < now - MAX_SET_AGE_SECS || iat > now + MAX_SET_FUTURE_SECS {
        return Err(SignalError::Invalid(format!("the SET's iat is more than {MAX_SET_AGE_SECS} s from now")));
    }
    let jti = claims["jti"].as_str().filter(|j| !j.is_empty() && j.len() <= 256);
    let jti = jti.ok_or_else(|| SignalError::Invalid("the SET has no jti (1 to 256 characters)".into()))?.to_owned();
    let events = claims["events"]
        .as_object()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SignalError::Invalid("the SET has no events".into()))?;
    let mut signals = Vec::new();
    let mut understood = 0;
    for (event_type, payload) in events {
        if event_type == SSF_VERIFICATION {
            understood += 1;
            continue;
        }
        if !is_known_event(event_type) {
            // RFC 8417 §2.2 leaves events a receiver does not know to be ignored; a SET
            // with no event Mayfly knows is refused below, so a typo does not pass silently.
            tracing::info!(event = %event_type.chars().take(200).collect::<String>(), "SET event not acted on");
            continue;
        }
        understood += 1;
        let subject = set_subject(payload.get("subject").or(claims.get("sub_id")))?;
        if let Some(signal) = event_signal(event_type, payload, subject)? {
            signals.push(signal);
        }
    }
    if let Some(scope) = &sender.subject_prefix {
        for sig in &signals {
            let s = &sig.subject;
            let inside = |id: &str| crate::ledger::revocations::under_prefix(id.trim_end_matches('/'), scope);
            let ok = match (&s.spiffe_id, &s.spiffe_prefix) {
                (Some(id), _) | (_, Some(id)) => inside(id),
                // Attribute and task subjects can reach anything: not for a scoped sender.
                _ => false,
            };
            if !ok {
                return Err(SignalError::OutOfScope(format!("{} may signal only about {scope}", sender.name)));
            }
        }
    }
    if understood == 0 {
        let names: Vec<String> = events.keys().map(|k| k.chars().take(200).collect()).collect();
        return Err(SignalError::Invalid(format!("no event Mayfly knows in this SET: unknown event type {names:?}")));
    }
    Ok(VerifiedSet { sender: sender.name.clone(), jti, signals })
}

/// An RFC 9493 subject identifier: `uri` (a SPIFFE ID), or Mayfly's `spiffe_prefix`,
/// `task` and `attributes` forms.
fn set_subject(v: Option<&Value>) -> Result<SignalSubject, SignalError> {
    let v = v.ok_or_else(|| SignalError::Invalid("the event names no subject (sub_id)".into()))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let subject = match v.get("format").and_then(Value::as_str) {
        Some("uri") => SignalSubject { spiffe_id: text("uri"), ..Default::default() },
        Some("spiffe_prefix") => SignalSubject { spiffe_prefix: text("prefix"), ..Default::default() },
        Some("mayfly_task") => SignalSubject { task: text("id"), ..Default::default() },
        Some("mayfly_attributes") => SignalSubject {
            attributes: v.get("attributes").and_then(|a| serde_json::from_value(a.clone()).ok()),
            ..Default::default()
        },
        other => {
            return Err(SignalError::Invalid(format!(
                "subject format {other:?}: use uri (a SPIFFE ID), spiffe_prefix, mayfly_task or mayfly_attributes"
            )));
        }
    };
    Ok(subject)
}

fn is_known_event(t: &str) -> bool {
    matches!(
        t,
        CAEP_SESSION_REVOKED
            | CAEP_CREDENTIAL_CHANGE
            | CAEP_DEVICE_COMPLIANCE
            | CAEP_ASSURANCE_LEVEL
            | CAEP_TOKEN_CLAIMS
    ) || t.strip_prefix(MAYFLY_EVENT_PREFIX).is_some_and(|k| SignalKind::parse(k).is_some())
}

/// The signal an event means; `None` for an event that asks nothing of Mayfly (a
/// credential change that is not a revocation, a device becoming compliant).
fn event_signal(event_type: &str, payload: &Value, subject: SignalSubject) -> Result<Option<Signal>, SignalError> {
    let reason = payload.get("reason_admin").map(|r| r.to_string());
    let signal = |kind, attributes| Some(Signal { kind, subject: subject.clone(), attributes, reason: reason.clone() });
    let str_of = |k: &str| payload.get(k).and_then(Value::as_str);
    Ok(match event_type {
        CAEP_SESSION_REVOKED => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
        CAEP_CREDENTIAL_CHANGE => match str_of("change_type") {
            Some("revoke" | "delete") => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
            Some("create" | "update") => None,
            _ => return Err(SignalError::Invalid("credential-change needs change_type".into())),
        },
        CAEP_DEVICE_COMPLIANCE => match str_of("current_status") {
            Some("not-compliant") => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
            Some("compliant") => None,
            _ => return Err(SignalError::Invalid("device-compliance-change needs current_status".into())),
        },
        CAEP_ASSURANCE_LEVEL => {
            let level = str_of("current_level")
                .ok_or_else(|| SignalError::Invalid("assurance-level-change needs current_level".into()))?;
            signal(SignalKind::AttributeChanged, BTreeMap::from([("assurance_level".into(), level.into())]))
        }
        CAEP_TOKEN_CLAIMS => {
            let claims = payload
                .get("claims")
                .and_then(Value::as_object)
                .ok_or_else(|| SignalError::Invalid("token-claims-change needs claims".into()))?;
            // Policy sees attributes as strings: other JSON values keep their JSON text.
            let attributes = claims
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                .collect();
            signal(SignalKind::AttributeChanged, attributes)
        }
        t if t.starts_with(MAYFLY_EVENT_PREFIX) => {
            let kind = SignalKind::parse(&t[MAYFLY_EVENT_PREFIX.len()..])
                .ok_or_else(|| SignalError::Invalid(format!("unknown event type {t:?}")))?;
            let attributes = payload
                .get("attributes")
                .map(|a| serde_json::from_value(a.clone()))
                .transpose()
                .map_err(|_| SignalError::Invalid("attributes is an object of strings".into()))?
                .unwrap_or_default();
            signal(kind, attributes)
        }
        other => return Err(SignalError::Invalid(format!("unknown event type {other:?}"))),
    })
}

/// Whether a recorded context has every attribute of `wanted`.
fn context_has(context: &Option<IssuanceContext>, wanted: &BTreeMap<String, String>) -> bool {
    context.as_ref().is_some_and(|c| has_all(&c.attributes, wanted))
}

fn parse_context(raw: Option<&str>) -> Option<IssuanceContext> {
    raw.and_then(|c| serde_json::from_str(c).ok())
}

impl Broker {
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
                    .map_err(|_| BrokerError::Unavailable("re-deciding credentials failed".into()))?
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
                kind: &db.config.kind,
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
