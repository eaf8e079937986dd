//! Operator commands added for issue 18: `mayfly admin-token create|list|revoke`, and
//! `mayfly revoke --lease` revoking a database lease (its user dropped).

mod common;

use common::*;
use mayfly_testkit::{PG_ADMIN, TestConfig, UserPrefix, block_on};
use serde_json::Value;

#[test]
fn admin_tokens_are_created_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let first = [("MAYFLY_ADMIN_TOKEN", srv.admin_token.as_str()), ("MAYFLY_URL", srv.url.as_str())];

    // Created: the token alone on stdout (human form), or the whole answer (--json).
    let out = mayfly(&["admin-token", "create", "--name", "ci-deployer"], &first);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = text(&out.stdout).trim().to_owned();
    assert!(second.starts_with("mfa_") && second.len() == srv.admin_token.len(), "{second}");
    assert!(text(&out.stderr).contains("ci-deployer"), "{}", text(&out.stderr));
    let out = mayfly(&["admin-token", "create", "--name", "backup", "--json"], &first);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let backup: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(backup["token"].as_str().unwrap().starts_with("mfa_"));
    let again = mayfly(&["admin-token", "create", "--name", "backup"], &first);
    assert!(!again.status.success() && text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    let bad = mayfly(&["admin-token", "create", "--name", "no spaces"], &first);
    assert!(!bad.status.success() && text(&bad.stderr).contains("(400)"), "{}", text(&bad.stderr));

    // The new token is an admin token; the list shows all three names and no secret.
    let with_second = [("MAYFLY_ADMIN_TOKEN", second.as_str()), ("MAYFLY_URL", srv.url.as_str())];
    let keys = mayfly(&["keys", "list"], &with_second);
    assert!(keys.status.success(), "{}", text(&keys.stderr));
    let out = mayfly(&["admin-token", "list", "--json"], &with_second);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["backup", "ci-deployer", "initial"]);
    let table = text(&mayfly(&["admin-token", "list"], &first).stdout);
    assert!(table.starts_with("ID") && table.contains("ci-deployer") && table.contains("initial"), "{table}");
    for secret in [&srv.admin_token, &second] {
        assert!(!table.contains(secret.as_str()) && !text(&out.stdout).contains(secret.as_str()));
    }

    // Revoked: the very next command with it fails; the first still works.
    let id = listed.iter().find(|t| t["name"] == "ci-deployer").unwrap()["id"].as_str().unwrap().to_owned();
    let out = mayfly(&["admin-token", "revoke", &id], &first);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("revoked admin token {id} (ci-deployer)")), "{}", text(&out.stdout));
    let refused = mayfly(&["keys", "list"], &with_second);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("Unauthorized (401)"), "{}", text(&refused.stderr));
    assert!(mayfly(&["keys", "list"], &first).status.success());

    // The last one cannot be revoked.
    let backup_id = backup["id"].as_str().unwrap();
    assert!(mayfly(&["admin-token", "revoke", backup_id, "--json"], &first).status.success());
    let initial = mayfly(&["admin-token", "list", "--json"], &first);
    let initial: Vec<Value> = serde_json::from_slice(&initial.stdout).unwrap();
    assert_eq!(initial.len(), 1);
    let last = mayfly(&["admin-token", "revoke", initial[0]["id"].as_str().unwrap()], &first);
    assert!(!last.status.success());
    assert!(text(&last.stderr).contains("last one"), "{}", text(&last.stderr));
    assert!(mayfly(&["keys", "list"], &first).status.success());

    // Without an admin token: refused before anything is sent.
    let none = mayfly(&["admin-token", "list", "--url", &srv.url], &[]);
    assert!(!none.status.success() && text(&none.stderr).contains("admin token"), "{}", text(&none.stderr));
}

