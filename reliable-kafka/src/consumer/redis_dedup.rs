//! The idempotent consumer with Redis as its deduplication store (feature `redis`):
//! a handler whose effects are Redis writes claims the message id in the same Redis
//! transaction as those writes, so it needs no database at all. Seed 000's fault
//! isolation: while the database is down, a Redis cleanup keeps completing.
//!
//! One attempt, on a connection of its own (`WATCH` state belongs to a connection):
//! `WATCH <key>` and `EXISTS <key>` (a duplicate ends here); the handler reads (and
//! `WATCH`es what it reads) through [`RedisTx::connection`] and queues its writes in
//! [`RedisTx::pipeline`]; then `MULTI`, the writes, `SET <key> 1 PX <ttl>`, `EXEC`. When a
//! watched key changed in between, `EXEC` does nothing and the attempt runs again
//! (it is then a duplicate if another member claimed the id meanwhile).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use super::handler::AnyEvent;
use super::pipeline::{AttemptError, Pipeline, Stop};
use super::routes::Route;
use crate::{Backend, Error, HandlerContext, RecordInfo};

/// How long a processed message id is remembered by default: 7 days, as the
/// database store's [`crate::DEFAULT_PROCESSED_RETENTION`].
pub const REDIS_DEDUP_DEFAULT_TTL: Duration = crate::DEFAULT_PROCESSED_RETENTION;

/// Default prefix of the keys of processed message ids: keys are
/// `rk:processed:<group>:<message id>`.
pub const REDIS_DEDUP_DEFAULT_PREFIX: &str = "rk:processed";

/// Connections kept open between attempts.
const IDLE_CONNECTIONS: usize = 16;

/// Connect and response timeout of the store's connections.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Redis as a handler's deduplication store ([`crate::HandlerOptions::redis_dedup`]):
/// the message id is claimed with a key `<prefix>:<group>:<message id>` that expires
/// after the TTL, written in one `MULTI`/`EXEC` with the handler's own Redis writes
/// (queued in [`HandlerContext::redis`]), so both happen or neither does. The handler
/// gets no database transaction ([`HandlerContext::tx`] panics).
///
/// A record redelivered after its key expired is processed again: keep the TTL longer
/// than any redelivery (a consumer lag, a re-drive). A re-driven record keeps its
/// message id and is skipped while the key lives, as with the database store.
///
/// ```no_run
/// # fn f() -> Result<(), redis::RedisError> {
/// use std::time::Duration;
/// use reliable_kafka::{HandlerOptions, RedisDedup};
/// let dedup = RedisDedup::new(redis::Client::open("redis://127.0.0.1:6379")?)
///     .ttl(Duration::from_secs(24 * 3600));
/// let options = HandlerOptions::new().redis_dedup(dedup);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDedup {
    client: redis::Client,
    ttl: Duration,
    prefix: Arc<str>,
    idle: Arc<Mutex<Vec<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedup")
            .field("server", &self.client.get_connection_info().addr)
            .field("ttl", &self.ttl)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDedup {
    /// A store on the server of `client`, with [`REDIS_DEDUP_DEFAULT_TTL`] and
    /// [`REDIS_DEDUP_DEFAULT_PREFIX`]. Connections are opened when records arrive.
    pub fn new(client: redis::Client) -> Self {
        RedisDedup {
            client,
            ttl: REDIS_DEDUP_DEFAULT_TTL,
            prefix: Arc::from(REDIS_DEDUP_DEFAULT_PREFIX),
            idle: Arc::default(),
        }
    }

    /// How long a processed message id is remembered (ms precision; at least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The prefix of the keys (default [`REDIS_DEDUP_DEFAULT_PREFIX`]).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The key of a processed message id of `group`.
    pub fn key(&self, group: &str, message_id: Uuid) -> String {
        format!("{}:{group}:{message_id}", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Error> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(REDIS_TIMEOUT)
                    .set_response_timeout(REDIS_TIMEOUT);
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(Error::redis("connect to the Redis deduplication store"))
            }
        }
    }

    fn give_back(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    /// Watches and checks the key of `message_id`: `None` when it was processed.
    async fn begin(&self, group: &str, message_id: Uuid) -> Result<Option<RedisTx>, Error> {
        let mut conn = self.connection().await?;
        let key = self.key(group, message_id);
        let seen: bool = redis::pipe()
            .cmd("WATCH")
            .arg(&key)
            .ignore()
            .exists(&key)
            .query_async::<(bool,)>(&mut conn)
            .await
            .map(|(seen,)| seen)
            .map_err(Error::redis("check the message id in Redis"))?;
        if seen {
            let _: Result<(), _> = redis::cmd("UNWATCH").query_async(&mut conn).await;
            self.give_back(conn);
            return Ok(None);
        }
        Ok(Some(RedisTx { conn, pipe: redis::pipe(), key }))
    }

    /// Runs the handler's writes and the claim in one `MULTI`/`EXEC`; `false` when
    /// `EXEC` was aborted because a watched key changed.
    async fn commit(&self, mut tx: RedisTx) -> Result<bool, Error> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        tx.pipe.atomic().cmd("SET").arg(&tx.key).arg(1).arg("PX").arg(ttl_ms).ignore();
        let reply: redis::Value =
            tx.pipe.query_async(&mut tx.conn).await.map_err(Error::redis("commit the handler's Redis transaction"))?;
        self.give_back(tx.conn);
        Ok(reply != redis::Value::Nil)
    }

    /// Ends an attempt that will not commit: forgets the watches, keeps the connection.
    async fn abandon(&self, mut tx: RedisTx) {
        if redis::cmd("UNWATCH").query_async::<()>(&mut tx.conn).await.is_ok() {
            self.give_back(tx.conn);
        }
    }
}

