//! The flow of one request: attest → authorize → issue → record, then deliver.
//! This module knows nothing of HTTP; `deliver::http` maps its errors to problems.

pub mod admin_tokens;
pub mod certificates;
pub mod clouds;
pub mod config;
pub mod containment;
pub mod db_credentials;
pub mod failures;
pub mod proxy;
pub mod queries;
pub mod refusals;
pub mod signals;
pub mod svids;
pub mod tasks;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

pub use crate::broker::refusals::{Conflict, Forbidden, InvalidRequest, InvalidScope, InvalidTarget, Unavailable};

use crate::attest::task::{TaskAttestor, TaskIdentity};
use crate::attest::{AttestError, Attestors, WorkloadIdentity};
use crate::authorize::{Decision, ExchangeRequest, PolicyEngine, Principal};
use crate::broker::config::AudienceConfig;
use crate::broker::config::TasksConfig;
use crate::broker::config::TokensConfig;
use crate::issue::{AccessTokenRequest, IssueError, IssuedToken, JwtIssuer};
use crate::keys::Kek;
use crate::ledger::Revocations;
use crate::ledger::{AuditEvent, CredentialRecord, Ledger, LedgerError, TaskState};
use mayfly_verify::Confirmation;

/// Longest scope string accepted.
const MAX_SCOPE_BYTES: usize = 2048;
/// Most scopes in one request.
const MAX_SCOPES: usize = 64;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The evidence did not prove an identity.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// Policy denied the request.
    #[error("{}", .0.reason())]
    Denied(Decision),
    /// The audience or resource is missing, repeated or not acceptable.
    #[error(transparent)]
    InvalidTarget(#[from] InvalidTarget),
    /// A scope is malformed or not offered for this audience.
    #[error(transparent)]
    InvalidScope(#[from] InvalidScope),
    /// The request is malformed in another way.
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    /// The server is too busy to serve this now; retrying later can succeed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The task is waiting for approval; nothing can be issued under it yet.
    #[error("task {task} is waiting for approval; nothing can be issued under it yet")]
    TaskPending {
        /// The task's id.
        task: String,
    },
    /// The caller may not do this to that object (not policy: ownership or a rule of tasks).
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// No such object.
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// The object is not in a state that allows this.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The task was just ended because its starter's evidence, identity or policy no
    /// longer holds (re-attestation).
    #[error("task {task} ended: {why}; everything issued under it is revoked")]
    TaskEnded {
        /// The task.
        task: String,
        /// What no longer holds.
        why: String,
    },
    /// Minting failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The record could not be made durable, so nothing was delivered.
    #[error(transparent)]
    Ledger(LedgerError),
    /// A database refused or could not be reached.
    #[error(transparent)]
    Database(#[from] crate::issue::db::DbError),
    /// The DPoP proof was used before (or the replay cache is full).
    #[error(transparent)]
    Dpop(#[from] mayfly_verify::DpopError),
    /// A revocation in force (a block) covers what would be issued.
    #[error(transparent)]
    Blocked(#[from] crate::broker::containment::RevokeBlocked),
    /// A cloud token would break the cloud's rules, or could not be signed.
    #[error(transparent)]
    Cloud(#[from] crate::issue::cloud::CloudTokenError),
    /// AWS STS refused or could not be reached.
    #[error(transparent)]
    Sts(#[from] crate::issue::cloud::aws_sts::StsError),
    /// The caller sent more requests to a proxy upstream this minute than it allows.
    #[error("more than {per_minute} requests this minute to upstream {upstream:?}; retry in the next minute")]
    RateLimited {
        /// The upstream.
        upstream: String,
        /// Its limit per caller and minute.
        per_minute: u32,
    },
    /// The upstream's own token endpoint refused or could not be reached.
    #[error("the credential for the upstream could not be fetched: {0}")]
    UpstreamCredential(String),
}

impl From<LedgerError> for BrokerError {
    /// A guarded write that lost a race is a conflict the caller can act on, not an outage.
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Changed(why) => BrokerError::Conflict(Conflict::Changed { why }),
            other => BrokerError::Ledger(other),
        }
    }
}

/// The object a request named that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// A task, by id.
    #[error("no task has id {0:?}")]
    Task(String),
    /// A database lease, by id.
    #[error("no lease has id {0:?}")]
    Lease(String),
    /// A registration entry, by id.
    #[error("no registration entry has id {0:?}")]
    Entry(String),
    /// A configured database, by name.
    #[error("no database is named {0:?}")]
    Database(String),
    /// A configured cloud profile, by name.
    #[error("no cloud profile is named {0:?}")]
    Cloud(String),
    /// A proxy upstream, by name.
    #[error("no proxy upstream is named {0:?}")]
    Upstream(String),
    /// A role of a configured database.
    #[error("database {database:?} has no role {role:?}")]
    Role {
        /// The database's name.
        database: String,
        /// The role asked for.
        role: String,
    },
}

/// A token-exchange request after parsing.
#[derive(Clone)]
pub struct ExchangeParams {
    /// RFC 8693 `subject_token_type`.
    pub subject_token_type: String,
    /// The evidence. Secret.
    pub subject_token: String,
    /// The audience (or resource).
    pub audience: String,
    /// Space-separated scopes, as sent.
    pub scope: Option<String>,
    /// Requested lifetime in seconds.
    pub requested_lifetime: Option<u64>,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// What the token is bound to: the DPoP key (proof already checked) and/or the TLS client certificate.
    pub confirmation: Option<Confirmation>,
    /// The DPoP proof, checked but not spent: its `jti` is spent once the evidence attested
    /// and policy allowed the request, so that callers who prove nothing cannot fill the
    /// replay cache.
    pub dpop_proof: Option<mayfly_verify::CheckedProof>,
    /// Limited use: how many verifications the token allows.
    pub max_uses: Option<u32>,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for ExchangeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeParams")
            .field("subject_token_type", &self.subject_token_type)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("requested_lifetime", &self.requested_lifetime)
            .field("source_ip", &self.source_ip)
            .field("confirmation", &self.confirmation)
            .field("dpop_proof", &self.dpop_proof)
            .field("max_uses", &self.max_uses)
            .finish_non_exhaustive()
    }
}

/// Most uses a limited-use token may allow.
pub const MAX_USES_LIMIT: u32 = 10_000;

/// What the ledger records about a minted credential, beside the token itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordFacts<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    pub audience: &'a str,
    pub task_id: Option<&'a str>,
    pub client_id: &'a str,
    pub confirmation: Option<&'a Confirmation>,
    pub max_uses: Option<u32>,
    /// The attested context, as [`Caller::issuance_context`] gives it.
    pub context: Option<&'a str>,
}

/// Who proved themselves on a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A workload, by platform evidence or a join token.
    Workload(WorkloadIdentity),
    /// A task, by its task token.
    Task(Box<TaskIdentity>),
}

