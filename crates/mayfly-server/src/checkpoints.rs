//! Signed checkpoints of the audit chain.
//!
//! The hash chain shows an edited or removed event, but not a chain whose tail was cut
//! off, nor one re-hashed from the edit onwards: whoever can write the database can do
//! either and every link still holds. A checkpoint is the chain's head (the last event's
//! `seq` and `hash`) signed with Mayfly's own signing key, as a compact JWS whose `typ`
//! (`mayfly-audit-checkpoint+jwt`) no token verifier accepts. The leader writes one
//! every N events or T seconds (`govern::checkpoints`); operators export them
//! (`mayfly audit checkpoint`) to where the database's writers cannot reach, and
//! `mayfly audit verify --checkpoint FILE` then shows whether the chain still passes
//! through the event the checkpoint names, with the hash it had.
//!
//! A checkpoint is only as good as the key that signed it: it is verified against keys
//! the verifier trusts (the published JWKS, the stored keys the KEK opens, or a JWK the
//! operator kept), never against a key carried in the checkpoint itself.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, SigningKey, jwk_thumbprint};
use crate::ledger::audit::{Anchor, BreakKind, ChainReport, verify_chain_against};
use crate::ledger::{LedgerError, Store, StoredCheckpoint};

/// The JOSE `typ` of a checkpoint: never `at+jwt`, so no verifier of Mayfly's access
/// tokens takes one for a token, and a token is never taken for a checkpoint.
pub const CHECKPOINT_TYP: &str = "mayfly-audit-checkpoint+jwt";

/// How many of the latest stored checkpoints a chain verification checks.
pub const STORED_CHECKPOINTS_CHECKED: i64 = 1000;

/// Longest checkpoint accepted for parsing (a real one is under 500 bytes).
const MAX_CHECKPOINT_LEN: usize = 8 * 1024;

/// What a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointClaims {
    /// The issuer URL of the server that signed it.
    pub iss: String,
    /// The sequence number of the chain's head when it was signed.
    pub seq: i64,
    /// That event's hash (hex SHA-256).
    pub hash: String,
    /// When it was signed (Unix seconds).
    pub iat: i64,
}

/// A checkpoint whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The key that signed it (RFC 7638 thumbprint).
    pub kid: String,
    /// Its JOSE algorithm.
    pub alg: String,
    /// What it says.
    pub claims: CheckpointClaims,
}

impl VerifiedCheckpoint {
    /// The point the chain must still pass through.
    pub fn anchor(&self, source: impl Into<String>) -> Anchor {
        Anchor { seq: self.claims.seq, hash: self.claims.hash.clone(), source: source.into() }
    }
}

