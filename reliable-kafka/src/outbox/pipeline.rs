//! The relay's pipeline: batch n+1 is claimed and handed to the producer while batch n
//! waits for its acknowledgements; a batch is settled (its rows marked delivered) only
//! after its own acknowledgements, and in claim order.
//!
//! ```text
//! claim 1 → enqueue 1 → claim 2 (not 1) → enqueue 2 → await 1 → settle 1 → claim 3 (not 2) → enqueue 3 → await 2 → …
//! ```
//!
//! Per-key order: batch n+1 is enqueued after batch n, and the idempotent producer
//! keeps that order within each partition. A claim leaves out the rows in flight by
//! their `seq`, exactly, so a row that committed late (below rows already claimed) is
//! still taken in `seq` order by the next claim.

use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use super::record::into_record;
use super::relay::{OutboxRelay, RelayBatch};
use crate::kafka::{await_deliveries, enqueue_in_order, OutRecord, Pending};
use crate::store::outbox::{OutboxRow, Published, SendFailure};
use crate::{Backend, Error};

/// Batches in flight at once: one awaiting its acknowledgements while the next is
/// claimed and enqueued.
const DEPTH: usize = 2;

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
    /// Claims and publishes batches, [`DEPTH`] in flight, until a claim returns less
    /// than a full batch or `until` says stop, and settles every batch it started.
    /// Returns the totals; `exhausted` in the sense that the last claim came back short
    /// is `published + failed < batches × batch_size`.
    ///
    /// # Errors
    /// [`Error::Database`] when a claim or a settle fails. Batches in flight are
    /// awaited first; their rows stay pending and are published again (at-least-once).
    pub(crate) async fn pipeline(
        &self,
        lease: &mut DB::RelayLease,
        stub: bool,
        until: Until,
    ) -> Result<(RelayBatch, bool), Error> {
        let limit = self.cfg.batch_size;
        let mut in_flight: std::collections::VecDeque<Sending> = std::collections::VecDeque::new();
        let mut total = RelayBatch::default();
        let mut claims = 0usize;
        let mut exhausted = false;
        let result = loop {
            let may_claim = !exhausted
                && until.batches.is_none_or(|n| claims < n)
                && until.deadline.is_none_or(|d| Instant::now() < d)
                && !until.shutdown.as_ref().is_some_and(|t| t.is_cancelled());
            if may_claim && in_flight.len() < DEPTH {
                let skip: Vec<i64> = in_flight.iter().flat_map(|s| s.seqs.iter().copied()).collect();
                let rows = match DB::claim_outbox(&self.pool, lease, &self.cfg.sql, limit, &skip).await {
                    Ok(rows) => rows,
                    Err(e) => break Err(e),
                };
                claims += 1;
                exhausted = (rows.len() as i64) < limit;
                if in_flight.is_empty() {
                    // The oldest pending row not yet in flight.
                    self.stats.oldest_pending(rows.first().map(|r| r.created_at));
                }
                if !rows.is_empty() {
                    in_flight.push_back(self.start(rows, stub).await);
                }
                if in_flight.len() < DEPTH && !exhausted {
                    continue;
                }
            }
            let Some(sending) = in_flight.pop_front() else { break Ok(()) };
            let span = sending.span.clone();
            let published = self.finish(sending).instrument(span.clone()).await;
            let settled = DB::settle_outbox(&self.pool, lease, &self.cfg.sql, &published, self.cfg.max_send_attempts)
                .instrument(span)
                .await;
            if let Err(e) = settled {
                break Err(e);
            }
            self.account(&published);
            total.published += published.delivered.len();
            total.failed += published.failed.len();
        };
        if let Err(e) = result {
            // Let what was enqueued finish before the rows are claimed again.
            for sending in in_flight {
                if let Some(d) = sending.deliveries {
                    await_deliveries(d).await;
                }
            }
            self.stats.claim_failed(&e);
            return Err(e);
        }
        if exhausted && total.failed == 0 {
            // Every pending row was claimed and is delivered.
            self.stats.oldest_pending(None);
        }
        Ok((total, exhausted))
    }

    /// Hands `rows` to the producer, in order.
    async fn start(&self, rows: Vec<OutboxRow>, stub: bool) -> Sending {
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
        let mut sending = Sending { span, seqs, ids, meta, topics, deliveries: None };
        if stub {
            return sending;
        }
        let format = &self.cfg.header_format;
        let records: Vec<OutRecord> = rows.into_iter().map(|r| into_record(r, format)).collect();
        if crate::fault::sabotaged(crate::fault::SABOTAGE_MARK_BEFORE_SEND) {
            // Fire and forget: the rows count as sent before Kafka has them.
            let producer = self.producer.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                fault_point!(crate::fault::RELAY_BEFORE_SEND);
                crate::kafka::send_in_order(&producer, records).await;
                fault_point!(crate::fault::RELAY_AFTER_SEND);
            });
            return sending;
        }
        fault_point!(crate::fault::RELAY_BEFORE_SEND);
        sending.deliveries = Some(enqueue_in_order(&self.producer, records).instrument(sending.span.clone()).await);
        sending
    }

    /// Awaits the acknowledgements of `sending`: which rows were delivered, which not.
    async fn finish(&self, sending: Sending) -> Published {
        let Sending { ids, meta, topics, deliveries, .. } = sending;
        let Some(deliveries) = deliveries else {
            return Published { delivered: ids, failed: Vec::new() };
        };
        let results = await_deliveries(deliveries).await;
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
                    out.failed.push(SendFailure { id, error: e, permanent });
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
        let batch = RelayBatch { published: published.delivered.len(), failed: published.failed.len(), lock_busy: false };
        self.stats.claimed(Some(&batch));
        self.stats.published.fetch_add(batch.published as u64, Ordering::Relaxed);
        self.stats.failed.fetch_add(batch.failed as u64, Ordering::Relaxed);
        if batch.published > 0 {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}
