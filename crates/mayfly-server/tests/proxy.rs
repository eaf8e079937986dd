//! `/v1/proxy/*`, attacked from outside: only a proxy (a token for `urn:mayfly:proxy`,
//! which policy grants) learns an upstream's credential, only for a request policy allows,
//! for a workload that proves itself, and never after that workload is revoked.

use mayfly_testkit::*;
use serde_json::{Value, json};

const SECRET: &str = "sk_live_the_upstream_secret";

const PROXY_POLICIES: &str = r#"
@id("only-the-egress-proxy-proxies")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"urn:mayfly:proxy")
when { principal.hasTag("serviceaccount") && principal.getTag("serviceaccount") == "egress-proxy" };

@id("web-may-ping")
permit (principal, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"tiny");

@id("web-reads-payments")
permit (principal, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"pay")
when { principal.hasTag("serviceaccount") && principal.getTag("serviceaccount") == "web" && context.method == "GET" };
"#;

async fn server(k8s: &TestIssuer, gh: &TestIssuer) -> TestServer {
    let config = TestConfig::standard(k8s, gh).add_policies(PROXY_POLICIES).toml(&format!(
        r#"
[[proxy.upstreams]]
name = "pay"
url = "https://api.pay.example"
[proxy.upstreams.inject]
kind = "header"
secret = "{SECRET}"

[[proxy.upstreams]]
name = "tiny"
url = "https://tiny.example"
requests_per_minute = 1
[proxy.upstreams.inject]
kind = "basic"
username = "u"
secret = "p"
"#
    ));
    TestServer::start_with(config).await
}

