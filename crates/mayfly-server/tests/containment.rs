//! Containment, as an attacker tries to get around it: a revoked workload re-presenting
//! its old evidence on every issuance path, its tasks issuing on, blocks and lifts; a
//! task starter naming someone else in `sub`; a signal that would grant; Mayfly's own
//! endpoints accepting a bound token without its proof; SPIFFE IDs from claims leaving
//! their segment. Every test here failed against the build the review attacked.

use std::time::Duration;

use mayfly_testkit::*;
use serde_json::{Value, json};

const REDIS_ADMIN: &str = "redis://127.0.0.1:6379";

/// Test policies plus what these tests need: prod workloads start tasks and get database
/// credentials; `delegate` may act for `user:alice` without proof; verifiers in `infra`;
/// prod workloads may get tokens for other workloads' SPIFFE IDs (delegation proofs).
const POLICIES: &str = r#"
@id("prod-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("joined-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.attestor == "join_token" };

@id("tasks-may-call-api")
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.test");

@id("prod-may-use-cache")
permit (principal, action == Mayfly::Action::"issue", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("delegate-may-act-for-alice")
permit (principal == Mayfly::Workload::"spiffe://test.example/ns/prod/sa/delegate",
        action == Mayfly::Action::"act_for", resource == Mayfly::Subject::"user:alice");

@id("prod-may-address-peers")
permit (principal, action == Mayfly::Action::"exchange", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" &&
       resource in [Mayfly::Audience::"spiffe://test.example/ns/prod/sa/delegate",
                    Mayfly::Audience::"spiffe://test.example/ns/prod/sa/other"] };

@id("infra-may-verify")
permit (principal, action == Mayfly::Action::"exchange", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "infra" &&
       resource in [Mayfly::Audience::"urn:mayfly:introspect", Mayfly::Audience::"urn:mayfly:introspect:https://api.test",
                    Mayfly::Audience::"urn:mayfly:introspect:https://deploy.test"] };

@id("tier-prod-only")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://tiered.test")
when { principal.hasTag("tier") && principal.getTag("tier") == "prod" };
"#;

async fn start_with(extra_toml: &str) -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let config = TestConfig::standard(&k8s, &gh).add_policies(POLICIES).toml(extra_toml);
    (TestServer::start_with(config).await, k8s)
}

async fn start() -> (TestServer, TestIssuer) {
    start_with("").await
}

fn subject(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

async fn access_token(resp: reqwest::Response) -> String {
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "exchange: {v}");
    v["access_token"].as_str().unwrap().to_owned()
}

async fn introspect(srv: &TestServer, caller: &str, token: &str) -> Value {
    let r = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(caller)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn active(srv: &TestServer, token: &str) -> bool {
    introspect(srv, &srv.admin_token, token).await["active"].as_bool().unwrap()
}

async fn start_task(srv: &TestServer, body: Value) -> reqwest::Response {
    srv.http.post(format!("{}/v1/tasks", srv.url)).json(&body).send().await.unwrap()
}

fn task_body(evidence: &str, purpose: &str) -> Value {
    json!({"subject_token_type": JWT_TYPE, "subject_token": evidence, "purpose": purpose})
}

async fn exchange_task(srv: &TestServer, task_token: &str, audience: &str) -> reqwest::Response {
    srv.exchange(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", task_token),
        ("subject_token_type", "urn:mayfly:params:oauth:token-type:task"),
        ("audience", audience),
    ])
    .await
}

/// Waits until evidence minted now is newer than a revocation that covers what was
/// issued until `t`: a later second, past the issuer's leeway (1 s in the test kit).
async fn after_second(t: i64) {
    while now() <= t + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revoke(srv: &TestServer, body: Value) -> Value {
    let r = srv.admin_post("/v1/revocations", Some(body)).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "revocation: {v}");
    v
}

