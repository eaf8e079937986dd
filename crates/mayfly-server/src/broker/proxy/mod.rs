//! One request through `mayfly proxy`: the proxy's own token → attest the workload →
//! Cedar (`Action::"proxy"`, this request's method, host, path) → rate → the credential
//! to inject → audit (bounded).
//!
//! The upstream secrets are opened here, at start-up, and handed to a proxy only for a
//! request policy allowed; the workload behind the proxy never holds them.

pub mod config;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use crate::attest::AttestError;
use crate::authorize::ProxyRequest;
use crate::broker::{Broker, BrokerError, Caller, ExchangeParams, InvalidRequest, Missing};
use crate::keys::Kek;
use crate::ledger::{AuditEvent, IssuanceContext};
use crate::verify::{AccessClaims, VerifyError};
use config::{InjectConfig, ProxyConfig, UpstreamConfig};
use mayfly_proto::{InjectedHeader, PROXY_TUNNEL, ProxyUpstreamInfo, ProxyUpstreamsResponse};

/// An upstream OAuth token is fetched again this long before it expires.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Longest wait for an upstream's token endpoint.
const TOKEN_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Rate windows kept before the oldest are dropped.
const MAX_RATE_ENTRIES: usize = 100_000;
/// Longest path, method and host policy is asked about.
const MAX_PATH_BYTES: usize = 8 * 1024;
const MAX_QUERY_KEYS: usize = 64;

/// `principal.attestor` of a workload that proved itself with a Mayfly access token whose
/// record keeps no attested context.
pub const ACCESS_TOKEN_ATTESTOR: &str = "mayfly_token";

/// Seals an upstream secret under the key-encryption key (base64, for `secret_sealed`).
pub fn seal_secret(kek: &Kek, secret: &str) -> Result<String, crate::keys::KeyError> {
    crate::keys::sealed::PROXY_UPSTREAM_SECRET.seal(kek, secret)
}

/// An upstream, its secret opened.
struct Upstream {
    config: UpstreamConfig,
    hosts: Vec<String>,
    secret: Option<String>,
    ca_pem: Option<String>,
    /// The OAuth token in use, and when to fetch another; one fetch at a time.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// One caller's requests to one upstream in the current minute.
#[derive(Default)]
struct RateWindow {
    minute: i64,
    count: u64,
    previous: u64,
}

/// The configured upstreams, their secrets and what is counted per caller.
pub struct ProxyUpstreams {
    by_name: HashMap<String, Upstream>,
    tunnel_unmatched: bool,
    tunnel_internal_allowed: Vec<String>,
    /// Caller → upstream → its window (looked up without allocating once a caller is known).
    rates: Mutex<HashMap<String, HashMap<String, RateWindow>>>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for ProxyUpstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUpstreams").field("upstreams", &self.by_name.keys().collect::<Vec<_>>()).finish()
    }
}

impl Default for ProxyUpstreams {
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
            tunnel_unmatched: false,
            tunnel_internal_allowed: Vec::new(),
            rates: Mutex::new(HashMap::new()),
            http: None,
        }
    }
}

