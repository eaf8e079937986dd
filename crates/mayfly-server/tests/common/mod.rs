//! Test kit: a test OIDC issuer whose keys the test generates, and a real Mayfly
//! server started in-process on loopback from a TOML config file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mayfly_server::config::Config;
use mayfly_server::server::{RunningServer, start};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const TRUST_DOMAIN: &str = "test.example";
pub const K8S_ISSUER: &str = "https://k8s.test.example";
pub const GITHUB_TEST_ISSUER: &str = "https://gh.test.example";
pub const MAYFLY_AUDIENCE: &str = "mayfly";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const JOIN_TYPE: &str = "urn:mayfly:params:oauth:token-type:join-token";

pub fn now() -> i64 {
    mayfly_server::clock::now_unix()
}

enum TestKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// An OIDC issuer under the test's control: RS256, ES256 and EdDSA keys.
pub struct TestIssuer {
    pub issuer: String,
    keys: Vec<(String, &'static str, TestKey)>,
}

impl TestIssuer {
    pub fn new(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref()).unwrap();
        let ed = Ed25519KeyPair::generate().unwrap();
        Self {
            issuer: issuer.to_owned(),
            keys: vec![
                ("rsa-1".into(), "RS256", TestKey::Rsa(rsa)),
                ("ec-1".into(), "ES256", TestKey::Ec(ec)),
                ("ed-1".into(), "EdDSA", TestKey::Ed(ed)),
            ],
        }
    }

    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, alg, k)| match k {
                TestKey::Rsa(kp) => {
                    let pk = kp.public_key();
                    json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                           "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
                           "e": B64.encode(pk.exponent().big_endian_without_leading_zero())})
                }
                TestKey::Ec(kp) => {
                    let p = kp.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": alg, "use": "sig",
                           "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
                }
                TestKey::Ed(kp) => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": alg, "use": "sig",
                                           "x": B64.encode(kp.public_key().as_ref())}),
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The RSA public key as the JWK-ish bytes an HMAC confusion attack would use as a secret.
    pub fn rsa_public_n(&self) -> Vec<u8> {
        match &self.keys[0].2 {
            TestKey::Rsa(kp) => kp.public_key().modulus().big_endian_without_leading_zero().to_vec(),
            _ => unreachable!(),
        }
    }

    /// Signs `claims` with the key for `alg`; `header` fields override the defaults.
    pub fn sign_with(&self, alg: &str, header: Value, claims: &Value) -> String {
        let (kid, _, key) = self.keys.iter().find(|(_, a, _)| *a == alg).expect("test key for alg");
        let mut h = json!({"alg": alg, "typ": "JWT", "kid": kid});
        if let (Some(h), Some(extra)) = (h.as_object_mut(), header.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    h.remove(k);
                } else {
                    h.insert(k.clone(), v.clone());
                }
            }
        }
        let input = format!("{}.{}", B64.encode(h.to_string()), B64.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let sig = match key {
            TestKey::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            TestKey::Ec(kp) => kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            TestKey::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }

    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        self.sign_with(alg, json!({}), claims)
    }

    /// Claims of a Kubernetes projected service-account token.
    pub fn k8s_claims(&self, ns: &str, sa: &str) -> Value {
        let t = now();
        json!({
            "iss": self.issuer, "aud": [MAYFLY_AUDIENCE], "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "iat": t, "nbf": t, "exp": t + 600,
            "kubernetes.io": {
                "namespace": ns,
                "serviceaccount": {"name": sa, "uid": "1b9c3d1e-0000-4000-8000-000000000001"},
                "pod": {"name": format!("{sa}-7d9f"), "uid": "7f0c2a44-0000-4000-8000-000000000002"},
                "node": {"name": "node-1", "uid": "0d1e2f3a-0000-4000-8000-000000000003"}
            }
        })
    }

    pub fn k8s_token(&self, ns: &str, sa: &str) -> String {
        self.sign("RS256", &self.k8s_claims(ns, sa))
    }
}

/// Default policies for tests: k8s workloads in namespace `prod` may get tokens for
/// `https://api.test`; anything asking for scope `admin` is forbidden.
pub const TEST_POLICIES: &str = r#"
@id("prod-may-call-api")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 900 };

@id("joined-may-call-api")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test")
when { principal.attestor == "join_token" };

@id("ci-may-deploy")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://deploy.test")
when { principal.hasTag("repository") && principal.getTag("repository") == "acme/app" };

@id("no-admin-scope")
forbid (principal, action, resource)
when { context.scopes.contains("admin") };
"#;

/// The PostgreSQL server the tests may use (trust auth on this machine).
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Whether this run puts every test server's state on PostgreSQL (`MAYFLY_TEST_STORAGE=postgres`)
/// instead of the embedded SQLite default: the same tests, against both backends.
pub fn storage_is_postgres() -> bool {
    std::env::var("MAYFLY_TEST_STORAGE").is_ok_and(|v| v == "postgres")
}

/// Runs `f` on a runtime of its own: the harness is called from sync and async code alike.
fn on_own_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f))
        .join()
        .unwrap()
}

