//! The revocation index: answers "is this credential revoked?" from the feed's entries.
//!
//! A revocation names a selector (a jti, a subject, a SPIFFE ID prefix, an audience,
//! a task, or "everything issued before T"), so its cost does not grow with the
//! number of credentials it covers. The broker and resource servers (through
//! [`crate::RevocationFollower`]) keep the same index.

use std::collections::HashMap;

pub use mayfly_proto::{Revocation, RevocationKind};

/// The facts of a credential that revocations match on.
#[derive(Debug, Clone, Copy)]
pub struct CredentialFacts<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `sub`.
    pub subject: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// The task it was issued under.
    pub task_id: Option<&'a str>,
    /// `iat`.
    pub issued_at: i64,
}

/// A selector's reach: credentials issued at or before `issued_before`; the entry
/// can go once `expires_at` has passed (everything it covers has expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reach {
    issued_before: i64,
    expires_at: i64,
}

impl Reach {
    fn merge(&mut self, r: &Revocation) {
        self.issued_before = self.issued_before.max(r.issued_before);
        self.expires_at = self.expires_at.max(r.expires_at);
    }
}

/// All revocations in force, indexed for O(1) lookups (prefixes are scanned).
#[derive(Debug, Default, Clone)]
pub struct RevocationIndex {
    jti: HashMap<String, i64>,
    subject: HashMap<String, Reach>,
    prefixes: Vec<(String, Reach)>,
    audience: HashMap<String, Reach>,
    task: HashMap<String, Reach>,
    issued_before: Option<Reach>,
    /// Highest cursor applied. Entries are applied in cursor order only.
    pub cursor: i64,
}

fn merge_into(map: &mut HashMap<String, Reach>, r: &Revocation) {
    map.entry(r.value.clone()).or_insert(Reach { issued_before: i64::MIN, expires_at: i64::MIN }).merge(r);
}

