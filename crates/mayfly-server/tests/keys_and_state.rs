//! Signing keys (rotation, sealing under the KEK), restarts, and the audit trail.

use mayfly_server::config::Config;
use mayfly_server::ledger::audit::ChainVerifier;
use mayfly_testkit::*;
use serde_json::Value;

async fn issue(srv: &TestServer, k8s: &TestIssuer) -> String {
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotation_signs_with_the_new_key_and_keeps_the_old_one_published() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = TestServer::start(&k8s, &gh).await;
    let before = issue(&srv, &k8s).await;
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    let anon = srv.http.post(format!("{}/v1/keys/rotate", srv.url)).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let r = srv.admin_post("/v1/keys/rotate", None).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    let new_kid = info["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    let after = issue(&srv, &k8s).await;
    assert_eq!(jsonwebtoken::decode_header(&after).unwrap().kid.unwrap(), new_kid, "new key signs at once");
    let jwks = srv.jwks().await;
    assert!(jwks.find(&old_kid).is_some() && jwks.find(&new_kid).is_some(), "both keys published");
    srv.verify(&before, "https://api.test").await;
    srv.verify(&after, "https://api.test").await;

    let keys: Vec<Value> = srv.admin_get("/v1/keys").await;
    let old = keys.iter().find(|k| k["kid"] == old_kid.as_str()).unwrap();
    assert_eq!(old["active"], false);
    // Published at least as long as the longest token lifetime (1h default).
    assert!(old["published_until"].as_i64().unwrap() >= now() + 3600);

    // Keys survive a restart: the old token still verifies against the new process's JWKS.
    let dir = srv.stop().await;
    let srv = TestServer::restart(dir).await;
    let jwks = srv.jwks().await;
    assert!(jwks.find(&old_kid).is_some() && jwks.find(&new_kid).is_some());
    let again = issue(&srv, &k8s).await;
    assert_eq!(jsonwebtoken::decode_header(&again).unwrap().kid.unwrap(), new_kid);
    srv.stop().await;
}

#[tokio::test]
async fn private_keys_are_sealed_and_a_wrong_kek_stops_startup() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let dir = TestDir::new();
    let path = dir.write_config(&TestConfig::standard(&k8s, &gh));
    let srv = TestServer::start_in(dir, &path).await;
    issue(&srv, &k8s).await;
    let dir = srv.stop().await;

    // Files are private to the owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data/admin-token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin token file");
    let data_mode = std::fs::metadata(dir.path().join("data")).unwrap().permissions().mode() & 0o777;
    assert_eq!(data_mode, 0o700);
    for f in ["data/mayfly.db", "data/mayfly.db-wal", "data/mayfly.db-shm"] {
        if let Ok(m) = std::fs::metadata(dir.path().join(f)) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f} is private");
        }
    }

    // The database holds no private key in clear: the raw PKCS#8 prefix of an Ed25519 key never appears.
    let pkcs8_ed25519_prefix = [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
    let stored: Vec<Vec<u8>> = if storage_is_postgres() {
        let keys = open_store(dir.path()).await.signing_keys().await.unwrap();
        assert!(!keys.is_empty());
        keys.into_iter().map(|k| k.sealed_private_key).collect()
    } else {
        // The whole file, whatever table a key might have ended up in.
        vec![std::fs::read(dir.path().join("data/mayfly.db")).unwrap()]
    };
    for bytes in stored {
        assert!(!bytes.windows(pkcs8_ed25519_prefix.len()).any(|w| w == pkcs8_ed25519_prefix));
    }

    write_kek(&dir.path().join("kek"), 0x22);
    let cfg = Config::load(&path).unwrap();
    let err = match mayfly_server::server::start(cfg, None).await {
        Ok(_) => panic!("started with the wrong KEK"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("key-encryption key does not match"), "{err}");

    std::fs::write(dir.path().join("kek"), "not hex").unwrap();
    let cfg = Config::load(&path).unwrap();
    let err = mayfly_server::server::start(cfg, None).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("malformed"), "{err}");
}

