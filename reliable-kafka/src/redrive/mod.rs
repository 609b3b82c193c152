//! Re-drive: publishing dead-lettered records back to their original topic, bounded,
//! and parking those that exhausted their re-drives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::envelope::dead_letter::{redrive_count, redrive_headers};
use crate::envelope::find;
use crate::kafka::{send_one, OutRecord};
use crate::store::park::ParkRow;
use crate::worker::WorkerHandle;

mod builder;
pub(crate) mod plan;

use plan::header_json;
pub(crate) use plan::plan;

use crate::{headers, Backend, DeadLetterInfo, DeadLetterReason, DefaultBackend, Error};
pub use builder::DeadLetterRedriverBuilder;

/// Header counting how often a record was re-driven; moved to
/// [`headers::REDRIVE_COUNT`].
#[deprecated(since = "0.2.0", note = "use `reliable_kafka::headers::REDRIVE_COUNT`")]
pub const REDRIVE_COUNT: &str = headers::REDRIVE_COUNT;

/// Default of [`DeadLetterRedriverBuilder::interval`]: 5 minutes, as in seed 003.
pub const DEFAULT_REDRIVE_INTERVAL: Duration = Duration::from_secs(300);
/// Default of [`DeadLetterRedriverBuilder::max_run_time`].
pub const DEFAULT_MAX_RUN_TIME: Duration = Duration::from_secs(600);
/// Default of [`DeadLetterRedriverBuilder::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running re-driver, see [`DeadLetterRedriver::spawn`].
pub type RedriveHandle = WorkerHandle<RedriveStats>;

/// Periodically re-publishes records from dead-letter topics to their original topic
/// (read from `kafka_dlt-original-topic`), at most `max_redrives` times per record;
/// a record past that bound, or dead-lettered for a reason that retrying cannot fix
/// (a poison pill), is **parked**: stored in `rk_parked_messages` and logged at error
/// level, for a person to look at.
///
/// Each run reads every dead-letter partition from the re-driver's committed offset up
/// to the end offset seen when the run started, acts on each record (the re-publish is
/// awaited, the park committed), and then commits its offsets. A crash in between
/// re-drives a record twice; it carries its original message id, so the idempotent
/// consumer applies it once.
///
/// The re-published record keeps key, payload and headers, minus the `kafka_dlt-*` and
/// `rk-dlt-*` headers, with [`headers::REDRIVE_COUNT`] incremented.
///
/// Several instances may run: a PostgreSQL advisory lock per re-drive group lets one
/// run at a time; the others skip their turn. The lock holds one pooled connection for
/// the run, so the pool needs at least two. On SQLite the lock is per process.
pub struct DeadLetterRedriver<DB: Backend = DefaultBackend> {
    pub(super) consumer_config: rdkafka::ClientConfig,
    pub(super) producer: crate::kafka::Producer,
    pub(super) pool: Pool<DB>,
    pub(super) topics: Vec<String>,
    pub(super) max_redrives: u32,
    pub(super) reasons: Vec<DeadLetterReason>,
    pub(super) interval: Duration,
    pub(super) max_run_time: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) park_sql: String,
    pub(super) group: String,
    pub(super) lock_name: String,
    pub(super) stats: Arc<RedriveStats>,
    pub(super) filter: Option<Arc<RedriveFilter>>,
    /// Least time between two re-publishes (from `rate_limit`).
    pub(super) min_gap: Option<Duration>,
    pub(super) max_records: Option<u64>,
    pub(super) dry_run: bool,
    /// Every reason is worth re-driving, none included (records of Spring's recoverer).
    pub(super) any_reason: bool,
}

/// The predicate of [`DeadLetterRedriverBuilder::filter`].
pub type RedriveFilter = dyn Fn(&crate::DeadLetterRecord) -> bool + Send + Sync;

impl<DB: Backend> std::fmt::Debug for DeadLetterRedriver<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterRedriver")
            .field("topics", &self.topics)
            .field("max_redrives", &self.max_redrives)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Counters of a re-driver.
#[derive(Debug, Default)]
pub struct RedriveStats {
    redriven: AtomicU64,
    parked: AtomicU64,
    runs: AtomicU64,
    examined: AtomicU64,
    /// When the last run ended, ms since the epoch; 0 before the first.
    last_run_ms: AtomicU64,
    /// The interval between runs, ms (0: unknown).
    interval_ms: AtomicU64,
    /// The error of the last run, if it failed.
    last_error: std::sync::Mutex<Option<String>>,
}

