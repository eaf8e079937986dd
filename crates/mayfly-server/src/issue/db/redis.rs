//! Redis ACL users: `ACL SETUSER … on >password <rules>`, sessions ended with
//! `CLIENT KILL USER`, then `ACL DELUSER`.

use async_trait::async_trait;

use super::{DbDriver, DbError, NewUser, scrub, timed};

/// Default rules: read-only on every key.
const DEFAULT_ACL: &str = "~* +@read";

/// A Redis server reached with an admin URL.
#[derive(Debug)]
pub struct Redis {
    client: redis::Client,
}

fn err(e: redis::RedisError, secret: &str) -> DbError {
    let msg = scrub(&e.to_string(), secret);
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
        DbError::Unreachable(msg)
    } else {
        DbError::Refused(msg)
    }
}

impl Redis {
    /// A client; connections are opened per operation.
    pub fn new(url: &str) -> Result<Self, DbError> {
        let client = redis::Client::open(url)
            .map_err(|e| DbError::Config(format!("Redis URL: {}", scrub(&e.to_string(), url))))?;
        Ok(Self { client })
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, DbError> {
        self.client.get_multiplexed_async_connection().await.map_err(|e| err(e, ""))
    }
}

#[async_trait]
impl DbDriver for Redis {
    fn max_username_len(&self) -> usize {
        64
    }

    async fn create(&self, user: &NewUser<'_>) -> Result<(), DbError> {
        timed(async {
            let mut c = self.conn().await?;
            let rules = user.role.acl.as_deref().unwrap_or(DEFAULT_ACL);
            let mut cmd = redis::cmd("ACL");
            cmd.arg("SETUSER").arg(user.name).arg("reset").arg("on").arg(format!(">{}", user.password));
            for rule in rules.split_whitespace() {
                cmd.arg(rule);
            }
            cmd.query_async::<()>(&mut c).await.map_err(|e| err(e, user.password))
        })
        .await
    }

    async fn drop_user(&self, username: &str) -> Result<(), DbError> {
        timed(async {
            let mut c = self.conn().await?;
            // Disable first so no new session starts, then end the open ones and delete.
            let exists: Vec<String> =
                redis::cmd("ACL").arg("USERS").query_async(&mut c).await.map_err(|e| err(e, ""))?;
            if !exists.iter().any(|u| u == username) {
                return Ok(());
            }
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(username)
                .arg("off")
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| err(e, ""))?;
            let _: Result<i64, _> =
                redis::cmd("CLIENT").arg("KILL").arg("USER").arg(username).query_async(&mut c).await;
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(username)
                .query_async::<i64>(&mut c)
                .await
                .map(|_| ())
                .map_err(|e| err(e, ""))
        })
        .await
    }

    async fn renew(&self, _username: &str, _expiration: &str) -> Result<(), DbError> {
        // Redis users have no expiry of their own; the lease's expiry is what counts.
        Ok(())
    }

    async fn users_with_prefix(&self, prefix: &str) -> Result<Vec<String>, DbError> {
        timed(async {
            let mut c = self.conn().await?;
            let users: Vec<String> =
                redis::cmd("ACL").arg("USERS").query_async(&mut c).await.map_err(|e| err(e, ""))?;
            Ok(users.into_iter().filter(|u| u.starts_with(prefix)).collect())
        })
        .await
    }
}