async fn proxy_token(srv: &TestServer, k8s: &TestIssuer) -> String {
    let resp = srv.exchange_jwt(&k8s.k8s_token("prod", "egress-proxy"), "urn:mayfly:proxy").await;
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

fn request(evidence: &str, upstream: &str, method: &str, path: &str) -> Value {
    json!({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": evidence,
           "upstream": upstream, "method": method, "host": "api.pay.example", "path": path,
           "query_keys": ["limit"]})
}

async fn decide(srv: &TestServer, bearer: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = srv.http.post(format!("{}/v1/proxy/decisions", srv.url)).json(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn only_a_proxy_gets_the_credential_only_for_an_allowed_request_of_a_live_workload() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = server(&k8s, &gh).await;
    let web = k8s.k8s_token("prod", "web");
    let allowed = request(&web, "pay", "GET", "/v1/charges");

    // Who is a proxy: policy decides, and a workload cannot make itself one.
    let refused = srv.exchange_jwt(&web, "urn:mayfly:proxy").await;
    assert_eq!(refused.status(), 403, "the workload itself gets no proxy token");
    let proxy = proxy_token(&srv, &k8s).await;

    // Forged, missing or wrong-audience credentials for the proxy: 401, nothing learned.
    assert_problem(decide(&srv, None, &allowed).await, 401, "unauthorized").await;
    assert_problem(decide(&srv, Some(&srv.admin_token), &allowed).await, 401, "unauthorized").await;
    let other = srv.exchange_jwt(&web, "https://api.example").await.json::<Value>().await.unwrap();
    let other = other["access_token"].as_str().unwrap_or("x.y.z").to_owned();
    assert_problem(decide(&srv, Some(&other), &allowed).await, 401, "unauthorized").await;
    let mut forged = proxy.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_problem(decide(&srv, Some(&forged), &allowed).await, 401, "unauthorized").await;

    // Allowed: the credential, and what the proxy watches.
    let resp = decide(&srv, Some(&proxy), &allowed).await;
    assert_eq!(resp.status(), 200);
    let grant: Value = resp.json().await.unwrap();
    assert_eq!(grant["headers"], json!([{"name": "authorization", "value": format!("Bearer {SECRET}")}]));
    assert_eq!(grant["subject"], "spiffe://test.example/ns/prod/sa/web");
    assert_eq!(grant["policies"], json!(["web-reads-payments"]));

    // Policy sees the request: a POST is denied, as is another workload.
    let post = request(&web, "pay", "POST", "/v1/charges");
    let denied = assert_problem(decide(&srv, Some(&proxy), &post).await, 403, "policy-denied").await;
    assert!(!denied.to_string().contains(SECRET));
    let api = k8s.k8s_token("prod", "api");
    assert_problem(decide(&srv, Some(&proxy), &request(&api, "pay", "GET", "/v1/charges")).await, 403, "policy-denied")
        .await;

    // Bad evidence, a join token (single use), an unknown upstream, a request that is not HTTP.
    assert_problem(
        decide(&srv, Some(&proxy), &request("not-a-jwt", "pay", "GET", "/")).await,
        400,
        "malformed-subject-token",
    )
    .await;
    let mut join = allowed.clone();
    join["subject_token_type"] = json!("urn:mayfly:params:oauth:token-type:join-token");
    assert_problem(decide(&srv, Some(&proxy), &join).await, 400, "invalid-request").await;
    assert_problem(decide(&srv, Some(&proxy), &request(&web, "nope", "GET", "/")).await, 404, "not-found").await;
    for (method, path) in [("get", "/"), ("GET", "no-slash"), ("GET", "/a b"), ("GET", &"/x".repeat(5000))] {
        assert_problem(decide(&srv, Some(&proxy), &request(&web, "pay", method, path)).await, 400, "invalid-request")
            .await;
    }

    // Over the rate: 429 with when to come back; tunnels are off unless configured.
    let tiny = request(&web, "tiny", "GET", "/ping");
    assert_eq!(decide(&srv, Some(&proxy), &tiny).await.status(), 200);
    let limited = decide(&srv, Some(&proxy), &tiny).await;
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_problem(limited, 429, "rate-limited").await;
    let tunnel = request(&web, "*", "CONNECT", "/");
    assert_problem(decide(&srv, Some(&proxy), &tunnel).await, 400, "invalid-request").await;

    // The upstream list names no secret.
    let listed = srv.http.get(format!("{}/v1/proxy/upstreams", srv.url)).bearer_auth(&proxy).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.unwrap();
    assert!(listed.contains("api.pay.example") && !listed.contains(SECRET), "{listed}");
    let anonymous = srv.http.get(format!("{}/v1/proxy/upstreams", srv.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A revoked workload gets nothing more through any proxy, even with the same evidence.
    let revoked = srv
        .admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/web", "block": true})))
        .await;
    assert!(revoked.status().is_success(), "{}", revoked.text().await.unwrap());
    let after = decide(&srv, Some(&proxy), &allowed).await;
    assert!(after.status() == 400 || after.status() == 403, "{}", after.status());
    assert!(!after.text().await.unwrap().contains(SECRET));
}

const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A workload that holds a Mayfly access token for `urn:mayfly:proxy-client` proves itself
/// with it (`Proxy-Authorization: Bearer …`): only that audience, never a bound or
/// limited-use token, never one revoked, and the grant ends when the token does.
#[tokio::test]
async fn a_mayfly_access_token_for_the_proxy_client_audience_identifies_a_workload() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let policies = r#"
@id("web-may-use-proxies")
permit (principal, action == Mayfly::Action::"exchange", resource)
when { principal.hasTag("serviceaccount") && principal.getTag("serviceaccount") == "web" &&
       resource in [Mayfly::Audience::"urn:mayfly:proxy-client", Mayfly::Audience::"https://api.example"] };
@id("tasks-may-use-proxies")
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"urn:mayfly:proxy-client");
@id("prod-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource);
@id("payments-need-the-scope")
forbid (principal is Mayfly::Task, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"pay")
when { principal.scopes.contains("pay:read") && !context.scopes.contains("pay:read") };
"#;
    let config = TestConfig::standard(&k8s, &gh).add_policies(PROXY_POLICIES).add_policies(policies).toml(&format!(
        "[[proxy.upstreams]]\nname = \"pay\"\nurl = \"https://api.pay.example\"\n[proxy.upstreams.inject]\nkind = \"header\"\nsecret = \"{SECRET}\"\n"
    ));
    let srv = TestServer::start_with(config).await;
    let proxy = proxy_token(&srv, &k8s).await;
    let web = k8s.k8s_token("prod", "web");
    let token_of = |resp: Value| resp["access_token"].as_str().unwrap_or_else(|| panic!("{resp}")).to_owned();
    let as_access = |token: &str| {
        let mut r = request(token, "pay", "GET", "/v1/charges");
        r["subject_token_type"] = json!(ACCESS_TOKEN);
        r
    };

    let client = token_of(srv.exchange_jwt(&web, "urn:mayfly:proxy-client").await.json().await.unwrap());
    let resp = decide(&srv, Some(&proxy), &as_access(&client)).await;
    assert_eq!(resp.status(), 200);
    let grant: Value = resp.json().await.unwrap();
    let claims = srv.verify(&client, "urn:mayfly:proxy-client").await;
    assert_eq!(grant["subject"], "spiffe://test.example/ns/prod/sa/web");
    assert_eq!(grant["credential_id"], claims["jti"], "the proxy watches the token itself");
    assert_eq!(grant["expires_at"], claims["exp"], "the grant ends with the token");
    assert_eq!(grant["policies"], json!(["web-reads-payments"]));

    // Tokens for another audience, the proxy's own, forged, bound to a key or limited in uses: refused (400 → the proxy answers 407).
    let other = token_of(srv.exchange_jwt(&web, "https://api.example").await.json().await.unwrap());
    let mut forged = client.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let oversized = format!("{}.{}.x", "e".repeat(10_000), "e".repeat(10_000));
    for bad in [other.as_str(), proxy.as_str(), forged.as_str(), "not.a.jwt", oversized.as_str()] {
        assert_problem(decide(&srv, Some(&proxy), &as_access(bad)).await, 400, "invalid-access-token").await;
    }
    let limited = srv.exchange_jwt_with(&web, "urn:mayfly:proxy-client", &[("max_uses", "5")]).await;
    let limited = token_of(limited.json().await.unwrap());
    let refused =
        assert_problem(decide(&srv, Some(&proxy), &as_access(&limited)).await, 400, "invalid-access-token").await;
    assert!(refused["detail"].as_str().unwrap().contains("limited"), "{refused}");
    let key = DpopKey::new();
    let proof = key.proof("POST", &format!("{}/v1/token", srv.url), None);
    let bound = srv
        .http
        .post(format!("{}/v1/token", srv.url))
        .header("DPoP", proof)
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", web.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", "urn:mayfly:proxy-client"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 200);
    let bound = token_of(bound.json().await.unwrap());
    let refused =
        assert_problem(decide(&srv, Some(&proxy), &as_access(&bound)).await, 400, "invalid-access-token").await;
    assert!(refused["detail"].as_str().unwrap().contains("bound"), "{refused}");

    // A token issued under a task acts as that task, and stops with it.
    let task: Value = srv.start_task(JWT_TYPE, &web, json!({})).await.json().await.unwrap();
    let task_id = task["task"]["id"].as_str().unwrap().to_owned();
    let under_task = srv.exchange_task(task["task_token"].as_str().unwrap(), "urn:mayfly:proxy-client", None).await;
    assert_eq!(under_task.status(), 200);
    let under_task = token_of(under_task.json().await.unwrap());
    let grant: Value = decide(&srv, Some(&proxy), &as_access(&under_task)).await.json().await.unwrap();
    assert_eq!(grant["task_id"], json!(task_id));
    assert_eq!(grant["subject"], json!(format!("spiffe://test.example/task/{task_id}")));
    let ended =
        srv.http.delete(format!("{}/v1/tasks/{task_id}", srv.url)).bearer_auth(&srv.admin_token).send().await.unwrap();
    assert!(ended.status().is_success());
    let after = decide(&srv, Some(&proxy), &as_access(&under_task)).await;
    assert_eq!(after.status(), 400);

    // A token narrowed below its task's scopes is judged with what it carries, not the task's.
    let scoped: Value =
        srv.start_task(JWT_TYPE, &web, json!({"scope": "pay:read reports"})).await.json().await.unwrap();
    let scoped_token = scoped["task_token"].as_str().unwrap();
    let under_scoped = |scope| srv.exchange_task(scoped_token, "urn:mayfly:proxy-client", Some(scope));
    let whole = token_of(under_scoped("pay:read reports").await.json().await.unwrap());
    assert_eq!(decide(&srv, Some(&proxy), &as_access(&whole)).await.status(), 200);
    let narrowed = token_of(under_scoped("reports").await.json().await.unwrap());
    let denied = assert_problem(decide(&srv, Some(&proxy), &as_access(&narrowed)).await, 403, "policy-denied").await;
    assert_eq!(denied["policies"], json!(["payments-need-the-scope"]));

    // Revoking the token itself (its jti) refuses it at once.
    let revoked = srv.admin_post("/v1/revocations", Some(json!({"jti": claims["jti"]}))).await;
    assert!(revoked.status().is_success(), "{}", revoked.text().await.unwrap());
    let after =
        assert_problem(decide(&srv, Some(&proxy), &as_access(&client)).await, 400, "invalid-access-token").await;
    assert!(!after.to_string().contains(SECRET));

    // Revoking the workload refuses every token it got before, not only the one revoked.
    let fresh = token_of(srv.exchange_jwt(&web, "urn:mayfly:proxy-client").await.json().await.unwrap());
    assert_eq!(decide(&srv, Some(&proxy), &as_access(&fresh)).await.status(), 200);
    let revoked =
        srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/web"}))).await;
    assert!(revoked.status().is_success(), "{}", revoked.text().await.unwrap());
    let after = decide(&srv, Some(&proxy), &as_access(&fresh)).await;
    assert_eq!(after.status(), 400);
    assert!(!after.text().await.unwrap().contains(SECRET));
}
