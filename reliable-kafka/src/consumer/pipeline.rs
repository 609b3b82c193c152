//! The path of one record, top-down: [`Pipeline::process_batch`] tries a batch in one
//! transaction ([`Pipeline::try_batch`]), else runs the records one by one through the
//! retry loop ([`Pipeline::process`]), each attempt in its own transaction
//! ([`Pipeline::attempt`]: dedup row, handler, check, commit); what cannot succeed goes
//! to the dead-letter topic (`dead_letter.rs`).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::message::Message;
use sqlx::Pool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::dead_letter::Failure;
use super::paused::{Retries, Tracked};
use super::retry_topics;
use super::routes::{Resolution, Route, TopicRoutes, UnknownEventType};
use super::stats::ContainerStats;
use crate::health::now_ms;
use crate::store::TransactionState;
use crate::telemetry::record::ConsumerMetrics;
use crate::telemetry::spans;
use crate::worker::InfraBackoff;
use crate::{Backend, DeadLetterReason, Error, HandlerContext, HandlerError, HandlerFault, RecordInfo};

/// Everything a record's processing needs, shared by the poll loop and batch tasks.
pub(crate) struct Pipeline<DB: Backend> {
    pub group: Arc<str>,
    pub pool: Pool<DB>,
    /// The route table of each subscribed topic.
    pub routes: HashMap<String, TopicRoutes<DB>>,
    pub unknown_event_types: UnknownEventType,
    pub producer: crate::kafka::Producer,
    pub dedup_sql: Arc<DB::DedupSql>,
    pub stats: Arc<ContainerStats>,
    pub metrics: ConsumerMetrics,
    pub handler_timeout: Duration,
    pub processed_retention: Duration,
    /// Each partition's failing record between attempts (shared with the rebalance
    /// callback, which forgets those of revoked partitions).
    pub retries: Arc<Retries>,
    /// Deduplicate numbered records by watermark (`watermark.rs`).
    pub watermark: bool,
}

/// What may stop a record's processing. Shutdown cuts infrastructure waits short (the
/// attempt in hand finishes and commits; a record whose wait was cut stays
/// uncommitted); a
/// revoke of the record's partition also abandons the attempt in hand (its
/// transaction rolled back, nothing committed), so that the partition's new owner
/// never runs a record this member still works on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop<'a> {
    pub shutdown: &'a CancellationToken,
    pub revoked: &'a CancellationToken,
}

impl Stop<'_> {
    /// Sleeps `d` unless shutdown or a revoke comes first; returns whether one came.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.shutdown.cancelled() => true,
            _ = self.revoked.cancelled() => true,
        }
    }
}

/// What became of one record.
pub(crate) enum Outcome {
    /// Processed, skipped as duplicate, dead-lettered or sent to its retry topic: its
    /// offset may be committed.
    Done,
    /// It waits for its next attempt until `until`: its partition is to be paused and
    /// rewound to it (see `paused.rs`).
    Wait { until: Instant },
    /// Shutdown or a revoke came first: its offset must not be committed.
    Interrupted,
}

/// How far [`Pipeline::process_batch`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Records done, from the first.
    pub done: usize,
    /// Shutdown or a revoke stopped it.
    pub interrupted: bool,
    /// The record at `done` waits until then, with its partition paused.
    pub wait: Option<Instant>,
}

impl Progress {
    fn all(done: usize) -> Self {
        Progress { done, interrupted: false, wait: None }
    }
}

