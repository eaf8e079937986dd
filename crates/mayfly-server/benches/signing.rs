//! The signing path: minting an RFC 9068 token with the active key, and SPIFFE SVIDs.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mayfly_server::issue::svid::{SvidAuthorities, SvidLifetimes};
use mayfly_server::issue::{AccessTokenRequest, JwtIssuer};
use mayfly_server::keys::config::KeysConfig;
use mayfly_server::keys::{DEFAULT_PROFILE, Kek, KeyRing, KeySpec, RsaBits, SigningProfile};
use mayfly_server::ledger::sqlite::SqliteStore;

fn signing(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let scopes = vec!["read".to_owned(), "write".to_owned()];
    for spec in [KeySpec::EdDsa, KeySpec::Es256, KeySpec::Rs256(RsaBits::Bits2048)] {
        let ring = rt.block_on(async {
            let store = SqliteStore::in_memory().await.unwrap();
            let profile = SigningProfile { name: DEFAULT_PROFILE.into(), spec, lead_secs: 0 };
            KeyRing::load_or_create(&store, &kek, vec![profile], 3600).await.unwrap()
        });
        let issuer = JwtIssuer::new(Arc::new(ring), "https://mayfly.example".into(), &KeysConfig::default());
        c.bench_function(&format!("issue access token {}", spec.alg().as_str()), |b| {
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
                        context: None,
                    })
                    .unwrap()
            })
        });
    }
    let svids = rt.block_on(async {
        let store = SqliteStore::in_memory().await.unwrap();
        let lifetimes = SvidLifetimes { ca_ttl_secs: 7 * 86400, max_svid_ttl_secs: 86400 };
        SvidAuthorities::load_or_create(&store, &kek, "prod.example", lifetimes).await.unwrap()
    });
    c.bench_function("mint X.509-SVID (P-256 key generation + CA signature)", |b| {
        b.iter(|| svids.mint_x509("spiffe://prod.example/billing/api", &[], 3600, 1_800_000_000).unwrap())
    });
    let audiences = vec!["https://payments.prod.example".to_owned()];
    c.bench_function("mint JWT-SVID (ES256)", |b| {
        b.iter(|| svids.mint_jwt("spiffe://prod.example/billing/api", &audiences, 300, 1_800_000_000).unwrap())
    });
    c.bench_function("keyed fingerprint (HMAC-SHA-256) of a token", |b| {
        let token = "x".repeat(600);
        b.iter(|| kek.fingerprint(token.as_bytes()))
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
