//! Attestation: evidence in, workload identity out.
//!
//! Each kind of evidence has its own module: [`oidc`] verifies JWTs from
//! platform issuers (Kubernetes, GitHub Actions, any OIDC issuer with a JWKS),
//! [`join_token`] redeems one-time bootstrap tokens, [`unix`] attests local
//! callers of the Workload API socket and [`entries`] maps them to SPIFFE IDs. [`Attestors`] is the
//! registry built from configuration.

pub mod config;
pub mod contexts;
pub mod delegation;
pub mod entries;
pub mod join_token;
pub mod oidc;
pub mod task;
pub mod template;
pub mod unix;

use std::collections::BTreeMap;
use std::sync::Arc;

use mayfly_proto::ProblemKind;

use crate::ledger::LedgerError;
use crate::spiffe::SpiffeId;

pub use join_token::JoinTokens;
pub use oidc::OidcAttestor;

/// Longest subject token accepted, in bytes. Real platform tokens are 1–3 KiB.
pub const MAX_SUBJECT_TOKEN_BYTES: usize = 16 * 1024;

/// Who a workload was proven to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Which attestor proved it, e.g. `oidc:k8s-prod` or `join_token`.
    pub attestor: String,
    /// Attested attributes (selectors), e.g. `namespace`, `repository`.
    pub attributes: BTreeMap<String, String>,
}

/// Why evidence did not prove an identity. Messages name what was expected and never echo secrets.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The token is not a well-formed JWT, or is too large.
    #[error("subject token is malformed: {0}")]
    Malformed(String),
    /// `subject_token_type` names nothing Mayfly accepts.
    #[error(
        "subject_token_type {0:?} is not supported; use urn:ietf:params:oauth:token-type:jwt, …:id_token, urn:mayfly:params:oauth:token-type:join-token or …:task"
    )]
    UnsupportedTokenType(String),
    /// No attestor is configured for the token's `iss`.
    #[error("no attestor is configured for issuer {0:?}")]
    UnknownIssuer(String),
    /// The header's `alg` is not on the issuer's allow-list (or is `none`/HMAC).
    #[error("algorithm {alg} is not allowed for issuer {issuer:?} (allowed: {allowed})")]
    AlgorithmNotAllowed {
        /// The token's alg.
        alg: String,
        /// The issuer.
        issuer: String,
        /// The allow-list.
        allowed: String,
    },
    /// The `kid` is not in the issuer's JWKS, even after a refresh.
    #[error("signing key {kid:?} is not in the JWKS of issuer {issuer:?}")]
    UnknownKey {
        /// The key id.
        kid: String,
        /// The issuer.
        issuer: String,
    },
    /// The signature does not verify, or the key does not fit the algorithm.
    #[error("signature does not verify with issuer {0:?}'s key")]
    BadSignature(String),
    /// `exp` is past.
    #[error("subject token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("subject token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `aud` does not name Mayfly.
    #[error("subject token audience is not accepted by issuer {issuer:?} (expected one of: {expected})")]
    WrongAudience {
        /// The issuer.
        issuer: String,
        /// Accepted audiences.
        expected: String,
    },
    /// A required claim is missing or has the wrong type.
    #[error("subject token claim {0} is missing or invalid")]
    BadClaim(String),
    /// The issuer's keys could not be fetched. The reason is logged, not shown to callers.
    #[error("the signing keys of issuer {issuer:?} are unavailable; retry later")]
    JwksUnavailable {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The claims do not map to a valid SPIFFE ID.
    #[error("cannot map attested claims to a SPIFFE ID: {0}")]
    Mapping(String),
    /// The join token is unknown.
    #[error("join token is not known")]
    JoinTokenUnknown,
    /// The join token was redeemed before.
    #[error("join token has already been used")]
    JoinTokenUsed,
    /// The join token expired.
    #[error("join token has expired")]
    JoinTokenExpired,
    /// The task token is not a valid Mayfly task token.
    #[error("task token: {0}")]
    TaskToken(crate::verify::VerifyError),
    /// A Mayfly access token presented as identity (to a proxy) that does not verify or
    /// cannot serve as identity (bound, limited-use, another audience).
    #[error("Mayfly access token: {0}")]
    AccessToken(String),
    /// The task has ended, was denied, or has expired.
    #[error("the task is {}", .0.as_str())]
    TaskNotActive(crate::ledger::TaskState),
    /// A local caller of the Workload API could not be attested.
    #[error(transparent)]
    Unix(#[from] unix::UnixAttestError),
    /// Storage failed while attesting.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The evidence was minted longer ago than `attest.max_evidence_age` (or says not when).
    #[error("the evidence is older than the {0} s it may be (or has no iat): present evidence minted since")]
    EvidenceTooOld(i64),
    /// The evidence proves a subject that was revoked after the evidence was minted (or
    /// that is blocked): evidence from before a revocation is as dead as its credentials.
    #[error(
        "{subject} is revoked ({}): evidence minted before the revocation, or during a block, is refused",
        kind.as_str()
    )]
    SubjectRevoked {
        /// The revoked SPIFFE ID (the caller, or one in its task's chain).
        subject: String,
        /// The selector that revoked it.
        kind: crate::ledger::RevocationKind,
    },
}

