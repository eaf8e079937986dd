//! DPoP proofs (RFC 9449): checked by the broker at the token endpoint and by resource
//! servers on every request with a DPoP-bound token.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::token_cache::TokenCache;

/// Longest proof accepted, in bytes (RFC 9449 proofs are well under 2 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;
/// Proof headers (keys) remembered at once.
const KEY_CACHE_ENTRIES: usize = 10_000;
/// How long a checked proof header is remembered, in seconds.
const KEY_CACHE_SECS: i64 = 600;
/// Members that only private JWKs have.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a proof was refused. The OAuth error code is [`DpopError::error_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Not a compact JWS with JSON parts, too large, or missing a claim.
    #[error("DPoP proof is malformed: {0}")]
    Malformed(String),
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof typ must be dpop+jwt")]
    WrongType,
    /// `alg` is not an asymmetric algorithm Mayfly accepts.
    #[error("DPoP proof algorithm {0:?} is not accepted (use ES256, ES384, EdDSA, RS256, PS256 or similar)")]
    Algorithm(String),
    /// The `jwk` carries private key material.
    #[error("DPoP proof jwk contains a private key")]
    PrivateKey,
    /// The `jwk` is missing or not a usable public key for `alg`.
    #[error("DPoP proof jwk is not a usable public key: {0}")]
    BadKey(String),
    /// The signature does not verify with the embedded key.
    #[error("DPoP proof signature does not verify")]
    BadSignature,
    /// `htm` is not the request's method.
    #[error("DPoP proof htm does not match the request method")]
    WrongMethod,
    /// `htu` is not the request's URL.
    #[error("DPoP proof htu does not match the request URL")]
    WrongUrl,
    /// `iat` is outside the accepted window.
    #[error("DPoP proof iat is outside the accepted window (check the client's clock)")]
    Stale,
    /// The `jti` was seen before.
    #[error("DPoP proof was already used")]
    Replayed,
    /// The replay cache is full of live entries: refused rather than risk a replay.
    #[error("too many DPoP proofs at once; retry shortly")]
    Busy,
    /// `ath` does not match the access token.
    #[error("DPoP proof ath does not match the access token")]
    WrongAccessTokenHash,
    /// The proof's key is not the one the token is bound to.
    #[error("DPoP proof key does not match the token's binding (cnf.jkt)")]
    KeyMismatch,
    /// A fresh server nonce is required; the value is the nonce to use.
    #[error("a DPoP nonce from the server is required")]
    UseNonce(String),
}

impl DpopError {
    /// The RFC 9449 error code: `use_dpop_nonce` or `invalid_dpop_proof`.
    pub fn error_code(&self) -> &'static str {
        match self {
            DpopError::UseNonce(_) => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    /// The nonce to send back in a `DPoP-Nonce` header, if any.
    pub fn nonce(&self) -> Option<&str> {
        match self {
            DpopError::UseNonce(n) => Some(n),
            _ => None,
        }
    }
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key (`cnf.jkt`).
    pub jkt: String,
    /// The proof's `jti`.
    pub jti: String,
    /// The proof's `iat`.
    pub iat: i64,
}

/// A proof that passed every check but single use: its `jti` is not spent yet. The
/// token endpoint spends it only once the request's evidence attested, so that callers
/// who prove nothing cannot fill the replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// The proof as it will be once spent.
    pub proof: DpopProof,
    forget_at: i64,
}

/// What the request looked like, for checking a proof.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The request URL as the client addressed it (scheme, host, port, path).
    pub url: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// The access token presented with the proof (resource servers): `ath` must match.
    pub access_token: Option<&'a str>,
    /// The thumbprint the token is bound to (resource servers): the proof's key must match.
    pub bound_jkt: Option<&'a str>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Value>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// Stateless server nonces: an HMAC over a time window, valid in the current and the previous window.
pub struct NonceSource {
    key: hmac::Key,
    period_secs: i64,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource").field("period_secs", &self.period_secs).finish_non_exhaustive()
    }
}

impl NonceSource {
    /// A nonce source with a random key; nonces change every `period_secs`.
    pub fn random(period_secs: i64) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]));
        Self { key, period_secs: period_secs.max(1) }
    }

    /// A nonce source keyed by `key`: servers that share the key (replicas behind one
    /// load balancer) accept each other's nonces.
    pub fn with_key(key: &[u8], period_secs: i64) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, key), period_secs: period_secs.max(1) }
    }

    fn for_window(&self, window: i64) -> String {
        let tag = hmac::sign(&self.key, &window.to_be_bytes());
        format!("{window:x}.{}", B64.encode(&tag.as_ref()[..16]))
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: i64) -> String {
        self.for_window(now.div_euclid(self.period_secs))
    }

    /// Whether a nonce was handed out in this window or the previous one.
    pub fn is_valid(&self, nonce: &str, now: i64) -> bool {
        let w = now.div_euclid(self.period_secs);
        [w, w - 1].iter().any(|w| {
            let expected = self.for_window(*w);
            expected.len() == nonce.len()
                && aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), nonce.as_bytes()).is_ok()
        })
    }
}

