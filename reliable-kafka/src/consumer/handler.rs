//! The handler side of the listener container: [`EventHandler`], how a handler fails
//! ([`HandlerError`], [`HandlerFault`]) and its settings ([`HandlerOptions`]).

use std::borrow::Cow;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::RetryTopics;
use crate::{BackOff, BoxError, CircuitBreaker, Codec, CodecError, ConfigError, Event, IdentitySource, IntoBackOff};
use crate::{Backend, DefaultBackend, HandlerContext, RecordInfo};

/// How a handler failed; the container decides what happens next.
///
/// - [`HandlerError::Transient`]: retried by the handler's [`BackOff`], then dead-lettered
///   with reason `retries-exhausted`.
/// - [`HandlerError::RetryAfter`]: as transient, but the next attempt waits `after`.
/// - [`HandlerError::Permanent`]: dead-lettered at once (reason `permanent-error`).
/// - [`HandlerError::Unavailable`]: the downstream is down (connection refused, HTTP
///   503). With a [`crate::CircuitBreaker`] it opens the breaker at once and uses up
///   no attempt: the record waits for the downstream; without one it is a transient
///   failure.
///
/// In every case the handler's transaction is rolled back first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A failure that may pass: a timeout, a lost connection, a deadlock.
    #[error("transient failure")]
    Transient(#[source] BoxError),
    /// A failure that retrying cannot fix: a violated invariant, invalid content.
    #[error("permanent failure")]
    Permanent(#[source] BoxError),
    /// A transient failure with a known wait, e.g. from a `Retry-After` header.
    #[error("transient failure, retry after {after:?}")]
    RetryAfter {
        /// Wait before the next attempt.
        after: Duration,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The downstream the handler calls is unavailable (an HTTP 503, a refused
    /// connection): see [`crate::CircuitBreaker`].
    #[error("downstream unavailable")]
    Unavailable(#[source] BoxError),
}

impl HandlerError {
    /// A transient failure caused by `source`.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        HandlerError::Transient(source.into())
    }

    /// A permanent failure caused by `source`.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(source.into())
    }

    /// A transient failure to retry after `after`.
    pub fn retry_after(after: Duration, source: impl Into<BoxError>) -> Self {
        HandlerError::RetryAfter { after, source: source.into() }
    }

    /// The downstream is unavailable: opens the handler's circuit breaker at once
    /// (transient without one).
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        HandlerError::Unavailable(source.into())
    }

    /// The variant's Rust path, written to the `kafka_dlt-exception-fqcn` header.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "reliable_kafka::HandlerError::Transient",
            HandlerError::Permanent(_) => "reliable_kafka::HandlerError::Permanent",
            HandlerError::RetryAfter { .. } => "reliable_kafka::HandlerError::RetryAfter",
            HandlerError::Unavailable(_) => "reliable_kafka::HandlerError::Unavailable",
        }
    }

    /// Whether the container may retry.
    pub fn is_transient(&self) -> bool {
        !matches!(self, HandlerError::Permanent(_))
    }
}

/// Classifies database errors so `?` on sqlx calls in a handler does the right thing:
/// what [`crate::is_transient_sqlx`] calls transient (lost connections, pool timeouts,
/// serialization failures, deadlocks, `SQLITE_BUSY`) is [`HandlerError::Transient`];
/// every other database error (constraint violations, bad SQL, decoding) is permanent.
impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        if crate::is_transient_sqlx(&e) {
            HandlerError::Transient(Box::new(e))
        } else {
            HandlerError::Permanent(Box::new(e))
        }
    }
}

/// Keeps the classification of the framework's errors, so `?` on
/// [`crate::Outbox::enqueue`] inside a handler retries what may pass
/// ([`crate::Error::is_transient`]) and dead-letters the rest (an event that cannot be
/// encoded, say).
impl From<crate::Error> for HandlerError {
    fn from(e: crate::Error) -> Self {
        if e.is_transient() {
            HandlerError::Transient(Box::new(e))
        } else {
            HandlerError::Permanent(Box::new(e))
        }
    }
}

