//! The listener container: one consumer group, typed handlers, idempotent processing,
//! retry, dead-lettering and offset management.

mod dead_letter;
mod handler;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientContext;
use sqlx::Pool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::{DedupSql, TransactionState};
use crate::error::validate_identifier;
use crate::kafka::{send_in_order, OutRecord};
use crate::{headers, BackOff, Backend, ConfigError, Error, KafkaConfig, Postgres};

pub use dead_letter::{DeadLetterInfo, DeadLetterReason};
use handler::ErasedHandler;
pub use handler::{EventHandler, HandlerContext, HandlerError, HandlerOptions, RecordInfo};

/// Default suffix of dead-letter topics, as in the seed documents and Spring Kafka's
/// `DeadLetterPublishingRecoverer` convention of a per-topic DLT.
pub const DEFAULT_DEAD_LETTER_SUFFIX: &str = ".DLQ";

struct Route<DB: Backend> {
    handler: Box<dyn ErasedHandler<DB>>,
    backoff: BackOff,
    dead_letter_topic: String,
}

/// Counters of a container, shared with its [`ContainerHandle`].
#[derive(Debug)]
pub struct ContainerStats {
    started: Instant,
    received: AtomicU64,
    processed: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    infrastructure_errors: AtomicU64,
    batches: AtomicU64,
    batch_fallbacks: AtomicU64,
    last_activity_ms: AtomicU64,
}

impl Default for ContainerStats {
    fn default() -> Self {
        ContainerStats {
            started: Instant::now(),
            received: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            infrastructure_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_fallbacks: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        }
    }
}

