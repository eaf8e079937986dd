//! The `mayfly` binary as a newcomer meets it: `server --dev`, then the client commands.

mod common;

use std::process::Command;

use common::*;

#[test]
fn dev_server_banner_and_client_commands_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let srv = start_dev(&data);
    assert!(srv.url.starts_with("http://127.0.0.1:"));
    assert!(srv.admin_token.starts_with("mfa_"));
    assert!(srv.join_token.starts_with("mfj_"));

    use std::os::unix::fs::PermissionsExt;
    for f in ["kek", "admin-token"] {
        let mode = std::fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(data.join("mayfly.db").exists(), "SQLite state in the data directory");

    // The banner's join token works once.
    let out = mayfly(
        &[
            "token",
            "exchange",
            "--url",
            &srv.url,
            "--join-token",
            &srv.join_token,
            "--audience",
            "https://api.example",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 300);
    let again =
        mayfly(&["token", "exchange", "--url", &srv.url, "--join-token", &srv.join_token, "--audience", "x"], &[]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already been used"), "{}", text(&again.stderr));

    // Admin commands need the admin token.
    let denied = mayfly(&["join-token", "create", "--url", &srv.url], &[]);
    assert!(!denied.status.success());
    assert!(text(&denied.stderr).contains("admin token"), "{}", text(&denied.stderr));
    let wrong = mayfly(&["join-token", "create", "--url", &srv.url], &[("MAYFLY_ADMIN_TOKEN", "mfa_wrong")]);
    assert!(!wrong.status.success());
    assert!(text(&wrong.stderr).contains("Unauthorized (401)"), "{}", text(&wrong.stderr));

    let (admin_token, url) = (srv.admin_token.clone(), srv.url.clone());
    let admin = [("MAYFLY_ADMIN_TOKEN", admin_token.as_str()), ("MAYFLY_URL", url.as_str())];
    let created = mayfly(&["join-token", "create", "--ttl", "2m", "--spiffe-path", "ci/runner-7"], &admin);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let join = text(&created.stdout).trim().to_owned();
    assert!(join.starts_with("mfj_"));
    assert!(text(&created.stderr).contains("spiffe://dev.mayfly.local/ci/runner-7"));
    let token = mayfly(&["token", "exchange", "--join-token", &join, "--audience", "https://api.example"], &admin);
    assert!(token.status.success(), "{}", text(&token.stderr));
    assert_eq!(text(&token.stdout).trim().split('.').count(), 3, "prints just the JWT");

    let rotated = mayfly(&["keys", "rotate"], &admin);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let listed = mayfly(&["keys", "list", "--json"], &admin);
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);

    // Unreachable server: a clear message, non-zero exit.
    let down =
        mayfly(&["token", "exchange", "--url", "http://127.0.0.1:9", "--join-token", "mfj_x", "--audience", "a"], &[]);
    assert!(!down.status.success());
    assert!(text(&down.stderr).contains("cannot reach"), "{}", text(&down.stderr));

    // SIGTERM stops the server cleanly.
    let mut srv = srv;
    Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status().unwrap();
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // A restart on the same data directory keeps state and shows the same admin token.
    let again = start_dev(&data);
    assert_eq!(again.admin_token, admin_token);
}

#[test]
fn bad_invocations_fail_with_a_message() {
    let out = mayfly(&["server"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--config FILE, or --dev"));
    let out = mayfly(&["server", "--config", "/nonexistent/mayfly.toml"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read config file"));
    let out = mayfly(&["server", "--dev", "--listen", "0.0.0.0:0", "--data-dir", "/tmp/never-created-mayfly"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("loopback"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.cedar"), "permit (principal, action, resource) when { nope };").unwrap();
    let out = mayfly(&["policy", "validate", dir.path().to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("bad.cedar"), "{}", text(&out.stderr));
}

#[test]
fn policy_eval_explains_decisions_offline() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    let allow = mayfly(
        &[
            "policy",
            "eval",
            "--policies",
            examples,
            "--principal",
            "spiffe://prod.example/ns/payments/sa/api",
            "--attr",
            "namespace=payments",
            "--attestor",
            "oidc:k8s-prod",
            "--audience",
            "https://payments.prod.example",
            "--scope",
            "payments:read",
        ],
        &[],
    );
    assert_eq!(allow.status.code(), Some(0), "{}", text(&allow.stderr));
    assert!(text(&allow.stdout).contains("ALLOW: allowed by payments-api"));
    let deny = mayfly(
        &[
            "policy",
            "eval",
            "--policies",
            examples,
            "--principal",
            "spiffe://prod.example/ns/payments/sa/api",
            "--attr",
            "namespace=payments",
            "--attestor",
            "oidc:k8s-prod",
            "--audience",
            "https://payments.prod.example",
            "--scope",
            "payments:write",
            "--source-ip",
            "192.0.2.1",
            "--json",
        ],
        &[],
    );
    assert_eq!(deny.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(v["policies"], serde_json::json!(["writes-from-cluster-only"]));
}

#[test]
fn example_config_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/mayfly.toml");
    let cfg = mayfly_server::config::Config::load(std::path::Path::new(path)).expect("examples/mayfly.toml is valid");
    assert_eq!(cfg.trust_domain, "prod.example");
    assert_eq!(cfg.attest.oidc.len(), 2);
}

#[test]
fn database_admin_urls_are_sealed_from_standard_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = mayfly_testkit::TestConfig::new().trust_domain("x.example").write(dir.path());
    let seal = |input: &str| {
        let mut child = Command::new(BIN)
            .args(["databases", "seal-url", "-c"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let url = "postgres://admin:s3cret@db.internal:5432/orders";
    let out = seal(&format!("{url}\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sealed = text(&out.stdout).trim().to_owned();
    assert!(!sealed.contains("s3cret") && !sealed.is_empty());
    // It opens with the same key into the same URL.
    let kek = mayfly_server::keys::Kek::load(&mayfly_server::keys::KekSource::File(dir.path().join("kek"))).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
    let opened = kek.open(b"mayfly:database-admin-url", &bytes).unwrap();
    assert_eq!(String::from_utf8(opened).unwrap(), url);
    // Bad input: nothing, or not a URL.
    let out = seal("");
    assert!(!out.status.success() && text(&out.stderr).contains("standard input"));
    let out = seal("not a url");
    assert!(!out.status.success() && text(&out.stderr).contains("not a URL"));
}

#[test]
fn dev_server_serves_the_workload_api_as_the_banner_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let srv = start_dev(&data);
    let socket = format!("unix://{}", data.join("workload.sock").display());
    let (admin_token, url) = (srv.admin_token.clone(), srv.url.clone());
    let env = [
        ("MAYFLY_ADMIN_TOKEN", admin_token.as_str()),
        ("MAYFLY_URL", url.as_str()),
        ("SPIFFE_ENDPOINT_SOCKET", &socket),
    ];

    // No entry yet: no identity, and the message says so.
    let none = mayfly(&["svid", "x509"], &env);
    assert!(!none.status.success());
    assert!(text(&none.stderr).contains("no identity"), "{}", text(&none.stderr));

    let uid = nix::unistd::geteuid().to_string();
    let selector = format!("unix:uid:{uid}");
    let created = mayfly(
        &["entries", "create", "--spiffe-id", "spiffe://dev.mayfly.local/dev/me", "--selector", &selector],
        &env,
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let id = text(&created.stdout).trim().to_owned();
    let bad = mayfly(&["entries", "create", "--spiffe-id", "spiffe://other.domain/x", "--selector", &selector], &env);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("trust domain"), "{}", text(&bad.stderr));

    let out = dir.path().join("svid");
    let x509 = mayfly(&["svid", "x509", "--write", out.to_str().unwrap()], &env);
    assert!(x509.status.success(), "{}", text(&x509.stderr));
    assert_eq!(text(&x509.stdout).trim(), "spiffe://dev.mayfly.local/dev/me");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(out.join("svid.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(out.join("bundle.pem")).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));

    let jwt = mayfly(&["svid", "jwt", "--audience", "https://api.example"], &env);
    assert!(jwt.status.success(), "{}", text(&jwt.stderr));
    let token = text(&jwt.stdout).trim().to_owned();
    let validate = |aud: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args(["svid", "validate", "--audience", aud])
            .envs(env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = validate("https://api.example");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout).trim(), "spiffe://dev.mayfly.local/dev/me");
    assert!(!validate("https://elsewhere.example").status.success());

    let listed = mayfly(&["entries", "list", "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["entries"][0]["id"], id.as_str());
    let deleted = mayfly(&["entries", "delete", &id], &env);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert!(!mayfly(&["svid", "x509"], &env).status.success(), "no identity once the entry is gone");
}
