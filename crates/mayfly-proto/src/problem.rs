//! The kinds of RFC 9457 problem Mayfly answers with: one name, one `type` URN and one
//! title each, shared by the server (which answers with them) and clients (which match
//! on them), so a slug cannot drift between the two.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every problem `type` starts with; the slug follows.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:mayfly:problem:";

macro_rules! problem_kinds {
    ($( $(#[doc = $doc:expr])* $variant:ident => $slug:literal, $title:literal; )*) => {
        /// A kind of problem: the `type` of an RFC 9457 problem document Mayfly answers with.
        ///
        /// On the wire (serde) it is the `type` URN, `urn:mayfly:problem:<slug>`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProblemKind {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ProblemKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ProblemKind] = &[ $( ProblemKind::$variant, )* ];

            /// The stable slug, e.g. `policy-denied`.
            pub const fn slug(self) -> &'static str {
                match self {
                    $( ProblemKind::$variant => $slug, )*
                }
            }

            /// The short human-readable summary, the same for every occurrence (RFC 9457 §3.1.3).
            pub const fn title(self) -> &'static str {
                match self {
                    $( ProblemKind::$variant => $title, )*
                }
            }

            /// The kind a slug names, if any.
            pub fn from_slug(slug: &str) -> Option<ProblemKind> {
                match slug {
                    $( $slug => Some(ProblemKind::$variant), )*
                    _ => None,
                }
            }

            /// The full `type` URN, e.g. `urn:mayfly:problem:policy-denied`.
            pub const fn type_uri(self) -> &'static str {
                match self {
                    $( ProblemKind::$variant => concat!("urn:mayfly:problem:", $slug), )*
                }
            }
        }
    };
}

