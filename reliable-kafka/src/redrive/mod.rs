//! Re-drive: publishing dead-lettered records back to their original topic, bounded,
//! and parking those that exhausted their re-drives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::envelope::dead_letter::{redrive_count, redrive_headers};
use crate::envelope::find;
use crate::kafka::{send_one, OutRecord};
use crate::store::park::ParkRow;
use crate::worker::WorkerHandle;

mod builder;

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
}

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
        h
    }
}

impl RedriveStats {
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
}

/// What one [`DeadLetterRedriver::redrive_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Records re-published.
    pub redriven: u64,
    /// Records parked.
    pub parked: u64,
}

/// A range of one dead-letter partition to process in a run: `[start, end)`.
struct Span {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
}

impl<DB: Backend> DeadLetterRedriver<DB> {
    /// The counters, shared with the running re-driver.
    pub fn stats(&self) -> Arc<RedriveStats> {
        self.stats.clone()
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
        let result = self.redrive_locked().await;
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
        let spans = tokio::task::spawn_blocking(move || plan(&planner, &topics))
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
                if self.handle(&msg).await? {
                    report.redriven += 1;
                } else {
                    report.parked += 1;
                }
                done.insert(key.clone(), msg.offset() + 1);
                if msg.offset() + 1 >= end {
                    remaining.remove(&key);
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        // Commit what was handled even if the run stopped on an error, then always clean up.
        let committed = if done.is_empty() {
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
        // Closing blocks until the consumer has left; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        let result = result.and(committed);
        self.stats.redriven.fetch_add(report.redriven, Ordering::Relaxed);
        self.stats.parked.fetch_add(report.parked, Ordering::Relaxed);
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        result.map(|()| report)
    }

    /// Re-drives or parks one record; `true` when re-driven.
    async fn handle(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Result<bool, Error> {
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
            Some(i) if !i.reason.is_some_and(|r| self.reasons.contains(&r)) => Some(format!(
                "dead-lettered as `{}`, which re-driving cannot fix",
                i.reason.map_or("unknown", |r| r.as_str())
            )),
            Some(_) if count >= self.max_redrives => {
                Some(format!("re-driven {count} times (max {})", self.max_redrives))
            }
            Some(_) => None,
        };
        if let (None, Some(info)) = (&park_reason, &info) {
            let out = redrive_headers(hdrs, count + 1);
            let record = OutRecord {
                topic: info.original_topic.clone(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                headers: out,
            };
            send_one(&self.producer, record).await.map_err(Error::kafka("re-publish"))?;
            tracing::info!(topic = %info.original_topic, original_offset = info.original_offset, redrive = count + 1, "re-drove dead-lettered record");
            return Ok(true);
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
        Ok(false)
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

/// A header as JSON: `{"key": .., "value": ..}` for text, `{"key": .., "hex": ..}`
/// for binary values (such as Spring Kafka's big-endian partition and offset), since
/// PostgreSQL's `jsonb` cannot hold NUL characters.
fn header_json(h: Header<'_, &[u8]>) -> serde_json::Value {
    match h.value {
        None => serde_json::json!({ "key": h.key }),
        Some(v) => match std::str::from_utf8(v) {
            Ok(text) if !text.contains('\0') => serde_json::json!({ "key": h.key, "value": text }),
            _ => {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({ "key": h.key, "hex": hex })
            }
        },
    }
}

/// The partitions of `topics` with records past the committed offset.
fn plan(consumer: &StreamConsumer, topics: &[String]) -> Result<Vec<Span>, Error> {
    let timeout = Duration::from_secs(10);
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let md =
            consumer.fetch_metadata(Some(topic), timeout).map_err(Error::kafka("fetch dead-letter topic metadata"))?;
        for t in md.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(all, timeout).map_err(Error::kafka("read re-drive offsets"))?;
    let mut spans = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(Error::kafka("read dead-letter watermarks"))?;
        let start = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        if start < high {
            spans.push(Span { topic: e.topic().to_owned(), partition: e.partition(), start, end: high });
        }
    }
    drop(committed);
    Ok(spans)
}
