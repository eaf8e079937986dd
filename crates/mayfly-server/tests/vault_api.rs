//! The Vault-compatible API (`[vault_api]`): Vault's paths and shapes over Mayfly's flow.
//! A login is a task; its database users die with it; every refusal is in Vault's shape
//! and issues nothing. (Vault's own clients, hvac and OpenBao's agent, are exercised in
//! tests/interop/vault_interop.py.)

use std::time::{Duration, Instant};

use mayfly_testkit::*;
use serde_json::{Value, json};
use sqlx::Connection;

const POLICY: &str = r#"
@id("prod-may-log-in")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("prod-logins-may-use-the-database")
permit (principal is Mayfly::Task, action == Mayfly::Action::"issue", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 3600 };

@id("logins-may-get-web-certificates")
permit (principal is Mayfly::Task, action == Mayfly::Action::"certificate", resource == Mayfly::CertificateRole::"web")
when { !context.dns_names.contains("admin.svc.internal") };

@id("logins-may-get-api-tokens")
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test");
"#;

fn config(prefix: &str) -> String {
    format!(
        r#"
[[databases]]
name = "pg"
kind = "postgres"
url = "{PG_ADMIN}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "login"
default_ttl = "2m"
max_ttl = "10m"

[[databases.roles]]
name = "other"

[vault_api]
listen = "127.0.0.1:0"

[[vault_api.auth]]
mount = "jwt"
method = "jwt"

[[vault_api.auth.roles]]
name = "app"
attestor = "k8s"
bound_claims = {{ namespace = "prod" }}
token_ttl = "5m"
token_policies = ["app", "reporting"]

[[vault_api.auth]]
mount = "kubernetes"
method = "kubernetes"

[[vault_api.auth.roles]]
name = "any"
attestor = "k8s"
token_ttl = "1m"

[[vault_api.auth.roles]]
name = "api-only"
attestor = "k8s"
token_ttl = "1m"
audiences = ["https://api.test"]

[[vault_api.database_roles]]
name = "app"
database = "pg"
role = "login"

[[vault_api.database_roles]]
name = "other"
database = "pg"
role = "other"

[[vault_api.identity_roles]]
name = "api"
audience = "https://api.test"

[[vault_api.pki_roles]]
name = "web"
allowed_domains = ["svc.internal"]
allow_subdomains = true
max_ttl = "10m"

[[vault_api.pki_roles]]
name = "ops"
allowed_domains = ["ops.internal"]
"#
    )
}

struct Vault {
    srv: TestServer,
    k8s: TestIssuer,
    gh: TestIssuer,
    base: String,
    _users: UserPrefix,
}

async fn start() -> Vault {
    start_with_listen("request_timeout = \"30s\"").await
}

/// A server whose `[listen]` (shared by the Vault-compatible listener) has these lines too.
async fn start_with_listen(listen: &str) -> Vault {
    let users = UserPrefix::new("va");
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let config = TestConfig::standard(&k8s, &gh).policies(POLICY).set("listen", listen).toml(&config(users.as_str()));
    let srv = TestServer::start_with(config).await;
    let base = format!("http://{}", srv.running.vault_addr.expect("the Vault-compatible API listens"));
    Vault { srv, k8s, gh, base, _users: users }
}

impl Vault {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.srv.http.request(method, format!("{}/v1/{path}", self.base));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    async fn login(&self, mount: &str, role: &str, jwt: &str) -> (u16, Value) {
        self.call("PUT", &format!("auth/{mount}/login"), None, Some(json!({"role": role, "jwt": jwt}))).await
    }

    async fn token(&self, ns: &str) -> Value {
        let (status, v) = self.login("jwt", "app", &self.k8s.k8s_token(ns, "api")).await;
        assert_eq!(status, 200, "{v}");
        v["auth"].clone()
    }
}

/// A Vault error: the status, and `errors` a non-empty list of strings.
fn vault_error(got: (u16, Value), status: u16) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    let errors = got.1["errors"].as_array().unwrap_or_else(|| panic!("errors list: {}", got.1));
    assert!(!errors.is_empty() && errors.iter().all(Value::is_string), "{}", got.1);
    errors.iter().map(|e| e.as_str().unwrap()).collect::<Vec<_>>().join("; ")
}