/// Creates an empty database for one test and returns its URL. Databases that earlier
/// runs left behind (named with their creation time) are dropped once two hours old.
pub fn create_test_database() -> String {
    use sqlx::Connection;
    let name = format!("mayfly_t_{}_{}", now(), hex::encode(rand_bytes()));
    let created = name.clone();
    on_own_runtime(async move {
        let mut admin =
            sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await.expect("PostgreSQL answers");
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'mayfly\\_t\\_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap();
        for db in stale {
            let born: i64 = db.split('_').nth(2).and_then(|t| t.parse().ok()).unwrap_or(i64::MAX);
            if born < now() - 7200 {
                let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
            }
        }
        let sql = format!("CREATE DATABASE \"{created}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    });
    format!("{PG_SERVER}/{name}")
}

fn rand_bytes() -> [u8; 6] {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// The `storage` line of a test config: a database of its own under `MAYFLY_TEST_STORAGE=postgres`
/// (kept in the test directory, so a restart finds the same state), nothing otherwise.
fn storage_line(dir: &Path) -> String {
    if !storage_is_postgres() {
        return String::new();
    }
    let file = dir.join("pg-url");
    let url = match std::fs::read_to_string(&file) {
        Ok(u) => u,
        Err(_) => {
            let u = create_test_database();
            std::fs::write(&file, &u).unwrap();
            u
        }
    };
    format!("storage = \"{url}\"")
}

/// Opens the state a test server in `dir` kept (with the server stopped), whatever the backend.
pub async fn open_store(dir: &Path) -> std::sync::Arc<dyn mayfly_server::ledger::Store> {
    let cfg = Config::load(&dir.join("mayfly.toml")).expect("config loads");
    mayfly_server::server::open_store(&cfg).await.expect("store opens")
}

/// A running Mayfly with its own data directory.
pub struct TestServer {
    pub running: RunningServer,
    pub url: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

pub struct Options {
    pub extra_toml: String,
    pub policies: String,
    pub issuer_section: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { extra_toml: String::new(), policies: TEST_POLICIES.into(), issuer_section: None }
    }
}

/// Writes a KEK file as an operator must: 0600 (the server refuses one open to others).
pub fn write_kek(path: &Path, byte: u8) {
    mayfly_server::fsutil::write_private(path, hex::encode([byte; 32]).as_bytes()).unwrap();
}

/// Writes a config with a Kubernetes issuer and a GitHub-preset issuer (JWKS from files).
pub fn write_config(dir: &Path, issuer: &TestIssuer, gh: &TestIssuer, opts: &Options) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/test.cedar"), &opts.policies).unwrap();
    std::fs::write(dir.join("k8s-jwks.json"), issuer.jwks().to_string()).unwrap();
    std::fs::write(dir.join("gh-jwks.json"), gh.jwks().to_string()).unwrap();
    if !dir.join("kek").exists() {
        write_kek(&dir.join("kek"), 0x11);
    }
    let issuers = opts.issuer_section.clone().unwrap_or_else(|| {
        format!(
            r#"
[[attest.oidc]]
name = "k8s"
preset = "kubernetes"
issuer = "{k8s}"
jwks_file = "k8s-jwks.json"
# The test issuer shares this machine's clock: evidence counts as minted at most 1 s
# before its iat (tests of revocation wait that long for evidence newer than one).
leeway = "1s"
audiences = ["{aud}"]

[[attest.oidc]]
name = "github"
preset = "github"
issuer = "{gh}"
jwks_file = "gh-jwks.json"
audiences = ["{aud}"]
algorithms = ["RS256", "ES256"]
"#,
            k8s = issuer.issuer,
            gh = gh.issuer,
            aud = MAYFLY_AUDIENCE
        )
    });
    let toml = format!(
        r#"
trust_domain = "{TRUST_DOMAIN}"
data_dir = "data"
{storage}

[listen]
addr = "127.0.0.1:0"

[keys]
kek_file = "kek"

[policy]
dir = "policies"
reload_interval = "200ms"

[ledger]
sync = "normal"
refusal_summary_interval = "200ms"

{extra}
{issuers}
"#,
        extra = opts.extra_toml,
        storage = storage_line(dir),
    );
    let path = dir.join("mayfly.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

impl TestServer {
    pub async fn start(issuer: &TestIssuer, gh: &TestIssuer) -> Self {
        Self::start_with(issuer, gh, Options::default()).await
    }

    pub async fn start_with(issuer: &TestIssuer, gh: &TestIssuer, opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), issuer, gh, &opts);
        Self::start_in(dir, &path).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &Path) -> Self {
        let cfg = Config::load(config).expect("config loads");
        let data_dir = cfg.data_dir.clone();
        let running = start(cfg, None).await.expect("server starts");
        let admin_token = match &running.new_admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(data_dir.join("admin-token")).unwrap().trim().to_owned(),
        };
        let url = running.url.clone();
        Self { running, url, admin_token, dir, http: reqwest::Client::new() }
    }

    pub async fn exchange(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(format!("{}/v1/token", self.url)).form(form).send().await.unwrap()
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

    pub async fn join_token(&self, path: Option<&str>) -> String {
        let resp = self.admin_post("/v1/join-tokens", Some(json!({"spiffe_path": path}))).await;
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

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

    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await;
        self.dir
    }
}

/// A client's DPoP key and proofs made with jsonwebtoken.
pub struct DpopKey {
    encoding: jsonwebtoken::EncodingKey,
    pub jwk: Value,
}

impl DpopKey {
    pub fn new() -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let p = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
        Self { encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    /// RFC 7638 thumbprint, computed here from the members in lexicographic order.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn proof_with(&self, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        let mut claims = json!({"jti": random_id(), "htm": method, "htu": url, "iat": now()});
        if let Some(t) = access_token {
            claims["ath"] = json!(B64.encode(Sha256::digest(t.as_bytes())));
        }
        self.proof_with(claims)
    }
}

pub fn random_id() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    B64.encode(b)
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
