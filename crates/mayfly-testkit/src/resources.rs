//! The machine's PostgreSQL, MariaDB and Redis (on loopback), and what a test makes in them.
//!
//! A test's own database ([`TestDatabase`]) and its own user/key prefix ([`UserPrefix`]) are
//! guards: dropping one removes what it stands for, also when the test fails (drop runs
//! while a panic unwinds). `Drop` cannot await, so the clean-up runs to its end on a
//! thread and runtime of its own ([`crate::block_on`]), inside an async test or outside
//! one; it never panics (a failure is printed). A run killed before its guards drop leaves
//! its database behind: each new [`TestDatabase`] drops those older than two hours.

use sqlx::Connection;

use crate::{block_on, now, random_bytes};

/// The PostgreSQL server the tests may use (trust auth on this machine).
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// PostgreSQL's `postgres` database as its superuser.
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// MariaDB as root.
pub const MARIADB_ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";
/// Redis as its default user.
pub const REDIS_ADMIN: &str = "redis://127.0.0.1:6379";

/// Whether this run puts every test server's state on PostgreSQL (`MAYFLY_TEST_STORAGE=postgres`)
/// instead of the embedded SQLite default: the same tests, against both backends.
pub fn storage_is_postgres() -> bool {
    std::env::var("MAYFLY_TEST_STORAGE").is_ok_and(|v| v == "postgres")
}

/// An empty PostgreSQL database of the test's own, dropped (with its connections) when this drops.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates the database. Databases that earlier runs left behind (named with their
    /// creation time) are dropped once two hours old.
    pub fn create() -> Self {
        let name = format!("mayfly_t_{}_{}", now(), hex::encode(random_bytes::<6>()));
        block_on(async {
            let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await.expect("PostgreSQL answers");
            let stale: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'mayfly\\_t\\_%'")
                    .fetch_all(&mut admin)
                    .await
                    .unwrap();
            for db in stale {
                let born: i64 = db.split('_').nth(2).and_then(|t| t.parse().ok()).unwrap_or(i64::MAX);
                if born < now() - 7200 {
                    let _ = drop_database(&mut admin, &db).await;
                }
            }
            let sql = format!("CREATE DATABASE \"{name}\"");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
        });
        Self { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, as the superuser.
    pub fn url(&self) -> String {
        format!("{PG_SERVER}/{}", self.name)
    }
}

async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(admin).await.map(drop)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = &self.name;
        let dropped = block_on(async {
            let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await?;
            drop_database(&mut admin, name).await
        });
        if let Err(e) = dropped {
            eprintln!("test kit: database {name} was not dropped: {e}");
        }
    }
}

/// A username and key prefix of the test's own (`<tag><4 hex>_`): what Mayfly creates under
/// it cannot collide with another test's. When this drops, everything named with it goes:
/// PostgreSQL roles (and what they own or were granted) and the schema [`UserPrefix::schema`],
/// MariaDB users, Redis ACL users and keys.
#[derive(Debug)]
pub struct UserPrefix {
    prefix: String,
}

impl UserPrefix {
    /// A new prefix starting with `tag` (lower-case letters: it is a database username's start).
    pub fn new(tag: &str) -> Self {
        Self { prefix: format!("{tag}{}_", hex::encode(random_bytes::<2>())) }
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// A PostgreSQL schema named after the prefix (`mayfly_test_<tag><hex>`), dropped with it.
    pub fn schema(&self) -> String {
        format!("mayfly_test_{}", self.prefix.trim_end_matches('_'))
    }

    async fn clean_postgres(&self) -> Result<(), String> {
        let mut pg = sqlx::PgConnection::connect(PG_ADMIN).await.map_err(|e| e.to_string())?;
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema());
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut pg).await.map_err(|e| e.to_string())?;
        let roles: Vec<String> =
            sqlx::query_scalar("SELECT rolname FROM pg_roles").fetch_all(&mut pg).await.map_err(|e| e.to_string())?;
        for role in roles.iter().filter(|r| r.starts_with(&self.prefix)) {
            let quoted = format!("\"{}\"", role.replace('"', "\"\""));
            let sql = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'; \
                 DROP OWNED BY {quoted}; DROP ROLE IF EXISTS {quoted}",
                role.replace('\'', "''")
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut pg).await.map_err(|e| format!("{role:?}: {e}"))?;
        }
        Ok(())
    }

    async fn clean_mariadb(&self) -> Result<(), String> {
        let mut maria = sqlx::MySqlConnection::connect(MARIADB_ADMIN).await.map_err(|e| e.to_string())?;
        let users: Vec<(String, String)> =
            sqlx::query_as("SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user")
                .fetch_all(&mut maria)
                .await
                .map_err(|e| e.to_string())?;
        // A MariaDB string literal for any text: backslashes and quotes escaped.
        let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        for (user, host) in users.iter().filter(|(u, _)| u.starts_with(&self.prefix)) {
            let sql = format!("DROP USER IF EXISTS {}@{}", quote(user), quote(host));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut maria).await.map_err(|e| format!("{user:?}: {e}"))?;
        }
        Ok(())
    }

    async fn clean_redis(&self) -> Result<(), String> {
        let client = redis::Client::open(REDIS_ADMIN).map_err(|e| e.to_string())?;
        let mut redis = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        let users: Vec<String> =
            redis::cmd("ACL").arg("USERS").query_async(&mut redis).await.map_err(|e| e.to_string())?;
        for user in users.iter().filter(|u| u.starts_with(&self.prefix)) {
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query_async::<i64>(&mut redis)
                .await
                .map_err(|e| e.to_string())?;
        }
        // The prefix is letters, digits and `_`: nothing in it is a glob pattern.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<i64>(&mut redis).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl std::fmt::Display for UserPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl Drop for UserPrefix {
    fn drop(&mut self) {
        let outcomes =
            block_on(async { [self.clean_postgres().await, self.clean_mariadb().await, self.clean_redis().await] });
        for (service, outcome) in ["PostgreSQL", "MariaDB", "Redis"].into_iter().zip(outcomes) {
            if let Err(e) = outcome {
                eprintln!("test kit: {service} objects named {}* may be left: {e}", self.prefix);
            }
        }
    }
}