#[tokio::test]
async fn a_revoked_subjects_old_evidence_is_refused_on_every_issuance_path() {
    let prefix = format!("ct{:04x}_", now() % 0xffff);
    let toml = format!(
        "[[databases]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{REDIS_ADMIN}\"\nusername_prefix = \"{prefix}\"\n\
         [[databases.roles]]\nname = \"reader\"\nacl = \"~{prefix}* +@read +ping\"\n"
    );
    let (srv, k8s) = start_with(&toml).await;
    let victim = subject("prod", "victim");
    // The stolen evidence: a platform token minted before the revocation.
    let stolen = k8s.k8s_token("prod", "victim");
    let held = access_token(srv.exchange_jwt(&stolen, "https://api.test").await).await;
    let r = start_task(&srv, task_body(&stolen, "nightly")).await;
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    let task_id = task["task"]["id"].as_str().unwrap().to_owned();
    let task_token = task["task_token"].as_str().unwrap().to_owned();
    let under_task = access_token(exchange_task(&srv, &task_token, "https://api.test").await).await;
    let db = srv
        .http
        .post(format!("{}/v1/credentials/cache/reader", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": stolen}))
        .send()
        .await
        .unwrap();
    assert_eq!(db.status(), 201);
    let lease: Value = db.json().await.unwrap();

    let rev = revoke(&srv, json!({"subject": victim, "reason": "compromised"})).await;
    assert_eq!(rev["kind"], "subject");
    assert!(!active(&srv, &held).await, "what it held is dead");

    // The same evidence, a moment later, on every path: refused, not re-issued.
    let again = srv.exchange_jwt(&stolen, "https://api.test").await;
    let body = assert_problem(again, 400, "subject-revoked").await;
    assert_eq!(body["error"], "invalid_request");
    assert_problem(start_task(&srv, task_body(&stolen, "again")).await, 400, "subject-revoked").await;
    let db = srv
        .http
        .post(format!("{}/v1/credentials/cache/reader", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": stolen}))
        .send()
        .await
        .unwrap();
    assert_problem(db, 400, "subject-revoked").await;

    // Its task ended with everything under it, and issues nothing more.
    let t: Value = srv.admin_get(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(t["state"], "ended", "{t}");
    assert!(!active(&srv, &under_task).await);
    let r = exchange_task(&srv, &task_token, "https://api.test").await;
    assert_eq!(r.status(), 400, "a task of a revoked starter issues nothing");
    // Its database user is being dropped.
    let id = lease["lease_id"].as_str().unwrap();
    let mut state = Value::Null;
    for _ in 0..100 {
        let leases: Value = srv.admin_get("/v1/credentials/leases?state=all").await;
        state = leases
            .as_array()
            .and_then(|l| l.iter().find(|l| l["lease_id"] == id).map(|l| l["state"].clone()))
            .unwrap_or(Value::Null);
        if state == "revoked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "revoked", "the subject's database lease is revoked");

    // Evidence minted after the revocation proves a workload that is no longer suspect.
    after_second(rev["issued_before"].as_i64().unwrap()).await;
    let fresh = k8s.k8s_token("prod", "victim");
    let new = access_token(srv.exchange_jwt(&fresh, "https://api.test").await).await;
    assert!(active(&srv, &new).await);
    // The stolen one stays dead.
    assert_problem(srv.exchange_jwt(&stolen, "https://api.test").await, 400, "subject-revoked").await;
    srv.stop().await;
}

#[tokio::test]
async fn a_block_refuses_all_new_issuance_until_lifted_and_what_it_revoked_stays_revoked() {
    let (srv, k8s) = start().await;
    let victim = subject("prod", "blocked");
    let before = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "blocked"), "https://api.test").await).await;
    let rev = revoke(&srv, json!({"subject": victim, "block": true})).await;
    assert_eq!(rev["issued_before"], i64::MAX, "blocked until lifted");
    after_second(rev["revoked_at"].as_i64().unwrap()).await;
    // Even evidence minted after the revocation gets nothing while the block stands.
    let fresh = k8s.k8s_token("prod", "blocked");
    assert_problem(srv.exchange_jwt(&fresh, "https://api.test").await, 400, "subject-revoked").await;
    assert_problem(start_task(&srv, task_body(&fresh, "x")).await, 400, "subject-revoked").await;
    // Others are not touched.
    access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "bystander"), "https://api.test").await).await;
    // Lifting needs an admin, and a block to lift.
    let anon = srv.http.post(format!("{}/v1/revocations/lift", srv.url)).json(&json!({"subject": victim})).send();
    assert_problem(anon.await.unwrap(), 401, "unauthorized").await;
    let r = srv.admin_post("/v1/revocations/lift", Some(json!({"subject": subject("prod", "nobody")}))).await;
    assert_problem(r, 404, "nothing-to-revoke").await;
    let r = srv.admin_post("/v1/revocations/lift", Some(json!({"subject": victim, "reason": "cleaned"}))).await;
    assert_eq!(r.status(), 201);
    let lift: Value = r.json().await.unwrap();
    assert_eq!(lift["lift"], true);
    after_second(lift["issued_before"].as_i64().unwrap()).await;
    let after = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "blocked"), "https://api.test").await).await;
    assert!(active(&srv, &after).await, "issuance resumes after the lift");
    assert!(!active(&srv, &before).await, "what the revocation covered stays revoked");
    assert_problem(srv.exchange_jwt(&fresh, "https://api.test").await, 400, "subject-revoked").await;
    // The feed carries both, so verifiers hold the same semantics.
    let feed: Value = srv.admin_get("/v1/revocations").await;
    let entries = feed["entries"].as_array().unwrap();
    // Stored, the block now ends at the lift (so it cannot outlive its lift in storage).
    let lifted_at = lift["issued_before"].as_i64().unwrap();
    assert!(entries.iter().any(|e| e["value"] == victim && e["lift"].is_null() && e["issued_before"] == lifted_at));
    assert!(entries.iter().any(|e| e["value"] == victim && e["lift"] == true));
    // Both are audited.
    let audit: Value = srv.admin_get("/v1/audit?kind=revocation.lifted").await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");

    // A block for a stated time ends by itself; a block on a whole audience stops issuance there.
    let timed = revoke(&srv, json!({"subject": subject("prod", "timed"), "block": true, "block_seconds": 2})).await;
    assert!(timed["issued_before"].as_i64().unwrap() <= now() + 2);
    assert_problem(srv.exchange_jwt(&k8s.k8s_token("prod", "timed"), "https://api.test").await, 400, "subject-revoked")
        .await;
    after_second(timed["issued_before"].as_i64().unwrap()).await;
    access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "timed"), "https://api.test").await).await;
    revoke(&srv, json!({"audience": "https://api.test", "block": true})).await;
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "other"), "https://api.test").await;
    assert_problem(r, 403, "issuance-blocked").await;
    // Selectors that cannot block, and malformed blocks, are refused.
    for bad in [
        json!({"jti": "x", "block": true}),
        json!({"task": "x", "block": true}),
        json!({"subject": victim, "block_seconds": 5}),
        json!({"subject": victim, "block": true, "block_seconds": 0}),
    ] {
        assert_problem(srv.admin_post("/v1/revocations", Some(bad)).await, 400, "invalid-selector").await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_prefix_revocation_contains_every_workload_below_it_and_their_tasks() {
    let (srv, k8s) = start().await;
    let stolen = k8s.k8s_token("prod", "a");
    let r = start_task(&srv, task_body(&stolen, "batch")).await;
    let task: Value = r.json().await.unwrap();
    let task_token = task["task_token"].as_str().unwrap().to_owned();
    revoke(&srv, json!({"subject_prefix": format!("spiffe://{TRUST_DOMAIN}/ns/prod")})).await;
    assert_problem(srv.exchange_jwt(&stolen, "https://api.test").await, 400, "subject-revoked").await;
    assert_eq!(exchange_task(&srv, &task_token, "https://api.test").await.status(), 400);
    let t: Value = srv.admin_get(&format!("/v1/tasks/{}", task["task"]["id"].as_str().unwrap())).await;
    assert_eq!(t["state"], "ended");
    // A path-segment boundary: ns/production is not below ns/prod.
    let join = srv.join_token(Some("ns/production/sa/a")).await;
    let r = srv
        .exchange(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &join),
            ("subject_token_type", JOIN_TYPE),
            ("audience", "https://api.test"),
        ])
        .await;
    access_token(r).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_join_token_minted_before_its_subjects_revocation_is_dead() {
    let (srv, _) = start().await;
    let join = srv.join_token(Some("node/n1")).await;
    let rev =
        revoke(&srv, json!({"subject": format!("spiffe://{TRUST_DOMAIN}/node/n1"), "block": true, "block_seconds": 1}));
    let rev = rev.await;
    after_second(rev["issued_before"].as_i64().unwrap()).await;
    let r = srv
        .exchange(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &join),
            ("subject_token_type", JOIN_TYPE),
            ("audience", "https://api.test"),
        ])
        .await;
    assert_problem(r, 400, "subject-revoked").await;
    srv.stop().await;
}

