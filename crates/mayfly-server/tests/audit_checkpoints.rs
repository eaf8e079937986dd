//! Signed checkpoints of the audit chain: written by the server, exported, and what they
//! catch that the hash links alone cannot. Someone who can write the database cuts off the
//! chain's tail, or edits an event and re-hashes everything after it (as the server does):
//! every link still holds, but the chain no longer passes through the event a checkpoint
//! signed. A careful attacker removes the stored checkpoints too, which is why only an
//! exported one settles it. Works on SQLite and, with MAYFLY_TEST_STORAGE=postgres, PostgreSQL.

use std::path::Path;
use std::time::Duration;

use mayfly_server::checkpoints::{self, CheckpointError};
use mayfly_server::keys::{Kek, KekSource, SigningAlg, SigningKey};
use mayfly_server::ledger::audit::{BreakKind, verify_chain};
use mayfly_server::ledger::{Store, StoredCheckpoint};
use mayfly_testkit::*;
use serde_json::{Value, json};

const FAST_CHECKPOINTS: &str = "[audit]\ncheckpoint_every_events = 1\ncheckpoint_interval = \"100ms\"\n";

async fn start() -> (TestServer, TestIssuer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = TestServer::start_with(TestConfig::standard(&k8s, &gh).toml(FAST_CHECKPOINTS)).await;
    (srv, k8s, gh)
}

/// Appends `n` events (each join token created is audited).
async fn produce_events(srv: &TestServer, n: usize) {
    for _ in 0..n {
        srv.join_token(None).await;
    }
}

async fn verify_report(srv: &TestServer, query: &str) -> Value {
    srv.admin_get(&format!("/v1/audit/verify{query}")).await
}

