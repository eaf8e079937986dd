//! `/v1/proxy/*`: what `mayfly proxy` asks the server, with its own token (audience
//! `urn:mayfly:proxy`): the upstreams (never their secrets), and a decision per request.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Method};
use mayfly_proto::{PROXY_AUDIENCE, ProxyDecisionRequest, ProxyDecisionResponse, ProxyUpstreamsResponse};

use super::admin::json_body_required;
use super::problems::JsonBody;
use super::{ApiError, AppState, presented_token};
use crate::broker::proxy::ProxyParams;
use crate::deliver::listener::PeerInfo;

/// The SPIFFE ID of the proxy presenting a token for [`PROXY_AUDIENCE`].
async fn proxy_caller(state: &AppState, headers: &HeaderMap, peer: &PeerInfo, path: &str) -> Result<String, ApiError> {
    let method = if path.ends_with("decisions") { Method::POST } else { Method::GET };
    match presented_token(state, headers, peer, &method, path, |aud| aud == PROXY_AUDIENCE).await {
        Ok((_, claims)) => Ok(claims.sub),
        Err(ApiError::Unauthorized(why)) => Err(ApiError::Unauthorized(format!(
            "a proxy presents a Mayfly token for the audience {PROXY_AUDIENCE} (policy decides who gets one); {why}"
        ))),
        Err(e) => Err(e),
    }
}

/// The upstreams a proxy routes to: names, URLs, hosts, CA and limits, never a secret.
#[utoipa::path(
    get, path = "/v1/proxy/upstreams", tag = "proxy", security(("proxy_token" = [])),
    responses(
        (status = 200, description = "The upstreams", body = ProxyUpstreamsResponse),
        (status = 401, description = "No proxy token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upstreams(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Json<ProxyUpstreamsResponse>, ApiError> {
    proxy_caller(&state, &headers, &peer, "/v1/proxy/upstreams").await?;
    Ok(Json(state.broker.proxy_upstreams().describe()))
}

/// Decides one request a workload sent through the proxy: attests the workload's evidence,
/// asks policy (`Action::"proxy"`) about this method, host and path, counts it against the
/// upstream's rate, and answers the headers to inject. Denials are audited with the rule that decided.
#[utoipa::path(
    post, path = "/v1/proxy/decisions", tag = "proxy", security(("proxy_token" = [])),
    request_body(content = ProxyDecisionRequest, content_type = "application/json"),
    responses(
        JsonBody,
        (status = 200, description = "Allowed: the headers to inject", body = ProxyDecisionResponse),
        (status = 400, description = "Bad evidence, or not an HTTP request", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No proxy token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy, or the task is not active", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the upstream's rate for this caller", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The upstream's token endpoint refused", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn decide(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProxyDecisionResponse>, ApiError> {
    let proxy = proxy_caller(&state, &headers, &peer, "/v1/proxy/decisions").await?;
    let req: ProxyDecisionRequest = json_body_required(&headers, body)?;
    // The workload's address as the proxy saw it; the proxy's own when it gave none.
    let source_ip = match req.source_ip.as_deref() {
        Some(ip) => ip.parse().map_err(|_| {
            ApiError::bad_request(
                mayfly_proto::ProblemKind::InvalidRequest,
                format!("source_ip {ip:?} is not an address"),
            )
        })?,
        None => peer.addr.ip(),
    };
    let grant = state
        .broker
        .decide_proxy_request(ProxyParams {
            proxy: &proxy,
            token_type: &req.subject_token_type,
            token: &req.subject_token,
            upstream: &req.upstream,
            method: &req.method,
            host: &req.host,
            path: &req.path,
            query_keys: &req.query_keys,
            source_ip,
        })
        .await?;
    Ok(Json(ProxyDecisionResponse {
        decision: "allow".into(),
        policies: grant.policies,
        subject: grant.subject,
        task_id: grant.task_id,
        credential_id: grant.credential_id,
        decided_at: grant.decided_at,
        expires_at: grant.expires_at,
        headers: grant.headers,
    }))
}