#[tokio::test]
async fn delegation_needs_the_subjects_proof_or_an_explicit_permission() {
    let (srv, k8s) = start().await;
    // The attack: a join token for dev/attacker names another workload in on_behalf_of.
    let join = srv.join_token(Some("dev/attacker")).await;
    let victim = subject("prod", "web");
    let forged =
        json!({"subject_token_type": JOIN_TYPE, "subject_token": join, "purpose": "x", "on_behalf_of": victim});
    let body = assert_problem(start_task(&srv, forged).await, 403, "forbidden").await;
    assert!(body["detail"].as_str().unwrap().contains("actor_token"), "{body}");
    // Spellings that would pass for the same identity at a resource server are refused too.
    for spelled in [victim.to_uppercase(), format!("{victim}/"), format!("user:{victim}")] {
        let r = start_task(
            &srv,
            json!({"subject_token_type": JOIN_TYPE, "subject_token": join, "purpose": "x",
                                         "on_behalf_of": spelled}),
        )
        .await;
        assert_problem(r, 403, "forbidden").await;
    }
    // The refusal came before the join token was spent; a task of its own still starts.
    let own = start_task(&srv, json!({"subject_token_type": JOIN_TYPE, "subject_token": join, "purpose": "own"})).await;
    assert_eq!(own.status(), 201);

    // An opaque subject needs an explicit act_for permission: denied by default.
    let r = start_task(
        &srv,
        json!({"subject_token_type": JWT_TYPE, "subject_token": k8s.k8s_token("prod", "web"),
                                     "purpose": "x", "on_behalf_of": "user:alice"}),
    )
    .await;
    assert_problem(r, 403, "policy-denied").await;
    let r = start_task(
        &srv,
        json!({"subject_token_type": JWT_TYPE, "subject_token": k8s.k8s_token("prod", "delegate"),
                                     "purpose": "x", "on_behalf_of": "user:alice"}),
    )
    .await;
    assert_eq!(r.status(), 201, "policy permits delegate to act for alice");
    let t: Value = r.json().await.unwrap();
    let alice_tok =
        access_token(exchange_task(&srv, t["task_token"].as_str().unwrap(), "https://api.test").await).await;
    assert_eq!(srv.verify(&alice_tok, "https://api.test").await["sub"], "user:alice");

    // RFC 8693 delegation: web hands delegate a token addressed to it; delegate acts for web.
    let delegate = subject("prod", "delegate");
    let proof = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), &delegate).await).await;
    let delegated = json!({
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "subject_token": proof,
        "actor_token_type": JWT_TYPE, "actor_token": k8s.k8s_token("prod", "delegate"), "purpose": "for web",
        "ttl_seconds": 3600,
    });
    let r = start_task(&srv, delegated.clone()).await;
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["task"]["on_behalf_of"], victim);
    assert_eq!(t["task"]["creator"], delegate);
    // It lasts no longer than its proof (a token of 5 minutes by default), whatever it asked.
    let proof_exp = srv.verify(delegated["subject_token"].as_str().unwrap(), &delegate).await["exp"].as_i64().unwrap();
    assert!(t["task"]["expires_at"].as_i64().unwrap() <= proof_exp, "{t}");
    let tok = access_token(exchange_task(&srv, t["task_token"].as_str().unwrap(), "https://api.test").await).await;
    let claims = srv.verify(&tok, "https://api.test").await;
    assert_eq!(claims["sub"], victim);
    assert_eq!(claims["act"]["act"]["sub"], delegate);
    // A proof is used once.
    assert_problem(start_task(&srv, delegated.clone()).await, 403, "forbidden").await;
    // A token issued under a task (or a delegation) is no proof: delegations are not laundered.
    let alice_task = start_task(
        &srv,
        json!({"subject_token_type": JWT_TYPE, "subject_token": k8s.k8s_token("prod", "delegate"),
                                             "purpose": "for alice", "on_behalf_of": "user:alice"}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    let via_task = exchange_task(&srv, alice_task["task_token"].as_str().unwrap(), &subject("prod", "other")).await;
    let laundered = access_token(via_task).await;
    let r = start_task(
        &srv,
        json!({
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "subject_token": laundered,
            "actor_token_type": JWT_TYPE, "actor_token": k8s.k8s_token("prod", "other"), "purpose": "laundered",
        }),
    )
    .await;
    assert_problem(r, 403, "forbidden").await;
    // A proof addressed to someone else proves nothing for this actor.
    let other = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), &subject("prod", "other")).await).await;
    let mut stolen = delegated.clone();
    stolen["subject_token"] = json!(other);
    assert_problem(start_task(&srv, stolen).await, 403, "forbidden").await;
    // The proof must name the subject the request names.
    let mut mismatch = delegated.clone();
    mismatch["on_behalf_of"] = json!(subject("prod", "admin"));
    assert_problem(start_task(&srv, mismatch).await, 403, "forbidden").await;
    // A revoked subject's proof is refused, and a subject acted for by policy can be revoked too.
    let fresh_proof = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), &delegate).await).await;
    revoke(&srv, json!({"subject": victim})).await;
    let mut after = delegated.clone();
    after["subject_token"] = json!(fresh_proof);
    assert_problem(start_task(&srv, after).await, 403, "forbidden").await;
    revoke(&srv, json!({"subject": "user:alice"})).await;
    assert!(!active(&srv, &alice_tok).await, "tokens issued for alice die with her revocation");
    srv.stop().await;
}

