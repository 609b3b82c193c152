//! The relay's pipeline, three stages working at once on consecutive batches:
//!
//! ```text
//! enqueue batch k (a task of its own)  ‖  await batch k-1's acks, settle it (pooled connection)
//!                                      ‖  claim batch k+1 (the lease's session, leaving out k-1 and k)
//! ```
//!
//! A batch is settled (its rows marked delivered) only after its own acknowledgements.
//! Per-key order: batch k+1 is enqueued only after batch k is, and the idempotent
//! producer keeps that order within each partition. A claim leaves out the rows in
//! flight by their `seq`, exactly, so a row that committed late (below rows already
//! claimed) is still taken in `seq` order by the next claim.

use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::record::into_record;
use super::relay::{OutboxRelay, RelayBatch};
use super::sequence::{ProducerSlot, FATAL_CHECK_INTERVAL};
use crate::kafka::{await_deliveries, enqueue_in_order, OutRecord, Pending};
use crate::store::outbox::{OutboxRow, Published, SendFailure};
use crate::{Backend, Error};

/// One claimed batch handed to the producer.
pub(super) struct Sending {
    span: tracing::Span,
    seqs: Vec<i64>,
    ids: Vec<Uuid>,
    /// (topic index, commit time) per row: a batch has few distinct topics.
    meta: Vec<(usize, DateTime<Utc>)>,
    topics: Vec<String>,
    /// `None`: counted as delivered without waiting (the stubbed benchmark relay, the
    /// mark-before-send sabotage).
    deliveries: Option<Vec<Pending>>,
    /// The acknowledgements, once awaited ([`Sending::acked`]); `Some(None)`: the wait
    /// was cut by shutdown (nothing is known: the rows stay pending as they are).
    results: Option<Option<Vec<Result<(), KafkaError>>>>,
}

impl Sending {
    /// Awaits the acknowledgements (until `shutdown`, which leaves them unknown) and
    /// keeps them for the settle; whether every record was acknowledged.
    async fn acked(&mut self, shutdown: Option<&CancellationToken>, producer: &ProducerSlot) -> bool {
        if self.results.is_none() {
            let Some(d) = self.deliveries.take() else { return true };
            let never = CancellationToken::new();
            let wait = await_deliveries(d);
            tokio::pin!(wait);
            self.results = Some(loop {
                tokio::select! {
                    r = &mut wait => break Some(r),
                    _ = shutdown.unwrap_or(&never).cancelled() => break None,
                    // Without a local timeout, a producer stopped by a fatal error
                    // would keep the records it has not failed yet for good.
                    _ = tokio::time::sleep(FATAL_CHECK_INTERVAL) => producer.purge_if_fatal(),
                }
            });
        }
        self.results.as_ref().is_some_and(|r| r.as_ref().is_some_and(|r| r.iter().all(Result::is_ok)))
    }
}

/// What settling one batch did.
struct Settled {
    delivered: usize,
    failed: usize,
    /// Commit time of the oldest row whose send failed.
    oldest_failed: Option<DateTime<Utc>>,
}

/// When [`OutboxRelay::pipeline`] stops claiming (besides a short claim).
#[derive(Debug, Clone, Default)]
pub(crate) struct Until {
    /// At most this many batches.
    pub batches: Option<usize>,
    /// No claim after this instant (a sharded relay's next rebalance).
    pub deadline: Option<Instant>,
    /// No claim once this is cancelled.
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
}

