//! Discovery documents, the JWKS, and health endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::{GRANT_TYPE_TOKEN_EXCHANGE, Health};
use serde_json::json;

use super::AppState;

/// The JWK Set of every published signing key (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "discovery",
    responses((status = 200, description = "JWK Set", content_type = "application/jwk-set+json")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let body = serde_json::to_vec(&state.keys.jwks()).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    // Short, so verifiers see a rotation quickly.
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    resp
}

/// OpenID Provider / OAuth authorization-server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "discovery",
    responses((status = 200, description = "Metadata", content_type = "application/json")))]
pub async fn openid_configuration(State(state): State<AppState>) -> Json<serde_json::Value> {
    let base = &state.issuer_url;
    let algs: Vec<String> = {
        let mut a: Vec<String> = state.keys.infos().into_iter().map(|k| k.alg).collect();
        a.sort();
        a.dedup();
        a
    };
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/token"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        // The shape the clouds read (Kubernetes' issuer has the same): they verify ID-token
        // style JWTs from this issuer, which is what its cloud tokens are.
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "access_token_signing_alg_values_supported": algs,
        "service_documentation": format!("{base}/v1/openapi.json"),
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), storage: None, leader: None })
}

/// Readiness: storage answers and a signing key is loaded.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (backend, answers) = state.broker.storage_health().await;
    let health = |status: &str| Health {
        status: status.into(),
        storage: Some(backend.into()),
        leader: Some(state.leadership.is_leading()),
    };
    match answers {
        Ok(()) => (StatusCode::OK, Json(health("ok"))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: storage does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, Json(health("storage unavailable")))
        }
    }
}
