//! `POST /v1/signals`: context-change signals in. A Security Event Token pushed by a
//! configured transmitter (RFC 8935: `Content-Type: application/secevent+jwt`, answered
//! `202` or `400` with an RFC 8935 error object), or Mayfly's own JSON form with the
//! admin token (answered with what the signal did, errors as problems).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::ProblemKind;
use serde_json::json;

use super::admin::json_body_required;
use super::problems::{AdminAuth, JsonBody};
use super::{ApiError, AppState, require_admin};
use crate::broker::signals::{Signal, SignalError, SignalOutcome};
use crate::deliver::listener::PeerInfo;

/// The media type of a pushed SET (RFC 8935 §2).
const SET_CONTENT_TYPE: &str = "application/secevent+jwt";

/// Receives a context-change signal.
#[utoipa::path(
    post, path = "/v1/signals", tag = "governance",
    request_body(
        description = "A SET (application/secevent+jwt, from a configured sender) or a Mayfly signal (application/json, admin token)",
        content((String = "application/secevent+jwt"), (Signal = "application/json")),
    ),
    responses(
        AdminAuth, JsonBody,
        (status = 202, description = "SET accepted and applied"),
        (status = 200, description = "Mayfly signal applied", body = SignalOutcome),
        (status = 400, description = "Refused; nothing changed. For a SET an RFC 8935 error object, otherwise a problem"),
        (status = 401, description = "The JSON form without the admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The JSON form: `task_cancelled` names no task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The JSON form: `task_cancelled` names a task that has already ended", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    axum::extract::Extension(peer): axum::extract::Extension<PeerInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(SET_CONTENT_TYPE)) {
        let body = super::read_body(body)?;
        return Ok(receive_set(&state, peer.addr.ip(), &body).await);
    }
    require_admin(&state, &headers).await?;
    let signal: Signal = json_body_required(&headers, body)?;
    match state.broker.apply_signal(&signal, "admin").await {
        Ok(outcome) => Ok((StatusCode::OK, Json(outcome)).into_response()),
        Err(e) => {
            refused(&state, peer.addr.ip(), "admin", &e);
            Err(match e {
                SignalError::Broker(b) => ApiError::Broker(b),
                other => ApiError::bad_request(ProblemKind::InvalidSignal, other.to_string()),
            })
        }
    }
}

async fn receive_set(state: &AppState, source: std::net::IpAddr, body: &[u8]) -> Response {
    let token = String::from_utf8_lossy(body);
    let now = crate::clock::now_unix();
    let result = state.broker.receive_set(token.trim(), &state.signal_senders, now).await;
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            refused(state, source, "set", &e);
            let status = match e {
                SignalError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({"err": e.set_error_code(), "description": e.to_string()}))).into_response()
        }
    }
}

/// Refusals are audited as counts per source and reason (anyone can send a forged signal).
fn refused(state: &AppState, source: std::net::IpAddr, form: &str, e: &SignalError) {
    state.broker.audit_failure(source, &format!("{form}:{}", e.set_error_code()), "signal.refused");
}