/// A handler's Redis transaction under [`RedisDedup`] ([`HandlerContext::redis`]):
/// reads on [`RedisTx::connection`], writes queued in [`RedisTx::pipeline`], which runs
/// in one `MULTI`/`EXEC` with the claim of the message id after the handler returns
/// `Ok`. A handler that decides on what it read watches it first
/// ([`RedisTx::watch`]): if it changes before `EXEC`, nothing is written and the
/// attempt runs again.
pub struct RedisTx {
    conn: MultiplexedConnection,
    pipe: redis::Pipeline,
    key: String,
}

impl std::fmt::Debug for RedisTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTx").field("key", &self.key).field("queued", &self.pipe.len()).finish_non_exhaustive()
    }
}

impl RedisTx {
    /// A transaction on `conn` with nothing queued: to call a handler directly in a
    /// unit test ([`HandlerContext::with_redis`]); take the queued writes back with
    /// [`RedisTx::into_pipeline`]. The container makes its own.
    pub fn new(conn: MultiplexedConnection) -> Self {
        RedisTx { conn, pipe: redis::pipe(), key: String::new() }
    }

    /// The writes queued, not sent.
    pub fn into_pipeline(self) -> redis::Pipeline {
        self.pipe
    }

    /// A connection of this attempt alone, for reads (`GET`, `HGET`, …). Writes sent
    /// here take effect at once and outside the transaction: queue them in
    /// [`RedisTx::pipeline`] instead.
    pub fn connection(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// The writes, run in `MULTI`/`EXEC` with the claim of the message id (their
    /// replies are not read).
    pub fn pipeline(&mut self) -> &mut redis::Pipeline {
        &mut self.pipe
    }

    /// `WATCH`es `keys`: when one changes before `EXEC`, the writes are dropped and
    /// the attempt runs again.
    ///
    /// # Errors
    /// The Redis error, to return from the handler as a transient failure.
    pub async fn watch(&mut self, keys: &[&str]) -> redis::RedisResult<()> {
        redis::cmd("WATCH").arg(keys).query_async(&mut self.conn).await
    }
}

impl<DB: Backend> Pipeline<DB> {
    /// One attempt of a handler with [`RedisDedup`]; `Ok(true)` when the message id
    /// was already processed. No database transaction is opened.
    pub(crate) async fn attempt_in_redis(
        &self,
        dedup: &RedisDedup,
        event: AnyEvent,
        route: &Route<DB>,
        info: &RecordInfo,
        attempt: u32,
        stop: Stop<'_>,
    ) -> Result<bool, AttemptError> {
        let Some(tx) = dedup.begin(&self.group, info.message_id).await.map_err(AttemptError::Infrastructure)? else {
            tracing::debug!(group = %self.group, message_id = %info.message_id, "duplicate delivery skipped (Redis)");
            return Ok(true);
        };
        let mut ctx = HandlerContext::open(None, Some(tx), info.clone(), attempt, self.group.clone());
        let called = self.call_handler(route, event, &mut ctx, info, attempt, stop).await;
        let tx = ctx.redis.take().expect("the context keeps its Redis transaction");
        if let Err(e) = called {
            dedup.abandon(tx).await;
            return Err(e);
        }
        if stop.revoked.is_cancelled() {
            dedup.abandon(tx).await;
            return Err(AttemptError::Cancelled);
        }
        fault_point!(crate::fault::CONSUMER_BEFORE_COMMIT);
        if !dedup.commit(tx).await.map_err(AttemptError::Infrastructure)? {
            return Err(AttemptError::Infrastructure(Error::Redis {
                operation: "commit the handler's Redis transaction",
                source: redis::RedisError::from((
                    redis::ErrorKind::ExecAbortError,
                    "EXEC aborted: a watched key changed; the attempt runs again",
                )),
            }));
        }
        fault_point!(crate::fault::CONSUMER_AFTER_COMMIT);
        Ok(false)
    }
}
