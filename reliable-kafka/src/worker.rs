//! One lifecycle for the three long-running workers ([`crate::OutboxRelay`],
//! [`crate::ListenerContainer`], [`crate::DeadLetterRedriver`]): each is built with
//! `builder(kafka, pool)…build()`, runs with `run(shutdown)` until the token is
//! cancelled, or is spawned with `spawn()`, which returns a [`WorkerHandle`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Error;

/// A worker running on the Tokio runtime, see the workers' `spawn()`.
///
/// Dropping the handle leaves the worker running; [`WorkerHandle::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
pub struct WorkerHandle<S> {
    name: String,
    shutdown: CancellationToken,
    stats: Arc<S>,
    join: tokio::task::JoinHandle<Result<(), Error>>,
    /// Set when the task ends (returned, failed or panicked).
    finished: Arc<AtomicBool>,
}

/// Sets its flag when dropped: when the worker's task ends, however it ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A worker's health, detached from its [`WorkerHandle`]: cheap to clone, `Send` and
/// `Sync`, for an HTTP router's readiness and liveness endpoints while the
/// application keeps the handles to shut the workers down.
#[derive(Clone)]
pub struct HealthProbe {
    name: Arc<str>,
    finished: Arc<AtomicBool>,
    source: Arc<dyn crate::WorkerHealth + Send + Sync>,
}

impl std::fmt::Debug for HealthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthProbe").field("worker", &self.name).finish_non_exhaustive()
    }
}

impl HealthProbe {
    /// The worker's health now (see [`crate::Health`]).
    pub fn health(&self) -> crate::Health {
        let mut h = self.source.health(&self.name);
        if self.finished.load(Ordering::Relaxed) {
            h.found(crate::HealthStatus::Unhealthy, "the worker has stopped".to_owned());
        }
        h
    }

    /// Whether the worker's task is still running (liveness).
    pub fn is_running(&self) -> bool {
        !self.finished.load(Ordering::Relaxed)
    }
}

impl<S: Send + Sync + 'static> WorkerHandle<S> {
    /// Spawns `run(shutdown)` on the current runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn spawn<F, Fut>(name: String, stats: Arc<S>, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let finished = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(finished.clone());
        let work = run(shutdown.clone());
        let join = tokio::spawn(async move {
            let _guard = guard;
            work.await
        });
        WorkerHandle { name, shutdown, stats, join, finished }
    }

    /// The worker's counters.
    pub fn stats(&self) -> &S {
        &self.stats
    }

    /// The worker's counters, shared: for a status page or sampler that outlives a
    /// borrow of the handle.
    pub fn shared_stats(&self) -> Arc<S> {
        self.stats.clone()
    }

    /// The worker's name: the consumer group of a container, the outbox table of a
    /// relay, the consumer group of a re-driver.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the worker has stopped (after a shutdown, an error or a panic).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// A token that stops the worker when cancelled, like [`WorkerHandle::shutdown`]
    /// without waiting (to stop several workers at once, say).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The worker's health (see [`crate::Health`] for the rules): unhealthy once it
    /// has stopped, else what its stats say. Cheap: reads atomics, for every probe.
    pub fn health(&self) -> crate::Health
    where
        S: crate::WorkerHealth,
    {
        self.probe().health()
    }

    /// A detached [`HealthProbe`] of this worker.
    pub fn probe(&self) -> HealthProbe
    where
        S: crate::WorkerHealth,
    {
        HealthProbe { name: Arc::from(self.name.as_str()), finished: self.finished.clone(), source: self.stats.clone() }
    }

    /// Graceful shutdown: the worker finishes what it holds (a container the record
    /// in hand; a relay its batch; a re-driver its run), commits offsets, flushes its
    /// producer ([`PRODUCER_FLUSH_TIMEOUT`] at most) and returns; then this returns.
    ///
    /// # Errors
    /// The error that stopped the worker, if any; [`Error::WorkerCancelled`] when its
    /// task was aborted (the runtime shut down).
    ///
    /// # Panics
    /// Re-raises a panic of the worker, so that it is not lost.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.join.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::WorkerCancelled { worker: self.name }),
        }
    }
}

