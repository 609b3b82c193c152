//! The waiting-queue token and the temporary seat hold: a key-value store with TTL,
//! set-if-absent and compare-and-delete, on Redis ([`RedisKv`]) or, when `REDIS_URL`
//! is unset, in process ([`MemoryKv`]), behind one trait ([`KeyValue`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
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

/// A distributed lock taken by [`Store::lock`]: its key and the token that proves
/// ownership. Release it with [`Store::unlock`]; dropped, it lapses after its TTL.
#[derive(Debug)]
#[must_use = "release the lock with Store::unlock"]
pub struct Lock {
    key: String,
    token: String,
}

/// Errors of the key-value store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis failed or could not be reached.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
}

/// The operations the application needs, with Redis semantics.
pub trait KeyValue: Send + Sync + std::fmt::Debug {
    /// `SET key value PX ttl`.
    fn set<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>>;
    /// `SET key value NX PX ttl`: true when set, false when the key exists.
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// `GET key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Deletes `key` only if it holds `value`; true when deleted.
    fn delete_if_equals<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// How many of `keys` exist.
    fn count_existing<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Redis.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connects to `url`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(RedisKv { conn: redis::Client::open(url)?.get_connection_manager().await? })
    }
}

impl KeyValue for RedisKv {
    fn set<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async::<()>(&mut c)
                .await?;
            Ok(())
        })
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let r: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut c)
                .await?;
            Ok(r.is_some())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            Ok(redis::cmd("GET").arg(key).query_async(&mut c).await?)
        })
    }

    fn delete_if_equals<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let n: i64 = Script::new(DELETE_IF_EQUALS).key(key).arg(value).invoke_async(&mut c).await?;
            Ok(n == 1)
        })
    }

    fn count_existing<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut total = 0;
            let mut c = self.conn.clone();
            for chunk in keys.chunks(500) {
                let n: u64 = redis::cmd("EXISTS").arg(chunk).query_async(&mut c).await?;
                total += n;
            }
            Ok(total)
        })
    }
}

/// In process: a map of values with deadlines, the same semantics as [`RedisKv`]
/// (expired keys are absent; each operation is atomic). Nothing survives the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryKv {
    map: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>, Instant) -> T) -> T {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 10_000 {
            map.retain(|_, (_, deadline)| *deadline > now);
        }
        f(&mut map, now)
    }
}

fn live<'m>(map: &'m HashMap<String, (String, Instant)>, key: &str, now: Instant) -> Option<&'m str> {
    map.get(key).filter(|(_, deadline)| *deadline > now).map(|(v, _)| v.as_str())
}

impl KeyValue for MemoryKv {
    fn set<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|m, now| m.insert(key.to_owned(), (value.to_owned(), now + ttl)));
        Box::pin(async { Ok(()) })
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let set = self.with(|m, now| {
            if live(m, key, now).is_some() {
                return false;
            }
            m.insert(key.to_owned(), (value.to_owned(), now + ttl));
            true
        });
        Box::pin(async move { Ok(set) })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let v = self.with(|m, now| live(m, key, now).map(str::to_owned));
        Box::pin(async move { Ok(v) })
    }

    fn delete_if_equals<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let deleted = self.with(|m, now| {
            if live(m, key, now) == Some(value) {
                m.remove(key);
                true
            } else {
                false
            }
        });
        Box::pin(async move { Ok(deleted) })
    }

    fn count_existing<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let n = self.with(|m, now| keys.iter().filter(|k| live(m, k, now).is_some()).count() as u64);
        Box::pin(async move { Ok(n) })
    }
}

