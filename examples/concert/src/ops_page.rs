//! `/ops`: the operations page, for a person rather than a scraper. Per consumer group
//! the throughput and lag of the last minutes (a chart), the outbox backlog and its
//! oldest pending age, dead letters by reason, parked records with a replay button,
//! and each worker's health. Everything goes through the library's operations API
//! ([`reliable_kafka::Operations`], [`reliable_kafka::read_dead_letters`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /ops` | the page (HTML; it polls the summary every second) |
//! | `GET /ops/api/summary` | the figures as JSON |
//! | `POST /ops/api/parked/{id}/replay` | replays parked record `id` to its original topic: `200 {"replayed": 1}`, `404` when no such record |

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reliable_kafka::{
    ContainerStats, DeadLetterFilter, HealthProbe, KafkaConfig, Operations, ParkedMessage, RelayStats, TopicBacklog,
};
use serde::Serialize;

use crate::db::Db;

/// How often the sampler records the groups' counters and lag.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes.
pub const SAMPLES: usize = 300;
/// Dead letters read per topic for the by-reason table.
const DEAD_LETTER_SCAN: usize = 10_000;

/// What the page shows, and where it reads it.
#[derive(Clone)]
pub struct OpsState {
    db: Db,
    kafka: KafkaConfig,
    probes: Vec<HealthProbe>,
    groups: Vec<(String, Arc<ContainerStats>)>,
    relay: Option<Arc<RelayStats>>,
    dead_letter_topics: Vec<String>,
    history: Arc<Mutex<VecDeque<Sample>>>,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState").field("groups", &self.groups.len()).finish_non_exhaustive()
    }
}

/// One sample of every group: handled records so far and consumer lag.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, ms.
    pub at_ms: i64,
    /// Per group: records handled so far (processed + duplicates + dead-lettered).
    pub handled: BTreeMap<String, u64>,
    /// Per group: consumer lag (records), when librdkafka has reported it.
    pub lag: BTreeMap<String, i64>,
    /// Outbox rows the relay published so far.
    pub published: u64,
}

impl OpsState {
    /// The page's state over these workers.
    pub fn new(
        db: Db,
        kafka: KafkaConfig,
        probes: Vec<HealthProbe>,
        groups: Vec<(String, Arc<ContainerStats>)>,
        relay: Option<Arc<RelayStats>>,
        dead_letter_topics: Vec<String>,
    ) -> Self {
        OpsState { db, kafka, probes, groups, relay, dead_letter_topics, history: Arc::default() }
    }

    /// Records one sample (the sampler calls it every [`SAMPLE_INTERVAL`]).
    pub fn sample(&self) {
        let handled =
            self.groups.iter().map(|(g, s)| (g.clone(), s.processed() + s.duplicates() + s.dead_lettered())).collect();
        let lag = self.groups.iter().filter_map(|(g, s)| Some((g.clone(), s.consumer_lag()?))).collect();
        let published = self.relay.as_ref().map_or(0, |r| r.published());
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back(Sample { at_ms: chrono::Utc::now().timestamp_millis(), handled, lag, published });
        while h.len() > SAMPLES {
            h.pop_front();
        }
    }

    /// Samples every [`SAMPLE_INTERVAL`] until the task is aborted.
    pub fn spawn_sampler(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                tick.tick().await;
                state.sample();
            }
        })
    }
}

/// The page's routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/ops", get(page))
        .route("/ops/api/summary", get(summary))
        .route("/ops/api/parked/{id}/replay", post(replay))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("ops_page.html"))
}

#[derive(Serialize)]
struct Summary {
    generated_at: String,
    outbox: OutboxView,
    groups: Vec<GroupView>,
    workers: Vec<WorkerView>,
    dead_letters: Vec<DeadLetterCount>,
    parked_total: usize,
    parked: Vec<ParkedView>,
    history: Vec<Sample>,
}

#[derive(Serialize)]
struct OutboxView {
    pending: u64,
    oldest_pending_age_ms: Option<u128>,
    parked: u64,
    delivered: u64,
    topics: Vec<TopicView>,
}

#[derive(Serialize)]
struct TopicView {
    topic: String,
    pending: u64,
    oldest_pending_age_ms: Option<u128>,
    parked: u64,
}

#[derive(Serialize)]
struct GroupView {
    group: String,
    processed: u64,
    duplicates: u64,
    retries: u64,
    dead_lettered: u64,
    lag: Option<i64>,
}

#[derive(Serialize)]
struct WorkerView {
    worker: String,
    status: &'static str,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct DeadLetterCount {
    topic: String,
    reason: String,
    count: usize,
}

