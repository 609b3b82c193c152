//! [`ListenerContainer`]: the poll loop of one consumer group, offsets and rebalances.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use super::paused::{Paused, Retries};
use super::pipeline::{Pipeline, Stop};
use super::prune::prune_processed;
use super::scheduler::{Partitions, Scheduler};
use super::stats::ContainerStats;
use crate::kafka::LogContext;
use crate::worker::WorkerHandle;
use crate::{Backend, DefaultBackend, Error};

/// How long the poll loop waits for a record before it looks at shutdown and commits.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Consumer errors (broker outages, unknown topics) are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A running container, see [`ListenerContainer::spawn`].
pub type ContainerHandle = WorkerHandle<ContainerStats>;

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
///    [`crate::BackOff`] (or the `RetryAfter` the handler asks for) decides the wait
///    before the next attempt. The partition waits, paused and rewound to the record,
///    while polling goes on (see the retry modes in the crate documentation); with
///    `HandlerOptions::key_blocking` only its key waits, in `rk_blocked_records`; after the
///    last attempt, or on a permanent failure, the record is published to the
///    dead-letter topic with the `kafka_dlt-*` headers. A handler with retry topics
///    ([`crate::RetryTopics`]) publishes the record to its next retry topic instead, and
///    its partition moves on; one with a circuit breaker ([`crate::CircuitBreaker`])
///    stops calling its handler while the downstream is unavailable;
/// 5. only then is its offset stored; stored offsets are committed every
///    `commit_interval`, before partitions are revoked, and at shutdown.
///
/// A handler attempt is bounded by `handler_timeout` (a transient failure when
/// exceeded); a panicking handler fails its record permanently; a handler that returns
/// `Ok` while its transaction cannot commit (a swallowed failed statement on
/// PostgreSQL, a rollback by SQLite) fails it permanently too. Waits between attempts
/// have no bound: the member keeps polling through them.
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
pub struct ListenerContainer<DB: Backend = DefaultBackend> {
    consumer: Arc<StreamConsumer<ContainerContext>>,
    pipeline: Arc<Pipeline<DB>>,
    commit_interval: Duration,
    max_batch: usize,
    partition_concurrency: usize,
    /// Partitions paused while their record waits for its next attempt.
    paused: Arc<Paused>,
}

impl<DB: Backend> std::fmt::Debug for ListenerContainer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContainer")
            .field("group", &self.pipeline.group)
            .field("topics", &self.pipeline.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The consumer's librdkafka context: logging, commit results, and rebalances.
pub(crate) struct ContainerContext {
    log: LogContext,
    /// Set when an asynchronous commit failed, so the loop commits again.
    commit_failed: Arc<AtomicBool>,
    /// Batches running per partition (`partition_concurrency > 1`).
    pub(crate) partitions: Arc<Partitions>,
    /// Longest wait for a revoked partition's batches to end.
    settle_timeout: Duration,
    /// The container's stats: assigned partitions and broker state, for health.
    stats: Arc<ContainerStats>,
    /// The partitions assigned now (the key-blocking retrier works on their records).
    pub(crate) owned: Arc<Mutex<HashSet<(String, i32)>>>,
    /// The failing records between attempts, forgotten when their partition is revoked.
    pub(crate) retries: Arc<Retries>,
}

impl ContainerContext {
    pub(crate) fn new(group: String, settle_timeout: Duration, stats: Arc<ContainerStats>) -> Self {
        ContainerContext {
            log: LogContext { worker: group },
            commit_failed: Arc::default(),
            partitions: Arc::default(),
            settle_timeout,
            stats,
            owned: Arc::default(),
            retries: Arc::default(),
        }
    }

    /// Cancels the batches of revoked partitions and waits for them to end, so that
    /// none commits after the revoke and the new owner never runs a record this
    /// member still works on. On a current-thread runtime the batches cannot run while
    /// this callback blocks the thread: they are cancelled, and each sees it before
    /// its commit.
    fn settle(&self, tpl: &rdkafka::TopicPartitionList) {
        let revoked: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let settled = if multi_thread {
            tokio::task::block_in_place(|| self.partitions.cancel_and_settle(&revoked, self.settle_timeout))
        } else {
            self.partitions.cancel_and_settle(&revoked, Duration::ZERO)
        };
        if !settled && multi_thread {
            tracing::warn!(worker = %self.log.worker, "batches of revoked partitions still running after {:?}", self.settle_timeout);
        }
    }
}

impl ClientContext for ContainerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.stats.brokers.on_error(&error);
        self.log.error(error, reason)
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.brokers.on_statistics(statistics, &self.log.worker);
    }
}