/// Queue tokens and seat holds.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn KeyValue>,
    ttl: Duration,
    namespace: String,
    /// The Redis server of a store on Redis.
    redis: Option<redis::Client>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("kv", &self.kv).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Store {
    /// A store on `kv`; holds and tokens expire after `ttl` on their own. Keys start
    /// with `concert:<namespace>:`, so that deployments (or tests) sharing a Redis server
    /// with their own databases do not see each other's holds.
    pub fn new(kv: Arc<dyn KeyValue>, ttl: Duration, namespace: &str) -> Self {
        Store { kv, ttl, namespace: namespace.to_owned(), redis: None }
    }

    /// A store on Redis at `url`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect(url: &str, ttl: Duration, namespace: &str) -> Result<Self, StoreError> {
        let store = Store::new(Arc::new(RedisKv::connect(url).await?), ttl, namespace);
        Ok(Store { redis: Some(redis::Client::open(url)?), ..store })
    }

    /// The Redis server, when the store is on Redis (not in process).
    pub fn redis_client(&self) -> Option<&redis::Client> {
        self.redis.as_ref()
    }

    /// Prefix of the keys of processed message ids of the consumer groups deduplicated
    /// in Redis: `concert:<namespace>:processed`.
    pub fn processed_prefix(&self) -> String {
        format!("concert:{}:processed", self.namespace)
    }

    /// An in-process store.
    pub fn in_memory(ttl: Duration, namespace: &str) -> Self {
        Store::new(Arc::new(MemoryKv::new()), ttl, namespace)
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
    /// Store errors.
    pub async fn issue_token(&self, user_id: i64) -> Result<String, StoreError> {
        let token = uuid::Uuid::now_v7().to_string();
        self.kv.set(&self.token_key(user_id), &token, self.ttl).await?;
        Ok(token)
    }

    /// Whether `token` is the active queue token of `user_id`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn token_is_active(&self, user_id: i64, token: &str) -> Result<bool, StoreError> {
        Ok(self.kv.get(&self.token_key(user_id)).await?.as_deref() == Some(token))
    }

    /// Holds `seat_id` for `user_id` (set-if-absent with TTL): `Some(true)` when this
    /// call set the hold, `Some(false)` when the user already held it (a request retried
    /// after a lost answer is not refused), `None` when someone else holds it.
    ///
    /// # Errors
    /// Store errors.
    pub async fn hold_seat(&self, seat_id: i64, user_id: i64) -> Result<Option<bool>, StoreError> {
        let key = self.hold_key(seat_id);
        let me = user_id.to_string();
        if self.kv.set_if_absent(&key, &me, self.ttl).await? {
            return Ok(Some(true));
        }
        Ok((self.kv.get(&key).await?.as_deref() == Some(me.as_str())).then_some(false))
    }

    /// Releases the hold of `seat_id` if `user_id` still owns it.
    ///
    /// # Errors
    /// Store errors.
    pub async fn release_hold(&self, seat_id: i64, user_id: i64) -> Result<bool, StoreError> {
        self.kv.delete_if_equals(&self.hold_key(seat_id), &user_id.to_string()).await
    }

    /// Expires the active token of `user_id` if it is still `token` (a newer token of
    /// the same user is left alone).
    ///
    /// # Errors
    /// Store errors.
    pub async fn expire_token(&self, user_id: i64, token: &str) -> Result<bool, StoreError> {
        self.kv.delete_if_equals(&self.token_key(user_id), token).await
    }

    /// Key of the distributed lock `name`.
    pub fn lock_key(&self, name: &str) -> String {
        format!("concert:{}:lock:{name}", self.namespace)
    }

    /// Takes the distributed lock `name` (seed 001): `SET key token NX PX ttl` with a
    /// fresh random token, tried again after 2 ms, doubling to 20 ms, until `wait` has
    /// passed. The lock lapses after `ttl` (ms precision) if its holder dies; a holder
    /// that outlives its `ttl` is no longer protected, so the caller's writes need a
    /// fence of their own (a unique constraint, a conditional update). `None` when
    /// another holder kept it for all of `wait`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn lock(&self, name: &str, ttl: Duration, wait: Duration) -> Result<Option<Lock>, StoreError> {
        let key = self.lock_key(name);
        let token = uuid::Uuid::now_v7().to_string();
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            if self.kv.set_if_absent(&key, &token, ttl).await? {
                return Ok(Some(Lock { key, token }));
            }
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Releases `lock` if it is still this holder's (compare-and-delete on its token):
    /// false when it had lapsed, and maybe been taken by someone else, whose lock is
    /// left alone.
    ///
    /// # Errors
    /// Store errors (the lock then lapses after its TTL).
    pub async fn unlock(&self, lock: Lock) -> Result<bool, StoreError> {
        self.kv.delete_if_equals(&lock.key, &lock.token).await
    }

    /// How many of `keys` exist.
    ///
    /// # Errors
    /// Store errors.
    pub async fn count_existing(&self, keys: &[String]) -> Result<u64, StoreError> {
        self.kv.count_existing(keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lock_excludes_others_until_released_and_a_lapsed_holder_cannot_release_its_successor() {
        let store = Store::in_memory(Duration::from_secs(60), "t");
        let ttl = Duration::from_millis(100);
        let first = store.lock("coupon:1", ttl, Duration::ZERO).await.unwrap().expect("free");
        assert!(store.lock("coupon:1", ttl, Duration::from_millis(30)).await.unwrap().is_none(), "held");
        assert!(store.lock("coupon:2", ttl, Duration::ZERO).await.unwrap().is_some(), "another name is free");
        assert!(store.unlock(first).await.unwrap());
        let second = store.lock("coupon:1", ttl, Duration::ZERO).await.unwrap().expect("released");
        // The holder outlives its TTL; a waiter takes the lock; the late release spares it.
        let third = store.lock("coupon:1", ttl, Duration::from_millis(500)).await.unwrap().expect("lapsed");
        assert!(!store.unlock(second).await.unwrap(), "lapsed: not the holder any more");
        assert_eq!(store.kv.get(&store.lock_key("coupon:1")).await.unwrap().as_deref(), Some(third.token.as_str()));
        assert!(store.unlock(third).await.unwrap());
    }

    #[tokio::test]
    async fn memory_store_has_redis_semantics() {
        let kv = MemoryKv::new();
        assert!(kv.set_if_absent("k", "a", Duration::from_millis(50)).await.unwrap());
        assert!(!kv.set_if_absent("k", "b", Duration::from_secs(1)).await.unwrap(), "NX keeps the holder");
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("a"));
        assert!(!kv.delete_if_equals("k", "b").await.unwrap(), "compare-and-delete spares another holder");
        assert_eq!(kv.count_existing(&["k".into(), "x".into()]).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(kv.get("k").await.unwrap(), None, "expired after its TTL");
        assert!(kv.set_if_absent("k", "b", Duration::from_secs(1)).await.unwrap());
        assert!(kv.delete_if_equals("k", "b").await.unwrap());
        assert_eq!(kv.count_existing(&["k".into()]).await.unwrap(), 0);
    }
}
