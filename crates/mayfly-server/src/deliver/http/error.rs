//! The one place where errors become RFC 9457 problem documents.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::{PROBLEM_CONTENT_TYPE, Problem, ProblemKind};

use crate::attest::AttestError;
use crate::attest::join_token::CreateJoinTokenError;
use crate::broker::BrokerError;
use crate::broker::admin_tokens::AdminTokenError;
use crate::issue::cloud::CloudTokenError;
use crate::issue::cloud::aws_sts::StsError;
use crate::keys::KeyRingError;
use crate::ledger::RevokeError;

/// An error on its way to becoming an HTTP problem.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The flow refused the request.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Malformed request (missing or bad field).
    #[error("{detail}")]
    BadRequest {
        /// The kind of problem.
        kind: ProblemKind,
        /// OAuth error code, on OAuth endpoints.
        oauth: Option<&'static str>,
        /// What is wrong.
        detail: String,
    },
    /// The body is not of an accepted media type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is too large.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Missing or wrong admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// Method not allowed on this route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Creating a join token failed.
    #[error(transparent)]
    JoinToken(#[from] CreateJoinTokenError),
    /// Key rotation failed.
    #[error(transparent)]
    Keys(#[from] KeyRingError),
    /// An admin-token operation was refused.
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    /// A revocation was refused.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    /// A DPoP proof was refused (RFC 9449 §5).
    #[error(transparent)]
    Dpop(#[from] mayfly_verify::DpopError),
    /// The server cannot serve now (too busy, interrupted, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Mayfly's own storage failed (the cause is logged where it happened, never shown).
    #[error("storage is unavailable; retry")]
    StorageUnavailable,
    /// The request (its body included) was not answered within `listen.request_timeout`.
    #[error("the request was not completed within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// More header fields than `listen.max_headers` allows.
    #[error("the request has more than {0} header fields")]
    HeaderFieldsTooLarge(usize),
}

impl ApiError {
    /// A 400 on an OAuth endpoint with the given RFC 6749 error code.
    pub fn oauth(kind: ProblemKind, oauth: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { kind, oauth: Some(oauth), detail: detail.into() }
    }

    /// A storage failure: logged here, shown to the caller without internals.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage failed");
        ApiError::StorageUnavailable
    }

    /// A 400 on a non-OAuth endpoint.
    pub fn bad_request(kind: ProblemKind, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { kind, oauth: None, detail: detail.into() }
    }

    /// The one mapping from an error to its HTTP status, problem kind and OAuth `error` code.
    fn parts(&self) -> (StatusCode, ProblemKind, Option<&'static str>) {
        use ProblemKind as K;
        use StatusCode as S;
        match self {
            ApiError::Broker(b) => match b {
                BrokerError::Attest(a) => attest_parts(a),
                // 403 as the project specifies; the OAuth code is RFC 8693's for a target
                // the client may not get a token for.
                BrokerError::Denied(_) => (S::FORBIDDEN, K::PolicyDenied, Some("invalid_target")),
                BrokerError::InvalidTarget(_) => (S::BAD_REQUEST, K::InvalidTarget, Some("invalid_target")),
                BrokerError::InvalidScope(_) => (S::BAD_REQUEST, K::InvalidScope, Some("invalid_scope")),
                BrokerError::InvalidRequest(_) => (S::BAD_REQUEST, K::InvalidRequest, Some("invalid_request")),
                BrokerError::TaskPending { .. } => (S::FORBIDDEN, K::TaskPending, Some("invalid_request")),
                BrokerError::Forbidden(_) => (S::FORBIDDEN, K::Forbidden, Some("invalid_request")),
                BrokerError::NotFound(_) => (S::NOT_FOUND, K::NotFound, None),
                BrokerError::Conflict(_) => (S::CONFLICT, K::Conflict, Some("invalid_request")),
                BrokerError::TaskEnded { .. } => (S::FORBIDDEN, K::TaskEnded, None),
                BrokerError::Issue(_) => (S::INTERNAL_SERVER_ERROR, K::IssueFailed, Some("server_error")),
                BrokerError::Database(crate::issue::db::DbError::Unreachable(_)) => {
                    (S::SERVICE_UNAVAILABLE, K::DatabaseUnavailable, None)
                }
                BrokerError::Database(crate::issue::db::DbError::Refused(_)) => {
                    (S::BAD_GATEWAY, K::DatabaseRefused, None)
                }
                BrokerError::Database(crate::issue::db::DbError::Config(_)) => {
                    (S::INTERNAL_SERVER_ERROR, K::DatabaseMisconfigured, None)
                }
                BrokerError::Unavailable(_) => {
                    (S::SERVICE_UNAVAILABLE, K::Unavailable, Some("temporarily_unavailable"))
                }
                BrokerError::Dpop(e) => dpop_parts(e),
                BrokerError::Blocked(_) => (S::FORBIDDEN, K::IssuanceBlocked, Some("invalid_target")),
                BrokerError::Ledger(_) => {
                    (S::SERVICE_UNAVAILABLE, K::StorageUnavailable, Some("temporarily_unavailable"))
                }
                BrokerError::Cloud(CloudTokenError::SubjectTooLong { .. }) => {
                    (S::BAD_REQUEST, K::InvalidRequest, Some("invalid_request"))
                }
                BrokerError::Cloud(_) => (S::INTERNAL_SERVER_ERROR, K::IssueFailed, Some("server_error")),
                BrokerError::Sts(StsError::Refused { .. }) => (S::BAD_GATEWAY, K::CloudRefused, None),
                BrokerError::Sts(StsError::Unavailable(_)) => (S::SERVICE_UNAVAILABLE, K::CloudUnavailable, None),
                BrokerError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, K::RateLimited, None),
                BrokerError::UpstreamCredential(_) => (S::BAD_GATEWAY, K::UpstreamCredentialFailed, None),
            },
            ApiError::BadRequest { kind, oauth, .. } => (S::BAD_REQUEST, *kind, *oauth),
            ApiError::UnsupportedMediaType(_) => {
                (S::UNSUPPORTED_MEDIA_TYPE, K::UnsupportedMediaType, Some("invalid_request"))
            }
            ApiError::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, K::PayloadTooLarge, Some("invalid_request")),
            ApiError::Unauthorized(_) => (S::UNAUTHORIZED, K::Unauthorized, None),
            ApiError::NotFound(_) => (S::NOT_FOUND, K::NotFound, None),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, K::MethodNotAllowed, None),
            ApiError::JoinToken(CreateJoinTokenError::Ledger(_))
            | ApiError::Keys(KeyRingError::Ledger(_))
            | ApiError::AdminToken(AdminTokenError::Ledger(_))
            | ApiError::Revoke(RevokeError::Ledger(_))
            | ApiError::StorageUnavailable => (S::SERVICE_UNAVAILABLE, K::StorageUnavailable, None),
            ApiError::JoinToken(_) => (S::BAD_REQUEST, K::InvalidRequest, None),
            ApiError::Keys(KeyRingError::UnknownProfile(_)) => (S::NOT_FOUND, K::NotFound, None),
            ApiError::Keys(KeyRingError::TooManyKeys { .. }) => (S::CONFLICT, K::Conflict, None),
            ApiError::Keys(_) => (S::INTERNAL_SERVER_ERROR, K::KeyRotationFailed, None),
            ApiError::AdminToken(AdminTokenError::InvalidName(_)) => (S::BAD_REQUEST, K::InvalidRequest, None),
            ApiError::AdminToken(AdminTokenError::NameTaken(_) | AdminTokenError::LastOne(_)) => {
                (S::CONFLICT, K::Conflict, None)
            }
            ApiError::AdminToken(AdminTokenError::NotFound(_)) => (S::NOT_FOUND, K::NotFound, None),
            ApiError::Revoke(RevokeError::Selector | RevokeError::Invalid(_)) => {
                (S::BAD_REQUEST, K::InvalidSelector, None)
            }
            ApiError::Revoke(RevokeError::NothingMatches(_)) => (S::NOT_FOUND, K::NothingToRevoke, None),
            ApiError::Dpop(e) => dpop_parts(e),
            ApiError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, K::Unavailable, None),
            ApiError::RequestTimeout(_) => (S::REQUEST_TIMEOUT, K::RequestTimeout, None),
            ApiError::HeaderFieldsTooLarge(_) => (S::REQUEST_HEADER_FIELDS_TOO_LARGE, K::HeaderFieldsTooLarge, None),
        }
    }
}