impl Caller {
    /// What a workload proved, kept with what it is issued (JSON); `None` for a task,
    /// whose own record holds its starter's attributes.
    pub fn issuance_context(&self, source_ip: std::net::IpAddr) -> Option<String> {
        match self {
            Caller::Workload(w) => crate::ledger::IssuanceContext::json(&w.attestor, &w.attributes, source_ip),
            Caller::Task(_) => None,
        }
    }

    /// As policy sees it.
    pub fn principal(&self) -> Principal<'_> {
        match self {
            Caller::Workload(w) => Principal::Workload(w),
            Caller::Task(t) => Principal::Task(t),
        }
    }

    /// Its SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        self.spiffe().to_string()
    }

    /// Its SPIFFE ID, borrowed.
    pub fn spiffe(&self) -> &crate::spiffe::SpiffeId {
        match self {
            Caller::Workload(w) => &w.spiffe_id,
            Caller::Task(t) => &t.spiffe_id,
        }
    }

    /// Which attestor proved it.
    pub fn attestor(&self) -> &str {
        match self {
            Caller::Workload(w) => &w.attestor,
            Caller::Task(_) => "task",
        }
    }
}

/// The parts the broker is built from.
pub struct BrokerParts {
    /// DPoP proofs at the token endpoint: a proof's `jti` is spent once its request attested.
    pub dpop: Arc<mayfly_verify::DpopVerifier>,
    /// Platform-evidence and join-token attestors.
    pub attestors: Attestors,
    /// Verifies task tokens.
    pub task_attestor: TaskAttestor,
    /// Cedar.
    pub policies: Arc<PolicyEngine>,
    /// Mints access tokens.
    pub issuer: JwtIssuer,
    /// Durable records.
    pub ledger: Ledger,
    /// Revocations in force (tasks revoke what was issued under them).
    pub revocations: Arc<Revocations>,
    /// Fingerprints credentials.
    pub kek: Arc<Kek>,
    /// Token lifetimes.
    pub tokens: TokensConfig,
    /// Task lifetimes, nesting and approval.
    pub tasks: TasksConfig,
    /// Per-audience settings.
    pub audiences: Vec<AudienceConfig>,
    /// Databases for dynamic credentials.
    pub databases: Arc<crate::issue::db::Databases>,
    /// The SVID CA and JWT-SVID key.
    pub svids: Arc<crate::issue::svid::SvidAuthorities>,
    /// Workload API registration entries.
    pub entries: Arc<crate::attest::entries::Entries>,
    /// What signals said about workloads' contexts.
    pub contexts: Arc<crate::attest::contexts::SubjectContexts>,
    /// Workload API settings.
    pub workload_api: crate::broker::config::WorkloadApiConfig,
    /// Evidence older than this is refused (`attest.max_evidence_age`).
    pub max_evidence_age_secs: i64,
    /// Cloud profiles.
    pub clouds: crate::issue::cloud::CloudProfiles,
    /// The credential-injecting proxy's upstreams, their secrets opened.
    pub proxy: crate::broker::proxy::ProxyUpstreams,
}

