//! Policies reload on file change and on SIGHUP; a bad file keeps the policies in force.

use std::time::{Duration, Instant};

use mayfly_testkit::*;

const ALLOW_STAGING: &str = r#"
@id("staging-may-call-api")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "staging" };
"#;

/// Polls until `f` yields the wanted status or 10 s pass.
async fn eventually(srv: &TestServer, jwt: &str, want: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if srv.exchange_jwt(jwt, "https://api.test").await.status().as_u16() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn policy_changes_apply_without_restart_and_bad_files_are_rejected() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = TestServer::start(&k8s, &gh).await;
    let staging = k8s.k8s_token("staging", "web");
    assert_eq!(srv.exchange_jwt(&staging, "https://api.test").await.status(), 403);

    let file = srv.dir.path().join("policies/staging.cedar");
    std::fs::write(&file, ALLOW_STAGING).unwrap();
    assert!(eventually(&srv, &staging, 200).await, "new policy took effect");

    // A policy that does not validate against the schema: the old set stays.
    std::fs::write(&file, "permit (principal, action, resource) when { principal.no_such_attribute == 1 };").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(srv.exchange_jwt(&staging, "https://api.test").await.status(), 200, "old policies still in force");
    // A syntax error: same.
    std::fs::write(&file, "permit (principal, action resource);").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(srv.exchange_jwt(&staging, "https://api.test").await.status(), 200);

    std::fs::remove_file(&file).unwrap();
    assert!(eventually(&srv, &staging, 403).await, "removal took effect");

    let events = srv.running.broker.ledger().store().audit_events_after(0, 10_000).await.unwrap();
    let failed = events.iter().filter(|e| e.kind == "policy.reload_failed").count();
    let reloaded = events.iter().filter(|e| e.kind == "policy.reloaded").count();
    assert!(failed >= 2 && reloaded >= 2, "reloads audited: failed={failed} reloaded={reloaded}");
    srv.stop().await;
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    // Polling far slower than the test: only the signal can explain a quick reload.
    let srv = TestServer::start_with(TestConfig::standard(&k8s, &gh).set("policy", "reload_interval = \"1h\"")).await;
    let staging = k8s.k8s_token("staging", "web");
    assert_eq!(srv.exchange_jwt(&staging, "https://api.test").await.status(), 403);
    std::fs::write(srv.dir.path().join("policies/staging.cedar"), ALLOW_STAGING).unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(eventually(&srv, &staging, 200).await, "SIGHUP reloaded policies");
    srv.stop().await;
}