impl ProxyUpstreams {
    /// Opens every secret and reads every CA file now, so a mistake stops the start.
    pub fn from_config(cfg: &ProxyConfig, kek: &Kek) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for u in &cfg.upstreams {
            let what = |e: String| format!("proxy.upstreams {:?}: {e}", u.name);
            let secret = u
                .inject
                .secret()
                .map(|s| s.open(kek, &crate::keys::sealed::PROXY_UPSTREAM_SECRET))
                .transpose()
                .map_err(what)?;
            if let (InjectConfig::Header { template, .. }, Some(secret)) = (&u.inject, &secret) {
                let value = template.replace("{{secret}}", secret);
                if axum::http::HeaderValue::from_str(&value).is_err() {
                    return Err(what("the secret makes a header value with characters a header cannot carry".into()));
                }
            }
            let ca_pem = match &u.ca_file {
                Some(path) => {
                    Some(std::fs::read_to_string(path).map_err(|e| what(format!("ca_file {}: {e}", path.display())))?)
                }
                None => None,
            };
            let hosts = cfg.hosts_of(u).into_iter().map(str::to_owned).collect();
            let upstream = Upstream { config: u.clone(), hosts, secret, ca_pem, token: tokio::sync::Mutex::new(None) };
            by_name.insert(u.name.clone(), upstream);
        }
        let needs_http = cfg.upstreams.iter().any(|u| matches!(u.inject, InjectConfig::OauthClientCredentials { .. }));
        let http = if needs_http {
            let client = reqwest::Client::builder()
                .timeout(TOKEN_ENDPOINT_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("proxy: no HTTP client for upstream token endpoints: {e}"))?;
            Some(client)
        } else {
            None
        };
        Ok(Self {
            by_name,
            tunnel_unmatched: cfg.tunnel_unmatched,
            tunnel_internal_allowed: cfg.tunnel_internal_allowed.clone(),
            rates: Mutex::new(HashMap::new()),
            http,
        })
    }

    /// What a proxy needs to route requests: never a secret.
    pub fn describe(&self) -> ProxyUpstreamsResponse {
        let mut upstreams: Vec<ProxyUpstreamInfo> = self
            .by_name
            .values()
            .map(|u| ProxyUpstreamInfo {
                name: u.config.name.clone(),
                url: u.config.url.clone(),
                hosts: u.hosts.clone(),
                inject: u.config.inject.kind().into(),
                strip_headers: vec![u.config.inject.header_name().to_owned()],
                ca_pem: u.ca_pem.clone(),
                bytes_per_minute: u.config.bytes_per_minute,
                max_request_bytes: u.config.max_request_bytes,
                max_response_bytes: u.config.max_response_bytes,
            })
            .collect();
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        ProxyUpstreamsResponse {
            upstreams,
            tunnel_unmatched: self.tunnel_unmatched,
            tunnel_internal_allowed: self.tunnel_internal_allowed.clone(),
        }
    }

    /// Counts one request; `Err(limit)` when the caller is over the upstream's limit this minute.
    /// `Ok(Some(previous))` for the first request of a minute (what the last minute counted).
    fn count(&self, caller: &str, upstream: &Upstream, now: i64) -> Result<Option<u64>, u32> {
        let minute = now.div_euclid(60);
        let mut rates = self.rates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rates.len() >= MAX_RATE_ENTRIES {
            rates.retain(|_, per_upstream| per_upstream.values().any(|w| w.minute >= minute));
        }
        if !rates.contains_key(caller) {
            rates.insert(caller.to_owned(), HashMap::new());
        }
        let Some(per_upstream) = rates.get_mut(caller) else { return Ok(None) };
        let name = &upstream.config.name;
        if !per_upstream.contains_key(name) {
            per_upstream.insert(name.clone(), RateWindow::default());
        }
        let Some(w) = per_upstream.get_mut(name) else { return Ok(None) };
        if w.minute != minute {
            w.previous = if w.minute == minute - 1 { w.count } else { 0 };
            w.minute = minute;
            w.count = 0;
        }
        let limit = upstream.config.requests_per_minute;
        if limit != 0 && w.count >= u64::from(limit) {
            return Err(limit);
        }
        w.count += 1;
        Ok((w.count == 1).then_some(w.previous))
    }

    /// The upstream's OAuth access token: the cached one, or a new client-credentials grant.
    async fn oauth_token(&self, upstream: &Upstream) -> Result<String, BrokerError> {
        let InjectConfig::OauthClientCredentials { token_url, client_id, scope, audience, .. } =
            &upstream.config.inject
        else {
            return Err(BrokerError::UpstreamCredential("not an OAuth upstream".into()));
        };
        let mut held = upstream.token.lock().await;
        if let Some((token, refresh_at)) = held.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let http = self.http.as_ref().ok_or_else(|| BrokerError::UpstreamCredential("no HTTP client".into()))?;
        let secret = upstream.secret.as_deref().unwrap_or_default();
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        let failed = |why: String| BrokerError::UpstreamCredential(format!("{token_url}: {why}"));
        let resp = http
            .post(token_url)
            .basic_auth(form_urlencode(client_id), Some(form_urlencode(secret)))
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(format!("cannot be reached ({})", e.without_url())))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_TOKEN_RESPONSE_BYTES).await.map_err(failed)?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        if !status.is_success() {
            // RFC 6749 §5.2: `error` is a code, never a secret; the rest is not repeated.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(|e| e.chars().take(64).collect::<String>()))
                .unwrap_or_default();
            return Err(failed(format!("refused with {status} {code}")));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| failed("answered something that is not a token response".into()))?;
        if parsed.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(failed("issued a token that is not a bearer token".into()));
        }
        if axum::http::HeaderValue::from_str(&format!("Bearer {}", parsed.access_token)).is_err() {
            return Err(failed("issued a token a header cannot carry".into()));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(300));
        let refresh_at = Instant::now() + lifetime.saturating_sub(TOKEN_REFRESH_MARGIN).max(lifetime / 2);
        *held = Some((parsed.access_token.clone(), refresh_at));
        Ok(parsed.access_token)
    }
}

