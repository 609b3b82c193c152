//! Partition scheduling with `partition_concurrency > 1`: one task per batch, each
//! partition in order (a batch starts when the previous one of its partition is done),
//! permits bounding the batches running and a backlog bounding those queued, and the
//! cancellation and settling of a revoked partition's batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::container::ContainerContext;
use super::paused::Paused;
use super::pipeline::{Pipeline, Stop};
use crate::Backend;

type Key = (String, i32);

/// Batches queued or running per permit, at most; beyond that the poll loop waits.
const BACKLOG_PER_PERMIT: usize = 4;

/// The running batches of each partition and the token that abandons them, and a log
/// of revocations; shared with the rebalance callback.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    state: Mutex<State>,
    settled: Condvar,
    /// Counts revocations; records held by the poll loop are tagged with it. Read on
    /// every record received, written under `state`'s lock.
    epoch: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Batches of the current assignment of each partition.
    assigned: HashMap<Key, Entry>,
    /// The epoch of each partition's last revocation.
    revoked_at: HashMap<Key, u64>,
    /// The epoch of each partition's last rewind (a record waiting for its retry).
    rewound_at: HashMap<Key, u64>,
    next_generation: u64,
}

#[derive(Debug)]
struct Entry {
    revoked: CancellationToken,
    running: usize,
    generation: u64,
}

/// A batch task's presence in [`Partitions`]; leaving wakes a waiting revoke.
struct Running {
    partitions: Arc<Partitions>,
    key: Key,
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.partitions.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = state.assigned.get_mut(&self.key).filter(|e| e.generation == self.generation) {
            entry.running = entry.running.saturating_sub(1);
        }
        self.partitions.settled.notify_all();
    }
}

impl Partitions {
    /// Registers a batch of `key`: the token a revoke of the partition cancels, the
    /// generation of the partition's assignment, and the batch's presence.
    fn enter(self: &Arc<Self>, key: Key) -> (CancellationToken, u64, Running) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        let next = &mut state.next_generation;
        let entry = state.assigned.entry(key.clone()).or_insert_with(|| {
            *next += 1;
            Entry { revoked: CancellationToken::new(), running: 0, generation: *next }
        });
        entry.running += 1;
        let (token, generation) = (entry.revoked.clone(), entry.generation);
        (token, generation, Running { partitions: self.clone(), key, generation })
    }

    /// The current revocation epoch, to tag records received now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether `key` was revoked after records tagged `epoch` were received: such
    /// records belong to a past assignment and must not be processed (the partition's
    /// owner, this member again or another, fetches them from the committed offset).
    /// A rewind of the partition (see [`Partitions::rewind`]) makes them stale too.
    pub(crate) fn revoked_since(&self, key: &Key, epoch: u64) -> bool {
        if epoch == self.epoch() {
            return false; // no revoke since: the common case, without the lock
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let after = |at: Option<&u64>| at.is_some_and(|&at| at > epoch);
        after(state.revoked_at.get(key)) || after(state.rewound_at.get(key))
    }

    /// Whether a rebalance revoked `key` after `epoch` (rewinds not counted).
    pub(crate) fn rebalanced_since(&self, key: &Key, epoch: u64) -> bool {
        epoch != self.epoch()
            && self.state.lock().unwrap_or_else(|p| p.into_inner()).revoked_at.get(key).is_some_and(|&at| at > epoch)
    }

    /// A local revoke of `key`, for a record that waits for its retry with the
    /// partition paused and rewound to it: the records after it that were received
    /// already are stale, its queued batches are abandoned, and its next batch (after
    /// the resume) starts a new generation. Called by the batch that stopped at the
    /// record, which is done with it. Returns the epoch of the rewind.
    pub(crate) fn rewind(&self, key: &Key) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        state.rewound_at.insert(key.clone(), epoch);
        if let Some(entry) = state.assigned.remove(key) {
            entry.revoked.cancel();
        }
        epoch
    }

    /// Records the revocation of `revoked`, cancels their batches and waits until they
    /// ended, at most `timeout`. Returns whether they all ended; either way the
    /// partitions' next assignment starts afresh.
    pub(crate) fn cancel_and_settle(&self, revoked: &[Key], timeout: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        for key in revoked {
            state.revoked_at.insert(key.clone(), epoch);
            if let Some(entry) = state.assigned.get(key) {
                entry.revoked.cancel();
            }
        }
        let deadline = Instant::now() + timeout;
        let settled = loop {
            let busy = revoked.iter().any(|k| state.assigned.get(k).is_some_and(|e| e.running > 0));
            let left = deadline.saturating_duration_since(Instant::now());
            if !busy || left.is_zero() {
                break !busy;
            }
            state = self.settled.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        };
        for key in revoked {
            state.assigned.remove(key);
        }
        settled
    }
}