impl AttestError {
    /// The problem kind this refusal is answered with.
    pub fn kind(&self) -> ProblemKind {
        use ProblemKind as K;
        match self {
            AttestError::Malformed(_) => K::MalformedSubjectToken,
            AttestError::UnsupportedTokenType(_) => K::UnsupportedTokenType,
            AttestError::UnknownIssuer(_) => K::UnknownIssuer,
            AttestError::AlgorithmNotAllowed { .. } => K::AlgorithmNotAllowed,
            AttestError::UnknownKey { .. } => K::UnknownSigningKey,
            AttestError::BadSignature(_) => K::BadSignature,
            AttestError::Expired => K::SubjectTokenExpired,
            AttestError::NotYetValid => K::SubjectTokenNotYetValid,
            AttestError::WrongAudience { .. } => K::WrongAudience,
            AttestError::BadClaim(_) => K::BadClaim,
            AttestError::JwksUnavailable { .. } => K::JwksUnavailable,
            AttestError::Mapping(_) => K::IdentityMappingFailed,
            AttestError::JoinTokenUnknown => K::JoinTokenUnknown,
            AttestError::JoinTokenUsed => K::JoinTokenUsed,
            AttestError::JoinTokenExpired => K::JoinTokenExpired,
            AttestError::TaskToken(_) => K::InvalidTaskToken,
            AttestError::AccessToken(_) => K::InvalidAccessToken,
            AttestError::TaskNotActive(_) => K::TaskNotActive,
            AttestError::Unix(_) => K::UnixAttestationFailed,
            AttestError::Ledger(_) => K::StorageUnavailable,
            AttestError::SubjectRevoked { .. } => K::SubjectRevoked,
            AttestError::EvidenceTooOld(_) => K::SubjectTokenTooOld,
        }
    }

    /// A short stable code for audit records: the problem kind's slug.
    pub fn code(&self) -> &'static str {
        self.kind().slug()
    }
}

/// The attestors configured on this server.
#[derive(Debug)]
pub struct Attestors {
    oidc: Vec<Arc<OidcAttestor>>,
    join_tokens: JoinTokens,
}

impl Attestors {
    /// Builds the registry.
    pub fn new(oidc: Vec<Arc<OidcAttestor>>, join_tokens: JoinTokens) -> Self {
        Self { oidc, join_tokens }
    }

    /// The join-token attestor (it also creates tokens).
    pub fn join_tokens(&self) -> &JoinTokens {
        &self.join_tokens
    }

    /// Verifies evidence of the given RFC 8693 token type: who it proves, and when the
    /// evidence was minted (a JWT's `iat`, a join token's creation), for revocations.
    pub async fn attest(&self, token_type: &str, token: &str) -> Result<(WorkloadIdentity, i64), AttestError> {
        if token.len() > MAX_SUBJECT_TOKEN_BYTES {
            return Err(AttestError::Malformed(format!("longer than {MAX_SUBJECT_TOKEN_BYTES} bytes")));
        }
        match token_type {
            mayfly_proto::TOKEN_TYPE_JWT | mayfly_proto::TOKEN_TYPE_ID_TOKEN => {
                let iss = oidc::peek_issuer(token)?;
                let attestor = self
                    .oidc
                    .iter()
                    .find(|a| a.issuer() == iss)
                    .ok_or_else(|| AttestError::UnknownIssuer(iss.chars().take(200).collect()))?;
                attestor.attest(token).await
            }
            mayfly_proto::TOKEN_TYPE_JOIN_TOKEN => self.join_tokens.redeem(token).await,
            other => Err(AttestError::UnsupportedTokenType(other.chars().take(200).collect())),
        }
    }
}
