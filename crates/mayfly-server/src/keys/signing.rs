//! One signing key: Ed25519 (`EdDSA`), P-256 (`ES256`) or RSA (`RS256`, for the clouds,
//! none of which accepts EdDSA and Azure only RS256), held as a parsed aws-lc-rs key pair
//! so the hot path never re-parses PKCS#8.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

use super::KeyError;

/// JOSE signing algorithms Mayfly signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// Ed25519.
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl SigningAlg {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::EdDsa => "EdDSA",
            SigningAlg::Es256 => "ES256",
            SigningAlg::Rs256 => "RS256",
        }
    }

    /// Parses a JOSE `alg` name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(SigningAlg::EdDsa),
            "ES256" => Some(SigningAlg::Es256),
            "RS256" => Some(SigningAlg::Rs256),
            _ => None,
        }
    }
}

/// The size of a new RSA key. 2048 bits is what the clouds document; 3072 for a longer horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaBits {
    /// 2048-bit modulus.
    #[default]
    Bits2048,
    /// 3072-bit modulus.
    Bits3072,
}

impl RsaBits {
    /// From a number of bits, if supported.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            2048 => Some(RsaBits::Bits2048),
            3072 => Some(RsaBits::Bits3072),
            _ => None,
        }
    }
}

/// What kind of key to generate: the algorithm, and for RSA the key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// Ed25519.
    EdDsa,
    /// P-256.
    Es256,
    /// RSA of the given size, signing RS256.
    Rs256(RsaBits),
}

impl KeySpec {
    /// The JOSE algorithm a key of this kind signs with.
    pub fn alg(self) -> SigningAlg {
        match self {
            KeySpec::EdDsa => SigningAlg::EdDsa,
            KeySpec::Es256 => SigningAlg::Es256,
            KeySpec::Rs256(_) => SigningAlg::Rs256,
        }
    }
}

