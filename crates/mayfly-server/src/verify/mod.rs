//! Verification of Mayfly's own access tokens, as the broker itself does it for
//! introspection and for callers of its protected endpoints.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;

use crate::keys::KeyRing;
use crate::ledger::RevocationKind;
use crate::ledger::Revocations;
use crate::token_cache::TokenCache;

/// Clock skew allowed on `nbf`.
const LEEWAY_SECS: i64 = 30;

pub use mayfly_verify::AccessClaims;

/// Why a token is not valid. Deliberately coarse towards callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a compact JWS with JSON parts, or too large.
    #[error("token is malformed")]
    Malformed,
    /// Not `typ: at+jwt`, or an algorithm Mayfly does not sign with.
    #[error("token is not a Mayfly access token")]
    WrongType,
    /// Signed by no published key, or the signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// Another issuer.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// Past `exp`.
    #[error("token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// Another audience.
    #[error("token is for another audience")]
    WrongAudience,
    /// Revoked.
    #[error("token has been revoked ({})", .0.as_str())]
    Revoked(RevocationKind),
    /// A limited-use token whose uses are spent.
    #[error("token has been used as many times as it may be")]
    UsedUp,
    /// Presented from another context than it was issued in.
    #[error("token was issued in another context ({0} differs)")]
    ContextMismatch(String),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Most tokens whose signature check is remembered.
const VERIFIED_CACHE_ENTRIES: usize = 50_000;

/// Verifies Mayfly access tokens against the key ring and the revocation index.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Arc<KeyRing>,
    revocations: Arc<Revocations>,
    issuer: String,
    /// Claims of tokens whose signature was checked, by SHA-256 of the token. A token's
    /// bytes never change, so only its lifetime and revocation need checking again;
    /// this saves the signature verification, the largest cost of an introspection.
    /// Retired keys stay published until every token they signed has expired, so a
    /// remembered signature never outlives its key.
    verified: Arc<TokenCache<Arc<AccessClaims>>>,
}

impl TokenVerifier {
    /// A verifier for tokens with `iss = issuer`.
    pub fn new(keys: Arc<KeyRing>, revocations: Arc<Revocations>, issuer: String) -> Self {
        Self { keys, revocations, issuer, verified: Arc::new(TokenCache::new(VERIFIED_CACHE_ENTRIES)) }
    }

    /// Verifies signature, type, issuer, lifetime, optional audience, and revocation.
    pub fn verify(&self, token: &str, audience: Option<&str>, now: i64) -> Result<AccessClaims, VerifyError> {
        let claims = match self.verified.get(token, now) {
            Some(c) => c,
            None => {
                let c = Arc::new(self.check_signature_and_issuer(token)?);
                self.verified.insert(token, c.clone(), c.exp, now);
                c
            }
        };
        if claims.exp <= now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
            return Err(VerifyError::NotYetValid);
        }
        if audience.is_some_and(|a| a != claims.aud) {
            return Err(VerifyError::WrongAudience);
        }
        if let Some(kind) = self.revocations.revoked_by(&claims.facts()) {
            return Err(VerifyError::Revoked(kind));
        }
        Ok(AccessClaims::clone(&claims))
    }

    /// The expensive, time-independent part: shape, type, signature, issuer.
    fn check_signature_and_issuer(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        if token.len() > 16 * 1024 {
            return Err(VerifyError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(VerifyError::Malformed);
        };
        let header: Header =
            B64.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(VerifyError::Malformed)?;
        if header.typ.as_deref().map(str::to_ascii_lowercase).as_deref() != Some("at+jwt") {
            return Err(VerifyError::WrongType);
        }
        let key = header.kid.as_deref().and_then(|kid| self.keys.find(kid)).ok_or(VerifyError::BadSignature)?;
        if key.alg().as_str() != header.alg {
            return Err(VerifyError::BadSignature);
        }
        let signature = B64.decode(s).map_err(|_| VerifyError::Malformed)?;
        if !key.verify(&token.as_bytes()[..h.len() + 1 + p.len()], &signature) {
            return Err(VerifyError::BadSignature);
        }
        let claims: AccessClaims =
            B64.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(VerifyError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        Ok(claims)
    }
}
