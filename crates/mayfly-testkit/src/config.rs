//! A server config built in code, written as TOML with the files it names (KEK, policies, JWKS).
//!
//! [`TestConfig::new`] is what every test server shares; what a test adds reads as what it is about:
//!
//! ```no_run
//! # use mayfly_testkit::*;
//! # let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
//! # let dir = tempfile::tempdir().unwrap();
//! TestConfig::standard(&k8s, &gh)
//!     .set("keys", r#"algorithm = "ES256""#)
//!     .add_policies(r#"permit (principal, action == Mayfly::Action::"start_task", resource);"#)
//!     .write(dir.path());
//! ```

use std::path::{Path, PathBuf};

use crate::issuer::TestIssuer;
use crate::{MAYFLY_AUDIENCE, TRUST_DOMAIN};

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

/// A Mayfly config file and the files beside it.
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// `(section, lines)`; the section `""` is the top level, written first.
    sections: Vec<(String, Vec<String>)>,
    policies: String,
    /// Raw TOML after the sections (arrays of tables: databases, audiences, senders ...).
    extra: Vec<String>,
    /// `[[attest.oidc]]` sections, last.
    issuers: Vec<String>,
    /// Files written beside the config: `(name, contents)`.
    files: Vec<(String, String)>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// What every test server shares: the test trust domain, loopback on a port of the
    /// system's choosing, a KEK file, a policy directory polled every 200 ms, the ledger at
    /// `sync = "normal"` (a test need not survive power loss), refusals summarised every
    /// 200 ms. No attestor and no policy: add them.
    pub fn new() -> Self {
        let section = |name: &str, lines: &[&str]| (name.to_owned(), lines.iter().map(|l| l.to_string()).collect());
        Self {
            sections: vec![
                section("", &[&format!("trust_domain = \"{TRUST_DOMAIN}\""), "data_dir = \"data\""]),
                section("listen", &["addr = \"127.0.0.1:0\""]),
                section("keys", &["kek_file = \"kek\""]),
                section("policy", &["dir = \"policies\"", "reload_interval = \"200ms\""]),
                section("ledger", &["sync = \"normal\"", "refusal_summary_interval = \"200ms\""]),
            ],
            policies: String::new(),
            extra: Vec::new(),
            issuers: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The server tests' usual config: a Kubernetes issuer, a GitHub Actions issuer, and
    /// [`TEST_POLICIES`].
    pub fn standard(k8s: &TestIssuer, gh: &TestIssuer) -> Self {
        Self::new().kubernetes(k8s).github(gh).policies(TEST_POLICIES)
    }

    /// Trusts `k8s` as the Kubernetes issuer `k8s` (JWKS from a file).
    pub fn kubernetes(self, k8s: &TestIssuer) -> Self {
        // The test issuer shares this machine's clock: evidence counts as minted at most 1 s
        // before its iat (tests of revocation wait that long for evidence newer than one).
        self.oidc("k8s", "kubernetes", k8s, "k8s-jwks.json", "leeway = \"1s\"")
    }

    /// Trusts `gh` as the GitHub Actions issuer `github` (JWKS from a file).
    pub fn github(self, gh: &TestIssuer) -> Self {
        self.oidc("github", "github", gh, "gh-jwks.json", "algorithms = [\"RS256\", \"ES256\"]")
    }

    /// An `[[attest.oidc]]` section for `issuer`, its JWKS in `jwks_file`; `more` lines
    /// before the audiences line, which stays last (tests add lines after it).
    fn oidc(mut self, name: &str, preset: &str, issuer: &TestIssuer, jwks_file: &str, more: &str) -> Self {
        let iss = &issuer.issuer;
        self.issuers.push(format!(
            "\n[[attest.oidc]]\nname = \"{name}\"\npreset = \"{preset}\"\nissuer = \"{iss}\"\njwks_file = \"{jwks_file}\"\n\
             {more}\naudiences = [\"{MAYFLY_AUDIENCE}\"]\n"
        ));
        self.jwks_file(jwks_file, issuer)
    }

    /// The trust domain.
    pub fn trust_domain(self, trust_domain: &str) -> Self {
        self.set("", &format!("trust_domain = \"{trust_domain}\""))
    }

    /// State in the database at `url` (PostgreSQL) instead of SQLite in the data directory.
    pub fn storage(self, url: &str) -> Self {
        self.set("", &format!("storage = \"{url}\""))
    }

    /// Whether a storage URL was set.
    pub fn has_storage(&self) -> bool {
        self.sections[0].1.iter().any(|l| key(l) == "storage")
    }

    /// Listens on a free loopback port chosen now: a server in a child process cannot say
    /// which port it got, so the test must know it beforehand.
    pub fn free_port(self) -> Self {
        self.set("listen", &format!("addr = \"127.0.0.1:{}\"", crate::process::free_port()))
    }

    /// Sets `key = value` lines (one or more) in `[section]` (`""`: the top level),
    /// replacing a line of the same key.
    pub fn set(mut self, section: &str, lines: &str) -> Self {
        let at = match self.sections.iter().position(|(name, _)| name == section) {
            Some(at) => at,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let body = &mut self.sections[at].1;
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match body.iter_mut().find(|l| key(l) == key(line)) {
                Some(old) => *old = line.to_owned(),
                None => body.push(line.to_owned()),
            }
        }
        self
    }

    /// The Cedar policies (`policies/test.cedar`), replacing any before.
    pub fn policies(mut self, cedar: &str) -> Self {
        self.policies = cedar.to_owned();
        self
    }

    /// More Cedar policies after those already there.
    pub fn add_policies(mut self, cedar: &str) -> Self {
        self.policies = format!("{}\n{cedar}", self.policies);
        self
    }

    /// Raw TOML appended after the sections: `[[databases]]`, `[[signals.senders]]`, another issuer ...
    pub fn toml(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// Writes `issuer`'s JWKS to the file `name` beside the config.
    pub fn jwks_file(self, name: &str, issuer: &TestIssuer) -> Self {
        self.file(name, &issuer.jwks().to_string())
    }

    /// Writes `contents` to the file `name` beside the config (a certificate, say).
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_owned(), contents.to_owned()));
        self
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        let mut toml = String::new();
        for (name, lines) in &self.sections {
            if !name.is_empty() {
                toml.push_str(&format!("\n[{name}]\n"));
            }
            for l in lines {
                toml.push_str(l);
                toml.push('\n');
            }
        }
        for part in self.extra.iter().chain(&self.issuers) {
            if !part.starts_with('\n') {
                toml.push('\n');
            }
            toml.push_str(part);
        }
        toml
    }

    /// Writes `dir/mayfly.toml` and its files (a KEK of 0x11 bytes unless one is there); returns the config's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("mayfly.toml");
        self.write_to(&path);
        path
    }

    /// Writes the config to `path` and its files beside it: several configs may share a
    /// directory (replicas: one KEK, one policy directory).
    pub fn write_to(&self, path: &Path) {
        let dir = path.parent().expect("a config file in a directory");
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        if !self.policies.is_empty() {
            std::fs::write(dir.join("policies/test.cedar"), &self.policies).unwrap();
        }
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        if !dir.join("kek").exists() {
            write_kek(&dir.join("kek"), 0x11);
        }
        std::fs::write(path, self.to_toml()).unwrap();
    }
}

/// The key of a `key = value` line.
fn key(line: &str) -> &str {
    line.split('=').next().unwrap_or("").trim()
}

/// Writes a KEK file as an operator must: 0600 (the server refuses one open to others).
pub fn write_kek(path: &Path, byte: u8) {
    mayfly_server::fsutil::write_private(path, hex::encode([byte; 32]).as_bytes()).unwrap();
}