impl crate::health::sealed::Sealed for RedriveStats {}

impl crate::health::WorkerHealth for RedriveStats {
    fn health(&self, worker: &str) -> crate::Health {
        let mut h = crate::Health::new(worker);
        if let Some(e) = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h.found(crate::HealthStatus::Degraded, format!("the last re-drive run failed: {e}"));
        }
        let (last, interval) = (self.last_run_ms.load(Ordering::Relaxed), self.interval_ms.load(Ordering::Relaxed));
        let since = crate::health::now_ms().saturating_sub(last);
        if last > 0 && interval > 0 && since > 3 * interval {
            let since = crate::health::human(Duration::from_millis(since));
            h.found(crate::HealthStatus::Degraded, format!("no re-drive run for {since} (3 intervals)"));
        }
        h
    }
}

impl RedriveStats {
    pub(crate) fn with_interval(interval: Duration) -> Self {
        let stats = RedriveStats::default();
        stats.interval_ms.store(interval.as_millis() as u64, Ordering::Relaxed);
        stats
    }

    /// Records re-published to their original topic.
    pub fn redriven(&self) -> u64 {
        self.redriven.load(Ordering::Relaxed)
    }
    /// Records parked.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
    /// Completed runs.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
    /// Records looked at, whatever became of them (dry runs and records the filter
    /// passed over included): the progress of a run in course.
    pub fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }
}

/// What one [`DeadLetterRedriver::redrive_once`] did (with `dry_run`: would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Records re-published.
    pub redriven: u64,
    /// Records parked.
    pub parked: u64,
    /// Records the filter left alone (passed over; not re-driven by this group again).
    pub skipped: u64,
}

impl<DB: Backend> DeadLetterRedriver<DB> {
    /// The counters, shared with the running re-driver.
    pub fn stats(&self) -> Arc<RedriveStats> {
        self.stats.clone()
    }

    /// The dead-letter topics it reads.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Whether it only reports what it would do (`dry_run`).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Processes what the dead-letter topics hold now (see the type's documentation).
    ///
    /// # Errors
    /// [`Error::Kafka`] when metadata, offsets or a re-publish fail; [`Error::Database`]
    /// when parking fails. Offsets of records already handled are committed first, so
    /// the next run resumes after them.
    pub async fn redrive_once(&self) -> Result<RedriveReport, Error> {
        // One instance at a time per re-drive group.
        let Some(lock) = DB::try_lock(&self.pool, &self.lock_name).await.map_err(Error::db("take re-drive lock"))?
        else {
            tracing::debug!(group = %self.lock_name, "another re-driver instance is running; skipped");
            return Ok(RedriveReport::default());
        };
        let span = crate::telemetry::spans::redrive(&self.topics.join(","), &self.lock_name);
        let result = tracing::Instrument::instrument(self.redrive_locked(), span).await;
        DB::release(lock).await;
        result
    }