/// How a batch task ended, for the partition's next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchEnd {
    /// Every record done: the next batch goes on.
    Finished,
    /// Not run, or stopped at a waiting record, because its partition was rewound: its
    /// records come again, in batches received after the rewind, which go on.
    Rewound,
    /// Stopped part-way (shutdown, a revoke, a panic): the next batch must not move the
    /// offset past its unfinished records.
    Stopped,
}

/// Dispatches batches to tasks (see the module documentation).
pub(crate) struct Scheduler<DB: Backend> {
    pipeline: Arc<Pipeline<DB>>,
    consumer: Arc<StreamConsumer<ContainerContext>>,
    /// The last batch task of each partition, with its assignment's generation.
    inflight: HashMap<Key, (u64, JoinHandle<BatchEnd>)>,
    permits: Arc<Semaphore>,
    backlog: Arc<Semaphore>,
    /// Set by a task that stored an offset, so the loop commits.
    stored: Arc<AtomicBool>,
    paused: Arc<Paused>,
}

impl<DB: Backend> Scheduler<DB> {
    pub(crate) fn new(
        pipeline: Arc<Pipeline<DB>>,
        consumer: Arc<StreamConsumer<ContainerContext>>,
        concurrency: usize,
        paused: Arc<Paused>,
    ) -> Self {
        Scheduler {
            paused,
            pipeline,
            consumer,
            inflight: HashMap::new(),
            permits: Arc::new(Semaphore::new(concurrency)),
            backlog: Arc::new(Semaphore::new(concurrency * BACKLOG_PER_PERMIT)),
            stored: Arc::default(),
        }
    }

    /// Whether a task stored an offset since the last call.
    pub(crate) fn take_stored(&self) -> bool {
        self.stored.swap(false, Ordering::Relaxed)
    }