/// A server (a child process) with a PostgreSQL database configured; join-token workloads may get its role.
struct DbServer {
    server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for DbServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl DbServer {
    fn start(prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = TestConfig::new()
            .trust_domain("cli.test")
            .free_port()
            .policies(
                r#"permit (principal, action == Mayfly::Action::"issue", resource == Mayfly::Role::"pg/reader")
                   when { principal.attestor == "join_token" };
                   permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.example")
                   when { principal.attestor == "join_token" };"#,
            )
            .toml(&format!(
                r#"
[[databases]]
name = "pg"
kind = "postgres"
url = "{PG_ADMIN}"
username_prefix = "{prefix}"
[[databases.roles]]
name = "reader"
default_ttl = "10m"
max_ttl = "1h"
grants = ['GRANT CONNECT ON DATABASE postgres TO "{{{{name}}}}"']
"#
            ));
        let server = start_server(&config.write(dir.path()));
        Self { server, _dir: dir }
    }

    fn join_token(&self) -> String {
        let out = mayfly(&["join-token", "create"], &self.env());
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}

fn pg_role_exists(name: &str) -> bool {
    use sqlx::Connection;
    block_on(async {
        let mut c = sqlx::PgConnection::connect(PG_ADMIN).await.expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(name)
            .fetch_optional(&mut c)
            .await
            .unwrap()
            .is_some()
    })
}

#[test]
fn revoke_lease_drops_the_database_user_of_that_lease() {
    let users = UserPrefix::new("cl");
    let prefix = users.to_string();
    let srv = DbServer::start(&prefix);
    let issue = |join: &str| -> Value {
        block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}/v1/credentials/pg/reader", srv.url))
                .json(&serde_json::json!({"subject_token_type": "urn:mayfly:params:oauth:token-type:join-token",
                                          "subject_token": join}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json().await.unwrap()
        })
    };
    let lease = issue(&srv.join_token());
    let other = issue(&srv.join_token());
    let (id, user) = (lease["lease_id"].as_str().unwrap(), lease["username"].as_str().unwrap());
    assert!(user.starts_with(&prefix) && pg_role_exists(user), "the user exists while leased");

    // `--lease` revokes the database lease: the user is gone when the command returns.
    let out = mayfly(&["revoke", "--lease", id], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("revoked database lease {id}: user {user} dropped")),
        "{}",
        text(&out.stdout)
    );
    assert!(!pg_role_exists(user), "the user is dropped");
    let other_user = other["username"].as_str().unwrap();
    assert!(pg_role_exists(other_user), "another lease's user is untouched");

    // Again: the lease has ended, said plainly, non-zero exit.
    let again = mayfly(&["revoke", "--lease", id], &srv.env());
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("Conflict (409)"), "{}", text(&again.stderr));

    // --json shows the lease; an id no database lease has is a token's jti (as before).
    let out = mayfly(&["revoke", "--lease", other["lease_id"].as_str().unwrap(), "--json"], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["state"].as_str(), v["username"].as_str()), (Some("revoked"), Some(other_user)));
    assert!(!pg_role_exists(other_user));
    let token = mayfly(
        &[
            "token",
            "exchange",
            "--url",
            &srv.url,
            "--join-token",
            &srv.join_token(),
            "--audience",
            "https://api.example",
        ],
        &[],
    );
    assert!(token.status.success(), "{}", text(&token.stderr));
    let jwt = text(&token.stdout).trim().to_owned();
    let payload = jwt.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let jti = claims["jti"].as_str().unwrap();
    let out = mayfly(&["revoke", "--lease", jti], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("revoked: jti {jti}")), "{}", text(&out.stdout));
    let nothing = mayfly(&["revoke", "--lease", "no-such-lease"], &srv.env());
    assert!(!nothing.status.success());
    assert!(text(&nothing.stderr).contains("Nothing matches (404)"), "{}", text(&nothing.stderr));
    // A reason is recorded for selectors only: a database lease's revocation has none.
    let both = mayfly(&["revoke", "--lease", id, "--reason", "x"], &srv.env());
    assert!(!both.status.success() && text(&both.stderr).contains("cannot be used with"), "{}", text(&both.stderr));
}