#[tokio::test]
async fn a_signal_can_take_access_away_but_never_grant_it() {
    let (srv, k8s) = start().await;
    let mut claims = k8s.k8s_claims("prod", "tiered");
    claims["tier"] = json!("dev");
    let dev = k8s.sign("RS256", &claims);
    assert_problem(srv.exchange_jwt(&dev, "https://tiered.test").await, 403, "policy-denied").await;
    // A signal claims the workload is prod tier now: policy must still refuse it.
    let signal = json!({"kind": "attribute_changed", "subject": {"spiffe_id": subject("prod", "tiered")},
                        "attributes": {"tier": "prod"}});
    assert_eq!(srv.admin_post("/v1/signals", Some(signal)).await.status(), 200);
    assert_problem(srv.exchange_jwt(&dev, "https://tiered.test").await, 403, "policy-denied").await;
    // The same for a task's start and a namespace a signal would move it into.
    let mut claims = k8s.k8s_claims("staging", "mover");
    claims["tier"] = json!("dev");
    let staging = k8s.sign("RS256", &claims);
    let move_in = json!({"kind": "workload_moved", "subject": {"spiffe_id": subject("staging", "mover")},
                         "attributes": {"namespace": "prod"}});
    assert_eq!(srv.admin_post("/v1/signals", Some(move_in)).await.status(), 200);
    assert_problem(srv.exchange_jwt(&staging, "https://api.test").await, 403, "policy-denied").await;
    assert_problem(start_task(&srv, task_body(&staging, "x")).await, 403, "policy-denied").await;
    // Taking away still works: a prod workload moved out of prod loses access.
    let web = k8s.k8s_token("prod", "web");
    access_token(srv.exchange_jwt(&web, "https://api.test").await).await;
    let move_out = json!({"kind": "workload_moved", "subject": {"spiffe_id": subject("prod", "web")},
                          "attributes": {"namespace": "staging"}});
    assert_eq!(srv.admin_post("/v1/signals", Some(move_out)).await.status(), 200);
    // Nothing of web survived the move, so it was one subject revocation: its evidence from
    // before is refused outright (later evidence would be decided in the new context).
    assert_problem(srv.exchange_jwt(&web, "https://api.test").await, 400, "subject-revoked").await;
    srv.stop().await;
}

