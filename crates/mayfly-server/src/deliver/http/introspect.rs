//! `POST /v1/introspect` (RFC 7662) and the revocation feed: what resource servers call.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mayfly_proto::ProblemKind;
use mayfly_proto::{IntrospectionResponse, RevocationPage};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::problems::{AdminAuth, FormBody};
use super::token::Form;
use super::{ApiError, AppState, VerifierCaller, require_verifier};
use crate::broker::{BrokerError, Forbidden};
use crate::deliver::listener::PeerInfo;
use crate::ledger::Revocation;

/// Largest page of the feed.
const MAX_PAGE: i64 = 1000;

/// The form of `POST /v1/introspect`, for the document: the handler reads the form
/// itself, since `context.<attribute>` parameters are open-ended.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct IntrospectForm {
    /// The token to look at.
    #[schema(min_length = 1)]
    token: String,
    /// `access_token` (the only kind Mayfly issues); not needed.
    token_type_hint: Option<String>,
    /// `true`: an admin caller spends one use of a limited-use token (a verifier of the
    /// token's audience always does).
    count_use: Option<String>,
}

/// RFC 7662 token introspection. Callers authenticate with an admin token, or a Mayfly
/// token for the audience `urn:mayfly:introspect:<audience>`, which introspects tokens
/// issued for `<audience>` only (others are `active: false`).
#[utoipa::path(
    post, path = "/v1/introspect", tag = "oauth", security(("admin_token" = []), ("verifier_token" = [])),
    request_body(content = IntrospectForm, content_type = "application/x-www-form-urlencoded", description = "token=…[&token_type_hint=access_token][&context.<attribute>=<value>…][&count_use=true]: with context parameters (a Mayfly extension), the token is active only if it was issued in that context (its `ctx` claim); with count_use=true, an admin caller spends one use of a limited-use token (a verifier of the token's audience always does)"),
    responses(
        AdminAuth, FormBody,
        (status = 200, description = "active true with claims, or active false. A verifier's introspection of a limited-use token of its own audience counts one use; nobody else's does.", body = IntrospectionResponse),
        (status = 401, description = "Caller not authenticated (or its token's binding not proven)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "A verifier token that names no audience (`urn:mayfly:introspect` alone reads the feed only)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn introspect(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = require_verifier(&state, &headers, &peer, &Method::POST, "/v1/introspect").await?;
    let own_audience = match &caller {
        VerifierCaller::Admin => None,
        VerifierCaller::Verifier { audience: Some(a), .. } => Some(a.clone()),
        VerifierCaller::Verifier { audience: None, .. } => {
            return Err(BrokerError::from(Forbidden::VerifierWithoutAudience {
                verifier_audience: super::VERIFIER_AUDIENCE,
            })
            .into());
        }
    };
    let form = Form::parse(&headers, body)?;
    let token = form.required("token")?;
    let now = crate::clock::now_unix();
    let mut verified = state.verifier.verify(token, None, now);
    // A verifier sees the tokens of its own audience only: anything else is inactive to
    // it, and is not touched (a limited-use token keeps its uses).
    if let (Ok(c), Some(own)) = (&verified, &own_audience)
        && c.aud != *own
    {
        verified = Err(crate::verify::VerifyError::WrongAudience);
    }
    // The presenter's context, when the resource server knows it: a token issued to
    // another pod or node is inactive here, before any signal about it arrives.
    let presenter = form.prefixed("context.");
    if let Ok(c) = &verified
        && let Err(attribute) = c.check_context(&presenter)
    {
        tracing::debug!(%attribute, "introspection: presented from another context");
        verified = Err(crate::verify::VerifyError::ContextMismatch(attribute));
    }
    // A limited-use token is used by being verified at its resource server: each
    // introspection by its audience's verifier counts one use. An operator only looks,
    // unless it asks to count a use (`count_use=true`: a resource server whose feed
    // credential is an admin token).
    if let Ok(c) = &verified
        && c.max_uses.is_some()
    {
        let count = own_audience.is_some() || form.one("count_use")? == Some("true");
        let left = state.broker.use_of_limited_token(&c.jti, count).await;
        if !left.map_err(ApiError::storage)? {
            verified = Err(crate::verify::VerifyError::UsedUp);
        }
    }
    let answer = match verified {
        Ok(c) => IntrospectionResponse {
            active: true,
            token_type: Some(if c.cnf.as_ref().is_some_and(|v| v.jkt.is_some()) { "DPoP" } else { "Bearer" }.into()),
            scope: c.scope,
            client_id: Some(c.client_id),
            exp: Some(c.exp),
            iat: Some(c.iat),
            nbf: c.nbf,
            sub: Some(c.sub),
            aud: Some(c.aud),
            iss: Some(c.iss),
            jti: Some(c.jti),
            cnf: c.cnf.as_ref().and_then(|v| serde_json::to_value(v).ok()),
            task_id: c.task_id,
            act: c.act,
        },
        Err(e) => {
            tracing::debug!(reason = %e, "introspection: inactive token");
            IntrospectionResponse::default()
        }
    };
    metrics::counter!("mayfly_introspections_total", "active" => if answer.active { "true" } else { "false" })
        .increment(1);
    let mut resp = Json(answer).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Query of the feed endpoints.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    since: Option<String>,
    limit: Option<String>,
}

fn parse_cursor(state: &AppState, raw: Option<&str>, headers: &HeaderMap) -> Result<i64, ApiError> {
    // SSE clients resume with Last-Event-ID.
    let raw = raw.or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()));
    let Some(raw) = raw else { return Ok(0) };
    let cursor: i64 = raw.parse().ok().filter(|c| *c >= 0).ok_or_else(|| {
        ApiError::bad_request(ProblemKind::InvalidCursor, "since is a cursor: a whole number from a previous page")
    })?;
    let head = state.revocations.status().0;
    if cursor > head {
        return Err(ApiError::bad_request(
            ProblemKind::InvalidCursor,
            format!("cursor {cursor} is ahead of the feed (latest is {head}); it did not come from this server"),
        ));
    }
    Ok(cursor)
}

