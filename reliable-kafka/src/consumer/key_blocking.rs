//! Key-blocking retry (`HandlerOptions::key_blocking`): a failing record waits in
//! `rk_blocked_records` with the later records of its key behind it, while the
//! partition moves on; a retrier task runs each key's head when it is due.
//!
//! Order per key holds because a record of a blocked key never reaches the handler
//! from the partition: it joins the table behind the head, and only a key's head
//! (lowest offset) is run. Effects stay once: the deduplication row is written with the
//! handler's effects, whichever path runs a record, and a record deferred twice (a
//! crash before its offset commit) is one row.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage, Timestamp};
use tokio_util::sync::CancellationToken;

use super::dead_letter::Failure;
use super::pipeline::{AttemptError, Outcome, Pipeline, Stop, CODEC_ERROR_PATH};
use super::routes::{Resolution, Route};
use super::stats::ContainerStats;
use crate::health::now_ms;
use crate::store::blocked::{BlockedRow, Defer};
use crate::worker::InfraBackoff;
use crate::{Backend, DeadLetterReason, HandlerError};

/// How often the retrier looks for heads that are due, at most.
const RETRIER_INTERVAL: Duration = Duration::from_millis(200);
/// Heads run per round, at most.
const HEADS_PER_ROUND: i64 = 100;

impl<DB: Backend> Pipeline<DB> {
    /// A record of a key-blocking route whose key has a record waiting joins the table
    /// behind it: `Some(Done)` then (or `Some(Interrupted)`), `None` when its key is
    /// free and it goes to the handler.
    pub(crate) async fn defer_if_blocked<M: Message + Sync>(&self, msg: &M, stop: Stop<'_>) -> Option<Outcome> {
        let key = msg.key()?;
        let mut infra = InfraBackoff::new();
        loop {
            let r = DB::is_blocked(&self.pool, &self.group, msg.topic(), msg.partition(), key).await;
            match r {
                Ok(false) => return None,
                Ok(true) => return Some(self.defer(msg, 1, 0, None, stop).await),
                Err(e) => {
                    ContainerStats::add(&self.stats.infrastructure_errors, 1);
                    tracing::warn!(group = %self.group, error = %e, "key-blocking lookup failed; retrying");
                    if stop.sleep(infra.next_delay()).await {
                        return Some(Outcome::Interrupted);
                    }
                }
            }
        }
    }

    /// Writes `msg` into the table for attempt `attempt`, due at `due_at_ms`; its
    /// offset may then be committed.
    pub(crate) async fn defer<M: Message + Sync>(
        &self,
        msg: &M,
        attempt: u32,
        due_at_ms: i64,
        error: Option<&HandlerError>,
        stop: Stop<'_>,
    ) -> Outcome {
        let row = BlockedRow {
            topic: msg.topic().to_owned(),
            kafka_partition: msg.partition(),
            kafka_offset: msg.offset(),
            record_key: msg.key().unwrap_or_default().to_vec(),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: headers_text(msg.headers()),
            timestamp_ms: msg.timestamp().to_millis(),
            attempt: attempt as i32,
            due_at_ms,
        };
        let error = error.map(|e| crate::report(e));
        let mut infra = InfraBackoff::new();
        loop {
            let d = Defer { group: &self.group, row: &row, error: error.as_deref(), now_ms: now_ms() as i64 };
            match DB::defer(&self.pool, d).await {
                Ok(()) => break,
                Err(e) => {
                    ContainerStats::add(&self.stats.infrastructure_errors, 1);
                    tracing::warn!(group = %self.group, error = %e, "deferring a blocked record failed; retrying");
                    if stop.sleep(infra.next_delay()).await {
                        return Outcome::Interrupted;
                    }
                }
            }
        }
        ContainerStats::add(&self.stats.deferred, 1);
        self.metrics.topic(msg.topic()).deferred.increment(1);
        tracing::info!(group = %self.group, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            attempt, "record deferred behind its key (key-blocking retry)");
        Outcome::Done
    }

