//! Redis: the waiting-queue token and the temporary seat hold.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// Compare-and-delete: deletes `KEYS[1]` only if it still holds `ARGV[1]`, so that a
/// late or redelivered cleanup never removes a hold or token that belongs to someone
/// else by now.
const DELETE_IF_EQUALS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Queue tokens and seat holds in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    ttl: Duration,
    namespace: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects; holds and tokens expire after `ttl` on their own. Keys start with
    /// `concert:<namespace>:`, so that deployments (or tests) sharing a Redis server
    /// with their own databases do not see each other's holds.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect(url: &str, ttl: Duration, namespace: &str) -> redis::RedisResult<Self> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(RedisStore { conn, ttl, namespace: namespace.to_owned() })
    }

    /// Key of a user's active queue token.
    pub fn token_key(&self, user_id: i64) -> String {
        format!("concert:{}:queue:token:{user_id}", self.namespace)
    }

    /// Key of a seat's hold.
    pub fn hold_key(&self, seat_id: i64) -> String {
        format!("concert:{}:seat:hold:{seat_id}", self.namespace)
    }

    /// Issues an active queue token for `user_id`; returns it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn issue_token(&self, user_id: i64) -> redis::RedisResult<String> {
        let token = uuid::Uuid::now_v7().to_string();
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(self.token_key(user_id))
            .arg(&token)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async::<()>(&mut c)
            .await?;
        Ok(token)
    }

    /// Whether `token` is the active queue token of `user_id`.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn token_is_active(&self, user_id: i64, token: &str) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let current: Option<String> = redis::cmd("GET").arg(self.token_key(user_id)).query_async(&mut c).await?;
        Ok(current.as_deref() == Some(token))
    }

    /// Holds `seat_id` for `user_id` (`SET NX` with TTL); false when someone holds it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn hold_seat(&self, seat_id: i64, user_id: i64) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let r: Option<String> = redis::cmd("SET")
            .arg(self.hold_key(seat_id))
            .arg(user_id)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        Ok(r.is_some())
    }

    /// Releases the hold of `seat_id` if `user_id` still owns it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn release_hold(&self, seat_id: i64, user_id: i64) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 =
            Script::new(DELETE_IF_EQUALS).key(self.hold_key(seat_id)).arg(user_id).invoke_async(&mut c).await?;
        Ok(n == 1)
    }

    /// Expires the active token of `user_id` if it is still `token` (a newer token of
    /// the same user is left alone).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn expire_token(&self, user_id: i64, token: &str) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = Script::new(DELETE_IF_EQUALS).key(self.token_key(user_id)).arg(token).invoke_async(&mut c).await?;
        Ok(n == 1)
    }

    /// How many of `keys` exist.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn count_existing(&self, keys: &[String]) -> redis::RedisResult<u64> {
        let mut total = 0;
        let mut c = self.conn.clone();
        for chunk in keys.chunks(500) {
            let n: u64 = redis::cmd("EXISTS").arg(chunk).query_async(&mut c).await?;
            total += n;
        }
        Ok(total)
    }
}