fn entry(r: &Revocation) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// The revocation feed: entries after a cursor.
#[utoipa::path(
    get, path = "/v1/revocations", tag = "revocation", security(("admin_token" = []), ("verifier_token" = [])),
    params(("since" = Option<i64>, Query, minimum = 0, description = "cursor from a previous page (default 0); not ahead of the feed"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "at most this many (default and maximum 1000)")),
    responses(
        AdminAuth,
        (status = 200, description = "Entries after the cursor", body = RevocationPage),
        (status = 400, description = "Bad cursor (not a whole number, or ahead of the feed) or limit", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Caller not authenticated (or its token's binding not proven)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn feed(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Json<RevocationPage>, ApiError> {
    require_verifier(&state, &headers, &peer, &Method::GET, "/v1/revocations").await?;
    let q = super::read_query(query)?;
    let since = parse_cursor(&state, q.since.as_deref(), &HeaderMap::new())?;
    let limit =
        match q.limit.as_deref() {
            None => MAX_PAGE,
            Some(l) => l.parse::<i64>().ok().filter(|l| (1..=MAX_PAGE).contains(l)).ok_or_else(|| {
                ApiError::bad_request(ProblemKind::InvalidRequest, format!("limit is 1 to {MAX_PAGE}"))
            })?,
        };
    let entries = state.broker.revocations_after(since, limit).await.map_err(ApiError::storage)?;
    let next_cursor = entries.last().map(|r| r.cursor).unwrap_or(since);
    Ok(Json(RevocationPage { entries: entries.iter().map(entry).collect(), next_cursor }))
}

/// The revocation feed as server-sent events: the backlog after the cursor, then live
/// entries. A stream opened with a verifier token ends when that token expires or is
/// revoked; at most `revocations.max_streams` are open at once.
#[utoipa::path(
    get, path = "/v1/revocations/stream", tag = "revocation", security(("admin_token" = []), ("verifier_token" = [])),
    params(("since" = Option<i64>, Query, minimum = 0, description = "cursor to resume after (or the Last-Event-ID header); not ahead of the feed")),
    responses(
        AdminAuth,
        (status = 200, description = "text/event-stream of `revocation` events; the event id is the cursor", content_type = "text/event-stream"),
        (status = 400, description = "Bad cursor (not a whole number, or ahead of the feed)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Caller not authenticated (or its token's binding not proven)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many streams are open: poll the feed, or retry later", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let caller = require_verifier(&state, &headers, &peer, &Method::GET, "/v1/revocations/stream").await?;
    let q = super::read_query(query)?;
    let mut cursor = parse_cursor(&state, q.since.as_deref(), &headers)?;
    let slot = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable("too many revocation streams are open; poll /v1/revocations or retry later".into())
    })?;
    // The caller's own token: the stream lasts while it does.
    let holder = match caller {
        VerifierCaller::Admin => None,
        VerifierCaller::Verifier { claims, .. } => Some(claims),
    };
    let place = match &holder {
        Some(c) => Some(state.streams_per_subject.take(c.sub.clone()).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "{} holds as many revocation streams as one verifier may; close one, or poll /v1/revocations",
                c.sub
            ))
        })?),
        None => None,
    };
    // An admin's stream lasts until shutdown (a year stands for "no end" here).
    let lasts = holder.as_ref().map_or(365 * 86_400, |c| (c.exp - crate::clock::now_unix()).max(0) as u64);
    let expires_at = tokio::time::Instant::now() + Duration::from_secs(lasts);
    let revocations = state.revocations.clone();
    let still_valid = move || {
        holder.as_ref().is_none_or(|c| c.exp > crate::clock::now_unix() && revocations.revoked_by(&c.facts()).is_none())
    };
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut live = state.revocations.subscribe();
    let broker = state.broker.clone();
    let mut stopping = state.stopping.clone();
    let stream = async_stream::stream! {
        let _slot = slot;
        let _place = place;
        let to_event = |r: &Revocation| Event::default().event("revocation").id(r.cursor.to_string()).data(entry(r).to_string());
        loop {
            // Backlog (and catch-up after a lag) from storage.
            match broker.revocations_after(cursor, MAX_PAGE).await {
                Ok(batch) if !batch.is_empty() => {
                    for r in &batch {
                        cursor = r.cursor;
                        yield Ok(to_event(r));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream: storage read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if !still_valid() {
                break;
            }
            let next = tokio::select! {
                next = live.recv() => next,
                _ = stopping.wait_for(|s| *s) => break,
                _ = tokio::time::sleep_until(expires_at) => break,
            };
            match next {
                Ok(r) if r.cursor > cursor => {
                    cursor = r.cursor;
                    yield Ok(to_event(&r));
                    // The entry that revokes the holder's own token is the last it gets (it
                    // gets that one: a verifier must learn of the revocation that ends it).
                    if !still_valid() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {} // read the gap from storage
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
