//! The signing path: minting an RFC 9068 token with the active key.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mayfly_server::issue::{AccessTokenRequest, JwtIssuer};
use mayfly_server::keys::{Kek, KeyRing, SigningAlg};
use mayfly_server::ledger::sqlite::SqliteStore;

fn signing(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let scopes = vec!["read".to_owned(), "write".to_owned()];
    for alg in [SigningAlg::EdDsa, SigningAlg::Es256] {
        let ring = rt.block_on(async {
            let store = SqliteStore::in_memory().await.unwrap();
            KeyRing::load_or_create(&store, &kek, alg).await.unwrap()
        });
        let issuer = JwtIssuer::new(Arc::new(ring), "https://mayfly.example".into());
        c.bench_function(&format!("issue access token {}", alg.as_str()), |b| {
            b.iter(|| {
                issuer
                    .issue(&AccessTokenRequest {
                        subject: "spiffe://prod.example/ns/payments/sa/api",
                        audience: "https://payments.prod.example",
                        client_id: "spiffe://prod.example/ns/payments/sa/api",
                        scopes: &scopes,
                        ttl_seconds: 300,
                        now: 1_800_000_000,
                        task_id: None,
                        act: None,
                        cnf: None,
                        max_uses: None,
                    })
                    .unwrap()
            })
        });
    }
    c.bench_function("keyed fingerprint (HMAC-SHA-256) of a token", |b| {
        let token = "x".repeat(600);
        b.iter(|| kek.fingerprint(token.as_bytes()))
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