/// Why a checkpoint was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a compact JWS with a JSON header and claims.
    #[error("not an audit checkpoint: {0}")]
    Malformed(String),
    /// A JWS of another type (an access token, say).
    #[error("not an audit checkpoint: its typ is {0:?}, not \"mayfly-audit-checkpoint+jwt\"")]
    WrongType(Option<String>),
    /// An algorithm Mayfly does not sign with.
    #[error("checkpoint algorithm {0:?} is not one Mayfly signs with (EdDSA, ES256, RS256)")]
    Algorithm(String),
    /// No trusted key has the checkpoint's `kid`.
    #[error(
        "the key that signed this checkpoint ({kid}) is not among the keys it was checked against: it is not \
         published by this server and not held in its storage (a checkpoint of another deployment, a forged one, \
         or its key was removed); pass the public key saved when the checkpoint was exported with --jwk FILE"
    )]
    UnknownKey {
        /// The checkpoint's `kid`.
        kid: String,
    },
    /// The signature does not verify.
    #[error(
        "the checkpoint's signature does not verify with key {kid}: it was altered after signing, or not signed \
         by that key"
    )]
    BadSignature {
        /// The key tried.
        kid: String,
    },
    /// Signing failed.
    #[error("signing the checkpoint failed: {0}")]
    Sign(#[from] KeyError),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Signs a checkpoint with `key`.
pub fn sign(key: &SigningKey, claims: &CheckpointClaims) -> Result<String, KeyError> {
    let header = serde_json::json!({"alg": key.alg().as_str(), "typ": CHECKPOINT_TYP, "kid": key.kid()});
    let claims = serde_json::to_vec(claims).map_err(|_| KeyError::Crypto("checkpoint claims"))?;
    key.sign_compact(header.to_string().as_bytes(), &claims)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

/// A checkpoint taken apart, its signature not yet checked.
struct Parsed<'a> {
    header: Header,
    claims: CheckpointClaims,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn parse(jws: &str) -> Result<Parsed<'_>, CheckpointError> {
    let bad = |m: &str| CheckpointError::Malformed(m.to_owned());
    let jws = jws.trim();
    if jws.len() > MAX_CHECKPOINT_LEN {
        return Err(bad("longer than any checkpoint"));
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected a compact JWS (three base64url parts separated by dots)"));
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("its header is not base64url JSON with an alg"))?;
    if header.typ.as_deref() != Some(CHECKPOINT_TYP) {
        return Err(CheckpointError::WrongType(header.typ));
    }
    if !matches!(header.alg.as_str(), "EdDSA" | "ES256") {
        return Err(CheckpointError::Algorithm(header.alg));
    }
    let claims: CheckpointClaims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("its claims are not base64url JSON with iss, seq, hash and iat"))?;
    if claims.seq < 1 {
        return Err(bad("seq must be 1 or more"));
    }
    if claims.hash.len() != 64 || !claims.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad("hash must be 64 lowercase hex digits"));
    }
    let signature = B64.decode(s).map_err(|_| bad("its signature is not base64url"))?;
    Ok(Parsed { header, claims, signing_input: &jws[..h.len() + 1 + c.len()], signature })
}

/// What a checkpoint claims, without checking its signature: for display only.
pub fn peek(jws: &str) -> Result<CheckpointClaims, CheckpointError> {
    parse(jws).map(|p| p.claims)
}

/// Verifies a checkpoint against trusted public keys (JWKs): the key whose RFC 7638
/// thumbprint is the checkpoint's `kid` must have signed it.
pub fn verify(jws: &str, keys: &[serde_json::Value]) -> Result<VerifiedCheckpoint, CheckpointError> {
    let p = parse(jws)?;
    let kid = p.header.kid.clone().unwrap_or_default();
    // Matched by thumbprint, not by a `kid` member: a JWK file kept by an operator may have none.
    let Some(jwk) = keys.iter().find(|k| !kid.is_empty() && jwk_thumbprint(k).as_deref() == Some(kid.as_str())) else {
        return Err(CheckpointError::UnknownKey { kid });
    };
    if !signature_verifies(jwk, &p.header.alg, p.signing_input.as_bytes(), &p.signature) {
        return Err(CheckpointError::BadSignature { kid });
    }
    Ok(VerifiedCheckpoint { kid, alg: p.header.alg, claims: p.claims })
}