impl ContainerStats {
    /// Records received from Kafka.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Records whose handler succeeded and committed.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }
    /// Redelivered records skipped because their message id was already processed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Handler attempts that failed transiently and were retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Records published to a dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Failures of the framework's own database or Kafka calls (retried without limit,
    /// never counted as handler attempts).
    pub fn infrastructure_errors(&self) -> u64 {
        self.infrastructure_errors.load(Ordering::Relaxed)
    }
    /// Transactions that committed a batch of more than one record.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Batches that failed as a whole and were processed again record by record (to
    /// isolate the failing record).
    pub fn batch_fallbacks(&self) -> u64 {
        self.batch_fallbacks.load(Ordering::Relaxed)
    }
    /// Time since the container last received a record or finished one.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
    fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Builder of [`ListenerContainer`].
pub struct ListenerContainerBuilder<DB: Backend = Postgres> {
    kafka: KafkaConfig,
    pool: Pool<DB>,
    group: Option<String>,
    handlers: Vec<(Box<dyn ErasedHandler<DB>>, HandlerOptions, &'static str)>,
    default_backoff: BackOff,
    dead_letter_suffix: String,
    commit_interval: Duration,
    processed_table: String,
    handler_timeout: Duration,
    processed_retention: Duration,
    max_batch: usize,
    partition_concurrency: usize,
}

impl<DB: Backend> std::fmt::Debug for ListenerContainerBuilder<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContainerBuilder")
            .field("kafka", &self.kafka)
            .field("group", &self.group)
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> ListenerContainerBuilder<DB> {
    /// Consumer group id. Optional when the handlers declare their group.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Registers a handler; its topic must be unique in the container.
    pub fn handler<H: EventHandler<DB>>(mut self, handler: H) -> Self {
        let options = handler.options();
        self.handlers.push((Box::new(handler), options, <H::Event as crate::Event>::TOPIC));
        self
    }

    /// Registers a handler with some of its [`EventHandler::options`] replaced: each
    /// setting given in `overrides` (topic, group, back-off, dead-letter topic) wins,
    /// the others stay the handler's. Reuses one handler on another topic or group.
    pub fn handler_with<H: EventHandler<DB>>(mut self, handler: H, overrides: HandlerOptions) -> Self {
        let own = handler.options();
        let options = HandlerOptions {
            topic: overrides.topic.or(own.topic),
            group: overrides.group.or(own.group),
            backoff: overrides.backoff.or(own.backoff),
            dead_letter_topic: overrides.dead_letter_topic.or(own.dead_letter_topic),
        };
        self.handlers.push((Box::new(handler), options, <H::Event as crate::Event>::TOPIC));
        self
    }

    /// Retry policy of handlers that do not set one (default: [`BackOff::default`]).
    pub fn default_backoff(mut self, backoff: impl Into<BackOff>) -> Self {
        self.default_backoff = backoff.into();
        self
    }

    /// Suffix of default dead-letter topics (default `.DLQ`).
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// Offsets are committed at most this often while records flow (default 500 ms),
    /// and always on partition revocation and shutdown. A crash loses at most this much
    /// commit progress: the records are redelivered and deduplicated.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Longest time one handler attempt may take (default 15 s); a slower attempt is
    /// abandoned (its transaction rolled back) and counts as a transient failure.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Records of one partition processed in one database transaction, at most
    /// (default 1, 1..=10 000): one multi-row deduplication insert, the handler called
    /// for each new record in order, one commit. Only records already fetched are
    /// batched (the container never waits to fill a batch). When any record of a batch
    /// fails (decoding, handler error, panic, timeout, commit), the batch is rolled back
    /// and its records are processed again one by one, so the failing record is retried
    /// and dead-lettered alone; effects outside the transaction (HTTP calls) of the
    /// records before it then happen twice. The whole batch call must finish within
    /// `handler_timeout`. `build()` checks that a failed batch attempt plus one record's
    /// retries fit in `max.poll.interval.ms`; each further failing record of the same
    /// batch adds its own retries before the consumer polls again, so keep batches
    /// small when records fail often and their retries are long.
    pub fn max_batch(mut self, records: usize) -> Self {
        self.max_batch = records;
        self
    }

    /// Partitions processed at the same time, at most (default 1, 1..=256). Each
    /// partition keeps its order (its next batch starts when the previous one is
    /// done); batches of different partitions run concurrently, each in its own
    /// transaction on its own pooled connection, so the pool needs at least this many
    /// connections. Records are copied out of librdkafka's buffers when this is above 1.
    /// After a rebalance, a batch still running for a revoked partition cannot store
    /// its offset; the partition's new owner redelivers it and the deduplication table
    /// skips it.
    pub fn partition_concurrency(mut self, partitions: usize) -> Self {
        self.partition_concurrency = partitions;
        self
    }

    /// How long deduplication rows are kept (default 7 days). A redelivery later than
    /// this, e.g. a re-drive from a dead-letter topic, would run again: keep it above
    /// the longest redelivery path (re-drive interval × re-drives). Rows of this group
    /// older than this are deleted every 10 minutes.
    pub fn processed_retention(mut self, retention: Duration) -> Self {
        self.processed_retention = retention;
        self
    }

    /// Deduplication table (default `rk_processed_messages`), optionally schema-qualified.
    pub fn processed_table(mut self, table: impl Into<String>) -> Self {
        self.processed_table = table.into();
        self
    }

    /// Validates the settings and creates the consumer and the dead-letter producer.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong: no handler (`handler`), no group
    /// (`group.id`), handlers of different groups or the same topic, an invalid back-off,
    /// a dead-letter topic equal to its source, a back-off whose total wait exceeds
    /// `max.poll.interval.ms`, an invalid `processed_table`, a zero `commit_interval`.
    /// [`Error::Kafka`] when librdkafka rejects the configuration.
    pub fn build(self) -> Result<ListenerContainer<DB>, Error> {
        validate_identifier("processed_table", &self.processed_table)?;
        if !(1..=10_000).contains(&self.max_batch) {
            return Err(ConfigError::invalid("max_batch", "must be within 1..=10000").into());
        }
        if !(1..=256).contains(&self.partition_concurrency) {
            return Err(ConfigError::invalid("partition_concurrency", "must be within 1..=256").into());
        }
        if self.commit_interval.is_zero() {
            return Err(ConfigError::invalid("commit_interval", "must be greater than zero").into());
        }
        if self.handlers.is_empty() {
            return Err(ConfigError::Missing { key: "handler".into() }.into());
        }
        let group = match &self.group {
            Some(g) => g.clone(),
            None => self
                .handlers
                .iter()
                .find_map(|(_, o, _)| o.group.as_deref().map(str::to_owned))
                .ok_or(ConfigError::Missing { key: "group.id".into() })?,
        };
        if group.is_empty() {
            return Err(ConfigError::invalid("group.id", "must not be empty").into());
        }
        let max_poll_ms: u64 = self
            .kafka
            .get("max.poll.interval.ms")
            .map(|v| v.parse().map_err(|_| ConfigError::invalid("max.poll.interval.ms", "must be an integer (ms)")))
            .transpose()?
            .unwrap_or(300_000);

        let mut routes = HashMap::new();
        for (handler, options, event_topic) in self.handlers {
            let topic = options.topic.as_deref().unwrap_or(event_topic).to_owned();
            if let Some(g) = options.group.as_deref() {
                if g != group {
                    return Err(ConfigError::GroupMismatch {
                        topic,
                        handler_group: g.to_owned(),
                        container_group: group,
                    }
                    .into());
                }
            }
            let backoff = options.backoff.unwrap_or(Ok(self.default_backoff))?;
            // A record retried in place keeps the consumer from polling: all its attempts
            // and waits must fit in max.poll.interval.ms, or the group evicts the member.
            // With batches, a failed batch attempt (up to one handler_timeout) comes first.
            let batch_attempt = if self.max_batch > 1 { self.handler_timeout } else { Duration::ZERO };
            let worst = batch_attempt + self.handler_timeout * backoff.max_attempts() + backoff.max_total_delay();
            if worst >= Duration::from_millis(max_poll_ms) {
                return Err(ConfigError::invalid(
                    "max.poll.interval.ms",
                    format!(
                        "`{topic}` can take {worst:?} on one record ({}{} attempts of up to handler_timeout {:?} plus {:?} of back-off), longer than max.poll.interval.ms ({max_poll_ms} ms); raise it, or lower the attempts, the back-off or handler_timeout",
                        if self.max_batch > 1 { "a failed batch attempt, then " } else { "" },
                        backoff.max_attempts(),
                        self.handler_timeout,
                        backoff.max_total_delay()
                    ),
                )
                .into());
            }
            let dead_letter_topic = options
                .dead_letter_topic
                .map(|t| t.into_owned())
                .unwrap_or_else(|| format!("{topic}{}", self.dead_letter_suffix));
            if dead_letter_topic == topic {
                return Err(ConfigError::DeadLetterTopicIsSource { topic }.into());
            }
            if routes.contains_key(&topic) {
                return Err(ConfigError::DuplicateHandler { topic }.into());
            }
            routes.insert(topic, Route { handler, backoff, dead_letter_topic });
        }

        let consumer: StreamConsumer<ContainerContext> = self
            .kafka
            .client_config(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
            ])
            .create_with_context(ContainerContext { group: group.clone(), commit_failed: Arc::default() })
            .map_err(Error::kafka("create consumer"))?;
        let producer: FutureProducer = self
            .kafka
            .client_config(KafkaConfig::PRODUCER_PRESETS)
            .create()
            .map_err(Error::kafka("create dead-letter producer"))?;
        Ok(ListenerContainer {
            consumer: Arc::new(consumer),
            inner: Arc::new(Inner {
                dedup_sql: Arc::new(DB::dedup_sql(&self.processed_table)),
                group: Arc::from(group.as_str()),
                pool: self.pool,
                routes,
                producer,
                stats: Arc::default(),
                handler_timeout: self.handler_timeout,
                processed_retention: self.processed_retention,
                max_retry_after: Duration::from_millis(max_poll_ms / 4),
            }),
            commit_interval: self.commit_interval,
            max_batch: self.max_batch,
            partition_concurrency: self.partition_concurrency,
        })
    }
}

/// Consumes one consumer group's topics and runs each record through its handler.
///
/// For every record, in partition order:
/// 1. the envelope headers are checked (message id, event type, schema version) and the
///    payload decoded; a record that fails any of these is a poison pill and goes to the
///    dead-letter topic at once, with the reason;
/// 2. a database transaction is opened and `(group, message id)` inserted into the
///    deduplication table; if it was there already the record is a redelivery and is
///    skipped;
/// 3. the handler runs with that transaction; on success it commits (dedup row and
///    effects together);
/// 4. on a transient failure the transaction is rolled back and the handler's
///    [`BackOff`] decides the wait before the next attempt (blocking retry: the
///    partition waits); after the last attempt, or on a permanent failure, the record is
///    published to the dead-letter topic with the `kafka_dlt-*` headers;
/// 5. only then is its offset stored; stored offsets are committed every
///    `commit_interval`, before partitions are revoked, and at shutdown.
///
/// A handler attempt is bounded by `handler_timeout` (a transient failure when
/// exceeded); a panicking handler fails its record permanently; a handler that returns
/// `Ok` after swallowing a failed SQL statement (PostgreSQL would silently roll back)
/// fails it permanently too. `RetryAfter` waits are capped at a quarter of
/// `max.poll.interval.ms`. `build()` checks that all attempts and waits of one record
/// fit in `max.poll.interval.ms`.
///
/// Failures of the framework's own calls (opening the transaction, the dedup insert,
/// a lost connection at commit, publishing to the dead-letter topic) do not use up the
/// record's attempts: they are retried until they succeed or the container shuts down,
/// so an outage of the database or broker never dead-letters good records (a long
/// outage can exceed `max.poll.interval.ms`; the member then rejoins afterwards and the
/// record is redelivered). An error the database reports at commit (a deferred
/// constraint, a serialization failure) is classified like a handler's sqlx error.
///
/// Delivery is at-least-once; database effects are exactly-once per message id and
/// group. Effects outside the transaction (HTTP calls, Redis) run at least once and
/// must be idempotent.
pub struct ListenerContainer<DB: Backend = Postgres> {
    consumer: Arc<StreamConsumer<ContainerContext>>,
    inner: Arc<Inner<DB>>,
    commit_interval: Duration,
    max_batch: usize,
    partition_concurrency: usize,
}

struct Inner<DB: Backend> {
    group: Arc<str>,
    pool: Pool<DB>,
    routes: HashMap<String, Route<DB>>,
    producer: FutureProducer,
    dedup_sql: Arc<DedupSql>,
    stats: Arc<ContainerStats>,
    handler_timeout: Duration,
    processed_retention: Duration,
    max_retry_after: Duration,
}

impl<DB: Backend> std::fmt::Debug for ListenerContainer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContainer")
            .field("group", &self.inner.group)
            .field("topics", &self.inner.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct ContainerContext {
    group: String,
    /// Set when an asynchronous commit failed, so the loop commits again.
    commit_failed: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientContext for ContainerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(group = %self.group, fac, "{log_message}")
            }
            L::Warning => tracing::warn!(group = %self.group, fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(group = %self.group, fac, "{log_message}"),
            L::Debug => tracing::debug!(group = %self.group, fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(group = %self.group, error = %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for ContainerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Records are processed inside the poll loop, so when this runs every record
        // handed out has its outcome: commit what is stored before losing the partitions.
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked; committing");
            commit(consumer, CommitMode::Sync, &self.group);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "offset commit failed; committing again");
                self.commit_failed.store(true, Ordering::Relaxed);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn commit<C: ConsumerContext, K: Consumer<C>>(consumer: &K, mode: CommitMode, group: &str) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(group, error = %e, "offset commit failed; will retry with the next commit")
        }
    }
}

/// A database error at the framework's own statements: an error the server reported
/// (a deferred constraint, a serialization failure) belongs to the handler's work and is
/// classified like a handler's sqlx error; a lost connection is an infrastructure
/// failure, retried without using up attempts (the dedup row makes that safe).
fn classify_db(e: sqlx::Error, operation: &'static str) -> AttemptError {
    match e {
        sqlx::Error::Database(_) => AttemptError::Handler(HandlerError::from(e)),
        other => AttemptError::Infrastructure(Error::Database { operation, source: other }),
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
    /// The handler returned `Ok`, but a statement in its transaction had failed, so
    /// PostgreSQL would have rolled the transaction back (permanent).
    #[error("handler returned Ok but its transaction was aborted by a failed statement; nothing was committed")]
    AbortedTransaction,
}

/// What became of one record.
enum Outcome {
    /// Processed, skipped as duplicate, or dead-lettered: its offset may be committed.
    Done,
    /// Shutdown came first: its offset must not be committed.
    Interrupted,
}

enum AttemptError {
    Infrastructure(Error),
    Decode(crate::CodecError),
    Handler(HandlerError),
}

impl<DB: Backend> ListenerContainer<DB> {
    /// Starts a builder. `kafka` settings override the consumer presets
    /// (`enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `auto.offset.reset=earliest`, `isolation.level=read_committed`) and the
    /// dead-letter producer presets (`acks=all`, `enable.idempotence=true`).
    ///
    /// The pool's backend ([`Postgres`] or [`crate::Sqlite`]) is the one of the
    /// deduplication table and of the handlers' transactions.
    pub fn builder(kafka: KafkaConfig, pool: Pool<DB>) -> ListenerContainerBuilder<DB> {
        ListenerContainerBuilder {
            kafka,
            pool,
            group: None,
            handlers: Vec::new(),
            default_backoff: BackOff::default(),
            dead_letter_suffix: DEFAULT_DEAD_LETTER_SUFFIX.to_owned(),
            commit_interval: Duration::from_millis(500),
            processed_table: crate::schema::DEFAULT_PROCESSED_TABLE.to_owned(),
            handler_timeout: Duration::from_secs(15),
            processed_retention: Duration::from_secs(7 * 24 * 3600),
            max_batch: 1,
            partition_concurrency: 1,
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// The container's counters.
    pub fn stats(&self) -> Arc<ContainerStats> {
        self.inner.stats.clone()
    }

    /// Subscribes and processes records until `shutdown` is cancelled; then finishes
    /// the record in hand (a retry wait is cut short and that record left uncommitted),
    /// commits stored offsets, flushes the dead-letter producer and leaves the group.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the subscription fails. Errors while running are logged
    /// and retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let topics: Vec<&str> = self.inner.routes.keys().map(String::as_str).collect();
        self.consumer.subscribe(&topics).map_err(Error::kafka("subscribe"))?;
        tracing::info!(group = %self.inner.group, ?topics, "listener container started");
        let pruner = tokio::spawn(prune_processed(
            self.inner.pool.clone(),
            self.inner.dedup_sql.clone(),
            self.inner.group.clone(),
            self.inner.processed_retention,
            shutdown.clone(),
        ));
        let commit_failed = self.consumer.context().commit_failed.clone();
        let mut last_commit = Instant::now();
        let mut last_error_log: Option<Instant> = None;
        let mut dirty = false;
        // A record of another partition met while filling a batch; it starts the next one.
        let mut carry = None;
        // With partition_concurrency > 1: the last batch task of each partition, the
        // permits bounding them, and the flag a task sets when it stored an offset.
        let mut inflight = HashMap::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.partition_concurrency));
        let backlog = Arc::new(tokio::sync::Semaphore::new(self.partition_concurrency * 4));
        let stored = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let received = match carry.take() {
                Some(m) => Ok(Ok(m)),
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    r = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()) => r,
                },
            };
            match received {
                Err(_idle) => {}
                Ok(Err(e)) => {
                    // Broker outages, authorization and unknown-topic errors surface here;
                    // librdkafka recovers from the transient ones. Logged at most every 10 s.
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(group = %self.inner.group, error = %e, "consumer error");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok(msg)) => {
                    let mut batch = vec![msg];
                    // Records already fetched, of the same partition, join the batch.
                    while batch.len() < self.max_batch {
                        match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                            Ok(Ok(m)) if m.partition() == batch[0].partition() && m.topic() == batch[0].topic() => {
                                batch.push(m)
                            }
                            Ok(Ok(m)) => {
                                carry = Some(m);
                                break;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(group = %self.inner.group, error = %e, "consumer error while batching");
                                break;
                            }
                            Err(_nothing_fetched) => break,
                        }
                    }
                    self.inner.stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.inner.stats.touch();
                    if self.partition_concurrency > 1 {
                        let key = (batch[0].topic().to_owned(), batch[0].partition());
                        let owned: Vec<OwnedMessage> = batch.iter().map(|m| m.detach()).collect();
                        drop(batch);
                        inflight.retain(|_, t: &mut tokio::task::JoinHandle<bool>| !t.is_finished());
                        // Bounded backlog: at most 4 batches per permit are queued or running;
                        // beyond that the loop waits, as a sequential container waits.
                        let queued = tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => break,
                            q = backlog.clone().acquire_owned() => q.expect("semaphore never closed"),
                        };
                        let previous = inflight.remove(&key);
                        let (inner, consumer, stored, shutdown, permits) = (
                            self.inner.clone(),
                            self.consumer.clone(),
                            stored.clone(),
                            shutdown.clone(),
                            permits.clone(),
                        );
                        let task = tokio::spawn(async move {
                            let _queued = queued;
                            // The partition's order: start after its previous batch, and only
                            // if that one finished every record (else the records after it
                            // must not move the offset past the unfinished ones).
                            if let Some(previous) = previous {
                                if !matches!(previous.await, Ok(true)) {
                                    return false;
                                }
                            }
                            // The permit bounds batches running, not batches waiting for
                            // their partition's previous one.
                            let _running = permits.acquire_owned().await.expect("semaphore never closed");
                            if shutdown.is_cancelled() {
                                return false;
                            }
                            let done = inner.process_batch(&owned, &shutdown).await;
                            if let Some(last) = done.checked_sub(1).map(|i| &owned[i]) {
                                if let Err(e) = consumer.store_offset(last.topic(), last.partition(), last.offset()) {
                                    tracing::debug!(error = %e, "offset not stored (partition revoked)");
                                }
                                stored.store(true, Ordering::Relaxed);
                                inner.stats.touch();
                            }
                            done == owned.len()
                        });
                        inflight.insert(key, task);
                    } else {
                        if crate::sabotaged("rk-sabotage-offsets-before-commit") {
                            // At-most-once: the offsets go first, the work after.
                            let last = &batch[batch.len() - 1];
                            let _ = self.consumer.store_offset(last.topic(), last.partition(), last.offset());
                            commit(&*self.consumer, CommitMode::Sync, &self.inner.group);
                        }
                        let done = self.inner.process_batch(&batch, &shutdown).await;
                        if let Some(last) = done.checked_sub(1).map(|i| &batch[i]) {
                            if let Err(e) = self.consumer.store_offset(last.topic(), last.partition(), last.offset()) {
                                // The partition was revoked meanwhile; its new owner redelivers.
                                tracing::debug!(error = %e, "offset not stored");
                            }
                            dirty = true;
                            self.inner.stats.touch();
                        }
                        if done < batch.len() {
                            break; // shutdown came first
                        }
                    }
                }
            }
            if commit_failed.swap(false, Ordering::Relaxed) | stored.swap(false, Ordering::Relaxed) {
                dirty = true;
            }
            if dirty && last_commit.elapsed() >= self.commit_interval {
                commit(&*self.consumer, CommitMode::Async, &self.inner.group);
                dirty = false;
                last_commit = Instant::now();
            }
        }
        // Batches in flight finish (a retry wait is cut short by the shutdown) and store
        // their offsets before the last commit.
        for (_, task) in inflight.drain() {
            let _ = task.await;
        }
        commit(&*self.consumer, CommitMode::Sync, &self.inner.group);
        pruner.abort();
        let producer = self.inner.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        self.consumer.unsubscribe();
        tracing::info!(group = %self.inner.group, "listener container stopped");
        Ok(())
    }

    /// Spawns [`ListenerContainer::run`] on the current Tokio runtime.
    pub fn spawn(self) -> ContainerHandle {
        let shutdown = CancellationToken::new();
        let stats = self.stats();
        let group = self.inner.group.to_string();
        let join = tokio::spawn(self.run(shutdown.clone()));
        ContainerHandle { shutdown, stats, group, join }
    }
}