/// RFC 6749 §2.3.1: client credentials are form-urlencoded before HTTP basic authentication.
fn form_urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).map(|e| e[1..].to_owned()).unwrap_or_default()
}

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("answer cut ({})", e.without_url()))? {
        if body.len() + chunk.len() > max {
            return Err(format!("answered more than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One request a workload sent through a proxy.
pub struct ProxyParams<'a> {
    /// The SPIFFE ID of the proxy's own token (audited).
    pub proxy: &'a str,
    /// The workload's evidence type.
    pub token_type: &'a str,
    /// The workload's evidence. Secret.
    pub token: &'a str,
    /// The upstream.
    pub upstream: &'a str,
    /// Method, host, path and query parameter names of the request.
    pub method: &'a str,
    /// The host asked for.
    pub host: &'a str,
    /// The path as sent.
    pub path: &'a str,
    /// Names of the query's parameters.
    pub query_keys: &'a [String],
    /// The workload's address as the proxy saw it.
    pub source_ip: IpAddr,
}

/// An allowed request: what the proxy injects and what it watches.
#[derive(Debug)]
pub struct ProxyGrant {
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The caller's SPIFFE ID.
    pub subject: String,
    /// Its task.
    pub task_id: Option<String>,
    /// The `jti` of the Mayfly access token the caller proved itself with, if it did.
    pub credential_id: Option<String>,
    /// When it was decided.
    pub decided_at: i64,
    /// When the caller's identity ends.
    pub expires_at: i64,
    /// Headers to set.
    pub headers: Vec<InjectedHeader>,
}

fn check_request_shape(p: &ProxyParams<'_>) -> Result<(), BrokerError> {
    let bad = |why: &str| Err(InvalidRequest::ProxyRequest { why: why.to_owned() }.into());
    if p.method.is_empty() || p.method.len() > 16 || !p.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad("method must be 1 to 16 upper-case letters");
    }
    if p.host.is_empty() || p.host.len() > 253 || p.host.bytes().any(|b| b.is_ascii_uppercase() || b <= b' ') {
        return bad("host must be a lower-case name of at most 253 bytes");
    }
    if !p.path.starts_with('/') || p.path.len() > MAX_PATH_BYTES || p.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return bad("path must start with '/', hold no spaces or control characters and be at most 8 KiB");
    }
    if p.query_keys.len() > MAX_QUERY_KEYS || p.query_keys.iter().any(|k| k.len() > 256) {
        return bad("at most 64 query keys of at most 256 bytes each");
    }
    if p.token_type == mayfly_proto::TOKEN_TYPE_JOIN_TOKEN {
        return bad("a join token is single use; a proxy presents a task token or platform evidence");
    }
    Ok(())
}

impl Broker {
    /// The proxy's view of its upstreams.
    pub fn proxy_upstreams(&self) -> &ProxyUpstreams {
        &self.proxy
    }

    /// Decides one request through a proxy and, when allowed, gives the credential to inject.
    pub async fn decide_proxy_request(&self, p: ProxyParams<'_>) -> Result<ProxyGrant, BrokerError> {
        check_request_shape(&p)?;
        let now = crate::clock::now_unix();
        let (caller, token_claims) = if p.token_type == mayfly_proto::TOKEN_TYPE_ACCESS_TOKEN {
            let (caller, claims) = self.attest_proxy_client(p.token, p.source_ip, now).await?;
            (caller, Some(claims))
        } else {
            (self.attest(p.token_type, p.token, p.source_ip, now).await?, None)
        };
        // Checked after attestation, so an unauthenticated caller learns nothing of the configuration.
        let upstream = match p.upstream {
            PROXY_TUNNEL if self.proxy.tunnel_unmatched => None,
            PROXY_TUNNEL => {
                let why = "tunnels to hosts no upstream names are off (proxy.tunnel_unmatched)".to_owned();
                return Err(InvalidRequest::ProxyRequest { why }.into());
            }
            name => Some(self.proxy.by_name.get(name).ok_or_else(|| Missing::Upstream(name.to_owned()))?),
        };
        let (resource, url) = match upstream {
            Some(u) => (u.config.name.as_str(), u.config.url.clone()),
            None => (PROXY_TUNNEL, format!("tunnel://{}", p.host)),
        };
        let (scopes, mut expires_at, task_id) = match &caller {
            Caller::Workload(_) => (Vec::new(), now + self.tokens.max_ttl.as_secs() as i64, None),
            Caller::Task(t) => {
                if t.task.state == crate::ledger::TaskState::Pending {
                    return Err(BrokerError::TaskPending { task: t.task.id.clone() });
                }
                let mut scopes: Vec<String> = t.task.scope.split_whitespace().map(str::to_owned).collect();
                // A token issued under the task carries what it was narrowed to, no more.
                if let Some(c) = &token_claims {
                    let granted: Vec<&str> = c.scope.as_deref().unwrap_or_default().split_whitespace().collect();
                    scopes.retain(|s| granted.contains(&s.as_str()));
                }
                (scopes, t.task.expires_at, Some(t.task.id.clone()))
            }
        };
        // A token proves the caller until it expires, not past it.
        if let Some(c) = &token_claims {
            expires_at = expires_at.min(c.exp);
        }
        let decision = self.policies.decide_proxy(&ProxyRequest {
            principal: caller.principal(),
            upstream: resource,
            upstream_url: &url,
            scopes: &scopes,
            method: p.method,
            host: p.host,
            path: p.path,
            query_keys: p.query_keys,
            ttl_seconds: (expires_at - now).max(0),
            source_ip: p.source_ip,
            now,
        });
        let detail = || {
            json!({"action": "proxy", "upstream": p.upstream, "method": p.method, "host": p.host,
                   "path": p.path, "proxy": p.proxy, "task_id": task_id})
        };
        let counted = |decision: &'static str| {
            metrics::counter!("mayfly_proxy_requests_total", "upstream" => resource.to_owned(), "decision" => decision)
                .increment(1)
        };
        if let Err(e) = self.check_decision(&caller, &decision, detail, p.source_ip).await {
            counted("denied");
            return Err(e);
        }
        let subject = caller.spiffe_id();
        // Built only when a record is written (once per caller, upstream and minute).
        let audit = || {
            json!({"upstream": resource, "method": p.method, "host": p.host, "path": p.path,
                   "proxy": p.proxy, "task_id": task_id, "policies": decision.policies,
                   "source_ip": p.source_ip.to_string()})
        };
        let headers = match upstream {
            // An opaque tunnel is decided once, for the connection: each is audited.
            None => {
                counted("allowed");
                self.audit_best_effort(AuditEvent::new("proxy.tunnel", Some(subject.clone()), audit())).await;
                Vec::new()
            }
            Some(upstream) => {
                let counted_as = task_id.as_deref().unwrap_or(&subject);
                let first_of_minute = match self.proxy.count(counted_as, upstream, now) {
                    Ok(first) => first,
                    Err(per_minute) => {
                        counted("rate_limited");
                        self.audit_failure(p.source_ip, "rate-limited", "proxy.rate_limited");
                        return Err(BrokerError::RateLimited { upstream: resource.to_owned(), per_minute });
                    }
                };
                counted("allowed");
                let injected = self.injected_header(upstream, &caller, &p).await?;
                // Bounded: one record per caller and upstream per minute, with what the minute before counted.
                if let Some(previous_minute) = first_of_minute {
                    let mut audit = audit();
                    audit["requests_previous_minute"] = previous_minute.into();
                    self.audit_best_effort(AuditEvent::new("proxy.allowed", Some(subject.clone()), audit)).await;
                }
                vec![injected]
            }
        };
        Ok(ProxyGrant {
            policies: decision.policies.clone(),
            subject,
            task_id,
            credential_id: token_claims.map(|c| c.jti),
            decided_at: now,
            expires_at,
            headers,
        })
    }

    /// A workload's identity from a Mayfly access token it got for [`PROXY_CLIENT_AUDIENCE`]
    /// and gave its proxy: verified, not revoked, not bound to a key the proxy cannot prove
    /// (`cnf`), not limited in uses (a proxy presents it on every request), and then admitted
    /// like any evidence (a subject revoked since the token was issued is refused). A token
    /// issued under a task acts as that task, which must still be live; any other token must
    /// be the workload's own (no `act`: a delegation is not laundered into an identity), and
    /// policy sees the workload with the attestor and attributes recorded when it was issued.
    ///
    /// [`PROXY_CLIENT_AUDIENCE`]: mayfly_proto::PROXY_CLIENT_AUDIENCE
    async fn attest_proxy_client(
        &self,
        token: &str,
        source_ip: IpAddr,
        now: i64,
    ) -> Result<(Caller, AccessClaims), BrokerError> {
        self.proxy_client(token, now).await.map_err(|e| self.attestation_refused(e, source_ip))
    }

    async fn proxy_client(&self, token: &str, now: i64) -> Result<(Caller, AccessClaims), AttestError> {
        let audience = mayfly_proto::PROXY_CLIENT_AUDIENCE;
        let claims = self.task_attestor.verifier().verify(token, Some(audience), now).map_err(|e| match e {
            VerifyError::WrongAudience => AttestError::AccessToken(format!("its audience is not {audience}")),
            other => AttestError::AccessToken(other.to_string()),
        })?;
        if claims.cnf.is_some() {
            return Err(AttestError::AccessToken(
                "it is bound to a key (DPoP or mTLS) that a proxy cannot prove; get an unbound one".into(),
            ));
        }
        if claims.max_uses.is_some() {
            return Err(AttestError::AccessToken(
                "it is limited in uses, and a proxy presents it on every request".into(),
            ));
        }
        let (caller, minted_at) = match claims.task_id.as_deref() {
            Some(id) => {
                let task = self.task_attestor.live_task(id, now).await?;
                (Caller::Task(Box::new(task)), now)
            }
            None if claims.act.is_some() || claims.sub != claims.client_id => {
                return Err(AttestError::AccessToken("it was issued to an actor for another subject".into()));
            }
            None => {
                let spiffe_id = crate::spiffe::SpiffeId::parse(&claims.sub)
                    .map_err(|e| AttestError::AccessToken(format!("its subject is not a SPIFFE ID: {e}")))?;
                // Policy sees the workload as it was attested when the token was issued.
                let record = self.ledger.store().credential(&claims.jti).await?;
                let record = record.ok_or_else(|| AttestError::AccessToken("it is not in the ledger".into()))?;
                let (attestor, attributes) = match record.context.as_deref().and_then(IssuanceContext::parse) {
                    Some(c) => (c.attestor, c.attributes),
                    None => (ACCESS_TOKEN_ATTESTOR.to_owned(), Default::default()),
                };
                (Caller::Workload(crate::attest::WorkloadIdentity { spiffe_id, attestor, attributes }), claims.iat)
            }
        };
        self.admit(&caller, minted_at)?;
        Ok((caller, claims))
    }

    /// The upstream's credential, as the header that carries it.
    async fn injected_header(
        &self,
        upstream: &Upstream,
        caller: &Caller,
        p: &ProxyParams<'_>,
    ) -> Result<InjectedHeader, BrokerError> {
        let secret = upstream.secret.as_deref().unwrap_or_default();
        let value = match &upstream.config.inject {
            InjectConfig::Header { template, .. } => template.replace("{{secret}}", secret),
            InjectConfig::Basic { username, .. } => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}")))
            }
            InjectConfig::OauthClientCredentials { .. } => {
                format!("Bearer {}", self.proxy.oauth_token(upstream).await?)
            }
            InjectConfig::MayflyToken { audience, scope, ttl } => {
                // Through the exchange itself: its policy, task narrowing, record and revocation.
                let params = ExchangeParams {
                    subject_token_type: p.token_type.to_owned(),
                    subject_token: p.token.to_owned(),
                    audience: audience.clone(),
                    scope: scope.clone(),
                    requested_lifetime: ttl.map(|t| t.as_secs()),
                    source_ip: p.source_ip,
                    confirmation: None,
                    dpop_proof: None,
                    max_uses: None,
                };
                format!("Bearer {}", self.exchange_for(caller, params).await?.token)
            }
        };
        Ok(InjectedHeader { name: upstream.config.inject.header_name().to_owned(), value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_before_basic_auth() {
        assert_eq!(form_urlencode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }
}
