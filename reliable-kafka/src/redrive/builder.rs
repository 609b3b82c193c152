//! [`DeadLetterRedriverBuilder`]: the re-driver's settings and their validation.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use sqlx::Pool;

use super::{DeadLetterRedriver, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_RUN_TIME, DEFAULT_REDRIVE_INTERVAL};
use crate::error::validate_identifier;
use crate::{Backend, ConfigError, DeadLetterReason, DefaultBackend, Error, KafkaConfig};

/// Builder of [`DeadLetterRedriver`].
#[derive(Clone)]
pub struct DeadLetterRedriverBuilder<DB: Backend = DefaultBackend> {
    kafka: KafkaConfig,
    pool: Pool<DB>,
    topics: Vec<String>,
    group: String,
    max_redrives: u32,
    reasons: Vec<DeadLetterReason>,
    interval: Duration,
    max_run_time: Duration,
    idle_timeout: Duration,
    parked_table: String,
    filter: Option<Arc<super::RedriveFilter>>,
    rate_limit: Option<f64>,
    max_records: Option<u64>,
    dry_run: bool,
    any_reason: bool,
}

impl<DB: Backend> std::fmt::Debug for DeadLetterRedriverBuilder<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterRedriverBuilder")
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("max_redrives", &self.max_redrives)
            .field("filter", &self.filter.is_some())
            .field("rate_limit", &self.rate_limit)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> DeadLetterRedriver<DB> {
    /// Starts a builder.
    pub fn builder(kafka: KafkaConfig, pool: Pool<DB>) -> DeadLetterRedriverBuilder<DB> {
        DeadLetterRedriverBuilder {
            kafka,
            pool,
            topics: Vec::new(),
            group: "reliable-kafka-redrive".to_owned(),
            max_redrives: 3,
            reasons: vec![DeadLetterReason::RetriesExhausted],
            interval: DEFAULT_REDRIVE_INTERVAL,
            max_run_time: DEFAULT_MAX_RUN_TIME,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            parked_table: crate::schema::DEFAULT_PARKED_TABLE.to_owned(),
            filter: None,
            rate_limit: None,
            max_records: None,
            dry_run: false,
            any_reason: false,
        }
    }
}

impl<DB: Backend> DeadLetterRedriverBuilder<DB> {
    /// Adds a dead-letter topic to re-drive (at least one is required).
    pub fn topic(mut self, dead_letter_topic: impl Into<String>) -> Self {
        self.topics.push(dead_letter_topic.into());
        self
    }
    /// Consumer group whose offsets track the re-driver's progress (default
    /// `reliable-kafka-redrive`).
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }
    /// Re-drives per record before it is parked (default 3, as in seed 003; 0 parks
    /// everything).
    pub fn max_redrives(mut self, n: u32) -> Self {
        self.max_redrives = n;
        self
    }
    /// Dead-letter reasons worth re-driving (default: `retries-exhausted` only; poison
    /// pills and permanent errors are parked at once).
    pub fn reasons(mut self, reasons: impl IntoIterator<Item = DeadLetterReason>) -> Self {
        self.reasons = reasons.into_iter().collect();
        self
    }
    /// Re-drives records of every reason, and records without `rk-dlt-reason` (those
    /// Spring Kafka's `DeadLetterPublishingRecoverer` wrote): an operator's replay.
    /// Records without their payload and records that are not dead letters are still
    /// parked.
    pub fn any_reason(mut self) -> Self {
        self.any_reason = true;
        self
    }
    /// Time between runs of [`DeadLetterRedriver::run`] (default 5 min, as in seed 003).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
    /// Longest run of [`DeadLetterRedriver::redrive_once`] (default 10 min); a run
    /// that reaches it stops and commits what it handled, and the next run goes on.
    pub fn max_run_time(mut self, max: Duration) -> Self {
        self.max_run_time = max;
        self
    }
    /// A run stops early when no record arrives for this long (default 30 s), e.g.
    /// when the broker is unreachable.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
    /// Only records `filter` selects are re-driven or parked; the others are passed
    /// over (their offsets committed: this group does not look at them again). E.g.
    /// `|r| r.key.as_deref() == Some(b"order-7")`, or a [`crate::DeadLetterFilter`]'s
    /// `matches`.
    pub fn filter(mut self, filter: impl Fn(&crate::DeadLetterRecord) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }
    /// Re-publishes at most this many records per second (default: unlimited), so
    /// that re-driving a backlog does not flood the consumers of the original topic.
    pub fn rate_limit(mut self, records_per_second: f64) -> Self {
        self.rate_limit = Some(records_per_second);
        self
    }
    /// A run stops after this many records re-driven or parked (default: no limit)
    /// and commits them; the next run goes on from there.
    pub fn max_records_per_run(mut self, records: u64) -> Self {
        self.max_records = Some(records);
        self
    }
    /// Decides without acting: a run publishes nothing, parks nothing and commits no
    /// offset; its [`super::RedriveReport`] says what it would have done.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Table of parked records (default `rk_parked_messages`).
    pub fn parked_table(mut self, table: impl Into<String>) -> Self {
        self.parked_table = table.into();
        self
    }

    /// Validates and creates the consumer and producer.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: no `topic`, an empty `group.id`, a zero
    /// `interval`, `max_run_time` or `idle_timeout`, an invalid `parked_table`, a
    /// `rate_limit` that is not positive, a zero `max_records_per_run`; [`Error::Kafka`] when librdkafka rejects
    /// the configuration.
    pub fn build(self) -> Result<DeadLetterRedriver<DB>, Error> {
        if self.topics.is_empty() {
            return Err(ConfigError::Missing { key: "topic".into() }.into());
        }
        if self.group.is_empty() {
            return Err(ConfigError::invalid("group.id", "must not be empty").into());
        }
        for (key, d) in
            [("interval", self.interval), ("max_run_time", self.max_run_time), ("idle_timeout", self.idle_timeout)]
        {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero").into());
            }
        }
        validate_identifier("parked_table", &self.parked_table)?;
        let min_gap = match self.rate_limit {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return Err(ConfigError::invalid("rate_limit", "must be a positive number of records per second").into())
            }
            Some(r) => Some(Duration::from_secs_f64(1.0 / r)),
            None => None,
        };
        if self.max_records == Some(0) {
            return Err(ConfigError::invalid("max_records_per_run", "must be at least 1").into());
        }
        let consumer_config = self.kafka.consumer_config(&self.group, &[]);
        // Checked here so that a bad configuration fails at build, not at the first run.
        let _: StreamConsumer = consumer_config.create().map_err(Error::kafka("create re-drive consumer"))?;
        let producer: crate::kafka::Producer = self
            .kafka
            .client_config(KafkaConfig::PRODUCER_PRESETS)
            .create_with_context(crate::kafka::HealthContext::new(self.group.clone()))
            .map_err(Error::kafka("create re-drive producer"))?;
        Ok(DeadLetterRedriver {
            consumer_config,
            producer,
            pool: self.pool,
            topics: self.topics,
            max_redrives: self.max_redrives,
            reasons: self.reasons,
            interval: self.interval,
            max_run_time: self.max_run_time,
            idle_timeout: self.idle_timeout,
            park_sql: crate::store::sql::park_insert(&self.parked_table),
            lock_name: format!("reliable-kafka:redrive:{}", self.group),
            group: self.group,
            stats: Arc::new(super::RedriveStats::with_interval(self.interval)),
            filter: self.filter,
            min_gap,
            max_records: self.max_records,
            dry_run: self.dry_run,
            any_reason: self.any_reason,
        })
    }
}