/// A running container, see [`ListenerContainer::spawn`].
#[derive(Debug)]
pub struct ContainerHandle {
    shutdown: CancellationToken,
    stats: Arc<ContainerStats>,
    group: String,
    join: tokio::task::JoinHandle<Result<(), Error>>,
}

impl ContainerHandle {
    /// The container's counters.
    pub fn stats(&self) -> &ContainerStats {
        &self.stats
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Graceful shutdown: finishes the record in hand, commits, leaves the group.
    ///
    /// # Errors
    /// The error that stopped the container, if any.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.join.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

/// Deletes deduplication rows of `group` older than `retention`, every 10 minutes.
async fn prune_processed<DB: Backend>(
    pool: Pool<DB>,
    sql: Arc<DedupSql>,
    group: Arc<str>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        loop {
            match DB::prune_dedup(&pool, &sql, &group, crate::backend::cutoff(retention)).await {
                Ok(10_000) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(%group, error = %report(&e), "pruning the deduplication table failed");
                    break;
                }
            }
        }
        if sleep_or_shutdown(Duration::from_secs(600), &shutdown).await {
            return;
        }
    }
}

/// Sleeps `d` unless shutdown comes first; returns whether shutdown came.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

fn header_str<'a, M: Message>(msg: &'a M, name: &str) -> Option<&'a [u8]> {
    msg.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value)
}