/// Why a batch was not committed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    #[error("no handler for the topic")]
    NoRoute,
    #[error("record at offset {0} is for no handler (identity, event type or schema version)")]
    NotForHandler(i64),
    #[error("a payload could not be decoded")]
    Decode(#[source] crate::CodecError),
    #[error("the handler failed")]
    Handler(#[source] HandlerError),
    #[error("the handler panicked")]
    Panic,
    #[error("the transaction could not commit")]
    Database(#[source] sqlx::Error),
    #[error("the transaction was aborted or rolled back by the database")]
    Aborted,
    #[error("abandoned: the partition was revoked")]
    Cancelled,
}

pub(crate) enum AttemptError {
    Infrastructure(Error),
    Decode(crate::CodecError),
    Handler(HandlerError),
    Cancelled,
}

impl<DB: Backend> Pipeline<DB> {
    /// Processes a batch of records of one partition. A batch of several records is
    /// tried in one transaction; when that fails its records are processed one by one,
    /// up to the first that must wait for its next attempt.
    pub(crate) async fn process_batch<M: Message + Sync>(&self, batch: &[M], stop: Stop<'_>) -> Progress {
        self.metrics.batch_size(batch.len());
        // A batch that starts with a record between attempts goes record by record, so
        // that its attempts are counted.
        let first = &batch[0];
        // (or any record of the partition: `process` catches one delivered past it)
        let retrying = self.retries.of_partition(first.topic(), first.partition()).is_some();
        let batchable = self.routes.get(first.topic()).is_some_and(|t| {
            t.retry_stage.is_none()
                && t.routes
                    .iter()
                    .all(|r| !r.key_blocking && !r.dedup_in_redis() && r.breaker.as_ref().is_none_or(|b| b.is_closed()))
        });
        if batch.len() > 1 && !retrying && batchable {
            match self.try_batch(batch, stop).await {
                Ok(()) => return Progress::all(batch.len()),
                Err(BatchError::Cancelled) => return Progress { done: 0, interrupted: true, wait: None },
                Err(why) => {
                    ContainerStats::add(&self.stats.batch_fallbacks, 1);
                    tracing::debug!(group = %self.group, records = batch.len(), why = %crate::report(&why),
                        "batch not committed; processing record by record");
                }
            }
        }
        for (i, msg) in batch.iter().enumerate() {
            match self.process(msg, stop).await {
                Outcome::Interrupted => return Progress { done: i, interrupted: true, wait: None },
                Outcome::Wait { until } => return Progress { done: i, interrupted: false, wait: Some(until) },
                Outcome::Done => {}
            }
        }
        Progress::all(batch.len())
    }

    /// All records of `batch` in one transaction, or nothing.
    /// Records of several event types run through their handlers in runs of
    /// consecutive records of one handler, in partition order, in the one transaction.
    async fn try_batch<M: Message + Sync>(&self, batch: &[M], stop: Stop<'_>) -> Result<(), BatchError> {
        let topic = self.routes.get(batch[0].topic()).ok_or(BatchError::NoRoute)?;
        let mut items = Vec::with_capacity(batch.len());
        let mut numbers = Vec::with_capacity(batch.len());
        let mut skipped = 0;
        for msg in batch {
            match topic.resolve(msg, self.unknown_event_types) {
                Resolution::Route(route, info) => {
                    let payload = msg.payload().unwrap_or_default();
                    let event = route.handler.decode(payload).map_err(BatchError::Decode)?;
                    // (a batch has no retry topic nor key-blocking handler)
                    numbers.push(self.number_of(msg, false, false));
                    items.push((route, info, event));
                }
                Resolution::Skip { .. } => skipped += 1,
                Resolution::Reject { .. } => return Err(BatchError::NotForHandler(msg.offset())),
            }
        }
        if skipped > 0 {
            tracing::info!(group = %self.group, topic = batch[0].topic(), partition = batch[0].partition(), skipped,
                "records of event types no handler takes; skipped");
        }
        if items.is_empty() {
            ContainerStats::add(&self.stats.skipped, skipped);
            return Ok(());
        }
        let ids: Vec<Uuid> = items.iter().map(|(_, info, _)| info.message_id).collect();
        let (first, metrics) = (&items[0].1, self.metrics.topic(batch[0].topic()));
        let span = spans::process_batch(
            &first.topic,
            first.partition,
            &self.group,
            items.len(),
            items.iter().map(|(_, info, _)| info.traceparent.as_deref()),
        );
        let mut tx = DB::begin_write(&self.pool).await.map_err(BatchError::Database)?;
        let place = (batch[0].topic(), batch[0].partition());
        let (new, marks) = self.admit(&mut tx, place, &ids, &numbers).await.map_err(BatchError::Database)?;
        let mut ctx = HandlerContext::open(Some(tx), None, items[0].1.clone(), 1, self.group.clone());
        let mut handled = HashSet::with_capacity(new.len());
        let mut produced_at = Vec::with_capacity(new.len());
        // Runs of consecutive new records of one route.
        let mut runs: Vec<(&Route<DB>, Vec<_>)> = Vec::new();
        for ((route, info, event), new) in items.into_iter().zip(new) {
            // Already processed, or a second copy within the batch.
            if new && handled.insert(info.message_id) {
                produced_at.push(info.produced_at_ms);
                match runs.last_mut() {
                    Some((r, work)) if std::ptr::eq(*r, route) => work.push((event, info)),
                    _ => runs.push((route, vec![(event, info)])),
                }
            }
        }
        // One deadline for the whole batch, however many runs of handlers it has.
        let deadline = tokio::time::Instant::now() + self.handler_timeout;
        for (route, work) in runs {
            ctx.record = work[0].1.clone();
            let call =
                AssertUnwindSafe(route.handler.call_batch(work, &mut ctx)).catch_unwind().instrument(span.clone());
            let started = std::time::Instant::now();
            let r = tokio::select! {
                biased;
                _ = stop.revoked.cancelled() => return Err(BatchError::Cancelled),
                r = tokio::time::timeout_at(deadline, call) => r,
            };
            metrics.handler.record(started.elapsed().as_secs_f64());
            match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(BatchError::Handler(e)),
                Ok(Err(_panic)) => return Err(BatchError::Panic),
                Err(_) => {
                    return Err(BatchError::Handler(HandlerError::transient(HandlerFault::Timeout(
                        self.handler_timeout,
                    ))))
                }
            }
        }
        match DB::check_transaction(ctx.transaction()).await.map_err(BatchError::Database)? {
            TransactionState::Open => {}
            TransactionState::Aborted => return Err(BatchError::Aborted),
        }
        self.raise(ctx.transaction(), place, &marks).await.map_err(BatchError::Database)?;
        if stop.revoked.is_cancelled() {
            return Err(BatchError::Cancelled);
        }
        fault_point!(crate::fault::CONSUMER_BEFORE_COMMIT);
        ctx.tx.take().expect("opened with a transaction").commit().await.map_err(BatchError::Database)?;
        if !handled.is_empty() {
            fault_point!(crate::fault::CONSUMER_AFTER_COMMIT);
        }
        ContainerStats::add(&self.stats.processed, handled.len());
        ContainerStats::add(&self.stats.duplicates, batch.len() - skipped - handled.len());
        ContainerStats::add(&self.stats.skipped, skipped);
        metrics.counted(handled.len(), batch.len() - skipped - handled.len(), skipped);
        let now = now_ms();
        produced_at.iter().for_each(|at| metrics.handled(*at, now));
        ContainerStats::add(&self.stats.batches, 1);
        Ok(())
    }

    /// One record: its checks, then an attempt (infrastructure failures retried in
    /// place); after a failure, what `retry.rs` decides.
    pub(crate) async fn process<M: Message + Sync>(&self, msg: &M, stop: Stop<'_>) -> Outcome {
        let Some(topic) = self.routes.get(msg.topic()) else {
            // Only subscribed topics are delivered; nothing to do.
            return Outcome::Done;
        };
        // Nothing passes a waiting record, a poison pill neither.
        let now = Instant::now();
        let waiting = self.retries.of_partition(msg.topic(), msg.partition());
        if let Some(outcome) = self.past_waiting(msg, waiting, now) {
            return outcome;
        }
        let (route, info) = match topic.resolve(msg, self.unknown_event_types) {
            Resolution::Route(route, info) => (route, info),
            Resolution::Reject { failure, dead_letter_topic } => {
                return self.dead_letter(msg, dead_letter_topic, failure, stop).await
            }
            Resolution::Skip { event_type } => {
                ContainerStats::add(&self.stats.skipped, 1);
                self.metrics.topic(msg.topic()).skipped.increment(1);
                tracing::info!(group = %self.group, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                    event_type = event_type.as_deref().unwrap_or("-"), "no handler takes the event type; skipped");
                return Outcome::Done;
            }
        };
        if route.key_blocking {
            if let Some(outcome) = self.defer_if_blocked(msg, stop).await {
                return outcome;
            }
        }
        let tracked = waiting.filter(|t| t.offset == msg.offset());
        let attempt = match (tracked, topic.retry_stage) {
            (Some(t), _) => t.next_attempt,
            (None, Some(stage)) => retry_topics::attempt(msg, stage),
            (None, None) => 1,
        };
        let due = match topic.retry_stage {
            Some(_) => retry_topics::due(msg, now, now_ms() as i64),
            None => None,
        };
        let wait = due.or(tracked.map(|t| t.due)).filter(|&until| until > now);
        if let Some(until) = wait.or_else(|| route.breaker.as_ref().and_then(|b| b.admit(now))) {
            // Every wait is tracked, so that a record past this one is caught.
            let rewinds = tracked.map_or(0, |t| t.rewinds);
            self.retries.set(
                msg.topic(),
                msg.partition(),
                Tracked { offset: msg.offset(), next_attempt: attempt, due: until, rewinds },
            );
            return Outcome::Wait { until };
        }
        let mut infra = InfraBackoff::new();
        loop {
            match self.attempt(msg, route, &info, attempt, stop).await {
                Ok(duplicate) => {
                    self.succeeded(route, &info, duplicate);
                    self.retries.clear(msg.topic(), msg.partition(), msg.offset());
                    return Outcome::Done;
                }
                Err(AttemptError::Cancelled) => return Outcome::Interrupted,
                Err(AttemptError::Infrastructure(e)) => {
                    ContainerStats::add(&self.stats.infrastructure_errors, 1);
                    tracing::warn!(group = %self.group, topic = %info.topic, partition = info.partition, offset = info.offset,
                        error = %crate::report(&e), "infrastructure failure; retrying the record");
                    if stop.sleep(infra.next_delay()).await {
                        return Outcome::Interrupted;
                    }
                }
                Err(AttemptError::Decode(e)) => {
                    if let Some(breaker) = &route.breaker {
                        breaker.release_probe();
                    }
                    let failure = Failure::new(DeadLetterReason::Deserialization, CODEC_ERROR_PATH, &e, attempt);
                    return self.give_up(msg, &route.dead_letter_topic, failure, stop).await;
                }
                Err(AttemptError::Handler(e)) => return self.failed(msg, topic, route, &info, attempt, e, stop).await,
            }
        }
    }

    /// One attempt; `Ok(true)` when the message id was already processed.
    pub(crate) async fn attempt<M: Message + Sync>(
        &self,
        msg: &M,
        route: &Route<DB>,
        info: &RecordInfo,
        attempt: u32,
        stop: Stop<'_>,
    ) -> Result<bool, AttemptError> {
        let event = route.handler.decode(msg.payload().unwrap_or_default()).map_err(AttemptError::Decode)?;
        #[cfg(feature = "redis")]
        if let Some(dedup) = &route.redis_dedup {
            return self.attempt_in_redis(dedup, event, route, info, attempt, stop).await;
        }
        let infra = |op| move |e| AttemptError::Infrastructure(Error::Database { operation: op, source: e });
        let mut tx = DB::begin_write(&self.pool).await.map_err(infra("begin handler transaction"))?;
        let place = (msg.topic(), msg.partition());
        let number = self.number_of(
            msg,
            self.routes.get(msg.topic()).is_some_and(|t| t.retry_stage.is_some()),
            route.key_blocking,
        );
        let mut marks = None;
        let new = if number.is_none() {
            crate::fault::sabotaged(crate::fault::SABOTAGE_NO_DEDUP)
                || DB::insert_dedup(&mut tx, &self.dedup_sql, &self.group, info.message_id)
                    .await
                    .map_err(infra("insert dedup row"))?
        } else {
            let (new, m) =
                self.admit(&mut tx, place, &[info.message_id], &[number]).await.map_err(infra("read watermark"))?;
            marks = Some(m);
            new[0]
        };
        if !new {
            tracing::debug!(group = %self.group, message_id = %info.message_id, "duplicate delivery skipped");
            return Ok(true);
        }
        let mut ctx = HandlerContext::open(Some(tx), None, info.clone(), attempt, self.group.clone());
        self.call_handler(route, event, &mut ctx, info, attempt, stop).await?;
        // A handler that swallowed a failed statement must not count as success.
        match DB::check_transaction(ctx.transaction()).await {
            Ok(TransactionState::Open) => {}
            Ok(TransactionState::Aborted) => {
                return Err(AttemptError::Handler(HandlerError::permanent(HandlerFault::AbortedTransaction)))
            }
            Err(e) => return Err(classify_db(e, "check handler transaction")),
        }
        if let Some(marks) = &marks {
            self.raise(ctx.transaction(), place, marks).await.map_err(|e| classify_db(e, "raise watermark"))?;
        }
        if stop.revoked.is_cancelled() {
            return Err(AttemptError::Cancelled);
        }
        fault_point!(crate::fault::CONSUMER_BEFORE_COMMIT);
        let tx = ctx.tx.take().expect("opened with a transaction");
        tx.commit().await.map_err(|e| classify_db(e, "commit handler transaction"))?;
        fault_point!(crate::fault::CONSUMER_AFTER_COMMIT);
        Ok(false)
    }

    /// Calls the handler of `route` with `event` under the handler timeout, a panic
    /// caught; `Ok` when it returned `Ok`.
    pub(crate) async fn call_handler(
        &self,
        route: &Route<DB>,
        event: super::handler::AnyEvent,
        ctx: &mut HandlerContext<DB>,
        info: &RecordInfo,
        attempt: u32,
        stop: Stop<'_>,
    ) -> Result<(), AttemptError> {
        // A panic is a permanent failure of this record, not of the container; a hung
        // handler is a transient one (the transaction is rolled back on drop).
        let span = spans::process(info, &self.group, attempt);
        let call = AssertUnwindSafe(route.handler.call(event, ctx)).catch_unwind().instrument(span);
        let started = std::time::Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.revoked.cancelled() => return Err(AttemptError::Cancelled),
            r = tokio::time::timeout(self.handler_timeout, call) => r,
        };
        self.metrics.topic(&info.topic).handler.record(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(AttemptError::Handler(HandlerError::transient(HandlerFault::Timeout(self.handler_timeout)))),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(AttemptError::Handler(HandlerError::permanent(HandlerFault::Panic(msg))))
            }
            Ok(Ok(result)) => result.map_err(AttemptError::Handler),
        }
    }
}

/// `kafka_dlt-exception-fqcn` of a record whose payload cannot be decoded.
pub(crate) const CODEC_ERROR_PATH: &str = "reliable_kafka::CodecError";

/// A record no handler of its topic takes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnexpectedRecord {
    /// No handler of the topic takes the record's event type.
    #[error("no handler takes event type {}; the topic's handlers take {}",
        found.as_deref().map_or("(none: the record has no event type and the topic has several handlers)".to_owned(), |t| format!("`{t}`")),
        handled.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "))]
    EventType {
        /// The record's event type, if its identity source gave one.
        found: Option<String>,
        /// The event types the topic's handlers take, in registration order.
        handled: Vec<String>,
    },
    /// The envelope's schema version is newer than the handler's event type.
    #[error("schema version {found} is newer than the supported {supported}")]
    SchemaVersion {
        /// The record's schema version.
        found: u32,
        /// The handler's.
        supported: u32,
    },
}

impl UnexpectedRecord {
    /// The path written to `kafka_dlt-exception-fqcn`.
    pub(crate) const PATH: &'static str = "reliable_kafka::UnexpectedRecord";
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