/// Failures the container detects around a handler, found as the source of the
/// [`HandlerError`] it records (and in the `kafka_dlt-exception-message` header).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerFault {
    /// The handler did not finish within the container's `handler_timeout`
    /// (transient).
    #[error("handler did not finish within {0:?}")]
    Timeout(Duration),
    /// The handler panicked (permanent).
    #[error("handler panicked: {0}")]
    Panic(String),
    /// The handler returned `Ok`, but its transaction cannot commit: a statement had
    /// failed and PostgreSQL aborted it, or SQLite rolled it back on its own (after
    /// `SQLITE_FULL` or an I/O error); nothing was committed (permanent).
    #[error(
        "handler returned Ok but its transaction was aborted or rolled back by the database; nothing was committed"
    )]
    AbortedTransaction,
}

/// Boxes a handler's future; the bound names the return type a handler must have.
/// Used by the code `#[event_handler]` generates.
#[doc(hidden)]
pub fn handler_future<'a, F>(f: F) -> BoxFuture<'a, Result<(), HandlerError>>
where
    F: std::future::Future<Output = Result<(), HandlerError>> + Send + 'a,
{
    Box::pin(f)
}

/// Per-handler settings: topic, consumer group, retry policy, dead-letter topic,
/// identity source.
///
/// `#[event_handler(...)]` fills these from its arguments.
#[derive(Debug, Clone, Default)]
pub struct HandlerOptions {
    pub(crate) topic: Option<Cow<'static, str>>,
    pub(crate) group: Option<Cow<'static, str>>,
    pub(crate) backoff: Option<Result<BackOff, ConfigError>>,
    pub(crate) dead_letter_topic: Option<Cow<'static, str>>,
    pub(crate) identity: Option<IdentitySource>,
    pub(crate) circuit_breaker: Option<CircuitBreaker>,
    pub(crate) retry_topics: Option<Result<RetryTopics, ConfigError>>,
    pub(crate) key_blocking: Option<bool>,
    #[cfg(feature = "redis")]
    pub(crate) redis_dedup: Option<crate::RedisDedup>,
}