    /// The retrier: runs the due heads of the partitions this member owns, until
    /// shutdown. A head whose partition is revoked meanwhile is abandoned (rolled
    /// back), as a batch of a revoked partition is: its new owner runs it.
    pub(crate) async fn run_blocked(
        self: Arc<Self>,
        owned: Arc<Mutex<HashSet<(String, i32)>>>,
        shutdown: CancellationToken,
    ) {
        let never = CancellationToken::new();
        let idle = Stop { shutdown: &shutdown, revoked: &never };
        let is_mine = |key: &(String, i32)| owned.lock().unwrap_or_else(|p| p.into_inner()).contains(key);
        while !idle.sleep(RETRIER_INTERVAL).await {
            let partitions = match DB::due_partitions(&self.pool, &self.group, now_ms() as i64).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "reading blocked records failed; retrying");
                    continue;
                }
            };
            for key in partitions.into_iter().filter(|k| is_mine(k)) {
                let heads = DB::heads(&self.pool, &self.group, (&key.0, key.1), now_ms() as i64, HEADS_PER_ROUND).await;
                let heads = match heads {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(group = %self.group, error = %e, "reading blocked records failed; retrying");
                        continue;
                    }
                };
                let revoked = CancellationToken::new();
                let watch = {
                    let (owned, key, revoked) = (owned.clone(), key.clone(), revoked.clone());
                    tokio::spawn(async move {
                        while owned.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        revoked.cancel();
                    })
                };
                let stop = Stop { shutdown: &shutdown, revoked: &revoked };
                for row in heads {
                    if shutdown.is_cancelled() || revoked.is_cancelled() {
                        break;
                    }
                    self.run_head(row, stop).await;
                }
                watch.abort();
            }
        }
    }

    /// One attempt of a key's head, and what follows it.
    async fn run_head(&self, mut row: BlockedRow, stop: Stop<'_>) {
        let msg = row_message(&row);
        let Some(topic) = self.routes.get(&row.topic) else { return };
        let (route, info) = match topic.resolve(&msg, self.unknown_event_types) {
            Resolution::Route(route, info) => (route, info),
            // Checked when it was deferred; only a changed configuration gets here.
            Resolution::Reject { failure, dead_letter_topic } => {
                return self.release_after(self.dead_letter(&msg, dead_letter_topic, failure, stop).await, &row).await
            }
            Resolution::Skip { .. } => return self.release_after(Outcome::Done, &row).await,
        };
        let now = Instant::now();
        if let Some(until) = route.breaker.as_ref().and_then(|b| b.admit(now)) {
            row.due_at_ms = now_ms() as i64 + until.saturating_duration_since(now).as_millis() as i64;
            return self.reschedule(&row, "circuit open").await;
        }
        let attempt = row.attempt.max(1) as u32;
        let e = match self.attempt(&msg, route, &info, attempt, stop).await {
            Ok(duplicate) => {
                self.succeeded(route, &info, duplicate);
                return self.release_after(Outcome::Done, &row).await;
            }
            Err(AttemptError::Cancelled) => return,
            Err(AttemptError::Infrastructure(e)) => {
                ContainerStats::add(&self.stats.infrastructure_errors, 1);
                tracing::warn!(group = %self.group, error = %crate::report(&e), "infrastructure failure; the head runs again");
                return;
            }
            Err(AttemptError::Decode(e)) => {
                let failure = Failure::new(DeadLetterReason::Deserialization, CODEC_ERROR_PATH, &e, attempt);
                let outcome = self.dead_letter(&msg, &route.dead_letter_topic, failure, stop).await;
                return self.release_after(outcome, &row).await;
            }
            Err(AttemptError::Handler(e)) => e,
        };
        self.head_failed(msg, route, row, attempt, e, stop).await
    }

    async fn head_failed(
        &self,
        msg: OwnedMessage,
        route: &Route<DB>,
        mut row: BlockedRow,
        attempt: u32,
        e: HandlerError,
        stop: Stop<'_>,
    ) {
        let now = Instant::now();
        let mut open_for = Duration::ZERO;
        if let Some(breaker) = &route.breaker {
            if !e.is_transient() {
                breaker.on_success();
            } else if let Some(until) = breaker.on_failure(&e, now) {
                open_for = until.saturating_duration_since(now);
                if matches!(e, HandlerError::Unavailable(_)) {
                    // Not counted: the head waits for the breaker.
                    row.due_at_ms = now_ms() as i64 + open_for.as_millis() as i64;
                    return self.reschedule(&row, &crate::report(&e)).await;
                }
            }
        }
        let delay = match &e {
            HandlerError::Permanent(_) => None,
            _ => route.delay_after(attempt, &e),
        };
        let Some(delay) = delay else {
            let reason =
                if e.is_transient() { DeadLetterReason::RetriesExhausted } else { DeadLetterReason::PermanentError };
            let outcome = self
                .dead_letter(&msg, &route.dead_letter_topic, Failure::new(reason, e.kind(), &e, attempt), stop)
                .await;
            return self.release_after(outcome, &row).await;
        };
        ContainerStats::add(&self.stats.retries, 1);
        self.metrics.topic(&row.topic).retried.increment(1);
        row.attempt = attempt as i32 + 1;
        row.due_at_ms = now_ms() as i64 + delay.max(open_for).as_millis() as i64;
        self.reschedule(&row, &crate::report(&e)).await
    }

    async fn reschedule(&self, row: &BlockedRow, error: &str) {
        if let Err(e) = DB::reschedule(&self.pool, &self.group, row, error).await {
            tracing::warn!(group = %self.group, error = %e, "rescheduling a blocked record failed; it runs again");
        }
    }

    /// Removes the head once it is done, releasing its key's next record.
    async fn release_after(&self, outcome: Outcome, row: &BlockedRow) {
        if !matches!(outcome, Outcome::Done) {
            return;
        }
        if let Err(e) = DB::release_blocked(&self.pool, &self.group, row).await {
            // It runs again: a duplicate then, skipped by the deduplication row.
            tracing::warn!(group = %self.group, error = %e, "releasing a blocked record failed");
        }
    }
}