problem_kinds! {
    // 400: the request.
    /// A request that is malformed in a way no more specific kind names.
    InvalidRequest => "invalid-request", "Invalid request";
    /// A body that is not valid JSON (or not the JSON expected).
    InvalidJson => "invalid-json", "Invalid JSON";
    /// A `since` cursor that is not one a previous page gave.
    InvalidCursor => "invalid-cursor", "Invalid cursor";
    /// A signal that is malformed or not accepted.
    InvalidSignal => "invalid-signal", "Invalid signal";
    /// A revocation selector that is malformed.
    InvalidSelector => "invalid-selector", "Invalid revocation selector";
    /// A `grant_type` other than token exchange.
    UnsupportedGrantType => "unsupported-grant-type", "Unsupported grant type";
    /// An audience or resource that is missing, repeated or not acceptable.
    InvalidTarget => "invalid-target", "Invalid target";
    /// A scope that is malformed or not offered for this audience.
    InvalidScope => "invalid-scope", "Invalid scope";
    /// A DPoP proof that was refused (RFC 9449).
    InvalidDpopProof => "invalid-dpop-proof", "Invalid DPoP proof";
    /// A DPoP proof without the server's nonce (RFC 9449 §8).
    UseDpopNonce => "use-dpop-nonce", "DPoP nonce required";
    // 400: the subject token (attestation).
    /// A subject token that cannot be parsed.
    MalformedSubjectToken => "malformed-subject-token", "Attestation failed";
    /// A `subject_token_type` Mayfly does not attest.
    UnsupportedTokenType => "unsupported-token-type", "Attestation failed";
    /// A subject token from an issuer that is not configured.
    UnknownIssuer => "unknown-issuer", "Attestation failed";
    /// A subject token signed with an algorithm that is not allowed.
    AlgorithmNotAllowed => "algorithm-not-allowed", "Attestation failed";
    /// A subject token signed with a key its issuer does not publish.
    UnknownSigningKey => "unknown-signing-key", "Attestation failed";
    /// A subject token whose signature does not verify.
    BadSignature => "bad-signature", "Attestation failed";
    /// A subject token that has expired.
    SubjectTokenExpired => "subject-token-expired", "Attestation failed";
    /// A subject token that is not valid yet.
    SubjectTokenNotYetValid => "subject-token-not-yet-valid", "Attestation failed";
    /// A subject token issued longer ago than allowed.
    SubjectTokenTooOld => "subject-token-too-old", "Attestation failed";
    /// A subject token for another audience.
    WrongAudience => "wrong-audience", "Attestation failed";
    /// A subject token with a missing or unacceptable claim.
    BadClaim => "bad-claim", "Attestation failed";
    /// Evidence that maps to no identity.
    IdentityMappingFailed => "identity-mapping-failed", "Attestation failed";
    /// A join token that does not exist.
    JoinTokenUnknown => "join-token-unknown", "Attestation failed";
    /// A join token that was redeemed before.
    JoinTokenUsed => "join-token-used", "Attestation failed";
    /// A join token that has expired.
    JoinTokenExpired => "join-token-expired", "Attestation failed";
    /// A task token that does not verify.
    InvalidTaskToken => "invalid-task-token", "Attestation failed";
    /// A Mayfly access token presented as a workload's identity that does not verify or cannot serve.
    InvalidAccessToken => "invalid-access-token", "Attestation failed";
    /// A task token for a task that is not active.
    TaskNotActive => "task-not-active", "Attestation failed";
    /// Local (Unix socket) attestation that failed.
    UnixAttestationFailed => "unix-attestation-failed", "Attestation failed";
    /// Evidence of a revoked subject.
    SubjectRevoked => "subject-revoked", "Attestation failed";
    // 401, 403.
    /// A missing or wrong admin (or verifier) token.
    Unauthorized => "unauthorized", "Unauthorized";
    /// Denied by policy.
    PolicyDenied => "policy-denied", "Denied by policy";
    /// A task waiting for approval: nothing is issued under it yet.
    TaskPending => "task-pending", "Task waiting for approval";
    /// Not allowed, for a reason that is not policy (ownership, a rule of tasks).
    Forbidden => "forbidden", "Forbidden";
    /// A task that re-attestation just ended.
    TaskEnded => "task-ended", "Task ended";
    /// A revocation in force (a block) covers what would be issued.
    IssuanceBlocked => "issuance-blocked", "Issuance blocked by a revocation";
    // 404, 405, 408, 409, 413, 415, 431.
    /// No such route or object.
    NotFound => "not-found", "Not found";
    /// A revocation selector that matches no live credential.
    NothingToRevoke => "nothing-to-revoke", "Nothing matches";
    /// A method the route does not allow.
    MethodNotAllowed => "method-not-allowed", "Method not allowed";
    /// A request not completed within `listen.request_timeout`.
    RequestTimeout => "request-timeout", "Request timeout";
    /// An object not in a state that allows this.
    Conflict => "conflict", "Conflict";
    /// A body over the size limit.
    PayloadTooLarge => "payload-too-large", "Payload too large";
    /// A body of a media type not accepted here.
    UnsupportedMediaType => "unsupported-media-type", "Unsupported media type";
    /// More header fields than `listen.max_headers`.
    HeaderFieldsTooLarge => "header-fields-too-large", "Request header fields too large";
    // 5xx.
    /// Minting (signing) a credential failed.
    IssueFailed => "issue-failed", "Issuance failed";
    /// Rotating the signing key failed.
    KeyRotationFailed => "key-rotation-failed", "Key rotation failed";
    /// A database role is misconfigured.
    DatabaseMisconfigured => "database-misconfigured", "Database misconfigured";
    /// A database refused a role's statement.
    DatabaseRefused => "database-refused", "Database refused";
    /// A cloud (AWS STS) refused the exchange; `detail` holds its error code.
    CloudRefused => "cloud-refused", "Cloud refused";
    /// A cloud (AWS STS) could not be reached or answered something unexpected.
    CloudUnavailable => "cloud-unavailable", "Cloud unavailable";
    /// An upstream's own authorization server refused or could not be reached when the
    /// proxy's credential for it was fetched (OAuth client credentials).
    UpstreamCredentialFailed => "upstream-credential-failed", "Upstream credential failed";
    /// The proxy does not know who is calling: no or an unusable `Proxy-Authorization`.
    ProxyAuthenticationRequired => "proxy-authentication-required", "Proxy authentication required";
    /// The proxy does not go there: no upstream names the host, and tunnelling is off
    /// (or the address is internal and not allowed).
    DestinationRefused => "destination-refused", "Destination refused";
    /// The proxy could not reach the upstream, or it did not answer in time.
    UpstreamUnreachable => "upstream-unreachable", "Upstream unreachable";
    /// Too many requests from this caller to this upstream in the current minute.
    RateLimited => "rate-limited", "Rate limited";
    /// A database could not be reached.
    DatabaseUnavailable => "database-unavailable", "Database unavailable";
    /// An issuer's keys (JWKS) could not be fetched.
    JwksUnavailable => "jwks-unavailable", "Attestation unavailable";
    /// Mayfly's own storage (the ledger) failed: nothing was done; retry.
    StorageUnavailable => "storage-unavailable", "Storage unavailable";
    /// The server cannot serve this now (too busy, interrupted); retry later.
    Unavailable => "unavailable", "Service unavailable";
}

