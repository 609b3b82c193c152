//! [`ListenerContainerBuilder`]: the container's settings and their validation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use sqlx::Pool;

use super::breaker::Breaker;
use super::container::{ContainerContext, ListenerContainer};
use super::handler::ErasedHandler;
use super::pipeline::Pipeline;
use super::routes::{RetryPlan, Route, TopicRoutes, UnknownEventType};
use super::stats::ContainerStats;
use crate::error::validate_identifier;
use crate::kafka::{HealthContext, Producer};
use crate::{
    BackOff, Backend, ConfigError, DefaultBackend, Error, EventHandler, HandlerOptions, IdentitySource, KafkaConfig,
};

/// Default suffix of dead-letter topics: `<topic>.DLQ`, as in the seed documents.
/// Spring Kafka's `DeadLetterPublishingRecoverer` appends `.DLT` instead; set
/// [`ListenerContainerBuilder::dead_letter_suffix`] to `.DLT` to share its topics.
pub const DEFAULT_DEAD_LETTER_SUFFIX: &str = ".DLQ";

/// Default of [`ListenerContainerBuilder::commit_interval`].
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Default of [`ListenerContainerBuilder::handler_timeout`].
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(15);
/// Default of [`ListenerContainerBuilder::processed_retention`]: 7 days.
pub const DEFAULT_PROCESSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest [`ListenerContainerBuilder::max_batch`].
pub const MAX_BATCH: usize = 10_000;
/// Largest [`ListenerContainerBuilder::partition_concurrency`].
pub const MAX_PARTITION_CONCURRENCY: usize = 256;

