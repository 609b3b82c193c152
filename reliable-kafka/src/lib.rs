//! # reliable-kafka
//!
//! Reliable Kafka messaging between Rust services, on `rdkafka`, `sqlx` and `tokio`,
//! with PostgreSQL for production, MySQL/MariaDB, or SQLite embedded ([`Backend`]):
//!
//! - **Transactional outbox** ([`Outbox`]): an event is written in the same
//!   database transaction as the business change, so it exists if and only if the
//!   change committed.
//! - **Outbox relay** ([`OutboxRelay`]): publishes committed outbox rows with the
//!   idempotent producer (`acks=all`), in per-key order, without skipping rows whose
//!   transaction committed late, safe with several instances.
//! - **Idempotent consumer** ([`ListenerContainer`]): records the message id in a
//!   deduplication table in the same transaction as the handler's effects, so a
//!   redelivered message changes the database once.
//! - **Retry and dead-lettering**: handlers classify failures ([`HandlerError`]);
//!   [`FixedBackOff`] and [`ExponentialBackOff`] decide the retries; then the record
//!   goes to a dead-letter topic with Spring Kafka-compatible `kafka_dlt-*` headers.
//!   A record that cannot be decoded goes there at once.
//! - **Retries that never stall a partition**: while a record waits for its next
//!   attempt its partition is paused and polling goes on (waits of any length);
//!   non-blocking [`RetryTopics`] with Spring Kafka's names and headers; key-blocking
//!   retry (`HandlerOptions::key_blocking`: only the failing key waits, in a table);
//!   a [`CircuitBreaker`] per handler that holds records while the downstream is down.
//!
//!   | mode | what waits | order |
//!   |---|---|---|
//!   | back-off (default) | the record's partition, paused | kept |
//!   | retry topics | nothing: the record moves to a retry topic | not kept for retried records |
//!   | key-blocking | the record's key on its partition | kept per key |
//!   | circuit breaker | the handler's partitions while open | kept |
//! - **Re-drive** ([`DeadLetterRedriver`]): re-publishes dead-lettered records to their
//!   topic on an interval, a bounded number of times, then parks them in a table.
//!
//! ## Guarantees
//!
//! 1. No committed business change loses its event (outbox + at-least-once relay).
//! 2. Database effects of a handler happen once per message id and consumer group.
//! 3. A partition's offset moves past a record only after the record succeeded, was a
//!    duplicate, was dead-lettered, went to its next retry topic, or was written to
//!    the key-blocking table.
//!
//! Not guaranteed: effects outside the handler's transaction (HTTP calls, Redis)
//! happen at least once; per-key order after a record exhausted the relay's send
//! attempts.
//!
//! ## Workers
//!
//! The relay, the container and the re-driver share one lifecycle: `builder(kafka,
//! pool)…build()?`, then `run(shutdown)` or `spawn()`, which returns a
//! [`WorkerHandle`] with `stats()` and `shutdown()`.
//!
//! ## Cargo features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `postgres` | yes | the PostgreSQL backend ([`Postgres`]) |
//! | `mysql` | no | the MySQL and MariaDB backend ([`MySql`]) |
//! | `sqlite` | no | the SQLite backend ([`Sqlite`]) |
//! | `macros` | yes | `#[derive(Event)]`, `#[event_handler]` |
//! | `embedded` | no | `EmbeddedKafka`: librdkafka's in-process mock cluster |
//! | `redis` | no | `RedisDedup`: Redis as a handler's deduplication store, its writes in one `MULTI`/`EXEC` with the claim |
//! | `testing` | no | fail points, sabotage switches, the fuzz entry, the stubbed relay (`testing`); never in production |
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "macros"))] mod doc {
//! use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError, KafkaConfig, ListenerContainer, Outbox, OutboxRelay};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(topic = "payment.failed", key = payment_id)]
//! struct PaymentFailed { payment_id: i64 }
//!
//! #[event_handler(group = "payment-compensator-group", backoff = reliable_kafka::FixedBackOff::new(std::time::Duration::from_millis(200), 3))]
//! async fn compensate(event: PaymentFailed, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
//!     sqlx::query("UPDATE payment SET status = 'FAILED' WHERE id = $1")
//!         .bind(event.payment_id)
//!         .execute(ctx.tx())
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://127.0.0.1/app").await?;
//! reliable_kafka::migrate(&pool).await?;
//! let kafka = KafkaConfig::from_env();
//! let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build()?.spawn();
//! let consumer = ListenerContainer::builder(kafka, pool.clone()).handler(compensate).build()?.spawn();
//!
//! let mut tx = pool.begin().await?;
//! Outbox::new().enqueue(&mut tx, &PaymentFailed { payment_id: 7 }).await?;
//! tx.commit().await?;
//! # consumer.shutdown().await?; relay.shutdown().await?;
//! # Ok(()) }
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[macro_use]
mod fault;

mod backoff;
mod consumer;
#[cfg(feature = "embedded")]
mod embedded;
mod envelope;
mod error;
mod event;
mod health;
mod kafka;
mod ops;
mod outbox;
mod redrive;
mod schema;
mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

pub use backoff::{
    BackOff, ExponentialBackOff, ExponentialBackOffBuilder, FixedBackOff, IntoBackOff, MAX_ATTEMPTS, MAX_DELAY,
};
pub use consumer::{
    CircuitBreaker, CircuitState, ContainerHandle, ContainerStats, EventHandler, HandlerContext, HandlerError,
    HandlerFault, HandlerOptions, ListenerContainer, ListenerContainerBuilder, RecordInfo, RetryTopics, RetryTopicsArg,
    UnexpectedRecord, UnknownEventType, DEFAULT_COMMIT_INTERVAL, DEFAULT_DEAD_LETTER_SUFFIX, DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_PROCESSED_RETENTION, MAX_BATCH, MAX_PARTITION_CONCURRENCY, MAX_RETRY_TOPICS, PRUNE_INTERVAL,
};
#[cfg(feature = "redis")]
pub use consumer::{RedisDedup, RedisTx, REDIS_DEDUP_DEFAULT_PREFIX, REDIS_DEDUP_DEFAULT_TTL};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedKafka, MockFault};
pub use envelope::{
    headers, DeadLetterInfo, DeadLetterReason, Envelope, EnvelopeError, Identity, IdentityError, IdentityFn,
    IdentitySource, RecordView, TimestampType,
};
pub use error::{is_transient_sqlx, report, BoxError, ConfigError, Error, ErrorKind};
pub use event::{Codec, CodecError, Event, JsonCodec};
pub use health::{Health, HealthStatus, WorkerHealth, STATISTICS_INTERVAL};
pub use kafka::{KafkaConfig, TopicSpec, DEFAULT_BROKERS};
pub use ops::{
    decode_header, read_dead_letters, DeadLetterFilter, DeadLetterRecord, Operations, PayloadView, ReplayReport,
    TopicBacklog,
};
pub use outbox::{
    EnqueueOptions, HeaderFormat, Outbox, OutboxRelay, OutboxRelayBuilder, RelayBatch, RelayHandle, RelayStats,
    DEFAULT_MAX_PENDING_AGE, MAX_SHARDS,
};
#[allow(deprecated)]
pub use redrive::REDRIVE_COUNT;
pub use redrive::{
    DeadLetterRedriver, DeadLetterRedriverBuilder, RedriveFilter, RedriveHandle, RedriveReport, RedriveStats,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_RUN_TIME, DEFAULT_REDRIVE_INTERVAL,
};
pub use schema::{
    migrate, migrator, DEFAULT_OUTBOX_TABLE, DEFAULT_PARKED_TABLE, DEFAULT_PROCESSED_TABLE, NOTIFY_CHANNEL,
};
pub use store::ops::AuditEntry;
pub use store::outbox::OutboxBacklog;
pub use store::park::ParkedMessage;
#[cfg(feature = "mysql")]
pub use store::MySql;
#[cfg(feature = "postgres")]
pub use store::Postgres;
pub use store::{begin_write, AnyPool, Backend, BackendConnection, DefaultBackend};
#[cfg(feature = "postgres")]
pub use store::{ShardLease, MAX_LEASE_SHARDS};
#[cfg(feature = "sqlite")]
pub use store::{Sqlite, SQLITE_BUSY_TIMEOUT};
pub use worker::{
    HealthProbe, WorkerHandle, CONSUMER_CLOSE_TIMEOUT, FINAL_COMMIT_TIMEOUT, INFRASTRUCTURE_BACKOFF_MAX,
    INFRASTRUCTURE_BACKOFF_MIN, PRODUCER_FLUSH_TIMEOUT,
};

/// The `rdkafka` this crate is built on, for its types in this API (the error codes
/// of `MockFault`, say) without a second, possibly different, version.
pub use rdkafka;
/// The shutdown signal taken by the workers' `run` (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "macros")]
#[doc(inline)]
pub use reliable_kafka_macros::{event_handler, Event};

/// Re-exports for the generated code of the macros. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::consumer::handler::handler_future;
    pub use futures::future::BoxFuture;
    pub use std::boxed::Box;
    pub use std::option::Option;
    pub use std::string::{String, ToString};

    /// Referenced by `#[event_handler(dlq = …)]` so that the old key warns.
    #[deprecated(since = "0.2.0", note = "the `dlq` argument of `#[event_handler]` is renamed `dead_letter_topic`")]
    pub const DEPRECATED_DLQ_ARGUMENT: () = ();
}
