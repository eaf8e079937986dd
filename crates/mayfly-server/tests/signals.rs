//! Context-change signals: a move out of the allowed namespace revokes what no longer
//! passes policy and keeps the rest; a CAEP session-revoked SET from a configured sender
//! kills at once; forged, replayed or malformed signals are refused and change nothing.

use mayfly_testkit::*;
use serde_json::{Value, json};

const SSF_ISSUER: &str = "https://ssf.test.example";
const SSF_AUDIENCE: &str = "https://mayfly.test.example/signals";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const WEB: &str = "spiffe://test.example/ns/prod/sa/web";

struct Setup {
    srv: TestServer,
    k8s: TestIssuer,
    ssf: TestIssuer,
    /// A sender that may signal only about the `api` workload.
    scoped: TestIssuer,
}

const SCOPED_ISSUER: &str = "https://scoped.test.example";

async fn start() -> Setup {
    let (k8s, gh, ssf) =
        (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER), TestIssuer::new(SSF_ISSUER));
    let scoped = TestIssuer::new(SCOPED_ISSUER);
    let config = TestConfig::standard(&k8s, &gh)
        .add_policies(
            r#"@id("prod-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };
"#,
        )
        .jwks_file("ssf-jwks.json", &ssf)
        .jwks_file("scoped-jwks.json", &scoped)
        .toml(&format!(
            r#"
[[signals.senders]]
name = "ssf"
issuer = "{SSF_ISSUER}"
audience = "{SSF_AUDIENCE}"
jwks_file = "ssf-jwks.json"

[[signals.senders]]
name = "scoped"
issuer = "{SCOPED_ISSUER}"
audience = "{SSF_AUDIENCE}"
jwks_file = "scoped-jwks.json"
subject_prefix = "spiffe://test.example/ns/prod/sa/api"
"#
        ));
    Setup { srv: TestServer::start_with(config).await, k8s, ssf, scoped }
}

async fn token(s: &Setup, sa: &str) -> String {
    let r = s.srv.exchange_jwt(&s.k8s.k8s_token("prod", sa), "https://api.test").await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn active(s: &Setup, token: &str) -> bool {
    let r = s
        .srv
        .http
        .post(format!("{}/v1/introspect", s.srv.url))
        .bearer_auth(&s.srv.admin_token)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["active"] == true
}

async fn signal(s: &Setup, body: Value) -> reqwest::Response {
    s.srv.admin_post("/v1/signals", Some(body)).await
}

async fn push_set(s: &Setup, set: &str) -> reqwest::Response {
    s.srv
        .http
        .post(format!("{}/v1/signals", s.srv.url))
        .header("content-type", "application/secevent+jwt")
        .body(set.to_owned())
        .send()
        .await
        .unwrap()
}

fn set_claims(jti: &str, subject: &str, event: &str) -> Value {
    json!({
        "iss": SSF_ISSUER, "aud": SSF_AUDIENCE, "iat": now(), "jti": jti,
        "sub_id": {"format": "uri", "uri": subject},
        "events": {event: {"event_timestamp": now(), "reason_admin": {"en": "test"}}}
    })
}

fn set_header() -> Value {
    json!({"typ": "secevent+jwt"})
}

#[tokio::test]
async fn a_move_out_of_the_allowed_namespace_revokes_that_workloads_tokens_only() {
    let s = start().await;
    let (web, web2, api) = (token(&s, "web").await, token(&s, "web").await, token(&s, "api").await);

    // Still allowed in the new context (another node): kept.
    let r =
        signal(&s, json!({"kind": "workload_moved", "subject": {"spiffe_id": WEB}, "attributes": {"node": "node-2"}}))
            .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["matched"].as_u64(), v["revoked"].as_u64(), v["kept"].as_u64()), (Some(2), Some(0), Some(2)), "{v}");
    assert!(active(&s, &web).await);

    // Moved to staging, where policy allows nothing: both of web's tokens die, api's lives.
    let r = signal(
        &s,
        json!({"kind": "workload_moved", "subject": {"spiffe_id": WEB}, "attributes": {"namespace": "staging"},
               "reason": "rescheduled"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["matched"].as_u64(), v["revoked"].as_u64()), (Some(2), Some(2)), "{v}");
    assert!(!active(&s, &web).await && !active(&s, &web2).await, "web's tokens are revoked");
    assert!(active(&s, &api).await, "another workload's token survives");
    // The move sticks: web's evidence from before it cannot get a new token in the old
    // context. Nothing of web survived, so the move was one subject revocation: evidence
    // minted until then is refused outright, and later evidence is decided in the new context.
    let again = s.srv.exchange_jwt(&s.k8s.k8s_token("prod", "web"), "https://api.test").await;
    let status = again.status().as_u16();
    let body: Value = again.json().await.unwrap();
    assert!(
        (status, body["type"].as_str()) == (400, Some("urn:mayfly:problem:subject-revoked"))
            || (status, body["type"].as_str()) == (403, Some("urn:mayfly:problem:policy-denied")),
        "{status} {body}"
    );
    assert_eq!(s.srv.exchange_jwt(&s.k8s.k8s_token("prod", "api"), "https://api.test").await.status(), 200);

    // By attribute: every token issued to the pod with this uid (both test workloads share one).
    let r = signal(
        &s,
        json!({"kind": "workload_compromised",
               "subject": {"attributes": {"pod_uid": "7f0c2a44-0000-4000-8000-000000000002"}}}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["revoked"], 2, "{v}: api's two live tokens (web's are revoked already)");
    assert!(!active(&s, &api).await);

    let audit: Vec<Value> = s.srv.admin_get("/v1/audit?kind=signal.applied").await;
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[1]["detail"]["revoked"], 2);
    assert_eq!(audit[1]["detail"]["attributes"]["namespace"], "staging");
    s.srv.stop().await;
}