/// Fuzzing entry point (the `fuzz/` crate): decodes `data` as a record and runs it
/// through everything the container and the re-driver do before a handler: the
/// envelope headers, the dead-letter headers, the header copy of a dead letter, and
/// the JSON codec. Returns whether the envelope is valid. The property fuzzed: no
/// input panics, overflows the stack or hangs.
///
/// Layout of `data`: one byte, the header count (mod 16); per header a key length byte
/// (mod 64), the key (lossy UTF-8), a value length byte (255: a null value), the value;
/// the rest is the payload.
#[doc(hidden)]
pub fn fuzz_decode_record(data: &[u8]) -> bool {
    use rdkafka::message::{OwnedMessage, Timestamp};
    let mut rest = data;
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a
    };
    let count = take(1).first().copied().unwrap_or(0) % 16;
    let mut headers = OwnedHeaders::new();
    for _ in 0..count {
        let klen = take(1).first().copied().unwrap_or(0) % 64;
        let key = String::from_utf8_lossy(take(usize::from(klen))).into_owned();
        let value = match take(1).first().copied().unwrap_or(0) {
            255 => None,
            n => Some(take(usize::from(n)).to_vec()),
        };
        headers = headers.insert(Header { key: &key, value: value.as_deref() });
    }
    let payload = rest.to_vec();
    let _ = DeadLetterInfo::from_headers(&headers);
    let _ = copy_headers(&headers);
    let _ = <crate::JsonCodec as crate::Codec>::decode::<serde_json::Value>(&payload);
    let msg =
        OwnedMessage::new(Some(payload), Some(b"k".to_vec()), "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
    record_info(&msg).is_ok()
}