/// Whether `signature` over `message` verifies with a public JWK of the kind `alg` needs.
fn signature_verifies(jwk: &serde_json::Value, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    let get = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    if get("alg").is_some_and(|a| a != alg) {
        return false;
    }
    let decode = |k: &str| get(k).and_then(|v| B64.decode(v).ok());
    match (alg, get("kty"), get("crv")) {
        ("EdDSA", Some("OKP"), Some("Ed25519")) => decode("x")
            .filter(|x| x.len() == 32)
            .is_some_and(|x| UnparsedPublicKey::new(&ED25519, x).verify(message, signature).is_ok()),
        ("ES256", Some("EC"), Some("P-256")) => match (decode("x"), decode("y")) {
            (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
            _ => false,
        },
        _ => false,
    }
}

/// Walks the audit chain and checks it against the latest stored checkpoints and, when
/// given, an exported one (already verified by the caller). With `keys`, each stored
/// checkpoint's signature is checked first and one that fails is reported; without
/// (the keys cannot be opened here), stored checkpoints are taken at their word.
///
/// Stored checkpoints catch a careless edit; they live in the same database, so whoever
/// rewrites the chain can remove them too. Only an exported one is out of their reach.
pub async fn verify_chain(
    store: &dyn Store,
    keys: Option<&[serde_json::Value]>,
    exported: Option<Anchor>,
) -> Result<ChainReport, LedgerError> {
    let stored = store.latest_audit_checkpoints(STORED_CHECKPOINTS_CHECKED).await?;
    let mut anchors: Vec<Anchor> = Vec::with_capacity(stored.len() + 1);
    let mut refused: Option<String> = None;
    for row in &stored {
        let source = stored_source(row);
        let checked = match keys {
            Some(keys) => verify(&row.jws, keys).map(|v| v.claims),
            None => peek(&row.jws),
        };
        match checked {
            Ok(claims) => anchors.push(Anchor { seq: claims.seq, hash: claims.hash, source }),
            Err(e) => {
                // The latest stored checkpoints come first: report the earliest in the chain.
                refused = Some(format!("{source} is refused: {e}"));
            }
        }
    }
    anchors.extend(exported);
    let mut report = verify_chain_against(store, &anchors).await?;
    if let Some(why) = refused {
        report.fail(BreakKind::BadCheckpoint, why);
    }
    Ok(report)
}

fn stored_source(row: &StoredCheckpoint) -> String {
    format!("the stored checkpoint of event {} (signed {})", row.seq, crate::clock::rfc3339(row.created_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningAlg;

    fn claims() -> CheckpointClaims {
        CheckpointClaims { iss: "https://mayfly.test".into(), seq: 42, hash: "ab".repeat(32), iat: 1_800_000_000 }
    }

    #[test]
    fn signed_checkpoints_verify_with_their_key_only() {
        for alg in [SigningAlg::EdDsa, SigningAlg::Es256] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let (other, _) = SigningKey::generate(alg).unwrap();
            let jws = sign(&key, &claims()).unwrap();
            let v = verify(&jws, &[other.public_jwk().clone(), key.public_jwk().clone()]).unwrap();
            assert_eq!((v.kid.as_str(), v.claims), (key.kid(), claims()));
            // Without its kid and alg members, as an operator may have kept it.
            let mut bare = key.public_jwk().clone();
            bare.as_object_mut().unwrap().retain(|k, _| !["kid", "alg", "use"].contains(&k.as_str()));
            assert!(verify(&jws, &[bare]).is_ok());
            assert!(matches!(verify(&jws, &[other.public_jwk().clone()]), Err(CheckpointError::UnknownKey { .. })));
        }
    }

    #[test]
    fn altered_forged_and_foreign_checkpoints_are_refused() {
        let (key, _) = SigningKey::generate(SigningAlg::EdDsa).unwrap();
        let (attacker, _) = SigningKey::generate(SigningAlg::EdDsa).unwrap();
        let jws = sign(&key, &claims()).unwrap();
        let keys = [key.public_jwk().clone()];

        // Another seq in the payload, the signature kept.
        let parts: Vec<&str> = jws.split('.').collect();
        let mut c = claims();
        c.seq = 7;
        let altered = format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&c).unwrap()), parts[2]);
        assert!(matches!(verify(&altered, &keys), Err(CheckpointError::BadSignature { .. })));

        // Signed by another key but claiming the server's kid.
        let header = serde_json::json!({"alg": "EdDSA", "typ": CHECKPOINT_TYP, "kid": key.kid()});
        let forged = attacker.sign_compact(header.to_string().as_bytes(), &serde_json::to_vec(&c).unwrap()).unwrap();
        assert!(matches!(verify(&forged, &keys), Err(CheckpointError::BadSignature { .. })));

        // An access token (or anything of another typ) is not a checkpoint, whatever it claims.
        let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid()});
        let token = key.sign_compact(header.to_string().as_bytes(), &serde_json::to_vec(&claims()).unwrap()).unwrap();
        assert!(matches!(verify(&token, &keys), Err(CheckpointError::WrongType(Some(t))) if t == "at+jwt"));

        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(matches!(verify(junk, &keys), Err(CheckpointError::Malformed(_))), "{junk}");
        }
        let header = serde_json::json!({"alg": "HS256", "typ": CHECKPOINT_TYP, "kid": key.kid()});
        let hmac = format!("{}.{}.AAAA", B64.encode(header.to_string()), parts[1]);
        assert!(matches!(verify(&hmac, &keys), Err(CheckpointError::Algorithm(_))));
    }
}
