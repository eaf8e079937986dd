//! The spine end to end: platform evidence → attestation → Cedar → RFC 9068 token,
//! verified with an independent JOSE implementation.

use mayfly_testkit::*;
use serde_json::{Value, json};

fn issuers() -> (TestIssuer, TestIssuer) {
    (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER))
}

#[tokio::test]
async fn kubernetes_token_is_exchanged_for_a_verifiable_access_token() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let jwt = k8s.sign(alg, &k8s.k8s_claims("prod", "web"));
        let resp = srv.exchange_jwt_with(&jwt, "https://api.test", &[("scope", "read write")]).await;
        assert_eq!(resp.status(), 200, "{alg}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300, "default lifetime is 5 minutes");
        assert_eq!(body["scope"], "read write");
        let claims = srv.verify(body["access_token"].as_str().unwrap(), "https://api.test").await;
        assert_eq!(claims["sub"], "spiffe://test.example/ns/prod/sa/web");
        assert_eq!(claims["client_id"], "spiffe://test.example/ns/prod/sa/web");
        assert_eq!(claims["aud"], "https://api.test");
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    }
    srv.stop().await;
}

#[tokio::test]
async fn lifetime_is_the_smaller_of_request_and_maximum() {
    let (k8s, gh) = issuers();
    let config = TestConfig::standard(&k8s, &gh)
        .set("tokens", "default_ttl = \"2m\"\nmax_ttl = \"10m\"")
        .toml("[[audiences]]\nname = \"https://api.test\"\nmax_ttl = \"5m\"\nscopes = [\"read\", \"write\"]\n");
    let srv = TestServer::start_with(config).await;
    let jwt = k8s.k8s_token("prod", "web");
    let ask = |life: &'static str| {
        let jwt = jwt.clone();
        let srv = &srv;
        async move {
            let r = srv.exchange_jwt_with(&jwt, "https://api.test", &[("requested_lifetime", life)]).await;
            let v: Value = r.json().await.unwrap();
            v["expires_in"].as_i64().unwrap()
        }
    };
    assert_eq!(ask("60").await, 60);
    assert_eq!(ask("86400").await, 300, "capped by the audience's max_ttl");
    let r = srv.exchange_jwt(&jwt, "https://api.test").await;
    assert_eq!(r.json::<Value>().await.unwrap()["expires_in"], 120, "default_ttl applies");

    let r = srv.exchange_jwt_with(&jwt, "https://api.test", &[("scope", "read delete")]).await;
    let body = assert_problem(r, 400, "invalid-scope").await;
    assert_eq!(body["error"], "invalid_scope");
    srv.stop().await;
}

#[tokio::test]
async fn github_actions_token_maps_repository_and_ref() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let t = now();
    let claims = json!({
        "iss": GITHUB_TEST_ISSUER, "aud": MAYFLY_AUDIENCE, "sub": "repo:acme/app:ref:refs/heads/main",
        "iat": t, "nbf": t, "exp": t + 300, "repository": "acme/app", "repository_owner": "acme",
        "repository_id": "42", "ref": "refs/heads/main", "ref_type": "branch", "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "run_id": "123456", "run_attempt": "1", "actor": "octocat", "event_name": "push"
    });
    let jwt = gh.sign("RS256", &claims);
    let r = srv.exchange_jwt(&jwt, "https://deploy.test").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let claims = srv.verify(v["access_token"].as_str().unwrap(), "https://deploy.test").await;
    // Owner, name, ref type and ref name each fill one path segment (a ref with '/' is escaped).
    assert_eq!(claims["sub"], "spiffe://test.example/github/acme/app/branch/main");

    // EdDSA is not on this issuer's allow-list.
    let jwt = gh.sign("EdDSA", &json!({"iss": GITHUB_TEST_ISSUER, "aud": MAYFLY_AUDIENCE, "exp": t + 300, "repository": "acme/app", "ref": "refs/heads/main"}));
    assert_problem(srv.exchange_jwt(&jwt, "https://deploy.test").await, 400, "algorithm-not-allowed").await;
    srv.stop().await;
}

