//! Keys the test holds: an OIDC issuer that signs platform tokens, and a client's DPoP key.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{MAYFLY_AUDIENCE, now, random_id};

enum TestKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// An OIDC issuer under the test's control: RS256, ES256 and EdDSA keys.
pub struct TestIssuer {
    /// Its `iss`.
    pub issuer: String,
    keys: Vec<(String, &'static str, TestKey)>,
}

impl TestIssuer {
    /// An issuer named `issuer` with freshly generated keys (`rsa-1`, `ec-1`, `ed-1`).
    pub fn new(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref()).unwrap();
        let ed = Ed25519KeyPair::generate().unwrap();
        Self {
            issuer: issuer.to_owned(),
            keys: vec![
                ("rsa-1".into(), "RS256", TestKey::Rsa(rsa)),
                ("ec-1".into(), "ES256", TestKey::Ec(ec)),
                ("ed-1".into(), "EdDSA", TestKey::Ed(ed)),
            ],
        }
    }

    /// The public keys, as the issuer would publish them.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, alg, k)| match k {
                TestKey::Rsa(kp) => {
                    let pk = kp.public_key();
                    json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                           "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
                           "e": B64.encode(pk.exponent().big_endian_without_leading_zero())})
                }
                TestKey::Ec(kp) => {
                    let p = kp.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": alg, "use": "sig",
                           "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
                }
                TestKey::Ed(kp) => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": alg, "use": "sig",
                                           "x": B64.encode(kp.public_key().as_ref())}),
            })
            .collect();
        json!({ "keys": keys })
    }

    fn rsa(&self) -> &RsaKeyPair {
        match &self.keys[0].2 {
            TestKey::Rsa(kp) => kp,
            _ => unreachable!("the first key is the RSA key"),
        }
    }

    /// The RSA public key as the JWK-ish bytes an HMAC confusion attack would use as a secret.
    pub fn rsa_public_n(&self) -> Vec<u8> {
        self.rsa().public_key().modulus().big_endian_without_leading_zero().to_vec()
    }

    /// The RSA public key as PEM (SubjectPublicKeyInfo), for verifiers that take PEM.
    pub fn rsa_public_pem(&self) -> String {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let spki = AsDer::<PublicKeyX509Der>::as_der(self.rsa().public_key()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// Signs `claims` with the key for `alg`; `header` fields override the defaults (null removes one).
    pub fn sign_with(&self, alg: &str, header: Value, claims: &Value) -> String {
        let (kid, _, key) = self.keys.iter().find(|(_, a, _)| *a == alg).expect("test key for alg");
        let mut h = json!({"alg": alg, "typ": "JWT", "kid": kid});
        if let (Some(h), Some(extra)) = (h.as_object_mut(), header.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    h.remove(k);
                } else {
                    h.insert(k.clone(), v.clone());
                }
            }
        }
        let input = format!("{}.{}", B64.encode(h.to_string()), B64.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let sig = match key {
            TestKey::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            TestKey::Ec(kp) => kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            TestKey::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }

    /// Signs `claims` with the key for `alg`.
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        self.sign_with(alg, json!({}), claims)
    }

    /// Claims of a Kubernetes projected service-account token, valid for ten minutes.
    pub fn k8s_claims(&self, ns: &str, sa: &str) -> Value {
        let t = now();
        json!({
            "iss": self.issuer, "aud": [MAYFLY_AUDIENCE], "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "iat": t, "nbf": t, "exp": t + 600,
            "kubernetes.io": {
                "namespace": ns,
                "serviceaccount": {"name": sa, "uid": "1b9c3d1e-0000-4000-8000-000000000001"},
                "pod": {"name": format!("{sa}-7d9f"), "uid": "7f0c2a44-0000-4000-8000-000000000002"},
                "node": {"name": "node-1", "uid": "0d1e2f3a-0000-4000-8000-000000000003"}
            }
        })
    }

    /// A Kubernetes service-account token of `ns`/`sa`, signed RS256.
    pub fn k8s_token(&self, ns: &str, sa: &str) -> String {
        self.sign("RS256", &self.k8s_claims(ns, sa))
    }
}

/// A client's DPoP key and proofs made with jsonwebtoken (not Mayfly's own JOSE code).
pub struct DpopKey {
    encoding: jsonwebtoken::EncodingKey,
    /// The public key, as it goes in a proof's header.
    pub jwk: Value,
}

impl Default for DpopKey {
    fn default() -> Self {
        Self::new()
    }
}

impl DpopKey {
    /// A fresh P-256 key.
    pub fn new() -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let p = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
        Self { encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    /// RFC 7638 thumbprint, computed here from the members in lexicographic order.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A proof with exactly these claims.
    pub fn proof_with(&self, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// A fresh proof for `method` on `url`, bound to `access_token` when given.
    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        let mut claims = json!({"jti": random_id(), "htm": method, "htu": url, "iat": now()});
        if let Some(t) = access_token {
            claims["ath"] = json!(B64.encode(Sha256::digest(t.as_bytes())));
        }
        self.proof_with(claims)
    }
}
