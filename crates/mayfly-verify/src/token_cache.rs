//! A bounded memory of tokens already verified, keyed by the SHA-256 of the token,
//! each entry trusted until a given time. Used where re-checking a signature on
//! every presentation of the same bytes is the largest cost.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Verified tokens and what their verification produced.
#[derive(Debug)]
pub struct TokenCache<V> {
    entries: Mutex<HashMap<[u8; 32], (V, i64)>>,
    capacity: usize,
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The remembered value for `token`, if it is still trusted at `now`.
    pub fn get(&self, token: &str, now: i64) -> Option<V> {
        let key = digest(token);
        let entries = self.entries.lock().ok()?;
        entries.get(&key).filter(|(_, until)| *until > now).map(|(v, _)| v.clone())
    }

    /// Remembers `value` for `token` until `until`. When full, expired entries go
    /// first, then everything: the cache only ever saves work, never decides.
    pub fn insert(&self, token: &str, value: V, until: i64, now: i64) {
        let key = digest(token);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                entries.retain(|_, (_, u)| *u > now);
                if entries.len() >= self.capacity {
                    entries.clear();
                }
            }
            entries.insert(key, (value, until));
        }
    }

    /// Forgets everything (e.g. when the keys that vouched for the entries change).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
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
        let c = TokenCache::new(2);
        c.insert("a", 1, 100, 0);
        assert_eq!(c.get("a", 99), Some(1));
        assert_eq!(c.get("a", 100), None, "not trusted at or past its time");
        c.insert("b", 2, 50, 0);
        c.insert("c", 3, 200, 60); // full: "b" (expired at 60) goes
        assert_eq!(c.get("c", 60), Some(3));
        assert_eq!(c.get("a", 60), Some(1));
        c.clear();
        assert_eq!(c.get("a", 60), None);
    }
}
