//! Delegation: who a task may act for. Acting for a subject takes either proof from that
//! subject (RFC 8693 delegation: its own token as `subject_token`, the caller's evidence
//! as `actor_token`) or an explicit Cedar permission (`Action::"act_for"` on
//! `Mayfly::Subject::"<subject>"`, denied by default). A SPIFFE ID of the trust domain
//! (a workload or a task of this Mayfly) can only be acted for with its proof.

use crate::spiffe::SpiffeId;

/// Longest subject a task may act for.
pub const MAX_SUBJECT_CHARS: usize = 512;

/// How a task came to act for its subject, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delegation {
    /// The subject's own token was presented (RFC 8693 `subject_token` + `actor_token`).
    Proof,
    /// Policy permits the caller to act for the subject (`act_for`).
    Policy,
}

impl Delegation {
    /// The name in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Delegation::Proof => "proof",
            Delegation::Policy => "policy",
        }
    }
}

/// Why a named subject cannot be acted for as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty, too long, or with whitespace or control characters.
    #[error("on_behalf_of must be 1 to {MAX_SUBJECT_CHARS} printable characters without spaces")]
    Malformed,
    /// It looks like a SPIFFE ID but is not a valid one.
    #[error("on_behalf_of {0:?} looks like a SPIFFE ID but is not a valid one")]
    BadSpiffeId(String),
    /// A SPIFFE ID of this trust domain, named without its proof.
    #[error(
        "{0} is an identity of this trust domain: acting for it needs its proof (send its token as subject_token and your own evidence as actor_token)"
    )]
    NeedsProof(String),
}

/// What kind of subject `on_behalf_of` names when no proof comes with it: a SPIFFE ID of
/// another trust domain or an opaque name (`user:alice`) may be acted for by policy; a
/// SPIFFE ID of `trust_domain` never without its proof. Any value that mentions the
/// `spiffe:` scheme must be a whole, valid SPIFFE ID, so a variant spelling cannot pass
/// for one of this trust domain's identities at a resource server.
pub fn check_named_subject(subject: &str, trust_domain: &str) -> Result<(), SubjectError> {
    if subject.is_empty()
        || subject.chars().count() > MAX_SUBJECT_CHARS
        || subject.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SubjectError::Malformed);
    }
    if !subject.to_ascii_lowercase().contains("spiffe:") {
        return Ok(());
    }
    let id = SpiffeId::parse(subject).map_err(|_| SubjectError::BadSpiffeId(subject.chars().take(100).collect()))?;
    if id.to_string() != subject {
        return Err(SubjectError::BadSpiffeId(subject.chars().take(100).collect()));
    }
    if id.trust_domain() == trust_domain {
        return Err(SubjectError::NeedsProof(subject.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_trust_domain_needs_proof_and_spellings_do_not_slip_through() {
        let td = "dev.mayfly.local";
        assert_eq!(check_named_subject("user:alice", td), Ok(()));
        assert_eq!(check_named_subject("spiffe://partner.example/svc/a", td), Ok(()));
        for own in ["spiffe://dev.mayfly.local/dev/workload", "spiffe://dev.mayfly.local/task/abc"] {
            assert_eq!(check_named_subject(own, td), Err(SubjectError::NeedsProof(own.into())));
        }
        for variant in [
            "SPIFFE://dev.mayfly.local/dev/workload",
            "spiffe://dev.mayfly.local/dev/workload/",
            "spiffe://dev.mayfly.local//dev/workload",
            "x-spiffe://dev.mayfly.local/dev/workload",
            "user:spiffe://dev.mayfly.local/dev/workload",
        ] {
            assert!(matches!(check_named_subject(variant, td), Err(SubjectError::BadSpiffeId(_))), "{variant}");
        }
        for bad in ["", " user:alice", "user alice", "user:\u{7}"] {
            assert_eq!(check_named_subject(bad, td), Err(SubjectError::Malformed), "{bad:?}");
        }
    }
}