impl From<SigningAlg> for KeySpec {
    fn from(alg: SigningAlg) -> Self {
        match alg {
            SigningAlg::EdDsa => KeySpec::EdDsa,
            SigningAlg::Es256 => KeySpec::Es256,
            SigningAlg::Rs256 => KeySpec::Rs256(RsaBits::default()),
        }
    }
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// A private signing key with its public JWK.
pub struct SigningKey {
    kid: String,
    alg: SigningAlg,
    signer: Signer,
    public_jwk: serde_json::Value,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 encoding (to be sealed before storage).
    pub fn generate(spec: impl Into<KeySpec>) -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let keygen = |_| KeyError::Crypto("keygen");
        let spec = spec.into();
        let pkcs8 = match spec {
            KeySpec::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map_err(keygen)?.as_ref().to_vec(),
            KeySpec::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(keygen)?.as_ref().to_vec()
            }
            KeySpec::Rs256(bits) => {
                let size = match bits {
                    RsaBits::Bits2048 => KeySize::Rsa2048,
                    RsaBits::Bits3072 => KeySize::Rsa3072,
                };
                RsaKeyPair::generate(size).map_err(keygen)?.as_der().map_err(keygen)?.as_ref().to_vec()
            }
        };
        let key = Self::from_pkcs8(spec.alg(), &pkcs8)?;
        Ok((key, pkcs8))
    }

    /// Loads a key from PKCS#8; its `kid` is the RFC 7638 thumbprint of its public JWK.
    pub fn from_pkcs8(alg: SigningAlg, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let corrupt = |reason: &str| KeyError::Corrupt { kid: "?".into(), reason: reason.into() };
        let (signer, public_jwk) = match alg {
            SigningAlg::EdDsa => {
                let kp = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| corrupt("not an Ed25519 PKCS#8 key"))?;
                let x = B64.encode(kp.public_key().as_ref());
                (Signer::Ed25519(kp), serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
            }
            SigningAlg::Es256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| corrupt("not a P-256 PKCS#8 key"))?;
                let point = kp.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(corrupt("unexpected P-256 public key encoding"));
                }
                let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..65]));
                (Signer::Es256(kp), serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}))
            }
            SigningAlg::Rs256 => {
                let kp = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| corrupt("not an RSA PKCS#8 key"))?;
                if kp.public_modulus_len() < 256 {
                    return Err(corrupt("RSA keys below 2048 bits are refused"));
                }
                let public = kp.public_key();
                let n = B64.encode(public.modulus().big_endian_without_leading_zero());
                let e = B64.encode(public.exponent().big_endian_without_leading_zero());
                (Signer::Rs256(kp), serde_json::json!({"kty": "RSA", "n": n, "e": e}))
            }
        };
        let kid = jwk_thumbprint(&public_jwk).ok_or_else(|| corrupt("cannot compute thumbprint"))?;
        let mut public_jwk = public_jwk;
        if let Some(obj) = public_jwk.as_object_mut() {
            obj.insert("kid".into(), kid.clone().into());
            obj.insert("alg".into(), alg.as_str().into());
            obj.insert("use".into(), "sig".into());
        }
        Ok(Self { kid, alg, signer, public_jwk, rng: SystemRandom::new() })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JOSE algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.public_jwk
    }

    /// Checks a JWS signature made by this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.signer {
            Signer::Ed25519(kp) => {
                UnparsedPublicKey::new(&ED25519, kp.public_key().as_ref()).verify(message, signature)
            }
            Signer::Es256(kp) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, kp.public_key().as_ref()).verify(message, signature)
            }
            Signer::Rs256(kp) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, kp.public_key().as_ref()).verify(message, signature)
            }
        }
        .is_ok()
    }

    /// Signs a JWS signing input; the result is the raw JWS signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Signer::Es256(kp) => {
                kp.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| KeyError::Crypto("sign"))
            }
            Signer::Rs256(kp) => {
                let mut signature = vec![0; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature).map_err(|_| KeyError::Crypto("sign"))?;
                Ok(signature)
            }
        }
    }

    /// A JWS in compact serialization (RFC 7515 §7.1) of already-serialized header and claims.
    pub fn sign_compact(&self, header: &[u8], claims: &[u8]) -> Result<String, KeyError> {
        let mut token = B64.encode(header);
        token.push('.');
        B64.encode_string(claims, &mut token);
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        B64.encode_string(signature, &mut token);
        Ok(token)
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of a public OKP, EC or RSA JWK.
pub fn jwk_thumbprint(jwk: &serde_json::Value) -> Option<String> {
    let get = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    // Required members only, in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = match get("kty")? {
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, get("crv")?, get("x")?),
        "EC" => format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, get("crv")?, get("x")?, get("y")?),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, get("e")?, get("n")?),
        _ => return None,
    };
    // Member values are base64url or curve names; anything needing JSON escaping is not a valid JWK.
    if canonical.contains('\\') {
        return None;
    }
    Some(B64.encode(Sha256::digest(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The example key of RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(jwk_thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn sign_and_verify_with_every_algorithm() {
        let specs = [
            (KeySpec::EdDsa, 64),
            (KeySpec::Es256, 64),
            (KeySpec::Rs256(RsaBits::Bits2048), 256),
            (KeySpec::Rs256(RsaBits::Bits3072), 384),
        ];
        for (spec, signature_len) in specs {
            let (key, pkcs8) = SigningKey::generate(spec).unwrap();
            let again = SigningKey::from_pkcs8(spec.alg(), &pkcs8).unwrap();
            assert_eq!(key.kid(), again.kid());
            let sig = key.sign(b"payload").unwrap();
            assert_eq!(sig.len(), signature_len, "{spec:?}");
            assert!(again.verify(b"payload", &sig), "{spec:?}");
            assert!(!again.verify(b"payloaD", &sig), "{spec:?}");
            let jwk = key.public_jwk();
            assert_eq!(jwk["alg"], spec.alg().as_str());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], key.kid());
        }
    }

    #[test]
    fn an_rsa_jwk_is_what_a_jose_library_verifies_with() {
        let (key, _) = SigningKey::generate(KeySpec::Rs256(RsaBits::Bits2048)).unwrap();
        let token = key.sign_compact(br#"{"alg":"RS256","typ":"JWT"}"#, br#"{"sub":"x"}"#).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "x");
        // The modulus has no leading zero octet (RFC 7518 §6.3.1.1).
        let n = B64.decode(jwk_str(key.public_jwk(), "n")).unwrap();
        assert_eq!(n.len(), 256);
        assert_ne!(n[0], 0);
    }

    fn jwk_str<'a>(jwk: &'a serde_json::Value, k: &str) -> &'a str {
        jwk[k].as_str().unwrap()
    }
}
