//! Cloud federation: tokens the clouds accept, through the same attest → Cedar → record
//! steps as every issuance, and AWS credentials Mayfly gets from STS itself (a loopback
//! STS stands in for AWS). The clouds' own SDKs read these tokens in
//! tests/interop/cloud_sdks.py (run by .ci/run).

use std::sync::{Arc, Mutex};

use mayfly_testkit::*;
use serde_json::{Value, json};

const ISSUER: &str = "https://mayfly.test";
const ROLE: &str = "arn:aws:iam::123456789012:role/deployer";

const CLOUD_POLICIES: &str = r#"
@id("prod-may-use-clouds")
permit (principal, action == Mayfly::Action::"cloud", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("no-aws-exchange-for-web")
forbid (principal, action == Mayfly::Action::"cloud", resource == Mayfly::Cloud::"prod-aws")
when { context.exchange && principal.hasTag("serviceaccount") && principal.getTag("serviceaccount") == "web" };
"#;

/// A server whose issuer is `https://mayfly.test`, with an RS256 profile and one cloud
/// profile of each kind; `sts` is the STS endpoint of the AWS profile.
async fn server(k8s: &TestIssuer, gh: &TestIssuer, sts: &str) -> TestServer {
    let config = TestConfig::standard(k8s, gh)
        .add_policies(CLOUD_POLICIES)
        .set("", &format!("public_url = \"{ISSUER}\""))
        .toml(&format!(
            r#"
[[keys.profiles]]
name = "clouds"
algorithm = "RS256"
rotation_lead = "10m"

[[clouds]]
name = "prod-aws"
kind = "aws"
signing_profile = "clouds"
role_arn = "{ROLE}"
region = "eu-west-1"
sts_endpoint = "{sts}"

[[clouds]]
name = "prod-gcp"
kind = "gcp"
signing_profile = "clouds"
project_number = "123456789012"
pool = "mayfly-pool"
provider = "mayfly"
service_account = "deployer@acme.iam.gserviceaccount.com"

[[clouds]]
name = "prod-azure"
kind = "azure"
signing_profile = "clouds"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "00000000-1111-2222-3333-444444444444"
"#
        ));
    let mut srv = TestServer::start_with(config).await;
    srv.url = format!("http://{}", srv.running.addr);
    srv
}

async fn cloud_token(srv: &TestServer, profile: &str, evidence: &str) -> reqwest::Response {
    srv.http
        .post(format!("{}/v1/clouds/{profile}/token", srv.url))
        .json(&json!({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": evidence}))
        .send()
        .await
        .unwrap()
}

/// Verifies a cloud token as a cloud does: with a JOSE library, against the published JWKS.
async fn verify_as_cloud(srv: &TestServer, token: &str, audience: &str) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks = srv.jwks().await;
    let jwk = jwks.find(header.kid.as_deref().expect("kid: Google and Azure need it")).expect("kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v).expect("verifies").claims;
    (header, claims)
}

#[tokio::test]
async fn each_cloud_gets_a_token_signed_as_it_requires_and_recorded() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = server(&k8s, &gh, "http://127.0.0.1:9").await;
    let evidence = k8s.k8s_token("prod", "deployer");
    let gcp_aud = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/mayfly-pool/providers/mayfly";
    for (profile, audience, kind) in [
        ("prod-aws", "sts.amazonaws.com", "aws"),
        ("prod-gcp", gcp_aud, "gcp"),
        ("prod-azure", "api://AzureADTokenExchange", "azure"),
    ] {
        let resp = cloud_token(&srv, profile, &evidence).await;
        assert_eq!(resp.status(), 201, "{profile}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["setup"]["kind"], kind);
        let (header, claims) = verify_as_cloud(&srv, body["token"].as_str().unwrap(), audience).await;
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256, "{profile}: none of the clouds takes EdDSA");
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(claims["iss"], ISSUER, "exactly public_url, no trailing slash");
        assert_eq!(claims["sub"], "spiffe://test.example/ns/prod/sa/deployer");
        let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert!(iat <= now() && iat > now() - 60);
        let ttl = if kind == "azure" { 3600 } else { 600 };
        assert_eq!(exp - iat, ttl, "{profile}");
        assert_eq!(body["jti"], claims["jti"]);
    }
    let body: Value = cloud_token(&srv, "prod-aws", &evidence).await.json().await.unwrap();
    assert_eq!(
        body["setup"],
        json!({"kind": "aws", "role_arn": ROLE, "session_name": "spiffe---test.example-ns-prod-sa-deployer", "region": "eu-west-1"})
    );
    let body: Value = cloud_token(&srv, "prod-gcp", &evidence).await.json().await.unwrap();
    assert_eq!(
        body["setup"]["service_account_impersonation_url"],
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/deployer@acme.iam.gserviceaccount.com:generateAccessToken"
    );

    // Recorded like any credential, and audited.
    let leases: Vec<Value> = srv.admin_get("/v1/leases?subject=spiffe://test.example/ns/prod/sa/deployer").await;
    assert!(leases.iter().filter(|l| l["kind"] == "cloud").count() >= 5, "{leases:?}");
    let audit: Vec<Value> = srv.admin_get("/v1/audit?limit=1000").await;
    assert!(audit.iter().any(|e| e["kind"] == "token.issued" && e["detail"]["cloud"] == "azure"), "audited");

    // The discovery document has what the clouds read, and every key carries kid, alg, use.
    let discovery: Value = srv
        .http
        .get(format!("{}/.well-known/openid-configuration", srv.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    assert!(discovery["id_token_signing_alg_values_supported"].as_array().unwrap().contains(&json!("RS256")));
    let jwks: Value =
        srv.http.get(format!("{}/.well-known/jwks.json", srv.url)).send().await.unwrap().json().await.unwrap();
    for k in jwks["keys"].as_array().unwrap() {
        assert!(k["kid"].is_string() && k["alg"].is_string() && k["use"] == "sig", "{k}");
        assert!(k.get("x5c").is_none(), "Google refuses an uploaded JWKS with x5c");
    }
    srv.stop().await;
}

#[tokio::test]
async fn cloud_tokens_are_refused_to_whom_policy_or_containment_refuses() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = server(&k8s, &gh, "http://127.0.0.1:9").await;
    // Not permitted: default deny.
    let r = cloud_token(&srv, "prod-aws", &k8s.k8s_token("staging", "deployer")).await;
    assert_problem(r, 403, "policy-denied").await;
    // Forged evidence.
    let forged = TestIssuer::new(K8S_ISSUER).k8s_token("prod", "deployer");
    let r = cloud_token(&srv, "prod-aws", &forged).await;
    assert_eq!(r.status(), 400);
    // Unknown profile: 404, but only to a caller who proved who it is.
    let r = cloud_token(&srv, "nope", &k8s.k8s_token("prod", "deployer")).await;
    assert_problem(r, 404, "not-found").await;
    let r = cloud_token(&srv, "nope", &forged).await;
    assert_eq!(r.status(), 400, "an unauthenticated caller learns nothing of the profiles");
    // Bad bodies.
    let r = srv
        .http
        .post(format!("{}/v1/clouds/prod-aws/token", srv.url))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = srv.http.post(format!("{}/v1/clouds/prod-aws/token", srv.url)).send().await.unwrap();
    assert_eq!(r.status(), 400, "a body is required");
    // The ordinary exchange does not mint what a cloud would take: that goes through a
    // cloud profile, its policy action and its subject rules.
    let jwt = k8s.k8s_token("prod", "deployer");
    for audience in [
        "sts.amazonaws.com",
        "api://AzureADTokenExchange",
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
    ] {
        let r = srv.exchange_jwt(&jwt, audience).await;
        let body = assert_problem(r, 400, "invalid-target").await;
        assert!(body["detail"].as_str().unwrap().contains("through a cloud profile"), "{body}");
    }
    // A revoked subject's old evidence gets no cloud token either.
    let old = k8s.k8s_token("prod", "deployer");
    assert_eq!(cloud_token(&srv, "prod-gcp", &old).await.status(), 201);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r =
        srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/deployer"}))).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = cloud_token(&srv, "prod-gcp", &old).await;
    assert_problem(r, 400, "subject-revoked").await;
    srv.stop().await;
}

/// The forms a fake STS received, each as its fields in order.
type Received = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A loopback STS: records each form it receives, answers `answer`.
async fn fake_sts(status: u16, answer: &'static str) -> (String, Received) {
    let seen: Received = Default::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |axum::Form(form): axum::Form<Vec<(String, String)>>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(form);
                (axum::http::StatusCode::from_u16(status).unwrap(), [("content-type", "text/xml")], answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), seen)
}

const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/deployer/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>SESSION-TOKEN-SECRET</SessionToken>
      <SecretAccessKey>SECRET-ACCESS-KEY</SecretAccessKey>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

const STS_REFUSED: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error>
  <RequestId>r</RequestId></ErrorResponse>"#;

async fn aws_credentials(srv: &TestServer, profile: &str, evidence: &str) -> reqwest::Response {
    srv.http
        .post(format!("{}/v1/credentials/aws/{profile}", srv.url))
        .json(&json!({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": evidence}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mayfly_gets_aws_credentials_from_sts_and_records_them_without_secrets() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let (sts, seen) = fake_sts(200, STS_OK).await;
    let srv = server(&k8s, &gh, &sts).await;
    let r = aws_credentials(&srv, "prod-aws", &k8s.k8s_token("prod", "deployer")).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["access_key_id"], "ASIAEXAMPLE");
    assert_eq!(body["secret_access_key"], "SECRET-ACCESS-KEY");
    assert_eq!(body["assumed_role_arn"], "arn:aws:sts::123456789012:assumed-role/deployer/s");
    let form = seen.lock().unwrap().pop().unwrap();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("Action"), "AssumeRoleWithWebIdentity");
    assert_eq!(get("RoleArn"), ROLE);
    assert_eq!(get("DurationSeconds"), "3600");
    let (_, claims) = verify_as_cloud(&srv, &get("WebIdentityToken"), "sts.amazonaws.com").await;
    assert_eq!(claims["jti"], body["jti"], "the token STS got is the one recorded");

    // Audited with the access key id, never the secrets.
    let audit: Vec<Value> = srv.admin_get("/v1/audit?limit=1000").await;
    let text = serde_json::to_string(&audit).unwrap();
    assert!(text.contains("cloud.aws.credentials_issued") && text.contains("ASIAEXAMPLE"));
    assert!(!text.contains("SECRET-ACCESS-KEY") && !text.contains("SESSION-TOKEN-SECRET"), "no secret in the audit");

    // Policy can allow a workload the token and refuse it the exchange.
    let r = aws_credentials(&srv, "prod-aws", &k8s.k8s_token("prod", "web")).await;
    assert_problem(r, 403, "policy-denied").await;
    assert_eq!(cloud_token(&srv, "prod-aws", &k8s.k8s_token("prod", "web")).await.status(), 201);
    // Only an aws profile exchanges at STS.
    let r = aws_credentials(&srv, "prod-azure", &k8s.k8s_token("prod", "deployer")).await;
    assert_problem(r, 400, "invalid-target").await;
    // Forged evidence, and a revoked subject's old evidence, reach no STS call.
    let calls = seen.lock().unwrap().len();
    let forged = TestIssuer::new(K8S_ISSUER).k8s_token("prod", "deployer");
    assert_eq!(aws_credentials(&srv, "prod-aws", &forged).await.status(), 400);
    let old = k8s.k8s_token("prod", "deployer");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r =
        srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/deployer"}))).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_problem(aws_credentials(&srv, "prod-aws", &old).await, 400, "subject-revoked").await;
    assert_eq!(seen.lock().unwrap().len(), calls, "STS was not called for a refused caller");
    // The profiles' set-up values are for the admin only.
    let r = srv.http.get(format!("{}/v1/clouds", srv.url)).send().await.unwrap();
    assert_problem(r, 401, "unauthorized").await;
    let profiles: Vec<Value> = srv.admin_get("/v1/clouds").await;
    assert_eq!(profiles.len(), 3);
    srv.stop().await;
}

#[tokio::test]
async fn an_sts_refusal_comes_back_with_its_code_and_nothing_is_delivered() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let (sts, _) = fake_sts(400, STS_REFUSED).await;
    let srv = server(&k8s, &gh, &sts).await;
    let r = aws_credentials(&srv, "prod-aws", &k8s.k8s_token("prod", "deployer")).await;
    let body = assert_problem(r, 502, "cloud-refused").await;
    assert!(body["detail"].as_str().unwrap().contains("InvalidIdentityToken"), "{body}");
    let audit: Vec<Value> = srv.admin_get("/v1/audit?limit=1000").await;
    assert!(audit.iter().any(|e| e["kind"] == "cloud.aws.refused"));
    assert!(!audit.iter().any(|e| e["kind"] == "cloud.aws.credentials_issued"));
    srv.stop().await;

    // STS down: 503 and a clear problem, no hang.
    let srv = server(&k8s, &gh, "http://127.0.0.1:9/").await;
    let r = aws_credentials(&srv, "prod-aws", &k8s.k8s_token("prod", "deployer")).await;
    assert_problem(r, 503, "cloud-unavailable").await;
    srv.stop().await;
}

#[tokio::test]
async fn a_rotated_cloud_key_is_published_before_it_signs_and_the_jwks_stays_short() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = server(&k8s, &gh, "http://127.0.0.1:9").await;
    let evidence = k8s.k8s_token("prod", "deployer");
    let before: Value = cloud_token(&srv, "prod-azure", &evidence).await.json().await.unwrap();
    let old_kid = jsonwebtoken::decode_header(before["token"].as_str().unwrap()).unwrap().kid.unwrap();

    let r = srv.admin_post("/v1/keys/rotate?profile=clouds", None).await;
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["profile"], "clouds");
    assert_eq!(info["alg"], "RS256");
    let activates = info["activates_at"].as_i64().expect("a lead time");
    assert!(activates >= now() + 590, "published 10 minutes before it signs");
    let new_kid = info["kid"].as_str().unwrap();
    assert!(srv.jwks().await.find(new_kid).is_some(), "the next key is published now");
    let after: Value = cloud_token(&srv, "prod-azure", &evidence).await.json().await.unwrap();
    let kid = jsonwebtoken::decode_header(after["token"].as_str().unwrap()).unwrap().kid.unwrap();
    assert_eq!(kid, old_kid, "the old key signs until the new one's time");

    let r = srv.admin_post("/v1/keys/rotate?profile=nope", None).await;
    assert_problem(r, 404, "not-found").await;
    // Rotating again and again stops well under AWS's ~100 keys.
    let mut refused = None;
    for _ in 0..40 {
        let r = srv.admin_post("/v1/keys/rotate?profile=clouds", None).await;
        if r.status() != 200 {
            refused = Some(r);
            break;
        }
    }
    assert_problem(refused.expect("rotation is refused at the cap"), 409, "conflict").await;
    let published = srv.jwks().await.keys.len();
    assert!(published <= mayfly_server::keys::MAX_PUBLISHED_KEYS, "{published}");
    srv.stop().await;
}