#[tokio::test]
async fn a_kek_file_open_to_group_or_others_stops_startup() {
    use std::os::unix::fs::PermissionsExt;
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let dir = TestDir::new();
    let path = dir.write_config(&TestConfig::standard(&k8s, &gh));
    let kek = dir.path().join("kek");
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(mode)).unwrap();
        let cfg = Config::load(&path).unwrap();
        let err = match mayfly_server::server::start(cfg, None).await {
            Ok(_) => panic!("started with a KEK file of mode {mode:o}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&kek.display().to_string()), "names the file: {err}");
        assert!(err.contains(&format!("chmod 600 {}", kek.display())), "says the fix: {err}");
    }
    // Made private, it starts.
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = TestServer::start_in(dir, &path).await;
    srv.stop().await;
}

#[tokio::test]
async fn every_issued_token_is_recorded_and_the_audit_chain_verifies() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = TestServer::start(&k8s, &gh).await;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(issue(&srv, &k8s).await);
    }
    // A denial and a failed attestation are audited too.
    srv.exchange_jwt(&k8s.k8s_token("staging", "web"), "https://api.test").await;
    srv.exchange_jwt("not-a-jwt", "https://api.test").await;
    let join = srv.join_token(None).await;

    let store = srv.running.broker.ledger().store().clone();
    // Failed attestations reach the trail as per-source summaries, a moment later.
    for _ in 0..50 {
        let events = store.audit_events_after(0, 10_000).await.unwrap();
        if events.iter().any(|e| e.kind == "attest.failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for t in &tokens {
        let jti = srv.verify(t, "https://api.test").await["jti"].as_str().unwrap().to_owned();
        let rec = store.credential(&jti).await.unwrap().expect("recorded before delivery");
        assert_eq!(rec.subject, "spiffe://test.example/ns/prod/sa/web");
        assert_eq!(rec.audience, "https://api.test");
    }
    let events = store.audit_events_after(0, 10_000).await.unwrap();
    let mut v = ChainVerifier::default();
    for e in &events {
        v.push(e).unwrap();
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in ["server.started", "token.issued", "policy.denied", "attest.failed", "admin.join_token.created"] {
        assert!(kinds.contains(&k), "{k} audited: {kinds:?}");
    }
    // No secret in the audit trail: neither tokens nor the join token.
    let all: String = events.iter().map(|e| e.detail.clone()).collect();
    for t in &tokens {
        assert!(!all.contains(t.as_str()));
        assert!(!all.contains(t.split('.').nth(2).unwrap()), "no signature");
    }
    assert!(!all.contains(&join));
    assert!(!all.contains(&srv.admin_token));
    srv.stop().await;
}

#[tokio::test]
async fn config_errors_are_clear() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let dir = TestDir::new();
    let path = dir.write_config(&TestConfig::standard(&k8s, &gh));
    let base = std::fs::read_to_string(&path).unwrap();
    let cases = [
        (base.replace("127.0.0.1:0", "0.0.0.0:0"), "not a loopback address and TLS is not configured"),
        (base.replace("trust_domain = \"test.example\"", "trust_domain = \"Bad Domain\""), "trust_domain"),
        (base.replace("[ledger]", "[ledger]\nbogus = 1"), "unknown field"),
        (
            base.replace(
                "audiences = [\"mayfly\"]\n\n[[attest.oidc]]",
                "audiences = [\"mayfly\"]\nalgorithms = [\"HS256\"]\n\n[[attest.oidc]]",
            ),
            "HMAC",
        ),
        (
            base.replace("preset = \"kubernetes\"", "preset = \"kubernetes\"\nspiffe_id_template = \"ns/{namespace\""),
            "unclosed",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&path, &text).unwrap();
        let err = match Config::load(&path) {
            Err(e) => e.to_string(),
            Ok(cfg) => match mayfly_server::server::start(cfg, None).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted a config that should fail: {expected}"),
            },
        };
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    // The loud flag allows plaintext on a non-loopback address.
    std::fs::write(&path, base.replace("127.0.0.1:0\"", "0.0.0.0:0\"\ndangerously_allow_plaintext = true")).unwrap();
    assert!(Config::load(&path).is_ok());
}