#[tokio::test]
async fn a_caep_set_from_a_configured_sender_kills_and_forgeries_change_nothing() {
    let s = start().await;
    let (web, api) = (token(&s, "web").await, token(&s, "api").await);

    // Forged: another key under the sender's kid, the wrong audience, an unknown sender,
    // unsigned, not typed as a SET, an unknown event, no subject.
    let forger = TestIssuer::new(SSF_ISSUER);
    let cases: Vec<(String, &str)> = vec![
        (forger.sign_with("ES256", set_header(), &set_claims("f-1", WEB, SESSION_REVOKED)), "invalid_key"),
        (
            s.ssf.sign_with("ES256", set_header(), &{
                let mut c = set_claims("f-2", WEB, SESSION_REVOKED);
                c["aud"] = json!("https://someone-else.example");
                c
            }),
            "invalid_audience",
        ),
        (
            s.ssf.sign_with("ES256", set_header(), &{
                let mut c = set_claims("f-3", WEB, SESSION_REVOKED);
                c["iss"] = json!("https://unknown.example");
                c
            }),
            "invalid_issuer",
        ),
        (unsigned(&set_claims("f-4", WEB, SESSION_REVOKED)), "invalid_request"),
        (s.ssf.sign("ES256", &set_claims("f-5", WEB, SESSION_REVOKED)), "invalid_request"),
        (
            s.ssf.sign_with("ES256", set_header(), &set_claims("f-6", WEB, "https://example.com/event/unknown")),
            "invalid_request",
        ),
        (
            s.ssf.sign_with("ES256", set_header(), &{
                let mut c = set_claims("f-7", WEB, SESSION_REVOKED);
                c.as_object_mut().unwrap().remove("sub_id");
                c
            }),
            "invalid_request",
        ),
    ];
    for (i, (set, code)) in cases.iter().enumerate() {
        let r = push_set(&s, set).await;
        assert_eq!(r.status(), 400, "case {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["err"], *code, "case {i}: {v}");
        assert!(v["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert!(active(&s, &web).await && active(&s, &api).await, "nothing was revoked by a refused SET");

    // The real thing: accepted with 202 and in force at once.
    let set = s.ssf.sign_with("ES256", set_header(), &set_claims("set-1", WEB, SESSION_REVOKED));
    let r = push_set(&s, &set).await;
    assert_eq!(r.status(), 202);
    assert!(!active(&s, &web).await, "session-revoked kills web's token");
    assert!(active(&s, &api).await, "api's token survives");
    // Replayed: refused.
    let r = push_set(&s, &set).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["err"], "invalid_request");

    // Refusals reach the trail as counts per source and reason, a moment later.
    let mut counted = 0;
    for _ in 0..50 {
        let refused: Vec<Value> = s.srv.admin_get("/v1/audit?kind=signal.refused").await;
        counted = refused.iter().filter_map(|e| e["detail"]["count"].as_u64()).sum::<u64>() as usize;
        if counted > cases.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counted, cases.len() + 1, "every refusal is audited");
    let applied: Vec<Value> = s.srv.admin_get("/v1/audit?kind=signal.applied").await;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["detail"]["sender"], "ssf");
    s.srv.stop().await;
}

#[tokio::test]
async fn malformed_signals_get_problems_and_revoke_nothing() {
    let s = start().await;
    let web = token(&s, "web").await;
    let anonymous = s
        .srv
        .http
        .post(format!("{}/v1/signals", s.srv.url))
        .json(&json!({"kind": "workload_compromised", "subject": {"spiffe_id": WEB}}))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;
    for body in [
        json!({"kind": "workload_compromised", "subject": {}}),
        json!({"kind": "workload_compromised", "subject": {"spiffe_id": WEB, "task": "t1"}}),
        json!({"kind": "workload_moved", "subject": {"spiffe_id": WEB}}),
        json!({"kind": "workload_compromised", "subject": {"spiffe_id": "not a spiffe id"}}),
        json!({"kind": "workload_compromised", "subject": {"attributes": {}}}),
    ] {
        let r = signal(&s, body.clone()).await;
        assert_problem(r, 400, "invalid-signal").await;
    }
    for body in [json!({"kind": "pod_sneezed", "subject": {"spiffe_id": WEB}}), json!({"subject": {"spiffe_id": WEB}})]
    {
        let r = signal(&s, body).await;
        assert_eq!(r.status(), 400);
    }
    let r = signal(&s, json!({"kind": "task_cancelled", "subject": {"task": "no-such-task"}})).await;
    assert_problem(r, 404, "not-found").await;
    assert!(active(&s, &web).await, "nothing was revoked");
    s.srv.stop().await;
}

fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "secevent+jwt"})), b64(claims))
}

