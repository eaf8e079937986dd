//! A real Mayfly started in-process on loopback, in a directory of its own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mayfly_server::config::Config as ServerConfig;
use mayfly_server::server::{RunningServer, start};
use serde_json::{Value, json};

use crate::config::TestConfig;
use crate::issuer::TestIssuer;
use crate::resources::{TestDatabase, storage_is_postgres};
use crate::{JWT_TYPE, TASK_TYPE, TOKEN_EXCHANGE};

/// A test server's directory (config, KEK, policies, data), removed when it drops. Under
/// `MAYFLY_TEST_STORAGE=postgres` the state goes to a database of the directory's own
/// (made when the first config is written, dropped with the directory), so a restart on
/// the directory finds the same state on either backend.
pub struct TestDir {
    // Declared first, dropped first: the database goes while nothing of the test is left to use it.
    database: OnceLock<TestDatabase>,
    dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    /// A new, empty directory.
    pub fn new() -> Self {
        Self { database: OnceLock::new(), dir: tempfile::tempdir().unwrap() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `config` here (see [`TestConfig::write`]), on this directory's database under
    /// `MAYFLY_TEST_STORAGE=postgres` unless the config names its storage.
    pub fn write_config(&self, config: &TestConfig) -> PathBuf {
        if storage_is_postgres() && !config.has_storage() {
            let db = self.database.get_or_init(TestDatabase::create);
            return config.clone().storage(&db.url()).write(self.path());
        }
        config.write(self.path())
    }

    /// The database the state is on, under `MAYFLY_TEST_STORAGE=postgres`.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.get()
    }
}

/// Opens the state a test server in `dir` kept (with the server stopped), whatever the backend.
pub async fn open_store(dir: &Path) -> std::sync::Arc<dyn mayfly_server::ledger::Store> {
    let cfg = ServerConfig::load(&dir.join("mayfly.toml")).expect("config loads");
    mayfly_server::server::open_store(&cfg).await.expect("store opens")
}

/// A running Mayfly with its own directory.
pub struct TestServer {
    /// The server, for what the HTTP API does not show (the broker, the address).
    pub running: RunningServer,
    /// Its base URL.
    pub url: String,
    /// An admin token (the one made at first start).
    pub admin_token: String,
    /// Its directory.
    pub dir: TestDir,
    /// A client for it.
    pub http: reqwest::Client,
}

impl TestServer {
    /// A server with [`TestConfig::standard`]: Kubernetes issuer `k8s`, GitHub issuer `gh`, the test policies.
    pub async fn start(k8s: &TestIssuer, gh: &TestIssuer) -> Self {
        Self::start_with(TestConfig::standard(k8s, gh)).await
    }

    /// A server with `config`, in a new directory.
    pub async fn start_with(config: TestConfig) -> Self {
        let dir = TestDir::new();
        let path = dir.write_config(&config);
        Self::start_in(dir, &path).await
    }

    /// The server of `dir` started again (its `mayfly.toml`, its state).
    pub async fn restart(dir: TestDir) -> Self {
        let config = dir.path().join("mayfly.toml");
        Self::start_in(dir, &config).await
    }

    /// A server with the config file `config`, in `dir`.
    pub async fn start_in(dir: TestDir, config: &Path) -> Self {
        let cfg = ServerConfig::load(config).expect("config loads");
        let data_dir = cfg.data_dir.clone();
        let running = start(cfg, None).await.expect("server starts");
        let admin_token = match &running.new_admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(data_dir.join("admin-token")).unwrap().trim().to_owned(),
        };
        let url = running.url.clone();
        Self { running, url, admin_token, dir, http: reqwest::Client::new() }
    }

    /// `POST /v1/token` with `form`.
    pub async fn exchange(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(format!("{}/v1/token", self.url)).form(form).send().await.unwrap()
    }

    /// `POST /v1/tasks` with evidence of `token_type`; `extra` adds or replaces body fields
    /// (`scope`, `purpose`, `on_behalf_of`, …).
    pub async fn start_task(&self, token_type: &str, token: &str, extra: Value) -> reqwest::Response {
        let mut body = json!({"subject_token_type": token_type, "subject_token": token, "purpose": "test task"});
        for (k, v) in extra.as_object().expect("extra is a JSON object") {
            body[k] = v.clone();
        }
        self.http.post(format!("{}/v1/tasks", self.url)).json(&body).send().await.unwrap()
    }

    /// A token exchange of a task token for `audience`, narrowed to `scope` when given.
    pub async fn exchange_task(&self, task_token: &str, audience: &str, scope: Option<&str>) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", task_token),
            ("subject_token_type", TASK_TYPE),
            ("audience", audience),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.exchange(&form).await
    }

    /// A token exchange of a platform JWT for `audience`.
    pub async fn exchange_jwt(&self, jwt: &str, audience: &str) -> reqwest::Response {
        self.exchange_jwt_with(jwt, audience, &[]).await
    }

    /// A token exchange of a platform JWT for `audience`, with more parameters.
    pub async fn exchange_jwt_with(&self, jwt: &str, audience: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", jwt),
            ("subject_token_type", JWT_TYPE),
            ("audience", audience),
        ];
        form.extend_from_slice(extra);
        self.exchange(&form).await
    }

    /// POST with the admin token, with a JSON body when given.
    pub async fn admin_post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// GET with the admin token, decoded as JSON.
    pub async fn admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.admin_token).send().await.unwrap();
        resp.json().await.unwrap()
    }

    /// A new join token, for the SPIFFE path `path` when given.
    pub async fn join_token(&self, path: Option<&str>) -> String {
        let resp = self.admin_post("/v1/join-tokens", Some(json!({"spiffe_path": path}))).await;
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// The published JWKS.
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        self.http.get(format!("{}/.well-known/jwks.json", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// Verifies a Mayfly token with jsonwebtoken (not the code that signed it) against the served JWKS.
    pub async fn verify(&self, token: &str, audience: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"), "RFC 9068 typ");
        let jwks = self.jwks().await;
        let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid is published");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[&self.url]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key, &v).expect("token verifies").claims
    }

    /// Stops the server; its directory (and state) live on in what is returned.
    pub async fn stop(self) -> TestDir {
        self.running.shutdown().await;
        self.dir
    }
}

/// Asserts an RFC 9457 problem with the given status and type slug; returns the body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, slug: &str) -> Value {
    let got = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "status for {slug}: {body}");
    assert_eq!(ct, "application/problem+json", "content type for {slug}");
    assert_eq!(body["type"], format!("urn:mayfly:problem:{slug}"), "problem type: {body}");
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "detail present: {body}");
    body
}
