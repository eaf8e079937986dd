//! What Mayfly's tests share, so that a test reads like a user's session:
//!
//! ```no_run
//! use mayfly_testkit::*;
//! # async fn session() {
//! let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
//! let srv = TestServer::start_with(TestConfig::standard(&k8s, &gh).toml("[tokens]\nmax_ttl = \"10m\"")).await;
//! let resp = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
//! assert_eq!(resp.status(), 200);
//! srv.stop().await;
//! # }
//! ```
//!
//! - [`issuer`]: an OIDC issuer whose keys the test holds ([`TestIssuer`]) and a client's DPoP key.
//! - [`config`]: a server config built in code and written with its files ([`TestConfig`]).
//! - [`server`]: a real server started in-process on loopback ([`TestServer`]), its directory
//!   ([`TestDir`]), and [`assert_problem`].
//! - [`process`]: `mayfly server` as a child process ([`ServerProcess`], [`DevServer`]).
//! - [`resources`]: a PostgreSQL database, or a user/key prefix on PostgreSQL, MariaDB and
//!   Redis, that is removed when its guard drops.
#![forbid(unsafe_code)]

pub mod config;
pub mod issuer;
pub mod process;
pub mod resources;
pub mod server;

pub use config::{TEST_POLICIES, TestConfig, write_kek};
pub use issuer::{DpopKey, TestIssuer};
pub use process::{DevServer, ServerProcess};
pub use resources::{MARIADB_ADMIN, PG_ADMIN, PG_SERVER, REDIS_ADMIN, TestDatabase, UserPrefix, storage_is_postgres};
pub use server::{TestDir, TestServer, assert_problem, open_store};

/// The test servers' trust domain.
pub const TRUST_DOMAIN: &str = "test.example";
/// The Kubernetes issuer of [`TestConfig::standard`].
pub const K8S_ISSUER: &str = "https://k8s.test.example";
/// The GitHub Actions issuer of [`TestConfig::standard`].
pub const GITHUB_TEST_ISSUER: &str = "https://gh.test.example";
/// The audience platform tokens are minted for.
pub const MAYFLY_AUDIENCE: &str = "mayfly";
/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of a platform JWT.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 subject token type of a Mayfly task token.
pub const TASK_TYPE: &str = "urn:mayfly:params:oauth:token-type:task";
/// The token type of a join token.
pub const JOIN_TYPE: &str = "urn:mayfly:params:oauth:token-type:join-token";

/// Now, in Unix seconds, by the server's clock.
pub fn now() -> i64 {
    mayfly_server::clock::now_unix()
}

/// A random, URL-safe identifier (a `jti`, say).
pub fn random_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<12>())
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
    b
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own: the kit is called
/// from sync and async tests alike, and from `Drop`, where nothing can be awaited.
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