/// The broker: the parts of the flow, wired together.
pub struct Broker {
    // Private: other layers ask through methods; `broker/*` sees them as its own.
    dpop: Arc<mayfly_verify::DpopVerifier>,
    max_evidence_age_secs: i64,
    attestors: Attestors,
    task_attestor: TaskAttestor,
    policies: Arc<PolicyEngine>,
    issuer: JwtIssuer,
    ledger: Ledger,
    revocations: Arc<Revocations>,
    kek: Arc<Kek>,
    tokens: TokensConfig,
    tasks: TasksConfig,
    audiences: HashMap<String, AudienceConfig>,
    /// Refusals anyone can provoke, counted until the next summary.
    failures: crate::broker::failures::FailureTally,
    databases: Arc<crate::issue::db::Databases>,
    svids: Arc<crate::issue::svid::SvidAuthorities>,
    entries: Arc<crate::attest::entries::Entries>,
    contexts: Arc<crate::attest::contexts::SubjectContexts>,
    unix: Arc<crate::attest::unix::UnixAttestor>,
    attestations: Arc<tokio::sync::Semaphore>,
    workload_api: crate::broker::config::WorkloadApiConfig,
    clouds: crate::issue::cloud::CloudProfiles,
    proxy: crate::broker::proxy::ProxyUpstreams,
    /// Calls AWS STS for `aws` cloud profiles (`None` if the HTTP client could not be built).
    sts: Option<crate::issue::cloud::aws_sts::StsClient>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Rotates the signing key of `profile` in `keys`: the new key is sealed under `kek`
    /// and stored before it signs; the old one stays published for `publish_for_secs`.
    pub async fn rotate_signing_key(
        &self,
        keys: &crate::keys::KeyRing,
        kek: &crate::keys::Kek,
        profile: &str,
        publish_for_secs: i64,
    ) -> Result<mayfly_proto::SigningKeyInfo, crate::keys::KeyRingError> {
        keys.rotate(self.ledger.store().as_ref(), kek, profile, publish_for_secs).await
    }

    /// Wires the flow together.
    pub fn new(parts: BrokerParts) -> Self {
        let audiences = parts.audiences.iter().map(|a| (a.name.clone(), a.clone())).collect();
        Self {
            dpop: parts.dpop,
            max_evidence_age_secs: parts.max_evidence_age_secs,
            attestors: parts.attestors,
            task_attestor: parts.task_attestor,
            policies: parts.policies,
            issuer: parts.issuer,
            ledger: parts.ledger,
            revocations: parts.revocations,
            kek: parts.kek,
            tokens: parts.tokens,
            tasks: parts.tasks,
            audiences,
            failures: Default::default(),
            databases: parts.databases,
            svids: parts.svids,
            entries: parts.entries,
            contexts: parts.contexts,
            unix: Arc::new(crate::attest::unix::UnixAttestor::new(parts.workload_api.max_exe_bytes)),
            attestations: Arc::new(tokio::sync::Semaphore::new(crate::broker::svids::ATTESTATIONS_AT_ONCE)),
            workload_api: parts.workload_api,
            clouds: parts.clouds,
            proxy: parts.proxy,
            sts: crate::issue::cloud::aws_sts::StsClient::new()
                .inspect_err(|e| tracing::error!(error = %e, "no HTTP client for AWS STS"))
                .ok(),
        }
    }

