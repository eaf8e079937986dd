//! Runtime-bound credentials: DPoP (RFC 9449), limited use, and the `mayfly-verify`
//! SDK in a resource server. Proofs are made with `jsonwebtoken` (an independent JOSE
//! implementation), not with Mayfly's own code.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mayfly_testkit::*;
use mayfly_verify::{RequireMayflyToken, Verified, Verifier, VerifierConfig};
use serde_json::{Value, json};

/// An unsigned JWS-shaped proof with a chosen header (for malformed cases).
fn raw_proof(header: Value, claims: Value) -> String {
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode([0u8; 64]))
}

async fn dpop_exchange(
    srv: &TestServer,
    k8s: &TestIssuer,
    proof: &str,
    aud: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let token = k8s.k8s_token("prod", "web");
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("audience", aud),
    ];
    form.extend_from_slice(extra);
    srv.http.post(format!("{}/v1/token", srv.url)).header("DPoP", proof).form(&form).send().await.unwrap()
}

const DPOP_POLICY: &str = r#"
@id("once-for-prod")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://once.test")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("infra-verifies-api")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"urn:mayfly:introspect:https://api.test")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "infra" };

@id("payments-needs-dpop")
forbid (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test")
when { context.scopes.contains("pay") && !context.dpop };
"#;

async fn start(extra_toml: &str) -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let config = TestConfig::standard(&k8s, &gh).add_policies(DPOP_POLICY).toml(extra_toml);
    (TestServer::start_with(config).await, k8s)
}

#[tokio::test]
async fn a_dpop_proof_binds_the_token_to_the_key_and_each_proof_works_once() {
    let (srv, k8s) = start("").await;
    let key = DpopKey::new();
    let token_url = format!("{}/v1/token", srv.url);
    let proof = key.proof("POST", &token_url, None);
    let r = dpop_exchange(&srv, &k8s, &proof, "https://api.test", &[]).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "DPoP");
    let claims = srv.verify(v["access_token"].as_str().unwrap(), "https://api.test").await;
    assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "cnf.jkt is the RFC 7638 thumbprint of the proof key");

    // The same proof again: refused.
    let r = dpop_exchange(&srv, &k8s, &proof, "https://api.test", &[]).await;
    let p = assert_problem(r, 400, "invalid-dpop-proof").await;
    assert_eq!(p["error"], "invalid_dpop_proof");
    // A proof for another method or another URL: refused.
    let r = dpop_exchange(&srv, &k8s, &key.proof("GET", &token_url, None), "https://api.test", &[]).await;
    assert_problem(r, 400, "invalid-dpop-proof").await;
    let r = dpop_exchange(
        &srv,
        &k8s,
        &key.proof("POST", "https://elsewhere.example/v1/token", None),
        "https://api.test",
        &[],
    )
    .await;
    assert_problem(r, 400, "invalid-dpop-proof").await;

    // Policy can require DPoP: the "pay" scope is refused without a proof.
    let r = srv.exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://api.test", &[("scope", "pay")]).await;
    assert_problem(r, 403, "policy-denied").await;
    let r =
        dpop_exchange(&srv, &k8s, &key.proof("POST", &token_url, None), "https://api.test", &[("scope", "pay")]).await;
    assert_eq!(r.status(), 200);

    // Introspection names the binding.
    let r = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(&srv.admin_token)
        .form(&[("token", v["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    let i: Value = r.json().await.unwrap();
    assert_eq!(i["token_type"], "DPoP");
    assert_eq!(i["cnf"]["jkt"], key.thumbprint());
    srv.stop().await;
}

#[tokio::test]
async fn bad_proofs_are_refused_with_rfc9449_errors_and_spend_nothing() {
    let (srv, k8s) = start("").await;
    let key = DpopKey::new();
    let url = format!("{}/v1/token", srv.url);
    let claims = json!({"jti": "j1", "htm": "POST", "htu": url, "iat": now()});
    let cases = [
        ("alg none", raw_proof(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}), claims.clone())),
        ("HMAC", raw_proof(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk}), claims.clone())),
        ("wrong typ", raw_proof(json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk}), claims.clone())),
        ("no jwk", raw_proof(json!({"typ": "dpop+jwt", "alg": "ES256"}), claims.clone())),
        ("private key", {
            let mut jwk = key.jwk.clone();
            jwk["d"] = json!(B64.encode([7u8; 32]));
            raw_proof(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}), claims.clone())
        }),
        ("bad signature", raw_proof(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk}), claims.clone())),
        ("old iat", key.proof_with(json!({"jti": "j2", "htm": "POST", "htu": url, "iat": now() - 600}))),
        ("future iat", key.proof_with(json!({"jti": "j3", "htm": "POST", "htu": url, "iat": now() + 600}))),
        ("no jti", key.proof_with(json!({"htm": "POST", "htu": url, "iat": now()}))),
        ("huge", "a".repeat(20_000)),
        ("garbage", "not.a.proof".to_owned()),
    ];
    for (what, proof) in cases {
        let r = dpop_exchange(&srv, &k8s, &proof, "https://api.test", &[]).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{what}: {body}");
    }
    // A join token is not spent by a request whose proof fails.
    let join = srv.join_token(None).await;
    let bad = raw_proof(json!({"typ": "dpop+jwt", "alg": "none"}), claims.clone());
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", join.as_str()),
        ("subject_token_type", JOIN_TYPE),
        ("audience", "https://api.test"),
    ];
    let r = srv.http.post(format!("{}/v1/token", srv.url)).header("DPoP", bad).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(srv.exchange(&form).await.status(), 200, "the join token still works");
    srv.stop().await;
}

