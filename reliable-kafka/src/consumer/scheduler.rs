//! Partition scheduling with `partition_concurrency > 1`: one task per batch, each
//! partition in order (a batch starts when the previous one of its partition is done),
//! permits bounding the batches running and a backlog bounding those queued, and the
//! cancellation and settling of a revoked partition's batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::container::ContainerContext;
use super::pipeline::Pipeline;
use crate::Backend;

type Key = (String, i32);

/// Batches queued or running per permit, at most; beyond that the poll loop waits.
const BACKLOG_PER_PERMIT: usize = 4;

/// The running batches of each partition and the token that cancels them, shared with
/// the rebalance callback.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    state: Mutex<HashMap<Key, (CancellationToken, usize)>>,
    settled: Condvar,
}

/// A batch task's presence in [`Partitions`]; leaving wakes a waiting revoke.
struct Running {
    partitions: Arc<Partitions>,
    key: Key,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.partitions.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = state.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.partitions.settled.notify_all();
    }
}

impl Partitions {
    /// Registers a batch of `key`; its token is cancelled when the partition is revoked
    /// (or at shutdown, its parent).
    fn enter(self: &Arc<Self>, key: Key, shutdown: &CancellationToken) -> (CancellationToken, Running) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.entry(key.clone()).or_insert_with(|| (shutdown.child_token(), 0));
        entry.1 += 1;
        let token = entry.0.clone();
        (token, Running { partitions: self.clone(), key })
    }

    /// Cancels the batches of `revoked` and waits until they ended, at most `timeout`.
    /// Returns whether they all ended.
    pub(crate) fn cancel_and_settle(&self, revoked: &[Key], timeout: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for key in revoked {
            if let Some((token, _)) = state.get(key) {
                token.cancel();
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let busy = revoked.iter().any(|k| state.get(k).is_some_and(|(_, n)| *n > 0));
            if !busy {
                for key in revoked {
                    state.remove(key);
                }
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.settled.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Dispatches batches to tasks (see the module documentation).
pub(crate) struct Scheduler<DB: Backend> {
    pipeline: Arc<Pipeline<DB>>,
    consumer: Arc<StreamConsumer<ContainerContext>>,
    inflight: HashMap<Key, JoinHandle<bool>>,
    permits: Arc<Semaphore>,
    backlog: Arc<Semaphore>,
    /// Set by a task that stored an offset, so the loop commits.
    stored: Arc<AtomicBool>,
}

impl<DB: Backend> Scheduler<DB> {
    pub(crate) fn new(
        pipeline: Arc<Pipeline<DB>>,
        consumer: Arc<StreamConsumer<ContainerContext>>,
        concurrency: usize,
    ) -> Self {
        Scheduler {
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
    pub(crate) async fn dispatch(&mut self, batch: Vec<OwnedMessage>, shutdown: &CancellationToken) -> bool {
        let key: Key = (batch[0].topic().to_owned(), batch[0].partition());
        self.inflight.retain(|_, t| !t.is_finished());
        let queued = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            q = self.backlog.clone().acquire_owned() => q.expect("semaphore never closed"),
        };
        let previous = self.inflight.remove(&key);
        let (pipeline, consumer, stored, permits) =
            (self.pipeline.clone(), self.consumer.clone(), self.stored.clone(), self.permits.clone());
        let partitions = consumer.context().partitions.clone();
        let (cancel, running) = partitions.enter(key.clone(), shutdown);
        let task = tokio::spawn(async move {
            let _queued = queued;
            let _running = running;
            // The partition's order: start after its previous batch, and only if that one
            // finished every record (else the records after it must not move the offset
            // past the unfinished ones).
            if let Some(previous) = previous {
                if !matches!(previous.await, Ok(true)) {
                    return false;
                }
            }
            // The permit bounds batches running, not batches waiting for their
            // partition's previous one.
            let _permit = tokio::select! {
                _ = cancel.cancelled() => return false,
                p = permits.acquire_owned() => p.expect("semaphore never closed"),
            };
            let mut done = 0;
            while done < batch.len() {
                if cancel.is_cancelled() {
                    return false;
                }
                // Polling goes on in the container's loop, so the rest of a batch whose
                // fallback stopped after a failing record continues here at once.
                let progress = pipeline.process_batch(&batch[done..], &cancel).await;
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
                    return false;
                }
            }
            true
        });
        self.inflight.insert(key, task);
        true
    }

    /// Waits for every batch (a retry wait is cut short by the shutdown), so that their
    /// offsets are stored before the last commit.
    pub(crate) async fn drain(&mut self) {
        for (_, task) in self.inflight.drain() {
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
        let shutdown = CancellationToken::new();
        let revoked: Key = ("t".into(), 0);
        let kept: Key = ("t".into(), 1);
        let (cancel, running) = partitions.enter(revoked.clone(), &shutdown);
        let (other, _still_running) = partitions.enter(kept.clone(), &shutdown);
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
        // A partition whose batch does not end is reported after the timeout.
        assert!(!partitions.cancel_and_settle(&[kept], Duration::from_millis(20)));
        // A new assignment of the revoked partition gets a fresh token.
        let (fresh, _r) = partitions.enter(revoked, &shutdown);
        assert!(!fresh.is_cancelled());
    }
}