    /// The attestors (join tokens are created through them).
    pub fn attestors(&self) -> &Attestors {
        &self.attestors
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The revocation index every issuance and verification consults.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The policy engine.
    pub fn policies(&self) -> &Arc<PolicyEngine> {
        &self.policies
    }

    /// RFC 8693 token exchange: platform evidence (or a task token) in, short-lived
    /// access token out. The token is recorded durably before this returns.
    pub async fn exchange(&self, p: ExchangeParams) -> Result<IssuedToken, BrokerError> {
        let (p, scopes) = self.exchange_request(p)?;
        let now = crate::clock::now_unix();
        let caller = self.attest(&p.subject_token_type, &p.subject_token, p.source_ip, now).await?;
        self.exchange_as(&caller, p, scopes, now).await
    }

    /// The exchange for a caller already attested (by another use case on the same
    /// request): the same policy, narrowing, record and revocation, without proving it twice.
    pub(crate) async fn exchange_for(&self, caller: &Caller, p: ExchangeParams) -> Result<IssuedToken, BrokerError> {
        let (p, scopes) = self.exchange_request(p)?;
        self.exchange_as(caller, p, scopes, crate::clock::now_unix()).await
    }

    /// What an exchange checks before attesting: scopes, lifetime, uses.
    fn exchange_request(&self, p: ExchangeParams) -> Result<(ExchangeParams, Vec<String>), BrokerError> {
        let scopes = parse_scopes(p.scope.as_deref())?;
        if p.requested_lifetime == Some(0) {
            // Refused before attestation: a join token must not be spent on a request that cannot succeed.
            return Err(InvalidRequest::ZeroLifetime.into());
        }
        if p.max_uses.is_some_and(|n| n == 0 || n > MAX_USES_LIMIT) {
            return Err(InvalidRequest::MaxUsesOutOfRange { max: MAX_USES_LIMIT }.into());
        }
        // An audience configured as limited-use caps what the request asks for.
        let max_uses = match (p.max_uses, self.audiences.get(&p.audience).and_then(|a| a.max_uses)) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        };
        Ok((ExchangeParams { max_uses, ..p }, scopes))
    }