/// Whether `id` is `prefix` or lies below it on a path-segment boundary.
pub fn under_prefix(id: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    id == prefix || (id.starts_with(prefix) && id.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl RevocationIndex {
    /// Adds the next entry. Callers apply entries in cursor order (as storage returns
    /// them); an entry at or below the cursor was applied already and is ignored.
    pub fn apply(&mut self, r: &Revocation) -> bool {
        if r.cursor <= self.cursor {
            return false;
        }
        match r.kind {
            RevocationKind::Jti => {
                let e = self.jti.entry(r.value.clone()).or_insert(i64::MIN);
                *e = (*e).max(r.expires_at);
            }
            RevocationKind::Subject => merge_into(&mut self.subject, r),
            RevocationKind::SubjectPrefix => match self.prefixes.iter_mut().find(|(p, _)| *p == r.value) {
                Some((_, reach)) => reach.merge(r),
                None => self
                    .prefixes
                    .push((r.value.clone(), Reach { issued_before: r.issued_before, expires_at: r.expires_at })),
            },
            RevocationKind::Audience => merge_into(&mut self.audience, r),
            RevocationKind::Task => merge_into(&mut self.task, r),
            RevocationKind::IssuedBefore => {
                self.issued_before.get_or_insert(Reach { issued_before: i64::MIN, expires_at: i64::MIN }).merge(r);
            }
        }
        self.cursor = r.cursor;
        true
    }

    /// Forgets entries whose covered credentials have all expired by `now`.
    pub fn prune(&mut self, now: i64) {
        self.jti.retain(|_, exp| *exp > now);
        for map in [&mut self.subject, &mut self.audience, &mut self.task] {
            map.retain(|_, r| r.expires_at > now);
        }
        self.prefixes.retain(|(_, r)| r.expires_at > now);
        if self.issued_before.is_some_and(|r| r.expires_at <= now) {
            self.issued_before = None;
        }
    }

    /// Entries in force (merged per selector value).
    pub fn len(&self) -> usize {
        self.jti.len()
            + self.subject.len()
            + self.prefixes.len()
            + self.audience.len()
            + self.task.len()
            + usize::from(self.issued_before.is_some())
    }

    /// Whether a subject or subject-prefix revocation in force names `subject`, whenever
    /// its credentials were issued: identities re-issued on demand (Workload API SVIDs)
    /// are not re-issued while it stands.
    pub fn names_subject(&self, subject: &str) -> bool {
        self.subject.contains_key(subject) || self.prefixes.iter().any(|(p, _)| under_prefix(subject, p))
    }

    /// Whether no revocation is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which rule revokes this credential, if any.
    pub fn revoked_by(&self, c: &CredentialFacts<'_>) -> Option<RevocationKind> {
        let covers = |r: Option<&Reach>| r.is_some_and(|r| c.issued_at <= r.issued_before);
        if self.jti.contains_key(c.jti) {
            return Some(RevocationKind::Jti);
        }
        if covers(self.issued_before.as_ref()) {
            return Some(RevocationKind::IssuedBefore);
        }
        if covers(self.subject.get(c.subject)) {
            return Some(RevocationKind::Subject);
        }
        if covers(self.audience.get(c.audience)) {
            return Some(RevocationKind::Audience);
        }
        if c.task_id.is_some_and(|t| covers(self.task.get(t))) {
            return Some(RevocationKind::Task);
        }
        if self.prefixes.iter().any(|(p, r)| c.issued_at <= r.issued_before && under_prefix(c.subject, p)) {
            return Some(RevocationKind::SubjectPrefix);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: RevocationKind, value: &str, before: i64) -> Revocation {
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        Revocation {
            cursor: NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            kind,
            value: value.into(),
            issued_before: before,
            revoked_at: before,
            expires_at: before + 3600,
            reason: None,
        }
    }

    #[test]
    fn selectors_match_what_they_name_and_nothing_else() {
        let c = CredentialFacts {
            jti: "j1",
            subject: "spiffe://td/ns/prod/sa/web",
            audience: "a",
            task_id: Some("t1"),
            issued_at: 100,
        };
        let mut idx = RevocationIndex::default();
        assert_eq!(idx.revoked_by(&c), None);
        idx.apply(&rev(RevocationKind::SubjectPrefix, "spiffe://td/ns/pro", 200));
        assert_eq!(idx.revoked_by(&c), None, "prefix matches whole path segments only");
        idx.apply(&rev(RevocationKind::Subject, "spiffe://td/ns/prod/sa/web", 50));
        assert_eq!(idx.revoked_by(&c), None, "issued after the revocation");
        idx.apply(&rev(RevocationKind::SubjectPrefix, "spiffe://td/ns/prod", 200));
        assert_eq!(idx.revoked_by(&c), Some(RevocationKind::SubjectPrefix));

        let mut idx = RevocationIndex::default();
        idx.apply(&rev(RevocationKind::Task, "t1", 100));
        assert_eq!(idx.revoked_by(&c), Some(RevocationKind::Task));
        let mut idx = RevocationIndex::default();
        idx.apply(&rev(RevocationKind::IssuedBefore, "", 99));
        assert_eq!(idx.revoked_by(&c), None);
        idx.apply(&rev(RevocationKind::IssuedBefore, "", 100));
        assert_eq!(idx.revoked_by(&c), Some(RevocationKind::IssuedBefore));
        assert!(under_prefix("spiffe://td/a/b", "spiffe://td/a/"));
        // Out-of-order application is refused; pruning drops what has fully expired.
        let mut idx = RevocationIndex::default();
        let later = rev(RevocationKind::Jti, "j2", 100);
        let earlier = Revocation { cursor: later.cursor - 1, ..rev(RevocationKind::Jti, "j1", 100) };
        assert!(idx.apply(&later));
        assert!(!idx.apply(&earlier), "applied in cursor order only");
        idx.prune(100 + 3600);
        assert!(idx.is_empty());
        assert!(!under_prefix("spiffe://td/ab", "spiffe://td/a"));
    }
}