/// The longest a stopping worker waits for its producer to deliver what it queued.
pub const PRODUCER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Flushes `producer` off the async workers (flushing blocks).
pub(crate) async fn flush(producer: &crate::kafka::Producer) {
    use rdkafka::producer::Producer;
    let producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(PRODUCER_FLUSH_TIMEOUT)).await;
}

/// Longest wait, at shutdown, for librdkafka to close a consumer (leave the group and
/// destroy the client) after its offsets were committed: 10 s.
pub const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait, at shutdown, for a container's final synchronous offset commit: 10 s.
/// librdkafka's synchronous commit has no timeout of its own and waits as long as the
/// group coordinator is unreachable; past this bound the container stops without it,
/// and the records since its last commit are delivered again (and deduplicated).
pub const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `close` (librdkafka's close and destroy, which block) off the async workers
/// and waits for it at most `timeout`. librdkafka's close can block for as long as a
/// broker or the group coordinator stays unreachable (a group join in flight when it
/// went away); the worker then stops anyway, with a warning, and the close goes on in
/// the background until the process exits. Call it only once the offsets are committed.
pub(crate) async fn close_within(worker: &str, timeout: Duration, close: impl FnOnce() + Send + 'static) {
    if !blocking_within(worker, timeout, close).await {
        tracing::warn!(
            worker,
            timeout_ms = timeout.as_millis() as u64,
            "librdkafka did not close the consumer in time (a broker or the group coordinator is unreachable); \
             its offsets were committed before, and the close goes on in the background"
        );
    }
}

/// Runs the blocking `f` on a thread of its own and waits for it at most `timeout`;
/// returns whether it ended in time. Past the timeout `f` goes on in the background
/// until it ends or the process exits.
///
/// A plain OS thread, not Tokio's blocking pool: a runtime waits for its blocking
/// tasks when it is dropped (the end of `#[tokio::main]`), so a call left hanging there
/// would keep the process from exiting after a graceful stop.
pub(crate) async fn blocking_within(worker: &str, timeout: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("rk-blocking".into()).spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        // No thread to be had: the closure was dropped with the failed spawn (a
        // consumer it owned was closed on this thread).
        tracing::warn!(worker, error = %e, "could not start a thread for a blocking call");
        return true;
    }
    tokio::time::timeout(timeout, done_rx).await.is_ok()
}

/// Sleeps `d` unless shutdown comes first; returns whether shutdown came.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Back-off of the framework's own retries (a database or broker call that failed):
/// doubling from [`INFRASTRUCTURE_BACKOFF_MIN`] to [`INFRASTRUCTURE_BACKOFF_MAX`].
#[derive(Debug)]
pub(crate) struct InfraBackoff(Duration);

/// First wait of the framework's own retries.
pub const INFRASTRUCTURE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait of the framework's own retries.
pub const INFRASTRUCTURE_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl InfraBackoff {
    pub(crate) fn new() -> Self {
        InfraBackoff(INFRASTRUCTURE_BACKOFF_MIN)
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(INFRASTRUCTURE_BACKOFF_MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A close that never ends must not keep the runtime from shutting down: the
    /// runtime is dropped as at the end of `#[tokio::main]`, and the drop returns.
    #[test]
    fn a_close_that_hangs_does_not_keep_the_runtime_from_dropping() {
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(super::close_within("hanging", Duration::from_millis(50), || {
                std::thread::park(); // librdkafka's close with the coordinator gone
            }));
            drop(rt);
            dropped_tx.send(()).unwrap();
        });
        assert!(
            dropped_rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the runtime waited for the hanging close when dropped"
        );
    }
}