impl ConsumerContext for ContainerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Sequential containers process records between polls, so when this runs no
        // record is in hand (records received but not processed yet are dropped by the
        // poll loop: see `Partitions::revoked_since`); concurrent ones abandon and
        // settle their batches of the revoked partitions first. Then what is stored is
        // committed.
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = tpl.count() as u64;
            let _ = self
                .stats
                .assigned
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(revoked)));
            tracing::info!(group = %self.log.worker, partitions = tpl.count(), "partitions revoked; committing");
            let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                owned.remove(&(e.topic().to_owned(), e.partition()));
            }

            drop(owned);
            self.settle(tpl);
            // After the settle: a batch still ending could track a record again.
            self.retries.forget(tpl.elements().iter().map(|e| (e.topic(), e.partition())));
            commit(consumer, CommitMode::Sync, &self.log.worker);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(group = %self.log.worker, error = %e, "offset commit failed; committing again");
                self.commit_failed.store(true, Ordering::Relaxed);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Counted from the rebalance's own lists, never with `consumer.assignment()`:
        // called from here while the consumer closes, that waits forever on
        // librdkafka's main thread. An eager rebalance revokes everything before it
        // assigns the new set; a cooperative one revokes and assigns increments: adding
        // and subtracting serves both.
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(group = %self.log.worker, partitions = tpl.count(), "partitions assigned");
            self.stats.ever_assigned.store(true, Ordering::Relaxed);
            self.stats.assigned.fetch_add(tpl.count() as u64, Ordering::Relaxed);
            let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            owned.extend(tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
        }
    }
}

fn commit<C: ConsumerContext, K: Consumer<C>>(consumer: &K, mode: CommitMode, group: &str) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(group, error = %e, "offset commit failed; will retry with the next commit"),
    }
}

impl<DB: Backend> ListenerContainer<DB> {
    pub(crate) fn new(
        consumer: Arc<StreamConsumer<ContainerContext>>,
        pipeline: Arc<Pipeline<DB>>,
        commit_interval: Duration,
        max_batch: usize,
        partition_concurrency: usize,
    ) -> Self {
        ListenerContainer {
            consumer,
            pipeline,
            commit_interval,
            max_batch,
            partition_concurrency,
            paused: Arc::default(),
        }
    }