    /// Queues `batch` (records of one partition) behind the partition's previous batch.
    /// Returns `false` when shutdown came while waiting for room in the backlog.
    /// `epoch` is the revocation epoch of the batch's first record: a batch made stale
    /// by a rewind of its partition meanwhile is dropped.
    pub(crate) async fn dispatch(
        &mut self,
        batch: Vec<OwnedMessage>,
        epoch: u64,
        shutdown: &CancellationToken,
    ) -> bool {
        let key: Key = (batch[0].topic().to_owned(), batch[0].partition());
        self.inflight.retain(|_, (_, t)| !t.is_finished());
        let queued = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            q = self.backlog.clone().acquire_owned() => q.expect("semaphore never closed"),
        };
        let (pipeline, consumer, stored, permits, paused) = (
            self.pipeline.clone(),
            self.consumer.clone(),
            self.stored.clone(),
            self.permits.clone(),
            self.paused.clone(),
        );
        let partitions = consumer.context().partitions.clone();
        let (revoked, generation, running) = partitions.enter(key.clone());
        // A batch of a past assignment was abandoned by the revoke: the new assignment
        // starts from the committed offset and does not wait for it.
        let previous = self.inflight.remove(&key).filter(|(g, _)| *g == generation).map(|(_, t)| t);
        let shutdown = shutdown.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let key = task_key;
            let _queued = queued;
            let _running = running;
            // The partition's order: start after its previous batch, and only if that one
            // finished every record (else the records after it must not move the offset
            // past the unfinished ones) or was rewound. After a rewind this batch is
            // either stale itself (received before it: dropped below) or the records
            // fetched again (they must run: nothing else brings them back, and a
            // partition whose records stop coming would stay at the waiting one).
            if let Some(previous) = previous {
                let end = previous.await;
                if partitions.revoked_since(&key, epoch) {
                    return BatchEnd::Rewound;
                }
                if !matches!(end, Ok(BatchEnd::Finished | BatchEnd::Rewound)) {
                    return BatchEnd::Stopped;
                }
            }
            // The permit bounds batches running, not batches waiting for their
            // partition's previous one.
            let _permit = tokio::select! {
                _ = revoked.cancelled() => return BatchEnd::Stopped,
                p = permits.acquire_owned() => p.expect("semaphore never closed"),
            };
            // A rewind of the partition after the batch was received and before it
            // entered: its records come again from the waiting one.
            if partitions.revoked_since(&key, epoch) {
                return BatchEnd::Rewound;
            }
            let mut done = 0;
            while done < batch.len() {
                if revoked.is_cancelled() {
                    return BatchEnd::Stopped;
                }
                // Polling goes on in the container's loop, so the rest of a batch whose
                // fallback stopped after a failing record continues here at once.
                let stop = Stop { shutdown: &shutdown, revoked: &revoked };
                let progress = pipeline.process_batch(&batch[done..], stop).await;
                done += progress.done;
                if let Some(last) = done.checked_sub(1).map(|i| &batch[i]) {
                    if progress.done > 0 {
                        if let Err(e) = consumer.store_offset(last.topic(), last.partition(), last.offset()) {
                            tracing::debug!(error = %e, "offset not stored (partition revoked)");
                        }
                        stored.store(true, Ordering::Relaxed);
                        pipeline.stats.touch();
                    }
                }
                if progress.interrupted {
                    return BatchEnd::Stopped;
                }
                if let Some(until) = progress.wait {
                    // The record at `done` waits with its partition paused; everything
                    // after it comes again after the resume.
                    let waiting = &batch[done];
                    let (topic, partition, offset) = (waiting.topic(), waiting.partition(), waiting.offset());
                    paused.hold(&consumer, &pipeline.retries, &partitions, topic, partition, offset, until);
                    return BatchEnd::Rewound;
                }
            }
            BatchEnd::Finished
        });
        self.inflight.insert(key, (generation, task));
        true
    }

    /// Waits for every batch (a retry wait is cut short by the shutdown), so that their
    /// offsets are stored before the last commit.
    pub(crate) async fn drain(&mut self) {
        for (_, (_, task)) in self.inflight.drain() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_cancels_its_partitions_batches_and_waits_for_them_only() {
        let partitions = Arc::new(Partitions::default());
        let revoked: Key = ("t".into(), 0);
        let kept: Key = ("t".into(), 1);
        let epoch = partitions.epoch();
        let (cancel, generation, running) = partitions.enter(revoked.clone());
        let (other, _, _still_running) = partitions.enter(kept.clone());
        // The revoked partition's batch sees the cancellation and ends a moment later.
        let watcher = cancel.clone();
        let batch = std::thread::spawn(move || {
            while !watcher.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            drop(running);
        });
        let started = Instant::now();
        assert!(partitions.cancel_and_settle(std::slice::from_ref(&revoked), Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(50), "waited for the batch to end");
        assert!(cancel.is_cancelled() && !other.is_cancelled());
        batch.join().unwrap();
        // Records received before the revoke are of the past assignment; later ones not.
        assert!(partitions.revoked_since(&revoked, epoch));
        assert!(!partitions.revoked_since(&kept, epoch));
        assert!(!partitions.revoked_since(&revoked, partitions.epoch()));
        // A partition whose batch does not end is reported after the timeout, and its
        // next assignment still starts afresh: a new token and generation, and the
        // late batch of the old one does not count against it.
        let (_, kept_generation, late) = partitions.enter(kept.clone());
        assert!(!partitions.cancel_and_settle(std::slice::from_ref(&kept), Duration::from_millis(20)));
        let (fresh, fresh_generation, _r) = partitions.enter(kept.clone());
        assert!(!fresh.is_cancelled() && fresh_generation != kept_generation);
        drop(late);
        drop(_still_running);
        let (again, again_generation, _r2) = partitions.enter(revoked);
        assert!(!again.is_cancelled() && again_generation != generation);
    }
}