    async fn exchange_as(
        &self,
        caller: &Caller,
        p: ExchangeParams,
        mut scopes: Vec<String>,
        now: i64,
    ) -> Result<IssuedToken, BrokerError> {
        if let Caller::Task(t) = caller {
            scopes = narrow_to_task(t, &p.audience, p.scope.is_some(), scopes)?;
            if p.scope.is_none()
                && let Some(offered) = self.audiences.get(&p.audience).and_then(|a| a.scopes.as_ref())
            {
                scopes.retain(|s| offered.contains(s));
            }
        }

        // A token a cloud would take is issued only through its cloud profile (policy action
        // `cloud`, the cloud's subject rules, task limits), never by the ordinary exchange.
        if self.clouds.is_cloud_audience(&p.audience) {
            return Err(InvalidTarget::CloudAudience { audience: p.audience.clone() }.into());
        }
        // Checked after attestation, so an unauthenticated caller learns nothing of the configuration.
        let mut ttl = self.lifetime(&p.audience, p.requested_lifetime, &scopes)?;
        if let Caller::Task(t) = caller {
            // Nothing issued under a task outlives it.
            ttl = ttl.min(t.task.expires_at - now).max(1);
        }
        let decision = self.policies.decide_exchange(&ExchangeRequest {
            principal: caller.principal(),
            audience: &p.audience,
            scopes: &scopes,
            ttl_seconds: ttl,
            source_ip: p.source_ip,
            now,
            dpop: p.confirmation.as_ref().is_some_and(|c| c.jkt.is_some()),
            mtls: p.confirmation.as_ref().is_some_and(|c| c.x5t_s256.is_some()),
            max_uses: p.max_uses.map(i64::from).unwrap_or(0),
        });
        let detail = || json!({"action": "exchange", "audience": p.audience, "scopes": scopes, "ttl_seconds": ttl});
        self.check_decision(caller, &decision, detail, p.source_ip).await?;
        // Spent once the caller has attested and policy allowed it: a caller who proves
        // nothing, or may get nothing, cannot fill the replay cache.
        if let Some(proof) = p.dpop_proof.clone() {
            self.dpop.spend(proof, now)?;
        }

        let (subject, act, task_id) = match &caller {
            Caller::Workload(w) => (w.spiffe_id.to_string(), None, None),
            Caller::Task(t) => {
                let (sub, act) = crate::broker::tasks::delegated_subject(t)?;
                (sub, Some(act), Some(t.task.id.as_str()))
            }
        };
        let client_id = caller.spiffe_id();
        // The facts a resource server can check its caller against (`ctx`).
        let bound = match &caller {
            Caller::Workload(w) => Some(self.bound_context(&w.attributes)),
            Caller::Task(_) => None,
        };
        let issued = self.issuer.issue(&AccessTokenRequest {
            subject: &subject,
            audience: &p.audience,
            client_id: &client_id,
            scopes: &scopes,
            ttl_seconds: ttl,
            now,
            task_id,
            act: act.as_ref(),
            cnf: p.confirmation.as_ref(),
            max_uses: p.max_uses,
            context: bound.as_ref(),
        })?;
        let detail = json!({
            "audience": p.audience, "attestor": caller.attestor(), "policies": decision.policies,
            "source_ip": p.source_ip.to_string(), "act": act, "cnf": p.confirmation, "max_uses": p.max_uses,
        });
        let context = caller.issuance_context(p.source_ip);
        let facts = RecordFacts {
            kind: "jwt",
            subject: &subject,
            audience: &p.audience,
            task_id,
            client_id: &client_id,
            confirmation: p.confirmation.as_ref(),
            max_uses: p.max_uses,
            context: context.as_deref(),
        };
        let (record, event) = self.issued_record(&issued, &facts, detail);
        self.record_issued("jwt", vec![record], vec![event]).await?;
        Ok(issued)
    }

    /// Proves who the caller is: a task token, or a workload's platform evidence or join
    /// token; then admits it: evidence minted before a revocation of its subject (or
    /// during a block) is refused here, for every issuance path. Failures are audited
    /// (counted per source and reason: anyone can send bad evidence).
    pub async fn attest(
        &self,
        token_type: &str,
        token: &str,
        source_ip: IpAddr,
        now: i64,
    ) -> Result<Caller, BrokerError> {
        let result = if token_type == mayfly_proto::TOKEN_TYPE_TASK {
            self.task_attestor.attest(token, now).await.map(|t| (Caller::Task(Box::new(t)), now))
        } else {
            self.attestors.attest(token_type, token).await.map(|(w, minted_at)| (Caller::Workload(w), minted_at))
        };
        let e = match result.and_then(|(caller, minted_at)| self.admit(&caller, minted_at).map(|()| caller)) {
            Ok(caller) => return Ok(caller),
            Err(e) => e,
        };
        Err(self.attestation_refused(e, source_ip))
    }

    /// Counts and audits (summarised per source and reason) evidence that proved nothing.
    pub(crate) fn attestation_refused(&self, e: AttestError, source_ip: IpAddr) -> BrokerError {
        metrics::counter!("mayfly_requests_denied_total", "reason" => "attestation").increment(1);
        self.audit_failure(source_ip, e.code(), "attest.failed");
        e.into()
    }

