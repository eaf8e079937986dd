//! Following the broker's revocation feed: the event stream, with a polling fallback.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mayfly_proto::RevocationPage;

use crate::now;
use crate::revocation::{CredentialFacts, Revocation, RevocationIndex, RevocationKind};

/// How long to wait before reconnecting after the stream fails.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often to poll while the stream is down.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The revocations a resource server knows of, kept current from the broker's feed.
#[derive(Debug, Default)]
pub struct RevocationFollower {
    index: RwLock<RevocationIndex>,
}

impl RevocationFollower {
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
            let entries: Vec<Revocation> =
                page.entries.into_iter().filter_map(|e| serde_json::from_value(e).ok()).collect();
            if entries.is_empty() {
                return Ok(applied);
            }
            applied += entries.len();
            self.apply(&entries, now());
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
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
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

    /// Runs until the task is dropped: stream, and while the stream is down, poll.
    pub async fn run(self: Arc<Self>, http: reqwest::Client, base: String, credential: String) {
        loop {
            if let Err(e) = self.stream(&http, &base, &credential).await {
                tracing::warn!(error = %e, "revocation stream failed; polling until it reconnects");
            }
            let reconnect_at = tokio::time::Instant::now() + RECONNECT_DELAY;
            while tokio::time::Instant::now() < reconnect_at {
                if let Err(e) = self.poll(&http, &base, &credential).await {
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