async fn revocations(srv: &TestServer) -> Vec<Value> {
    let page: Value = srv.admin_get("/v1/revocations?since=0").await;
    page["entries"].as_array().cloned().unwrap_or_default()
}

/// RFC 7662 introspection as the operator.
async fn introspect(srv: &TestServer, token: &str) -> Value {
    let r = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(&srv.admin_token)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn pg_role_exists(name: &str) -> bool {
    let mut c = sqlx::PgConnection::connect(PG_ADMIN).await.unwrap();
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap()
        .is_some()
}

async fn wait_dropped(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg_role_exists(name).await {
        assert!(Instant::now() < deadline, "user {name} still exists 15 s after its login ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_login_is_a_task_whose_database_users_renew_and_die_with_its_token() {
    let v = start().await;
    let auth = v.token("prod").await;
    let token = auth["client_token"].as_str().unwrap();
    assert_eq!(auth["policies"], json!(["app", "reporting"]));
    assert_eq!(auth["renewable"], false, "a login token lasts its role's token_ttl: agents log in again");
    let ttl = auth["lease_duration"].as_i64().unwrap();
    assert!((290..=300).contains(&ttl), "{ttl}");
    let accessor = auth["accessor"].as_str().unwrap();

    // The token is a Mayfly task token: its task is listed, started by the workload.
    let task: Value = v.srv.admin_get(&format!("/v1/tasks/{accessor}")).await;
    assert_eq!(task["purpose"], "vault login jwt/app");
    assert_eq!(task["creator"], "spiffe://test.example/ns/prod/sa/api");

    let (status, me) = v.call("GET", "auth/token/lookup-self", Some(token), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["accessor"], accessor);
    assert_eq!(me["data"]["path"], "auth/jwt/login");
    assert_eq!(me["data"]["meta"]["role"], "app");

    // Database credentials: a real user, the lease named Vault's way.
    let (status, creds) = v.call("GET", "database/creds/app", Some(token), None).await;
    assert_eq!(status, 200, "{creds}");
    let lease_id = creds["lease_id"].as_str().unwrap();
    assert!(lease_id.starts_with("database/creds/app/"), "{lease_id}");
    assert_eq!(creds["renewable"], true);
    assert_eq!(creds["lease_duration"].as_i64().map(|d| (115..=120).contains(&d)), Some(true), "{creds}");
    let user = creds["data"]["username"].as_str().unwrap().to_owned();
    let password = creds["data"]["password"].as_str().unwrap();
    let url = format!("postgres://{user}:{password}@127.0.0.1:5432/postgres");
    let mut session = sqlx::PgConnection::connect(&url).await.expect("the user logs in");
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();

    let (status, looked) = v.call("PUT", "sys/leases/lookup", Some(token), Some(json!({"lease_id": lease_id}))).await;
    assert_eq!(status, 200, "{looked}");
    assert_eq!(looked["data"]["id"], lease_id);

    // Renewal within the role's maximum; beyond it, capped with Vault's warning.
    let (status, renewed) =
        v.call("PUT", "sys/leases/renew", Some(token), Some(json!({"lease_id": lease_id, "increment": 300}))).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lease_id"], lease_id);
    let d = renewed["lease_duration"].as_i64().unwrap();
    assert!((295..=300).contains(&d), "{renewed}");
    let (status, capped) =
        v.call("PUT", "sys/leases/renew", Some(token), Some(json!({"lease_id": lease_id, "increment": "2h"}))).await;
    assert_eq!(status, 200, "{capped}");
    assert!(capped["lease_duration"].as_i64().unwrap() <= 300, "the login ends in 5 min: {capped}");
    assert!(capped["warnings"][0].as_str().unwrap().contains("capped"), "{capped}");

    // renew-self answers the time left: a login token cannot outlive its task.
    let (status, r) = v.call("PUT", "auth/token/renew-self", Some(token), Some(json!({"increment": "1h"}))).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["auth"]["lease_duration"].as_i64().unwrap() <= 300, "{r}");

    // Identity tokens: a Mayfly access token for the role's audience, under the login's task.
    let (status, id) = v.call("GET", "identity/oidc/token/api", Some(token), None).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id["data"]["client_id"], "https://api.test");
    let introspected = introspect(&v.srv, id["data"]["token"].as_str().unwrap()).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["task_id"], accessor);

    // Revoking the token ends the task: the user is dropped, its session ended, the token dead.
    assert_eq!(v.call("PUT", "auth/token/revoke-self", Some(token), None).await.0, 204);
    wait_dropped(&user).await;
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "the session was ended");
    vault_error(v.call("GET", "auth/token/lookup-self", Some(token), None).await, 403);
    vault_error(v.call("GET", "database/creds/app", Some(token), None).await, 403);
    let introspected = introspect(&v.srv, id["data"]["token"].as_str().unwrap()).await;
    assert_eq!(introspected["active"], false, "the identity token died with the login");
    v.srv.stop().await;
}