/// Builder of [`ListenerContainer`].
pub struct ListenerContainerBuilder<DB: Backend = DefaultBackend> {
    kafka: KafkaConfig,
    pool: Pool<DB>,
    group: Option<String>,
    handlers: Vec<(Arc<dyn ErasedHandler<DB>>, HandlerOptions, &'static str)>,
    default_backoff: BackOff,
    dead_letter_suffix: String,
    commit_interval: Duration,
    processed_table: String,
    handler_timeout: Duration,
    processed_retention: Duration,
    max_batch: usize,
    partition_concurrency: usize,
    identity: IdentitySource,
    unknown_event_types: UnknownEventType,
    consumer_properties: Vec<(String, String)>,
    watermark_dedup: bool,
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

impl<DB: Backend> ListenerContainer<DB> {
    /// Starts a builder. `kafka` settings override the consumer presets
    /// (`enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `auto.offset.reset=earliest`, `isolation.level=read_committed`) and the
    /// dead-letter producer presets (`acks=all`, `enable.idempotence=true`).
    ///
    /// The pool's backend ([`crate::Postgres`] or [`crate::Sqlite`]) is the one of the
    /// deduplication table and of the handlers' transactions.
    pub fn builder(kafka: KafkaConfig, pool: Pool<DB>) -> ListenerContainerBuilder<DB> {
        ListenerContainerBuilder {
            kafka,
            pool,
            group: None,
            handlers: Vec::new(),
            default_backoff: BackOff::default(),
            dead_letter_suffix: DEFAULT_DEAD_LETTER_SUFFIX.to_owned(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            processed_table: crate::schema::DEFAULT_PROCESSED_TABLE.to_owned(),
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            processed_retention: DEFAULT_PROCESSED_RETENTION,
            max_batch: 1,
            partition_concurrency: 1,
            identity: IdentitySource::envelope(),
            unknown_event_types: UnknownEventType::DeadLetter,
            consumer_properties: Vec::new(),
            watermark_dedup: false,
        }
    }
}

impl<DB: Backend> ListenerContainerBuilder<DB> {
    /// Consumer group id. Optional when the handlers declare their group.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Registers a handler. Handlers of one topic form its route table, keyed by
    /// event type ([`crate::Event::EVENT_TYPE`], `#[event(name = …)]`): each record goes
    /// to the handler of its event type, in partition order whatever the type, with one
    /// deduplication table and, with `max_batch`, batches that span types. Two handlers
    /// of one topic must take different event types.
    pub fn handler<H: EventHandler<DB>>(mut self, handler: H) -> Self {
        let options = handler.options();
        self.handlers.push((Arc::new(handler), options, <H::Event as crate::Event>::TOPIC));
        self
    }

    /// Registers a handler with some of its [`EventHandler::options`] replaced: each
    /// setting given in `overrides` (topic, group, back-off, dead-letter topic,
    /// identity, circuit breaker, retry topics) wins,
    /// the others stay the handler's. Reuses one handler on another topic or group.
    pub fn handler_with<H: EventHandler<DB>>(mut self, handler: H, overrides: HandlerOptions) -> Self {
        let options = handler.options().overridden_by(overrides);
        self.handlers.push((Arc::new(handler), options, <H::Event as crate::Event>::TOPIC));
        self
    }

    /// Where the message id and event type of records are read, for the topics whose
    /// handlers set none (default [`IdentitySource::envelope`], this crate's `rk-*`
    /// headers): CloudEvents, Debezium's outbox router, a function, or the offset.
    pub fn identity(mut self, identity: IdentitySource) -> Self {
        self.identity = identity;
        self
    }

    /// What becomes of a record whose event type no handler of its topic takes:
    /// dead-lettered as `unknown-event-type` (the default) or skipped (committed,
    /// counted in [`crate::ContainerStats::skipped`], logged).
    pub fn unknown_event_types(mut self, policy: UnknownEventType) -> Self {
        self.unknown_event_types = policy;
        self
    }

    /// Retry policy of handlers that do not set one (default: [`BackOff::default`]).
    pub fn default_backoff(mut self, backoff: impl Into<BackOff>) -> Self {
        self.default_backoff = backoff.into();
        self
    }

    /// Suffix of default dead-letter topics (default [`DEFAULT_DEAD_LETTER_SUFFIX`],
    /// `.DLQ`; Spring Kafka's recoverer uses `.DLT`).
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
    /// and its records are processed again one by one up to the first record that must
    /// wait for a retry; that record's partition is paused and rewound to it, and the
    /// records after it come again after its retry. Effects outside the transaction
    /// (HTTP calls) of the records before the failing one happen twice. The whole batch
    /// call must finish within `handler_timeout`; `build()` checks that a failed batch
    /// attempt plus one record's attempt fit in `max.poll.interval.ms`. Records of a
    /// retry topic, and of a handler whose circuit breaker is not closed, are not
    /// batched.
    pub fn max_batch(mut self, records: usize) -> Self {
        self.max_batch = records;
        self
    }

    /// Partitions processed at the same time, at most (default 1, 1..=256). Each
    /// partition keeps its order (its next batch starts when the previous one is
    /// done); batches of different partitions run concurrently, each in its own
    /// transaction on its own pooled connection, so the pool needs at least this many
    /// connections. Records are copied out of librdkafka's buffers when this is above 1.
    /// When partitions are revoked, their running batches are cancelled (rolled back,
    /// offsets not stored) and settled before the revoke's commit, so the partitions'
    /// new owner never runs a record this container still works on.
    pub fn partition_concurrency(mut self, partitions: usize) -> Self {
        self.partition_concurrency = partitions;
        self
    }

    /// A librdkafka property of this container's consumer only (not of its
    /// dead-letter producer), e.g. `fetch.min.bytes` (bytes), `fetch.max.bytes`
    /// (bytes) or `fetch.wait.max.ms` (ms): the place of Spring Kafka's
    /// `spring.kafka.consumer.properties.*`. It wins over the presets and over the
    /// [`KafkaConfig`]'s settings. A key librdkafka does not know makes
    /// [`build`](Self::build) fail with [`Error::Kafka`]; a producer-only key is
    /// ignored with librdkafka's configuration warning.
    pub fn consumer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.consumer_properties.retain(|(k, _)| *k != key);
        self.consumer_properties.push((key, value.into()));
        self
    }

    /// How long deduplication rows are kept (default 7 days). A redelivery later than
    /// this, e.g. a re-drive from a dead-letter topic, would run again: keep it above
    /// the longest redelivery path (re-drive interval × re-drives). Rows of this group
    /// older than this are deleted every [`super::PRUNE_INTERVAL`] (10 minutes).
    pub fn processed_retention(mut self, retention: Duration) -> Self {
        self.processed_retention = retention;
        self
    }

    /// Deduplicates records numbered by a relay with
    /// [`crate::OutboxRelayBuilder::sequence_numbers`] by a watermark instead of a
    /// deduplication row each (default off; PostgreSQL only).
    ///
    /// Per group, topic, partition and source (outbox table and shard) the container
    /// keeps the highest number applied in `rk_watermarks`, read with a lock and raised
    /// in the handler's transaction: two statements per batch, whatever its size. A
    /// numbered record at or below it is a duplicate. The relay guarantees that a row's
    /// first copy never reaches a partition after a higher number of its source.
    ///
    /// Records without a number (other producers, re-driven records, replayed parked
    /// records: the header [`crate::headers::RELAY_SEQ`] is dropped when a record is
    /// re-published on purpose), copies in retry topics and records of key-blocking
    /// handlers keep the deduplication row. The first batch of a source without a
    /// watermark writes deduplication rows too, so turning the mode on while records
    /// processed before are delivered again applies none twice. Turn the relay's
    /// numbers on with its backlog published: a row sent before without a number and
    /// again with one would be applied twice.
    ///
    /// [`ListenerContainerBuilder::build`] rejects it on SQLite and MySQL
    /// (`Error::Config` naming `watermark_dedup`).
    pub fn watermark_dedup(mut self, on: bool) -> Self {
        self.watermark_dedup = on;
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
    /// (`group.id`), handlers of different groups, two handlers of one topic and event
    /// type, handlers of one topic with different identity sources, several handlers on
    /// a topic whose identity source has no event types, an invalid back-off,
    /// a dead-letter topic equal to its source, a `handler_timeout` (two with batches)
    /// not shorter than `max.poll.interval.ms`, an invalid or conflicting
    /// `circuit_breaker` or `retry_topics` (a handler with retry topics and its own
    /// back-off, equal delays named by value, a breaker that opens after the last
    /// attempt), an invalid `processed_table`, a zero `commit_interval`,
    /// `watermark_dedup` on a backend other than PostgreSQL.
    /// [`Error::Kafka`] when librdkafka rejects the configuration.
    pub fn build(self) -> Result<ListenerContainer<DB>, Error> {
        validate_identifier("processed_table", &self.processed_table)?;
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(ConfigError::invalid("max_batch", "must be within 1..=10000").into());
        }
        if !(1..=MAX_PARTITION_CONCURRENCY).contains(&self.partition_concurrency) {
            return Err(ConfigError::invalid("partition_concurrency", "must be within 1..=256").into());
        }
        if self.commit_interval.is_zero() {
            return Err(ConfigError::invalid("commit_interval", "must be greater than zero").into());
        }
        if self.watermark_dedup && !DB::WATERMARKS {
            return Err(ConfigError::invalid("watermark_dedup", "watermarks need PostgreSQL").into());
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
        let max_poll = self.kafka.max_poll_interval()?;
        // A handler call keeps the poll loop from polling (waits between attempts do
        // not): a failed batch attempt and one record's attempt must fit.
        let calls = if self.max_batch > 1 { 2 } else { 1 };
        if self.handler_timeout * calls >= max_poll {
            return Err(ConfigError::invalid(
                "max.poll.interval.ms",
                format!(
                    "{calls} handler call(s) of up to handler_timeout {:?} can come between two polls, longer than max.poll.interval.ms ({} ms); raise it or lower handler_timeout",
                    self.handler_timeout,
                    max_poll.as_millis()
                ),
            )
            .into());
        }
        let stats = Arc::new(ContainerStats::with_limits(max_poll));

        let mut routes: HashMap<String, TopicRoutes<DB>> = HashMap::new();
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
            let retry_topics = options.retry_topics.transpose()?;
            if retry_topics.is_some() && options.backoff.is_some() {
                return Err(ConfigError::invalid(
                    "retry_topics",
                    format!("`{topic}`: a handler with retry topics gets one attempt per topic; remove its back-off"),
                )
                .into());
            }
            let key_blocking = options.key_blocking.unwrap_or(false);
            if retry_topics.is_some() && key_blocking {
                return Err(ConfigError::invalid(
                    "retry_topics",
                    format!("`{topic}`: retry topics and key-blocking retry exclude each other; choose one"),
                )
                .into());
            }
            let backoff = options.backoff.unwrap_or(Ok(self.default_backoff))?;
            let dead_letter_topic = options
                .dead_letter_topic
                .map(|t| t.into_owned())
                .unwrap_or_else(|| format!("{topic}{}", self.dead_letter_suffix));
            if dead_letter_topic == topic {
                return Err(ConfigError::DeadLetterTopicIsSource { topic }.into());
            }
            let attempts = retry_topics.as_ref().map_or(backoff.max_attempts(), |r| 1 + r.delays().len() as u32);
            let breaker = match options.circuit_breaker {
                Some(b) => {
                    b.validate(&topic, attempts)?;
                    Some(Arc::new(Breaker::new(b, handler.event_type(), &group, self.handler_timeout, stats.clone())))
                }
                None => None,
            };
            let retry_plan = match retry_topics {
                Some(r) => {
                    r.validate(&topic)?;
                    Some(Arc::new(RetryPlan { topics: r.topics(&topic), delays: r.delays().to_vec() }))
                }
                None => None,
            };
            let identity = options.identity.unwrap_or_else(|| self.identity.clone());
            let table = routes.entry(topic.clone()).or_insert_with(|| TopicRoutes {
                identity: identity.clone(),
                routes: Vec::new(),
                by_type: HashMap::new(),
                dead_letter_topic: dead_letter_topic.clone(),
                retry_stage: None,
            });
            if !table.identity.same_as(&identity) {
                return Err(ConfigError::invalid(
                    "identity",
                    format!(
                        "the handlers of `{topic}` name different identity sources ({:?} and {identity:?}); one topic has one",
                        table.identity
                    ),
                )
                .into());
            }
            let event_type = handler.event_type();
            if table.by_type.insert(event_type, table.routes.len()).is_some() {
                return Err(ConfigError::DuplicateRoute { topic, event_type: event_type.to_owned() }.into());
            }
            if table.dead_letter_topic != dead_letter_topic {
                table.dead_letter_topic = format!("{topic}{}", self.dead_letter_suffix);
            }
            #[cfg(feature = "redis")]
            if options.redis_dedup.is_some() && key_blocking {
                return Err(ConfigError::invalid(
                    "redis_dedup",
                    format!("`{topic}`: key-blocking retry keeps its records in the database; a handler deduplicated in Redis cannot use it"),
                )
                .into());
            }
            let route = Route {
                handler,
                backoff,
                dead_letter_topic,
                breaker,
                retry_topics: retry_plan.clone(),
                key_blocking,
                #[cfg(feature = "redis")]
                redis_dedup: options.redis_dedup,
            };
            table.routes.push(route.clone());
            if table.routes.len() > 1 && !table.identity.has_event_types() {
                return Err(ConfigError::invalid(
                    "identity",
                    format!(
                        "`{topic}` has several handlers but its identity source ({:?}) gives no event type to route by",
                        table.identity
                    ),
                )
                .into());
            }
            // The retry topics' tables: the same route, one attempt each.
            for (stage, retry_topic) in retry_plan.iter().flat_map(|p| p.topics.iter().enumerate()) {
                let retry = routes.entry(retry_topic.clone()).or_insert_with(|| TopicRoutes {
                    identity: identity.clone(),
                    routes: Vec::new(),
                    by_type: HashMap::new(),
                    dead_letter_topic: route.dead_letter_topic.clone(),
                    retry_stage: Some(stage),
                });
                if retry.by_type.insert(event_type, retry.routes.len()).is_some() {
                    return Err(ConfigError::DuplicateRoute {
                        topic: retry_topic.clone(),
                        event_type: event_type.to_owned(),
                    }
                    .into());
                }
                retry.routes.push(route.clone());
            }
        }

        let context = ContainerContext::new(group.clone(), self.handler_timeout, stats.clone());
        let statistics = KafkaConfig::statistics_preset();
        let mut consumer_config = self
            .kafka
            .consumer_config(&group, &[("isolation.level", "read_committed"), ("statistics.interval.ms", &statistics)]);
        for (k, v) in &self.consumer_properties {
            consumer_config.set(k, v);
        }
        let consumer: StreamConsumer<ContainerContext> =
            consumer_config.create_with_context(context).map_err(Error::kafka("create consumer"))?;
        let producer: Producer = self
            .kafka
            .client_config(KafkaConfig::PRODUCER_PRESETS)
            .create_with_context(HealthContext::new(group.clone()))
            .map_err(Error::kafka("create dead-letter producer"))?;
        let pipeline = Pipeline {
            dedup_sql: Arc::new(DB::dedup_sql(&self.processed_table)),
            group: Arc::from(group.as_str()),
            pool: self.pool,
            routes,
            unknown_event_types: self.unknown_event_types,
            producer,
            stats,
            metrics: crate::telemetry::record::ConsumerMetrics::new(Arc::from(group.as_str())),
            handler_timeout: self.handler_timeout,
            processed_retention: self.processed_retention,
            retries: rdkafka::consumer::Consumer::context(&consumer).retries.clone(),
            watermark: self.watermark_dedup,
        };
        Ok(ListenerContainer::new(
            Arc::new(consumer),
            Arc::new(pipeline),
            self.commit_interval,
            self.max_batch,
            self.partition_concurrency,
        ))
    }
}