    /// Tags a record just received with the revocation epoch (see
    /// [`Partitions::revoked_since`]) and counts it.
    fn tag<'c>(&self, m: BorrowedMessage<'c>) -> (u64, BorrowedMessage<'c>) {
        ContainerStats::add(&self.pipeline.stats.received, 1);
        self.pipeline.stats.brokers.reachable();
        (self.consumer.context().partitions.epoch(), m)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.pipeline.group
    }

    /// The container's counters, shared with the running container.
    pub fn stats(&self) -> Arc<ContainerStats> {
        self.pipeline.stats.clone()
    }

    /// Subscribes and processes records until `shutdown` is cancelled; then finishes
    /// the record in hand (a retry wait is cut short and that record left uncommitted;
    /// a dead-letter publish gets [`crate::PRODUCER_FLUSH_TIMEOUT`] to be acknowledged),
    /// commits stored offsets, flushes the dead-letter producer and leaves the group.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the subscription fails. Errors while running are logged
    /// and retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let group = self.pipeline.group.clone();
        let topics: Vec<&str> = self.pipeline.routes.keys().map(String::as_str).collect();
        self.consumer.subscribe(&topics).map_err(Error::kafka("subscribe"))?;
        tracing::info!(%group, ?topics, "listener container started");
        self.pipeline.metrics.paused_partitions(0);
        let pruner = tokio::spawn(prune_processed(
            self.pipeline.pool.clone(),
            self.pipeline.dedup_sql.clone(),
            group.clone(),
            self.pipeline.processed_retention,
            shutdown.clone(),
        ));
        let retrier = self.pipeline.routes.values().any(|t| t.routes.iter().any(|r| r.key_blocking)).then(|| {
            let owned = self.consumer.context().owned.clone();
            tokio::spawn(self.pipeline.clone().run_blocked(owned, shutdown.clone()))
        });
        let commit_failed = self.consumer.context().commit_failed.clone();
        let mut scheduler = (self.partition_concurrency > 1).then(|| {
            Scheduler::new(
                self.pipeline.clone(),
                self.consumer.clone(),
                self.partition_concurrency,
                self.paused.clone(),
            )
        });
        let mut paused_now = 0;
        let mut last_commit = Instant::now();
        let mut last_error_log: Option<Instant> = None;
        let mut dirty = false;
        let partitions = self.consumer.context().partitions.clone();
        // In sequential mode records are processed between polls: a revoke never
        // finds one in hand.
        let never_revoked = CancellationToken::new();
        let stop = Stop { shutdown: &shutdown, revoked: &never_revoked };
        // Records received but not processed yet, in order, each tagged with the
        // revocation epoch of its receipt: the rest of a batch whose fallback stopped
        // after a failing record, and records of another partition met while filling
        // a batch.
        let mut pending = VecDeque::new();
        loop {
            // Partitions whose waiting record is due, or that were revoked, resume.
            let (still_paused, next_due) = self
                .paused
                .resume_due(&self.consumer, Instant::now(), |key, epoch| partitions.rebalanced_since(key, epoch));
            if still_paused != paused_now {
                paused_now = still_paused;
                self.pipeline.metrics.paused_partitions(paused_now);
                self.pipeline.stats.paused.store(paused_now as u64, Ordering::Relaxed);
            }
            let poll_wait = next_due.map_or(POLL_WAIT, |due| {
                due.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), POLL_WAIT)
            });
            self.pipeline.stats.polled();
            // The rest of a stopped batch comes first, after a poll that keeps the member
            // alive (its record joins `pending`).
            let received = match pending.pop_front() {
                Some(held) => {
                    if let Ok(Ok(polled)) = tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                        pending.push_back(self.tag(polled));
                    }
                    Ok(Ok(held))
                }
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    r = tokio::time::timeout(poll_wait, self.consumer.recv()) => r.map(|r| r.map(|m| self.tag(m))),
                },
            };
            match received {
                Err(_idle) => {}
                Ok(Err(e)) => {
                    // Broker outages, authorization and unknown-topic errors surface here;
                    // librdkafka recovers from the transient ones.
                    if last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                        tracing::warn!(%group, error = %e, "consumer error");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok(first)) => {
                    let mut batch = vec![first];
                    // Records already fetched, of the same partition, join the batch.
                    while batch.len() < self.max_batch {
                        let next = match pending.pop_front() {
                            Some(held) => Ok(Ok(held)),
                            None => tokio::time::timeout(Duration::ZERO, self.consumer.recv())
                                .await
                                .map(|r| r.map(|m| self.tag(m))),
                        };
                        match next {
                            Ok(Ok(m))
                                if m.1.partition() == batch[0].1.partition() && m.1.topic() == batch[0].1.topic() =>
                            {
                                batch.push(m)
                            }
                            Ok(Ok(m)) => {
                                pending.push_front(m);
                                break;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%group, error = %e, "consumer error while batching");
                                break;
                            }
                            Err(_nothing_fetched) => break,
                        }
                    }
                    // A revoke during the polls above takes the partition's records
                    // received before it: they belong to the past assignment.
                    let now = partitions.epoch();
                    let stale = |(epoch, m): &(u64, BorrowedMessage<'_>)| {
                        *epoch != now && partitions.revoked_since(&(m.topic().to_owned(), m.partition()), *epoch)
                    };
                    batch.retain(|held| !stale(held));
                    pending.retain(|held| !stale(held));
                    if batch.is_empty() {
                        continue;
                    }
                    self.pipeline.stats.touch();
                    let epoch = batch[0].0;
                    let batch: Vec<BorrowedMessage<'_>> = batch.into_iter().map(|(_, m)| m).collect();
                    if let Some(scheduler) = scheduler.as_mut() {
                        let owned = batch.iter().map(|m| m.detach()).collect();
                        drop(batch);
                        if !scheduler.dispatch(owned, epoch, &shutdown).await {
                            break;
                        }
                    } else {
                        if crate::fault::sabotaged(crate::fault::SABOTAGE_OFFSETS_BEFORE_COMMIT) {
                            // At-most-once: the offsets go first, the work after.
                            let last = &batch[batch.len() - 1];
                            let _ = self.consumer.store_offset(last.topic(), last.partition(), last.offset());
                            commit(&*self.consumer, CommitMode::Sync, &group);
                        }
                        let progress = self.pipeline.process_batch(&batch, stop).await;
                        if let Some(last) = progress.done.checked_sub(1).map(|i| &batch[i]) {
                            if let Err(e) = self.consumer.store_offset(last.topic(), last.partition(), last.offset()) {
                                // The partition was revoked meanwhile; its new owner redelivers.
                                tracing::debug!(error = %e, "offset not stored");
                            }
                            dirty = true;
                            self.pipeline.stats.touch();
                        }
                        if progress.interrupted {
                            break; // shutdown came first
                        }
                        if let Some(until) = progress.wait {
                            // The record at `done` waits with its partition paused and
                            // rewound to it; the rest of the batch, and the partition's
                            // records in `pending`, are stale now and come again.
                            let waiting = &batch[progress.done];
                            let (topic, partition, offset) = (waiting.topic(), waiting.partition(), waiting.offset());
                            let retries = &self.pipeline.retries;
                            self.paused.hold(&self.consumer, retries, &partitions, topic, partition, offset, until);
                        }
                    }
                }
            }
            if commit_failed.swap(false, Ordering::Relaxed) | scheduler.as_ref().is_some_and(Scheduler::take_stored) {
                dirty = true;
            }
            if dirty && last_commit.elapsed() >= self.commit_interval {
                commit(&*self.consumer, CommitMode::Async, &group);
                dirty = false;
                last_commit = Instant::now();
            }
        }
        drop(pending);
        if let Some(scheduler) = scheduler.as_mut() {
            tracing::info!(%group, "stopping: waiting for the batches in hand");
            scheduler.drain().await;
        }
        tracing::info!(%group, "stopping: committing offsets");
        let (consumer, g) = (self.consumer.clone(), group.clone());
        let timeout = crate::worker::FINAL_COMMIT_TIMEOUT;
        if !crate::worker::blocking_within(&group, timeout, move || commit(&*consumer, CommitMode::Sync, &g)).await {
            tracing::warn!(
                %group,
                timeout_ms = timeout.as_millis() as u64,
                "the final offset commit did not complete in time (the group coordinator is unreachable); \
                 the records since the last commit will be delivered again and deduplicated"
            );
        }
        pruner.abort();
        if let Some(retrier) = retrier {
            let _ = retrier.await; // it ends at shutdown, after the record in hand
        }
        tracing::info!(%group, "stopping: flushing the dead-letter producer, closing the consumer");
        // The scheduler holds the consumer too: with it alive, the close below would
        // only drop a reference, and librdkafka's close would run (and block, with the
        // broker away) on this runtime's thread when `run` returns.
        drop(scheduler);
        crate::worker::flush(&self.pipeline.producer).await;
        // Leaving the group and destroying the client can block while the broker is
        // away; the offsets are committed, so the wait is bounded.
        crate::worker::close_within(&group, crate::worker::CONSUMER_CLOSE_TIMEOUT, move || {
            self.consumer.unsubscribe();
            drop(self);
        })
        .await;
        tracing::info!(%group, "listener container stopped");
        Ok(())
    }

    /// Spawns [`ListenerContainer::run`] on the current Tokio runtime; the handle's
    /// name is the consumer group.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn(self) -> ContainerHandle {
        WorkerHandle::spawn(self.pipeline.group.to_string(), self.stats(), |shutdown| self.run(shutdown))
    }
}
