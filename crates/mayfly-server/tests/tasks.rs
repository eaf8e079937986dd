//! Tasks: runtime identities for one job — start, delegate, narrow, approve, end.

use mayfly_testkit::*;
use serde_json::{Value, json};

/// On top of the test policies: prod workloads start tasks (those asking for `deploy`
/// wait for approval); release workloads approve.
const TASK_POLICIES: &str = r#"
@id("prod-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when {
  principal.hasTag("namespace") && principal.getTag("namespace") == "prod" &&
  context.ttl_seconds <= 3600 &&
  (!resource.scopes.contains("deploy") || context.approved)
};

@id("release-may-approve")
permit (principal, action == Mayfly::Action::"approve", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "release" };

@id("workers-may-act-for-alice")
permit (principal == Mayfly::Workload::"spiffe://test.example/ns/prod/sa/worker",
        action == Mayfly::Action::"act_for", resource == Mayfly::Subject::"user:alice");

@id("prod-tasks-may-deploy")
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://deploy.test")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };
"#;

async fn start_with(extra_toml: &str) -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let config = TestConfig::standard(&k8s, &gh).add_policies(TASK_POLICIES).toml(extra_toml);
    (TestServer::start_with(config).await, k8s)
}

async fn start() -> (TestServer, TestIssuer) {
    start_with("").await
}

/// Starts a task for a k8s workload and returns (task, task token).
async fn task_for(srv: &TestServer, k8s: &TestIssuer, ns: &str, extra: Value) -> (Value, String) {
    let r = srv.start_task(JWT_TYPE, &k8s.k8s_token(ns, "worker"), extra).await;
    assert_eq!(r.status(), 201, "start task");
    let v: Value = r.json().await.unwrap();
    (v["task"].clone(), v["task_token"].as_str().unwrap().to_owned())
}