impl HandlerOptions {
    /// No settings: the event's topic, the container's group, the container's default
    /// back-off and `<topic>.DLQ`.
    pub fn new() -> Self {
        Self::default()
    }
    /// Topic to consume (default: the event's [`Event::TOPIC`]).
    pub fn topic(mut self, topic: impl Into<Cow<'static, str>>) -> Self {
        self.topic = Some(topic.into());
        self
    }
    /// Consumer group the handler belongs to; checked against the container's.
    pub fn group(mut self, group: impl Into<Cow<'static, str>>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// Retry policy; an invalid one is reported by the container's `build()`.
    pub fn backoff(mut self, backoff: impl IntoBackOff) -> Self {
        self.backoff = Some(backoff.into_backoff());
        self
    }
    /// Dead-letter topic (default `<topic>` + the container's `dead_letter_suffix`,
    /// `.DLQ`).
    pub fn dead_letter_topic(mut self, topic: impl Into<Cow<'static, str>>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }
    /// Where the message id and event type of the topic's records are read (default:
    /// the container's, [`IdentitySource::envelope`]). All handlers of one topic must
    /// name the same source; `build()` reports a conflict.
    pub fn identity(mut self, identity: IdentitySource) -> Self {
        self.identity = Some(identity);
        self
    }
    /// A circuit breaker in front of the handler's downstream (default: none).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.circuit_breaker = Some(breaker);
        self
    }
    /// Non-blocking retries through retry topics (default: none; the back-off retries
    /// with the partition paused). An invalid setting is reported by `build()`.
    pub fn retry_topics(mut self, topics: impl Into<RetryTopicsArg>) -> Self {
        self.retry_topics = Some(topics.into().0);
        self
    }

    /// Key-blocking retry (default off): while a record fails, the later records of
    /// its key on its partition wait behind it in the database table
    /// `rk_blocked_records`, and records of other keys flow. The failing record and
    /// those behind it are retried from the table by the back-off, in offset order per
    /// key; the key is released when its head succeeds or is dead-lettered. Costs one
    /// indexed read per record of the handler (is its key blocked?) and no batching.
    /// Records without a key wait with their partition paused, as without this option.
    pub fn key_blocking(mut self, on: bool) -> Self {
        self.key_blocking = Some(on);
        self
    }

    /// Deduplicates the handler's records in Redis instead of the database (feature
    /// `redis`, default: the database table, in the handler's transaction): for a
    /// handler whose effects are Redis writes, which then works while the database is
    /// down. It gets no database transaction: its writes go through
    /// [`crate::HandlerContext::redis`], committed with the claim of the message id in
    /// one `MULTI`/`EXEC` (see [`crate::RedisDedup`]). `build()` refuses it together with
    /// [`HandlerOptions::key_blocking`]; its records are never batched.
    #[cfg(feature = "redis")]
    pub fn redis_dedup(mut self, dedup: crate::RedisDedup) -> Self {
        self.redis_dedup = Some(dedup);
        self
    }

    /// Each setting given in `overrides` wins over this one's.
    pub(crate) fn overridden_by(self, overrides: HandlerOptions) -> HandlerOptions {
        HandlerOptions {
            topic: overrides.topic.or(self.topic),
            group: overrides.group.or(self.group),
            backoff: overrides.backoff.or(self.backoff),
            dead_letter_topic: overrides.dead_letter_topic.or(self.dead_letter_topic),
            identity: overrides.identity.or(self.identity),
            circuit_breaker: overrides.circuit_breaker.or(self.circuit_breaker),
            retry_topics: overrides.retry_topics.or(self.retry_topics),
            key_blocking: overrides.key_blocking.or(self.key_blocking),
            #[cfg(feature = "redis")]
            redis_dedup: overrides.redis_dedup.or(self.redis_dedup),
        }
    }
}

/// What [`HandlerOptions::retry_topics`] takes: a [`RetryTopics`], or the result of
/// [`RetryTopics::parse`] (what `#[event_handler(retry_topics = "…")]` passes).
#[derive(Debug)]
pub struct RetryTopicsArg(Result<RetryTopics, ConfigError>);

impl From<RetryTopics> for RetryTopicsArg {
    fn from(t: RetryTopics) -> Self {
        RetryTopicsArg(Ok(t))
    }
}

impl From<Result<RetryTopics, ConfigError>> for RetryTopicsArg {
    fn from(t: Result<RetryTopics, ConfigError>) -> Self {
        RetryTopicsArg(t)
    }
}

/// A typed handler of one event type. Usually generated by `#[event_handler]`.
///
/// Implement it by hand for handlers with state:
///
/// ```
/// use futures::future::BoxFuture;
/// use reliable_kafka::{Event, EventHandler, HandlerContext, HandlerError, HandlerOptions};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize, Event)]
/// # #[event(topic = "payment.failed")]
/// # struct PaymentFailed { payment_id: i64 }
///
/// struct Compensator { refund_ratio: f64 }
///
/// impl EventHandler for Compensator {
///     type Event = PaymentFailed;
///
///     fn options(&self) -> HandlerOptions {
///         HandlerOptions::new().group("payment-compensator-group")
///     }
///
///     fn handle<'a>(&'a self, event: PaymentFailed, ctx: &'a mut HandlerContext)
///         -> BoxFuture<'a, Result<(), HandlerError>> {
///         Box::pin(async move {
///             sqlx::query("UPDATE payment SET status = 'FAILED' WHERE id = $1")
///                 .bind(event.payment_id)
///                 .execute(ctx.tx())
///                 .await?;
///             Ok(())
///         })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler",
    note = "annotate an `async fn(event: E, ctx: &mut HandlerContext) -> Result<(), HandlerError>` with `#[event_handler(...)]`, or implement `EventHandler`"
)]
pub trait EventHandler<DB: Backend = DefaultBackend>: Send + Sync + 'static {
    /// The event type handled.
    type Event: Event;

    /// Topic, group, retry and dead-letter settings.
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new()
    }

    /// Handles one event. Database effects go through `ctx.tx()`.
    ///
    /// # Errors
    /// A [`HandlerError`] saying whether to retry.
    fn handle<'a>(
        &'a self,
        event: Self::Event,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Handles the new records of a batch (see `ListenerContainerBuilder::max_batch`),
    /// in partition order, in the batch's one transaction; each with its
    /// [`RecordInfo`]. The default calls [`EventHandler::handle`] for each record.
    /// Override it to write all of them with multi-row statements (`unnest` on
    /// PostgreSQL): the database round trips per batch then no longer grow with its
    /// size. The whole call must finish within the container's `handler_timeout`.
    ///
    /// # Errors
    /// A [`HandlerError`]: the batch is rolled back and its records are processed
    /// again one by one through [`EventHandler::handle`], so that only the failing
    /// record is retried and dead-lettered.
    fn handle_batch<'a>(
        &'a self,
        events: Vec<(Self::Event, RecordInfo)>,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            for (event, record) in events {
                use tracing::Instrument;
                let span = crate::telemetry::spans::process(&record, ctx.group(), ctx.attempt());
                ctx.record = record;
                self.handle(event, ctx).instrument(span).await?;
            }
            Ok(())
        })
    }
}

