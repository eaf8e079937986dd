//! The proxy's HTTP side: forward proxy (absolute-form `http://` and `CONNECT` with TLS
//! terminated for the hosts it injects into), reverse mode (`/<upstream>/…`), and the
//! request on its way to the upstream: identify → decide → strip → inject → stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mayfly_proto::{
    PROXY_TUNNEL, ProblemKind, ProxyDecisionRequest, ProxyDecisionResponse, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_TASK,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::engine::{Proxy, Upstream, problem, tunnel_allowed};

/// The body of every answer.
pub(super) type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// A request head must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (hyper answers 431 past it).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest wait for the upstream's response head.
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1), and the proxy's own.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The workload's evidence: its type and the token.
type Evidence = (String, String);

fn answer(kind: ProblemKind, status: StatusCode, detail: impl Into<String>) -> Response<ProxyBody> {
    let p = problem(kind, status.as_u16(), detail.into());
    json_answer(status, &p)
}

fn json_answer<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mayfly_proto::PROBLEM_CONTENT_TYPE));
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        resp.headers_mut().insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mayfly\""));
    }
    resp
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

/// Accepts connections until `stop`.
pub(super) async fn serve(proxy: Arc<Proxy>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(proxy.clone().serve_connection(stream, peer, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Proxy {
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, stop: CancellationToken) {
        let cut = stop.child_token();
        let (me, conn_cut) = (self.clone(), cut.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (me, conn_cut) = (me.clone(), conn_cut.clone());
            async move { Ok::<_, Infallible>(me.route(req, peer, conn_cut).await) }
        });
        let conn = http1_builder().serve_connection(TokioIo::new(stream), service).with_upgrades();
        tokio::select! {
            r = conn => if let Err(e) = r { tracing::debug!(error = %e, "connection ended") },
            () = cut.cancelled() => {}
        }
    }

    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        cut: CancellationToken,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req, peer, cut).await;
        }
        let evidence = self.identify(req.headers());
        if let Some(authority) = req.uri().authority().cloned() {
            // Absolute form: the forward proxy for plain http://.
            if req.uri().scheme_str() != Some("http") {
                return answer(
                    ProblemKind::InvalidRequest,
                    StatusCode::BAD_REQUEST,
                    "only http:// goes in absolute form; use CONNECT for https://",
                );
            }
            let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            let Some(upstream) = self.upstream_index(&host) else {
                tracing::info!(%host, "refused: no upstream names this host");
                return answer(
                    ProblemKind::DestinationRefused,
                    StatusCode::FORBIDDEN,
                    format!("no upstream is configured for host {host:?}"),
                );
            };
            let Some(evidence) = evidence else { return unidentified() };
            let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
            return self.forward(req, upstream, evidence, host, path, peer, cut).await;
        }
        // Origin form: reverse mode, /<upstream>/<path>.
        let full = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let rest = full.trim_start_matches('/');
        let (name, tail) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let Some(upstream) = self.upstreams.iter().position(|u| u.info.name == name) else {
            return answer(
                ProblemKind::DestinationRefused,
                StatusCode::NOT_FOUND,
                format!("no upstream is named {name:?}; reverse mode is http://<proxy>/<upstream>/<path>"),
            );
        };
        let Some(evidence) = evidence else { return unidentified() };
        let path = if tail.starts_with('/') { tail.to_owned() } else { format!("/{tail}") };
        let host = self.upstreams[upstream].base.host_str().unwrap_or_default().to_ascii_lowercase();
        self.forward(req, upstream, evidence, host, path, peer, cut).await
    }

    /// The workload behind a request: `Proxy-Authorization: Basic` (user: the evidence's
    /// kind, or anything for `mayfly exec`'s per-command secret; password: the token) or `Bearer`.
    fn identify(&self, headers: &HeaderMap) -> Option<Evidence> {
        let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && self.exec.is_none() {
            let token = rest.trim();
            return (!token.is_empty()).then(|| (bearer_kind(token).to_owned(), token.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        // `mayfly exec`'s proxy serves its command only: the per-command secret, nothing else.
        if let Some(exec) = &self.exec {
            return constant_time_eq(password.as_bytes(), exec.secret.as_bytes())
                .then(|| (TOKEN_TYPE_TASK.to_owned(), exec.task_token.clone()));
        }
        let kind = match user {
            "task" => TOKEN_TYPE_TASK,
            "access_token" => TOKEN_TYPE_ACCESS_TOKEN,
            "id_token" => TOKEN_TYPE_ID_TOKEN,
            "jwt" | "" => TOKEN_TYPE_JWT,
            urn if urn.starts_with("urn:") => urn,
            _ => return None,
        };
        (!password.is_empty()).then(|| (kind.to_owned(), password.to_owned()))
    }

    async fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        cut: CancellationToken,
    ) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority().cloned() else {
            return answer(ProblemKind::InvalidRequest, StatusCode::BAD_REQUEST, "CONNECT needs host:port");
        };
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(443);
        let Some(evidence) = self.identify(req.headers()) else { return unidentified() };
        if let Some(index) = self.upstream_index(&host) {
            let tls = match self.ca.server_config(&host) {
                Ok(c) => c,
                Err(e) => {
                    return answer(
                        ProblemKind::InvalidRequest,
                        StatusCode::BAD_REQUEST,
                        format!("no certificate for {host:?}: {e:#}"),
                    );
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let upgraded = match hyper::upgrade::on(req).await {
                    Ok(u) => u,
                    Err(e) => return tracing::debug!(error = %e, "CONNECT upgrade failed"),
                };
                let accepted = tokio::time::timeout(
                    HEADER_READ_TIMEOUT,
                    tokio_rustls::TlsAcceptor::from(tls).accept(TokioIo::new(upgraded)),
                )
                .await;
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return tracing::info!(error = %e, %host, "TLS inside the tunnel failed (does the workload trust the proxy's CA?)");
                    }
                    Err(_) => return tracing::info!(%host, "TLS inside the tunnel timed out"),
                };
                let (inner, inner_cut) = (me.clone(), cut.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (me, evidence, host, cut) = (inner.clone(), evidence.clone(), host.clone(), inner_cut.clone());
                    async move {
                        let path =
                            req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
                        Ok::<_, Infallible>(me.forward(req, index, evidence, host, path, peer, cut).await)
                    }
                });
                let conn = http1_builder().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r { tracing::debug!(error = %e, "tunnel ended") },
                    () = cut.cancelled() => {}
                }
            });
            return empty(StatusCode::OK);
        }
        if !self.tunnel_unmatched {
            tracing::info!(%host, "refused CONNECT: no upstream names this host");
            return answer(
                ProblemKind::DestinationRefused,
                StatusCode::FORBIDDEN,
                format!("no upstream is configured for host {host:?}, and tunnelling is off"),
            );
        }
        // A tunnel: the server decides it once, for the connection, on the workload's evidence.
        let (subject_token_type, subject_token) = evidence;
        let ask = ProxyDecisionRequest {
            subject_token_type,
            subject_token,
            upstream: PROXY_TUNNEL.to_owned(),
            method: "CONNECT".into(),
            host: host.clone(),
            path: "/".into(),
            query_keys: Vec::new(),
            source_ip: Some(peer.ip().to_string()),
        };
        let decision = match self.decided(&ask).await {
            Ok(d) => d,
            Err(refused) => return refused,
        };
        // Resolved once here, so the address checked is the address connected to.
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(_) => {
                return answer(
                    ProblemKind::UpstreamUnreachable,
                    StatusCode::BAD_GATEWAY,
                    format!("{host:?} does not resolve"),
                );
            }
        };
        let Some(target) = addrs.iter().copied().find(|a| tunnel_allowed(a.ip(), &self.internal_allowed)) else {
            tracing::info!(%host, "refused CONNECT to an internal address");
            return answer(
                ProblemKind::DestinationRefused,
                StatusCode::FORBIDDEN,
                format!("{host:?} is an internal address"),
            );
        };
        let upstream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            _ => {
                return answer(
                    ProblemKind::UpstreamUnreachable,
                    StatusCode::BAD_GATEWAY,
                    format!("{host}:{port} cannot be reached"),
                );
            }
        };
        tracing::info!(%host, port, subject = %decision.subject, "tunnel (not inspected)");
        // Watched for its whole life: a revocation closes it.
        let guard = self.watch(&decision, cut.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                () = cut.cancelled() => {}
            }
        });
        empty(StatusCode::OK)
    }

    /// The server's decision, or the answer that passes its refusal on to the workload.
    async fn decided(&self, ask: &ProxyDecisionRequest) -> Result<ProxyDecisionResponse, Response<ProxyBody>> {
        self.decide(ask).await.map_err(|refusal| {
            tracing::info!(upstream = %ask.upstream, method = %ask.method, host = %ask.host, path = %ask.path,
                           status = refusal.status, "refused");
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = json_answer(status, &refusal.problem);
            if let Some(v) = refusal.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        })
    }

    /// One request to an upstream: decided by the server, credential injected, streamed both ways.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        index: usize,
        (token_type, token): Evidence,
        host: String,
        path_and_query: String,
        peer: SocketAddr,
        cut: CancellationToken,
    ) -> Response<ProxyBody> {
        let upstream: &Upstream = &self.upstreams[index];
        let limit = upstream.info.max_request_bytes;
        // Both framings at once is how requests are smuggled past a proxy (RFC 9112 §6.3).
        if req.headers().contains_key(header::TRANSFER_ENCODING) && req.headers().contains_key(header::CONTENT_LENGTH) {
            return answer(
                ProblemKind::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "Content-Length and Transfer-Encoding together",
            );
        }
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return answer(
                ProblemKind::PayloadTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes"),
            );
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path_and_query.clone(), None),
        };
        let mut query_keys: Vec<String> = query
            .iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k).to_owned())
            .collect();
        query_keys.sort();
        query_keys.dedup();
        let ask = ProxyDecisionRequest {
            subject_token_type: token_type,
            subject_token: token,
            upstream: upstream.info.name.clone(),
            method: req.method().as_str().to_owned(),
            host: host.clone(),
            path: path.clone(),
            query_keys,
            source_ip: Some(peer.ip().to_string()),
        };
        let decision = match self.decided(&ask).await {
            Ok(d) => d,
            Err(refused) => return refused,
        };
        // The caller's byte budget for this upstream, counted by this proxy.
        let caller = decision.task_id.clone().unwrap_or_else(|| decision.subject.clone());
        if let Err(retry_after) = self.count_bytes(&caller, index, 0) {
            let mut resp = answer(
                ProblemKind::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "over upstream {:?}'s {} bytes per minute for this caller",
                    upstream.info.name, upstream.info.bytes_per_minute
                ),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return resp;
        }
        // The upstream URL: its base (and path prefix), then the path and query as sent.
        let prefix = upstream.base.path().trim_end_matches('/');
        let mut target = upstream.base.clone();
        target.set_path(&format!("{prefix}{path}"));
        target.set_query(query.as_deref());
        let mut headers = end_to_end(req.headers());
        headers.remove(header::HOST);
        for name in &upstream.info.strip_headers {
            headers.remove(name.as_str());
        }
        for h in &decision.headers {
            let (Ok(name), Ok(mut value)) =
                (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_str(&h.value))
            else {
                return answer(
                    ProblemKind::Unavailable,
                    StatusCode::BAD_GATEWAY,
                    "the server gave a header the proxy cannot send",
                );
            };
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let method = req.method().clone();
        // A request that declares no body is sent with none (a stream would go out chunked).
        let has_body =
            req.headers().contains_key(header::CONTENT_LENGTH) || req.headers().contains_key(header::TRANSFER_ENCODING);
        let body_stream = BodyStream::new(req.into_body());
        let mut sent_bytes = 0u64;
        let (meter, meter_caller) = (self.clone(), caller.clone());
        let limited = body_stream.filter_map(move |frame| {
            let out = match frame {
                Ok(f) => match f.into_data() {
                    Ok(data) => {
                        sent_bytes += data.len() as u64;
                        if sent_bytes > limit {
                            Some(Err(std::io::Error::other(format!("request body over {limit} bytes"))))
                        } else if meter.count_bytes(&meter_caller, index, data.len() as u64).is_err() {
                            Some(Err(std::io::Error::other("over the caller's bytes per minute")))
                        } else {
                            Some(Ok(data))
                        }
                    }
                    Err(_) => None,
                },
                Err(e) => Some(Err(std::io::Error::other(e))),
            };
            std::future::ready(out)
        });
        let mut request = upstream.client.request(method.clone(), target).headers(headers);
        if has_body {
            request = request.body(reqwest::Body::wrap_stream(limited));
        }
        let sent = tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, request.send()).await;
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::info!(upstream = %upstream.info.name, error = %e.without_url(), "upstream failed");
                return answer(
                    ProblemKind::UpstreamUnreachable,
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {:?} cannot be reached or failed", upstream.info.name),
                );
            }
            Err(_) => {
                return answer(
                    ProblemKind::UpstreamUnreachable,
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream {:?} did not answer in time", upstream.info.name),
                );
            }
        };
        tracing::info!(upstream = %upstream.info.name, %method, %host, %path, status = resp.status().as_u16(), subject = %decision.subject, "proxied");
        let (status, headers) = (resp.status(), end_to_end(resp.headers()));
        // Watched until the body ends: a revocation cuts the connection mid-stream.
        let guard = self.watch(&decision, cut.clone());
        let max = upstream.info.max_response_bytes;
        let mut upstream_body = resp.bytes_stream();
        let meter = self.clone();
        let stream = async_stream::stream! {
            let _guard = guard;
            let mut received = 0u64;
            while let Some(chunk) = upstream_body.next().await {
                match chunk {
                    Ok(data) => {
                        received += data.len() as u64;
                        if received > max {
                            yield Err(std::io::Error::other(format!("response over {max} bytes")));
                            break;
                        }
                        if meter.count_bytes(&caller, index, data.len() as u64).is_err() {
                            yield Err(std::io::Error::other("over the caller's bytes per minute"));
                            break;
                        }
                        yield Ok(Frame::data(data));
                    }
                    Err(e) => {
                        yield Err(std::io::Error::other(e.without_url()));
                        break;
                    }
                }
            }
        };
        let mut out = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}

/// The headers a proxy passes on: all but the hop-by-hop ones, those `Connection` names
/// included (RFC 9110 §7.6.1).
fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !named.iter().any(|c| c == n) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A bearer token's kind: a Mayfly access token (RFC 9068 `typ: at+jwt`) or else platform evidence.
fn bearer_kind(token: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Header {
        typ: Option<String>,
    }
    let header = token.split('.').next().and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok());
    match header.and_then(|h| serde_json::from_slice::<Header>(&h).ok()).and_then(|h| h.typ) {
        Some(typ) if typ.eq_ignore_ascii_case("at+jwt") => TOKEN_TYPE_ACCESS_TOKEN,
        _ => TOKEN_TYPE_JWT,
    }
}

fn unidentified() -> Response<ProxyBody> {
    answer(
        ProblemKind::ProxyAuthenticationRequired,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "send Proxy-Authorization: Basic with the evidence's kind (task, jwt) as user and the token as password, or Bearer <token>",
    )
}

fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    b
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
