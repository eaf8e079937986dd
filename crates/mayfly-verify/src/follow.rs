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
/// Largest event accepted from the stream.
const MAX_EVENT_BYTES: usize = 1 << 20;

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
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let url = format!("{base}/v1/revocations/stream?since={}", self.cursor());
        let resp = http
            .get(&url)
            .bearer_auth(credential)
            .header("accept", "text/event-stream")
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        self.mark_synced();
        // Any bytes (keep-alive comments included) show the feed is alive; an event that
        // does not end within 1 MiB is refused rather than buffered without bound.
        let pending = std::sync::atomic::AtomicUsize::new(0);
        let bytes = resp.bytes_stream().map(|chunk| {
            self.mark_synced();
            if let Ok(c) = &chunk {
                pending.fetch_add(c.len(), std::sync::atomic::Ordering::Relaxed);
            }
            chunk
        });
        let mut events = bytes.eventsource();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| e.to_string())?;
            if pending.swap(0, std::sync::atomic::Ordering::Relaxed) > MAX_EVENT_BYTES {
                return Err("an event larger than 1 MiB".into());
            }
            if event.event == "revocation"
                && let Ok(r) = serde_json::from_str::<Revocation>(&event.data)
            {
                self.apply(std::slice::from_ref(&r), now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_applies_revocation_events_and_skips_the_rest() {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let body = ": keep-alive\n\nevent: revocation\nid: 3\ndata: {\"cursor\":3,\"kind\":\"jti\",\"value\":\"j\",\"issued_before\":1,\"revoked_at\":1,\"expires_at\":9999999999}\n\nevent: other\ndata: x\n\n";
        let chunks = futures_util::stream::iter(body.as_bytes().chunks(7).map(|c| Ok::<_, std::io::Error>(c.to_vec())));
        let events: Vec<_> = chunks.eventsource().collect().await;
        let revocations: Vec<Revocation> = events
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.event == "revocation")
            .filter_map(|e| serde_json::from_str(&e.data).ok())
            .collect();
        assert_eq!(revocations.len(), 1, "the comment and the other event are not entries");
        assert_eq!(
            (revocations[0].cursor, revocations[0].kind, revocations[0].value.as_str()),
            (3, RevocationKind::Jti, "j")
        );
    }
}
