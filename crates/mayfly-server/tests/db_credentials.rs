//! Dynamic database credentials against the real PostgreSQL, MariaDB and Redis on
//! this machine (127.0.0.1). Each test uses its own username prefix (and schema), so
//! tests running side by side never touch each other's users; what is left under the
//! prefix is removed when the test ends.

use std::time::{Duration, Instant};

use mayfly_testkit::*;
use serde_json::{Value, json};
use sqlx::Connection;

const DB_POLICY: &str = r#"
@id("prod-may-use-databases")
permit (principal, action == Mayfly::Action::"issue", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 3600 };

@id("prod-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };
"#;

async fn start(databases_toml: &str) -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let config = TestConfig::standard(&k8s, &gh).add_policies(DB_POLICY).toml(databases_toml);
    (TestServer::start_with(config).await, k8s)
}

async fn issue(srv: &TestServer, evidence: (&str, &str), db: &str, role: &str, ttl: Option<u64>) -> reqwest::Response {
    let mut body = json!({"subject_token_type": evidence.1, "subject_token": evidence.0});
    if let Some(t) = ttl {
        body["ttl_seconds"] = json!(t);
    }
    srv.http.post(format!("{}/v1/credentials/{db}/{role}", srv.url)).json(&body).send().await.unwrap()
}

/// `DELETE /v1/credentials/leases/{id}` as the operator.
async fn revoke_lease(srv: &TestServer, id: &str) -> reqwest::Response {
    srv.http
        .delete(format!("{}/v1/credentials/leases/{id}", srv.url))
        .bearer_auth(&srv.admin_token)
        .send()
        .await
        .unwrap()
}

/// Starts a task for a platform token; returns the answer (task and task token).
async fn start_task(srv: &TestServer, platform_token: &str, body: Value) -> Value {
    let mut body = body;
    body["subject_token_type"] = json!(JWT_TYPE);
    body["subject_token"] = json!(platform_token);
    let r = srv.http.post(format!("{}/v1/tasks", srv.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "task started");
    r.json().await.unwrap()
}

async fn lease(srv: &TestServer, id: &str) -> Value {
    let all: Vec<Value> = srv.admin_get("/v1/credentials/leases?state=all&limit=1000").await;
    all.into_iter().find(|l| l["lease_id"] == id).expect("lease listed")
}

async fn wait_for_state(srv: &TestServer, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let l = lease(srv, id).await;
        if l["state"] == want {
            return l;
        }
        assert!(Instant::now() < deadline, "lease {id} did not become {want} in {within:?}: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pg_admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(PG_ADMIN).await.expect("PostgreSQL on 127.0.0.1:5432")
}

async fn pg_role_exists(name: &str) -> bool {
    let mut c = pg_admin().await;
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap()
        .is_some()
}

/// What PostgreSQL stored as the role's password.
async fn stored_password(name: &str) -> String {
    let mut admin = pg_admin().await;
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

fn pg_user_url(v: &Value) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}",
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
        v["connection"]["host"].as_str().unwrap(),
        v["connection"]["port"].as_u64().unwrap(),
        v["connection"]["database"].as_str().unwrap()
    )
}

fn pg_config(prefix: &str, schema: &str, url: &str) -> String {
    format!(
        r#"
[[databases]]
name = "pg"
kind = "postgres"
url = "{url}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "reader"
default_ttl = "5m"
max_ttl = "1h"
grants = ['GRANT USAGE ON SCHEMA {schema} TO "{{{{name}}}}"', 'GRANT SELECT ON {schema}.items TO "{{{{name}}}}"']

[[databases.roles]]
name = "broken"
creation = ["CREATE ROLE \"{{{{name}}}}\" LOGIN PASSWORD '{{{{password}}}}'", 'GRANT SELECT ON no_such_table_anywhere TO "{{{{name}}}}"']
"#
    )
}

async fn pg_schema(schema: &str) {
    let mut c = pg_admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id int); \
         INSERT INTO {schema}.items VALUES (1), (2);"
    )))
    .execute(&mut c)
    .await
    .unwrap();
}

