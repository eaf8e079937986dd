//! The one place where errors become RFC 9457 problem documents.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::{PROBLEM_CONTENT_TYPE, Problem};

use crate::attest::AttestError;
use crate::attest::join_token::CreateJoinTokenError;
use crate::broker::BrokerError;
use crate::broker::admin_tokens::AdminTokenError;
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
        /// Stable problem slug.
        slug: &'static str,
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
    /// The server cannot serve now (storage down, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The request (its body included) was not answered within `listen.request_timeout`.
    #[error("the request was not completed within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// More header fields than `listen.max_headers` allows.
    #[error("the request has more than {0} header fields")]
    HeaderFieldsTooLarge(usize),
}

impl ApiError {
    /// A 400 on an OAuth endpoint with the given RFC 6749 error code.
    pub fn oauth(slug: &'static str, oauth: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { slug, oauth: Some(oauth), detail: detail.into() }
    }

    /// A storage failure: logged here, shown to the caller without internals.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage failed");
        ApiError::Unavailable("storage is unavailable; retry".into())
    }

    /// A 400 on a non-OAuth endpoint.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { slug, oauth: None, detail: detail.into() }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<&'static str>) {
        use StatusCode as S;
        match self {
            ApiError::Broker(b) => match b {
                BrokerError::Attest(a) => attest_parts(a),
                // 403 as the project specifies; the OAuth code is RFC 8693's for a target
                // the client may not get a token for.
                BrokerError::Denied(_) => (S::FORBIDDEN, "policy-denied", "Denied by policy", Some("invalid_target")),
                BrokerError::InvalidTarget(_) => {
                    (S::BAD_REQUEST, "invalid-target", "Invalid target", Some("invalid_target"))
                }
                BrokerError::InvalidScope(_) => {
                    (S::BAD_REQUEST, "invalid-scope", "Invalid scope", Some("invalid_scope"))
                }
                BrokerError::InvalidRequest(_) => {
                    (S::BAD_REQUEST, "invalid-request", "Invalid request", Some("invalid_request"))
                }
                BrokerError::TaskPending(_) => {
                    (S::FORBIDDEN, "task-pending", "Task waiting for approval", Some("invalid_request"))
                }
                BrokerError::Forbidden(_) => (S::FORBIDDEN, "forbidden", "Forbidden", Some("invalid_request")),
                BrokerError::NotFound(_) => (S::NOT_FOUND, "not-found", "Not found", None),
                BrokerError::Conflict(_) => (S::CONFLICT, "conflict", "Conflict", Some("invalid_request")),
                BrokerError::TaskEnded { .. } => (S::FORBIDDEN, "task-ended", "Task ended", None),
                BrokerError::Issue(_) => {
                    (S::INTERNAL_SERVER_ERROR, "issue-failed", "Issuance failed", Some("server_error"))
                }
                BrokerError::Database(crate::issue::db::DbError::Unreachable(_)) => {
                    (S::SERVICE_UNAVAILABLE, "database-unavailable", "Database unavailable", None)
                }
                BrokerError::Database(crate::issue::db::DbError::Refused(_)) => {
                    (S::BAD_GATEWAY, "database-refused", "Database refused", None)
                }
                BrokerError::Database(crate::issue::db::DbError::Config(_)) => {
                    (S::INTERNAL_SERVER_ERROR, "database-misconfigured", "Database misconfigured", None)
                }
                BrokerError::Unavailable(_) => {
                    (S::SERVICE_UNAVAILABLE, "unavailable", "Unavailable", Some("temporarily_unavailable"))
                }
                BrokerError::Dpop(e @ mayfly_verify::DpopError::UseNonce(_)) => {
                    (S::BAD_REQUEST, "use-dpop-nonce", "DPoP nonce required", Some(e.error_code()))
                }
                BrokerError::Dpop(e) => {
                    (S::BAD_REQUEST, "invalid-dpop-proof", "Invalid DPoP proof", Some(e.error_code()))
                }
                BrokerError::Blocked(_) => {
                    (S::FORBIDDEN, "issuance-blocked", "Issuance blocked by a revocation", Some("invalid_target"))
                }
                BrokerError::Ledger(_) => (
                    S::SERVICE_UNAVAILABLE,
                    "ledger-unavailable",
                    "Ledger unavailable",
                    Some("temporarily_unavailable"),
                ),
            },
            ApiError::BadRequest { slug, oauth, .. } => (S::BAD_REQUEST, slug, "Bad request", *oauth),
            ApiError::UnsupportedMediaType(_) => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", Some("invalid_request"))
            }
            ApiError::PayloadTooLarge(_) => {
                (S::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large", Some("invalid_request"))
            }
            ApiError::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", "Unauthorized", None),
            ApiError::NotFound(_) => (S::NOT_FOUND, "not-found", "Not found", None),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", None),
            ApiError::JoinToken(CreateJoinTokenError::Ledger(_)) | ApiError::Keys(KeyRingError::Ledger(_)) => {
                (S::SERVICE_UNAVAILABLE, "ledger-unavailable", "Ledger unavailable", None)
            }
            ApiError::JoinToken(_) => (S::BAD_REQUEST, "invalid-request", "Invalid request", None),
            ApiError::Keys(_) => (S::INTERNAL_SERVER_ERROR, "key-rotation-failed", "Key rotation failed", None),
            ApiError::AdminToken(AdminTokenError::InvalidName(_)) => {
                (S::BAD_REQUEST, "invalid-request", "Invalid request", None)
            }
            ApiError::AdminToken(AdminTokenError::NameTaken(_) | AdminTokenError::LastOne(_)) => {
                (S::CONFLICT, "conflict", "Conflict", None)
            }
            ApiError::AdminToken(AdminTokenError::NotFound(_)) => (S::NOT_FOUND, "not-found", "Not found", None),
            ApiError::AdminToken(AdminTokenError::Ledger(_)) => {
                (S::SERVICE_UNAVAILABLE, "ledger-unavailable", "Ledger unavailable", None)
            }
            ApiError::Revoke(RevokeError::Selector | RevokeError::Invalid(_)) => {
                (S::BAD_REQUEST, "invalid-selector", "Invalid revocation selector", None)
            }
            ApiError::Revoke(RevokeError::NothingMatches(_)) => {
                (S::NOT_FOUND, "nothing-to-revoke", "Nothing matches", None)
            }
            ApiError::Revoke(RevokeError::Ledger(_)) => {
                (S::SERVICE_UNAVAILABLE, "ledger-unavailable", "Ledger unavailable", None)
            }
            ApiError::Dpop(e @ mayfly_verify::DpopError::UseNonce(_)) => {
                (S::BAD_REQUEST, "use-dpop-nonce", "DPoP nonce required", Some(e.error_code()))
            }
            ApiError::Dpop(e) => (S::BAD_REQUEST, "invalid-dpop-proof", "Invalid DPoP proof", Some(e.error_code())),
            ApiError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", None),
            ApiError::RequestTimeout(_) => (S::REQUEST_TIMEOUT, "request-timeout", "Request timeout", None),
            ApiError::HeaderFieldsTooLarge(_) => {
                (S::REQUEST_HEADER_FIELDS_TOO_LARGE, "header-fields-too-large", "Request header fields too large", None)
            }
        }
    }
}

fn attest_parts(a: &AttestError) -> (StatusCode, &'static str, &'static str, Option<&'static str>) {
    match a {
        AttestError::JwksUnavailable { .. } | AttestError::Ledger(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, a.code(), "Attestation unavailable", Some("temporarily_unavailable"))
        }
        // RFC 8693 §2.2.2: an unusable subject token is `invalid_request`.
        _ => (StatusCode::BAD_REQUEST, a.code(), "Attestation failed", Some("invalid_request")),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title, oauth) = self.parts();
        let detail = match &self {
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
        let policies = match &self {
            ApiError::Broker(BrokerError::Denied(d)) => d.policies.clone(),
            _ => Vec::new(),
        };
        let problem = Problem {
            problem_type: format!("urn:mayfly:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            error: oauth.map(str::to_owned),
            error_description: oauth.map(|_| oauth_description(&detail)),
            detail: Some(detail),
            policies,
        };
        let mut resp = problem_response(status, &problem, matches!(self, ApiError::Unauthorized(_)));
        if let ApiError::Dpop(e) = &self
            && let Some(n) = e.nonce().and_then(|n| HeaderValue::from_str(n).ok())
        {
            resp.headers_mut().insert("dpop-nonce", n);
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
