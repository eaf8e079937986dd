//! `mayfly audit checkpoint` and `mayfly audit verify --checkpoint FILE`, as an operator
//! uses them: export a signed checkpoint, then, after someone with write access to the
//! database cut off the chain's tail or rewrote and re-hashed it (removing the stored
//! checkpoints too), verification with the exported file fails and names what happened,
//! remotely and with `--config`; a forged or altered checkpoint is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ServerProcess, mayfly, start_server, text};
use mayfly_server::keys::{SigningAlg, SigningKey};
use mayfly_testkit::TestConfig;
use serde_json::{Value, json};
use sqlx::Connection;

fn write_config(dir: &Path) -> PathBuf {
    TestConfig::new()
        .trust_domain("audit.test")
        .free_port()
        .set("audit", "checkpoint_every_events = 1\ncheckpoint_interval = \"100ms\"")
        .write(dir)
}

/// Waits (bounded) until the latest checkpoint covers the chain's head; returns its seq.
async fn wait_for_checkpoint(srv: &ServerProcess) -> i64 {
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", srv.url)).bearer_auth(&srv.admin_token).send();
    let head = get("/v1/audit/verify").await.unwrap().json::<Value>().await.unwrap()["head_seq"].as_i64().unwrap();
    for _ in 0..200 {
        let r = get("/v1/audit/checkpoints/latest").await.unwrap();
        if r.status() == 200 {
            let seq = r.json::<Value>().await.unwrap()["seq"].as_i64().unwrap();
            if seq >= head {
                return seq;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of event {head} within 10 s");
}

fn copy_state(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let ok = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to.path()).status().unwrap();
    assert!(ok.success());
    to
}

/// Runs SQL on a stopped server's SQLite database with `table`'s append-only triggers out
/// of the way (and put back), as an attacker with write access would.
async fn tamper(dir: &Path, table: &str, body: &str) {
    let mut sql = format!("DROP TRIGGER {table}_no_update; DROP TRIGGER {table}_no_delete; {body}; ");
    for (suffix, op) in [("no_update", "UPDATE"), ("no_delete", "DELETE")] {
        sql.push_str(&format!(
            "CREATE TRIGGER {table}_{suffix} BEFORE {op} ON {table} BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END; "
        ));
    }
    let url = format!("sqlite://{}", dir.join("data/mayfly.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
}

/// Events (and stored checkpoints) after `keep` removed.
async fn cut_tail(dir: &Path, keep: i64) {
    tamper(dir, "audit_events", &format!("DELETE FROM audit_events WHERE seq > {keep}")).await;
    tamper(dir, "audit_checkpoints", &format!("DELETE FROM audit_checkpoints WHERE seq > {keep}")).await;
}

/// Event `seq` edited, it and every later event re-hashed as the server chains them, and
/// the stored checkpoints from it on removed.
async fn rewrite_from(dir: &Path, seq: i64) {
    let cfg = mayfly_server::config::Config::load(&dir.join("mayfly.toml")).unwrap();
    let store = mayfly_server::server::open_store(&cfg).await.unwrap();
    let prev = store.audit_events_after(seq - 2, 1).await.unwrap().remove(0);
    let mut events = store.audit_events_after(seq - 1, 100_000).await.unwrap();
    drop(store);
    events[0].detail = json!({"forged": true}).to_string();
    let (mut prev_seq, mut prev_hash) = (prev.seq, prev.hash);
    let mut updates = Vec::new();
    for e in &mut events {
        e.rechain(prev_seq, &prev_hash);
        (prev_seq, prev_hash) = (e.seq, e.hash.clone());
        updates.push(format!(
            "UPDATE audit_events SET detail = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}",
            e.detail.replace('\'', "''"),
            e.prev_hash,
            e.hash,
            e.seq
        ));
    }
    tamper(dir, "audit_events", &updates.join("; ")).await;
    tamper(dir, "audit_checkpoints", &format!("DELETE FROM audit_checkpoints WHERE seq >= {seq}")).await;
}

fn verify_offline(dir: &Path, extra: &[&str]) -> std::process::Output {
    let config = dir.join("mayfly.toml");
    let mut args = vec!["audit", "verify", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    mayfly(&args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_checkpoint_catches_a_cut_or_rewritten_chain() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let srv = start_server(&config);
    for _ in 0..10 {
        let out = mayfly(&["join-token", "create"], &srv.env());
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let seq = wait_for_checkpoint(&srv).await;

    // Exported: the bare JWS, and the JSON form with the key that signed it.
    let out = mayfly(&["audit", "checkpoint"], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let jws = text(&out.stdout).trim().to_owned();
    assert_eq!(jws.split('.').count(), 3, "prints just the JWS");
    assert!(text(&out.stderr).contains(&format!("checkpoint of audit event {seq}")), "{}", text(&out.stderr));
    let cp_file = dir.path().join("cp.jws");
    std::fs::write(&cp_file, format!("{jws}\n")).unwrap();
    let out = mayfly(&["audit", "checkpoint", "--json"], &srv.env());
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((exported["checkpoint"].as_str(), exported["seq"].as_i64()), (Some(jws.as_str()), Some(seq)));
    assert_eq!(exported["jwk"]["kid"], exported["kid"], "with its key");
    let json_file = dir.path().join("cp.json");
    std::fs::write(&json_file, out.stdout).unwrap();
    let cp = cp_file.to_str().unwrap();

    // Untampered: remote and offline, with the server's keys or a kept one.
    let out = mayfly(&["audit", "verify", "--checkpoint", cp], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("audit chain intact") && said.contains(&format!("still holds event {seq}")), "{said}");
    assert!(said.contains("published in the server's JWKS"), "{said}");
    let out = mayfly(&["audit", "verify", "--checkpoint", json_file.to_str().unwrap()], &srv.env());
    assert!(out.status.success(), "the --json output is accepted too: {}", text(&out.stderr));
    assert!(srv.stop().success(), "clean exit");
    let out = verify_offline(dir.path(), &["--checkpoint", cp]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("held in the server's storage"), "{}", text(&out.stdout));
    let out = verify_offline(dir.path(), &["--checkpoint", cp, "--jwk", json_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("given with --jwk"), "{}", text(&out.stdout));

    // Forged: another payload under the server's signature, or another key's signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jws.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["seq"] = json!(seq - 2);
    let altered = dir.path().join("altered.jws");
    std::fs::write(&altered, format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2])).unwrap();
    let out = verify_offline(dir.path(), &["--checkpoint", altered.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("signature does not verify"), "{}", text(&out.stderr));
    let (attacker, _) = SigningKey::generate(SigningAlg::EdDsa).unwrap();
    let claims: mayfly_server::checkpoints::CheckpointClaims = serde_json::from_value(claims).unwrap();
    let foreign = dir.path().join("foreign.jws");
    std::fs::write(&foreign, mayfly_server::checkpoints::sign(&attacker, &claims).unwrap()).unwrap();
    let out = verify_offline(dir.path(), &["--checkpoint", foreign.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not among the keys"), "{}", text(&out.stderr));
    // The attacker's key inside the file they forged is not trusted either.
    let with_key = dir.path().join("foreign.json");
    std::fs::write(
        &with_key,
        json!({"checkpoint": std::fs::read_to_string(&foreign).unwrap(), "jwk": attacker.public_jwk()}).to_string(),
    )
    .unwrap();
    assert!(!verify_offline(dir.path(), &["--checkpoint", with_key.to_str().unwrap()]).status.success());

    // The tail cut off, stored checkpoints with it: only the exported one tells.
    let cut = copy_state(dir.path());
    let keep = seq - 5;
    cut_tail(cut.path(), keep).await;
    let out = verify_offline(cut.path(), &[]);
    assert!(out.status.success(), "nothing in the database shows it: {}", text(&out.stderr));
    let out = verify_offline(cut.path(), &["--checkpoint", cp]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("(truncated)") && err.contains(&format!("ends at event {keep}")), "{err}");

    // An event edited and the chain re-hashed after it.
    let rewritten = copy_state(dir.path());
    rewrite_from(rewritten.path(), seq - 3).await;
    assert!(verify_offline(rewritten.path(), &[]).status.success(), "every link holds");
    let out = verify_offline(rewritten.path(), &["--checkpoint", cp]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("(rewritten)") && err.contains(&format!("event {seq}:")), "{err}");

    // The same through a server running on the cut state.
    let srv = start_server(&cut.path().join("mayfly.toml"));
    let out = mayfly(&["audit", "verify", "--checkpoint", cp], &srv.env());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("(truncated)"), "{}", text(&out.stderr));
    assert!(mayfly(&["audit", "verify"], &srv.env()).status.success(), "without it, the chain looks intact");

    // A checkpoint planted in the table is not exported, and the server's own check names it.
    let planted = mayfly_server::checkpoints::sign(&attacker, &claims).unwrap();
    let url = format!("sqlite://{}", cut.path().join("data/mayfly.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO audit_checkpoints (seq, hash, created_at, kid, jws) VALUES (100000, $1, 1, $2, $3)")
        .bind(&claims.hash)
        .bind(attacker.kid())
        .bind(&planted)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let out = mayfly(&["audit", "checkpoint"], &srv.env());
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(text(&out.stderr).contains("latest checkpoint is refused"), "{}", text(&out.stderr));
    let out = mayfly(&["audit", "verify"], &srv.env());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("(bad checkpoint)"), "{}", text(&out.stderr));
    assert!(srv.stop().success(), "clean exit");
}