#[tokio::test]
async fn postgres_users_work_while_leased_and_die_with_their_sessions_at_revocation_and_expiry() {
    let users = UserPrefix::new("pa");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    let (srv, k8s) = start(&pg_config(&prefix, &schema, PG_ADMIN)).await;
    let prod = k8s.k8s_token("prod", "api");
    let jwt = (prod.as_str(), JWT_TYPE);

    // Issue: the user works and has its grants; VALID UNTIL is the backstop.
    let r = issue(&srv, jwt, "pg", "reader", None).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    let username = v["username"].as_str().unwrap().to_owned();
    assert!(username.starts_with(&prefix) && username.len() <= 63, "{username}");
    assert!(v["password"].as_str().unwrap().len() >= 40, "high-entropy password");
    assert_eq!(v["state"], "active");
    assert_eq!(v["subject"], "spiffe://test.example/ns/prod/sa/api");
    let mut session = sqlx::PgConnection::connect(&pg_user_url(&v)).await.expect("the new user connects");
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {schema}.items")))
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(n, 2, "a granted query works");
    let mut admin = pg_admin().await;
    let valid_until: Option<String> = sqlx::query_scalar("SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1")
        .bind(&username)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(valid_until.is_some(), "VALID UNTIL is set as a backstop");
    assert!(stored_password(&username).await.starts_with("SCRAM-SHA-256$16:"), "Mayfly's verifier, 16 iterations");

    // Renew moves the expiry, within the maximum.
    let lease_id = v["lease_id"].as_str().unwrap().to_owned();
    let r = srv
        .http
        .post(format!("{}/v1/credentials/leases/{lease_id}/renew", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": prod, "ttl_seconds": 1800}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let renewed: Value = r.json().await.unwrap();
    assert!(renewed["expires_at"].as_i64().unwrap() > v["expires_at"].as_i64().unwrap());
    let other = k8s.k8s_token("prod", "other");
    let r = srv
        .http
        .post(format!("{}/v1/credentials/leases/{lease_id}/renew", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": other}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, "forbidden").await;

    // Revocation: the open session is killed, new logins fail, the role is gone.
    let r = revoke_lease(&srv, &lease_id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "revoked");
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "the open session was terminated");
    assert!(sqlx::PgConnection::connect(&pg_user_url(&v)).await.is_err(), "the user can no longer log in");
    assert!(!pg_role_exists(&username).await);
    let again = revoke_lease(&srv, &lease_id).await;
    assert_problem(again, 409, "conflict").await;

    // Expiry: the reaper drops the user when the lease ends.
    let r = issue(&srv, jwt, "pg", "reader", Some(2)).await;
    let short: Value = r.json().await.unwrap();
    let short_user = short["username"].as_str().unwrap().to_owned();
    assert!(pg_role_exists(&short_user).await);
    let l = wait_for_state(&srv, short["lease_id"].as_str().unwrap(), "expired", Duration::from_secs(15)).await;
    assert_eq!(l["end_reason"], "expired");
    assert!(!pg_role_exists(&short_user).await);

    // A credential under a task dies when the task ends.
    let t = start_task(&srv, &prod, json!({"purpose": "report"})).await;
    let task_token = t["task_token"].as_str().unwrap();
    let r = issue(&srv, (task_token, "urn:mayfly:params:oauth:token-type:task"), "pg", "reader", None).await;
    assert_eq!(r.status(), 201);
    let under_task: Value = r.json().await.unwrap();
    assert_eq!(under_task["task_id"], t["task"]["id"]);
    let r = srv
        .http
        .delete(format!("{}/v1/tasks/{}", srv.url, t["task"]["id"].as_str().unwrap()))
        .bearer_auth(task_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let l = wait_for_state(&srv, under_task["lease_id"].as_str().unwrap(), "revoked", Duration::from_secs(10)).await;
    assert_eq!(l["end_reason"], "revoked (task)");
    assert!(!pg_role_exists(under_task["username"].as_str().unwrap()).await);

    // A task limited to audiences gets only the database roles it names.
    let limited = start_task(&srv, &prod, json!({"purpose": "api only", "audiences": ["https://api.test"]})).await;
    let limited_token = limited["task_token"].as_str().unwrap();
    let r = issue(&srv, (limited_token, "urn:mayfly:params:oauth:token-type:task"), "pg", "reader", None).await;
    assert_problem(r, 400, "invalid-target").await;

    // Revoking the subject (a selector, not a lease) drops its database users too.
    let batch = k8s.k8s_token("prod", "batch");
    let r = issue(&srv, (&batch, JWT_TYPE), "pg", "reader", None).await;
    let held: Value = r.json().await.unwrap();
    let r = srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/batch"}))).await;
    assert_eq!(r.status(), 201, "a subject holding only database credentials can be revoked");
    let l = wait_for_state(&srv, held["lease_id"].as_str().unwrap(), "revoked", Duration::from_secs(10)).await;
    assert_eq!(l["end_reason"], "revoked (subject)");
    assert!(!pg_role_exists(held["username"].as_str().unwrap()).await);

    // Bad input: clear problems, and nothing half-created is left behind.
    assert_problem(issue(&srv, jwt, "nope", "reader", None).await, 404, "not-found").await;
    assert_problem(issue(&srv, jwt, "pg", "nope", None).await, 404, "not-found").await;
    assert_problem(issue(&srv, jwt, "pg", "reader", Some(7200)).await, 400, "invalid-request").await;
    assert_problem(issue(&srv, jwt, "pg", "reader", Some(0)).await, 400, "invalid-request").await;
    let dev = k8s.k8s_token("dev", "api");
    assert_problem(issue(&srv, (&dev, JWT_TYPE), "pg", "reader", None).await, 403, "policy-denied").await;
    let r = issue(&srv, jwt, "pg", "broken", None).await;
    let p = assert_problem(r, 502, "database-refused").await;
    assert!(p["detail"].as_str().unwrap().contains("no_such_table_anywhere"), "{p}");
    let failed: Vec<Value> = srv.admin_get("/v1/credentials/leases?state=failed").await;
    assert_eq!(failed.len(), 1);
    assert!(!pg_role_exists(failed[0]["username"].as_str().unwrap()).await, "the half-created user was dropped");
    let audit: Vec<Value> = srv.admin_get("/v1/audit?kind=db_credential.").await;
    assert!(
        audit.iter().all(|e| !e.to_string().contains(v["password"].as_str().unwrap())),
        "no password in the audit trail"
    );

    srv.stop().await;
}

#[tokio::test]
async fn after_a_crash_half_created_and_orphaned_users_are_dropped_on_start() {
    let users = UserPrefix::new("pc");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    let (srv, _k8s) = start(&pg_config(&prefix, &schema, PG_ADMIN)).await;
    let config = srv.dir.path().join("mayfly.toml");
    let dir = srv.stop().await;

    // As if the server died between recording the intent and creating the user (the
    // user exists, the lease says `creating`), and a user was left with no lease at all.
    let half = format!("{prefix}half");
    let orphan = format!("{prefix}orphan");
    let mut admin = pg_admin().await;
    for u in [&half, &orphan] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE \"{u}\" LOGIN PASSWORD 'x'")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    {
        let store = open_store(dir.path()).await;
        let now = now();
        let lease = mayfly_server::ledger::DbLease {
            id: "crash-lease-1".into(),
            issuer: "pg".into(),
            role: "reader".into(),
            username: half.clone(),
            subject: "spiffe://test.example/ns/prod/sa/api".into(),
            task_id: None,
            // The crash was a while ago: on shared storage, a recent `creating` lease may
            // belong to a replica still creating it, and is left alone for two minutes.
            created_at: now - 300,
            expires_at: now + 300,
            max_expires_at: now + 3600,
            state: mayfly_server::ledger::DbLeaseState::Creating,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            ended_at: None,
            end_reason: None,
            context: None,
        };
        let mut batch = mayfly_server::ledger::StoredBatch { db_leases: vec![lease], ..Default::default() };
        store.append(&mut batch).await.unwrap();
    }
    assert!(pg_role_exists(&half).await && pg_role_exists(&orphan).await);

    let srv = TestServer::start_in(dir, &config).await;
    // SQLite: before the server answers. PostgreSQL: as soon as this replica leads.
    let deadline = Instant::now() + Duration::from_secs(if storage_is_postgres() { 10 } else { 0 });
    while pg_role_exists(&half).await || pg_role_exists(&orphan).await {
        assert!(Instant::now() < deadline, "the half-created user was undone and the orphan swept on start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_state(&srv, "crash-lease-1", "failed", Duration::from_secs(5)).await;
    srv.stop().await;
}

/// A TCP relay to PostgreSQL that the test can take down and bring back, standing in
/// for a database outage without stopping the machine's shared server.
struct Outage {
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    Ok((mut inbound, _)) = listener.accept() => {
                        let mut gone = stopped.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = gone.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        Self { port, stop }
    }

    fn down(self) {
        let _ = self.stop.send(true);
    }
}

#[tokio::test]
async fn a_revocation_during_a_database_outage_is_retried_until_the_user_is_gone() {
    let users = UserPrefix::new("po");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    let relay = Outage::start(0).await;
    let port = relay.port;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (srv, k8s) = start(&pg_config(&prefix, &schema, &url)).await;
    let prod = k8s.k8s_token("prod", "api");
    let r = issue(&srv, (&prod, JWT_TYPE), "pg", "reader", None).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (id, user) = (v["lease_id"].as_str().unwrap().to_owned(), v["username"].as_str().unwrap().to_owned());

    relay.down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = revoke_lease(&srv, &id).await;
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["state"], "revoking", "the database is down: the lease says so");
    assert!(l["last_error"].as_str().is_some());
    assert!(pg_role_exists(&user).await, "still there while the database is unreachable");
    let metrics = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mayfly_db_leases_revoking"), "the pending drop shows in the metrics");

    // The database comes back: the reaper finishes the job.
    let _relay = Outage::start(port).await;
    wait_for_state(&srv, &id, "revoked", Duration::from_secs(30)).await;
    assert!(!pg_role_exists(&user).await);
    srv.stop().await;
}

/// The admin URL sealed under a key-encryption key of `byte`s (the test config's KEK is all 0x11).
fn sealed(url: &str, byte: u8) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_kek(&dir.path().join("kek"), byte);
    let kek = mayfly_server::keys::Kek::load(&mayfly_server::keys::KekSource::File(dir.path().join("kek"))).unwrap();
    mayfly_server::issue::db::seal_url(&kek, url).unwrap()
}

#[tokio::test]
async fn a_sealed_admin_url_opens_only_with_the_servers_key() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let dir = TestDir::new();
    let toml = format!(
        "[[databases]]\nname = \"pg\"\nkind = \"postgres\"\nurl_sealed = \"{}\"\n[[databases.roles]]\nname = \"r\"\n",
        sealed(PG_ADMIN, 0x22)
    );
    let path = dir.write_config(&TestConfig::standard(&k8s, &gh).toml(&toml));
    let cfg = mayfly_server::config::Config::load(&path).unwrap();
    let err =
        mayfly_server::server::start(cfg, None).await.err().expect("a URL sealed under another key stops start-up");
    assert!(err.to_string().contains("cannot be opened with this key-encryption key"), "{err}");
    assert!(!err.to_string().contains("postgres://"), "the URL is not echoed: {err}");
}

#[tokio::test]
async fn mariadb_users_are_created_used_and_killed_with_their_sessions() {
    let users = UserPrefix::new("ma");
    let prefix = users.to_string();
    // The admin URL is sealed under the server's key-encryption key, as in production.
    let toml = format!(
        r#"
[[databases]]
name = "maria"
kind = "mysql"
url_sealed = "{}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "app"
grants = ["GRANT SELECT ON mysql.db TO '{{{{name}}}}'@'%'"]
"#,
        sealed(MARIADB_ADMIN, 0x11)
    );
    let (srv, k8s) = start(&toml).await;
    let prod = k8s.k8s_token("prod", "api");
    let r = issue(&srv, (&prod, JWT_TYPE), "maria", "app", None).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let user = v["username"].as_str().unwrap();
    assert!(user.len() <= 32, "within MySQL's limit: {user}");
    let url = format!("mysql://{user}:{}@127.0.0.1:3306/mysql", v["password"].as_str().unwrap());
    let mut session = sqlx::MySqlConnection::connect(&url).await.expect("the new user connects");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.db").fetch_one(&mut session).await.unwrap();
    assert!(n >= 0, "a granted query works");
    let id = v["lease_id"].as_str().unwrap();
    let r = revoke_lease(&srv, id).await;
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["state"], "revoked", "{l}");
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "the open session was killed");
    assert!(sqlx::MySqlConnection::connect(&url).await.is_err(), "the user can no longer log in");
    srv.stop().await;
}