impl ProblemKind {
    /// The kind a `type` URN names, if it is one of Mayfly's.
    pub fn from_type_uri(uri: &str) -> Option<ProblemKind> {
        uri.strip_prefix(PROBLEM_TYPE_PREFIX).and_then(ProblemKind::from_slug)
    }
}

impl fmt::Display for ProblemKind {
    /// The slug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// A string that names no Mayfly problem kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProblemKind(pub String);

impl fmt::Display for UnknownProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a Mayfly problem type", self.0)
    }
}

impl std::error::Error for UnknownProblemKind {}

impl FromStr for ProblemKind {
    type Err = UnknownProblemKind;

    /// Accepts the `type` URN or the bare slug.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProblemKind::from_type_uri(s)
            .or_else(|| ProblemKind::from_slug(s))
            .ok_or_else(|| UnknownProblemKind(s.to_owned()))
    }
}

impl Serialize for ProblemKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.type_uri())
    }
}

impl<'de> Deserialize<'de> for ProblemKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_kind_round_trips_and_slugs_are_unique() {
        let mut seen = HashSet::new();
        for &k in ProblemKind::ALL {
            assert!(seen.insert(k.slug()), "slug {} is used twice", k.slug());
            assert_eq!(ProblemKind::from_slug(k.slug()), Some(k));
            assert_eq!(k.type_uri(), format!("{PROBLEM_TYPE_PREFIX}{}", k.slug()));
            assert_eq!(ProblemKind::from_type_uri(k.type_uri()), Some(k));
            assert_eq!(k.type_uri().parse::<ProblemKind>(), Ok(k));
            assert_eq!(k.slug().parse::<ProblemKind>(), Ok(k));
            let json = serde_json::to_string(&k).expect("serialises");
            assert_eq!(json, format!("\"{}\"", k.type_uri()));
            assert_eq!(serde_json::from_str::<ProblemKind>(&json).expect("deserialises"), k);
            assert!(!k.title().is_empty());
            assert!(k.slug().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{}", k.slug());
        }
    }

    #[test]
    fn one_slug_for_storage_and_unknown_slugs_are_refused() {
        assert_eq!(ProblemKind::from_slug("ledger-unavailable"), None);
        assert_eq!(ProblemKind::StorageUnavailable.type_uri(), "urn:mayfly:problem:storage-unavailable");
        assert!("urn:mayfly:problem:no-such-thing".parse::<ProblemKind>().is_err());
        assert!("urn:other:problem:conflict".parse::<ProblemKind>().is_err());
        assert!(serde_json::from_str::<ProblemKind>("\"urn:mayfly:problem:nope\"").is_err());
    }
}
