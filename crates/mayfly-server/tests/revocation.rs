//! The ledger's revocation side: introspection, revocation by selector, the feed and
//! its event stream, leases, the audit API and metrics.

use std::time::{Duration, Instant};

use mayfly_testkit::*;
use serde_json::{Value, json};

const VERIFIER_POLICY: &str = r#"
@id("resource-servers-may-introspect")
permit (principal, action == Mayfly::Action::"exchange", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "infra" &&
       resource in [Mayfly::Audience::"urn:mayfly:introspect", Mayfly::Audience::"urn:mayfly:introspect:https://api.test"] };
"#;

async fn start() -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    (TestServer::start_with(TestConfig::standard(&k8s, &gh).add_policies(VERIFIER_POLICY)).await, k8s)
}

async fn token(srv: &TestServer, k8s: &TestIssuer, ns: &str, sa: &str, aud: &str) -> String {
    let r = srv.exchange_jwt(&k8s.k8s_token(ns, sa), aud).await;
    assert_eq!(r.status(), 200, "exchange for {aud}");
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn introspect(srv: &TestServer, caller: &str, token: &str) -> reqwest::Response {
    srv.http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(caller)
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap()
}

async fn active(srv: &TestServer, token: &str) -> bool {
    let r = introspect(srv, &srv.admin_token, token).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
}

async fn revoke(srv: &TestServer, body: Value) -> reqwest::Response {
    srv.admin_post("/v1/revocations", Some(body)).await
}

#[tokio::test]
async fn introspection_answers_per_rfc7662() {
    let (srv, k8s) = start().await;
    let t = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let r = introspect(&srv, &srv.admin_token, &t).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["sub"], "spiffe://test.example/ns/prod/sa/web");
    assert_eq!(v["aud"], "https://api.test");
    assert_eq!(v["iss"], srv.url);
    assert_eq!(v["token_type"], "Bearer");
    for k in ["exp", "iat", "jti", "client_id"] {
        assert!(!v[k].is_null(), "{k}");
    }

    // A resource server authenticates with its own Mayfly token for urn:mayfly:introspect:<its audience>.
    let caller = token(&srv, &k8s, "infra", "gateway", "urn:mayfly:introspect:https://api.test").await;
    let v: Value = introspect(&srv, &caller, &t).await.json().await.unwrap();
    assert_eq!(v["active"], true);
    // A token for another audience is not a caller credential.
    assert_problem(introspect(&srv, &t, &t).await, 401, "unauthorized").await;
    let anon = srv.http.post(format!("{}/v1/introspect", srv.url)).form(&[("token", t.as_str())]).send().await.unwrap();
    assert_problem(anon, 401, "unauthorized").await;

    // Inactive: malformed, tampered, another issuer's, expired.
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = k8s.k8s_claims("prod", "admin").to_string();
    let forged = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, forged);
    parts[1] = &forged;
    let tampered = parts.join(".");
    let (other, other_k8s) = start().await;
    let foreign = token(&other, &other_k8s, "prod", "web", "https://api.test").await;
    assert_problem(introspect(&srv, &srv.admin_token, "").await, 400, "invalid-request").await;
    for bad in ["garbage", "a.b.c", tampered.as_str(), foreign.as_str()] {
        let v: Value = introspect(&srv, &srv.admin_token, bad).await.json().await.unwrap_or(json!({"active": "error"}));
        assert_eq!(v, json!({"active": false}), "{bad:.20}");
    }
    let short = srv
        .exchange_jwt_with(&k8s.k8s_token("prod", "web"), "https://api.test", &[("requested_lifetime", "1")])
        .await
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!active(&srv, &short).await, "expired");
    other.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn revocation_by_each_selector() {
    let (srv, k8s) = start().await;
    let web = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let web2 = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let worker = token(&srv, &k8s, "prod", "worker", "https://api.test").await;
    let jti = srv.verify(&web, "https://api.test").await["jti"].as_str().unwrap().to_owned();

    let r = revoke(&srv, json!({"jti": jti, "reason": "leaked in a log"})).await;
    assert_eq!(r.status(), 201);
    let entry: Value = r.json().await.unwrap();
    assert_eq!(entry["kind"], "jti");
    assert!(!active(&srv, &web).await);
    assert!(active(&srv, &web2).await, "only that jti");

    // Subject: everything that subject holds, in one row.
    let r = revoke(&srv, json!({"subject": "spiffe://test.example/ns/prod/sa/web"})).await.error_for_status().unwrap();
    let reach = r.json::<Value>().await.unwrap()["issued_before"].as_i64().unwrap();
    assert!(!active(&srv, &web2).await);
    assert!(active(&srv, &worker).await);
    // Tokens issued after the revocation's reach (its commit, and on a shared store its
    // propagation margin), with evidence minted after it (past the test issuer's 1 s
    // leeway), are not covered.
    while now() <= reach + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    assert!(active(&srv, &fresh).await);

    // Prefix on a path-segment boundary.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let worker2 = token(&srv, &k8s, "prod", "worker", "https://api.test").await;
    revoke(&srv, json!({"subject_prefix": "spiffe://test.example/ns/prod"})).await.error_for_status().unwrap();
    assert!(!active(&srv, &worker).await && !active(&srv, &worker2).await && !active(&srv, &fresh).await);

    // Everything, explicitly.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let joined = {
        let j = srv.join_token(None).await;
        let r = srv
            .exchange(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &j),
                ("subject_token_type", JOIN_TYPE),
                ("audience", "https://api.test"),
            ])
            .await;
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    };
    assert!(active(&srv, &joined).await);
    revoke(&srv, json!({"audience": "https://api.test"})).await.error_for_status().unwrap();
    assert!(!active(&srv, &joined).await);
    revoke(&srv, json!({"all": true, "reason": "incident 42"})).await.error_for_status().unwrap();

    let rows = srv.running.broker.ledger().store().revocations_after(0, 100).await.unwrap();
    assert_eq!(rows.len(), 5, "one row per revocation, not per token");
    srv.stop().await;
}