#[tokio::test]
async fn redis_acl_users_are_created_used_and_killed_with_their_sessions() {
    let users = UserPrefix::new("ra");
    let prefix = users.to_string();
    let toml = format!(
        r#"
[[databases]]
name = "cache"
kind = "redis"
url = "{REDIS_ADMIN}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "reader"
acl = "~{prefix}* +@read +ping"
"#
    );
    let (srv, k8s) = start(&toml).await;
    let mut admin = redis::Client::open(REDIS_ADMIN).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}greeting");
    redis::cmd("SET").arg(&key).arg("hello").query_async::<()>(&mut admin).await.unwrap();
    let prod = k8s.k8s_token("prod", "api");
    let r = issue(&srv, (&prod, JWT_TYPE), "cache", "reader", None).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (user, pass) = (v["username"].as_str().unwrap(), v["password"].as_str().unwrap());
    let url = format!("redis://{user}:{pass}@127.0.0.1:6379");
    let mut session =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.expect("logs in");
    let got: String = redis::cmd("GET").arg(&key).query_async(&mut session).await.unwrap();
    assert_eq!(got, "hello");
    assert!(redis::cmd("SET").arg(&key).arg("x").query_async::<()>(&mut session).await.is_err(), "read-only role");
    let id = v["lease_id"].as_str().unwrap();
    let r = revoke_lease(&srv, id).await;
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "revoked");
    assert!(
        redis::cmd("GET").arg(&key).query_async::<String>(&mut session).await.is_err(),
        "the open session was killed"
    );
    assert!(
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.is_err(),
        "cannot log in"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_workload_moved_out_of_prod_loses_its_database_users_and_others_keep_theirs() {
    let users = UserPrefix::new("ps");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    // Passwords sent as they are: the server hashes them with its own iteration count.
    let config = pg_config(&prefix, &schema, PG_ADMIN)
        .replace("kind = \"postgres\"\n", "kind = \"postgres\"\nscram_iterations = 0\n");
    let (srv, k8s) = start(&config).await;
    let (web, api) = (k8s.k8s_token("prod", "web"), k8s.k8s_token("prod", "api"));
    let mut users = Vec::new();
    for t in [&web, &api] {
        let r = issue(&srv, (t.as_str(), JWT_TYPE), "pg", "reader", None).await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        sqlx::PgConnection::connect(&pg_user_url(&v)).await.expect("the new user connects");
        users.push((v["username"].as_str().unwrap().to_owned(), v["lease_id"].as_str().unwrap().to_owned()));
    }
    assert!(stored_password(&users[0].0).await.starts_with("SCRAM-SHA-256$4096:"), "hashed by the server");
    let r = srv
        .admin_post(
            "/v1/signals",
            Some(json!({"kind": "workload_moved", "subject": {"spiffe_id": "spiffe://test.example/ns/prod/sa/web"},
                        "attributes": {"namespace": "staging"}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["matched"].as_u64(), v["revoked"].as_u64()), (Some(1), Some(1)), "{v}");
    wait_for_state(&srv, &users[0].1, "revoked", Duration::from_secs(10)).await;
    assert!(!pg_role_exists(&users[0].0).await, "the moved workload's user is dropped");
    assert!(pg_role_exists(&users[1].0).await, "another workload's user survives");
    assert_eq!(lease(&srv, &users[1].1).await["state"], "active");
    srv.stop().await;
}

/// `POST /v1/credentials/leases/{id}/renew` with a platform token.
async fn renew(srv: &TestServer, id: &str, token: &str, ttl: u64) -> reqwest::Response {
    srv.http
        .post(format!("{}/v1/credentials/leases/{id}/renew", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": token, "ttl_seconds": ttl}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_renewal_is_decided_again_by_policy_and_refused_once_policy_no_longer_allows_the_role() {
    let users = UserPrefix::new("pr");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    let (srv, k8s) = start(&pg_config(&prefix, &schema, PG_ADMIN)).await;
    let prod = k8s.k8s_token("prod", "api");
    let r = issue(&srv, (&prod, JWT_TYPE), "pg", "reader", Some(300)).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let id = v["lease_id"].as_str().unwrap().to_owned();

    // Allowed now: renewed.
    let r = renew(&srv, &id, &prod, 600).await;
    assert_eq!(r.status(), 200);
    let renewed: Value = r.json().await.unwrap();
    assert!(renewed["expires_at"].as_i64().unwrap() > v["expires_at"].as_i64().unwrap());
    // The operator withdraws the permission: policies reload from the directory. A
    // marker policy for another audience shows when the new set is in force.
    let expires_at = lease(&srv, &id).await["expires_at"].as_i64().unwrap();
    let reloaded = r#"
@id("reloaded-marker")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://reloaded.test");
"#;
    std::fs::write(srv.dir.path().join("policies/test.cedar"), format!("{TEST_POLICIES}\n{reloaded}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while srv.exchange_jwt(&prod, "https://reloaded.test").await.status() != 200 {
        assert!(Instant::now() < deadline, "the new policies were not loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The holder asks to renew: denied by policy, audited like an issuance's denial, and
    // the lease's expiry is what it was.
    let p = assert_problem(renew(&srv, &id, &prod, 600).await, 403, "policy-denied").await;
    assert!(p["detail"].as_str().is_some(), "{p}");
    let l = lease(&srv, &id).await;
    assert_eq!(l["expires_at"].as_i64().unwrap(), expires_at, "the expiry did not move: {l}");
    assert_eq!(l["state"], "active", "a refused renewal leaves the lease as it was");
    let denied: Vec<Value> = srv.admin_get("/v1/audit?kind=policy.denied").await;
    let d = denied.iter().find(|e| e["detail"]["lease_id"] == id.as_str()).expect("the denial is audited");
    assert_eq!(d["detail"]["renewal"], true);
    assert_eq!(d["detail"]["action"], "issue");
    assert_eq!(d["subject"], "spiffe://test.example/ns/prod/sa/api");

    assert_eq!(revoke_lease(&srv, &id).await.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_lease_whose_subject_is_revoked_cannot_be_renewed() {
    let users = UserPrefix::new("pv");
    let (prefix, schema) = (users.to_string(), users.schema());
    pg_schema(&schema).await;
    let (srv, k8s) = start(&pg_config(&prefix, &schema, PG_ADMIN)).await;
    let held = k8s.k8s_token("prod", "held");
    let r = issue(&srv, (&held, JWT_TYPE), "pg", "reader", Some(300)).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (id, user) = (v["lease_id"].as_str().unwrap().to_owned(), v["username"].as_str().unwrap().to_owned());
    let expires_at = v["expires_at"].as_i64().unwrap();

    // The subject is revoked; the holder renews at once, before the reaper (every
    // second) has dropped the user. Without the check the renewal succeeded and moved
    // the expiry (and the user's VALID UNTIL) of a credential its revocation covers.
    let r = srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/held"}))).await;
    assert_eq!(r.status(), 201);
    let r = renew(&srv, &id, &held, 3000).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    // 409: refused because the revocation covers it, or because the reaper already
    // started revoking it (400/403 if attestation itself comes to refuse evidence of a
    // revoked subject). Either way, nothing was extended.
    assert!(matches!(status, 400 | 403 | 409), "the renewal is refused: {status} {body}");
    let l = lease(&srv, &id).await;
    assert_eq!(l["expires_at"].as_i64().unwrap(), expires_at, "the expiry did not move: {l}");
    wait_for_state(&srv, &id, "revoked", Duration::from_secs(10)).await;
    assert!(!pg_role_exists(&user).await, "the user is dropped");
    srv.stop().await;
}

/// A MariaDB string literal for any text (backslashes and quotes escaped).
fn maria_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

async fn maria_admin() -> sqlx::MySqlConnection {
    sqlx::MySqlConnection::connect(MARIADB_ADMIN).await.expect("MariaDB on 127.0.0.1:3306")
}

async fn maria_user_exists(admin: &mut sqlx::MySqlConnection, user: &str, host: &str) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = ?")
        .bind(user)
        .bind(host)
        .fetch_one(admin)
        .await
        .unwrap()
        > 0
}

#[tokio::test]
async fn the_orphan_sweep_leaves_mariadb_users_mayfly_could_not_have_made() {
    let users = UserPrefix::new("mo");
    let prefix = users.to_string();
    let victim_users = UserPrefix::new("mv");
    let victim = victim_users.to_string();
    let toml = format!(
        r#"
[[databases]]
name = "maria"
kind = "mysql"
url = "{MARIADB_ADMIN}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "app"
"#
    );
    let (srv, _k8s) = start(&toml).await;
    // Users with the prefix that Mayfly never makes, among them a pair built so that the
    // old quoting ('' for ', but a backslash still escapes) runs the attacker's SQL as
    // Mayfly's admin: `ALTER USER '<p>\''@localhost; DROP USER <victim>; -- …`.
    let orphan = format!("{prefix}orphan");
    let anchor = format!("{prefix}'");
    let injection = format!("{prefix}\\'@localhost; DROP USER {victim}; -- ");
    let odd = [format!("{prefix}x'"), format!("{prefix}x`"), format!("{prefix}X"), injection.clone()];
    let accounts: Vec<(String, &str)> = [(orphan.clone(), "%"), (victim.clone(), "%"), (anchor.clone(), "localhost")]
        .into_iter()
        .chain(odd.iter().map(|u| (u.clone(), "%")))
        .collect();
    let mut admin = maria_admin().await;
    for (user, host) in &accounts {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE USER {}@{}", maria_quote(user), maria_quote(host))))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    let swept = srv.running.broker.sweep_db_users().await;
    assert!(swept.is_ok(), "{swept:?}");
    assert!(maria_user_exists(&mut admin, &victim, "%").await, "the sweep ran SQL hidden in a username");
    for u in &odd {
        assert!(maria_user_exists(&mut admin, u, "%").await, "{u:?} is not Mayfly's and was dropped");
    }
    assert!(!maria_user_exists(&mut admin, &orphan, "%").await, "an orphan of Mayfly's shape is still swept");

    srv.stop().await;
}

#[tokio::test]
async fn the_orphan_sweep_leaves_postgres_and_redis_users_mayfly_could_not_have_made() {
    let users = UserPrefix::new("po");
    let prefix = users.to_string();
    let toml = format!(
        r#"
[[databases]]
name = "pg"
kind = "postgres"
url = "{PG_ADMIN}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "reader"

[[databases]]
name = "cache"
kind = "redis"
url = "{REDIS_ADMIN}"
username_prefix = "{prefix}"

[[databases.roles]]
name = "reader"
"#
    );
    let (srv, _k8s) = start(&toml).await;
    let orphan = format!("{prefix}orphan");
    let odd = [format!("{prefix}x\""), format!("{prefix}x'"), format!("{prefix}X")];
    let mut pg = pg_admin().await;
    let mut redis = redis::Client::open(REDIS_ADMIN).unwrap().get_multiplexed_async_connection().await.unwrap();
    let pg_quote = |u: &str| format!("\"{}\"", u.replace('"', "\"\""));
    for u in odd.iter().chain([&orphan]) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {} LOGIN", pg_quote(u))))
            .execute(&mut pg)
            .await
            .unwrap();
        redis::cmd("ACL").arg("SETUSER").arg(u).arg("off").query_async::<()>(&mut redis).await.unwrap();
    }

    let swept = srv.running.broker.sweep_db_users().await;
    assert!(swept.is_ok(), "{swept:?}");
    let redis_users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut redis).await.unwrap();
    for u in &odd {
        assert!(pg_role_exists(u).await, "PostgreSQL role {u:?} is not Mayfly's and was dropped");
        assert!(redis_users.contains(u), "Redis user {u:?} is not Mayfly's and was dropped");
    }
    assert!(!pg_role_exists(&orphan).await, "a PostgreSQL orphan of Mayfly's shape is still swept");
    assert!(!redis_users.contains(&orphan), "a Redis orphan of Mayfly's shape is still swept");

    srv.stop().await;
}