/// A DPoP-bound verifier token for `audience` (its proof made for the token endpoint).
async fn bound_verifier(srv: &TestServer, k8s: &TestIssuer, key: &DpopKey, audience: &str) -> String {
    let proof = key.proof("POST", &format!("{}/v1/token", srv.url), None);
    let r = srv
        .http
        .post(format!("{}/v1/token", srv.url))
        .header("DPoP", proof)
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &k8s.k8s_token("infra", "gateway")),
            ("subject_token_type", JWT_TYPE),
            ("audience", audience),
        ])
        .send()
        .await
        .unwrap();
    access_token(r).await
}

#[tokio::test]
async fn mayfly_honours_its_own_bindings_and_verifiers_see_their_own_audience_only() {
    let (srv, k8s) = start().await;
    let key = DpopKey::new();
    let verifier = bound_verifier(&srv, &k8s, &key, "urn:mayfly:introspect:https://api.test").await;
    let token = access_token(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await).await;
    let introspect_url = format!("{}/v1/introspect", srv.url);
    let post = |auth: String, proof: Option<String>| {
        let mut req = srv.http.post(&introspect_url).header("authorization", auth).form(&[("token", token.as_str())]);
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.send()
    };
    // The attack: the bound token sent as a plain bearer token.
    assert_problem(post(format!("Bearer {verifier}"), None).await.unwrap(), 401, "unauthorized").await;
    // With the DPoP scheme but without a proof, or a proof for another URL or key: refused.
    assert_problem(post(format!("DPoP {verifier}"), None).await.unwrap(), 401, "unauthorized").await;
    let elsewhere = key.proof("POST", &format!("{}/v1/token", srv.url), Some(&verifier));
    assert_problem(post(format!("DPoP {verifier}"), Some(elsewhere)).await.unwrap(), 401, "unauthorized").await;
    let thief = DpopKey::new().proof("POST", &introspect_url, Some(&verifier));
    assert_problem(post(format!("DPoP {verifier}"), Some(thief)).await.unwrap(), 401, "unauthorized").await;
    // With its proof: accepted, once.
    let proof = key.proof("POST", &introspect_url, Some(&verifier));
    let r = post(format!("DPoP {verifier}"), Some(proof.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);
    assert_problem(post(format!("DPoP {verifier}"), Some(proof)).await.unwrap(), 401, "unauthorized").await;
    // The feed takes the same binding.
    let feed_url = format!("{}/v1/revocations", srv.url);
    let bearer = srv.http.get(&feed_url).bearer_auth(&verifier).send().await.unwrap();
    assert_problem(bearer, 401, "unauthorized").await;
    let proof = key.proof("GET", &feed_url, Some(&verifier));
    let ok = srv.http.get(&feed_url).header("authorization", format!("DPoP {verifier}")).header("DPoP", proof);
    assert_eq!(ok.send().await.unwrap().status(), 200);

    // A limited-use verifier token is spent by using it.
    let once = access_token(
        srv.exchange_jwt_with(
            &k8s.k8s_token("infra", "gateway"),
            "urn:mayfly:introspect:https://api.test",
            &[("max_uses", "2")],
        )
        .await,
    )
    .await;
    assert_eq!(introspect(&srv, &once, &token).await["active"], true);
    assert_eq!(introspect(&srv, &once, &token).await["active"], true);
    let third = srv.http.post(&introspect_url).bearer_auth(&once).form(&[("token", token.as_str())]).send();
    assert_problem(third.await.unwrap(), 401, "unauthorized").await;

    // A verifier of another audience sees nothing, and spends nothing of a limited-use token.
    let single = access_token(
        srv.exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://api.test", &[("max_uses", "1")]).await,
    )
    .await;
    let deploy = access_token(
        srv.exchange_jwt(&k8s.k8s_token("infra", "gateway"), "urn:mayfly:introspect:https://deploy.test").await,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(introspect(&srv, &deploy, &single).await, json!({"active": false}));
    }
    // Neither does an operator looking at it.
    assert_eq!(introspect(&srv, &srv.admin_token, &single).await["active"], true);
    let api = access_token(
        srv.exchange_jwt(&k8s.k8s_token("infra", "gateway"), "urn:mayfly:introspect:https://api.test").await,
    )
    .await;
    assert_eq!(introspect(&srv, &api, &single).await["active"], true, "its one use is still there");
    assert_eq!(introspect(&srv, &api, &single).await["active"], false, "and now spent");
    // A verifier token that names no audience reads the feed but introspects nothing.
    let bare = access_token(srv.exchange_jwt(&k8s.k8s_token("infra", "gateway"), "urn:mayfly:introspect").await).await;
    let r = srv.http.post(&introspect_url).bearer_auth(&bare).form(&[("token", token.as_str())]).send();
    assert_problem(r.await.unwrap(), 403, "forbidden").await;
    assert_eq!(srv.http.get(&feed_url).bearer_auth(&bare).send().await.unwrap().status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_revocation_stream_ends_with_its_holders_token_and_streams_are_bounded() {
    let (srv, k8s) = start_with("[revocations]\nmax_streams = 3\nmax_streams_per_subject = 1\n").await;
    let stream = |token: String| {
        let url = format!("{}/v1/revocations/stream", srv.url);
        let http = srv.http.clone();
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    // Ends when the verifier token expires.
    let short = access_token(
        srv.exchange_jwt_with(
            &k8s.k8s_token("infra", "gateway"),
            "urn:mayfly:introspect",
            &[("requested_lifetime", "2")],
        )
        .await,
    )
    .await;
    let expiring = stream(short).await;
    assert_eq!(expiring.status(), 200);
    // Ends when it is revoked.
    let held = access_token(srv.exchange_jwt(&k8s.k8s_token("infra", "gateway2"), "urn:mayfly:introspect").await).await;
    let revoked = stream(held.clone()).await;
    assert_eq!(revoked.status(), 200);
    // One verifier holds one stream here; and a third subscriber is turned away while
    // three are open.
    assert_problem(stream(held.clone()).await, 503, "unavailable").await;
    let third = stream(srv.admin_token.clone()).await;
    assert_eq!(third.status(), 200);
    assert_problem(stream(srv.admin_token.clone()).await, 503, "unavailable").await;
    drop(third);
    let jti = srv.verify(&held, "urn:mayfly:introspect").await["jti"].as_str().unwrap().to_owned();
    revoke(&srv, json!({"jti": jti})).await;
    let closed = |r: reqwest::Response| async move {
        let mut r = r;
        tokio::time::timeout(Duration::from_secs(10), async move { while let Ok(Some(_)) = r.chunk().await {} })
            .await
            .is_ok()
    };
    assert!(closed(revoked).await, "the stream of a revoked token is closed");
    assert!(closed(expiring).await, "the stream of an expired token is closed");
    // Their slots are free again.
    assert_eq!(stream(srv.admin_token.clone()).await.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_dpop_proof_is_spent_only_by_a_request_whose_evidence_attested() {
    let (srv, k8s) = start().await;
    let key = DpopKey::new();
    let proof = key.proof("POST", &format!("{}/v1/token", srv.url), None);
    let send = |subject_token: String| {
        srv.http
            .post(format!("{}/v1/token", srv.url))
            .header("DPoP", proof.clone())
            .form(&[
                ("grant_type", TOKEN_EXCHANGE.to_owned()),
                ("subject_token", subject_token),
                ("subject_token_type", JWT_TYPE.to_owned()),
                ("audience", "https://api.test".to_owned()),
            ])
            .send()
    };
    // Someone who proves nothing sends the proof first: it must not burn it.
    let bogus = send("not.a.token".into()).await.unwrap();
    assert_eq!(bogus.status(), 400);
    let r = send(k8s.k8s_token("prod", "web")).await.unwrap();
    assert_eq!(r.status(), 200, "the proof was not spent by the unauthenticated request");
    // Once spent by an attested request, it is spent.
    let again = send(k8s.k8s_token("prod", "web")).await.unwrap();
    assert_problem(again, 400, "invalid-dpop-proof").await;
    srv.stop().await;
}

#[tokio::test]
async fn unauthenticated_failures_are_audited_as_counts_per_source() {
    // The test kit sums refusals up every 200 ms.
    let (srv, _) = start().await;
    let head = |v: &Value| v.as_array().map(Vec::len).unwrap_or(0);
    for i in 0..300 {
        let bogus = format!("mfj_bogus{i}");
        let r = srv
            .exchange(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &bogus),
                ("subject_token_type", JOIN_TYPE),
                ("audience", "https://api.test"),
            ])
            .await;
        assert_eq!(r.status(), 400);
    }
    let mut events = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = srv.admin_get("/v1/audit?kind=attest.failed&limit=1000").await;
        let counted: u64 =
            events.as_array().map(|e| e.iter().filter_map(|e| e["detail"]["count"].as_u64()).sum()).unwrap_or(0);
        if counted == 300 {
            break;
        }
    }
    let n = head(&events);
    assert!((1..=10).contains(&n), "a few summaries, not one event per failure: {n}");
    let first = &events[0]["detail"];
    assert_eq!(first["source_ip"], "127.0.0.1");
    assert!(first["reasons"]["join-token-unknown"].as_u64().is_some(), "{first}");
    srv.stop().await;
}

#[tokio::test]
async fn spiffe_ids_from_claims_stay_in_their_segment() {
    let gh = TestIssuer::new(GITHUB_TEST_ISSUER);
    let generic = TestIssuer::new("https://generic.test");
    let escaped = TestIssuer::new("https://escaped.test");
    let issuers = format!(
        r#"
[[attest.oidc]]
name = "generic"
issuer = "https://generic.test"
jwks_file = "generic-jwks.json"
audiences = ["{MAYFLY_AUDIENCE}"]
spiffe_id_template = "gen/{{sub}}"

[[attest.oidc]]
name = "escaped"
issuer = "https://escaped.test"
jwks_file = "escaped-jwks.json"
audiences = ["{MAYFLY_AUDIENCE}"]
spiffe_id_template = "esc/{{sub}}"
claim_segments = "escape"

[[attest.oidc]]
name = "github"
preset = "github"
issuer = "{GITHUB_TEST_ISSUER}"
jwks_file = "gh-jwks.json"
audiences = ["{MAYFLY_AUDIENCE}"]

[[attest.oidc]]
name = "bad"
issuer = "https://bad.test"
jwks_file = "generic-jwks.json"
audiences = ["{MAYFLY_AUDIENCE}"]
spiffe_id_template = "{{sub}}/x"
"#
    );
    let config = TestConfig::new()
        .jwks_file("generic-jwks.json", &generic)
        .jwks_file("escaped-jwks.json", &escaped)
        .jwks_file("gh-jwks.json", &gh)
        .toml(&issuers)
        .policies(TEST_POLICIES)
        .add_policies(
            r#"permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://any.test");"#,
        );
    let srv = TestServer::start_with(config).await;
    let t = now();
    let jwt = |issuer: &TestIssuer, sub: &str| {
        issuer
            .sign("RS256", &json!({"iss": issuer.issuer, "aud": MAYFLY_AUDIENCE, "sub": sub, "iat": t, "exp": t + 300}))
    };
    // `sub = "a/b"` would add a segment (and slip under a prefix rule for gen/a): refused.
    let r = srv.exchange_jwt(&jwt(&generic, "a/b"), "https://any.test").await;
    let body = assert_problem(r, 400, "identity-mapping-failed").await;
    assert!(body["detail"].as_str().unwrap().contains("claim_segments"), "{body}");
    let ok = access_token(srv.exchange_jwt(&jwt(&generic, "a"), "https://any.test").await).await;
    assert_eq!(srv.verify(&ok, "https://any.test").await["sub"], format!("spiffe://{TRUST_DOMAIN}/gen/a"));
    // Escaped, when the issuer says so: one segment, and distinct from any other value.
    let esc = access_token(srv.exchange_jwt(&jwt(&escaped, "a/b"), "https://any.test").await).await;
    assert_eq!(srv.verify(&esc, "https://any.test").await["sub"], format!("spiffe://{TRUST_DOMAIN}/esc/a_2Fb"));
    // GitHub refs hold '/': the preset escapes them in one segment.
    let claims = json!({"iss": GITHUB_TEST_ISSUER, "aud": MAYFLY_AUDIENCE, "iat": t, "exp": t + 300,
                        "repository": "acme/app", "repository_owner": "acme", "ref": "refs/heads/feature/x",
                        "ref_type": "branch"});
    let gh_token = access_token(srv.exchange_jwt(&gh.sign("RS256", &claims), "https://any.test").await).await;
    assert_eq!(
        srv.verify(&gh_token, "https://any.test").await["sub"],
        format!("spiffe://{TRUST_DOMAIN}/github/acme/app/branch/feature_2Fx")
    );
    // Reserved prefixes: neither a template nor a join token reaches task/ or agent/.
    let r = srv
        .exchange_jwt(
            &generic.sign(
                "RS256",
                &json!({"iss": "https://bad.test", "aud": MAYFLY_AUDIENCE, "sub": "task", "iat": t, "exp": t + 300}),
            ),
            "https://any.test",
        )
        .await;
    assert_problem(r, 400, "identity-mapping-failed").await;
    for path in ["task/abc", "agent/node-1"] {
        let r = srv.admin_post("/v1/join-tokens", Some(json!({"spiffe_path": path}))).await;
        assert_problem(r, 400, "invalid-request").await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn evidence_too_old_or_without_iat_is_refused_and_an_issuer_ahead_in_time_does_not_slip_past_a_revocation() {
    let (srv, k8s) = start().await;
    let mut claims = k8s.k8s_claims("prod", "old");
    claims["iat"] = json!(now() - 90_000);
    let r = srv.exchange_jwt(&k8s.sign("RS256", &claims), "https://api.test").await;
    assert_problem(r, 400, "subject-token-too-old").await;
    let mut claims = k8s.k8s_claims("prod", "old");
    claims.as_object_mut().unwrap().remove("iat");
    let r = srv.exchange_jwt(&k8s.sign("RS256", &claims), "https://api.test").await;
    assert_problem(r, 400, "subject-token-too-old").await;
    // A token minted before the revocation by an issuer whose clock runs ahead (iat later
    // than the revocation) is still refused.
    let mut ahead = k8s.k8s_claims("prod", "ahead");
    ahead["iat"] = json!(now() + 20);
    let ahead = k8s.sign("RS256", &ahead);
    access_token(srv.exchange_jwt(&ahead, "https://api.test").await).await;
    revoke(&srv, json!({"subject": subject("prod", "ahead")})).await;
    assert_problem(srv.exchange_jwt(&ahead, "https://api.test").await, 400, "subject-revoked").await;
    // Revocations are stored as the canonical ID: a spelling with '//' blocks the real one.
    revoke(&srv, json!({"subject_prefix": format!("spiffe://{TRUST_DOMAIN}//ns/staging"), "block": true})).await;
    let r = srv.exchange_jwt(&k8s.k8s_token("staging", "x"), "https://api.test").await;
    assert_problem(r, 400, "subject-revoked").await;
    srv.stop().await;
}

#[tokio::test]
async fn policy_denials_are_recorded_a_few_at_a_time_then_counted() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    // Intervals of 3 s: the 30 denials below take well under that on a loaded machine, so
    // they fall in one interval, or two when they straddle a flush.
    let config =
        TestConfig::standard(&k8s, &gh).add_policies(POLICIES).set("ledger", "refusal_summary_interval = \"3s\"");
    let srv = TestServer::start_with(config).await;
    let staging = k8s.k8s_token("staging", "noisy");
    for _ in 0..30 {
        assert_problem(srv.exchange_jwt(&staging, "https://api.test").await, 403, "policy-denied").await;
    }
    let mut detailed = 0;
    let mut counted = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events: Vec<Value> = srv.admin_get("/v1/audit?kind=policy.denied&limit=1000").await;
        detailed = events.iter().filter(|e| e["subject"] == subject("staging", "noisy")).count();
        counted = events.iter().filter_map(|e| e["detail"]["count"].as_u64()).sum::<u64>() as usize;
        if detailed + counted >= 30 {
            break;
        }
    }
    assert_eq!(detailed + counted, 30, "every denial is accounted for");
    // At most 10 in full per interval: 10 in one interval, up to 20 across a flush.
    assert!((1..=20).contains(&detailed) && counted >= 10, "the first denials in full, the rest counted: {detailed}");
    srv.stop().await;
}
