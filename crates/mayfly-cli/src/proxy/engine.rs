//! The proxy's state: its own token, the upstreams the server named, the revocation feed,
//! and the requests in flight that a revocation must cut.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use mayfly_proto::{
    PROXY_AUDIENCE, PROXY_CLIENT_AUDIENCE, Problem, ProblemKind, ProxyDecisionRequest, ProxyDecisionResponse,
    ProxyUpstreamInfo, ProxyUpstreamsResponse,
};
use mayfly_verify::revocation::CredentialFacts;
use mayfly_verify::{CredentialSource, FeedCredential, RevocationFollower};
use tokio_util::sync::CancellationToken;

use super::tls::ProxyCa;
use crate::client::{Remote, call, exchange};

/// A proxy token is exchanged again this long before it expires.
const TOKEN_MARGIN_SECS: i64 = 30;
/// How often requests in flight are checked against the revocation index.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Byte meters kept before those of past minutes are dropped.
const MAX_BYTE_METERS: usize = 100_000;
/// Longest wait for the server's decision.
const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the proxy's own evidence (again, each time its token is renewed: platform tokens rotate).
pub type EvidenceSource = Box<dyn Fn() -> anyhow::Result<(String, &'static str)> + Send + Sync>;

/// The workload `mayfly exec --proxy` runs: its per-command secret and the task it acts as.
pub struct ExecWorkload {
    /// The password the command's proxy URL carries.
    pub secret: String,
    /// The task token the proxy presents for it (the command never holds it).
    pub task_token: String,
}

/// An upstream as the proxy uses it.
pub(super) struct Upstream {
    pub info: ProxyUpstreamInfo,
    pub base: reqwest::Url,
    pub client: reqwest::Client,
}

/// What the proxy checks a request in flight against.
struct Watched {
    subject: String,
    task_id: Option<String>,
    credential_id: Option<String>,
    decided_at: i64,
    expires_at: i64,
    cut: CancellationToken,
}

/// The proxy.
pub struct Proxy {
    remote: Remote,
    server: reqwest::Client,
    /// For the revocation stream, which stays open.
    feed: reqwest::Client,
    evidence: EvidenceSource,
    token: tokio::sync::Mutex<Option<(String, i64)>>,
    pub(super) upstreams: Vec<Upstream>,
    pub(super) tunnel_unmatched: bool,
    pub(super) internal_allowed: Vec<(IpAddr, u8)>,
    pub(super) ca: ProxyCa,
    pub(super) exec: Option<ExecWorkload>,
    follower: Arc<RevocationFollower>,
    /// Body bytes each caller moved to each upstream this minute: (caller, upstream) → (minute, bytes).
    bytes: Mutex<HashMap<(String, usize), (i64, u64)>>,
    /// `/v1/proxy/decisions`, parsed once (it is called on every request).
    decisions_url: reqwest::Url,
    watched: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
}

/// Removes a request from the watch when it ends.
pub(super) struct WatchGuard {
    proxy: Arc<Proxy>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.proxy.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

/// Why the server did not allow a request: its status and problem, to pass on.
pub(super) struct Refusal {
    pub status: u16,
    pub problem: Problem,
    /// The server's `Retry-After`, passed on with a 429.
    pub retry_after: Option<String>,
}

fn now() -> i64 {
    mayfly_server::clock::now_unix()
}

impl Proxy {
    /// Gets a proxy token, reads the upstreams from the server and makes the CA.
    pub async fn open(
        remote: Remote,
        evidence: EvidenceSource,
        exec: Option<ExecWorkload>,
    ) -> anyhow::Result<Arc<Self>> {
        let (server, feed) = (remote.client()?, remote.streaming_client()?);
        let decisions_url = reqwest::Url::parse(&remote.endpoint("/v1/proxy/decisions"))
            .with_context(|| format!("the server URL {:?}", remote.url))?;
        let mut proxy = Self {
            remote,
            server,
            feed,
            evidence,
            token: tokio::sync::Mutex::new(None),
            upstreams: Vec::new(),
            tunnel_unmatched: false,
            internal_allowed: Vec::new(),
            ca: ProxyCa::generate()?,
            exec,
            follower: Arc::new(RevocationFollower::default()),
            decisions_url,
            bytes: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        };
        let token = proxy.token(false).await?;
        let url = proxy.remote.endpoint("/v1/proxy/upstreams");
        let listed: ProxyUpstreamsResponse = call(proxy.server.get(&url).bearer_auth(&token), &url).await?;
        for info in listed.upstreams {
            let base = reqwest::Url::parse(&info.url).with_context(|| format!("upstream {:?}: url", info.name))?;
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(60));
            if let Some(pem) = &info.ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .with_context(|| format!("upstream {:?}: ca_pem", info.name))?
                {
                    b = b.add_root_certificate(cert);
                }
            }
            let client = b.build()?;
            proxy.upstreams.push(Upstream { info, base, client });
        }
        proxy.tunnel_unmatched = listed.tunnel_unmatched;
        for c in &listed.tunnel_internal_allowed {
            proxy.internal_allowed.push(mayfly_server::broker::proxy::config::parse_cidr(c).map_err(|e| anyhow!(e))?);
        }
        let proxy = Arc::new(proxy);
        proxy
            .follower
            .poll_with(&proxy.server, &proxy.remote.url, &proxy.feed_credential())
            .await
            .map_err(|e| anyhow!("cannot read the revocation feed with the proxy token: {e}"))?;
        Ok(proxy)
    }

    fn feed_credential(self: &Arc<Self>) -> FeedCredential {
        let weak = Arc::downgrade(self);
        FeedCredential::Source(CredentialSource::new(move || {
            let weak = weak.clone();
            async move {
                let proxy = weak.upgrade().ok_or("the proxy stopped")?;
                proxy.token(false).await.map_err(|e| format!("{e:#}"))
            }
        }))
    }

    /// Follows the revocation feed and cuts what it revokes, until `stop`.
    pub(super) fn spawn_watchers(self: &Arc<Self>, stop: CancellationToken) {
        let follower = self.follower.clone();
        let feed = self.feed_credential();
        let (http, base) = (self.feed.clone(), self.remote.url.clone());
        let stop_feed = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = follower.run(http, base, feed) => {}
                () = stop_feed.cancelled() => {}
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Some(proxy) = weak.upgrade() else { return };
                proxy.cut_revoked();
            }
        });
    }

    /// Cuts every request in flight whose caller was revoked or whose identity ended.
    fn cut_revoked(&self) {
        let now = now();
        let watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, w) in watched.iter() {
            let facts = CredentialFacts {
                jti: w.credential_id.as_deref().unwrap_or_default(),
                subject: &w.subject,
                // A workload that proved itself with a token is cut by a revocation of its audience too.
                audience: if w.credential_id.is_some() { PROXY_CLIENT_AUDIENCE } else { "" },
                task_id: w.task_id.as_deref(),
                issued_at: w.decided_at,
            };
            if let Some(kind) = self.follower.revoked_by(&facts) {
                tracing::info!(request = id, subject = %w.subject, task = ?w.task_id, ?kind, "revoked: cutting the connection");
                w.cut.cancel();
            } else if now >= w.expires_at {
                tracing::info!(request = id, subject = %w.subject, "the caller's identity ended: cutting the connection");
                w.cut.cancel();
            }
        }
    }

    /// Watches an allowed request until the guard drops; `cut` is cancelled if its caller is revoked.
    pub(super) fn watch(self: &Arc<Self>, d: &ProxyDecisionResponse, cut: CancellationToken) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let w = Watched {
            subject: d.subject.clone(),
            task_id: d.task_id.clone(),
            credential_id: d.credential_id.clone(),
            decided_at: d.decided_at,
            expires_at: d.expires_at,
            cut,
        };
        self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, w);
        WatchGuard { proxy: self.clone(), id }
    }

    /// The proxy's own token for the server, exchanged again when close to its end or refused.
    async fn token(&self, refresh: bool) -> anyhow::Result<String> {
        let mut held = self.token.lock().await;
        if !refresh
            && let Some((token, exp)) = held.as_ref()
            && *exp - now() > TOKEN_MARGIN_SECS
        {
            return Ok(token.clone());
        }
        let (evidence, kind) = (self.evidence)()?;
        let resp = exchange(&self.remote, &self.server, (&evidence, kind), PROXY_AUDIENCE, None, None)
            .await
            .context("getting a proxy token (policy must allow the exchange for audience urn:mayfly:proxy)")?;
        let exp = now() + resp.expires_in as i64;
        *held = Some((resp.access_token.clone(), exp));
        Ok(resp.access_token)
    }

    /// Asks the server about one request; the proxy token is renewed once if refused.
    pub(super) async fn decide(&self, req: &ProxyDecisionRequest) -> Result<ProxyDecisionResponse, Refusal> {
        let url = &self.decisions_url;
        let unavailable = |detail: String| Refusal {
            status: 503,
            problem: problem(ProblemKind::Unavailable, 503, detail),
            retry_after: None,
        };
        for attempt in 0..2 {
            let token = self.token(attempt > 0).await.map_err(|e| unavailable(format!("no proxy token: {e:#}")))?;
            let sent =
                self.server.post(url.clone()).bearer_auth(&token).json(req).timeout(DECISION_TIMEOUT).send().await;
            let resp =
                sent.map_err(|e| unavailable(format!("the Mayfly server cannot be reached: {}", e.without_url())))?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = resp.bytes().await.map_err(|_| unavailable("the decision was cut".into()))?;
            if status == 200 {
                return serde_json::from_slice(&body).map_err(|_| unavailable("the decision did not parse".into()));
            }
            if status == 401 && attempt == 0 {
                continue;
            }
            let problem = serde_json::from_slice::<Problem>(&body).unwrap_or_else(|_| {
                problem(ProblemKind::Unavailable, 503, format!("the server answered HTTP {status}"))
            });
            if status == 401 {
                return Err(unavailable(format!(
                    "the server refused the proxy's token: {}",
                    problem.detail.unwrap_or_default()
                )));
            }
            // Evidence the server could not attest: the workload did not prove who it is.
            if status == 400 && problem.kind() != Some(ProblemKind::InvalidRequest) {
                let detail = format!("the workload's credential was refused: {}", problem.detail.unwrap_or_default());
                return Err(Refusal {
                    status: 407,
                    problem: self::problem(ProblemKind::ProxyAuthenticationRequired, 407, detail),
                    retry_after: None,
                });
            }
            return Err(Refusal { status, problem, retry_after });
        }
        Err(unavailable("the server refused the proxy's token".into()))
    }

    /// Counts `n` body bytes of `caller` to upstream `index` (0 only asks); `Err(seconds to the
    /// next minute)` when the caller is over the upstream's `bytes_per_minute`.
    pub(super) fn count_bytes(&self, caller: &str, index: usize, n: u64) -> Result<(), u64> {
        let limit = self.upstreams[index].info.bytes_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let now = now();
        let minute = now.div_euclid(60);
        let mut bytes = self.bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if bytes.len() >= MAX_BYTE_METERS {
            bytes.retain(|_, (m, _)| *m == minute);
        }
        let entry = bytes.entry((caller.to_owned(), index)).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        // Spent already, or spent by these bytes (reaching the budget exactly is still within it).
        let spent = entry.1 >= limit || {
            entry.1 = entry.1.saturating_add(n);
            entry.1 > limit
        };
        if spent { Err(mayfly_server::clock::seconds_to_next_minute(now)) } else { Ok(()) }
    }

    /// The upstream a host goes to through the forward proxy.
    /// The position of that upstream.
    pub(super) fn upstream_index(&self, host: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| u.info.hosts.iter().any(|p| mayfly_server::broker::proxy::config::host_matches(p, host)))
    }
}

