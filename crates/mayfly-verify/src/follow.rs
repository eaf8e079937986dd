//! Following the broker's revocation feed: the event stream, with a polling fallback.
//!
//! The follower authenticates with a feed credential: a fixed one (an admin token), or a
//! [`CredentialSource`] asked again whenever the broker refuses the one it gave, since a
//! verifier token lives at most `tokens.max_ttl` and its stream ends with it. It records
//! when it last heard from the feed, so a verifier can refuse to trust an index that has
//! gone stale (see `VerifierConfig::max_feed_staleness`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mayfly_proto::RevocationPage;

use crate::now;
use crate::revocation::{CredentialFacts, Revocation, RevocationIndex, RevocationKind};

/// How long to wait before reconnecting after the stream fails.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often to poll while the stream is down.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A fresh feed credential, asked for when the broker refuses the last one: typically the
/// resource server exchanging its own platform evidence for a Mayfly token for
/// `urn:mayfly:introspect:<its audience>`.
#[derive(Clone)]
pub struct CredentialSource(Arc<dyn Fn() -> CredentialFuture + Send + Sync>);

/// What a [`CredentialSource`] answers: a new credential, or why there is none.
type CredentialFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

impl CredentialSource {
    /// A source that calls `fetch` for each new credential.
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(fetch())))
    }

    async fn fetch(&self) -> Result<String, String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialSource")
    }
}

/// How the follower authenticates: a fixed credential, or a source asked again on refusal.
#[derive(Debug, Clone)]
pub enum FeedCredential {
    /// Always the same (an admin token, or a verifier token the caller renews itself).
    Fixed(String),
    /// Fetched, and fetched again whenever the broker answers 401.
    Source(CredentialSource),
}

/// The revocations a resource server knows of, kept current from the broker's feed.
#[derive(Debug, Default)]
pub struct RevocationFollower {
    index: RwLock<RevocationIndex>,
    /// When the feed last answered (a page, or any bytes of the stream, keep-alives included).
    synced_at: Mutex<Option<Instant>>,
    /// The credential in use, for a source.
    current: tokio::sync::Mutex<Option<String>>,
}

impl RevocationFollower {
    /// How long ago the feed last answered; `None` before it ever did.
    pub fn synced_ago(&self) -> Option<Duration> {
        self.synced_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map(|t| t.elapsed())
    }

    fn mark_synced(&self) {
        *self.synced_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// The credential to present now; `refresh` asks a source for a new one.
    pub async fn credential(&self, feed: &FeedCredential, refresh: bool) -> Result<String, String> {
        match feed {
            FeedCredential::Fixed(c) => Ok(c.clone()),
            FeedCredential::Source(source) => {
                let mut current = self.current.lock().await;
                if refresh || current.is_none() {
                    *current = Some(source.fetch().await.map_err(|e| format!("feed credential: {e}"))?);
                }
                current.clone().ok_or_else(|| "feed credential: none".to_owned())
            }
        }
    }

    /// Which rule revokes this credential, if any.
    pub fn revoked_by(&self, facts: &CredentialFacts<'_>) -> Option<RevocationKind> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).revoked_by(facts)
    }

    /// The last cursor applied.
    pub fn cursor(&self) -> i64 {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).cursor
    }

    fn apply(&self, entries: &[Revocation], now: i64) {
        let mut idx = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in entries {
            idx.apply(r);
        }
        idx.prune(now);
    }

    /// Reads every page after the cursor once.
    pub async fn poll(&self, http: &reqwest::Client, base: &str, credential: &str) -> Result<usize, reqwest::Error> {
        let mut applied = 0;
        loop {
            let url = format!("{base}/v1/revocations?since={}", self.cursor());
            let page: RevocationPage =
                http.get(&url).bearer_auth(credential).send().await?.error_for_status()?.json().await?;
            self.mark_synced();
            let entries: Vec<Revocation> =
                page.entries.into_iter().filter_map(|e| serde_json::from_value(e).ok()).collect();
            if entries.is_empty() {
                return Ok(applied);
            }
            applied += entries.len();
            self.apply(&entries, now());
        }
    }

    /// [`RevocationFollower::poll`] with the feed's credential, asking a source for a new
    /// one once when the broker refuses the current one (it expired, or was revoked).
    pub async fn poll_with(&self, http: &reqwest::Client, base: &str, feed: &FeedCredential) -> Result<usize, String> {
        let credential = self.credential(feed, false).await?;
        match self.poll(http, base, &credential).await {
            Err(e)
                if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED)
                    && matches!(feed, FeedCredential::Source(_)) =>
            {
                let credential = self.credential(feed, true).await?;
                self.poll(http, base, &credential).await.map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Follows the event stream until it ends or fails; entries apply as they arrive.
    async fn stream(&self, http: &reqwest::Client, base: &str, credential: &str) -> Result<(), String> {
        let url = format!("{base}/v1/revocations/stream?since={}", self.cursor());
        let mut resp = http
            .get(&url)
            .bearer_auth(credential)
            .header("accept", "text/event-stream")
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        self.mark_synced();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            self.mark_synced();
            buf.extend_from_slice(&chunk);
            // Events end with a blank line.
            while let Some(end) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end).collect();
                if let Some(r) = parse_event(&event) {
                    self.apply(std::slice::from_ref(&r), now());
                }
            }
            if buf.len() > 1 << 20 {
                return Err("an event larger than 1 MiB".into());
            }
        }
        Ok(())
    }

    /// Runs until the task is dropped: stream, and while the stream is down, poll. A
    /// stream ends when its credential does; the polls that follow ask a source for a new one.
    pub async fn run(self: Arc<Self>, http: reqwest::Client, base: String, feed: FeedCredential) {
        loop {
            match self.credential(&feed, false).await {
                Ok(credential) => {
                    if let Err(e) = self.stream(&http, &base, &credential).await {
                        tracing::warn!(error = %e, "revocation stream failed; polling until it reconnects");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no feed credential; retrying"),
            }
            let reconnect_at = tokio::time::Instant::now() + RECONNECT_DELAY;
            while tokio::time::Instant::now() < reconnect_at {
                if let Err(e) = self.poll_with(&http, &base, &feed).await {
                    tracing::warn!(error = %e, "revocation poll failed");
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
    }
}

/// The length of the first complete event (including its blank line), if any.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A `revocation` event's entry; other events and comments are ignored.
fn parse_event(event: &[u8]) -> Option<Revocation> {
    let text = std::str::from_utf8(event).ok()?;
    let mut kind = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (kind == "revocation").then(|| serde_json::from_str(&data).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_parsed() {
        let stream = b": keep-alive\n\nevent: revocation\nid: 3\ndata: {\"cursor\":3,\"kind\":\"jti\",\"value\":\"j\",\"issued_before\":1,\"revoked_at\":1,\"expires_at\":9999999999}\n\nevent: rev";
        let first = find_event_end(stream).unwrap();
        assert!(parse_event(&stream[..first]).is_none(), "a comment is not an entry");
        let rest = &stream[first..];
        let second = find_event_end(rest).unwrap();
        let r = parse_event(&rest[..second]).unwrap();
        assert_eq!((r.cursor, r.kind, r.value.as_str()), (3, RevocationKind::Jti, "j"));
        assert!(find_event_end(&rest[second..]).is_none(), "an incomplete event waits for more bytes");
    }
}