impl<DB: Backend> OutboxRelay<DB> {
    /// Claims and publishes batches until a claim returns less than a full batch, a
    /// batch has failed sends, or `until` says stop, and settles every batch it
    /// started. Returns the totals and whether to go on at once (`until` stopped it
    /// with more rows likely pending and nothing failing).
    ///
    /// # Errors
    /// [`Error::Database`] when a claim or a settle fails. After a failed claim the
    /// batch in flight is still settled; after a failed settle its rows stay pending
    /// and are published again (at-least-once).
    pub(crate) async fn pipeline(
        &self,
        lease: &mut DB::RelayLease,
        stub: bool,
        until: Until,
    ) -> Result<(RelayBatch, bool), Error> {
        let limit = self.cfg.batch_size;
        let mut total = RelayBatch::default();
        let mut claims = 0usize;
        // A claim came back short, or a batch had failed sends (retried after a pause).
        let mut exhausted = false;
        let mut halted = false;
        let may_claim = |claims: usize, stop: bool| {
            !stop
                && until.batches.is_none_or(|n| claims < n)
                && until.deadline.is_none_or(|d| Instant::now() < d)
                && !until.shutdown.as_ref().is_some_and(|t| t.is_cancelled())
        };
        if self.cfg.sequenced {
            // Every batch of the last run is settled: nothing of the old one is in flight.
            if self.producer.renew_if_fatal(&self.cfg.table) {
                self.stats.producer_renewals.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut next: Vec<OutboxRow> = Vec::new();
        if may_claim(claims, false) {
            next = DB::claim_outbox(&self.pool, lease, &self.cfg.sql, limit, &[])
                .await
                .inspect_err(|e| self.stats.claim_failed(e))?;
            self.stats.claim_succeeded();
            claims += 1;
            exhausted = (next.len() as i64) < limit;
            self.stats.oldest_pending(next.first().map(|r| r.created_at));
        }
        // The oldest row of this run whose send failed: still pending.
        let mut oldest_failed: Option<DateTime<Utc>> = None;
        let mut prev: Option<Sending> = None;
        let mut failure: Option<(Error, bool)> = None;
        while failure.is_none() && (!next.is_empty() || prev.is_some()) {
            // With sequence numbers a batch goes out only once the one before it is
            // acknowledged (`sequence.rs`, rule 4); after a failure, not at all.
            if self.cfg.sequenced && !next.is_empty() {
                if let Some(p) = prev.as_mut() {
                    if !p.acked(until.shutdown.as_ref(), &self.producer).await {
                        halted = true;
                        next.clear();
                    }
                }
            }
            // Stage 1: hand the claimed batch to the producer, on a task of its own.
            let (mut current, enqueued) = match std::mem::take(&mut next) {
                rows if rows.is_empty() => (None, None),
                rows => {
                    let (sending, enqueued) = self.start(rows, stub);
                    (Some(sending), enqueued)
                }
            };
            let skip: Vec<i64> = prev.iter().chain(current.iter()).flat_map(|s| s.seqs.iter().copied()).collect();
            let claim_now = may_claim(claims, exhausted || halted);
            // Stage 2: the batch before it: acknowledgements, then its marks.
            let settle = async {
                match prev.take() {
                    Some(p) => self.settle(p, until.shutdown.as_ref()).await.map(Some),
                    None => Ok(None),
                }
            };
            // Stage 3: the batch after it.
            let claim = async {
                if !claim_now {
                    return Ok(None);
                }
                DB::claim_outbox(&self.pool, lease, &self.cfg.sql, limit, &skip).await.map(Some)
            };
            let (settled, claimed) = tokio::join!(settle, claim);
            if let (Some(sending), Some(task)) = (current.as_mut(), enqueued) {
                sending.deliveries = Some(task.await.unwrap_or_default());
            }
            match settled {
                Ok(Some(published)) => {
                    if let Some(at) = published.oldest_failed {
                        oldest_failed = Some(oldest_failed.map_or(at, |o| o.min(at)));
                        halted = true;
                    }
                    // The oldest row not yet delivered.
                    let next_first = current.as_ref().and_then(|c| c.meta.first().map(|m| m.1));
                    self.stats.oldest_pending(oldest_failed.or(next_first));
                    total.published += published.delivered;
                    total.failed += published.failed;
                }
                Ok(None) => {}
                Err(e) => failure = Some((e, true)),
            }
            match claimed {
                Ok(Some(rows)) => {
                    self.stats.claim_succeeded();
                    claims += 1;
                    exhausted = (rows.len() as i64) < limit;
                    next = rows;
                }
                Ok(None) => {}
                Err(e) => failure = failure.or(Some((e, false))),
            }
            if halted {
                // Not sent yet: left pending, so a failed row goes out again before
                // later rows of its key that were not sent.
                next.clear();
            }
            prev = current;
        }
        if let Some((e, settle_failed)) = failure {
            if let Some(p) = prev {
                if settle_failed {
                    // Let what was enqueued finish before the rows are claimed again.
                    if let Some(d) = p.deliveries {
                        await_deliveries(d).await;
                    }
                } else if let Err(settle) = self.settle(p, until.shutdown.as_ref()).await {
                    // The claim failed, not the batch in flight: its rows are marked
                    // unless the database refuses that too.
                    tracing::warn!(error = %crate::report(&settle), "outbox rows delivered but not marked; they will be published again");
                }
            }
            self.stats.claim_failed(&e);
            return Err(e);
        }
        if exhausted && total.failed == 0 {
            // Every pending row was claimed and is delivered.
            self.stats.oldest_pending(None);
        }
        Ok((total, !exhausted && !halted))
    }

    /// Awaits a batch's acknowledgements and records them; returns what it settled.
    async fn settle(&self, sending: Sending, shutdown: Option<&CancellationToken>) -> Result<Settled, Error> {
        let span = sending.span.clone();
        let oldest_failed = |published: &Published, meta: &[(usize, DateTime<Utc>)], ids: &[Uuid]| {
            let failed: std::collections::HashSet<Uuid> = published.failed.iter().map(|f| f.id).collect();
            ids.iter().zip(meta).filter(|(id, _)| failed.contains(id)).map(|(_, m)| m.1).min()
        };
        let (ids, meta) = (sending.ids.clone(), sending.meta.clone());
        let published = self.finish(sending, shutdown).instrument(span.clone()).await;
        DB::settle_outbox(&self.pool, &self.cfg.sql, &published, self.cfg.max_send_attempts).instrument(span).await?;
        self.account(&published);
        Ok(Settled {
            delivered: published.delivered.len(),
            failed: published.failed.len(),
            oldest_failed: oldest_failed(&published, &meta, &ids),
        })
    }

    /// Hands `rows` to the producer, in order, on a task of its own: the returned task
    /// yields their delivery futures (`None`: counted as delivered at once).
    fn start(&self, rows: Vec<OutboxRow>, stub: bool) -> (Sending, Option<tokio::task::JoinHandle<Vec<Pending>>>) {
        let span = crate::telemetry::spans::relay_batch(&self.cfg.table);
        span.record("messaging.batch.message_count", rows.len());
        if !span.is_disabled() {
            rows.iter().for_each(|r| {
                let tp = r.headers.get(crate::headers::TRACEPARENT).and_then(|v| v.as_str());
                crate::telemetry::propagation::add_link(&span, tp)
            });
        }
        let seqs = rows.iter().map(|r| r.seq).collect();
        let ids = rows.iter().map(|r| r.id).collect();
        let mut topics: Vec<String> = Vec::new();
        let meta = rows
            .iter()
            .map(|r| match topics.iter().position(|t| *t == r.topic) {
                Some(i) => (i, r.created_at),
                None => {
                    topics.push(r.topic.clone());
                    (topics.len() - 1, r.created_at)
                }
            })
            .collect();
        let sending = Sending { span: span.clone(), seqs, ids, meta, topics, deliveries: None, results: None };
        if stub {
            return (sending, None);
        }
        let format = self.cfg.header_format.clone();
        let producer = self.producer.get();
        if crate::fault::sabotaged(crate::fault::SABOTAGE_MARK_BEFORE_SEND) {
            // Fire and forget: the rows count as sent before Kafka has them.
            tokio::spawn(async move {
                let records: Vec<OutRecord> = rows.into_iter().map(|r| into_record(r, &format)).collect();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                fault_point!(crate::fault::RELAY_BEFORE_SEND);
                crate::kafka::send_in_order(&producer, records).await;
                fault_point!(crate::fault::RELAY_AFTER_SEND);
            });
            return (sending, None);
        }
        let task = tokio::spawn(
            async move {
                fault_point!(crate::fault::RELAY_BEFORE_SEND);
                let records: Vec<OutRecord> = rows.into_iter().map(|r| into_record(r, &format)).collect();
                enqueue_in_order(&producer, records).await
            }
            .instrument(span),
        );
        (sending, Some(task))
    }

    /// Awaits the acknowledgements of `sending`: which rows were delivered, which not.
    async fn finish(&self, mut sending: Sending, shutdown: Option<&CancellationToken>) -> Published {
        if sending.deliveries.is_none() && sending.results.is_none() {
            return Published { delivered: sending.ids, failed: Vec::new() };
        }
        if self.cfg.sequenced {
            // No local timeout: a broker outage would hold the shutdown.
            sending.acked(shutdown, &self.producer).await;
        }
        let Sending { ids, meta, topics, deliveries, results, .. } = sending;
        let results = match (results, deliveries) {
            (Some(Some(r)), _) => r,
            (Some(None), _) => return Published::default(),
            (None, Some(d)) => await_deliveries(d).await,
            (None, None) => return Published::default(),
        };
        // A failure without a fatal error was not written: the row gets a new number.
        let renumber = self.cfg.sequenced && !self.producer.is_fatal();
        let acked = results.iter().zip(&meta).filter(|(r, _)| r.is_ok()).map(|(_, (t, at))| (topics[*t].as_str(), *at));
        self.metrics.batch(meta.len(), acked);
        let mut out = Published { delivered: Vec::with_capacity(ids.len()), failed: Vec::new() };
        for (id, res) in ids.into_iter().zip(results) {
            match res {
                Ok(()) => out.delivered.push(id),
                Err(e) => {
                    let permanent = crate::kafka::is_permanent_send_error(&e);
                    self.metrics.send_error(permanent);
                    tracing::warn!(message_id = %id, error = %e, permanent, "outbox row not delivered; will retry");
                    out.failed.push(SendFailure { id, error: e, permanent, renumber });
                }
            }
        }
        if !out.delivered.is_empty() {
            fault_point!(crate::fault::RELAY_AFTER_SEND);
        }
        out
    }

    /// Counts a settled batch.
    fn account(&self, published: &Published) {
        let batch =
            RelayBatch { published: published.delivered.len(), failed: published.failed.len(), lock_busy: false };
        self.stats.claimed(Some(&batch));
        self.stats.published.fetch_add(batch.published as u64, Ordering::Relaxed);
        self.stats.failed.fetch_add(batch.failed as u64, Ordering::Relaxed);
        if batch.published > 0 {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}