#[tokio::test]
async fn a_token_presented_from_another_pod_or_node_is_refused_by_introspection_and_the_sdk() {
    let s = start().await;
    let token = token(&s, "web").await;
    let claims = s.srv.verify(&token, "https://api.test").await;
    let pod = "7f0c2a44-0000-4000-8000-000000000002";
    assert_eq!(claims["ctx"], json!({"pod_uid": pod, "node_name": "node-1"}), "the token carries where it was issued");

    let introspect = |ctx: Vec<(&'static str, &'static str)>| {
        let (http, url, admin, token) =
            (s.srv.http.clone(), s.srv.url.clone(), s.srv.admin_token.clone(), token.clone());
        async move {
            let mut form = vec![("token".to_owned(), token)];
            form.extend(ctx.into_iter().map(|(k, v)| (format!("context.{k}"), v.to_owned())));
            let r = http.post(format!("{url}/v1/introspect")).bearer_auth(admin).form(&form).send().await.unwrap();
            r.json::<Value>().await.unwrap()["active"] == true
        }
    };
    assert!(introspect(vec![]).await, "no context given: not checked");
    assert!(introspect(vec![("pod_uid", pod), ("node_name", "node-1")]).await, "the same pod");
    assert!(!introspect(vec![("pod_uid", "11111111-0000-4000-8000-000000000009")]).await, "another pod");
    assert!(!introspect(vec![("node_name", "node-2")]).await, "another node");
    assert!(!introspect(vec![("run_id", "42")]).await, "a fact the token cannot confirm fails closed");

    // The SDK, offline, with the presenter's context as the resource server knows it.
    let verifier =
        mayfly_verify::Verifier::new(mayfly_verify::VerifierConfig::new(s.srv.url.clone(), "https://api.test"))
            .await
            .unwrap();
    let auth = format!("Bearer {token}");
    let presented = mayfly_verify::Presented {
        authorization: Some(&auth),
        dpop: None,
        method: "GET",
        url: "https://api.test/data",
        client_cert: None,
    };
    let here = std::collections::BTreeMap::from([("pod_uid".to_owned(), pod.to_owned())]);
    assert!(verifier.verify_in_context(&presented, &here).await.is_ok());
    let elsewhere = std::collections::BTreeMap::from([("pod_uid".to_owned(), "copied-elsewhere".to_owned())]);
    let err = verifier.verify_in_context(&presented, &elsewhere).await.unwrap_err();
    assert!(matches!(err, mayfly_verify::VerifyError::ContextMismatch(ref a) if a == "pod_uid"), "{err}");
    assert_eq!(err.status(), 401);
    s.srv.stop().await;
}