/// The headers as owned headers (for the dead-letter record).
fn copy_headers<H: Headers + ?Sized>(headers: &H) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.count() + 10);
    for i in 0..headers.count() {
        let h = headers.get(i);
        out = out.insert(Header { key: h.key, value: h.value });
    }
    out
}

/// Reads the envelope; `Err` says which header is missing or malformed.
fn record_info<M: Message>(msg: &M) -> Result<RecordInfo, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        header_str(msg, name)
            .map(|v| std::str::from_utf8(v).map_err(|_| format!("header `{name}` is not UTF-8")))
            .transpose()
    };
    let message_id =
        text(headers::MESSAGE_ID)?.ok_or_else(|| format!("header `{}` is missing", headers::MESSAGE_ID))?;
    let message_id =
        Uuid::parse_str(message_id).map_err(|e| format!("header `{}` is not a UUID: {e}", headers::MESSAGE_ID))?;
    let event_type =
        text(headers::EVENT_TYPE)?.ok_or_else(|| format!("header `{}` is missing", headers::EVENT_TYPE))?.to_owned();
    let schema_version = match text(headers::SCHEMA_VERSION)? {
        Some(v) => v.parse().map_err(|_| format!("header `{}` is not a u32: {v:?}", headers::SCHEMA_VERSION))?,
        None => 1,
    };
    let produced_at_ms = text(headers::PRODUCED_AT)?.and_then(|v| v.parse().ok());
    Ok(RecordInfo {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key: msg.key().map(<[u8]>::to_vec),
        message_id,
        event_type,
        schema_version,
        produced_at_ms,
        traceparent: text(headers::TRACEPARENT)?.map(str::to_owned),
    })
}