/// A decoded event, type-erased between decoding and handling.
pub(crate) type AnyEvent = Box<dyn std::any::Any + Send>;

/// Object-safe face of [`EventHandler`].
pub(crate) trait ErasedHandler<DB: Backend>: Send + Sync {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn decode(&self, payload: &[u8]) -> Result<AnyEvent, CodecError>;
    fn call<'a>(&'a self, event: AnyEvent, ctx: &'a mut HandlerContext<DB>) -> BoxFuture<'a, Result<(), HandlerError>>;
    fn call_batch<'a>(
        &'a self,
        events: Vec<(AnyEvent, RecordInfo)>,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<DB: Backend, H: EventHandler<DB>> ErasedHandler<DB> for H {
    fn event_type(&self) -> &'static str {
        H::Event::EVENT_TYPE
    }
    fn schema_version(&self) -> u32 {
        H::Event::SCHEMA_VERSION
    }
    fn decode(&self, payload: &[u8]) -> Result<AnyEvent, CodecError> {
        <H::Event as Event>::Codec::decode::<H::Event>(payload).map(|e| Box::new(e) as AnyEvent)
    }
    fn call<'a>(&'a self, event: AnyEvent, ctx: &'a mut HandlerContext<DB>) -> BoxFuture<'a, Result<(), HandlerError>> {
        let event = *event.downcast::<H::Event>().expect("decoded by the same handler");
        self.handle(event, ctx)
    }
    fn call_batch<'a>(
        &'a self,
        events: Vec<(AnyEvent, RecordInfo)>,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        let events = events
            .into_iter()
            .map(|(e, info)| (*e.downcast::<H::Event>().expect("decoded by the same handler"), info))
            .collect();
        self.handle_batch(events, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_errors_keep_their_classification_through_question_mark() {
        fn enqueue_like(e: crate::Error) -> Result<(), HandlerError> {
            Err(e)?
        }
        let lost = crate::Error::Database { operation: "insert outbox row", source: sqlx::Error::PoolTimedOut };
        let e = enqueue_like(lost).unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        let bad = crate::Error::Codec(CodecError::encode("not representable"));
        let e = enqueue_like(bad).unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
        // The cause is kept as the source, not flattened into a string.
        let source = std::error::Error::source(&e).expect("source");
        assert!(source.downcast_ref::<crate::Error>().is_some());
    }
}