/// Remembers proof `jti`s for the acceptance window, so each proof is used once.
/// Bounded: when full of live entries it refuses new proofs instead of forgetting. Not an
/// evicting cache on purpose: a forgotten `jti` is a proof that can be replayed.
#[derive(Debug)]
pub struct ReplayCache {
    inner: Mutex<ReplayInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct ReplayInner {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl ReplayCache {
    /// A cache for at most `capacity` live proofs.
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(ReplayInner::default()), capacity: capacity.max(1) }
    }

    /// Records `key` until `forget_at`; false if it was seen already.
    fn insert(&self, key: String, forget_at: i64, now: i64) -> Result<(), DpopError> {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((t, _)) = g.order.front() {
            if *t > now {
                break;
            }
            if let Some((_, k)) = g.order.pop_front() {
                g.seen.remove(&k);
            }
        }
        if g.seen.contains_key(&key) {
            return Err(DpopError::Replayed);
        }
        if g.seen.len() >= self.capacity {
            return Err(DpopError::Busy);
        }
        g.seen.insert(key.clone(), forget_at);
        // Entries share one lifetime, so the queue stays ordered by expiry.
        g.order.push_back((forget_at, key));
        Ok(())
    }
}

/// Checks DPoP proofs: type, algorithm, embedded public key, signature, method, URL,
/// age, single use, optional server nonce, and (for resource servers) `ath` and the key binding.
#[derive(Debug)]
pub struct DpopVerifier {
    /// How old a proof may be, in seconds.
    pub max_age_secs: i64,
    /// How far in the future `iat` may be (client clock ahead), in seconds.
    pub max_future_secs: i64,
    replay: ReplayCache,
    nonces: Option<NonceSource>,
    /// Proof headers already checked, by their base64url text.
    keys: TokenCache<Arc<ProofKey>>,
}

impl DpopVerifier {
    /// A verifier accepting proofs up to `max_age_secs` old (and 5 s ahead), remembering
    /// at most `replay_capacity` proofs; with `nonces`, proofs must carry a fresh server nonce.
    pub fn new(max_age_secs: i64, replay_capacity: usize, nonces: Option<NonceSource>) -> Self {
        Self {
            max_age_secs,
            max_future_secs: 5,
            replay: ReplayCache::new(replay_capacity),
            nonces,
            keys: TokenCache::new(KEY_CACHE_ENTRIES),
        }
    }

    /// The nonce to advertise now, when nonces are required.
    pub fn current_nonce(&self, now: i64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(now))
    }

    /// Verifies one proof for one request, and spends its `jti`.
    pub fn verify(&self, proof: &str, cx: &ProofContext<'_>) -> Result<DpopProof, DpopError> {
        let checked = self.check(proof, cx)?;
        self.spend(checked, cx.now)
    }

    /// Spends a checked proof's `jti`: a second use of the same proof is refused.
    pub fn spend(&self, checked: CheckedProof, now: i64) -> Result<DpopProof, DpopError> {
        self.replay.insert(format!("{}:{}", checked.proof.jkt, checked.proof.jti), checked.forget_at, now)?;
        Ok(checked.proof)
    }

    /// Checks one proof for one request without spending its `jti` (see [`CheckedProof`]).
    pub fn check(&self, proof: &str, cx: &ProofContext<'_>) -> Result<CheckedProof, DpopError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(DpopError::Malformed(format!("longer than {MAX_PROOF_BYTES} bytes")));
        }
        let mut parts = proof.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopError::Malformed("not a compact JWS".into()));
        };
        // A client sends the same header (typ, alg, jwk) on every proof: checked once.
        let key = match self.keys.get(header_b64, cx.now) {
            Some(k) => k,
            None => {
                let k = Arc::new(proof_key(header_b64)?);
                self.keys.insert(header_b64, k.clone(), cx.now + KEY_CACHE_SECS, cx.now);
                k
            }
        };
        let signed = &proof.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        if !jsonwebtoken::crypto::verify(signature_b64, signed, &key.decoding, key.alg).unwrap_or(false) {
            return Err(DpopError::BadSignature);
        }
        let claims: ProofClaims = B64
            .decode(payload_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| DpopError::Malformed("the claims are not base64url JSON".into()))?;

        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or_else(|| DpopError::Malformed("jti is missing or too long".into()))?;
        let iat = claims
            .iat
            .as_ref()
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .ok_or_else(|| DpopError::Malformed("iat is missing".into()))?;
        if claims.htm.as_deref() != Some(cx.method) {
            return Err(DpopError::WrongMethod);
        }
        match claims.htu.as_deref() {
            Some(htu) if same_target(htu, cx.url) => {}
            _ => return Err(DpopError::WrongUrl),
        }
        if iat < cx.now - self.max_age_secs || iat > cx.now + self.max_future_secs {
            return Err(DpopError::Stale);
        }
        if let Some(token) = cx.access_token {
            let expected = B64.encode(Sha256::digest(token.as_bytes()));
            if claims.ath.as_deref() != Some(expected.as_str()) {
                return Err(DpopError::WrongAccessTokenHash);
            }
        }
        if cx.bound_jkt.is_some_and(|b| b != key.jkt) {
            return Err(DpopError::KeyMismatch);
        }
        if let Some(nonces) = &self.nonces {
            match claims.nonce.as_deref() {
                Some(n) if nonces.is_valid(n, cx.now) => {}
                _ => return Err(DpopError::UseNonce(nonces.current(cx.now))),
            }
        }
        // Only a proof that passed every check may consume its jti.
        let forget_at = cx.now + self.max_age_secs + self.max_future_secs + 1;
        Ok(CheckedProof { proof: DpopProof { jkt: key.jkt.clone(), jti, iat }, forget_at })
    }
}

