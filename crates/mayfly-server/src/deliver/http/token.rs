//! `POST /v1/token`: RFC 8693 token exchange.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::ProblemKind;
use mayfly_proto::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TokenExchangeResponse};

use super::problems::FormBody;
use super::{ApiError, AppState};
use crate::broker::ExchangeParams;
use crate::deliver::listener::PeerInfo;

/// Longest audience or resource accepted.
const MAX_AUDIENCE_BYTES: usize = 512;

/// Parameters of a form body; each may appear once (RFC 6749 §3.2).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body, checking the content type and size.
    pub(crate) fn parse(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Self, ApiError> {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ApiError::UnsupportedMediaType(
                "the token endpoint takes application/x-www-form-urlencoded (RFC 6749 §4.1.3)".into(),
            ));
        }
        let body = super::read_body(body)?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
            ApiError::oauth(ProblemKind::InvalidRequest, "invalid_request", "the body is not valid form encoding")
        })?;
        Ok(Self(pairs))
    }

    /// The single value of `name`; repeated parameters are an error.
    pub(crate) fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::oauth(
                ProblemKind::InvalidRequest,
                "invalid_request",
                format!("parameter {name} is repeated; send it once"),
            ));
        }
        Ok(first.filter(|v| !v.is_empty()))
    }

    /// Every parameter named `<prefix><name>`, as name → value (the last one wins).
    pub(crate) fn prefixed(&self, prefix: &str) -> std::collections::BTreeMap<String, String> {
        self.0.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone()))).collect()
    }

    /// The value of a required parameter.
    pub(crate) fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.one(name)?.ok_or_else(|| {
            ApiError::oauth(ProblemKind::InvalidRequest, "invalid_request", format!("parameter {name} is required"))
        })
    }
}

/// RFC 8693 token exchange.
#[utoipa::path(
    post, path = "/v1/token", tag = "oauth",
    request_body(content = mayfly_proto::TokenExchangeRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        FormBody,
        (status = 200, description = "Token issued (RFC 8693 §2.2.1)", body = TokenExchangeResponse),
        (status = 400, description = "Invalid request or subject token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Wrong content type", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Ledger or issuer keys unavailable", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn exchange(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let form = Form::parse(&headers, body)?;
    let grant_type = form.required("grant_type")?;
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
        return Err(ApiError::oauth(
            ProblemKind::UnsupportedGrantType,
            "unsupported_grant_type",
            format!("only {GRANT_TYPE_TOKEN_EXCHANGE} is supported"),
        ));
    }
    let subject_token = form.required("subject_token")?;
    let subject_token_type = form.required("subject_token_type")?;
    if let Some(t) = form.one("requested_token_type")?
        && t != TOKEN_TYPE_ACCESS_TOKEN
    {
        return Err(ApiError::oauth(
            ProblemKind::InvalidRequest,
            "invalid_request",
            format!("requested_token_type: only {TOKEN_TYPE_ACCESS_TOKEN} is issued"),
        ));
    }
    if form.one("actor_token")?.is_some() {
        return Err(ApiError::oauth(
            ProblemKind::InvalidRequest,
            "invalid_request",
            "actor_token is not supported here yet",
        ));
    }
    let audience = match (form.one("audience")?, form.one("resource")?) {
        (Some(a), None) | (None, Some(a)) => a,
        (Some(a), Some(r)) if a == r => a,
        (Some(_), Some(_)) => {
            return Err(ApiError::oauth(
                ProblemKind::InvalidTarget,
                "invalid_target",
                "a token has one audience: send audience or resource, not two different ones",
            ));
        }
        (None, None) => {
            return Err(ApiError::oauth(
                ProblemKind::InvalidRequest,
                "invalid_request",
                "parameter audience (or resource) is required",
            ));
        }
    };
    if audience.len() > MAX_AUDIENCE_BYTES || audience.chars().any(char::is_control) {
        return Err(ApiError::oauth(
            ProblemKind::InvalidTarget,
            "invalid_target",
            format!("audience must be at most {MAX_AUDIENCE_BYTES} bytes without control characters"),
        ));
    }
    let requested_lifetime = match form.one("requested_lifetime")? {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::oauth(
                ProblemKind::InvalidRequest,
                "invalid_request",
                "requested_lifetime is a whole number of seconds",
            )
        })?),
    };
    let max_uses = match form.one("max_uses")? {
        None => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            ApiError::oauth(ProblemKind::InvalidRequest, "invalid_request", "max_uses is a whole number of uses")
        })?),
    };
    // The proof is checked before attestation (a bad proof must not spend a join token)
    // and spent after it (a caller who proves nothing must not fill the replay cache).
    let now = crate::clock::now_unix();
    let dpop_proof = checked_dpop_proof(&state, &headers, now)?;
    let jkt = dpop_proof.as_ref().map(|p| p.proof.jkt.clone());
    let x5t_s256 = peer.client_cert.as_ref().map(|c| mayfly_verify::dpop::certificate_thumbprint(c.as_ref()));
    let confirmation =
        (jkt.is_some() || x5t_s256.is_some()).then(|| mayfly_verify::Confirmation { jkt: jkt.clone(), x5t_s256 });
    let issued = state
        .broker
        .exchange(ExchangeParams {
            subject_token_type: subject_token_type.to_owned(),
            subject_token: subject_token.to_owned(),
            audience: audience.to_owned(),
            scope: form.one("scope")?.map(str::to_owned),
            requested_lifetime,
            source_ip: peer.addr.ip(),
            confirmation,
            dpop_proof,
            max_uses,
        })
        .await?;
    let body = TokenExchangeResponse {
        expires_in: (issued.expires_at - issued.issued_at).max(0) as u64,
        access_token: issued.token,
        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.to_owned(),
        token_type: if jkt.is_some() { "DPoP" } else { "Bearer" }.to_owned(),
        scope: (!issued.scope.is_empty()).then_some(issued.scope),
    };
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(n) = state.dpop.current_nonce(now).and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("dpop-nonce", n);
    }
    Ok(resp)
}

/// Checks the request's DPoP proof, if any (RFC 9449 §4.3), without spending it.
fn checked_dpop_proof(
    state: &AppState,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<mayfly_verify::CheckedProof>, ApiError> {
    let mut proofs = headers.get_all("dpop").iter();
    let Some(proof) = proofs.next() else { return Ok(None) };
    if proofs.next().is_some() {
        return Err(mayfly_verify::DpopError::Malformed("send exactly one DPoP header".into()).into());
    }
    let proof =
        proof.to_str().map_err(|_| mayfly_verify::DpopError::Malformed("the DPoP header is not ASCII".into()))?;
    let url = format!("{}/v1/token", state.issuer_url);
    let cx = mayfly_verify::ProofContext { method: "POST", url: &url, now, access_token: None, bound_jkt: None };
    Ok(Some(state.dpop.check(proof, &cx)?))
}