    /// Turns a policy decision into a result, auditing a denial.
    pub(crate) async fn check_decision(
        &self,
        caller: &Caller,
        decision: &Decision,
        detail: impl FnOnce() -> serde_json::Value,
        source_ip: IpAddr,
    ) -> Result<(), BrokerError> {
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, "policy evaluation errors (those policies were skipped)");
        }
        if decision.allowed {
            return Ok(());
        }
        // The denial's detail is built only for a denial.
        Err(self.deny(caller, decision, detail(), source_ip).await)
    }

    /// Audits a policy denial and returns the error that reports it.
    pub(crate) async fn deny(
        &self,
        caller: &Caller,
        decision: &Decision,
        mut detail: serde_json::Value,
        source_ip: IpAddr,
    ) -> BrokerError {
        if let Some(d) = detail.as_object_mut() {
            d.insert("attestor".into(), caller.attestor().into());
            d.insert("policies".into(), json!(decision.policies));
            d.insert("reason".into(), decision.reason().into());
            d.insert("source_ip".into(), source_ip.to_string().into());
        }
        metrics::counter!("mayfly_requests_denied_total", "reason" => "policy").increment(1);
        let subject = caller.spiffe_id();
        if self.failures.detailed_denial(&subject) {
            self.audit_best_effort(AuditEvent::new("policy.denied", Some(subject), detail)).await;
        } else {
            self.audit_failure(source_ip, &decision.reason(), "policy.denied");
        }
        BrokerError::Denied(decision.clone())
    }

    /// Makes minted credentials' records durable (before anything is delivered) and counts them.
    pub(crate) async fn record_issued(
        &self,
        kind: &'static str,
        records: Vec<CredentialRecord>,
        events: Vec<AuditEvent>,
    ) -> Result<(), BrokerError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len() as u64;
        self.check_not_born_revoked(&records)?;
        self.ledger.record(records, events).await?;
        metrics::counter!("mayfly_credentials_issued_total", "kind" => kind).increment(n);
        Ok(())
    }

    /// The ledger record and audit event of a freshly minted token.
    pub(crate) fn issued_record(
        &self,
        issued: &IssuedToken,
        f: &RecordFacts<'_>,
        detail: serde_json::Value,
    ) -> (CredentialRecord, AuditEvent) {
        self.minted_record(issued.token.as_bytes(), issued, f, detail)
    }

    /// The ledger record and audit event of a minted credential; `material` is
    /// fingerprinted (keyed), never stored.
    pub(crate) fn minted_record(
        &self,
        material: &[u8],
        issued: &IssuedToken,
        f: &RecordFacts<'_>,
        mut detail: serde_json::Value,
    ) -> (CredentialRecord, AuditEvent) {
        let fingerprint = self.kek.fingerprint(material);
        if let Some(d) = detail.as_object_mut() {
            d.insert("jti".into(), issued.jti.clone().into());
            d.insert("fingerprint".into(), fingerprint.clone().into());
            d.insert("kind".into(), f.kind.into());
            d.insert("scope".into(), issued.scope.clone().into());
            d.insert("expires_at".into(), issued.expires_at.into());
            d.insert("kid".into(), issued.kid.clone().into());
            if let Some(t) = f.task_id {
                d.insert("task_id".into(), t.into());
            }
        }
        let record = CredentialRecord {
            jti: issued.jti.clone(),
            kind: f.kind.into(),
            subject: f.subject.into(),
            audience: f.audience.into(),
            scope: issued.scope.clone(),
            task_id: f.task_id.map(str::to_owned),
            client_id: f.client_id.into(),
            issued_at: issued.issued_at,
            expires_at: issued.expires_at,
            key_id: issued.kid.clone(),
            binding: f.confirmation.and_then(|c| serde_json::to_string(c).ok()),
            fingerprint,
            max_uses: f.max_uses.map(i64::from),
            context: f.context.map(str::to_owned),
        };
        let event_kind = match f.kind {
            "task" => "task_token.issued",
            "x509-svid" | "jwt-svid" => "svid.issued",
            "x509" => "certificate.issued",
            _ => "token.issued",
        };
        (record, AuditEvent::new(event_kind, Some(f.subject.to_owned()), detail))
    }

    /// The attributes a credential is bound to (`tokens.bound_context`), of those given.
    pub(crate) fn bound_context(
        &self,
        attributes: &std::collections::BTreeMap<String, String>,
    ) -> std::collections::BTreeMap<String, String> {
        self.tokens.bound_context.iter().filter_map(|k| attributes.get(k).map(|v| (k.clone(), v.clone()))).collect()
    }

    /// Records an audit event; a failure is logged, not returned, because the
    /// request is already being refused for another reason.
    pub async fn audit_best_effort(&self, event: AuditEvent) {
        if let Err(e) = self.ledger.audit(event).await {
            tracing::error!(error = %e, "audit event could not be recorded");
        }
    }

    /// Lifetime = min(requested or default, audience maximum, global maximum).
    pub(crate) fn lifetime(
        &self,
        audience: &str,
        requested: Option<u64>,
        scopes: &[String],
    ) -> Result<i64, BrokerError> {
        let aud = self.audiences.get(audience);
        if let Some(allowed) = aud.and_then(|a| a.scopes.as_ref())
            && let Some(bad) = scopes.iter().find(|s| !allowed.contains(s))
        {
            return Err(InvalidScope::NotOffered { scope: bad.clone(), audience: audience.to_owned() }.into());
        }
        let max = aud.and_then(|a| a.max_ttl).unwrap_or(self.tokens.max_ttl).min(self.tokens.max_ttl).as_secs();
        let default = aud.and_then(|a| a.default_ttl).unwrap_or(self.tokens.default_ttl).as_secs().min(max);
        let ttl = match requested {
            Some(0) => {
                return Err(InvalidRequest::ZeroLifetime.into());
            }
            Some(r) => r.min(max),
            None => default,
        };
        Ok(ttl as i64)
    }
}

