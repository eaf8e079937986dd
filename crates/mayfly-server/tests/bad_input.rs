//! Every kind of bad input gets a clear problem answer with a stable type, never a panic.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mayfly_testkit::*;
use serde_json::json;

#[tokio::test]
async fn bad_subject_tokens_are_refused_with_stable_problem_types() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let gh = TestIssuer::new(GITHUB_TEST_ISSUER);
    let other = TestIssuer::new(K8S_ISSUER); // same iss, keys Mayfly does not know
    let srv = TestServer::start(&k8s, &gh).await;
    let t = now();
    let good = k8s.k8s_claims("prod", "web");
    let with = |patch: serde_json::Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let unsigned = |header: serde_json::Value, claims: &serde_json::Value| {
        format!("{}.{}.", B64.encode(header.to_string()), B64.encode(claims.to_string()))
    };
    // HS256 "signed" with the issuer's RSA public key: the classic key-confusion attack.
    let hs256 = {
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).to_string()),
            B64.encode(good.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k8s.rsa_public_n());
        format!("{input}.{}", B64.encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref()))
    };
    let tampered = {
        let jwt = k8s.k8s_token("prod", "web");
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(
            with(json!({"kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "admin"}}})).to_string(),
        );
        parts.join(".")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not a JWT", "hello".into(), "malformed-subject-token"),
        ("four parts", "a.b.c.d".into(), "malformed-subject-token"),
        ("payload not base64", "eyJhbGciOiJSUzI1NiJ9.!!!.sig".into(), "malformed-subject-token"),
        ("oversized", format!("{}.{}.sig", "a".repeat(10_000), "b".repeat(10_000)), "malformed-subject-token"),
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"}), &good), "algorithm-not-allowed"),
        ("HS256 with the RSA public key", hs256, "algorithm-not-allowed"),
        ("tampered payload", tampered, "bad-signature"),
        ("wrong issuer", k8s.sign("RS256", &with(json!({"iss": "https://evil.example"}))), "unknown-issuer"),
        ("no issuer", k8s.sign("RS256", &with(json!({"iss": null}))), "bad-claim"),
        ("wrong audience", k8s.sign("RS256", &with(json!({"aud": ["someone-else"]}))), "wrong-audience"),
        ("no audience", k8s.sign("RS256", &with(json!({"aud": null}))), "bad-claim"),
        (
            "expired",
            k8s.sign("RS256", &with(json!({"exp": t - 3600, "iat": t - 7200, "nbf": t - 7200}))),
            "subject-token-expired",
        ),
        ("no exp", k8s.sign("RS256", &with(json!({"exp": null}))), "bad-claim"),
        ("not yet valid", k8s.sign("RS256", &with(json!({"nbf": t + 3600}))), "subject-token-not-yet-valid"),
        ("unknown kid", k8s.sign_with("RS256", json!({"kid": "rotated-away"}), &good), "unknown-signing-key"),
        ("unknown key, known kid", other.sign("ES256", &good), "bad-signature"),
        ("alg/kid mismatch", k8s.sign_with("ES256", json!({"kid": "rsa-1"}), &good), "bad-signature"),
        (
            "claims do not map",
            k8s.sign("RS256", &with(json!({"kubernetes.io": {"namespace": "a b"}}))),
            "identity-mapping-failed",
        ),
    ];
    for (name, token, slug) in cases {
        let resp = srv.exchange_jwt(&token, "https://api.test").await;
        let body = assert_problem(resp, 400, slug).await;
        assert_eq!(body["error"], "invalid_request", "{name}: RFC 8693 §2.2.2 code");
        assert!(
            !body.to_string().contains(&token[..token.len().min(40)]) || token.len() < 12,
            "{name}: token not echoed"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let gh = TestIssuer::new(GITHUB_TEST_ISSUER);
    let srv = TestServer::start(&k8s, &gh).await;
    let jwt = k8s.k8s_token("prod", "web");
    let base = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", jwt.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("audience", "https://api.test"),
    ];
    let without = |name: &str| base.iter().filter(|(k, _)| *k != name).cloned().collect::<Vec<_>>();
    let plus = |extra: (&'static str, &'static str)| {
        let mut v = base.clone();
        v.push(extra);
        v
    };
    type Form<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Form, u16, &str, &str)> = vec![
        (without("grant_type"), 400, "invalid-request", "invalid_request"),
        (without("subject_token"), 400, "invalid-request", "invalid_request"),
        (without("subject_token_type"), 400, "invalid-request", "invalid_request"),
        (without("audience"), 400, "invalid-request", "invalid_request"),
        (plus(("audience", "https://other.test")), 400, "invalid-request", "invalid_request"),
        (plus(("resource", "https://other.test")), 400, "invalid-target", "invalid_target"),
        (plus(("requested_lifetime", "soon")), 400, "invalid-request", "invalid_request"),
        (plus(("requested_lifetime", "0")), 400, "invalid-request", "invalid_request"),
        (
            plus(("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")),
            400,
            "invalid-request",
            "invalid_request",
        ),
        (plus(("scope", "bad\"scope")), 400, "invalid-scope", "invalid_scope"),
        (plus(("actor_token", "x")), 400, "invalid-request", "invalid_request"),
    ];
    for (form, status, slug, oauth) in cases {
        let body = assert_problem(srv.exchange(&form).await, status, slug).await;
        assert_eq!(body["error"], oauth, "{slug}: {body}");
    }
    let mut wrong_grant = without("grant_type");
    wrong_grant.push(("grant_type", "client_credentials"));
    let body = assert_problem(srv.exchange(&wrong_grant).await, 400, "unsupported-grant-type").await;
    assert_eq!(body["error"], "unsupported_grant_type");
    let mut wrong_type = without("subject_token_type");
    wrong_type.push(("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"));
    assert_problem(srv.exchange(&wrong_type).await, 400, "unsupported-token-type").await;

    let url = format!("{}/v1/token", srv.url);
    let json_body = srv.http.post(&url).json(&json!({"grant_type": TOKEN_EXCHANGE})).send().await.unwrap();
    assert_problem(json_body, 415, "unsupported-media-type").await;
    let no_type = srv.http.post(&url).body("grant_type=x").send().await.unwrap();
    assert_problem(no_type, 415, "unsupported-media-type").await;
    let huge = srv
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("subject_token={}", "a".repeat(200_000)))
        .send()
        .await
        .unwrap();
    assert_problem(huge, 413, "payload-too-large").await;
    let garbage = srv
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xff, 0xfe, b'=', 0x00])
        .send()
        .await
        .unwrap();
    assert!(garbage.status().is_client_error());

    let admin = srv
        .http
        .post(format!("{}/v1/join-tokens", srv.url))
        .bearer_auth(&srv.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(admin, 400, "invalid-json").await;
    let admin = srv
        .http
        .post(format!("{}/v1/join-tokens", srv.url))
        .bearer_auth(&srv.admin_token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(admin, 415, "unsupported-media-type").await;

    // The server is still healthy after all of that.
    assert_eq!(srv.exchange(&base).await.status(), 200);
    srv.stop().await;
}

/// What the OpenAPI document forbids is refused (schemathesis found these accepted):
/// a missing required body, a JSON array where an object is documented, and a query
/// time out of the documented range. A nullable optional body may be `null`.
#[tokio::test]
async fn requests_the_openapi_document_forbids_are_refused() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let gh = TestIssuer::new(GITHUB_TEST_ISSUER);
    let srv = TestServer::start(&k8s, &gh).await;
    let post = |path: &str| srv.http.post(format!("{}{path}", srv.url)).bearer_auth(&srv.admin_token);

    for path in ["/v1/join-tokens", "/v1/revocations", "/v1/revocations/lift"] {
        assert_problem(post(path).send().await.unwrap(), 400, "invalid-request").await;
    }
    let array = post("/v1/join-tokens").header("content-type", "application/json").body("[null, null]");
    assert_problem(array.send().await.unwrap(), 400, "invalid-json").await;
    let bare_domain = post("/v1/join-tokens").json(&json!({"spiffe_path": "/"}));
    assert_problem(bare_domain.send().await.unwrap(), 400, "invalid-request").await;

    let get = |query: &str| srv.http.get(format!("{}/v1/audit?{query}", srv.url)).bearer_auth(&srv.admin_token);
    for query in ["until=-1", "since=253402300800"] {
        assert_problem(get(query).send().await.unwrap(), 400, "invalid-request").await;
    }
    assert_eq!(get("since=0&until=253402300799").send().await.unwrap().status(), 200);

    // `null` is the documented "no body": it reads as defaults (the task is then looked up).
    let end = srv
        .http
        .delete(format!("{}/v1/tasks/no-such-task", srv.url))
        .bearer_auth(&srv.admin_token)
        .header("content-type", "application/json")
        .body("null");
    assert_problem(end.send().await.unwrap(), 404, "not-found").await;
    srv.stop().await;
}