fn dpop_parts(e: &mayfly_verify::DpopError) -> (StatusCode, ProblemKind, Option<&'static str>) {
    let kind = match e {
        mayfly_verify::DpopError::UseNonce(_) => ProblemKind::UseDpopNonce,
        _ => ProblemKind::InvalidDpopProof,
    };
    (StatusCode::BAD_REQUEST, kind, Some(e.error_code()))
}

fn attest_parts(a: &AttestError) -> (StatusCode, ProblemKind, Option<&'static str>) {
    match a {
        AttestError::JwksUnavailable { .. } | AttestError::Ledger(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, a.kind(), Some("temporarily_unavailable"))
        }
        // RFC 8693 §2.2.2: an unusable subject token is `invalid_request`.
        _ => (StatusCode::BAD_REQUEST, a.kind(), Some("invalid_request")),
    }
}

impl ApiError {
    /// The problem document a client is shown: status, kind and a safe detail (storage and
    /// signing failures are logged here and told in general terms). Other edges (the
    /// Vault-compatible API) reshape it, so every error is mapped once.
    pub fn problem(&self) -> (StatusCode, Problem) {
        let (status, kind, oauth) = self.parts();
        let detail = match self {
            // Internal details stay in the log; the client gets a stable, safe message.
            ApiError::Broker(BrokerError::Ledger(e)) => {
                tracing::error!(error = %e, "ledger write failed; token not delivered");
                "the credential could not be recorded, so it was not issued; retry".to_owned()
            }
            ApiError::Broker(BrokerError::Issue(e)) => {
                tracing::error!(error = %e, "issuance failed");
                "the credential could not be signed".to_owned()
            }
            ApiError::Broker(BrokerError::Attest(AttestError::Ledger(e)))
            | ApiError::JoinToken(CreateJoinTokenError::Ledger(e))
            | ApiError::Keys(KeyRingError::Ledger(e))
            | ApiError::AdminToken(AdminTokenError::Ledger(e))
            | ApiError::Revoke(RevokeError::Ledger(e)) => {
                tracing::error!(error = %e, "storage failed");
                "storage is unavailable; retry".to_owned()
            }
            ApiError::Broker(BrokerError::Attest(e @ AttestError::JwksUnavailable { reason, .. })) => {
                tracing::warn!(%reason, "subject token refused: issuer keys unavailable");
                e.to_string()
            }
            other => other.to_string(),
        };
        let policies = match self {
            ApiError::Broker(BrokerError::Denied(d)) => d.policies.clone(),
            _ => Vec::new(),
        };
        let problem = Problem {
            problem_type: kind.type_uri().to_owned(),
            title: kind.title().to_owned(),
            status: status.as_u16(),
            error: oauth.map(str::to_owned),
            error_description: oauth.map(|_| oauth_description(&detail)),
            detail: Some(detail),
            policies,
        };
        (status, problem)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem) = self.problem();
        let mut resp = problem_response(status, &problem, matches!(self, ApiError::Unauthorized(_)));
        if let ApiError::Dpop(e) = &self
            && let Some(n) = e.nonce().and_then(|n| HeaderValue::from_str(n).ok())
        {
            resp.headers_mut().insert("dpop-nonce", n);
        }
        // RFC 9110 §10.2.3: the window is a minute; the count starts over at the next one.
        if let ApiError::Broker(BrokerError::RateLimited { .. }) = &self {
            let wait = crate::clock::seconds_to_next_minute(crate::clock::now_unix());
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        resp
    }
}