/// The error and its whole source chain, `": "`-separated.
pub(crate) fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl<DB: Backend> Inner<DB> {
    /// Processes a batch of records of one partition; returns how many, from the
    /// first, are done (fewer than all only when shutdown came first).
    async fn process_batch<M: Message + Sync>(&self, batch: &[M], shutdown: &CancellationToken) -> usize {
        if batch.len() > 1 {
            match self.try_batch(batch).await {
                Ok(()) => return batch.len(),
                Err(why) => {
                    self.stats.batch_fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(group = %self.group, records = batch.len(), %why, "batch not committed; processing record by record");
                }
            }
        }
        for (i, msg) in batch.iter().enumerate() {
            if let Outcome::Interrupted = self.process(msg, shutdown).await {
                return i;
            }
        }
        batch.len()
    }

    /// All records of `batch` in one transaction, or nothing (`Err` says why).
    async fn try_batch<M: Message + Sync>(&self, batch: &[M]) -> Result<(), String> {
        let route = self.routes.get(batch[0].topic()).ok_or("no route")?;
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            let info = record_info(msg)?;
            if info.event_type != route.handler.event_type() || info.schema_version > route.handler.schema_version() {
                return Err(format!("record at offset {} is not for the handler", msg.offset()));
            }
            let event = route.handler.decode(msg.payload().unwrap_or_default()).map_err(|e| report(&e))?;
            items.push((info, event));
        }
        let ids: Vec<Uuid> = items.iter().map(|(info, _)| info.message_id).collect();
        let mut tx = DB::begin_write(&self.pool).await.map_err(|e| report(&e))?;
        let new = if crate::sabotaged("rk-sabotage-no-dedup") {
            ids.iter().copied().collect()
        } else {
            DB::insert_dedup_batch(&mut tx, &self.dedup_sql, &self.group, &ids).await.map_err(|e| report(&e))?
        };
        let mut ctx = HandlerContext { tx, record: items[0].0.clone(), attempt: 1, group: self.group.clone() };
        let mut handled = std::collections::HashSet::with_capacity(new.len());
        let mut work = Vec::with_capacity(new.len());
        for (info, event) in items {
            // Already processed, or a second copy within the batch.
            if new.contains(&info.message_id) && handled.insert(info.message_id) {
                work.push((event, info));
            }
        }
        if let Some((_, first)) = work.first() {
            ctx.record = first.clone();
            let call = AssertUnwindSafe(route.handler.call_batch(work, &mut ctx)).catch_unwind();
            match tokio::time::timeout(self.handler_timeout, call).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(report(&e)),
                Ok(Err(_panic)) => return Err("handler panicked".into()),
                Err(_) => return Err("handler timed out".into()),
            }
        }
        match DB::check_transaction(&mut ctx.tx).await {
            Ok(TransactionState::Open) => {}
            Ok(TransactionState::Aborted) => return Err("transaction aborted".into()),
            Err(e) => return Err(report(&e)),
        }
        fault_point!("rk-consumer-before-commit");
        ctx.tx.commit().await.map_err(|e| report(&e))?;
        if !handled.is_empty() {
            fault_point!("rk-consumer-after-commit");
        }
        self.stats.processed.fetch_add(handled.len() as u64, Ordering::Relaxed);
        self.stats.duplicates.fetch_add((batch.len() - handled.len()) as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn process<M: Message + Sync>(&self, msg: &M, shutdown: &CancellationToken) -> Outcome {
        let Some(route) = self.routes.get(msg.topic()) else {
            // Only subscribed topics are delivered; nothing to do.
            return Outcome::Done;
        };
        let info = match record_info(msg) {
            Ok(i) => i,
            Err(why) => {
                return self
                    .dead_letter(
                        msg,
                        route,
                        DeadLetterReason::InvalidHeaders,
                        "reliable_kafka::InvalidHeaders",
                        why,
                        0,
                        shutdown,
                    )
                    .await;
            }
        };
        if info.event_type != route.handler.event_type() {
            let why = format!("event type `{}` is not `{}`", info.event_type, route.handler.event_type());
            return self
                .dead_letter(
                    msg,
                    route,
                    DeadLetterReason::UnknownEventType,
                    "reliable_kafka::UnknownEventType",
                    why,
                    0,
                    shutdown,
                )
                .await;
        }
        if info.schema_version > route.handler.schema_version() {
            let why = format!(
                "schema version {} is newer than the supported {}",
                info.schema_version,
                route.handler.schema_version()
            );
            return self
                .dead_letter(
                    msg,
                    route,
                    DeadLetterReason::UnsupportedSchemaVersion,
                    "reliable_kafka::UnsupportedSchemaVersion",
                    why,
                    0,
                    shutdown,
                )
                .await;
        }
        let mut attempt = 1;
        let mut infra_delay = Duration::from_millis(100);
        loop {
            match self.attempt(msg, route, &info, attempt).await {
                Ok(duplicate) => {
                    let counter = if duplicate { &self.stats.duplicates } else { &self.stats.processed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Done;
                }
                Err(AttemptError::Infrastructure(e)) => {
                    self.stats.infrastructure_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %self.group, topic = %info.topic, partition = info.partition, offset = info.offset,
                        error = %report(&e), "infrastructure failure; retrying the record");
                    if sleep_or_shutdown(infra_delay, shutdown).await {
                        return Outcome::Interrupted;
                    }
                    infra_delay = (infra_delay * 2).min(Duration::from_secs(5));
                }
                Err(AttemptError::Decode(e)) => {
                    return self
                        .dead_letter(
                            msg,
                            route,
                            DeadLetterReason::Deserialization,
                            "reliable_kafka::CodecError",
                            report(&e),
                            attempt,
                            shutdown,
                        )
                        .await;
                }
                Err(AttemptError::Handler(e)) => {
                    let delay = match &e {
                        HandlerError::Permanent(_) => None,
                        HandlerError::RetryAfter { after, .. } => {
                            route.backoff.delay_after(attempt).map(|_| (*after).min(self.max_retry_after))
                        }
                        _ => route.backoff.delay_after(attempt),
                    };
                    let Some(delay) = delay else {
                        let reason = if e.is_transient() {
                            DeadLetterReason::RetriesExhausted
                        } else {
                            DeadLetterReason::PermanentError
                        };
                        return self.dead_letter(msg, route, reason, e.kind(), report(&e), attempt, shutdown).await;
                    };
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(group = %self.group, topic = %info.topic, partition = info.partition, offset = info.offset,
                        attempt, ?delay, error = %report(&e), "handler failed; retrying");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Outcome::Interrupted;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// One attempt; `Ok(true)` when the message id was already processed.
    async fn attempt<M: Message + Sync>(
        &self,
        msg: &M,
        route: &Route<DB>,
        info: &RecordInfo,
        attempt: u32,
    ) -> Result<bool, AttemptError> {
        let event = route.handler.decode(msg.payload().unwrap_or_default()).map_err(AttemptError::Decode)?;
        let infra = |op| move |e| AttemptError::Infrastructure(Error::Database { operation: op, source: e });
        let mut tx = DB::begin_write(&self.pool).await.map_err(infra("begin handler transaction"))?;
        let inserted = if crate::sabotaged("rk-sabotage-no-dedup") {
            1
        } else {
            DB::insert_dedup(&mut tx, &self.dedup_sql, &self.group, info.message_id)
                .await
                .map_err(infra("insert dedup row"))?
        };
        if inserted == 0 {
            tracing::debug!(group = %self.group, message_id = %info.message_id, "duplicate delivery skipped");
            return Ok(true);
        }
        let mut ctx = HandlerContext { tx, record: info.clone(), attempt, group: self.group.clone() };
        // A panic is a permanent failure of this record, not of the container; a hung
        // handler is a transient one (the transaction is rolled back on drop).
        let call = AssertUnwindSafe(route.handler.call(event, &mut ctx)).catch_unwind();
        match tokio::time::timeout(self.handler_timeout, call).await {
            Err(_) => {
                return Err(AttemptError::Handler(HandlerError::transient(HandlerFault::Timeout(self.handler_timeout))))
            }
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                return Err(AttemptError::Handler(HandlerError::permanent(HandlerFault::Panic(msg))));
            }
            Ok(Ok(result)) => result.map_err(AttemptError::Handler)?,
        }
        // PostgreSQL turns COMMIT of an aborted transaction into ROLLBACK without an
        // error: a handler that swallowed a failed statement must not count as success.
        match DB::check_transaction(&mut ctx.tx).await {
            Ok(TransactionState::Open) => {}
            Ok(TransactionState::Aborted) => {
                return Err(AttemptError::Handler(HandlerError::permanent(HandlerFault::AbortedTransaction)))
            }
            Err(e) => return Err(classify_db(e, "check handler transaction")),
        }
        fault_point!("rk-consumer-before-commit");
        ctx.tx.commit().await.map_err(|e| classify_db(e, "commit handler transaction"))?;
        fault_point!("rk-consumer-after-commit");
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter<M: Message + Sync>(
        &self,
        msg: &M,
        route: &Route<DB>,
        reason: DeadLetterReason,
        error_kind: &str,
        error_message: String,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let info = DeadLetterInfo {
            original_topic: msg.topic().to_owned(),
            original_partition: msg.partition(),
            original_offset: msg.offset(),
            original_timestamp_ms: msg.timestamp().to_millis(),
            consumer_group: self.group.to_string(),
            reason: Some(reason),
            error_kind: error_kind.to_owned(),
            error_message,
            attempts,
        };
        tracing::error!(group = %self.group, topic = %info.original_topic, partition = info.original_partition,
            offset = info.original_offset, %reason, attempts, error = %info.error_message,
            dead_letter_topic = %route.dead_letter_topic, "dead-lettering record");
        let base = msg.headers().map(copy_headers).unwrap_or_default();
        let mut delay = Duration::from_millis(100);
        // A record too large for the dead-letter producer is sent without its payload
        // (it stays at the original offset), else the partition would stall on it.
        let mut omit_payload = false;
        loop {
            let size = msg.payload().map_or(0, <[u8]>::len).to_string();
            let mut headers = info.append_to(base.clone());
            if omit_payload {
                headers = headers.insert(rdkafka::message::Header {
                    key: crate::headers::DLT_PAYLOAD_OMITTED,
                    value: Some(size.as_bytes()),
                });
            }
            let record = OutRecord {
                topic: route.dead_letter_topic.clone(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: if omit_payload { None } else { msg.payload().map(<[u8]>::to_vec) },
                headers,
            };
            let sent = send_in_order(&self.producer, vec![record]).await;
            match sent.into_iter().next().unwrap_or(Err(KafkaError::Canceled)) {
                Ok(()) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Done;
                }
                Err(e) if !omit_payload && crate::kafka::is_size_error(&e) => {
                    tracing::warn!(group = %self.group, error = %e, payload_bytes = msg.payload().map_or(0, <[u8]>::len),
                        "dead-letter record rejected; sending it without its payload");
                    omit_payload = true;
                    continue;
                }
                Err(e) => {
                    self.stats.infrastructure_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %self.group, error = %e, "dead-letter publish failed; retrying");
                }
            }
            if sleep_or_shutdown(delay, shutdown).await {
                return Outcome::Interrupted;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod fuzz_entry_tests {
    use super::fuzz_decode_record;
    use proptest::prelude::*;

    fn header(out: &mut Vec<u8>, key: &str, value: &[u8]) {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }

    #[test]
    fn a_valid_envelope_decodes_and_a_broken_one_does_not() {
        let mut valid = vec![2];
        header(&mut valid, crate::headers::MESSAGE_ID, b"0190c2a4-55c1-7c2e-9a57-2f6c1c1e8f00");
        header(&mut valid, crate::headers::EVENT_TYPE, b"OrderPlaced");
        valid.extend_from_slice(br#"{"order_id":1}"#);
        assert!(fuzz_decode_record(&valid));
        let mut bad = vec![2];
        header(&mut bad, crate::headers::MESSAGE_ID, b"not-a-uuid");
        header(&mut bad, crate::headers::EVENT_TYPE, b"OrderPlaced");
        assert!(!fuzz_decode_record(&bad));
        assert!(!fuzz_decode_record(&[]));
    }

    proptest! {
        #[test]
        fn no_input_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = fuzz_decode_record(&data);
        }
    }
}