#[tokio::test]
async fn bad_revocations_revoke_nothing() {
    let (srv, k8s) = start().await;
    let t = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let cases = [
        (json!({}), 400, "invalid-selector"),
        (json!({"subject": "spiffe://test.example/ns/prod/sa/web", "audience": "x"}), 400, "invalid-selector"),
        (json!({"subject_prefix": ""}), 400, "invalid-selector"),
        (json!({"subject_prefix": "   "}), 400, "invalid-selector"),
        (json!({"subject": "not a spiffe id"}), 400, "invalid-selector"),
        (json!({"issued_before": now() + 3600}), 400, "invalid-selector"),
        (json!({"jti": "no-such-jti"}), 404, "nothing-to-revoke"),
        (json!({"subject": "spiffe://test.example/ns/prod/sa/typo"}), 404, "nothing-to-revoke"),
        (json!({"subject_prefix": "spiffe://test.example/ns/pro"}), 404, "nothing-to-revoke"),
        (json!({"audience": "https://nobody.test"}), 404, "nothing-to-revoke"),
        (json!({"task": "t-unknown"}), 404, "nothing-to-revoke"),
        (json!({"everything": true}), 400, "invalid-json"),
    ];
    for (body, status, slug) in cases {
        assert_problem(revoke(&srv, body.clone()).await, status, slug).await;
    }
    let anon = srv.http.post(format!("{}/v1/revocations", srv.url)).json(&json!({"all": true})).send().await.unwrap();
    assert_problem(anon, 401, "unauthorized").await;
    assert!(active(&srv, &t).await, "nothing was revoked");
    assert!(srv.running.broker.ledger().store().revocations_after(0, 10).await.unwrap().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn feed_pages_and_stream_deliver_revocations_within_a_second() {
    let (srv, k8s) = start().await;
    let t = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let t2 = token(&srv, &k8s, "prod", "worker", "https://api.test").await;
    let feed = |since: &str| {
        srv.http.get(format!("{}/v1/revocations?since={since}", srv.url)).bearer_auth(&srv.admin_token).send()
    };
    let page: Value = feed("0").await.unwrap().json().await.unwrap();
    assert_eq!(page, json!({"entries": [], "next_cursor": 0}));
    for bad in ["abc", "-1", "99"] {
        assert_problem(feed(bad).await.unwrap(), 400, "invalid-cursor").await;
    }

    // A subscriber on the event stream.
    let mut sse = srv
        .http
        .get(format!("{}/v1/revocations/stream?since=0", srv.url))
        .bearer_auth(&srv.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let jti = srv.verify(&t, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    let started = Instant::now();
    revoke(&srv, json!({"jti": jti})).await.error_for_status().unwrap();
    let mut buf = String::new();
    while !buf.contains(&jti) {
        let chunk = tokio::time::timeout(Duration::from_secs(2), sse.chunk())
            .await
            .expect("event within 2 s")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(1), "subscriber learned in {latency:?}");
    assert!(buf.contains("event: revocation") && buf.contains("id: 1"), "{buf}");

    revoke(&srv, json!({"subject": "spiffe://test.example/ns/prod/sa/worker"})).await.error_for_status().unwrap();
    let page: Value = feed("0").await.unwrap().json().await.unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], 2);
    let entry = &page["entries"][1];
    assert_eq!(entry["kind"], "subject");
    assert!(entry["expires_at"].as_i64().unwrap() > now() + 3600, "kept while covered tokens can live");
    let page: Value = feed("1").await.unwrap().json().await.unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    // Resuming the stream after cursor 1 replays only the second entry.
    let mut resumed = srv
        .http
        .get(format!("{}/v1/revocations/stream", srv.url))
        .header("last-event-id", "1")
        .bearer_auth(&srv.admin_token)
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(2), resumed.chunk()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("id: 2") && !text.contains("id: 1\n"), "{text}");
    assert!(!active(&srv, &t2).await);
    srv.stop().await;
}

#[tokio::test]
async fn leases_audit_and_metrics() {
    let (srv, k8s) = start().await;
    let a = token(&srv, &k8s, "prod", "web", "https://api.test").await;
    let _b = token(&srv, &k8s, "prod", "worker", "https://api.test").await;
    let jti = srv.verify(&a, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    revoke(&srv, json!({"jti": jti})).await.error_for_status().unwrap();
    // One that expires at once, for the expiry counter.
    let short = srv
        .exchange_jwt_with(&k8s.k8s_token("prod", "batch"), "https://api.test", &[("requested_lifetime", "1")])
        .await;
    assert_eq!(short.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let get = |path: String| srv.http.get(format!("{}{path}", srv.url)).bearer_auth(&srv.admin_token).send();
    let leases: Vec<Value> = get("/v1/leases".into()).await.unwrap().json().await.unwrap();
    assert_eq!(leases.len(), 1, "active only by default");
    let expired: Vec<Value> = get("/v1/leases?state=expired".into()).await.unwrap().json().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["subject"], "spiffe://test.example/ns/prod/sa/batch");
    assert_eq!(leases[0]["subject"], "spiffe://test.example/ns/prod/sa/worker");
    let revoked: Vec<Value> = get("/v1/leases?state=revoked".into()).await.unwrap().json().await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["id"], jti.as_str());
    assert_eq!(revoked[0]["revoked_by"], "jti");
    let all: Vec<Value> = get("/v1/leases?state=all&subject_prefix=spiffe://test.example/ns/prod".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_problem(get("/v1/leases?state=zombie".into()).await.unwrap(), 400, "invalid-request").await;
    assert_problem(get("/v1/leases?limit=many".into()).await.unwrap(), 400, "invalid-request").await;
    assert_problem(get("/v1/audit?since=yesterday".into()).await.unwrap(), 400, "invalid-request").await;

    let events: Vec<Value> = get("/v1/audit?kind=credential.".into()).await.unwrap().json().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "credential.revoked");
    let issued: Vec<Value> = get("/v1/audit?kind=token.issued&subject=spiffe://test.example/ns/prod/sa/web".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["detail"]["jti"], jti.as_str());
    let report: Value = get("/v1/audit/verify".into()).await.unwrap().json().await.unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["checked"].as_u64().unwrap() >= 4);

    let metrics = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
    for m in
        ["mayfly_credentials_issued_total", "mayfly_revocations_total", "mayfly_http_request_duration_seconds_bucket"]
    {
        assert!(metrics.contains(m), "{m} in /metrics");
    }
    // The statistics task publishes live credentials and standing exposure.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let m = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
        let expired_audited = srv
            .running
            .broker
            .ledger()
            .store()
            .audit_query(&mayfly_server::ledger::AuditFilter {
                kind: Some("credential.expired".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        if !expired_audited.is_empty()
            && m.contains("mayfly_standing_exposure_seconds")
            && m.contains("mayfly_live_credentials")
            && m.contains("mayfly_credentials_expired_total")
        {
            break;
        }
        assert!(Instant::now() < deadline, "gauges published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_tampered_audit_trail_names_the_first_broken_link() {
    let (srv, k8s) = start().await;
    for _ in 0..3 {
        token(&srv, &k8s, "prod", "web", "https://api.test").await;
    }
    let dir = srv.stop().await;
    // The table refuses edits; an attacker with write access to the database drops the guard first.
    let forge = "UPDATE audit_events SET detail = '{\"jti\":\"forged\"}' WHERE seq = 3";
    if let Some(db) = dir.database() {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        let refused = sqlx::query("UPDATE audit_events SET detail = '{}' WHERE seq = 3").execute(&mut conn).await;
        assert!(refused.is_err(), "append-only trigger");
        sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(forge).execute(&mut conn).await.unwrap();
    } else {
        let db = dir.path().join("data/mayfly.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts).await.unwrap();
        let refused = sqlx::query("UPDATE audit_events SET detail = '{}' WHERE seq = 3").execute(&mut conn).await;
        assert!(refused.is_err(), "append-only trigger");
        sqlx::query("DROP TRIGGER audit_events_no_update").execute(&mut conn).await.unwrap();
        sqlx::query(forge).execute(&mut conn).await.unwrap();
    }
    let store = open_store(dir.path()).await;
    let events = store.audit_events_after(0, 100).await.unwrap();
    let mut v = mayfly_server::ledger::audit::ChainVerifier::default();
    let err = events.iter().try_for_each(|e| v.push(e)).unwrap_err();
    assert_eq!(err.to_string(), "event 3: its hash does not match its contents (the event was altered)");
}

#[tokio::test]
async fn concurrent_revocations_are_all_enforced() {
    let (srv, k8s) = start().await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(token(&srv, &k8s, "prod", &format!("svc-{i}"), "https://api.test").await);
    }
    let mut tasks = Vec::new();
    for t in &tokens {
        let jti = srv.verify(t, "https://api.test").await["jti"].as_str().unwrap().to_owned();
        let (http, url, admin) = (srv.http.clone(), srv.url.clone(), srv.admin_token.clone());
        tasks.push(tokio::spawn(async move {
            http.post(format!("{url}/v1/revocations"))
                .bearer_auth(admin)
                .json(&json!({"jti": jti}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    for t in &tokens {
        assert!(!active(&srv, t).await, "every concurrent revocation is in force");
    }
    srv.stop().await;
}

#[tokio::test]
async fn revoked_lease_pages_are_filled_past_active_rows() {
    let (srv, k8s) = start().await;
    for i in 0..5 {
        token(&srv, &k8s, "prod", &format!("early-{i}"), "https://api.test").await;
    }
    let last = token(&srv, &k8s, "prod", "late", "https://api.test").await;
    let jti = srv.verify(&last, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    revoke(&srv, json!({"jti": jti})).await.error_for_status().unwrap();
    let page: Vec<Value> = srv.admin_get("/v1/leases?state=revoked&limit=1").await;
    assert_eq!(page.len(), 1, "the revoked lease sits behind five active ones in id order");
    assert_eq!(page[0]["id"], jti.as_str());
    srv.stop().await;
}

#[tokio::test]
async fn standing_exposure_counts_what_is_live_and_not_what_is_revoked() {
    let (srv, k8s) = start().await;
    for sa in ["web", "web", "web", "api", "api"] {
        token(&srv, &k8s, "prod", sa, "https://api.test").await;
    }
    let ledger = srv.running.broker.ledger().clone();
    let revocations = mayfly_server::ledger::Revocations::load(
        ledger.clone(),
        mayfly_server::ledger::revocations::Retention {
            credentials_secs: 3600,
            evidence_secs: 3600,
            propagation_secs: 0,
        },
    )
    .await
    .unwrap();
    let scan = |revocations| {
        let ledger = ledger.clone();
        async move { mayfly_server::govern::stats::scan(ledger.store().as_ref(), revocations, now()).await.unwrap() }
    };
    // No revocation in force: the database's own aggregate.
    let s = scan(&revocations).await["jwt"].clone();
    assert_eq!((s.live, s.revoked), (5, 0));
    assert!((5 * 290..=5 * 300).contains(&s.exposure_seconds), "five tokens of 5 minutes: {s:?}");

    // web's three are revoked: read one by one, and told apart.
    let r = srv.admin_post("/v1/revocations", Some(json!({"subject": "spiffe://test.example/ns/prod/sa/web"}))).await;
    assert_eq!(r.status(), 201);
    revocations.catch_up().await.unwrap();
    let after = scan(&revocations).await["jwt"].clone();
    assert_eq!((after.live, after.revoked), (2, 3));
    assert!((2 * 290..=2 * 300).contains(&after.exposure_seconds), "{after:?}");
    srv.stop().await;
}
