//! The flow of one request: attest → authorize → issue → record, then deliver.
//! This module knows nothing of HTTP; `deliver::http` maps its errors to problems.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use crate::attest::{AttestError, Attestors, WorkloadIdentity};
use crate::authorize::{Decision, ExchangeRequest, PolicyEngine};
use crate::config::{AudienceConfig, TokensConfig};
use crate::issue::{AccessTokenRequest, IssueError, IssuedToken, JwtIssuer};
use crate::keys::Kek;
use crate::ledger::{AuditEvent, CredentialRecord, Ledger, LedgerError};

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
    #[error("{0}")]
    InvalidTarget(String),
    /// A scope is malformed or not offered for this audience.
    #[error("{0}")]
    InvalidScope(String),
    /// The request is malformed in another way.
    #[error("{0}")]
    InvalidRequest(String),
    /// Minting failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The record could not be made durable, so nothing was delivered.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A token-exchange request after parsing.
#[derive(Debug, Clone)]
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
}

/// The broker: the parts of the flow, wired together.
pub struct Broker {
    attestors: Attestors,
    policies: Arc<PolicyEngine>,
    issuer: JwtIssuer,
    ledger: Ledger,
    kek: Arc<Kek>,
    tokens: TokensConfig,
    audiences: HashMap<String, AudienceConfig>,
    failure_audit: RateLimit,
}

/// At most `per_second` events in each wall-clock second.
struct RateLimit {
    per_second: u64,
    /// (second, count) packed as second << 20 | count.
    state: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    fn new(per_second: u64) -> Self {
        Self { per_second: per_second.min((1 << 20) - 1), state: std::sync::atomic::AtomicU64::new(0) }
    }

    fn admit(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = crate::clock::now_unix().max(0) as u64;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 20, cur & ((1 << 20) - 1));
            let next = if sec == now { (now << 20) | (count + 1) } else { (now << 20) | 1 };
            if sec == now && count >= self.per_second {
                return false;
            }
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Failed attestations audited per second at most; the rest are counted in a metric.
const FAILED_ATTESTATION_AUDITS_PER_SECOND: u64 = 100;

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Wires the flow together.
    pub fn new(
        attestors: Attestors,
        policies: Arc<PolicyEngine>,
        issuer: JwtIssuer,
        ledger: Ledger,
        kek: Arc<Kek>,
        tokens: TokensConfig,
        audiences: &[AudienceConfig],
    ) -> Self {
        let audiences = audiences.iter().map(|a| (a.name.clone(), a.clone())).collect();
        let failure_audit = RateLimit::new(FAILED_ATTESTATION_AUDITS_PER_SECOND);
        Self { attestors, policies, issuer, ledger, kek, tokens, audiences, failure_audit }
    }

    /// The attestors (join tokens are created through them).
    pub fn attestors(&self) -> &Attestors {
        &self.attestors
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The policy engine.
    pub fn policies(&self) -> &Arc<PolicyEngine> {
        &self.policies
    }

    /// RFC 8693 token exchange: platform evidence in, short-lived access token out.
    /// The token is recorded durably before this returns.
    pub async fn exchange(&self, p: ExchangeParams) -> Result<IssuedToken, BrokerError> {
        let scopes = parse_scopes(p.scope.as_deref())?;
        if p.requested_lifetime == Some(0) {
            // Refused before attestation: a join token must not be spent on a request that cannot succeed.
            return Err(BrokerError::InvalidRequest("requested_lifetime must be at least 1 second".into()));
        }
        let identity = match self.attestors.attest(&p.subject_token_type, &p.subject_token).await {
            Ok(id) => id,
            Err(e) => {
                let detail = json!({"reason": e.code(), "message": e.to_string(), "source_ip": p.source_ip.to_string(),
                                    "subject_token_type": p.subject_token_type});
                metrics::counter!("mayfly_requests_denied_total", "reason" => "attestation").increment(1);
                // Anyone can send bad evidence: cap what it writes to the audit trail.
                if self.failure_audit.admit() {
                    self.audit_best_effort(AuditEvent::new("attest.failed", None, detail)).await;
                } else {
                    metrics::counter!("mayfly_audit_events_suppressed_total", "kind" => "attest.failed").increment(1);
                }
                return Err(e.into());
            }
        };

        // Checked after attestation, so an unauthenticated caller learns nothing of the configuration.
        let ttl = self.lifetime(&p.audience, p.requested_lifetime, &scopes)?;
        let now = crate::clock::now_unix();
        let decision = self.policies.decide_exchange(&ExchangeRequest {
            identity: &identity,
            audience: &p.audience,
            scopes: &scopes,
            ttl_seconds: ttl,
            source_ip: p.source_ip,
            now,
        });
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, "policy evaluation errors (those policies were skipped)");
        }
        if !decision.allowed {
            let detail = json!({
                "action": "exchange", "audience": p.audience, "scopes": scopes, "ttl_seconds": ttl,
                "attestor": identity.attestor, "policies": decision.policies, "reason": decision.reason(),
                "source_ip": p.source_ip.to_string(),
            });
            metrics::counter!("mayfly_requests_denied_total", "reason" => "policy").increment(1);
            self.audit_best_effort(AuditEvent::new("policy.denied", Some(identity.spiffe_id.to_string()), detail))
                .await;
            return Err(BrokerError::Denied(decision));
        }

