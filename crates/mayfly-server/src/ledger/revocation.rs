//! Revocation selectors and the in-memory index that answers "is this credential revoked?".
//!
//! A revocation names a selector (a jti, a subject, a SPIFFE ID prefix, an audience,
//! a task, or "everything issued before T"), so its cost does not grow with the
//! number of credentials it covers.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a revocation selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One credential by `jti` (or lease id).
    Jti,
    /// Every credential of one SPIFFE ID.
    Subject,
    /// Every credential whose SPIFFE ID is the prefix or below it (path-segment boundary).
    SubjectPrefix,
    /// Every credential for one audience.
    Audience,
    /// Every credential issued under one task.
    Task,
    /// Every credential issued at or before `issued_before`.
    IssuedBefore,
}

impl RevocationKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Subject => "subject",
            RevocationKind::SubjectPrefix => "subject_prefix",
            RevocationKind::Audience => "audience",
            RevocationKind::Task => "task",
            RevocationKind::IssuedBefore => "issued_before",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "jti" => RevocationKind::Jti,
            "subject" => RevocationKind::Subject,
            "subject_prefix" => RevocationKind::SubjectPrefix,
            "audience" => RevocationKind::Audience,
            "task" => RevocationKind::Task,
            "issued_before" => RevocationKind::IssuedBefore,
            _ => return None,
        })
    }
}

/// One revocation, as stored and as the feed serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    /// Feed cursor: strictly increasing.
    pub cursor: i64,
    /// What it selects.
    pub kind: RevocationKind,
    /// The jti, SPIFFE ID, prefix, audience or task id; empty for `issued_before`.
    pub value: String,
    /// Covers credentials issued at or before this Unix time.
    pub issued_before: i64,
    /// When it was made (Unix seconds).
    pub revoked_at: i64,
    /// After this Unix time everything it covers has expired, and the entry may be dropped.
    pub expires_at: i64,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

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

/// All revocations in force, indexed for O(1) lookups (prefixes are scanned).
#[derive(Debug, Default, Clone)]
pub struct RevocationIndex {
    jti: HashSet<String>,
    subject: HashMap<String, i64>,
    prefixes: Vec<(String, i64)>,
    audience: HashMap<String, i64>,
    task: HashMap<String, i64>,
    issued_before: i64,
    /// Highest cursor applied.
    pub cursor: i64,
    /// Entries applied (after GC), for metrics.
    pub len: usize,
}

fn raise(map: &mut HashMap<String, i64>, key: &str, t: i64) {
    let e = map.entry(key.to_owned()).or_insert(i64::MIN);
    *e = (*e).max(t);
}

/// Whether `id` is `prefix` or lies below it on a path-segment boundary.
pub fn under_prefix(id: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    id == prefix || (id.starts_with(prefix) && id.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl RevocationIndex {
    /// Adds an entry (idempotent).
    pub fn apply(&mut self, r: &Revocation) {
        match r.kind {
            RevocationKind::Jti => {
                self.jti.insert(r.value.clone());
            }
            RevocationKind::Subject => raise(&mut self.subject, &r.value, r.issued_before),
            RevocationKind::SubjectPrefix => match self.prefixes.iter_mut().find(|(p, _)| *p == r.value) {
                Some((_, t)) => *t = (*t).max(r.issued_before),
                None => self.prefixes.push((r.value.clone(), r.issued_before)),
            },
            RevocationKind::Audience => raise(&mut self.audience, &r.value, r.issued_before),
            RevocationKind::Task => raise(&mut self.task, &r.value, r.issued_before),
            RevocationKind::IssuedBefore => self.issued_before = self.issued_before.max(r.issued_before),
        }
        self.cursor = self.cursor.max(r.cursor);
        self.len += 1;
    }

    /// Which rule revokes this credential, if any.
    pub fn revoked_by(&self, c: &CredentialFacts<'_>) -> Option<RevocationKind> {
        let covers = |t: Option<&i64>| t.is_some_and(|t| c.issued_at <= *t);
        if self.jti.contains(c.jti) {
            return Some(RevocationKind::Jti);
        }
        if c.issued_at <= self.issued_before {
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
        if self.prefixes.iter().any(|(p, t)| c.issued_at <= *t && under_prefix(c.subject, p)) {
            return Some(RevocationKind::SubjectPrefix);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: RevocationKind, value: &str, before: i64) -> Revocation {
        Revocation {
            cursor: 1,
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
        assert!(!under_prefix("spiffe://td/ab", "spiffe://td/a"));
    }
}