/// The scopes a task's credential gets: what was asked (each must be among the task's),
/// or, when nothing was asked, all of the task's scopes. The audience must be one the task may use.
fn narrow_to_task(
    t: &TaskIdentity,
    audience: &str,
    asked: bool,
    scopes: Vec<String>,
) -> Result<Vec<String>, BrokerError> {
    if t.task.state == TaskState::Pending {
        return Err(BrokerError::TaskPending { task: t.task.id.clone() });
    }
    crate::broker::tasks::check_task_audience(&t.task, audience)?;
    let allowed: Vec<&str> = t.task.scope.split_whitespace().collect();
    if !asked {
        return Ok(allowed.into_iter().map(str::to_owned).collect());
    }
    if let Some(bad) = scopes.iter().find(|s| !allowed.contains(&s.as_str())) {
        return Err(InvalidScope::WiderThanTask { scope: bad.clone(), task: t.task.id.clone() }.into());
    }
    Ok(scopes)
}

/// Splits an RFC 6749 scope string; each scope is printable ASCII without `"` or `\`.
pub(crate) fn parse_scopes(scope: Option<&str>) -> Result<Vec<String>, BrokerError> {
    let Some(scope) = scope else {
        return Ok(Vec::new());
    };
    if scope.len() > MAX_SCOPE_BYTES {
        return Err(InvalidScope::TooLong { max_bytes: MAX_SCOPE_BYTES }.into());
    }
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
            return Err(InvalidScope::BadCharacters.into());
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(InvalidScope::TooMany { max: MAX_SCOPES }.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuance_context_reads_back_as_one() {
        let w = WorkloadIdentity {
            spiffe_id: crate::spiffe::SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap(),
            attestor: "oidc:k8s".into(),
            attributes: [("namespace".to_owned(), "a\"b".to_owned())].into(),
        };
        for ip in [std::net::IpAddr::from([10, 0, 0, 1]), "2001:db8::1".parse().unwrap()] {
            let json = Caller::Workload(w.clone()).issuance_context(ip).unwrap();
            let back: crate::ledger::IssuanceContext = serde_json::from_str(&json).unwrap();
            let expected = crate::ledger::IssuanceContext {
                attestor: w.attestor.clone(),
                attributes: w.attributes.clone(),
                source_ip: ip.to_string(),
            };
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn scopes_parse_and_dedupe() {
        assert_eq!(parse_scopes(Some("read  write read")).unwrap(), vec!["read", "write"]);
        assert!(parse_scopes(Some("bad\"scope")).is_err());
        assert!(parse_scopes(None).unwrap().is_empty());
    }

    #[test]
    fn exchange_params_debug_hides_the_subject_token() {
        let p = ExchangeParams {
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            subject_token: "eyJ-subject-secret".into(),
            audience: "https://api.example".into(),
            scope: None,
            requested_lifetime: None,
            source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            confirmation: None,
            dpop_proof: None,
            max_uses: None,
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("eyJ-subject-secret"), "{shown}");
        assert!(shown.contains("https://api.example"), "{shown}");
    }
}
