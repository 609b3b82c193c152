//! The route table of one topic: its handlers keyed by event type, the identity source
//! they share, and what becomes of a record that no handler takes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;

use super::breaker::Breaker;
use super::dead_letter::Failure;
use super::handler::ErasedHandler;
use super::pipeline::UnexpectedRecord;
use crate::{BackOff, Backend, DeadLetterReason, IdentitySource, RecordInfo};

/// What the container does with a record whose event type no handler of its topic
/// takes (see `ListenerContainerBuilder::unknown_event_types`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownEventType {
    /// Publish it to the topic's dead-letter topic with reason `unknown-event-type`
    /// (the default): nothing is lost, and an operator sees it.
    #[default]
    DeadLetter,
    /// Commit past it, count it (`ContainerStats::skipped`) and log it at `info`: for
    /// topics shared with event types this service does not care about.
    Skip,
}

/// One handler and its policies; a handler with retry topics has a route in the
/// table of its source topic and one in each retry topic's.
pub(crate) struct Route<DB: Backend> {
    pub handler: Arc<dyn ErasedHandler<DB>>,
    pub backoff: BackOff,
    pub dead_letter_topic: String,
    pub breaker: Option<Arc<Breaker>>,
    /// The handler's retry topics, in order.
    pub retry_topics: Option<Arc<RetryPlan>>,
    /// Key-blocking retry (`rk_blocked_records`).
    pub key_blocking: bool,
    /// Deduplication in Redis instead of the database.
    #[cfg(feature = "redis")]
    pub redis_dedup: Option<crate::RedisDedup>,
}

impl<DB: Backend> Route<DB> {
    /// Whether the handler is deduplicated in Redis (no database transaction).
    pub(crate) fn dedup_in_redis(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis_dedup.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The wait after failed attempt `attempt` with the transient error `e` (its
    /// `RetryAfter`, else the back-off's delay); `None` after the last attempt.
    pub(crate) fn delay_after(&self, attempt: u32, e: &crate::HandlerError) -> Option<Duration> {
        let delay = self.backoff.delay_after(attempt)?;
        Some(match e {
            crate::HandlerError::RetryAfter { after, .. } => *after,
            _ => delay,
        })
    }
}

impl<DB: Backend> Clone for Route<DB> {
    fn clone(&self) -> Self {
        Route {
            handler: self.handler.clone(),
            backoff: self.backoff,
            dead_letter_topic: self.dead_letter_topic.clone(),
            breaker: self.breaker.clone(),
            retry_topics: self.retry_topics.clone(),
            key_blocking: self.key_blocking,
            #[cfg(feature = "redis")]
            redis_dedup: self.redis_dedup.clone(),
        }
    }
}

/// A handler's retry topics and their delays.
#[derive(Debug)]
pub(crate) struct RetryPlan {
    pub topics: Vec<String>,
    pub delays: Vec<Duration>,
}

/// All handlers of one topic.
pub(crate) struct TopicRoutes<DB: Backend> {
    pub identity: IdentitySource,
    pub routes: Vec<Route<DB>>,
    /// Index into `routes` by the handler's event type.
    pub by_type: HashMap<&'static str, usize>,
    /// Where records that no handler takes go: the handlers' dead-letter topic when
    /// they all name the same one, else `<topic>` + the container's suffix.
    pub dead_letter_topic: String,
    /// `Some(i)` for the handlers' `i`-th retry topic.
    pub retry_stage: Option<usize>,
}

/// Where one record goes.
pub(crate) enum Resolution<'r, DB: Backend> {
    /// To this route's handler.
    Route(&'r Route<DB>, RecordInfo),
    /// To the dead-letter topic, at once (a poison pill).
    Reject { failure: Failure, dead_letter_topic: &'r str },
    /// Past it: an event type no handler takes, with [`UnknownEventType::Skip`].
    Skip { event_type: Option<String> },
}

impl<DB: Backend> TopicRoutes<DB> {
    /// The route of `msg`, or why it has none.
    pub(crate) fn resolve<M: Message>(&self, msg: &M, unknown: UnknownEventType) -> Resolution<'_, DB> {
        let reject = |failure| Resolution::Reject { failure, dead_letter_topic: &self.dead_letter_topic };
        let facts = match self.identity.facts(msg) {
            Ok(f) => f,
            Err(e) => return reject(Failure::new(DeadLetterReason::InvalidHeaders, e.path(), &e, 0)),
        };
        let index = match &facts.identity.event_type {
            Some(t) => self.by_type.get(t.as_str()).copied(),
            // No event type: the topic's only handler takes the record.
            None => (self.routes.len() == 1).then_some(0),
        };
        let Some(route) = index.map(|i| &self.routes[i]) else {
            if unknown == UnknownEventType::Skip {
                return Resolution::Skip { event_type: facts.identity.event_type };
            }
            let e = UnexpectedRecord::EventType { found: facts.identity.event_type, handled: self.handled() };
            return reject(Failure::new(DeadLetterReason::UnknownEventType, UnexpectedRecord::PATH, &e, 0));
        };
        if facts.schema_version > route.handler.schema_version() {
            let e = UnexpectedRecord::SchemaVersion {
                found: facts.schema_version,
                supported: route.handler.schema_version(),
            };
            let failure = Failure::new(DeadLetterReason::UnsupportedSchemaVersion, UnexpectedRecord::PATH, &e, 0);
            return Resolution::Reject { failure, dead_letter_topic: &route.dead_letter_topic };
        }
        let info = RecordInfo {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            message_id: facts.identity.message_id,
            event_type: facts.identity.event_type.unwrap_or_else(|| route.handler.event_type().to_owned()),
            schema_version: facts.schema_version,
            produced_at_ms: facts.produced_at_ms,
            traceparent: facts.traceparent,
        };
        Resolution::Route(route, info)
    }

    /// The event types the handlers take, in registration order.
    fn handled(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.handler.event_type().to_owned()).collect()
    }
}
