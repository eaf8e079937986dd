//! Per-key quotas on what a client holds at once (connections per address, revocation
//! streams per verifier): one client cannot take every slot of a global bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// How many places each key holds, at most `most` each.
#[derive(Debug)]
pub struct Quota<K: Eq + Hash + Clone> {
    most: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One place of a [`Quota`], given back when dropped.
#[derive(Debug)]
pub struct Place<K: Eq + Hash + Clone> {
    of: Arc<Quota<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Quota<K> {
    /// At most `most` places per key (at least one).
    pub fn new(most: usize) -> Arc<Self> {
        Arc::new(Self { most: most.max(1), held: Mutex::new(HashMap::new()) })
    }

    /// The most places one key may hold.
    pub fn most(&self) -> usize {
        self.most
    }

    /// One more place for `key`, unless it holds the most already.
    pub fn take(self: &Arc<Self>, key: K) -> Option<Place<K>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(key.clone()).or_default();
        if *n >= self.most {
            return None;
        }
        *n += 1;
        Some(Place { of: self.clone(), key })
    }
}

impl<K: Eq + Hash + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.of.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_come_back_when_dropped() {
        let q = Quota::new(2);
        let (a, b) = (q.take("x").unwrap(), q.take("x").unwrap());
        assert!(q.take("x").is_none(), "the third is refused");
        assert!(q.take("y").is_some(), "another key has its own");
        drop(a);
        assert!(q.take("x").is_some());
        drop(b);
        assert!(q.held.lock().unwrap().is_empty(), "a key holding nothing is forgotten");
    }
}