/// RFC 6749 §5.2 allows only printable ASCII without `"` and `\` in `error_description`.
fn oauth_description(detail: &str) -> String {
    detail
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
}

/// Serialises a problem with the right media type and no-store caching.
pub fn problem_response(status: StatusCode, problem: &Problem, bearer_challenge: bool) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if bearer_challenge {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mayfly-admin\""));
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::http::StatusCode as S;
    use mayfly_proto::ProblemKind as K;

    use super::*;
    use crate::attest::unix::UnixAttestError;
    use crate::broker::containment::RevokeBlocked;
    use crate::broker::{Conflict, Forbidden, InvalidRequest, InvalidScope, InvalidTarget, Missing, Unavailable};
    use crate::issue::IssueError;
    use crate::issue::db::DbError;
    use crate::keys::KeyError;
    use crate::ledger::{LedgerError, RevocationKind, TaskState};
    use crate::verify::VerifyError;
    use mayfly_verify::DpopError;

    fn broker(e: impl Into<BrokerError>) -> ApiError {
        ApiError::Broker(e.into())
    }

    fn attest(e: AttestError) -> ApiError {
        ApiError::Broker(BrokerError::Attest(e))
    }

    /// Every arm of `parts`, and of `attest_parts` per attestation error: the status, the
    /// problem kind and the OAuth `error` code the caller sees.
    fn table() -> Vec<(ApiError, StatusCode, ProblemKind, Option<&'static str>)> {
        let s = || "x".to_owned();
        let gone = || LedgerError::WriterGone;
        let denied = crate::authorize::Decision { allowed: false, policies: vec![], errors: vec![] };
        vec![
            // Broker.
            (broker(BrokerError::Denied(denied)), S::FORBIDDEN, K::PolicyDenied, Some("invalid_target")),
            // Clouds: a subject the cloud would refuse is the caller's; an algorithm the cloud
            // takes not is the server's; STS's refusal and absence are the cloud's.
            (
                broker(CloudTokenError::SubjectTooLong { cloud: "gcp", length: 200, max: 127 }),
                S::BAD_REQUEST,
                K::InvalidRequest,
                Some("invalid_request"),
            ),
            (
                broker(CloudTokenError::Algorithm { profile: s(), alg: "EdDSA" }),
                S::INTERNAL_SERVER_ERROR,
                K::IssueFailed,
                Some("server_error"),
            ),
            (broker(StsError::Refused { code: s(), message: s(), status: 403 }), S::BAD_GATEWAY, K::CloudRefused, None),
            (broker(StsError::Unavailable(s())), S::SERVICE_UNAVAILABLE, K::CloudUnavailable, None),
            // The refusals map by their outer variant whatever the case inside; a case that
            // wraps a lower layer's error maps like any other of its variant.
            (broker(InvalidTarget::NoAudience), S::BAD_REQUEST, K::InvalidTarget, Some("invalid_target")),
            (broker(InvalidScope::BadCharacters), S::BAD_REQUEST, K::InvalidScope, Some("invalid_scope")),
            (broker(InvalidRequest::ZeroLifetime), S::BAD_REQUEST, K::InvalidRequest, Some("invalid_request")),
            (
                broker(InvalidRequest::Entry(crate::attest::entries::EntryError::Invalid(s()))),
                S::BAD_REQUEST,
                K::InvalidRequest,
                Some("invalid_request"),
            ),
            (broker(BrokerError::TaskPending { task: s() }), S::FORBIDDEN, K::TaskPending, Some("invalid_request")),
            (broker(Forbidden::ProofReused), S::FORBIDDEN, K::Forbidden, Some("invalid_request")),
            (broker(Missing::Task(s())), S::NOT_FOUND, K::NotFound, None),
            (
                broker(Conflict::TaskOver { task: s(), state: TaskState::Ended }),
                S::CONFLICT,
                K::Conflict,
                Some("invalid_request"),
            ),
            // A guarded write that lost a race is a conflict, not an outage.
            (broker(LedgerError::Changed(s())), S::CONFLICT, K::Conflict, Some("invalid_request")),
            (broker(BrokerError::TaskEnded { task: s(), why: s() }), S::FORBIDDEN, K::TaskEnded, None),
            (
                broker(IssueError::Signing(KeyError::MissingKek(s()))),
                S::INTERNAL_SERVER_ERROR,
                K::IssueFailed,
                Some("server_error"),
            ),
            (broker(DbError::Unreachable(s())), S::SERVICE_UNAVAILABLE, K::DatabaseUnavailable, None),
            (broker(DbError::Refused(s())), S::BAD_GATEWAY, K::DatabaseRefused, None),
            (broker(DbError::Config(s())), S::INTERNAL_SERVER_ERROR, K::DatabaseMisconfigured, None),
            (
                broker(Unavailable::AttestationsBusy),
                S::SERVICE_UNAVAILABLE,
                K::Unavailable,
                Some("temporarily_unavailable"),
            ),
            (broker(DpopError::UseNonce(s())), S::BAD_REQUEST, K::UseDpopNonce, Some("use_dpop_nonce")),
            (broker(DpopError::Replayed), S::BAD_REQUEST, K::InvalidDpopProof, Some("invalid_dpop_proof")),
            (
                broker(RevokeBlocked { kind: RevocationKind::Jti, subject: s(), audience: s() }),
                S::FORBIDDEN,
                K::IssuanceBlocked,
                Some("invalid_target"),
            ),
            (
                broker(BrokerError::Ledger(gone())),
                S::SERVICE_UNAVAILABLE,
                K::StorageUnavailable,
                Some("temporarily_unavailable"),
            ),
            // Attestation.
            (attest(AttestError::Malformed(s())), S::BAD_REQUEST, K::MalformedSubjectToken, Some("invalid_request")),
            (
                attest(AttestError::UnsupportedTokenType(s())),
                S::BAD_REQUEST,
                K::UnsupportedTokenType,
                Some("invalid_request"),
            ),
            (attest(AttestError::UnknownIssuer(s())), S::BAD_REQUEST, K::UnknownIssuer, Some("invalid_request")),
            (
                attest(AttestError::AlgorithmNotAllowed { alg: s(), issuer: s(), allowed: s() }),
                S::BAD_REQUEST,
                K::AlgorithmNotAllowed,
                Some("invalid_request"),
            ),
            (
                attest(AttestError::UnknownKey { kid: s(), issuer: s() }),
                S::BAD_REQUEST,
                K::UnknownSigningKey,
                Some("invalid_request"),
            ),
            (attest(AttestError::BadSignature(s())), S::BAD_REQUEST, K::BadSignature, Some("invalid_request")),
            (attest(AttestError::Expired), S::BAD_REQUEST, K::SubjectTokenExpired, Some("invalid_request")),
            (attest(AttestError::NotYetValid), S::BAD_REQUEST, K::SubjectTokenNotYetValid, Some("invalid_request")),
            (
                attest(AttestError::WrongAudience { issuer: s(), expected: s() }),
                S::BAD_REQUEST,
                K::WrongAudience,
                Some("invalid_request"),
            ),
            (attest(AttestError::BadClaim(s())), S::BAD_REQUEST, K::BadClaim, Some("invalid_request")),
            (
                attest(AttestError::JwksUnavailable { issuer: s(), reason: s() }),
                S::SERVICE_UNAVAILABLE,
                K::JwksUnavailable,
                Some("temporarily_unavailable"),
            ),
            (attest(AttestError::Mapping(s())), S::BAD_REQUEST, K::IdentityMappingFailed, Some("invalid_request")),
            (attest(AttestError::JoinTokenUnknown), S::BAD_REQUEST, K::JoinTokenUnknown, Some("invalid_request")),
            (attest(AttestError::JoinTokenUsed), S::BAD_REQUEST, K::JoinTokenUsed, Some("invalid_request")),
            (attest(AttestError::JoinTokenExpired), S::BAD_REQUEST, K::JoinTokenExpired, Some("invalid_request")),
            (
                attest(AttestError::AccessToken("bound".into())),
                S::BAD_REQUEST,
                K::InvalidAccessToken,
                Some("invalid_request"),
            ),
            (
                attest(AttestError::TaskToken(VerifyError::Malformed)),
                S::BAD_REQUEST,
                K::InvalidTaskToken,
                Some("invalid_request"),
            ),
            (
                attest(AttestError::TaskNotActive(TaskState::Pending)),
                S::BAD_REQUEST,
                K::TaskNotActive,
                Some("invalid_request"),
            ),
            (
                attest(AttestError::Unix(UnixAttestError::NoPeerProcess)),
                S::BAD_REQUEST,
                K::UnixAttestationFailed,
                Some("invalid_request"),
            ),
            (
                attest(AttestError::Ledger(gone())),
                S::SERVICE_UNAVAILABLE,
                K::StorageUnavailable,
                Some("temporarily_unavailable"),
            ),
            (
                attest(AttestError::SubjectRevoked { subject: s(), kind: RevocationKind::Subject }),
                S::BAD_REQUEST,
                K::SubjectRevoked,
                Some("invalid_request"),
            ),
            (attest(AttestError::EvidenceTooOld(1)), S::BAD_REQUEST, K::SubjectTokenTooOld, Some("invalid_request")),
            // The rest of the API.
            (ApiError::bad_request(K::InvalidJson, s()), S::BAD_REQUEST, K::InvalidJson, None),
            (ApiError::bad_request(K::InvalidCursor, s()), S::BAD_REQUEST, K::InvalidCursor, None),
            (ApiError::bad_request(K::InvalidSignal, s()), S::BAD_REQUEST, K::InvalidSignal, None),
            (
                ApiError::oauth(K::UnsupportedGrantType, "unsupported_grant_type", s()),
                S::BAD_REQUEST,
                K::UnsupportedGrantType,
                Some("unsupported_grant_type"),
            ),
            (
                ApiError::UnsupportedMediaType(s()),
                S::UNSUPPORTED_MEDIA_TYPE,
                K::UnsupportedMediaType,
                Some("invalid_request"),
            ),
            (ApiError::PayloadTooLarge(1), S::PAYLOAD_TOO_LARGE, K::PayloadTooLarge, Some("invalid_request")),
            (ApiError::Unauthorized(s()), S::UNAUTHORIZED, K::Unauthorized, None),
            (ApiError::NotFound(s()), S::NOT_FOUND, K::NotFound, None),
            (ApiError::MethodNotAllowed, S::METHOD_NOT_ALLOWED, K::MethodNotAllowed, None),
            (
                ApiError::JoinToken(CreateJoinTokenError::Ledger(gone())),
                S::SERVICE_UNAVAILABLE,
                K::StorageUnavailable,
                None,
            ),
            (ApiError::Keys(KeyRingError::Ledger(gone())), S::SERVICE_UNAVAILABLE, K::StorageUnavailable, None),
            (
                ApiError::AdminToken(AdminTokenError::Ledger(gone())),
                S::SERVICE_UNAVAILABLE,
                K::StorageUnavailable,
                None,
            ),
            (ApiError::Revoke(RevokeError::Ledger(gone())), S::SERVICE_UNAVAILABLE, K::StorageUnavailable, None),
            (ApiError::storage("disk on fire"), S::SERVICE_UNAVAILABLE, K::StorageUnavailable, None),
            (ApiError::JoinToken(CreateJoinTokenError::BadTtl { max: 1 }), S::BAD_REQUEST, K::InvalidRequest, None),
            (
                ApiError::Keys(KeyRingError::Key(KeyError::MissingKek(s()))),
                S::INTERNAL_SERVER_ERROR,
                K::KeyRotationFailed,
                None,
            ),
            (ApiError::AdminToken(AdminTokenError::InvalidName(s())), S::BAD_REQUEST, K::InvalidRequest, None),
            (ApiError::AdminToken(AdminTokenError::NameTaken(s())), S::CONFLICT, K::Conflict, None),
            (ApiError::AdminToken(AdminTokenError::LastOne(s())), S::CONFLICT, K::Conflict, None),
            (ApiError::AdminToken(AdminTokenError::NotFound(s())), S::NOT_FOUND, K::NotFound, None),
            (ApiError::Revoke(RevokeError::Selector), S::BAD_REQUEST, K::InvalidSelector, None),
            (ApiError::Revoke(RevokeError::Invalid(s())), S::BAD_REQUEST, K::InvalidSelector, None),
            (ApiError::Revoke(RevokeError::NothingMatches(s())), S::NOT_FOUND, K::NothingToRevoke, None),
            (ApiError::Dpop(DpopError::UseNonce(s())), S::BAD_REQUEST, K::UseDpopNonce, Some("use_dpop_nonce")),
            (ApiError::Dpop(DpopError::BadSignature), S::BAD_REQUEST, K::InvalidDpopProof, Some("invalid_dpop_proof")),
            (ApiError::Unavailable(s()), S::SERVICE_UNAVAILABLE, K::Unavailable, None),
            (
                broker(BrokerError::RateLimited { upstream: s(), per_minute: 1 }),
                S::TOO_MANY_REQUESTS,
                K::RateLimited,
                None,
            ),
            (broker(BrokerError::UpstreamCredential(s())), S::BAD_GATEWAY, K::UpstreamCredentialFailed, None),
            (ApiError::RequestTimeout(std::time::Duration::from_secs(1)), S::REQUEST_TIMEOUT, K::RequestTimeout, None),
            (ApiError::HeaderFieldsTooLarge(1), S::REQUEST_HEADER_FIELDS_TOO_LARGE, K::HeaderFieldsTooLarge, None),
        ]
    }

    #[test]
    fn every_error_maps_to_its_status_problem_kind_and_oauth_code() {
        for (error, status, kind, oauth) in table() {
            assert_eq!(error.parts(), (status, kind, oauth), "{error:?}");
        }
    }

    #[test]
    fn every_problem_kind_is_answered_by_some_error() {
        let answered: HashSet<ProblemKind> = table().into_iter().map(|(_, _, kind, _)| kind).collect();
        // `mayfly proxy` answers these itself, to the workloads behind it.
        let by_the_proxy = [
            ProblemKind::ProxyAuthenticationRequired,
            ProblemKind::DestinationRefused,
            ProblemKind::UpstreamUnreachable,
        ];
        let unused: Vec<_> =
            ProblemKind::ALL.iter().filter(|k| !answered.contains(k) && !by_the_proxy.contains(k)).collect();
        assert!(unused.is_empty(), "problem kinds no error answers with: {unused:?}");
    }

    #[tokio::test]
    async fn the_body_carries_the_kinds_type_uri_and_title() {
        for (error, status, kind, oauth) in table() {
            let resp = error.into_response();
            assert_eq!(resp.status(), status);
            let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.expect("body");
            let p: Problem = serde_json::from_slice(&body).expect("a problem document");
            assert_eq!(p.problem_type, kind.type_uri());
            assert_eq!(p.kind(), Some(kind));
            assert_eq!(p.title, kind.title());
            assert_eq!(p.status, status.as_u16());
            assert_eq!(p.error.as_deref(), oauth);
            assert!(!p.detail.unwrap_or_default().contains("disk on fire"), "storage internals leak");
        }
    }
}