async fn access_token(srv: &TestServer, task_token: &str, aud: &str, scope: Option<&str>) -> String {
    let r = srv.exchange_task(task_token, aud, scope).await;
    assert_eq!(r.status(), 200, "exchange under task: {}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn active(srv: &TestServer, token: &str) -> bool {
    let r = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(&srv.admin_token)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
}

async fn end_task(srv: &TestServer, id: &str, bearer: &str) -> reqwest::Response {
    srv.http.delete(format!("{}/v1/tasks/{id}", srv.url)).bearer_auth(bearer).send().await.unwrap()
}

#[tokio::test]
async fn credentials_under_a_task_carry_it_and_die_with_it_through_every_sub_task() {
    let (srv, k8s) = start().await;
    let workload = format!("spiffe://{TRUST_DOMAIN}/ns/prod/sa/worker");
    let (task, task_token) = task_for(&srv, &k8s, "prod", json!({"scope": "read write", "ttl_seconds": 600})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["state"], "active");
    assert_eq!(task["spiffe_id"], format!("spiffe://{TRUST_DOMAIN}/task/{id}"));
    assert_eq!(task["depth"], 1);
    assert_eq!(task["act"], json!({"sub": workload}));

    // A credential under the task: the task is its subject, the workload its actor.
    let token = access_token(&srv, &task_token, "https://api.test", Some("read")).await;
    let claims = srv.verify(&token, "https://api.test").await;
    assert_eq!(claims["sub"], task["spiffe_id"]);
    assert_eq!(claims["task_id"], id);
    assert_eq!(claims["act"], json!({"sub": workload}));
    assert_eq!(claims["scope"], "read");
    // Without a scope parameter it gets the task's scopes; never more.
    let all = access_token(&srv, &task_token, "https://api.test", None).await;
    assert_eq!(srv.verify(&all, "https://api.test").await["scope"], "read write");
    let wider = srv.exchange_task(&task_token, "https://api.test", Some("read delete")).await;
    assert_problem(wider, 400, "invalid-scope").await;

    // A sub-task, started with the task's own token, narrows further.
    let r = srv.start_task(TASK_TYPE, &task_token, json!({"scope": "read", "purpose": "fetch"})).await;
    assert_eq!(r.status(), 201);
    let sub: Value = r.json().await.unwrap();
    let sub_id = sub["task"]["id"].as_str().unwrap().to_owned();
    let sub_token = sub["task_token"].as_str().unwrap().to_owned();
    assert_eq!(sub["task"]["parent_id"], id);
    assert_eq!(sub["task"]["depth"], 2);
    assert_eq!(sub["task"]["act"], json!({"sub": task["spiffe_id"], "act": {"sub": workload}}));
    let widen = srv.start_task(TASK_TYPE, &sub_token, json!({"scope": "write"})).await;
    assert_problem(widen, 400, "invalid-scope").await;
    let sub_access = access_token(&srv, &sub_token, "https://api.test", None).await;
    let sub_claims = srv.verify(&sub_access, "https://api.test").await;
    assert_eq!(sub_claims["act"]["act"]["sub"], workload, "the whole actor chain is carried");
    let grandchild = srv.start_task(TASK_TYPE, &sub_token, json!({})).await;
    assert_eq!(grandchild.status(), 201);
    let grandchild: Value = grandchild.json().await.unwrap();
    let grandchild_token = grandchild["task_token"].as_str().unwrap().to_owned();
    assert_eq!(grandchild["task"]["scope"], "read", "a sub-task inherits its parent's scopes");

    // A task token of the parent can read its sub-task; the sub-task cannot read its parent.
    let r = srv.http.get(format!("{}/v1/tasks/{sub_id}", srv.url)).bearer_auth(&task_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = srv.http.get(format!("{}/v1/tasks/{id}", srv.url)).bearer_auth(&sub_token).send().await.unwrap();
    assert_problem(r, 403, "forbidden").await;

    // Ending the root ends everything below it, in one operation.
    for t in [&token, &all, &sub_access] {
        assert!(active(&srv, t).await);
    }
    let r = end_task(&srv, id, &task_token).await;
    assert_eq!(r.status(), 200);
    let ended: Value = r.json().await.unwrap();
    assert_eq!(ended["task"]["state"], "ended");
    let descendants: Vec<&str> =
        ended["ended_descendants"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(descendants.len(), 2, "{descendants:?}");
    assert!(descendants.contains(&sub_id.as_str()));
    for t in [&token, &all, &sub_access, &task_token, &sub_token, &grandchild_token] {
        assert!(!active(&srv, t).await, "every token under the ended tree fails introspection");
    }
    let r = srv.exchange_task(&grandchild_token, "https://api.test", None).await;
    assert_problem(r, 400, "task-not-active").await;
    let shown: Value = srv.admin_get(&format!("/v1/tasks/{sub_id}")).await;
    assert_eq!(shown["state"], "ended");
    assert_eq!(shown["end_reason"], format!("parent task {id} ended"));

    // Ending it again is a conflict, by the task's token or an admin's.
    assert_problem(end_task(&srv, id, &task_token).await, 409, "conflict").await;
    assert_problem(end_task(&srv, id, &srv.admin_token).await, 409, "conflict").await;

    // One task revocation per task, whatever the number of tokens.
    let feed: Value = srv.admin_get("/v1/revocations?since=0").await;
    let task_entries = feed["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "task").count();
    assert_eq!(task_entries, 3);
    let audit: Vec<Value> = srv.admin_get("/v1/audit?kind=task.").await;
    let kinds: Vec<&str> = audit.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "task.started").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "task.ended").count(), 3, "{kinds:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_task_that_needs_approval_issues_nothing_until_an_approver_other_than_its_starter_approves() {
    let (srv, k8s) = start().await;
    let (task, task_token) = task_for(&srv, &k8s, "prod", json!({"scope": "deploy", "purpose": "deploy web"})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["state"], "pending");
    assert!(task["approval_deadline"].as_i64().unwrap() > now());
    let r = srv.exchange_task(&task_token, "https://deploy.test", None).await;
    assert_problem(r, 403, "task-pending").await;
    let r = srv.start_task(TASK_TYPE, &task_token, json!({})).await;
    assert_problem(r, 403, "task-pending").await;

    // The starter cannot approve its own task (even if policy would let it approve).
    let approve = |token: String| {
        let (srv_url, http) = (srv.url.clone(), srv.http.clone());
        async move {
            http.post(format!("{srv_url}/v1/tasks/{id}/approve"))
                .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": token}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_problem(approve(k8s.k8s_token("prod", "worker")).await, 403, "forbidden").await;
    // A workload policy does not allow to approve is denied by policy.
    assert_problem(approve(k8s.k8s_token("dev", "someone")).await, 403, "policy-denied").await;
    // A release workload approves.
    let r = approve(k8s.k8s_token("release", "bot")).await;
    assert_eq!(r.status(), 200);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["state"], "active");
    assert_eq!(approved["decided_by"], format!("spiffe://{TRUST_DOMAIN}/ns/release/sa/bot"));
    let token = access_token(&srv, &task_token, "https://deploy.test", None).await;
    assert_eq!(srv.verify(&token, "https://deploy.test").await["scope"], "deploy");
    assert_problem(approve(k8s.k8s_token("release", "bot")).await, 409, "conflict").await;

    // An operator denies another pending task: nothing is ever issued under it.
    let (other, other_token) = task_for(&srv, &k8s, "prod", json!({"scope": "deploy"})).await;
    let other_id = other["id"].as_str().unwrap();
    let r = srv.admin_post(&format!("/v1/tasks/{other_id}/deny"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "denied");
    let r = srv.exchange_task(&other_token, "https://deploy.test", None).await;
    assert_problem(r, 400, "task-not-active").await;
    assert_problem(srv.admin_post(&format!("/v1/tasks/{other_id}/approve"), None).await, 409, "conflict").await;

    let audit: Vec<Value> = srv.admin_get("/v1/audit?kind=task.").await;
    let approved = audit.iter().find(|e| e["kind"] == "task.approved").expect("approval audited");
    assert_eq!(approved["detail"]["approver"], format!("spiffe://{TRUST_DOMAIN}/ns/release/sa/bot"));
    assert!(audit.iter().any(|e| e["kind"] == "task.approval_refused"), "self-approval audited");
    assert!(audit.iter().any(|e| e["kind"] == "task.denied" && e["detail"]["approver"] == "admin"));
    srv.stop().await;
}

#[tokio::test]
async fn delegation_puts_the_subject_in_sub_and_the_task_in_act_and_lifetimes_never_outlive_the_task() {
    let (srv, k8s) = start().await;
    let (task, task_token) =
        task_for(&srv, &k8s, "prod", json!({"on_behalf_of": "user:alice", "ttl_seconds": 60, "scope": "read"})).await;
    let r = srv.exchange_task(&task_token, "https://api.test", None).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["expires_in"].as_u64().unwrap() <= 60, "a credential never outlives its task: {v}");
    let claims = srv.verify(v["access_token"].as_str().unwrap(), "https://api.test").await;
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["act"]["sub"], task["spiffe_id"]);
    assert_eq!(claims["act"]["act"]["sub"], format!("spiffe://{TRUST_DOMAIN}/ns/prod/sa/worker"));
    assert_eq!(claims["client_id"], task["spiffe_id"]);
    assert!(claims["exp"].as_i64().unwrap() <= task["expires_at"].as_i64().unwrap());
    // Sub-tasks keep the subject and may not change it.
    let r = srv.start_task(TASK_TYPE, &task_token, json!({"on_behalf_of": "user:mallory"})).await;
    assert_problem(r, 403, "forbidden").await;
    // Limited to audiences: others are refused.
    let (_, limited) = task_for(&srv, &k8s, "prod", json!({"audiences": ["https://api.test"]})).await;
    assert_problem(srv.exchange_task(&limited, "https://deploy.test", None).await, 400, "invalid-target").await;
    srv.stop().await;
}

#[tokio::test]
async fn bad_task_requests_get_clear_problems_and_grant_nothing() {
    let (srv, k8s) = start_with("[tasks]\nmax_depth = 2\nmax_ttl = \"1h\"\n").await;
    let prod = k8s.k8s_token("prod", "worker");
    // Lifetime above the maximum, zero, empty purpose, unknown fields, no body.
    assert_problem(srv.start_task(JWT_TYPE, &prod, json!({"ttl_seconds": 3601})).await, 400, "invalid-request").await;
    assert_problem(srv.start_task(JWT_TYPE, &prod, json!({"ttl_seconds": 0})).await, 400, "invalid-request").await;
    assert_problem(srv.start_task(JWT_TYPE, &prod, json!({"purpose": " "})).await, 400, "invalid-request").await;
    assert_problem(srv.start_task(JWT_TYPE, &prod, json!({"scopes": "x"})).await, 400, "invalid-json").await;
    let r = srv.http.post(format!("{}/v1/tasks", srv.url)).send().await.unwrap();
    assert_problem(r, 400, "invalid-request").await;
    // Bad evidence; a workload policy does not allow.
    assert_problem(srv.start_task(JWT_TYPE, "not-a-jwt", json!({})).await, 400, "malformed-subject-token").await;
    let r = srv.start_task(JWT_TYPE, &k8s.k8s_token("dev", "worker"), json!({})).await;
    let p = assert_problem(r, 403, "policy-denied").await;
    assert_eq!(p["detail"], "no policy permits this request (default deny)");

    // A parent that is not yours: named by another workload, or by another task.
    let (task, task_token) = task_for(&srv, &k8s, "prod", json!({})).await;
    let id = task["id"].as_str().unwrap();
    let other = k8s.k8s_token("prod", "other");
    assert_problem(srv.start_task(JWT_TYPE, &other, json!({"parent": id})).await, 403, "forbidden").await;
    let (_, other_task_token) = task_for(&srv, &k8s, "prod", json!({})).await;
    let r = srv.start_task(TASK_TYPE, &other_task_token, json!({"parent": id})).await;
    assert_problem(r, 403, "forbidden").await;
    // The starter itself may name its task as parent; nesting stops at max_depth.
    let r = srv.start_task(JWT_TYPE, &prod, json!({"parent": id})).await;
    assert_eq!(r.status(), 201);
    let child_token = r.json::<Value>().await.unwrap()["task_token"].as_str().unwrap().to_owned();
    assert_problem(srv.start_task(TASK_TYPE, &child_token, json!({})).await, 403, "forbidden").await;
    // Another task's token cannot read or end this task.
    let r = srv.http.get(format!("{}/v1/tasks/{id}", srv.url)).bearer_auth(&other_task_token).send().await.unwrap();
    assert_problem(r, 403, "forbidden").await;
    assert_problem(end_task(&srv, id, &other_task_token).await, 403, "forbidden").await;
    assert_problem(end_task(&srv, id, "garbage").await, 401, "unauthorized").await;
    let r = srv.http.delete(format!("{}/v1/tasks/{id}", srv.url)).send().await.unwrap();
    assert_problem(r, 401, "unauthorized").await;
    // Unknown and malformed ids.
    let r = srv.http.get(format!("{}/v1/tasks/nope", srv.url)).bearer_auth(&srv.admin_token).send().await.unwrap();
    assert_problem(r, 404, "not-found").await;
    let r = srv.http.get(format!("{}/v1/tasks/a%2Fb", srv.url)).bearer_auth(&srv.admin_token).send().await.unwrap();
    assert_problem(r, 404, "not-found").await;
    // A task token is not an approver.
    let r = srv
        .http
        .post(format!("{}/v1/tasks/{id}/approve", srv.url))
        .json(&json!({"subject_token_type": TASK_TYPE, "subject_token": task_token}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, "forbidden").await;
    // A task token is for Mayfly only: its audience is no resource server's.
    assert_eq!(srv.verify(&task_token, "urn:mayfly:task").await["aud"], "urn:mayfly:task");

    // The list shows live tasks; nothing was granted by the refused requests.
    let page: Value = srv.admin_get("/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3);
    assert_problem(
        srv.http.get(format!("{}/v1/tasks?state=bogus", srv.url)).bearer_auth(&srv.admin_token).send().await.unwrap(),
        400,
        "invalid-request",
    )
    .await;
    let denied: Vec<Value> = srv.admin_get("/v1/audit?kind=policy.denied").await;
    assert!(denied.iter().any(|e| e["detail"]["action"] == "start_task"));
    srv.stop().await;
}

#[tokio::test]
async fn time_ends_tasks_an_approval_deadline_denies_and_a_lifetime_expires() {
    // Deadlines are whole seconds: a 3 s timeout keeps the first task pending for at least 2 s,
    // however slowly a loaded machine starts the second one.
    let (srv, k8s) = start_with("[tasks]\napproval_timeout = \"3s\"\n").await;
    let (pending, pending_token) = task_for(&srv, &k8s, "prod", json!({"scope": "deploy"})).await;
    let (short, short_token) = task_for(&srv, &k8s, "prod", json!({"ttl_seconds": 1})).await;
    assert_eq!(pending["state"], "pending");
    tokio::time::sleep(std::time::Duration::from_millis(4000)).await;
    let (pid, sid) = (pending["id"].as_str().unwrap(), short["id"].as_str().unwrap());
    let p: Value = srv.admin_get(&format!("/v1/tasks/{pid}")).await;
    assert_eq!(p["state"], "denied");
    let s: Value = srv.admin_get(&format!("/v1/tasks/{sid}")).await;
    assert_eq!(s["state"], "expired");
    assert_problem(srv.admin_post(&format!("/v1/tasks/{pid}/approve"), None).await, 409, "conflict").await;
    let r = srv.exchange_task(&pending_token, "https://deploy.test", None).await;
    assert_problem(r, 400, "task-not-active").await;
    assert_problem(srv.exchange_task(&short_token, "https://api.test", None).await, 400, "subject-token-expired").await;
    assert_problem(end_task(&srv, sid, &srv.admin_token).await, 409, "conflict").await;
    // The sweep records both in the audit trail (it runs every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit: Vec<Value> = srv.admin_get("/v1/audit?kind=task.").await;
        let has = |k: &str, id: &str| audit.iter().any(|e| e["kind"] == k && e["detail"]["task_id"] == id);
        if has("task.approval_expired", pid) && has("task.expired", sid) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sweep audits within 10 s: {audit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let s: Value = srv.admin_get(&format!("/v1/tasks/{sid}")).await;
    assert_eq!(s["end_reason"], "lifetime over");
    srv.stop().await;
}

async fn reattest(srv: &TestServer, id: &str, task_token: &str, token_type: &str, evidence: &str) -> reqwest::Response {
    srv.http
        .post(format!("{}/v1/tasks/{id}/attest", srv.url))
        .bearer_auth(task_token)
        .json(&json!({"subject_token_type": token_type, "subject_token": evidence}))
        .send()
        .await
        .unwrap()
}

async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_task_lives_on_only_while_its_starters_evidence_still_proves_the_same_workload() {
    let (srv, k8s) = start().await;
    let (task, task_token) = task_for(&srv, &k8s, "prod", json!({"ttl_seconds": 600})).await;
    let id = task["id"].as_str().unwrap();
    let token = access_token(&srv, &task_token, "https://deploy.test", None).await;

    // A freshly minted token for the same pod (a projected token rotated by the kubelet) keeps the task.
    let mut fresh = k8s.k8s_claims("prod", "worker");
    fresh["iat"] = json!(now() + 1);
    let r = reattest(&srv, id, &task_token, JWT_TYPE, &k8s.sign("ES256", &fresh)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(active(&srv, &token).await);

    // Requests that re-attest nothing are refused and change nothing.
    let join = srv.join_token(None).await;
    let p = problem(reattest(&srv, id, &task_token, JOIN_TYPE, &join).await, 400).await;
    assert!(p["detail"].as_str().unwrap().contains("single use"), "{p}");
    let p = problem(reattest(&srv, id, "not-a-token", JWT_TYPE, &k8s.k8s_token("prod", "worker")).await, 401).await;
    assert_eq!(p["type"], "urn:mayfly:problem:unauthorized");
    let r = srv
        .http
        .post(format!("{}/v1/tasks/{id}/attest", srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    let (other, other_token) = task_for(&srv, &k8s, "prod", json!({})).await;
    let r = reattest(&srv, id, &other_token, JWT_TYPE, &k8s.k8s_token("prod", "worker")).await;
    problem(r, 403).await;
    let sub = srv.start_task(TASK_TYPE, &task_token, json!({})).await;
    assert_eq!(sub.status(), 201);
    let sub: Value = sub.json().await.unwrap();
    let (sub_id, sub_token) = (sub["task"]["id"].as_str().unwrap(), sub["task_token"].as_str().unwrap());
    let p = problem(reattest(&srv, sub_id, sub_token, JWT_TYPE, &k8s.k8s_token("prod", "worker")).await, 400).await;
    assert!(p["detail"].as_str().unwrap().contains("sub-task"), "{p}");
    assert!(active(&srv, &token).await, "refused requests end nothing");

    // A key the issuer has not published yet (a rotation not fetched), or a token not
    // valid yet: cannot be checked now, so nothing changes.
    let unknown = k8s.sign_with("RS256", json!({"kid": "not-published-yet"}), &k8s.k8s_claims("prod", "worker"));
    let p = problem(reattest(&srv, id, &task_token, JWT_TYPE, &unknown).await, 503).await;
    assert!(p["detail"].as_str().unwrap().contains("not-published-yet"), "{p}");
    let mut early = k8s.k8s_claims("prod", "worker");
    early["nbf"] = json!(now() + 3600);
    problem(reattest(&srv, id, &task_token, JWT_TYPE, &k8s.sign("RS256", &early)).await, 503).await;
    assert!(active(&srv, &token).await, "a check that could not be made ends nothing");

    // The same service account in another pod: the token was copied, or the pod replaced.
    let mut moved = k8s.k8s_claims("prod", "worker");
    moved["kubernetes.io"]["pod"]["uid"] = json!("0a0a0a0a-0000-4000-8000-00000000ffff");
    let p = problem(reattest(&srv, id, &task_token, JWT_TYPE, &k8s.sign("RS256", &moved)).await, 403).await;
    assert_eq!(p["type"], "urn:mayfly:problem:task-ended");
    assert!(p["detail"].as_str().unwrap().contains("pod_uid changed"), "{p}");
    assert!(!active(&srv, &token).await, "everything under the task is revoked");
    let t: Value = srv.admin_get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(t["state"], "ended");
    assert!(t["end_reason"].as_str().unwrap().starts_with("re-attestation failed"), "{t}");
    assert_eq!(
        problem(reattest(&srv, sub_id, sub_token, JWT_TYPE, "x").await, 409).await["type"],
        "urn:mayfly:problem:conflict"
    );
    problem(reattest(&srv, id, &task_token, JWT_TYPE, &k8s.k8s_token("prod", "worker")).await, 409).await;

    // Expired evidence ends the task; so does evidence that now proves another workload.
    let other_id = other["id"].as_str().unwrap();
    let mut expired = k8s.k8s_claims("prod", "worker");
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 7200);
    expired["nbf"] = json!(now() - 7200);
    let p = problem(reattest(&srv, other_id, &other_token, JWT_TYPE, &k8s.sign("RS256", &expired)).await, 403).await;
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
    let (third, third_token) = task_for(&srv, &k8s, "prod", json!({})).await;
    let r =
        reattest(&srv, third["id"].as_str().unwrap(), &third_token, JWT_TYPE, &k8s.k8s_token("prod", "intruder")).await;
    let p = problem(r, 403).await;
    assert!(p["detail"].as_str().unwrap().contains("not its starter"), "{p}");

    // Every outcome is in the audit trail: the check that passed, and each end with its reason.
    let audit: Vec<Value> = srv.admin_get("/v1/audit?kind=task.").await;
    assert_eq!(audit.iter().filter(|e| e["kind"] == "task.reattested").count(), 1);
    let ends: Vec<&str> = audit
        .iter()
        .filter(|e| e["kind"] == "task.ended" && e["detail"]["actor"] == "mayfly")
        .filter_map(|e| e["detail"]["reason"].as_str())
        .collect();
    assert_eq!(ends.len(), 4, "the task, its sub-task, and the two others: {ends:?}");
    assert!(ends.iter().all(|r| r.starts_with("re-attestation failed") || r.contains("ended")), "{ends:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_task_ends_at_re_attestation_once_policy_no_longer_allows_its_starter() {
    let (srv, k8s) = start().await;
    let (task, task_token) = task_for(&srv, &k8s, "prod", json!({})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(reattest(&srv, id, &task_token, JWT_TYPE, &k8s.k8s_token("prod", "worker")).await.status(), 200);

    // Operators withdraw the worker's right to run tasks; the policy reloads on its own.
    let file = srv.dir.path().join("policies/withdraw.cedar");
    std::fs::write(
        &file,
        r#"@id("worker-retired") forbid (principal, action == Mayfly::Action::"start_task", resource)
           when { principal.hasTag("serviceaccount") && principal.getTag("serviceaccount") == "worker" };"#,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let p = loop {
        let r = reattest(&srv, id, &task_token, JWT_TYPE, &k8s.k8s_token("prod", "worker")).await;
        if r.status() != 200 {
            break problem(r, 403).await;
        }
        assert!(std::time::Instant::now() < deadline, "the new policy applies within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("policy no longer allows it") && detail.contains("worker-retired"), "{p}");
    let t: Value = srv.admin_get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(t["state"], "ended");
    srv.stop().await;
}