#[tokio::test]
async fn server_nonces_are_required_when_configured() {
    let (srv, k8s) = start("[dpop]\nrequire_nonce = true\n").await;
    let key = DpopKey::new();
    let url = format!("{}/v1/token", srv.url);
    let r = dpop_exchange(&srv, &k8s, &key.proof("POST", &url, None), "https://api.test", &[]).await;
    let nonce = r.headers().get("dpop-nonce").expect("DPoP-Nonce header").to_str().unwrap().to_owned();
    let p = assert_problem(r, 400, "use-dpop-nonce").await;
    assert_eq!(p["error"], "use_dpop_nonce");
    let proof = key.proof_with(json!({"jti": random_id(), "htm": "POST", "htu": url, "iat": now(), "nonce": nonce}));
    let r = dpop_exchange(&srv, &k8s, &proof, "https://api.test", &[]).await;
    assert_eq!(r.status(), 200);
    let proof =
        key.proof_with(json!({"jti": random_id(), "htm": "POST", "htu": url, "iat": now(), "nonce": "made-up"}));
    let r = dpop_exchange(&srv, &k8s, &proof, "https://api.test", &[]).await;
    assert_problem(r, 400, "use-dpop-nonce").await;
    srv.stop().await;
}

/// A resource server using the SDK's layer, on loopback. Returns its URL.
async fn resource_server(verifier: std::sync::Arc<Verifier>) -> String {
    let app = axum::Router::new()
        .route(
            "/data",
            axum::routing::get(|v: axum::Extension<Verified>| async move { format!("hello {}", v.claims.sub) }),
        )
        .layer(RequireMayflyToken::new(verifier));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_sdk_refuses_copied_tokens_replayed_proofs_and_revoked_tokens() {
    let (srv, k8s) = start("").await;
    let mut cfg = VerifierConfig::new(srv.url.clone(), "https://api.test");
    cfg.feed_credential = Some(srv.admin_token.clone());
    let verifier = Verifier::new(cfg).await.unwrap();
    let rs = resource_server(verifier.clone()).await;
    let data = format!("{rs}/data");
    let get = |auth: String, proof: Option<String>| {
        let (http, data) = (srv.http.clone(), data.clone());
        async move {
            let mut req = http.get(&data).header("Authorization", auth);
            if let Some(p) = proof {
                req = req.header("DPoP", p);
            }
            req.send().await.unwrap()
        }
    };

    // A bearer token works as a bearer token.
    let bearer =
        srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await.json::<Value>().await.unwrap();
    let bearer = bearer["access_token"].as_str().unwrap().to_owned();
    let r = get(format!("Bearer {bearer}"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello spiffe://test.example/ns/prod/sa/web");
    assert_eq!(get("Bearer nonsense".into(), None).await.status(), 401);
    assert_eq!(get(format!("DPoP {bearer}"), Some("x".into())).await.status(), 401, "an unbound token is not DPoP");

    // A DPoP-bound token works only with a fresh proof by its key.
    let key = DpopKey::new();
    let r =
        dpop_exchange(&srv, &k8s, &key.proof("POST", &format!("{}/v1/token", srv.url), None), "https://api.test", &[])
            .await;
    let bound = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let proof = key.proof("GET", &data, Some(&bound));
    assert_eq!(get(format!("DPoP {bound}"), Some(proof.clone())).await.status(), 200);
    let replay = get(format!("DPoP {bound}"), Some(proof)).await;
    assert_eq!(replay.status(), 401, "a replayed proof is refused");
    assert!(replay.headers()["www-authenticate"].to_str().unwrap().contains("invalid_dpop_proof"));
    // Copied to a client without the key: as a bearer token, or with a proof by another key.
    let copied = get(format!("Bearer {bound}"), None).await;
    assert_eq!(copied.status(), 401);
    let thief = DpopKey::new();
    assert_eq!(get(format!("DPoP {bound}"), Some(thief.proof("GET", &data, Some(&bound)))).await.status(), 401);
    // A proof for another URL or without ath is refused.
    assert_eq!(
        get(format!("DPoP {bound}"), Some(key.proof("GET", "http://other.example/data", Some(&bound)))).await.status(),
        401
    );
    assert_eq!(get(format!("DPoP {bound}"), Some(key.proof("GET", &data, None))).await.status(), 401);

    // Revocation reaches the SDK through the feed.
    assert_eq!(get(format!("Bearer {bearer}"), None).await.status(), 200);
    let jti = srv.verify(&bearer, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    let revoked_at = Instant::now();
    assert_eq!(srv.admin_post("/v1/revocations", Some(json!({"jti": jti}))).await.status(), 201);
    loop {
        if get(format!("Bearer {bearer}"), None).await.status() == 401 {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "the SDK learned of the revocation in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1), "refused within a second: {:?}", revoked_at.elapsed());
    srv.stop().await;
}

#[tokio::test]
async fn limited_use_tokens_fail_on_the_use_after_the_last() {
    let (srv, k8s) = start("[[audiences]]\nname = \"https://once.test\"\nmax_uses = 1\n").await;
    let r = srv.exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://api.test", &[("max_uses", "2")]).await;
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(srv.verify(&token, "https://api.test").await["max_uses"], 2);
    let mut cfg = VerifierConfig::new(srv.url.clone(), "https://api.test");
    cfg.feed_credential = Some(srv.admin_token.clone());
    let verifier = Verifier::new(cfg).await.unwrap();
    let rs = resource_server(verifier).await;
    let use_it = || {
        let (http, url, t) = (srv.http.clone(), format!("{rs}/data"), token.clone());
        async move { http.get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(use_it().await, 200);
    assert_eq!(use_it().await, 200);
    assert_eq!(use_it().await, 401, "the third use of a two-use token fails");
    // An audience configured as single-use caps every token for it.
    let r = srv.exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://once.test", &[("max_uses", "5")]).await;
    assert_eq!(r.status(), 200);
    let once = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(srv.verify(&once, "https://once.test").await["max_uses"], 1);
    for bad in ["0", "-1", "abc", "10001"] {
        let r = srv.exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://api.test", &[("max_uses", bad)]).await;
        assert_problem(r, 400, "invalid-request").await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_sdk_renews_its_feed_credential_learns_a_revocation_of_all_and_refuses_a_stale_feed() {
    let (srv, k8s) = start("").await;
    // The resource server's own evidence, exchanged for short verifier tokens on demand.
    let evidence = k8s.k8s_token("infra", "gateway");
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = {
        let (http, url, fetched) = (srv.http.clone(), format!("{}/v1/token", srv.url), fetched.clone());
        mayfly_verify::CredentialSource::new(move || {
            let (http, url, evidence, fetched) = (http.clone(), url.clone(), evidence.clone(), fetched.clone());
            async move {
                fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let form = [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", evidence.as_str()),
                    ("subject_token_type", JWT_TYPE),
                    ("audience", "urn:mayfly:introspect:https://api.test"),
                    ("requested_lifetime", "2"),
                ];
                let v: Value = http
                    .post(url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                v["access_token"].as_str().map(str::to_owned).ok_or_else(|| format!("no token: {v}"))
            }
        })
    };
    let mut cfg = VerifierConfig::new(srv.url.clone(), "https://api.test");
    cfg.feed_credential_source = Some(source);
    cfg.max_feed_staleness = Some(Duration::from_secs(2));
    let verifier = Verifier::new(cfg).await.unwrap();
    let rs = resource_server(verifier).await;
    let (http, data) = (srv.http.clone(), format!("{rs}/data"));
    let get = |token: String| {
        let (http, url) = (http.clone(), data.clone());
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let issue = || async {
        let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    };
    let until = |want: u16, token: String| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get(token.clone()).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {got}, not {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let before = issue().await;
    assert_eq!(get(before.clone()).await, 200);
    // The panic button revokes the verifier's own token too: the SDK still learns of it.
    let all = srv.admin_post("/v1/revocations", Some(json!({"all": true}))).await;
    assert_eq!(all.status(), 201);
    let at = all.json::<Value>().await.unwrap()["issued_before"].as_i64().unwrap();
    until(401, before).await;
    while now() <= at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its verifier tokens live 2 s: past them, it follows the feed with fresh ones.
    let after = issue().await;
    until(200, after.clone()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let jti = srv.verify(&after, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    assert_eq!(srv.admin_post("/v1/revocations", Some(json!({"jti": jti}))).await.status(), 201);
    until(401, after).await;
    assert!(fetched.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the source was asked again");
    // The broker goes away: past the staleness bound, tokens are refused, not trusted blindly.
    let fresh = issue().await;
    assert_eq!(get(fresh.clone()).await, 200);
    srv.stop().await;
    until(503, fresh).await;
}