/// The record of a row, as it was consumed.
fn row_message(row: &BlockedRow) -> OwnedMessage {
    let headers = serde_json::from_str::<serde_json::Value>(&row.headers).ok().map(|json| {
        let mut out = OwnedHeaders::new();
        for h in json.as_array().into_iter().flatten() {
            let Some(key) = h.get("key").and_then(|k| k.as_str()) else { continue };
            let value: Option<Vec<u8>> =
                match (h.get("value").and_then(|v| v.as_str()), h.get("hex").and_then(|v| v.as_str())) {
                    (Some(text), _) => Some(text.as_bytes().to_vec()),
                    (None, Some(hex)) => Some(crate::ops::parked::unhex(hex)),
                    (None, None) => None,
                };
            out = out.insert(Header { key, value: value.as_deref() });
        }
        out
    });
    let timestamp = row.timestamp_ms.map_or(Timestamp::NotAvailable, Timestamp::CreateTime);
    OwnedMessage::new(
        row.payload.clone(),
        Some(row.record_key.clone()),
        row.topic.clone(),
        timestamp,
        row.kafka_partition,
        row.kafka_offset,
        headers,
    )
}

/// A record's headers as JSON text (`[{"key":..,"value":..}|{"key":..,"hex":..}]`).
fn headers_text<H: Headers>(h: Option<&H>) -> String {
    let all: Vec<serde_json::Value> =
        h.into_iter().flat_map(|h| h.iter()).map(crate::redrive::plan::header_json).collect();
    serde_json::Value::Array(all).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_gives_back_the_record_it_was_made_of() {
        let h = OwnedHeaders::new()
            .insert(Header { key: "rk-message-id", value: Some("id-1") })
            .insert(Header { key: "bin", value: Some(&[0u8, 1, 2][..]) })
            .insert(Header::<&[u8]> { key: "null", value: None });
        let row = BlockedRow {
            topic: "t".into(),
            kafka_partition: 3,
            kafka_offset: 42,
            record_key: b"seat-7".to_vec(),
            payload: Some(b"{}".to_vec()),
            headers: headers_text(Some(&h)),
            timestamp_ms: Some(1_700),
            attempt: 2,
            due_at_ms: 0,
        };
        let m = row_message(&row);
        assert_eq!((m.topic(), m.partition(), m.offset(), m.key()), ("t", 3, 42, Some(&b"seat-7"[..])));
        assert_eq!(m.timestamp(), Timestamp::CreateTime(1_700));
        let back: Vec<(String, Option<Vec<u8>>)> =
            m.headers().unwrap().iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(
            back,
            [
                ("rk-message-id".to_owned(), Some(b"id-1".to_vec())),
                ("bin".to_owned(), Some(vec![0, 1, 2])),
                ("null".to_owned(), None)
            ]
        );
    }
}
