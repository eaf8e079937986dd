//! SPIFFE IDs: parsing and the validation rules of the SPIFFE-ID specification.

use std::fmt;

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The scheme is not `spiffe://`.
    #[error("a SPIFFE ID starts with spiffe://")]
    Scheme,
    /// The trust domain is empty or has characters outside `[a-z0-9.-_]`.
    #[error("trust domain must be non-empty and use only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain,
    /// A path segment is empty, `.`/`..`, or has characters outside `[A-Za-z0-9.-_]`.
    #[error(
        "path segment {0:?} is not allowed: segments are non-empty, not '.' or '..', and use only letters, digits, '.', '-' and '_'"
    )]
    Segment(String),
    /// Longer than the 2048 bytes the specification allows.
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
}

/// A validated SPIFFE ID: `spiffe://<trust domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parses and validates a full SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        Self::new(td, path.trim_start_matches('/'))
    }

    /// Builds a SPIFFE ID from a trust domain and a path (without the leading `/`).
    pub fn new(trust_domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        let path = validate_path(path)?;
        let id = Self { trust_domain: trust_domain.to_owned(), path };
        if id.to_string().len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(id)
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, with its leading `/` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// The first path segments Mayfly keeps for identities it makes itself: tasks
/// (`task/<id>`) and node agents (`agent/…`). Templates, join tokens and registration
/// entries cannot produce IDs under them.
pub const RESERVED_PREFIXES: [&str; 2] = ["task", "agent"];

/// Whether an ID lies under a reserved prefix.
pub fn is_reserved(id: &SpiffeId) -> bool {
    let first = id.path().trim_start_matches('/').split('/').next().unwrap_or("");
    RESERVED_PREFIXES.contains(&first)
}

/// Checks a trust domain name against the SPIFFE character set.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok { Ok(()) } else { Err(SpiffeIdError::TrustDomain) }
}

fn validate_path(path: &str) -> Result<String, SpiffeIdError> {
    if path.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::with_capacity(path.len() + 1);
    for seg in path.split('/') {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            return Err(SpiffeIdError::Segment(seg.chars().take(64).collect()));
        }
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://prod.example/ns/default/sa/web");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "http://x/y",
            "spiffe:///a",
            "spiffe://UPPER/a",
            "spiffe://td/a//b",
            "spiffe://td/a/../b",
            "spiffe://td/a/./b",
            "spiffe://td/a b",
            "spiffe://td/a/",
            "spiffe://td/é",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
