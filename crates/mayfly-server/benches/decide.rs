//! The authorization path: one Cedar decision for a token exchange.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use mayfly_server::attest::WorkloadIdentity;
use mayfly_server::authorize::{ExchangeRequest, PolicyEngine, Principal};
use mayfly_server::spiffe::SpiffeId;

fn decide(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut policies = String::new();
    for i in 0..10 {
        policies.push_str(&format!(
            "@id(\"p{i}\")\npermit (principal, action == Mayfly::Action::\"exchange\", resource == Mayfly::Audience::\"https://api-{i}.example\")\n\
             when {{ principal.hasTag(\"namespace\") && principal.getTag(\"namespace\") == \"prod\" && context.ttl_seconds <= 900 }};\n"
        ));
    }
    policies.push_str(
        "@id(\"no-admin\")\nforbid (principal, action, resource) when { context.scopes.contains(\"admin\") };\n",
    );
    std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let identity = WorkloadIdentity {
        spiffe_id: SpiffeId::parse("spiffe://prod.example/ns/prod/sa/web").unwrap(),
        attestor: "oidc:k8s".into(),
        attributes: BTreeMap::from([
            ("namespace".to_owned(), "prod".to_owned()),
            ("serviceaccount".to_owned(), "web".to_owned()),
            ("pod_uid".to_owned(), "7f0c2a44".to_owned()),
        ]),
    };
    let scopes = vec!["read".to_owned()];
    c.bench_function("cedar decision, 11 policies", |b| {
        b.iter(|| {
            let d = engine.decide_exchange(&ExchangeRequest {
                principal: Principal::Workload(&identity),
                audience: "https://api-3.example",
                scopes: &scopes,
                ttl_seconds: 300,
                source_ip: "127.0.0.1".parse().unwrap(),
                now: 1_800_000_000,
                dpop: false,
                mtls: false,
                max_uses: 0,
            });
            assert!(d.allowed);
        })
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