/// A problem document.
pub(super) fn problem(kind: ProblemKind, status: u16, detail: String) -> Problem {
    Problem {
        problem_type: kind.type_uri().to_owned(),
        title: kind.title().to_owned(),
        status,
        detail: Some(detail),
        error: None,
        error_description: None,
        policies: Vec::new(),
    }
}

/// Checks that an address may be tunnelled to: not internal unless allowed.
pub(super) fn tunnel_allowed(ip: IpAddr, allowed: &[(IpAddr, u8)]) -> bool {
    let internal = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| !tunnel_allowed(IpAddr::V4(v4), &[]))
        }
    };
    !internal || allowed.iter().any(|(net, len)| in_cidr(ip, *net, *len))
}

fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Fails unless the string is safe to use as a proxy password (no separators a URL would mangle).
pub(super) fn check_secret(secret: &str) -> anyhow::Result<()> {
    if secret.len() < 32 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("a proxy secret is at least 32 letters and digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_refuse_internal_addresses_unless_allowed() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!tunnel_allowed(internal.parse().unwrap(), &[]), "{internal}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(tunnel_allowed(public.parse().unwrap(), &[]), "{public}");
        }
        let allowed = [("10.0.0.0".parse().unwrap(), 8)];
        assert!(tunnel_allowed("10.9.9.9".parse().unwrap(), &allowed));
        assert!(!tunnel_allowed("192.168.0.1".parse().unwrap(), &allowed));
    }
}
