//! The revocation index: answers "is this credential revoked?" from the feed's entries.
//!
//! A revocation names a selector (a jti, a subject, a SPIFFE ID prefix, an audience,
//! a task, or "everything issued before T"), so its cost does not grow with the
//! number of credentials it covers. It covers what was issued at or before its
//! `issued_before`; a *block* sets that time in the future, so nothing the selector
//! covers can be issued until then, and a *lift* brings it back to the moment of the
//! lift. The broker and resource servers (through [`crate::RevocationFollower`]) keep
//! the same index, so both hold the same semantics.

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
    /// A lift came after the last revocation: the selector's blocks are over.
    lifted: bool,
    /// What no lift takes back: everything issued until each revocation was made (a lift
    /// stamped by a clock behind the revoking one must not lower a revocation itself).
    floor: i64,
}

impl Reach {
    const NONE: Reach = Reach { issued_before: i64::MIN, expires_at: i64::MIN, lifted: false, floor: i64::MIN };

    /// Applies one entry: a revocation widens the reach, a lift ends what lies past its
    /// time (a block), and what was issued before it stays covered.
    fn merge(&mut self, r: &Revocation) {
        if r.lift {
            self.issued_before = self.issued_before.min(r.issued_before).max(self.floor);
            self.expires_at = self.expires_at.min(r.expires_at);
            self.lifted = true;
        } else {
            self.issued_before = self.issued_before.max(r.issued_before);
            self.expires_at = self.expires_at.max(r.expires_at);
            self.floor = self.floor.max(r.issued_before.min(r.revoked_at));
            self.lifted = false;
        }
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
    // A lift of a selector that is not in force has nothing to end.
    if r.lift && !map.contains_key(&r.value) {
        return;
    }
    map.entry(r.value.clone()).or_insert(Reach::NONE).merge(r);
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
                None if r.lift => {}
                None => {
                    let mut reach = Reach::NONE;
                    reach.merge(r);
                    self.prefixes.push((r.value.clone(), reach));
                }
            },
            RevocationKind::Audience => merge_into(&mut self.audience, r),
            RevocationKind::Task => merge_into(&mut self.task, r),
            RevocationKind::IssuedBefore => match &mut self.issued_before {
                Some(reach) => reach.merge(r),
                None if r.lift => {}
                None => self.issued_before.get_or_insert(Reach::NONE).merge(r),
            },
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

    /// Whether a subject or subject-prefix revocation in force, not lifted since, names
    /// `subject`, whenever its credentials were issued: an identity whose evidence is
    /// always fresh (a Workload API caller, attested by the kernel at each call) is not
    /// re-issued while it stands.
    pub fn names_subject(&self, subject: &str) -> bool {
        self.subject.get(subject).is_some_and(|r| !r.lifted)
            || self.prefixes.iter().any(|(p, r)| !r.lifted && under_prefix(subject, p))
    }

    /// Which subject or subject-prefix revocation covers evidence of `subject` minted at
    /// `minted_at` (a platform token's `iat`, a join token's creation, a task's start):
    /// evidence from before a revocation is as dead as the credentials it got, and a
    /// block covers all evidence until it ends.
    pub fn subject_revoked(&self, subject: &str, minted_at: i64) -> Option<RevocationKind> {
        if self.subject.get(subject).is_some_and(|r| minted_at <= r.issued_before) {
            return Some(RevocationKind::Subject);
        }
        self.prefixes
            .iter()
            .any(|(p, r)| minted_at <= r.issued_before && under_prefix(subject, p))
            .then_some(RevocationKind::SubjectPrefix)
    }

    /// Whether a revocation of exactly this selector is in force and not lifted since.
    pub fn in_force(&self, kind: RevocationKind, value: &str) -> bool {
        let live = |r: Option<&Reach>| r.is_some_and(|r| !r.lifted);
        match kind {
            RevocationKind::Jti => self.jti.contains_key(value),
            RevocationKind::Subject => live(self.subject.get(value)),
            RevocationKind::SubjectPrefix => live(self.prefixes.iter().find(|(p, _)| p == value).map(|(_, r)| r)),
            RevocationKind::Audience => live(self.audience.get(value)),
            RevocationKind::Task => live(self.task.get(value)),
            RevocationKind::IssuedBefore => live(self.issued_before.as_ref()),
        }
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
            lift: false,
        }
    }

    #[test]
    fn a_block_covers_until_it_is_lifted_and_what_it_revoked_stays_revoked() {
        let sub = "spiffe://td/ns/prod/sa/web";
        let c = |issued_at| CredentialFacts { jti: "j", subject: sub, audience: "a", task_id: None, issued_at };
        let mut idx = RevocationIndex::default();
        // Revoked at 100, blocked until i64::MAX (until lifted).
        idx.apply(&Revocation {
            issued_before: i64::MAX,
            expires_at: i64::MAX,
            ..rev(RevocationKind::Subject, sub, 100)
        });
        assert_eq!(idx.revoked_by(&c(50)), Some(RevocationKind::Subject));
        assert_eq!(idx.revoked_by(&c(5000)), Some(RevocationKind::Subject), "nothing is issued during a block");
        assert_eq!(idx.subject_revoked(sub, 5000), Some(RevocationKind::Subject), "all evidence is refused");
        assert!(idx.names_subject(sub));
        // Lifted at 200: what came before stays revoked, what comes after is not.
        idx.apply(&Revocation { lift: true, expires_at: 200 + 3600, ..rev(RevocationKind::Subject, sub, 200) });
        assert_eq!(idx.revoked_by(&c(150)), Some(RevocationKind::Subject));
        assert_eq!(idx.revoked_by(&c(201)), None);
        assert_eq!(idx.subject_revoked(sub, 201), None);
        assert_eq!(idx.subject_revoked(sub, 199), Some(RevocationKind::Subject), "old evidence stays dead");
        assert!(!idx.names_subject(sub), "a lifted block no longer stops fresh identities");
        idx.prune(200 + 3600);
        assert!(idx.is_empty(), "the lift brought the entry's end back");
        // A lift of nothing in force changes nothing; a prefix block covers what lies below.
        let mut idx = RevocationIndex::default();
        idx.apply(&Revocation { lift: true, ..rev(RevocationKind::SubjectPrefix, "spiffe://td/ns", 300) });
        assert!(idx.is_empty());
        idx.apply(&Revocation { issued_before: 1000, ..rev(RevocationKind::SubjectPrefix, "spiffe://td/ns", 300) });
        assert_eq!(idx.subject_revoked(sub, 999), Some(RevocationKind::SubjectPrefix));
        assert_eq!(idx.subject_revoked(sub, 1001), None, "a block for a stated time ends by itself");
        assert_eq!(idx.subject_revoked("spiffe://td/nsx/a", 999), None);
        // A lift stamped before the revocation itself (a clock behind) cannot lower it.
        let mut idx = RevocationIndex::default();
        idx.apply(&rev(RevocationKind::Subject, sub, 500));
        idx.apply(&Revocation { lift: true, ..rev(RevocationKind::Subject, sub, 400) });
        assert_eq!(idx.subject_revoked(sub, 450), Some(RevocationKind::Subject));
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