/// Waits (bounded) for a checkpoint of the chain's current head; returns it.
async fn checkpoint_of_head(srv: &TestServer) -> Value {
    let head = verify_report(srv, "").await["head_seq"].as_i64().expect("a head");
    for _ in 0..200 {
        let resp = srv
            .http
            .get(format!("{}/v1/audit/checkpoints/latest", srv.url))
            .bearer_auth(&srv.admin_token)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let cp: Value = resp.json().await.unwrap();
            if cp["seq"].as_i64().unwrap() >= head {
                return cp;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of event {head} within 10 s");
}

/// The stored signing keys' public parts, as `mayfly audit verify --config` opens them.
async fn stored_keys(dir: &Path, store: &dyn Store) -> Vec<Value> {
    let kek = Kek::load(&KekSource::File(dir.join("kek"))).unwrap();
    mayfly_server::keys::stored_public_keys(store, &kek).await.unwrap()
}

/// Runs SQL on the stopped server's database, whichever the backend.
async fn tamper(dir: &TestDir, sql: String) {
    use sqlx::Connection;
    if let Some(db) = dir.database() {
        let mut c = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
    } else {
        let url = format!("sqlite://{}", dir.path().join("data/mayfly.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
    }
}

/// SQL that runs `body` on `table` with its append-only trigger out of the way, as an
/// attacker with write access would.
fn without_guard(table: &str, body: &str) -> String {
    if storage_is_postgres() {
        let trigger = format!("{table}_no_change");
        format!("ALTER TABLE {table} DISABLE TRIGGER {trigger}; {body}; ALTER TABLE {table} ENABLE TRIGGER {trigger};")
    } else {
        let mut sql = format!("DROP TRIGGER {table}_no_update; DROP TRIGGER {table}_no_delete; {body}; ");
        for (suffix, op) in [("no_update", "UPDATE"), ("no_delete", "DELETE")] {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_{suffix} BEFORE {op} ON {table} \
                 BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END; "
            ));
        }
        sql
    }
}

/// On PostgreSQL the chain's head also lives in `ledger_heads`: a careful attacker moves it
/// so that the server keeps appending after the forged chain.
fn move_head(seq: i64, hash: &str) -> String {
    if storage_is_postgres() {
        format!("UPDATE ledger_heads SET audit_seq = {seq}, audit_hash = '{hash}' WHERE id = 1;")
    } else {
        String::new()
    }
}

/// Removes every event after `keep`; with `careful`, the checkpoints after it too.
async fn cut_tail(dir: &TestDir, keep: i64, careful: bool) {
    let store = open_store(dir.path()).await;
    let kept = store.audit_events_after(keep - 1, 1).await.unwrap().remove(0);
    drop(store);
    let mut sql = without_guard("audit_events", &format!("DELETE FROM audit_events WHERE seq > {keep}"));
    sql.push_str(&move_head(keep, &kept.hash));
    if careful {
        sql.push_str(&without_guard("audit_checkpoints", &format!("DELETE FROM audit_checkpoints WHERE seq > {keep}")));
    }
    tamper(dir, sql).await;
}

/// Edits event `seq` and re-hashes it and every event after it, the way the server
/// chains them; with `careful`, removes the checkpoints from `seq` on too.
async fn rewrite_from(dir: &TestDir, seq: i64, careful: bool) {
    let store = open_store(dir.path()).await;
    let prev = store.audit_events_after(seq - 2, 1).await.unwrap().remove(0);
    let mut events = store.audit_events_after(seq - 1, 100_000).await.unwrap();
    drop(store);
    events[0].detail = json!({"forged": true}).to_string();
    let (mut prev_seq, mut prev_hash) = (prev.seq, prev.hash);
    let mut updates = String::new();
    for e in &mut events {
        e.rechain(prev_seq, &prev_hash);
        (prev_seq, prev_hash) = (e.seq, e.hash.clone());
        updates.push_str(&format!(
            "UPDATE audit_events SET detail = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}; ",
            e.detail.replace('\'', "''"),
            e.prev_hash,
            e.hash,
            e.seq
        ));
    }
    let mut sql = without_guard("audit_events", updates.trim_end().trim_end_matches(';'));
    sql.push_str(&move_head(prev_seq, &prev_hash));
    if careful {
        sql.push_str(&without_guard("audit_checkpoints", &format!("DELETE FROM audit_checkpoints WHERE seq >= {seq}")));
    }
    tamper(dir, sql).await;
}

#[tokio::test]
async fn checkpoints_are_signed_listed_and_are_not_audit_events_nor_tokens() {
    let (srv, _k8s, _gh) = start().await;
    produce_events(&srv, 5).await;
    let cp = checkpoint_of_head(&srv).await;
    let jws = cp["checkpoint"].as_str().unwrap();

    // A JWS of its own type, signed by a published key: verified here with jsonwebtoken,
    // not with the code that signed it.
    let header = jsonwebtoken::decode_header(jws).unwrap();
    assert_eq!(header.typ.as_deref(), Some("mayfly-audit-checkpoint+jwt"));
    let jwks = srv.jwks().await;
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).expect("kid published")).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims(&["iss"]);
    v.set_issuer(&[&srv.url]);
    let claims = jsonwebtoken::decode::<Value>(jws, &key, &v).expect("checkpoint verifies").claims;
    let seq = claims["seq"].as_i64().unwrap();
    assert_eq!(seq, cp["seq"].as_i64().unwrap());
    assert!(claims["iat"].as_i64().unwrap() >= now() - 60);
    let event: Vec<Value> = srv.admin_get(&format!("/v1/audit?after={}&limit=1", seq - 1)).await;
    assert_eq!(event[0]["seq"], seq);
    assert_eq!(claims["hash"], event[0]["hash"], "it signs the hash of the event it names");

    // Listed oldest first, each one verifiable; paging and limits.
    let all: Vec<Value> = srv.admin_get("/v1/audit/checkpoints?limit=1000").await;
    assert!(!all.is_empty());
    let seqs: Vec<i64> = all.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in chain order: {seqs:?}");
    assert_eq!(*seqs.last().unwrap(), seq);
    let published: Vec<Value> = serde_json::to_value(&jwks).unwrap()["keys"].as_array().unwrap().clone();
    for c in &all {
        let v = checkpoints::verify(c["checkpoint"].as_str().unwrap(), &published).unwrap();
        assert_eq!((v.claims.seq, v.claims.hash.as_str()), (c["seq"].as_i64().unwrap(), c["hash"].as_str().unwrap()));
    }
    let after: Vec<Value> = srv.admin_get(&format!("/v1/audit/checkpoints?after={seq}")).await;
    assert!(after.is_empty());
    let get = |path: &str| srv.http.get(format!("{}{path}", srv.url));
    assert_problem(
        get("/v1/audit/checkpoints?limit=0").bearer_auth(&srv.admin_token).send().await.unwrap(),
        400,
        "invalid-request",
    )
    .await;
    for path in ["/v1/audit/checkpoints", "/v1/audit/checkpoints/latest", "/v1/audit/keys"] {
        assert_problem(get(path).send().await.unwrap(), 401, "unauthorized").await;
    }

    // The server's verification checks the chain against the stored checkpoints, and
    // against one given to it.
    let r = verify_report(&srv, "").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["checkpoints_checked"].as_u64().unwrap() >= 1, "{r}");
    let hash = claims["hash"].as_str().unwrap();
    let r = verify_report(&srv, &format!("?seq={seq}&hash={hash}")).await;
    assert_eq!(r["ok"], true, "{r}");
    let other = "0".repeat(64);
    let r = verify_report(&srv, &format!("?seq={seq}&hash={other}")).await;
    assert_eq!((r["ok"].as_bool(), r["break_kind"].as_str()), (Some(false), Some("rewritten")), "{r}");
    let r = verify_report(&srv, &format!("?seq={}&hash={hash}", seq + 1000)).await;
    assert_eq!(r["break_kind"], "truncated", "{r}");
    assert_problem(
        get(&format!("/v1/audit/verify?seq={seq}")).bearer_auth(&srv.admin_token).send().await.unwrap(),
        400,
        "invalid-request",
    )
    .await;

    // Writing checkpoints adds no audit event, and an idle chain gets no new checkpoint.
    checkpoint_of_head(&srv).await;
    let head = verify_report(&srv, "").await["head_seq"].as_i64().unwrap();
    let count = |v: Vec<Value>| v.len();
    let before = count(srv.admin_get("/v1/audit/checkpoints?limit=1000").await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count(srv.admin_get("/v1/audit/checkpoints?limit=1000").await), before, "head still: none written");
    assert_eq!(verify_report(&srv, "").await["head_seq"].as_i64().unwrap(), head, "checkpoints are not events");

    let openapi: Value = get("/v1/openapi.json").send().await.unwrap().json().await.unwrap();
    for path in ["/v1/audit/checkpoints", "/v1/audit/checkpoints/latest", "/v1/audit/keys", "/v1/audit/verify"] {
        assert!(openapi["paths"][path]["get"].is_object(), "{path} documented");
    }
    assert!(openapi["paths"]["/v1/audit/verify"]["get"]["parameters"].to_string().contains("hash"));

    // A checkpoint is never taken for an access token.
    let resp = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .bearer_auth(&srv.admin_token)
        .form(&[("token", jws)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["active"], false);
    srv.stop().await;
}