        let subject = identity.spiffe_id.to_string();
        let issued = self.issuer.issue(&AccessTokenRequest {
            subject: &subject,
            audience: &p.audience,
            client_id: &subject,
            scopes: &scopes,
            ttl_seconds: ttl,
            now,
        })?;
        self.record_issued(&identity, &p, &issued, &decision).await?;
        metrics::counter!("mayfly_credentials_issued_total", "kind" => "jwt").increment(1);
        Ok(issued)
    }

    async fn record_issued(
        &self,
        identity: &WorkloadIdentity,
        p: &ExchangeParams,
        issued: &IssuedToken,
        decision: &Decision,
    ) -> Result<(), LedgerError> {
        let subject = identity.spiffe_id.to_string();
        let fingerprint = self.kek.fingerprint(issued.token.as_bytes());
        let detail = json!({
            "jti": issued.jti, "fingerprint": fingerprint, "kind": "jwt", "audience": p.audience,
            "scope": issued.scope, "expires_at": issued.expires_at, "kid": issued.kid,
            "attestor": identity.attestor, "policies": decision.policies, "source_ip": p.source_ip.to_string(),
        });
        let record = CredentialRecord {
            jti: issued.jti.clone(),
            kind: "jwt".into(),
            subject: subject.clone(),
            audience: p.audience.clone(),
            scope: issued.scope.clone(),
            task_id: None,
            client_id: subject.clone(),
            issued_at: issued.issued_at,
            expires_at: issued.expires_at,
            key_id: issued.kid.clone(),
            binding: None,
            fingerprint,
        };
        self.ledger.record(vec![record], vec![AuditEvent::new("token.issued", Some(subject), detail)]).await
    }

    /// Records an audit event; a failure is logged, not returned, because the
    /// request is already being refused for another reason.
    pub async fn audit_best_effort(&self, event: AuditEvent) {
        if let Err(e) = self.ledger.audit(event).await {
            tracing::error!(error = %e, "audit event could not be recorded");
        }
    }

    /// Lifetime = min(requested or default, audience maximum, global maximum).
    fn lifetime(&self, audience: &str, requested: Option<u64>, scopes: &[String]) -> Result<i64, BrokerError> {
        let aud = self.audiences.get(audience);
        if let Some(allowed) = aud.and_then(|a| a.scopes.as_ref())
            && let Some(bad) = scopes.iter().find(|s| !allowed.contains(s))
        {
            return Err(BrokerError::InvalidScope(format!("scope {bad:?} is not offered for audience {audience:?}")));
        }
        let max = aud.and_then(|a| a.max_ttl).unwrap_or(self.tokens.max_ttl).min(self.tokens.max_ttl).as_secs();
        let default = aud.and_then(|a| a.default_ttl).unwrap_or(self.tokens.default_ttl).as_secs().min(max);
        let ttl = match requested {
            Some(0) => {
                return Err(BrokerError::InvalidRequest("requested_lifetime must be at least 1 second".into()));
            }
            Some(r) => r.min(max),
            None => default,
        };
        Ok(ttl as i64)
    }
}

/// Splits an RFC 6749 scope string; each scope is printable ASCII without `"` or `\`.
fn parse_scopes(scope: Option<&str>) -> Result<Vec<String>, BrokerError> {
    let Some(scope) = scope else {
        return Ok(Vec::new());
    };
    if scope.len() > MAX_SCOPE_BYTES {
        return Err(BrokerError::InvalidScope(format!("scope is longer than {MAX_SCOPE_BYTES} bytes")));
    }
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
            return Err(BrokerError::InvalidScope("scopes use printable ASCII without '\"' or '\\'".into()));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(BrokerError::InvalidScope(format!("at most {MAX_SCOPES} scopes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_admits_per_second() {
        let rl = RateLimit::new(3);
        let admitted = (0..10).filter(|_| rl.admit()).count();
        assert!((3..=6).contains(&admitted), "at most 3 a second (a second boundary may pass): {admitted}");
    }

    #[test]
    fn scopes_parse_and_dedupe() {
        assert_eq!(parse_scopes(Some("read  write read")).unwrap(), vec!["read", "write"]);
        assert!(parse_scopes(Some("bad\"scope")).is_err());
        assert!(parse_scopes(None).unwrap().is_empty());
    }
}