#[tokio::test]
async fn an_operator_revokes_by_accessor_and_by_prefix_with_one_revocation() {
    let v = start().await;
    let (a, b) = (v.token("prod").await, v.token("prod").await);
    let (ta, tb) = (a["client_token"].as_str().unwrap(), b["client_token"].as_str().unwrap());
    let mut users = Vec::new();
    for t in [ta, tb, tb] {
        let (status, creds) = v.call("GET", "database/creds/app", Some(t), None).await;
        assert_eq!(status, 200, "{creds}");
        users.push(creds["data"]["username"].as_str().unwrap().to_owned());
    }
    // A login token cannot revoke a prefix, nor another login's accessor.
    vault_error(v.call("PUT", "sys/leases/revoke-prefix/database/creds/app", Some(ta), None).await, 403);
    let other = json!({"accessor": b["accessor"]});
    vault_error(v.call("PUT", "auth/token/revoke-accessor", Some(ta), Some(other.clone())).await, 403);

    let admin = v.srv.admin_token.clone();
    assert_eq!(
        v.call("PUT", "auth/token/revoke-accessor", Some(&admin), Some(json!({"accessor": a["accessor"]}))).await.0,
        204
    );
    wait_dropped(&users[0]).await;
    vault_error(v.call("GET", "auth/token/lookup-self", Some(ta), None).await, 403);
    assert_eq!(v.call("GET", "auth/token/lookup-self", Some(tb), None).await.0, 200, "b is untouched");

    let before = revocations(&v.srv).await;
    assert_eq!(v.call("PUT", "sys/leases/revoke-prefix/database/creds/app", Some(&admin), None).await.0, 204);
    let after = revocations(&v.srv).await;
    assert_eq!(after.len(), before.len() + 1, "one revocation for the role, whatever the number of leases");
    let last = after.last().unwrap();
    assert_eq!((&last["kind"], &last["value"]), (&json!("audience"), &json!("db:pg/login")), "{after:?}");
    for u in &users[1..] {
        wait_dropped(u).await;
    }
    // New leases after the revocation are issued again (a revocation is not a block), once
    // past what it covers: its second, and on shared storage the propagation margin (5 s)
    // that lets other replicas apply it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, creds) = v.call("GET", "database/creds/app", Some(tb), None).await;
        if status == 200 {
            break;
        }
        assert!(creds["errors"][1].as_str().unwrap().contains("blocked by a revocation"), "{creds}");
        assert!(Instant::now() < deadline, "new leases still refused 10 s after revoke-prefix: {creds}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    v.srv.stop().await;
}

#[tokio::test]
async fn refusals_are_in_vaults_shape_audited_and_issue_nothing() {
    let v = start().await;
    let prod = v.k8s.k8s_token("prod", "api");
    // Login: unknown role, no jwt, a mismatched bound claim, expired, wrong audience, forged.
    assert!(vault_error(v.login("jwt", "nope", &prod).await, 400).contains("could not be found"));
    vault_error(v.call("PUT", "auth/jwt/login", None, Some(json!({"role": "app"}))).await, 400);
    let dev = v.k8s.k8s_token("dev", "api");
    assert!(vault_error(v.login("jwt", "app", &dev).await, 403).contains("namespace"));
    let mut claims = v.k8s.k8s_claims("prod", "api");
    claims["exp"] = json!(now() - 600);
    claims["iat"] = json!(now() - 1200);
    vault_error(v.login("jwt", "app", &v.k8s.sign("RS256", &claims)).await, 400);
    let mut claims = v.k8s.k8s_claims("prod", "api");
    claims["aud"] = json!("someone-else");
    vault_error(v.login("jwt", "app", &v.k8s.sign("RS256", &claims)).await, 400);
    let forger = TestIssuer::new(K8S_ISSUER);
    vault_error(v.login("jwt", "app", &forger.k8s_token("prod", "api")).await, 400);
    // The kubernetes mount's role has no bound attributes; Cedar still refuses namespace dev.
    assert!(vault_error(v.login("kubernetes", "any", &dev).await, 403).contains("permission denied"));
    assert_eq!(v.login("kubernetes", "any", &prod).await.0, 200);
    // An unknown mount, an unknown path, a KV path: 404 in Vault's shape.
    vault_error(v.login("userpass", "app", &prod).await, 404);
    assert!(vault_error(v.call("GET", "secret/data/foo", None, None).await, 404).contains("no handler"));
    vault_error(v.call("GET", "sys/nope", None, None).await, 404);
    vault_error(v.call("DELETE", "sys/health", None, None).await, 405);

    // Tokens: missing, garbage, an admin token where an identity is needed, a task token bearer of another header.
    assert!(vault_error(v.call("GET", "database/creds/app", None, None).await, 403).contains("permission denied"));
    vault_error(v.call("GET", "database/creds/app", Some("hvs.garbage"), None).await, 403);
    vault_error(v.call("GET", "database/creds/app", Some(&"x".repeat(20_000)), None).await, 403);
    let admin = v.srv.admin_token.clone();
    vault_error(v.call("GET", "database/creds/app", Some(&admin), None).await, 403);
    let token = v.token("prod").await["client_token"].as_str().unwrap().to_owned();
    assert!(vault_error(v.call("GET", "database/creds/nope", Some(&token), None).await, 400).contains("unknown role"));
    let r = v.srv.http.get(format!("{}/v1/database/creds/app", v.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "Authorization: Bearer is accepted too");
    let creds: Value = r.json().await.unwrap();
    let lease_id = creds["lease_id"].as_str().unwrap();

    // Another login cannot see, renew or revoke the lease (told as if it did not exist).
    let other = v.token("prod").await["client_token"].as_str().unwrap().to_owned();
    for path in ["sys/leases/lookup", "sys/leases/renew", "sys/leases/revoke"] {
        let e = vault_error(v.call("PUT", path, Some(&other), Some(json!({"lease_id": lease_id}))).await, 400);
        assert!(e.contains("lease not found"), "{path}: {e}");
    }
    // A lease id of another role, or made up.
    let forged = lease_id.replace("creds/app/", "creds/other/");
    vault_error(v.call("PUT", "sys/leases/lookup", Some(&token), Some(json!({"lease_id": forged}))).await, 400);
    vault_error(
        v.call("PUT", "sys/leases/renew", Some(&token), Some(json!({"lease_id": lease_id, "increment": [1]}))).await,
        400,
    );
    // Oversized and malformed bodies.
    let big = json!({"role": "app", "jwt": "x".repeat(80_000)});
    assert_eq!(v.call("PUT", "auth/jwt/login", None, Some(big)).await.0, 413);
    let r = v.srv.http.put(format!("{}/v1/auth/jwt/login", v.base)).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // A revoked subject's old evidence logs in no more, and its logins ended.
    let old = v.k8s.k8s_token("prod", "api");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rev = json!({"subject": "spiffe://test.example/ns/prod/sa/api", "reason": "incident"});
    let r = v.srv.admin_post("/v1/revocations", Some(rev)).await;
    assert_eq!(r.status(), 201);
    vault_error(v.login("jwt", "app", &old).await, 400);
    vault_error(v.call("GET", "database/creds/app", Some(&token), None).await, 403);

    let denied: Vec<Value> = v.srv.admin_get("/v1/audit?kind=policy.denied").await;
    assert!(denied.iter().any(|e| e["detail"]["action"] == "start_task"), "the Cedar denial is audited");
    let audit = serde_json::to_string(&v.srv.admin_get::<Vec<Value>>("/v1/audit").await).unwrap();
    assert!(!audit.contains(&token) && !audit.contains(&prod), "no token in the audit trail");
    v.srv.stop().await;
}

#[tokio::test]
async fn sys_endpoints_answer_as_vault_and_capabilities_come_from_cedar() {
    let v = start().await;
    let (status, health) = v.call("GET", "sys/health", None, None).await;
    assert_eq!(status, 200);
    assert_eq!((health["initialized"].as_bool(), health["sealed"].as_bool()), (Some(true), Some(false)));
    let (status, seal) = v.call("GET", "sys/seal-status", None, None).await;
    assert_eq!((status, seal["sealed"].as_bool()), (200, Some(false)));
    vault_error(v.call("GET", "sys/mounts", None, None).await, 403);

    let prod = v.token("prod").await["client_token"].as_str().unwrap().to_owned();
    let (status, mounts) = v.call("GET", "sys/mounts", Some(&prod), None).await;
    assert_eq!(status, 200, "{mounts}");
    assert_eq!(mounts["data"]["database/"]["type"], "database");
    let (_, auth) = v.call("GET", "sys/auth", Some(&prod), None).await;
    assert_eq!(auth["data"]["kubernetes/"]["type"], "kubernetes");
    let (status, ui) = v.call("GET", "sys/internal/ui/mounts/database/creds/app", Some(&prod), None).await;
    assert_eq!((status, ui["data"]["type"].as_str()), (200, Some("database")), "{ui}");

    let ask = json!({"paths": ["database/creds/app", "secret/data/x", "auth/token/lookup-self"]});
    let (status, caps) = v.call("POST", "sys/capabilities-self", Some(&prod), Some(ask.clone())).await;
    assert_eq!(status, 200, "{caps}");
    assert_eq!(caps["database/creds/app"], json!(["read", "update"]));
    assert_eq!(caps["secret/data/x"], json!(["deny"]));
    assert_eq!(caps["auth/token/lookup-self"], json!(["read", "update"]));
    // A kubernetes-mount login from namespace "ops" is allowed to start (policy below) but
    // Cedar gives it no database: capabilities say so.
    let ops_policy = format!(
        "{POLICY}\n@id(\"ops-may-log-in\")\npermit (principal, action == Mayfly::Action::\"start_task\", resource)\n\
         when {{ principal.hasTag(\"namespace\") && principal.getTag(\"namespace\") == \"ops\" }};\n"
    );
    std::fs::write(v.srv.dir.path().join("policies/test.cedar"), ops_policy).unwrap();
    let ops = v.k8s.k8s_token("ops", "runner");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ops_token = loop {
        let (status, body) = v.login("kubernetes", "any", &ops).await;
        if status == 200 {
            break body["auth"]["client_token"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "policy reload: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, caps) =
        v.call("POST", "sys/capabilities-self", Some(&ops_token), Some(json!({"path": "database/creds/app"}))).await;
    assert_eq!(caps["capabilities"], json!(["deny"]), "{caps}");
    vault_error(v.call("GET", "database/creds/app", Some(&ops_token), None).await, 403);
    v.srv.stop().await;
}

#[tokio::test]
async fn certificates_name_the_login_its_allowed_domains_only_and_what_cedar_allows() {
    let v = start().await;
    let auth = v.token("prod").await;
    let token = auth["client_token"].as_str().unwrap();
    let accessor = auth["accessor"].as_str().unwrap();
    let ask = json!({"common_name": "api.svc.internal", "alt_names": "svc.internal, web.svc.internal", "ttl": "1h"});
    let (status, issued) = v.call("POST", "pki/issue/web", Some(token), Some(ask)).await;
    assert_eq!(status, 200, "{issued}");
    let data = &issued["data"];
    assert_eq!(data["private_key_type"], "ec");
    assert!(data["private_key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    let pem = data["certificate"].as_str().unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = sans.value.general_names.iter().map(|n| n.to_string()).collect();
    assert!(names.contains(&format!("URI(spiffe://test.example/task/{accessor})")), "{names:?}");
    for dns in ["api.svc.internal", "svc.internal", "web.svc.internal"] {
        assert!(names.contains(&format!("DNSName({dns})")), "{names:?}");
    }
    let lifetime = cert.validity().not_after.timestamp() - now();
    assert!((290..=300).contains(&lifetime), "1 h asked, the role allows 10 min, the login ends in 5: {lifetime}");
    // Signed by the CA that pki/ca/pem publishes.
    let r = v.srv.http.get(format!("{}/v1/pki/ca/pem", v.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ca_pem = r.text().await.unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    assert!(cert.verify_signature(Some(ca.parse_x509().unwrap().public_key())).is_ok());
    // Recorded under the login's task, and listed.
    let leases: Vec<Value> =
        v.srv.admin_get(&format!("/v1/leases?kind=x509&subject=spiffe://test.example/task/{accessor}")).await;
    assert_eq!(leases.len(), 1, "{leases:?}");

    // Refusals: outside the domains, a look-alike, a wildcard, IP SANs, another role's
    // name, Cedar's forbid on a name, a role Cedar does not permit, an admin token.
    for (body, status, says) in [
        (json!({"common_name": "api.example.com"}), 400, "not allowed"),
        (json!({"common_name": "evilsvc.internal"}), 400, "not allowed"),
        (json!({"common_name": "*.svc.internal"}), 400, "not a DNS name"),
        (json!({"common_name": "a.svc.internal", "ip_sans": "10.0.0.1"}), 400, "ip_sans"),
        (json!({"alt_names": "a.svc.internal"}), 400, "common_name"),
        (json!({"common_name": "admin.svc.internal"}), 403, "permission denied"),
    ] {
        let e = vault_error(v.call("POST", "pki/issue/web", Some(token), Some(body.clone())).await, status);
        assert!(e.contains(says), "{body}: {e}");
    }
    let e = vault_error(
        v.call("POST", "pki/issue/ops", Some(token), Some(json!({"common_name": "ops.internal"}))).await,
        403,
    );
    assert!(e.contains("permission denied"), "{e}");
    vault_error(
        v.call("POST", "pki/issue/nope", Some(token), Some(json!({"common_name": "a.svc.internal"}))).await,
        400,
    );
    let admin = v.srv.admin_token.clone();
    vault_error(
        v.call("POST", "pki/issue/web", Some(&admin), Some(json!({"common_name": "a.svc.internal"}))).await,
        403,
    );
    let leases: Vec<Value> =
        v.srv.admin_get(&format!("/v1/leases?kind=x509&subject=spiffe://test.example/task/{accessor}")).await;
    assert_eq!(leases.len(), 1, "refusals issued nothing");
    // After the login ends, no certificate more.
    assert_eq!(v.call("POST", "auth/token/revoke-self", Some(token), None).await.0, 204);
    vault_error(
        v.call("POST", "pki/issue/web", Some(token), Some(json!({"common_name": "a.svc.internal"}))).await,
        403,
    );
    v.srv.stop().await;
}

#[tokio::test]
async fn a_native_task_cannot_pass_for_a_login_and_leases_stay_with_their_role_and_holder() {
    let v = start().await;
    let dev = v.k8s.k8s_token("dev", "intruder");
    let prod = v.k8s.k8s_token("prod", "api");
    // The login's marks cannot be asked for on the native API: not its purpose, not its scopes,
    // not by a sub-task either.
    let start_task = |body: Value| {
        let srv = &v.srv;
        async move { srv.http.post(format!("{}/v1/tasks", srv.url)).json(&body).send().await.unwrap() }
    };
    for body in [
        json!({"subject_token_type": JWT_TYPE, "subject_token": dev, "purpose": "vault login jwt/app"}),
        json!({"subject_token_type": JWT_TYPE, "subject_token": dev, "purpose": "  Vault Login jwt/app"}),
        json!({"subject_token_type": JWT_TYPE, "subject_token": prod, "purpose": "deploy", "scope": "vault:app"}),
    ] {
        assert_problem(start_task(body).await, 400, "invalid-request").await;
    }
    let any = v.login("kubernetes", "any", &prod).await.1["auth"]["client_token"].as_str().unwrap().to_owned();
    let sub = json!({"subject_token_type": "urn:mayfly:params:oauth:token-type:task", "subject_token": any,
                     "purpose": "vault login jwt/app"});
    assert_problem(start_task(sub).await, 400, "invalid-request").await;

    // A role trusts one attestor: GitHub Actions evidence does not log in to a Kubernetes role.
    let t = now();
    let claims = json!({"iss": GITHUB_TEST_ISSUER, "aud": MAYFLY_AUDIENCE, "iat": t, "exp": t + 300,
                        "repository": "evil/x", "repository_owner": "evil", "ref": "refs/heads/main",
                        "ref_type": "branch", "namespace": "prod"});
    let e = vault_error(v.login("jwt", "app", &v.gh.sign("RS256", &claims)).await, 403);
    assert!(e.contains("attestor"), "{e}");

    // A lease id is bound to its role: the same id under another role's prefix is not found.
    let token = v.token("prod").await["client_token"].as_str().unwrap().to_owned();
    let (_, creds) = v.call("GET", "database/creds/app", Some(&token), None).await;
    let lease_id = creds["lease_id"].as_str().unwrap().to_owned();
    let elsewhere = lease_id.replace("creds/app/", "creds/other/");
    let e =
        vault_error(v.call("PUT", "sys/leases/lookup", Some(&token), Some(json!({"lease_id": elsewhere}))).await, 400);
    assert!(e.contains("lease not found"), "{e}");
    // Without a valid token, an existing lease and a made-up one look the same.
    for id in [lease_id.as_str(), "database/creds/app/made-up"] {
        vault_error(v.call("PUT", "sys/leases/lookup", Some("s.garbage"), Some(json!({"lease_id": id}))).await, 403);
    }
    // A huge increment is capped, never wrapped.
    let (status, r) = v
        .call("PUT", "sys/leases/renew", Some(&token), Some(json!({"lease_id": lease_id, "increment": u64::MAX})))
        .await;
    assert_eq!(status, 200, "{r}");
    assert!((250..=300).contains(&r["lease_duration"].as_i64().unwrap()), "{r}");
    let (_, looked) = v.call("PUT", "sys/leases/lookup", Some(&token), Some(json!({"lease_id": lease_id}))).await;
    assert!(looked["data"]["ttl"].as_i64().unwrap() > 0, "{looked}");

    // revoke-prefix names a role or a lease, or is refused (never a silent 204).
    let admin = v.srv.admin_token.clone();
    for prefix in ["database/credsX", "database/creds/nope", "database/foo", &format!("{lease_id}/extra")] {
        vault_error(v.call("PUT", &format!("sys/leases/revoke-prefix/{prefix}"), Some(&admin), None).await, 400);
    }
    let (_, looked) = v.call("PUT", "sys/leases/lookup", Some(&token), Some(json!({"lease_id": lease_id}))).await;
    assert_eq!(looked["data"]["state"], "active", "refused prefixes revoked nothing");

    // A login limited to an audience gets no database user.
    let limited = v.login("kubernetes", "api-only", &prod).await.1["auth"]["client_token"].as_str().unwrap().to_owned();
    vault_error(v.call("GET", "database/creds/app", Some(&limited), None).await, 400);
    assert_eq!(v.call("GET", "identity/oidc/token/api", Some(&limited), None).await.0, 200);
    v.srv.stop().await;
}

#[tokio::test]
async fn slow_and_crowded_requests_are_cut_in_vaults_shape_and_other_paths_want_a_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v = start_with_listen("request_timeout = \"1s\"\nheader_read_timeout = \"1s\"\nmax_headers = 16").await;
    let addr = v.srv.running.vault_addr.unwrap();
    // A login whose body never finishes: 408 within the request timeout, as {"errors": [...]}.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "PUT /v1/auth/jwt/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"role\"";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok() && text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("{\"errors\":["), "{text}");
    // A head that trickles in is cut at the header read timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    let (mut read, mut write) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut rest = Vec::new();
    assert!(tokio::time::timeout(Duration::from_secs(6), read.read_to_end(&mut rest)).await.is_ok());
    trickle.abort();
    // Too many header fields: 431 (HTTP/1's is hyper's own, before any handler).
    let mut req = v.srv.http.get(format!("{}/v1/sys/health", v.base));
    for i in 0..20 {
        req = req.header(format!("x-h{i}"), "1");
    }
    assert_eq!(req.send().await.unwrap().status(), 431);

    // Each path wants a valid token; an admin token gets no identity token.
    for (method, path) in [
        ("GET", "sys/internal/ui/mounts/database/creds/app"),
        ("POST", "sys/capabilities-self"),
        ("GET", "identity/oidc/token/api"),
        ("POST", "pki/issue/web"),
        ("POST", "auth/token/revoke-self"),
        ("POST", "auth/token/renew-self"),
    ] {
        let body = json!({"paths": ["x"], "common_name": "a.svc.internal"});
        vault_error(v.call(method, path, Some("s.garbage"), Some(body)).await, 403);
    }
    let admin = v.srv.admin_token.clone();
    vault_error(v.call("GET", "identity/oidc/token/api", Some(&admin), None).await, 403);
    // The CA is public, as in Vault.
    let r = v.srv.http.get(format!("{}/v1/pki/ca/pem", v.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    v.srv.stop().await;
}
