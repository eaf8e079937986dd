//! Crash safety: SIGKILL in the middle of a burst of issuance. After a restart every
//! token a client received is known to the ledger, and the audit chain verifies.
//! A SIGTERM exits cleanly, after the last group commit. Also the operator commands
//! (`revoke`, `leases`, `audit`) against the restarted server.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_delivered_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let srv = start_dev(&data);
    let http = reqwest::Client::new();

    // Join tokens to burn through: each exchange redeems one.
    let mut joins = Vec::new();
    for _ in 0..400 {
        let r = http
            .post(format!("{}/v1/join-tokens", srv.url))
            .bearer_auth(&srv.admin_token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        joins.push(r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned());
    }
    let joins = Arc::new(std::sync::Mutex::new(joins));
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, url, joins, received, stop) =
            (http.clone(), srv.url.clone(), joins.clone(), received.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Some(j) = joins.lock().unwrap().pop() else { break };
                let form = [
                    ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                    ("subject_token", j.as_str()),
                    ("subject_token_type", "urn:mayfly:params:oauth:token-type:join-token"),
                    ("audience", "https://api.example"),
                ];
                let Ok(resp) = http.post(format!("{url}/v1/token")).form(&form).send().await else { continue };
                if resp.status() == 200
                    && let Ok(v) = resp.json::<Value>().await
                {
                    received.lock().unwrap().push(v["access_token"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    // Kill the server once the burst is well under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().len() < 100 {
        assert!(std::time::Instant::now() < deadline, "burst made progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut srv = srv;
    Command::new("kill").args(["-KILL", &srv.child.id().to_string()]).status().unwrap();
    let _ = srv.child.wait();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 100);

    // Restart on the same state and address (the address is the tokens' issuer):
    // every delivered token is known and active.
    let listen = srv.url.trim_start_matches("http://").to_owned();
    drop(srv);
    let srv = start_dev_on(&data, &listen);
    for t in &received {
        let r = http
            .post(format!("{}/v1/introspect", srv.url))
            .bearer_auth(&srv.admin_token)
            .form(&[("token", t.as_str())])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["active"], true, "a token delivered before the crash is known after it");
    }
    let env = [("MAYFLY_URL", srv.url.as_str()), ("MAYFLY_ADMIN_TOKEN", srv.admin_token.as_str())];
    let out = mayfly(&["audit", "verify"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("audit chain intact"), "{}", text(&out.stdout));

    // Operator commands against the restarted server.
    let leases = mayfly(&["leases", "--json", "--limit", "1000"], &env);
    assert!(leases.status.success(), "{}", text(&leases.stderr));
    let leases: Vec<Value> = serde_json::from_slice(&leases.stdout).unwrap();
    assert!(leases.len() >= received.len());
    let subject = leases[0]["subject"].as_str().unwrap().to_owned();
    let out = mayfly(&["revoke", "--subject", &subject, "--reason", "test"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("revoked: subject"), "{}", text(&out.stdout));
    let again = mayfly(&["revoke", "--subject", "spiffe://dev.mayfly.local/nobody"], &env);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("nothing was revoked"), "{}", text(&again.stderr));
    let none = mayfly(&["revoke"], &env);
    assert!(!none.status.success(), "a selector is required");
    let revoked = mayfly(&["leases", "--state", "revoked", "--subject", &subject, "--json"], &env);
    let revoked: Vec<Value> = serde_json::from_slice(&revoked.stdout).unwrap();
    assert_eq!(revoked.len(), 1);
    let audit = mayfly(&["audit", "--kind", "credential.revoked", "--json"], &env);
    let lines: Vec<Value> = text(&audit.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "one JSON object per line");
    assert_eq!(lines[0]["detail"]["reason"], "test");
    let table = mayfly(&["audit", "--kind", "token.issued", "--limit", "3"], &env);
    assert_eq!(text(&table.stdout).lines().count(), 3);
}

/// `mayfly server` on SIGTERM: it exits by itself, successfully, and only after every
/// token it delivered is recorded (the restarted server knows each one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_after_recording_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let srv = start_dev(&data);
    let http = reqwest::Client::new();
    let mut received = Vec::new();
    for _ in 0..20 {
        let r = http
            .post(format!("{}/v1/join-tokens", srv.url))
            .bearer_auth(&srv.admin_token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let join = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", join.as_str()),
            ("subject_token_type", "urn:mayfly:params:oauth:token-type:join-token"),
            ("audience", "https://api.example"),
        ];
        let resp = http.post(format!("{}/v1/token", srv.url)).form(&form).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        received.push(resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned());
    }
    let mut srv = srv;
    Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the server exits within 60 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a clean shutdown exits with 0: {status:?}");

    let listen = srv.url.trim_start_matches("http://").to_owned();
    drop(srv);
    let srv = start_dev_on(&data, &listen);
    for t in &received {
        let r = http
            .post(format!("{}/v1/introspect", srv.url))
            .bearer_auth(&srv.admin_token)
            .form(&[("token", t.as_str())])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["active"], true, "a token delivered before SIGTERM is known after it");
    }
}
