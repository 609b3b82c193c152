//! The listener container: one consumer group, typed handlers, idempotent processing,
//! retry, dead-lettering and offset management.
//!
//! | file | what |
//! |---|---|
//! | `builder.rs` | settings and their validation |
//! | `container.rs` | the poll loop, offsets, rebalances |
//! | `scheduler.rs` | partitions processed concurrently, in order each |
//! | `routes.rs` | a topic's route table: handlers by event type, identity source |
//! | `pipeline.rs` | one batch, one record, one attempt |
//! | `retry.rs` | after a failed attempt: wait, retry topic or dead-letter topic |
//! | `paused.rs` | failing records between attempts; partitions paused meanwhile |
//! | `key_blocking.rs` | key-blocking retry: deferring behind a key, the retrier |
//! | `breaker.rs` | [`CircuitBreaker`] |
//! | `retry_topics.rs` | [`RetryTopics`]: names and headers |
//! | `dead_letter.rs` | publishing to the dead-letter topic and the retry topics |
//! | `handler.rs` | [`EventHandler`], [`HandlerError`], [`HandlerOptions`] |
//! | `context.rs` | [`HandlerContext`], [`RecordInfo`] |
//! | `stats.rs` | [`ContainerStats`] |
//! | `prune.rs` | retention of the deduplication table |
//! | `redis_dedup.rs` | [`RedisDedup`]: deduplication in Redis (feature `redis`) |

mod breaker;
mod builder;
mod container;
mod context;
mod dead_letter;
pub(crate) mod handler;
mod key_blocking;
mod paused;
mod pipeline;
mod prune;
#[cfg(feature = "redis")]
mod redis_dedup;
mod retry;
mod retry_topics;
mod routes;
mod scheduler;
mod stats;
pub(crate) mod watermark;

pub use breaker::{CircuitBreaker, CircuitState};
pub use builder::{
    ListenerContainerBuilder, DEFAULT_COMMIT_INTERVAL, DEFAULT_DEAD_LETTER_SUFFIX, DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_PROCESSED_RETENTION, MAX_BATCH, MAX_PARTITION_CONCURRENCY,
};
pub use container::{ContainerHandle, ListenerContainer};
pub use context::{HandlerContext, RecordInfo};
pub use handler::{EventHandler, HandlerError, HandlerFault, HandlerOptions, RetryTopicsArg};
pub use pipeline::UnexpectedRecord;
pub use prune::PRUNE_INTERVAL;
#[cfg(feature = "redis")]
pub use redis_dedup::{RedisDedup, RedisTx, REDIS_DEDUP_DEFAULT_PREFIX, REDIS_DEDUP_DEFAULT_TTL};
pub use retry_topics::{RetryTopics, MAX_RETRY_TOPICS};
pub use routes::UnknownEventType;
pub use stats::ContainerStats;

#[cfg(all(test, feature = "sqlite"))]
mod tests;