    async fn redrive_locked(&self) -> Result<RedriveReport, Error> {
        // A fresh consumer per run: no prefetched records or assignment state survive
        // from one run to the next.
        let consumer: Arc<StreamConsumer> =
            Arc::new(self.consumer_config.create().map_err(Error::kafka("create re-drive consumer"))?);
        let planner = consumer.clone();
        let topics = self.topics.clone();
        let spans = tokio::task::spawn_blocking(move || plan(&planner, &topics, true))
            .await
            .map_err(|_| Error::Kafka { operation: "plan re-drive", source: rdkafka::error::KafkaError::Canceled })??;
        let mut report = RedriveReport::default();
        if spans.is_empty() {
            self.stats.runs.fetch_add(1, Ordering::Relaxed);
            return Ok(report);
        }
        let mut tpl = TopicPartitionList::new();
        for s in &spans {
            tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.start))
                .map_err(Error::kafka("assign dead-letter partitions"))?;
        }
        consumer.assign(&tpl).map_err(Error::kafka("assign dead-letter partitions"))?;
        drop(tpl);
        let mut remaining: HashMap<(String, i32), i64> =
            spans.iter().map(|s| ((s.topic.clone(), s.partition), s.end)).collect();
        let mut done: HashMap<(String, i32), i64> = HashMap::new();
        let deadline = tokio::time::Instant::now() + self.max_run_time;
        let mut pace = Pace { next: tokio::time::Instant::now(), gap: self.min_gap };
        let result = async {
            while !remaining.is_empty() {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(self.idle_timeout);
                let msg = match tokio::time::timeout(wait, consumer.recv()).await {
                    Err(_) => {
                        tracing::warn!(
                            left = remaining.len(),
                            idle_timeout = ?self.idle_timeout,
                            max_run_time = ?self.max_run_time,
                            "re-drive run stopped early: no record within idle_timeout, or max_run_time is up"
                        );
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "re-drive consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Ok(Ok(m)) => m,
                };
                let key = (msg.topic().to_owned(), msg.partition());
                let Some(&end) = remaining.get(&key) else {
                    continue;
                };
                if msg.offset() >= end {
                    remaining.remove(&key);
                    continue;
                }
                self.stats.examined.fetch_add(1, Ordering::Relaxed);
                let action = self.handle(&msg, &mut pace).await?;
                match action {
                    Action::Redriven => report.redriven += 1,
                    Action::Parked => report.parked += 1,
                    Action::Skipped => report.skipped += 1,
                }
                if !self.dry_run {
                    let (redriven, parked) = (action == Action::Redriven, action == Action::Parked);
                    crate::telemetry::record::redrive_run(msg.topic(), redriven as u64, parked as u64);
                }
                done.insert(key.clone(), msg.offset() + 1);
                if msg.offset() + 1 >= end {
                    remaining.remove(&key);
                }
                if self.max_records.is_some_and(|max| report.redriven + report.parked >= max) {
                    break;
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        // Commit what was handled even if the run stopped on an error, then always clean up.
        let committed = if done.is_empty() || self.dry_run {
            Ok(())
        } else {
            let mut commit = TopicPartitionList::new();
            let added: Result<(), _> = done.iter().try_for_each(|((topic, partition), next)| {
                commit.add_partition_offset(topic, *partition, Offset::Offset(*next))
            });
            added
                .and_then(|()| consumer.commit(&commit, CommitMode::Sync))
                .map_err(Error::kafka("commit re-drive offsets"))
        };
        let _ = consumer.unassign();
        // Closing blocks until the consumer has left (as long as the broker is away):
        // bounded, off the async workers, and never holding up the runtime's shutdown.
        crate::worker::close_within(&self.group, crate::worker::CONSUMER_CLOSE_TIMEOUT, move || drop(consumer)).await;
        let result = result.and(committed);
        if !self.dry_run {
            self.stats.redriven.fetch_add(report.redriven, Ordering::Relaxed);
            self.stats.parked.fetch_add(report.parked, Ordering::Relaxed);
        }
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        result.map(|()| report)
    }

    /// Re-drives, parks or skips one record.
    async fn handle(&self, msg: &rdkafka::message::BorrowedMessage<'_>, pace: &mut Pace) -> Result<Action, Error> {
        if let Some(filter) = &self.filter {
            if !filter(&crate::DeadLetterRecord::from_message(msg)) {
                return Ok(Action::Skipped);
            }
        }
        let hdrs = msg.headers();
        let info = hdrs.and_then(DeadLetterInfo::from_headers);
        let count = redrive_count(hdrs);
        let omitted = find(hdrs, headers::DLT_PAYLOAD_OMITTED).map(|v| String::from_utf8_lossy(v).into_owned());
        let park_reason = match &info {
            _ if omitted.is_some() => Some(format!(
                "dead-lettered without its payload ({} bytes, too large for the dead-letter topic); \
                 re-drive it from its original topic, partition and offset",
                omitted.as_deref().unwrap_or("?")
            )),
            None => Some("not a dead-letter record (kafka_dlt-original-* headers missing)".to_owned()),
            Some(i) if !self.any_reason && !i.reason.is_some_and(|r| self.reasons.contains(&r)) => Some(format!(
                "dead-lettered as `{}`, which re-driving cannot fix",
                i.reason.map_or("unknown", |r| r.as_str())
            )),
            Some(_) if count >= self.max_redrives => {
                Some(format!("re-driven {count} times (max {})", self.max_redrives))
            }
            Some(_) => None,
        };
        if let (None, Some(info)) = (&park_reason, &info) {
            if self.dry_run {
                return Ok(Action::Redriven);
            }
            pace.wait().await;
            let out = redrive_headers(hdrs, count + 1);
            let record = OutRecord {
                topic: info.original_topic.clone(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                headers: out,
            };
            send_one(&self.producer, record).await.map_err(Error::kafka("re-publish"))?;
            tracing::info!(topic = %info.original_topic, original_offset = info.original_offset, redrive = count + 1, "re-drove dead-lettered record");
            return Ok(Action::Redriven);
        }
        if self.dry_run {
            return Ok(Action::Parked);
        }
        let reason = park_reason.unwrap_or_default();
        let header_list: Vec<serde_json::Value> = hdrs.map(|h| h.iter().map(header_json).collect()).unwrap_or_default();
        let message_id = find(hdrs, headers::MESSAGE_ID).map(|v| String::from_utf8_lossy(v).into_owned());
        let row = ParkRow {
            dead_letter_topic: msg.topic(),
            dead_letter_partition: msg.partition(),
            dead_letter_offset: msg.offset(),
            message_id: message_id.clone(),
            original_topic: info.as_ref().map(|i| i.original_topic.clone()),
            original_partition: info.as_ref().map(|i| i.original_partition),
            original_offset: info.as_ref().map(|i| i.original_offset),
            consumer_group: info.as_ref().map(|i| i.consumer_group.clone()),
            reason: reason.clone(),
            error_message: info.as_ref().map(|i| i.error_message.clone()),
            attempts: info.as_ref().map(|i| i.attempts as i32),
            redrive_count: count as i32,
            key: msg.key(),
            payload: msg.payload(),
            headers: serde_json::Value::Array(header_list),
            dead_lettered_at: msg.timestamp().to_millis().and_then(chrono::DateTime::from_timestamp_millis),
        };
        DB::park(&self.pool, &self.park_sql, row).await.map_err(Error::db("park dead-lettered record"))?;
        tracing::error!(dead_letter_topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            message_id = message_id.as_deref().unwrap_or("-"), %reason, "parked dead-lettered record");
        Ok(Action::Parked)
    }

    /// Records past the re-driver's committed offsets in its dead-letter topics: what
    /// its next run would look at (for a progress bar).
    ///
    /// # Errors
    /// [`Error::Kafka`] when metadata, offsets or watermarks cannot be read.
    pub async fn pending(&self) -> Result<u64, Error> {
        let consumer: StreamConsumer =
            self.consumer_config.create().map_err(Error::kafka("create re-drive consumer"))?;
        let topics = self.topics.clone();
        let spans = tokio::task::spawn_blocking(move || plan(&consumer, &topics, true))
            .await
            .map_err(|_| Error::Kafka { operation: "plan re-drive", source: rdkafka::error::KafkaError::Canceled })??;
        Ok(spans.iter().map(|s| (s.end - s.start).max(0) as u64).sum())
    }

    /// Runs [`DeadLetterRedriver::redrive_once`] every `interval` until `shutdown`.
    /// Errors of a run are logged; the next run retries.
    ///
    /// # Errors
    /// None today: failures while running are retried. The `Result` is the workers'
    /// common signature ([`WorkerHandle::shutdown`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        loop {
            let result = self.redrive_once().await;
            self.stats.last_run_ms.store(crate::health::now_ms(), Ordering::Relaxed);
            *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                result.as_ref().err().map(|e| crate::report(e));
            match result {
                Ok(r) if r.redriven + r.parked > 0 => {
                    tracing::info!(redriven = r.redriven, parked = r.parked, "re-drive run done")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %crate::report(&e), "re-drive run failed"),
            }
            if crate::worker::sleep_or_shutdown(self.interval, &shutdown).await {
                crate::worker::flush(&self.producer).await;
                return Ok(());
            }
        }
    }

    /// Spawns [`DeadLetterRedriver::run`] on the current Tokio runtime; the handle's
    /// name is the re-driver's consumer group.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn(self) -> RedriveHandle {
        WorkerHandle::spawn(self.group.clone(), self.stats(), |shutdown| self.run(shutdown))
    }
}

/// What became of one record.
#[derive(PartialEq, Eq)]
enum Action {
    Redriven,
    Parked,
    Skipped,
}

/// Spaces re-publishes `gap` apart (the rate limit).
struct Pace {
    next: tokio::time::Instant,
    gap: Option<Duration>,
}

impl Pace {
    async fn wait(&mut self) {
        if let Some(gap) = self.gap {
            tokio::time::sleep_until(self.next).await;
            self.next = tokio::time::Instant::now().max(self.next) + gap;
        }
    }
}