#[tokio::test]
async fn join_tokens_are_single_use_and_need_an_admin() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;

    let anon = srv.http.post(format!("{}/v1/join-tokens", srv.url)).send().await.unwrap();
    assert_eq!(anon.headers()["www-authenticate"], "Bearer realm=\"mayfly-admin\"");
    assert_problem(anon, 401, "unauthorized").await;
    let wrong = srv.http.post(format!("{}/v1/join-tokens", srv.url)).bearer_auth("mfa_wrong").send().await.unwrap();
    assert_problem(wrong, 401, "unauthorized").await;
    let bad_ttl = srv.admin_post("/v1/join-tokens", Some(json!({"ttl_seconds": 0}))).await;
    assert_problem(bad_ttl, 400, "invalid-request").await;
    let bad_path = srv.admin_post("/v1/join-tokens", Some(json!({"spiffe_path": "a/../b"}))).await;
    assert_problem(bad_path, 400, "invalid-request").await;

    let token = srv.join_token(Some("node/build-01")).await;
    assert!(token.starts_with("mfj_"));
    let form = |t: &str| {
        vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", t.to_owned()),
            ("subject_token_type", JOIN_TYPE.to_owned()),
            ("audience", "https://api.test".to_owned()),
        ]
    };
    let first = srv.http.post(format!("{}/v1/token", srv.url)).form(&form(&token)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let v: Value = first.json().await.unwrap();
    let claims = srv.verify(v["access_token"].as_str().unwrap(), "https://api.test").await;
    assert_eq!(claims["sub"], "spiffe://test.example/node/build-01");

    let replay = srv.http.post(format!("{}/v1/token", srv.url)).form(&form(&token)).send().await.unwrap();
    assert_problem(replay, 400, "join-token-used").await;
    let unknown = srv.http.post(format!("{}/v1/token", srv.url)).form(&form("mfj_nope")).send().await.unwrap();
    assert_problem(unknown, 400, "join-token-unknown").await;
    srv.stop().await;
}

#[tokio::test]
async fn concurrent_redemptions_of_one_join_token_succeed_once() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let token = srv.join_token(None).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, token) = (srv.http.clone(), srv.url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let form = [
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", token.as_str()),
                ("subject_token_type", JOIN_TYPE),
                ("audience", "https://api.test"),
            ];
            http.post(format!("{url}/v1/token")).form(&form).send().await.unwrap().status().as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    srv.stop().await;
}

#[tokio::test]
async fn policy_denials_name_the_deciding_rule() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    // No permit matches: default deny.
    let jwt = k8s.k8s_token("staging", "web");
    let body = assert_problem(srv.exchange_jwt(&jwt, "https://api.test").await, 403, "policy-denied").await;
    assert_eq!(body["error"], "invalid_target");
    assert!(body["detail"].as_str().unwrap().contains("default deny"));
    assert_eq!(body["policies"], Value::Null);

    // A forbid matches.
    let jwt = k8s.k8s_token("prod", "web");
    let r = srv.exchange_jwt_with(&jwt, "https://api.test", &[("scope", "read admin")]).await;
    let body = assert_problem(r, 403, "policy-denied").await;
    assert_eq!(body["policies"], json!(["no-admin-scope"]));

    // The permit is bounded: a lifetime above 900 s is denied by the policy's condition.
    let r = srv.exchange_jwt_with(&jwt, "https://api.test", &[("requested_lifetime", "1800")]).await;
    assert_problem(r, 403, "policy-denied").await;
    srv.stop().await;
}

#[tokio::test]
async fn discovery_documents_and_health() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let get = |p: &str| srv.http.get(format!("{}{p}", srv.url)).send();
    let conf: Value = get("/.well-known/openid-configuration").await.unwrap().json().await.unwrap();
    assert_eq!(conf["issuer"], srv.url);
    assert_eq!(conf["jwks_uri"], format!("{}/.well-known/jwks.json", srv.url));
    assert_eq!(conf["token_endpoint"], format!("{}/v1/token", srv.url));
    let jwks = get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(jwks.headers()["content-type"], "application/jwk-set+json");
    let jwks: Value = jwks.json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private material in the JWKS");
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let openapi: Value = get("/v1/openapi.json").await.unwrap().json().await.unwrap();
    assert!(openapi["paths"]["/v1/token"]["post"].is_object());
    assert_problem(get("/nope").await.unwrap(), 404, "not-found").await;
    assert_problem(get("/v1/token").await.unwrap(), 405, "method-not-allowed").await;
    srv.stop().await;
}

#[tokio::test]
async fn es256_signing_is_an_option() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start_with(TestConfig::standard(&k8s, &gh).set("keys", "algorithm = \"ES256\"")).await;
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    let v: Value = r.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(jsonwebtoken::decode_header(token).unwrap().alg, jsonwebtoken::Algorithm::ES256);
    srv.verify(token, "https://api.test").await;
    srv.stop().await;
}
