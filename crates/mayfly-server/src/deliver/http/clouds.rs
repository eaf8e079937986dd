//! Cloud credentials: federation tokens for the clouds' SDKs, AWS credentials for clients
//! without one, and the profiles' set-up values.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use mayfly_proto::{AwsCredentialsResponse, CloudProfileInfo, CloudTokenRequest, CloudTokenResponse};

use super::admin::json_body_required;
use super::problems::{AdminAuth, JsonBody};
use super::{ApiError, AppState, require_admin};
use crate::broker::clouds::CloudParams;
use crate::deliver::listener::PeerInfo;

type Created<T> = (StatusCode, [(header::HeaderName, &'static str); 1], Json<T>);

fn params(profile: String, req: CloudTokenRequest, peer: &PeerInfo) -> CloudParams {
    CloudParams {
        profile,
        subject_token_type: req.subject_token_type,
        subject_token: req.subject_token,
        source_ip: peer.addr.ip(),
    }
}

/// Mints a token for a cloud profile (AWS web identity, Google Workload Identity
/// Federation, Azure federated credential), recorded before it is returned.
#[utoipa::path(
    post, path = "/v1/clouds/{profile}/token", tag = "clouds",
    params(("profile" = String, Path, description = "A configured cloud profile")),
    request_body(content = CloudTokenRequest, content_type = "application/json"),
    responses(
        JsonBody,
        (status = 201, description = "Minted", body = CloudTokenResponse),
        (status = 400, description = "Bad evidence, or a subject longer than the cloud takes", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cloud profile", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(profile): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Created<CloudTokenResponse>, ApiError> {
    let req: CloudTokenRequest = json_body_required(&headers, body)?;
    let t = state.broker.issue_cloud_token(params(profile, req, &peer)).await?;
    let body = CloudTokenResponse {
        setup: t.profile.setup(&t.session_name),
        profile: t.profile.name,
        token: t.issued.token,
        jti: t.issued.jti,
        subject: t.subject,
        audience: t.profile.audience,
        issued_at: t.issued.issued_at,
        expires_at: t.issued.expires_at,
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Gets temporary AWS credentials for an `aws` profile: Mayfly mints a web-identity token
/// for the caller and exchanges it at AWS STS (`AssumeRoleWithWebIdentity`).
#[utoipa::path(
    post, path = "/v1/credentials/aws/{profile}", tag = "clouds",
    params(("profile" = String, Path, description = "A configured cloud profile of kind aws")),
    request_body(content = CloudTokenRequest, content_type = "application/json"),
    responses(
        JsonBody,
        (status = 201, description = "Credentials from STS", body = AwsCredentialsResponse),
        (status = 400, description = "Bad evidence, or not an aws profile", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cloud profile", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task ends before the shortest AWS session would", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 502, description = "STS refused (its error code in detail)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 503, description = "STS is unreachable", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn aws_credentials(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(profile): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Created<AwsCredentialsResponse>, ApiError> {
    let req: CloudTokenRequest = json_body_required(&headers, body)?;
    // Its own task: a client that hangs up must not cancel between STS's answer and its record.
    let broker = state.broker.clone();
    let p = params(profile, req, &peer);
    let issued = tokio::spawn(async move { broker.issue_aws_credentials(p).await })
        .await
        .map_err(|e| ApiError::Unavailable(format!("issuance was interrupted: {e}")))??;
    let c = issued.credentials;
    let body = AwsCredentialsResponse {
        profile: issued.token.profile.name,
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: c.session_token,
        expiration: c.expiration,
        assumed_role_arn: c.assumed_role_arn,
        jti: issued.token.issued.jti,
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Lists the cloud profiles with the values their set-up on the cloud's side needs (admin).
#[utoipa::path(
    get, path = "/v1/clouds", tag = "clouds", security(("admin_token" = [])),
    responses(AdminAuth, (status = 200, description = "Cloud profiles", body = Vec<CloudProfileInfo>))
)]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<CloudProfileInfo>>, ApiError> {
    require_admin(&state, &headers).await?;
    Ok(Json(state.broker.cloud_profile_infos()))
}
