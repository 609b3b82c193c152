//! What a handler gets besides its event: [`HandlerContext`] with the open
//! transaction, and [`RecordInfo`], the record's coordinates and envelope.

use std::sync::Arc;

use sqlx::Transaction;
use uuid::Uuid;

use crate::{Backend, DefaultBackend};

/// Where a record came from and what its envelope headers say.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record timestamp, ms since the epoch, if the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Record key bytes.
    pub key: Option<Vec<u8>>,
    /// The message id the idempotent consumer deduplicates on.
    pub message_id: Uuid,
    /// Event type header.
    pub event_type: String,
    /// Schema version header.
    pub schema_version: u32,
    /// Outbox insert time, ms since the epoch, if present.
    pub produced_at_ms: Option<i64>,
    /// W3C `traceparent`, if present.
    pub traceparent: Option<String>,
}

/// What a handler gets besides its event: the open database transaction in which the
/// container has already recorded the message id, the record's coordinates, and the
/// attempt number.
///
/// Everything the handler writes through [`HandlerContext::tx`] commits together with
/// the deduplication row, or not at all. A handler deduplicated in Redis instead
/// ([`crate::HandlerOptions::redis_dedup`], feature `redis`) gets no database
/// transaction but a Redis one, [`HandlerContext::redis`].
///
/// `DB` is the backend of the container's pool: write `HandlerContext` for PostgreSQL,
/// `HandlerContext<Sqlite>` for SQLite, or keep a handler generic over `DB: Backend`
/// when it does not touch the database.
pub struct HandlerContext<DB: Backend = DefaultBackend> {
    pub(crate) tx: Option<Transaction<'static, DB>>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::RedisTx>,
    pub(crate) record: RecordInfo,
    pub(crate) attempt: u32,
    pub(crate) group: Arc<str>,
}

impl RecordInfo {
    /// A record's facts with the required ones given: partition 0, offset 0, schema
    /// version 1, the rest absent. For unit tests of handlers (see
    /// [`HandlerContext::new`]); the container fills every field from the record.
    pub fn new(topic: impl Into<String>, message_id: Uuid, event_type: impl Into<String>) -> Self {
        RecordInfo {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            message_id,
            event_type: event_type.into(),
            schema_version: 1,
            produced_at_ms: None,
            traceparent: None,
        }
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// Sets the offset.
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the key bytes.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl<DB: Backend> HandlerContext<DB> {
    /// A context on `tx` for `record`, attempt 1, group `""`: to call a handler directly
    /// in a unit test (`my_handler::call(event, &mut ctx)` for one made by
    /// `#[event_handler]`). Take the transaction back with
    /// [`HandlerContext::into_transaction`] to inspect or roll back its effects.
    pub fn new(tx: Transaction<'static, DB>, record: RecordInfo) -> Self {
        Self::open(Some(tx), None, record, 1, Arc::from(""))
    }

    /// A context with a Redis transaction and no database one, for `record`, attempt 1,
    /// group `""`: to call a handler deduplicated in Redis directly in a unit test. Take
    /// the transaction back with [`HandlerContext::into_redis`] to see the writes queued.
    #[cfg(feature = "redis")]
    pub fn with_redis(tx: crate::RedisTx, record: RecordInfo) -> Self {
        Self::open(None, Some(tx), record, 1, Arc::from(""))
    }

    /// The Redis transaction, with the writes the handler queued, not sent.
    ///
    /// # Panics
    /// When the context has no Redis transaction (the handler is deduplicated in the
    /// database).
    #[cfg(feature = "redis")]
    pub fn into_redis(self) -> crate::RedisTx {
        self.redis.expect(NO_REDIS)
    }

    /// The container's context of one attempt.
    pub(crate) fn open(
        tx: Option<Transaction<'static, DB>>,
        #[cfg(feature = "redis")] redis: Option<crate::RedisTx>,
        #[cfg(not(feature = "redis"))] _redis: Option<std::convert::Infallible>,
        record: RecordInfo,
        attempt: u32,
        group: Arc<str>,
    ) -> Self {
        HandlerContext {
            tx,
            #[cfg(feature = "redis")]
            redis,
            record,
            attempt,
            group,
        }
    }

    /// The open transaction (the container's contexts of database-deduplicated
    /// handlers always have one).
    pub(crate) fn transaction(&mut self) -> &mut Transaction<'static, DB> {
        self.tx.as_mut().expect(NO_TRANSACTION)
    }

    /// Sets the attempt number (1 for the first delivery).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the consumer group.
    pub fn with_group(mut self, group: &str) -> Self {
        self.group = Arc::from(group);
        self
    }

    /// The transaction, with what the handler wrote, uncommitted.
    ///
    /// # Panics
    /// When the handler is deduplicated in Redis (it has no database transaction).
    pub fn into_transaction(self) -> Transaction<'static, DB> {
        self.tx.expect(NO_TRANSACTION)
    }
    /// The transaction for the handler's database effects (use as `ctx.tx()` wherever
    /// sqlx takes an executor).
    ///
    /// On SQLite it holds the database's write lock until the handler returns: every
    /// write of the handler must go through it (a write through the pool would wait
    /// for this very lock until the busy timeout), and slow calls inside a handler
    /// delay every other writer.
    ///
    /// # Panics
    /// When the handler is deduplicated in Redis
    /// ([`crate::HandlerOptions::redis_dedup`]): it has no database transaction.
    pub fn tx(&mut self) -> &mut DB::Connection {
        self.transaction()
    }

    /// The Redis transaction of a handler deduplicated in Redis: reads on its
    /// connection, writes queued in its pipeline, committed in one `MULTI`/`EXEC` with
    /// the claim of the message id (see [`crate::RedisDedup`]).
    ///
    /// # Panics
    /// When the handler is deduplicated in the database (the default).
    #[cfg(feature = "redis")]
    pub fn redis(&mut self) -> &mut crate::RedisTx {
        self.redis.as_mut().expect(NO_REDIS)
    }

    /// The record's coordinates and envelope.
    pub fn record(&self) -> &RecordInfo {
        &self.record
    }

    /// The message id (shortcut for `record().message_id`).
    pub fn message_id(&self) -> Uuid {
        self.record.message_id
    }

    /// 1 on the first delivery attempt, then 2, 3, … on retries.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

#[cfg(feature = "redis")]
const NO_REDIS: &str =
    "HandlerContext::redis: this handler is deduplicated in the database, not in Redis (HandlerOptions::redis_dedup)";

const NO_TRANSACTION: &str =
    "HandlerContext::tx: this handler is deduplicated in Redis (HandlerOptions::redis_dedup) and has no database transaction";

impl<DB: Backend> std::fmt::Debug for HandlerContext<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerContext")
            .field("record", &self.record)
            .field("attempt", &self.attempt)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}