#[derive(Serialize)]
struct ParkedView {
    id: i64,
    dead_letter_topic: String,
    original_topic: Option<String>,
    message_id: Option<String>,
    key: Option<String>,
    reason: String,
    error: Option<String>,
    redrive_count: i32,
    parked_at: String,
}

impl From<&ParkedMessage> for ParkedView {
    fn from(p: &ParkedMessage) -> Self {
        ParkedView {
            id: p.id,
            dead_letter_topic: p.dead_letter_topic.clone(),
            original_topic: p.original_topic.clone(),
            message_id: p.message_id.clone(),
            key: p.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            reason: p.reason.clone(),
            error: p.error_message.clone(),
            redrive_count: p.redrive_count,
            parked_at: p.parked_at.to_rfc3339(),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn summary(State(s): State<OpsState>) -> Response {
    let backlog = match s.db.outbox_backlog().await {
        Ok(b) => b,
        Err(e) => return internal(reliable_kafka::report(&e)),
    };
    let topics: Result<Vec<TopicBacklog>, _> = match &s.db {
        Db::Postgres(p) => Operations::new(p.clone()).outbox_topics().await,
        Db::MySql(p) => Operations::new(p.clone()).outbox_topics().await,
        Db::Sqlite(p) => Operations::new(p.clone()).outbox_topics().await,
    };
    let topics = match topics {
        Ok(t) => t,
        Err(e) => return internal(reliable_kafka::report(&e)),
    };
    let parked = match s.db.parked_messages().await {
        Ok(p) => p,
        Err(e) => return internal(reliable_kafka::report(&e)),
    };
    let mut dead_letters = Vec::new();
    for topic in &s.dead_letter_topics {
        let records = match reliable_kafka::read_dead_letters(
            &s.kafka,
            topic,
            &DeadLetterFilter::new(),
            DEAD_LETTER_SCAN,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return internal(reliable_kafka::report(&e)),
        };
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records {
            *by_reason.entry(r.reason().map_or("(none)".to_owned(), |r| r.as_str().to_owned())).or_default() += 1;
        }
        dead_letters.extend(by_reason.into_iter().map(|(reason, count)| DeadLetterCount {
            topic: topic.clone(),
            reason,
            count,
        }));
    }
    let summary = Summary {
        generated_at: chrono::Utc::now().to_rfc3339(),
        outbox: OutboxView {
            pending: backlog.pending,
            oldest_pending_age_ms: backlog.oldest_pending_age.map(|d| d.as_millis()),
            parked: backlog.parked,
            delivered: backlog.delivered,
            topics: topics
                .into_iter()
                .map(|t| TopicView {
                    topic: t.topic,
                    pending: t.pending,
                    oldest_pending_age_ms: t.oldest_pending_age.map(|d| d.as_millis()),
                    parked: t.parked,
                })
                .collect(),
        },
        groups: s
            .groups
            .iter()
            .map(|(g, st)| GroupView {
                group: g.clone(),
                processed: st.processed(),
                duplicates: st.duplicates(),
                retries: st.retries(),
                dead_lettered: st.dead_lettered(),
                lag: st.consumer_lag(),
            })
            .collect(),
        workers: s
            .probes
            .iter()
            .map(|p| {
                let h = p.health();
                WorkerView { worker: h.worker, status: h.status.as_str(), reasons: h.reasons }
            })
            .collect(),
        dead_letters,
        parked_total: parked.len(),
        parked: parked.iter().take(100).map(ParkedView::from).collect(),
        history: s.history.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
    };
    Json(summary).into_response()
}

async fn replay(State(s): State<OpsState>, Path(id): Path<i64>) -> Response {
    let filter = DeadLetterFilter::new().parked_id(id);
    let report = match &s.db {
        Db::Postgres(p) => {
            Operations::new(p.clone()).replay_parked(&s.kafka, &filter, Some(1), None, false, "ops-page").await
        }
        Db::MySql(p) => {
            Operations::new(p.clone()).replay_parked(&s.kafka, &filter, Some(1), None, false, "ops-page").await
        }
        Db::Sqlite(p) => {
            Operations::new(p.clone()).replay_parked(&s.kafka, &filter, Some(1), None, false, "ops-page").await
        }
    };
    match report {
        Ok(r) if r.replayed == 0 && r.unreplayable == 0 => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no parked record {id}") })))
                .into_response()
        }
        Ok(r) => Json(serde_json::json!({ "replayed": r.replayed, "unreplayable": r.unreplayable })).into_response(),
        Err(e) => internal(reliable_kafka::report(&e)),
    }
}
