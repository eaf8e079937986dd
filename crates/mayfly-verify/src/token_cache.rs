//! A bounded memory of tokens already verified, keyed by the SHA-256 of the token,
//! each entry trusted until a given time. Used where re-checking a signature on
//! every presentation of the same bytes is the largest cost. Backed by `quick_cache`
//! (sharded, S3-FIFO eviction): when full, the entries least worth keeping go one by one,
//! instead of the whole memory at once.

use sha2::{Digest, Sha256};

/// Verified tokens and what their verification produced.
pub struct TokenCache<V: Clone> {
    entries: quick_cache::sync::Cache<[u8; 32], (V, i64)>,
}

impl<V: Clone> std::fmt::Debug for TokenCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("len", &self.entries.len()).finish()
    }
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self { entries: quick_cache::sync::Cache::new(capacity.max(1)) }
    }

    /// The remembered value for `token`, if it is still trusted at `now`.
    pub fn get(&self, token: &str, now: i64) -> Option<V> {
        self.entries.get(&digest(token)).filter(|(_, until)| *until > now).map(|(v, _)| v)
    }

    /// Remembers `value` for `token` until `until`. The cache only ever saves work,
    /// never decides: what it forgets is verified again.
    pub fn insert(&self, token: &str, value: V, until: i64, now: i64) {
        if until > now {
            self.entries.insert(digest(token), (value, until));
        }
    }

    /// Forgets everything (e.g. when the keys that vouched for the entries change).
    pub fn clear(&self) {
        self.entries.clear();
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_kept() {
        let c = TokenCache::new(100);
        c.insert("a", 1, 100, 0);
        assert_eq!(c.get("a", 99), Some(1));
        assert_eq!(c.get("a", 100), None, "not trusted at or past its time");
        c.insert("dead", 2, 50, 60);
        assert_eq!(c.get("dead", 40), None, "an entry already past its time is not kept");
        for i in 0..1000 {
            c.insert(&format!("t{i}"), i, 200, 0);
        }
        assert!(c.entries.len() <= 100 + 100 / 4, "bounded: {}", c.entries.len());
        assert!((900..1000).any(|i| c.get(&format!("t{i}"), 1) == Some(i)), "recent entries stay");
        c.clear();
        assert_eq!(c.get("t999", 1), None);
    }
}
