//! After a failed attempt: the circuit breaker, the retry topics or the back-off
//! decide whether the record waits (its partition paused, see `paused.rs`), goes to
//! its next retry topic, or is given up on (the dead-letter topic).

use std::time::{Duration, Instant};

use rdkafka::message::Message;

use super::dead_letter::Failure;
use super::paused::Tracked;

/// Rewinds to a waiting record that does not come back, before it is given up.
const MAX_REWINDS: u8 = 3;
use super::pipeline::{Outcome, Pipeline, Stop};
use super::routes::{Route, TopicRoutes};
use super::stats::ContainerStats;
use crate::health::now_ms;
use crate::{Backend, DeadLetterReason, HandlerError, RecordInfo};

impl<DB: Backend> Pipeline<DB> {
    /// What follows attempt `attempt` of `msg`, which failed with `e`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn failed<M: Message + Sync>(
        &self,
        msg: &M,
        topic: &TopicRoutes<DB>,
        route: &Route<DB>,
        info: &RecordInfo,
        attempt: u32,
        e: HandlerError,
        stop: Stop<'_>,
    ) -> Outcome {
        let now = Instant::now();
        // Until when an open breaker holds the record, at least.
        let mut open_until = None;
        if let Some(breaker) = &route.breaker {
            if !e.is_transient() {
                breaker.on_success(); // the downstream answered
            } else {
                open_until = breaker.on_failure(&e, now);
                if let (HandlerError::Unavailable(_), Some(until)) = (&e, open_until) {
                    // The downstream is down: the record waits for the breaker, and this
                    // attempt does not count.
                    let tracked = Tracked { offset: msg.offset(), next_attempt: attempt, due: until, rewinds: 0 };
                    self.retries.set(msg.topic(), msg.partition(), tracked);
                    tracing::info!(group = %self.group, topic = %info.topic, partition = info.partition,
                        offset = info.offset, attempt, error = %crate::report(&e),
                        "downstream unavailable; the record waits for the circuit");
                    return Outcome::Wait { until };
                }
            }
        }
        let give_up = |reason| Failure::new(reason, e.kind(), &e, attempt);
        if !e.is_transient() {
            return self.give_up(msg, &route.dead_letter_topic, give_up(DeadLetterReason::PermanentError), stop).await;
        }
        if let Some(plan) = &route.retry_topics {
            let next = topic.retry_stage.map_or(0, |stage| stage + 1);
            let Some(retry_topic) = plan.topics.get(next) else {
                let failure = give_up(DeadLetterReason::RetriesExhausted);
                return self.give_up(msg, &route.dead_letter_topic, failure, stop).await;
            };
            let wait = match &e {
                HandlerError::RetryAfter { after, .. } => (*after).max(plan.delays[next]),
                _ => plan.delays[next],
            };
            let due_ms = now_ms() as i64 + wait.as_millis() as i64;
            let failure = give_up(DeadLetterReason::RetriesExhausted);
            let outcome = self.retry_copy(msg, retry_topic, failure, due_ms, stop).await;
            if matches!(outcome, Outcome::Done) {
                self.retries.clear(msg.topic(), msg.partition(), msg.offset());
            }
            return outcome;
        }
        let delay = route.delay_after(attempt, &e);
        let Some(delay) = delay else {
            return self
                .give_up(msg, &route.dead_letter_topic, give_up(DeadLetterReason::RetriesExhausted), stop)
                .await;
        };
        ContainerStats::add(&self.stats.retries, 1);
        self.metrics.topic(&info.topic).retried.increment(1);
        if route.key_blocking && msg.key().is_some() {
            // The record waits in the table, its key blocked; the partition moves on.
            let due_ms = now_ms() as i64 + delay.as_millis() as i64;
            let outcome = self.defer(msg, attempt + 1, due_ms, Some(&e), stop).await;
            if matches!(outcome, Outcome::Done) {
                self.retries.clear(msg.topic(), msg.partition(), msg.offset());
            }
            return outcome;
        }
        tracing::info!(group = %self.group, topic = %info.topic, partition = info.partition, offset = info.offset,
            attempt, ?delay, error = %crate::report(&e), "handler failed; retrying after the back-off");
        let until = (now + delay.max(Duration::from_millis(1))).max(open_until.unwrap_or(now));
        let tracked = Tracked { offset: msg.offset(), next_attempt: attempt + 1, due: until, rewinds: 0 };
        self.retries.set(msg.topic(), msg.partition(), tracked);
        Outcome::Wait { until }
    }

    /// `Some(Wait)` when `msg` comes after the partition's waiting record: the rewind
    /// to it did not take (a failed seek), so the partition is rewound again. A waiting
    /// record that never comes back (deleted by retention meanwhile) is given up after
    /// [`MAX_REWINDS`] rewinds, with an error log, and the partition goes on.
    pub(crate) fn past_waiting<M: Message>(&self, msg: &M, waiting: Option<Tracked>, now: Instant) -> Option<Outcome> {
        let mut waiting = waiting.filter(|t| t.offset < msg.offset())?;
        if waiting.rewinds >= MAX_REWINDS {
            tracing::error!(group = %self.group, topic = msg.topic(), partition = msg.partition(), waiting = waiting.offset,
                offset = msg.offset(), "the waiting record did not come back after {MAX_REWINDS} rewinds (deleted by retention?); going on without it");
            self.retries.clear(msg.topic(), msg.partition(), waiting.offset);
            return None;
        }
        tracing::warn!(group = %self.group, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            waiting = waiting.offset, "a record past the waiting one was delivered; rewinding");
        waiting.rewinds += 1;
        waiting.due = waiting.due.max(now);
        self.retries.set(msg.topic(), msg.partition(), waiting);
        Some(Outcome::Wait { until: now })
    }

    /// Counts a record whose attempt succeeded (`duplicate`: its message id was
    /// processed before), and tells the breaker.
    pub(crate) fn succeeded(&self, route: &Route<DB>, info: &RecordInfo, duplicate: bool) {
        let metrics = self.metrics.topic(&info.topic);
        if duplicate {
            ContainerStats::add(&self.stats.duplicates, 1);
            metrics.duplicate.increment(1);
            if let Some(breaker) = &route.breaker {
                breaker.release_probe(); // it never reached the downstream
            }
        } else {
            ContainerStats::add(&self.stats.processed, 1);
            metrics.processed.increment(1);
            metrics.handled(info.produced_at_ms, now_ms());
            if let Some(breaker) = &route.breaker {
                breaker.on_success();
            }
        }
    }

    /// Dead-letters `msg` and forgets its attempts.
    pub(crate) async fn give_up<M: Message + Sync>(
        &self,
        msg: &M,
        dead_letter_topic: &str,
        failure: Failure,
        stop: Stop<'_>,
    ) -> Outcome {
        let outcome = self.dead_letter(msg, dead_letter_topic, failure, stop).await;
        if matches!(outcome, Outcome::Done) {
            self.retries.clear(msg.topic(), msg.partition(), msg.offset());
        }
        outcome
    }
}