#[tokio::test]
async fn a_cut_tail_is_caught_by_the_checkpoint() {
    let (srv, _k8s, _gh) = start().await;
    produce_events(&srv, 12).await;
    let cp = checkpoint_of_head(&srv).await;
    let jws = cp["checkpoint"].as_str().unwrap().to_owned();
    let seq = cp["seq"].as_i64().unwrap();
    let dir = srv.stop().await;
    let keep = seq - 6;

    // Careless: the events go, the stored checkpoints stay and show the cut.
    cut_tail(&dir, keep, false).await;
    let store = open_store(dir.path()).await;
    let keys = stored_keys(dir.path(), store.as_ref()).await;
    assert!(verify_chain(store.as_ref()).await.unwrap().ok, "every remaining link holds");
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert_eq!(r.break_kind, Some(BreakKind::Truncated), "{r:?}");

    // Careful: the checkpoints after the cut go too; the stored ones are fooled, the exported one is not.
    drop(store);
    cut_tail(&dir, keep, true).await;
    let store = open_store(dir.path()).await;
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert!(r.ok, "nothing in the database shows it: {r:?}");
    let exported = checkpoints::verify(&jws, &keys).unwrap();
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), Some(exported.anchor("the exported checkpoint")))
        .await
        .unwrap();
    assert_eq!(r.break_kind, Some(BreakKind::Truncated), "{r:?}");
    let why = r.first_break.unwrap();
    assert!(why.contains(&format!("ends at event {keep}")) && why.contains("removed from the end"), "{why}");
    drop(store);

    // The restarted server (which appends after the cut) says the same when given the checkpoint.
    let srv = TestServer::restart(dir).await;
    assert_eq!(verify_report(&srv, "").await["ok"], true);
    let r = verify_report(&srv, &format!("?seq={seq}&hash={}", exported.claims.hash)).await;
    assert_eq!((r["ok"].as_bool(), r["break_kind"].as_str()), (Some(false), Some("truncated")), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn a_rewritten_and_rehashed_chain_is_caught_by_the_checkpoint() {
    let (srv, _k8s, _gh) = start().await;
    produce_events(&srv, 8).await;
    let cp = checkpoint_of_head(&srv).await;
    let jws = cp["checkpoint"].as_str().unwrap().to_owned();
    let seq = cp["seq"].as_i64().unwrap();
    let dir = srv.stop().await;
    let edited = seq - 3;

    // Careless: the event edited and the chain re-hashed; a stored checkpoint shows it.
    rewrite_from(&dir, edited, false).await;
    let store = open_store(dir.path()).await;
    let keys = stored_keys(dir.path(), store.as_ref()).await;
    assert!(verify_chain(store.as_ref()).await.unwrap().ok, "re-hashed: every link holds");
    let forged = store.audit_events_after(edited - 1, 1).await.unwrap().remove(0);
    assert_eq!(forged.detail, r#"{"forged":true}"#);
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert_eq!(r.break_kind, Some(BreakKind::Rewritten), "{r:?}");

    // Careful: the checkpoints from the edit on removed too. Only the exported one tells.
    drop(store);
    rewrite_from(&dir, edited, true).await;
    let store = open_store(dir.path()).await;
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert!(r.ok, "nothing in the database shows it: {r:?}");
    let exported = checkpoints::verify(&jws, &keys).unwrap();
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), Some(exported.anchor("the exported checkpoint")))
        .await
        .unwrap();
    assert_eq!(r.break_kind, Some(BreakKind::Rewritten), "{r:?}");
    assert!(r.first_break.unwrap().starts_with(&format!("event {seq}:")));
    drop(store);

    let srv = TestServer::restart(dir).await;
    assert_eq!(verify_report(&srv, "").await["ok"], true);
    let r = verify_report(&srv, &format!("?seq={seq}&hash={}", exported.claims.hash)).await;
    assert_eq!((r["ok"].as_bool(), r["break_kind"].as_str()), (Some(false), Some("rewritten")), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn forged_checkpoints_are_refused_and_retired_keys_still_verify_old_ones() {
    let (srv, _k8s, _gh) = start().await;
    produce_events(&srv, 3).await;
    let cp = checkpoint_of_head(&srv).await;
    let jws = cp["checkpoint"].as_str().unwrap().to_owned();
    let published: Vec<Value> = serde_json::to_value(srv.jwks().await).unwrap()["keys"].as_array().unwrap().clone();
    let good = checkpoints::verify(&jws, &published).unwrap();

    // Another payload under the server's signature.
    let parts: Vec<&str> = jws.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["seq"] = json!(good.claims.seq - 1);
    let altered = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
    assert!(matches!(checkpoints::verify(&altered, &published), Err(CheckpointError::BadSignature { .. })));

    // Signed by a key of the attacker's: under the server's kid, or its own.
    let (attacker, _) = SigningKey::generate(SigningAlg::EdDsa).unwrap();
    let header = json!({"alg": "EdDSA", "typ": "mayfly-audit-checkpoint+jwt", "kid": good.kid});
    let body = serde_json::to_vec(&good.claims).unwrap();
    let posing = attacker.sign_compact(header.to_string().as_bytes(), &body).unwrap();
    assert!(matches!(checkpoints::verify(&posing, &published), Err(CheckpointError::BadSignature { .. })));
    let own = checkpoints::sign(&attacker, &good.claims).unwrap();
    let err = checkpoints::verify(&own, &published).unwrap_err();
    assert!(matches!(err, CheckpointError::UnknownKey { .. }));
    assert!(err.to_string().contains("--jwk"), "says what to do: {err}");

    // Rotate: the old key retires. Then stop, and let it leave the JWKS (as it does once
    // its tokens have expired); plant a checkpoint signed by the attacker in the table.
    let old_kid = good.kid.clone();
    assert_eq!(srv.admin_post("/v1/keys/rotate", None).await.status(), 200);
    let dir = srv.stop().await;
    tamper(&dir, format!("UPDATE signing_keys SET published_until = 1 WHERE kid = '{old_kid}'")).await;
    let store = open_store(dir.path()).await;
    let head = store.audit_head().await.unwrap().unwrap();
    let keys = stored_keys(dir.path(), store.as_ref()).await;
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    let mut planted = good.claims.clone();
    (planted.seq, planted.hash) = (head.0 + 100, "ab".repeat(32));
    store
        .insert_audit_checkpoint(&StoredCheckpoint {
            seq: planted.seq,
            hash: planted.hash.clone(),
            created_at: now(),
            kid: attacker.kid().to_owned(),
            jws: checkpoints::sign(&attacker, &planted).unwrap(),
        })
        .await
        .unwrap();
    let r = checkpoints::verify_chain(store.as_ref(), Some(&keys), None).await.unwrap();
    assert_eq!(r.break_kind, Some(BreakKind::BadCheckpoint), "a planted checkpoint is refused, not trusted: {r:?}");
    drop(store);

    // The restarted server no longer publishes the old key, but still holds it: the old
    // checkpoint verifies with /v1/audit/keys, and the planted one is named.
    let srv = TestServer::restart(dir).await;
    let published: Vec<Value> = serde_json::to_value(srv.jwks().await).unwrap()["keys"].as_array().unwrap().clone();
    assert!(published.iter().all(|k| k["kid"] != old_kid.as_str()), "retired from the JWKS");
    assert!(matches!(checkpoints::verify(&jws, &published), Err(CheckpointError::UnknownKey { .. })));
    let held: Value = srv.admin_get("/v1/audit/keys").await;
    let held = held["keys"].as_array().unwrap();
    assert!(held.iter().any(|k| k["kid"] == old_kid.as_str()));
    assert_eq!(checkpoints::verify(&jws, held).unwrap(), good);
    let r = verify_report(&srv, "").await;
    assert_eq!(r["break_kind"], "bad_checkpoint", "{r}");
    assert!(r["first_break"].as_str().unwrap().contains(&format!("event {}", planted.seq)), "{r}");
    srv.stop().await;
}
