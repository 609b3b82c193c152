//! # reliable-kafka
//!
//! Reliable Kafka messaging between Rust services, on `rdkafka`, `sqlx` and `tokio`,
//! with PostgreSQL for production or SQLite embedded ([`Backend`]):
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
//! - **Re-drive** ([`DeadLetterRedriver`]): re-publishes dead-lettered records to their
//!   topic on an interval, a bounded number of times, then parks them in a table.
//!
//! ## Guarantees
//!
//! 1. No committed business change loses its event (outbox + at-least-once relay).
//! 2. Database effects of a handler happen once per message id and consumer group.
//! 3. A partition's offset moves past a record only after the record succeeded, was a
//!    duplicate, or was dead-lettered.
//!
//! Not guaranteed: effects outside the handler's transaction (HTTP calls, Redis)
//! happen at least once; per-key order after a record exhausted the relay's send
//! attempts.
//!
//! ```no_run
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
//! let relay = OutboxRelay::builder(pool.clone(), kafka.clone()).build()?.spawn();
//! let consumer = ListenerContainer::builder(kafka, pool.clone()).handler(compensate).build()?.spawn();
//!
//! let mut tx = pool.begin().await?;
//! Outbox::new().enqueue(&mut tx, &PaymentFailed { payment_id: 7 }).await?;
//! tx.commit().await?;
//! # consumer.shutdown().await?; relay.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

/// A fail point of the `failpoints` feature; nothing without it.
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Whether the `failpoints` feature's switch `name` is on (`fail::cfg(name, "return")`):
/// a switch that turns one of the library's mechanisms off, for harnesses that prove
/// the mechanism is needed. Always false without the feature.
#[allow(unused_variables)]
pub(crate) fn sabotaged(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

mod backend;
mod backoff;
mod consumer;
mod embedded;
mod error;
mod event;
pub mod headers;
mod kafka;
mod outbox;
mod redrive;
mod schema;

pub use backend::{AnyPool, Backend, BackendConnection, Postgres, Sqlite};
pub use backoff::{
    BackOff, ExponentialBackOff, ExponentialBackOffBuilder, FixedBackOff, IntoBackOff, MAX_ATTEMPTS, MAX_DELAY,
};
pub use consumer::{
    ContainerHandle, ContainerStats, DeadLetterInfo, DeadLetterReason, EventHandler, HandlerContext, HandlerError,
    HandlerOptions, ListenerContainer, ListenerContainerBuilder, RecordInfo, DEFAULT_DEAD_LETTER_SUFFIX,
};
pub use embedded::{EmbeddedKafka, MockFault};
pub use error::{BoxError, ConfigError, Error};
pub use event::{Codec, CodecError, Event, JsonCodec};
pub use kafka::{KafkaConfig, DEFAULT_BROKERS};
pub use outbox::{EnqueueOptions, Outbox, OutboxRelay, OutboxRelayBuilder, RelayBatch, RelayHandle, RelayStats};
pub use redrive::{
    DeadLetterRedriver, DeadLetterRedriverBuilder, RedriveHandle, RedriveReport, RedriveStats, REDRIVE_COUNT,
};
pub use schema::{
    migrate, migrator, DEFAULT_OUTBOX_TABLE, DEFAULT_PARKED_TABLE, DEFAULT_PROCESSED_TABLE, NOTIFY_CHANNEL,
};

pub(crate) use consumer::report as report_chain;

/// The `rdkafka` this crate is built on, for its types in this API (the error codes
/// of [`MockFault`], say) without a second, possibly different, version.
pub use rdkafka;
/// The shutdown signal taken by [`ListenerContainer::run`] and [`OutboxRelay::run`]
/// (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;

/// The error and its whole `source()` chain, `": "`-separated: the form written to the
/// `kafka_dlt-exception-message` header and to logs.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    report_chain(e)
}

#[cfg(feature = "macros")]
#[doc(inline)]
pub use reliable_kafka_macros::{event_handler, Event};

/// Re-exports for the generated code of the macros. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use std::boxed::Box;

    /// Boxes a handler's future; the bound names the return type a handler must have.
    pub fn handler_future<'a, F>(f: F) -> BoxFuture<'a, Result<(), crate::HandlerError>>
    where
        F: std::future::Future<Output = Result<(), crate::HandlerError>> + Send + 'a,
    {
        Box::pin(f)
    }
    pub use std::option::Option;
    pub use std::string::{String, ToString};

    pub use crate::consumer::fuzz_decode_record;
}
