//! Wall-clock helpers: Mayfly stores and compares times as Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Seconds from `now` (Unix) to the start of the next minute, 1 to 60: when a per-minute
/// count starts over (what `Retry-After` says).
pub fn seconds_to_next_minute(now: i64) -> u64 {
    (60 - now.rem_euclid(60)) as u64
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 (UTC, seconds precision) for a Unix time, e.g. `2026-11-23T13:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `N` seconds: a serde default for durations (`#[serde(default = "crate::clock::secs::<30>")]`).
pub fn secs<const N: u64>() -> std::time::Duration {
    std::time::Duration::from_secs(N)
}