/// Starts a task for a prod workload and returns (task id, a token issued under it).
async fn task_of(s: &Setup, sa: &str) -> (String, String) {
    let r = s
        .srv
        .http
        .post(format!("{}/v1/tasks", s.srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": s.k8s.k8s_token("prod", sa),
                      "purpose": "deploy", "audiences": ["https://api.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", v["task_token"].as_str().unwrap()),
        ("subject_token_type", "urn:mayfly:params:oauth:token-type:task"),
        ("audience", "https://api.test"),
    ];
    let r = s.srv.exchange(&form).await;
    assert_eq!(r.status(), 200, "a token under the task");
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    (v["task"]["id"].as_str().unwrap().to_owned(), token)
}

#[tokio::test]
async fn a_move_re_decides_the_tasks_the_workload_started_and_ends_those_no_longer_allowed() {
    let s = start().await;
    let (web_task, web_token) = task_of(&s, "web").await;
    let (api_task, api_token) = task_of(&s, "api").await;

    // Still allowed where it went (another node): the task lives on.
    let r =
        signal(&s, json!({"kind": "workload_moved", "subject": {"spiffe_id": WEB}, "attributes": {"node": "node-2"}}))
            .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tasks_ended"], 0, "{v}");
    assert!(active(&s, &web_token).await);

    // Moved out of prod, where policy lets it start no task: its task ends, and what was
    // issued under it dies with it; api's task is untouched.
    let r = signal(
        &s,
        json!({"kind": "workload_moved", "subject": {"spiffe_id": WEB}, "attributes": {"namespace": "staging"}}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tasks_ended"], 1, "{v}");
    let t: Value = s.srv.admin_get(&format!("/v1/tasks/{web_task}")).await;
    assert_eq!(t["state"], "ended", "{t}");
    assert!(t["end_reason"].as_str().unwrap().contains("workload_moved"), "{t}");
    assert!(!active(&s, &web_token).await, "the token under the ended task is revoked");
    let t: Value = s.srv.admin_get(&format!("/v1/tasks/{api_task}")).await;
    assert_eq!(t["state"], "active");
    assert!(active(&s, &api_token).await);

    // By attribute: a move of the pod both workloads share re-decides api's task too.
    let r = signal(
        &s,
        json!({"kind": "attribute_changed", "subject": {"attributes": {"pod_uid": "7f0c2a44-0000-4000-8000-000000000002"}},
               "attributes": {"namespace": "quarantine"}}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tasks_ended"], 1, "{v}");
    assert!(!active(&s, &api_token).await);
    s.srv.stop().await;
}

#[tokio::test]
async fn a_kill_by_prefix_stops_at_the_path_boundary_and_ends_the_workloads_tasks() {
    let s = start().await;
    let (web, web2) = (token(&s, "web").await, token(&s, "web2").await);
    let r = s
        .srv
        .http
        .post(format!("{}/v1/tasks", s.srv.url))
        .json(&json!({"subject_token_type": JWT_TYPE, "subject_token": s.k8s.k8s_token("prod", "web"),
                      "purpose": "deploy", "audiences": ["https://api.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    let task_id = task["task"]["id"].as_str().unwrap().to_owned();

    let r = signal(&s, json!({"kind": "workload_compromised", "subject": {"spiffe_prefix": format!("{WEB}/")}})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["matched"].as_u64(), v["tasks_ended"].as_u64()), (Some(1), Some(1)), "{v}");
    assert!(!active(&s, &web).await, "web is under the prefix");
    assert!(active(&s, &web2).await, "web2 is not: prefixes stop at a path segment");
    let t: Value = s.srv.admin_get(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(t["state"], "ended", "{t}");

    // A SET typed with the full media type, carrying an event Mayfly does not know next
    // to one it does: the known one is applied, the other ignored.
    let mut claims = set_claims("set-2", "spiffe://test.example/ns/prod/sa/web2", SESSION_REVOKED);
    claims["events"]["https://example.com/event/unknown"] = json!({});
    let set = s.ssf.sign_with("ES256", json!({"typ": "application/secevent+jwt"}), &claims);
    assert_eq!(push_set(&s, &set).await.status(), 202);
    assert!(!active(&s, &web2).await);
    // Too old: refused.
    let mut old = set_claims("set-3", WEB, SESSION_REVOKED);
    old["iat"] = json!(now() - 3600);
    let r = push_set(&s, &s.ssf.sign_with("ES256", set_header(), &old)).await;
    assert_eq!(r.status(), 400);
    s.srv.stop().await;
}

#[tokio::test]
async fn a_scoped_sender_may_signal_only_about_its_own_workloads() {
    let s = start().await;
    let (web, api) = (token(&s, "web").await, token(&s, "api").await);
    let claims = |jti: &str, subject: &str| {
        let mut c = set_claims(jti, subject, SESSION_REVOKED);
        c["iss"] = json!(SCOPED_ISSUER);
        c
    };
    let r = push_set(&s, &s.scoped.sign_with("ES256", set_header(), &claims("s-1", WEB))).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["err"], "access_denied");
    assert!(active(&s, &web).await, "out of the sender's scope: nothing revoked");
    let api_id = "spiffe://test.example/ns/prod/sa/api";
    assert_eq!(push_set(&s, &s.scoped.sign_with("ES256", set_header(), &claims("s-2", api_id))).await.status(), 202);
    assert!(!active(&s, &api).await, "within its scope: revoked");
    s.srv.stop().await;
}