/// A proof header that passed its checks: the key to verify with and its thumbprint.
struct ProofKey {
    alg: Algorithm,
    decoding: DecodingKey,
    jkt: String,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey").field("alg", &self.alg).field("jkt", &self.jkt).finish()
    }
}

/// Checks a proof's header: `typ`, an asymmetric `alg`, a public `jwk` usable with it.
fn proof_key(header_b64: &str) -> Result<ProofKey, DpopError> {
    let raw_header: serde_json::Value = B64
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| DpopError::Malformed("the header is not base64url JSON".into()))?;
    if !raw_header.get("typ").and_then(|t| t.as_str()).is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(DpopError::WrongType);
    }
    let alg_name = raw_header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let alg = match alg_name {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        other => return Err(DpopError::Algorithm(other.chars().take(20).collect())),
    };
    let raw_jwk = raw_header.get("jwk").and_then(|j| j.as_object()).ok_or(DpopError::BadKey("no jwk".into()))?;
    if PRIVATE_MEMBERS.iter().any(|m| raw_jwk.contains_key(*m)) {
        return Err(DpopError::PrivateKey);
    }
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(raw_jwk.clone()))
        .map_err(|e| DpopError::BadKey(e.to_string()))?;
    let fits = matches!(
        (&jwk.algorithm, alg),
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) if p.curve == EllipticCurve::P256
    ) || matches!(
        (&jwk.algorithm, alg),
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) if p.curve == EllipticCurve::P384
    ) || matches!(
        (&jwk.algorithm, alg),
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) if p.curve == EllipticCurve::Ed25519
    ) || matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    );
    if !fits {
        return Err(DpopError::BadKey("the key does not fit the algorithm".into()));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| DpopError::BadKey(e.to_string()))?;
    let jkt = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| DpopError::BadKey(e.to_string()))?;
    Ok(ProofKey { alg, decoding, jkt })
}

/// Whether two URLs name the same target for `htu` (RFC 9449 §4.3): scheme, host and
/// port (normalised, default ports dropped) and path; query and fragment ignored.
pub fn same_target(a: &str, b: &str) -> bool {
    // The common case: the client used the URL exactly as addressed (one parse, not two).
    if a == b {
        return reqwest::Url::parse(a).is_ok_and(|u| u.has_host());
    }
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path() == b.path()
        }
        _ => false,
    }
}

/// The `cnf.x5t#S256` of a DER certificate (RFC 8705 §3.1).
pub fn certificate_thumbprint(der: &[u8]) -> String {
    B64.encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_valid_for_two_windows_only() {
        let n = NonceSource::random(60);
        let issued = n.current(1_000);
        assert!(n.is_valid(&issued, 1_000));
        assert!(n.is_valid(&issued, 1_060));
        assert!(!n.is_valid(&issued, 1_200));
        assert!(!n.is_valid("bogus", 1_000));
    }

    #[test]
    fn servers_sharing_a_nonce_key_accept_each_others_nonces() {
        let (a, b, other) = (
            NonceSource::with_key(b"shared", 60),
            NonceSource::with_key(b"shared", 60),
            NonceSource::with_key(b"x", 60),
        );
        let issued = a.current(1_000);
        assert!(b.is_valid(&issued, 1_010), "another replica with the same key");
        assert!(!other.is_valid(&issued, 1_010), "a server with another key");
    }

    #[test]
    fn replay_cache_refuses_a_second_use_and_forgets_after_the_window() {
        let c = ReplayCache::new(2);
        assert!(c.insert("a".into(), 10, 0).is_ok());
        assert_eq!(c.insert("a".into(), 10, 5), Err(DpopError::Replayed));
        assert!(c.insert("b".into(), 10, 5).is_ok());
        assert_eq!(c.insert("c".into(), 11, 5), Err(DpopError::Busy), "full of live entries: refuse");
        assert!(c.insert("a".into(), 20, 10).is_ok(), "forgotten once the window has passed");
    }

    #[test]
    fn htu_comparison_normalises_and_ignores_query() {
        assert!(same_target("https://API.example:443/v1/token?x=1", "https://api.example/v1/token"));
        assert!(!same_target("https://api.example/v1/token", "http://api.example/v1/token"));
        assert!(!same_target("https://api.example/v1/token/", "https://api.example/v1/token"));
        assert!(!same_target("not a url", "not a url"));
    }
}
