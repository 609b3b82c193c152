//! Unit tests of the pipeline on SQLite in memory and records built in memory: no
//! broker is reached (the dead-letter producer is created but never sends here).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage, Timestamp};
use sqlx::{Sqlite, SqlitePool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dead_letter::{dead_letter_info, Failure};
use super::handler::ErasedHandler;
use super::pipeline::{Pipeline, Progress, Stop};
use super::routes::{Route, TopicRoutes, UnknownEventType};
use crate::store::{TransactionState, Transactions};
use crate::{DeadLetterReason, Envelope, Event, EventHandler, FixedBackOff, HandlerContext, HandlerError, JsonCodec};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Job {
    n: u32,
}

impl Event for Job {
    const TOPIC: &'static str = "jobs";
    const EVENT_TYPE: &'static str = "Job";
    const SCHEMA_VERSION: u32 = 1;
    type Codec = JsonCodec;
    fn key(&self) -> Option<String> {
        None
    }
}

/// Fails the first attempt of the jobs whose `n` is in `flaky` (and every batch that
/// holds one), succeeds otherwise; counts calls.
struct Flaky {
    flaky: Vec<u32>,
    calls: Arc<AtomicU32>,
}

impl EventHandler<Sqlite> for Flaky {
    type Event = Job;
    fn handle<'a>(&'a self, job: Job, ctx: &'a mut HandlerContext<Sqlite>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.flaky.contains(&job.n) && ctx.attempt() == 1 {
                return Err(HandlerError::transient("flaky"));
            }
            Ok(())
        })
    }
}

/// One shared in-memory database (it lives as long as its one connection).
async fn memory() -> SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .unwrap()
}

async fn pipeline(handler: Flaky) -> Pipeline<Sqlite> {
    routed(vec![Arc::new(handler)], UnknownEventType::DeadLetter).await
}

/// A pipeline whose topic `jobs` has these handlers.
async fn routed(handlers: Vec<Arc<dyn ErasedHandler<Sqlite>>>, unknown: UnknownEventType) -> Pipeline<Sqlite> {
    let pool = memory().await;
    crate::migrate(&pool).await.unwrap();
    let producer: crate::kafka::Producer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .create_with_context(crate::kafka::HealthContext::new("g"))
        .unwrap();
    let backoff: crate::BackOff = FixedBackOff::new(Duration::from_millis(1), 3).unwrap().into();
    let by_type = handlers.iter().enumerate().map(|(i, h)| (h.event_type(), i)).collect();
    let routes = handlers
        .into_iter()
        .map(|handler| Route {
            handler,
            backoff,
            dead_letter_topic: "jobs.DLQ".into(),
            breaker: None,
            retry_topics: None,
            key_blocking: false,
            #[cfg(feature = "redis")]
            redis_dedup: None,
        })
        .collect();
    Pipeline {
        group: Arc::from("g"),
        dedup_sql: Arc::new(<Sqlite as crate::store::dedup::DedupStore>::dedup_sql("rk_processed_messages")),
        pool,
        routes: HashMap::from([(
            "jobs".to_owned(),
            TopicRoutes {
                identity: crate::IdentitySource::envelope(),
                routes,
                by_type,
                dead_letter_topic: "jobs.DLQ".into(),
                retry_stage: None,
            },
        )]),
        unknown_event_types: unknown,
        metrics: crate::telemetry::record::ConsumerMetrics::new(Arc::from("g")),
        producer,
        stats: Arc::default(),
        handler_timeout: Duration::from_secs(5),
        processed_retention: Duration::from_secs(3600),
        retries: Default::default(),
        watermark: false,
    }
}

fn record(offset: i64, n: u32, timestamp: Timestamp) -> OwnedMessage {
    let headers = Envelope::new(Uuid::now_v7(), "Job", 1).to_headers();
    let payload = serde_json::to_vec(&Job { n }).unwrap();
    OwnedMessage::new(Some(payload), None, "jobs".into(), timestamp, 0, offset, Some(headers))
}

#[tokio::test]
async fn a_failed_batch_stops_at_its_first_failing_record_which_waits_for_its_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let p = pipeline(Flaky { flaky: vec![2, 5], calls: calls.clone() }).await;
    let batch: Vec<_> = (0..8).map(|n| record(i64::from(n), n, Timestamp::CreateTime(1))).collect();
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    let cancel = Stop { shutdown: &shutdown, revoked: &revoked };
    // The batch fails (job 2); records 0 and 1 are done, job 2 waits for attempt 2.
    let first = p.process_batch(&batch, cancel).await;
    assert_eq!((first.done, first.interrupted), (2, false));
    let until = first.wait.expect("job 2 waits");
    assert_eq!(p.retries.get("jobs", 0, 2).map(|t| t.next_attempt), Some(2));
    // Delivered again before it is due (a rebalance gave it back), it waits on,
    // without an attempt.
    let before = calls.load(Ordering::Relaxed);
    if until > std::time::Instant::now() {
        assert_eq!(p.process_batch(&batch[2..], cancel).await.wait, Some(until));
        assert_eq!(calls.load(Ordering::Relaxed), before);
    }
    tokio::time::sleep_until(until.into()).await;
    // Due: job 2 succeeds at attempt 2, record by record up to job 5, which waits.
    let second = p.process_batch(&batch[2..], cancel).await;
    assert_eq!((second.done, second.interrupted), (3, false));
    assert!(second.wait.is_some());
    assert_eq!(p.retries.get("jobs", 0, 2), None, "done records are forgotten");
    tokio::time::sleep_until(second.wait.unwrap().into()).await;
    assert_eq!(p.process_batch(&batch[5..], cancel).await, Progress { done: 3, interrupted: false, wait: None });
    assert_eq!(p.stats.processed(), 8);
    assert_eq!(p.stats.retries(), 2);
    assert_eq!(p.stats.batch_fallbacks(), 1, "a batch that starts with a waiting record goes record by record");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_processed_messages").fetch_one(&p.pool).await.unwrap();
    assert_eq!(rows, 8, "each record once");
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Bonus {
    n: u32,
}

impl Event for Bonus {
    const TOPIC: &'static str = "jobs";
    const EVENT_TYPE: &'static str = "Bonus";
    const SCHEMA_VERSION: u32 = 1;
    type Codec = JsonCodec;
    fn key(&self) -> Option<String> {
        None
    }
}

/// Logs `(event type, n)` of each call, in call order.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<(&'static str, u32)>>>);

impl EventHandler<Sqlite> for Log {
    type Event = Job;
    fn handle<'a>(&'a self, job: Job, _: &'a mut HandlerContext<Sqlite>) -> BoxFuture<'a, Result<(), HandlerError>> {
        self.0.lock().unwrap().push(("Job", job.n));
        Box::pin(async { Ok(()) })
    }
}

struct BonusLog(Log);

impl EventHandler<Sqlite> for BonusLog {
    type Event = Bonus;
    fn handle<'a>(&'a self, b: Bonus, _: &'a mut HandlerContext<Sqlite>) -> BoxFuture<'a, Result<(), HandlerError>> {
        self.0 .0.lock().unwrap().push(("Bonus", b.n));
        Box::pin(async { Ok(()) })
    }
}

fn typed(offset: i64, event_type: &str, n: u32) -> OwnedMessage {
    let headers = Envelope::new(Uuid::now_v7(), event_type, 1).to_headers();
    let payload = serde_json::to_vec(&Job { n }).unwrap();
    OwnedMessage::new(Some(payload), None, "jobs".into(), Timestamp::CreateTime(1), 0, offset, Some(headers))
}

#[tokio::test]
async fn one_topic_routes_each_event_type_to_its_handler_in_partition_order_and_in_one_batch() {
    let log = Log::default();
    let p = routed(vec![Arc::new(log.clone()), Arc::new(BonusLog(log.clone()))], UnknownEventType::Skip).await;
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    let stop = Stop { shutdown: &shutdown, revoked: &revoked };
    let first = typed(0, "Job", 0);
    let redelivered = OwnedMessage::new(
        first.payload().map(<[u8]>::to_vec),
        None,
        "jobs".into(),
        Timestamp::CreateTime(1),
        0,
        5,
        first.headers().cloned(),
    );
    let batch =
        vec![first, typed(1, "Bonus", 1), typed(2, "Bonus", 2), typed(3, "Job", 3), typed(4, "Job", 4), redelivered];
    assert_eq!(p.process_batch(&batch, stop).await, Progress { done: 6, interrupted: false, wait: None });
    let order = log.0.lock().unwrap().clone();
    assert_eq!(order, [("Job", 0), ("Bonus", 1), ("Bonus", 2), ("Job", 3), ("Job", 4)], "partition order across types");
    assert_eq!((p.stats.batches(), p.stats.batch_fallbacks()), (1, 0), "one transaction for both types");
    assert_eq!((p.stats.processed(), p.stats.duplicates()), (5, 1), "dedup spans the types");

    // An event type no handler takes is skipped (committed past), the others processed.
    let batch = [typed(6, "Job", 6), typed(7, "Refund", 7), typed(8, "Bonus", 8)];
    assert_eq!(p.process_batch(&batch, stop).await, Progress { done: 3, interrupted: false, wait: None });
    assert_eq!(p.stats.skipped(), 1);
    assert_eq!((p.stats.batches(), p.stats.batch_fallbacks()), (2, 0), "a skipped type does not break the batch");
    assert_eq!(log.0.lock().unwrap()[5..], [("Job", 6), ("Bonus", 8)]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_processed_messages").fetch_one(&p.pool).await.unwrap();
    assert_eq!(rows, 7, "a dedup row per processed record, none for the skipped one");
}

#[tokio::test]
async fn a_revoke_abandons_the_attempt_in_hand_and_shutdown_finishes_it() {
    let p = pipeline(Flaky { flaky: vec![], calls: Arc::default() }).await;
    let rows = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_processed_messages").fetch_one(&p.pool).await.unwrap();
        n
    };
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    revoked.cancel();
    let batch = [record(0, 0, Timestamp::CreateTime(1))];
    let stop = Stop { shutdown: &shutdown, revoked: &revoked };
    assert_eq!(p.process_batch(&batch, stop).await, Progress { done: 0, interrupted: true, wait: None });
    assert_eq!(rows().await, 0, "nothing committed for a revoked partition");
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    shutdown.cancel();
    let stop = Stop { shutdown: &shutdown, revoked: &revoked };
    assert_eq!(p.process_batch(&batch, stop).await, Progress { done: 1, interrupted: false, wait: None });
    assert_eq!(rows().await, 1, "shutdown lets the record in hand finish");
}

async fn sqlite() -> SqlitePool {
    let pool = memory().await;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
    pool
}

#[tokio::test]
async fn sqlite_reports_a_transaction_it_rolled_back_on_its_own() {
    let pool = sqlite().await;
    let mut tx = Sqlite::begin_write(&pool).await.unwrap();
    sqlx::query("INSERT INTO t (id) VALUES (1)").execute(&mut *tx).await.unwrap();
    // A failed statement leaves an SQLite transaction open: what succeeded commits.
    assert!(sqlx::query("INSERT INTO t (id) VALUES (1)").execute(&mut *tx).await.is_err());
    assert_eq!(Sqlite::check_transaction(&mut tx).await.unwrap(), TransactionState::Open);
    // As after SQLITE_FULL or an I/O error: the transaction is gone, later statements
    // autocommit.
    sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
    assert_eq!(Sqlite::check_transaction(&mut tx).await.unwrap(), TransactionState::Aborted);
    drop(tx);
    // The connection is usable afterwards, and nothing of the transaction stayed.
    let mut tx = Sqlite::begin_write(&pool).await.unwrap();
    assert_eq!(Sqlite::check_transaction(&mut tx).await.unwrap(), TransactionState::Open);
    tx.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn dead_letters_carry_the_records_own_timestamp_type_and_real_error_paths() {
    let e = HandlerError::permanent("no");
    let msg = record(7, 1, Timestamp::LogAppendTime(42));
    let info = dead_letter_info(&msg, "g", Failure::new(DeadLetterReason::PermanentError, e.kind(), &e, 1));
    assert_eq!(info.original_timestamp_type, crate::TimestampType::LogAppendTime);
    assert_eq!(info.original_timestamp_ms, Some(42));
    assert_eq!(info.error_kind, "reliable_kafka::HandlerError::Permanent");
    let msg = record(8, 1, Timestamp::CreateTime(43));
    let info = dead_letter_info(&msg, "g", Failure::new(DeadLetterReason::PermanentError, e.kind(), &e, 1));
    assert_eq!(info.original_timestamp_type, crate::TimestampType::CreateTime);
}

/// Every path written to `kafka_dlt-exception-fqcn` names a public item at the crate's
/// root: each is compared with the name of the type it must denote, and that type is
/// named here through its root re-export (`crate::X`), so a path to an item that is
/// not exported, or renamed, fails.
#[test]
fn exception_paths_name_public_items() {
    fn root_path<T>() -> String {
        let name = std::any::type_name::<T>();
        format!("reliable_kafka::{}", name.rsplit("::").next().unwrap())
    }
    assert_eq!(
        crate::IdentityError::from(crate::EnvelopeError::Missing { header: "h" }).path(),
        root_path::<crate::EnvelopeError>()
    );
    assert_eq!(crate::IdentityError::StructuredMode.path(), root_path::<crate::IdentityError>());
    assert_eq!(super::pipeline::CODEC_ERROR_PATH, root_path::<crate::CodecError>());
    assert_eq!(super::pipeline::UnexpectedRecord::PATH, root_path::<crate::UnexpectedRecord>());
    let handler = root_path::<crate::HandlerError>();
    let kinds = [
        (HandlerError::transient("x").kind(), "Transient"),
        (HandlerError::permanent("x").kind(), "Permanent"),
        (HandlerError::retry_after(Duration::ZERO, "x").kind(), "RetryAfter"),
        (HandlerError::unavailable("x").kind(), "Unavailable"),
    ];
    for (kind, variant) in kinds {
        assert_eq!(kind, format!("{handler}::{variant}"));
    }
}

#[tokio::test]
async fn the_blocked_table_gives_each_keys_lowest_offset_as_its_head() {
    use crate::store::blocked::{BlockedRow, BlockedStore, Defer};
    let pool = memory().await;
    crate::migrate(&pool).await.unwrap();
    let row = |offset: i64, key: &str, due: i64| BlockedRow {
        topic: "jobs".into(),
        kafka_partition: 0,
        kafka_offset: offset,
        record_key: key.as_bytes().to_vec(),
        payload: None,
        headers: "[]".into(),
        timestamp_ms: None,
        attempt: 1,
        due_at_ms: due,
    };
    for r in [row(5, "a", 100), row(7, "a", 0), row(6, "b", 50), row(9, "b", 0)] {
        Sqlite::defer(&pool, Defer { group: "g", row: &r, error: None, now_ms: 1 }).await.unwrap();
    }
    // Deferring twice (a redelivery after a crash) keeps one row.
    Sqlite::defer(&pool, Defer { group: "g", row: &row(9, "b", 0), error: None, now_ms: 1 }).await.unwrap();
    assert_eq!(Sqlite::blocked_count(&pool, "g").await.unwrap(), 4);
    assert!(Sqlite::is_blocked(&pool, "g", "jobs", 0, b"a").await.unwrap());
    assert!(!Sqlite::is_blocked(&pool, "g", "jobs", 0, b"c").await.unwrap());
    assert!(!Sqlite::is_blocked(&pool, "other", "jobs", 0, b"a").await.unwrap());
    let offsets = |rows: Vec<BlockedRow>| rows.into_iter().map(|r| r.kafka_offset).collect::<Vec<_>>();
    let heads = |now| Sqlite::heads(&pool, "g", ("jobs", 0), now, 10);
    assert_eq!(offsets(heads(60).await.unwrap()), [6], "a's head (5) is not due yet; 7 waits behind it");
    assert_eq!(offsets(heads(100).await.unwrap()), [6, 5], "earliest due first");
    assert_eq!(Sqlite::due_partitions(&pool, "g", 60).await.unwrap(), [("jobs".to_owned(), 0)]);
    assert!(Sqlite::heads(&pool, "g", ("jobs", 1), 100, 10).await.unwrap().is_empty(), "another partition's");
    Sqlite::release_blocked(&pool, "g", &row(5, "a", 0)).await.unwrap();
    assert_eq!(offsets(heads(60).await.unwrap()), [7, 6], "releasing a head frees the next");
}

#[tokio::test]
async fn a_record_past_the_waiting_one_is_not_run_and_a_waiting_record_that_never_returns_is_given_up() {
    let calls = Arc::new(AtomicU32::new(0));
    let p = pipeline(Flaky { flaky: vec![2], calls: calls.clone() }).await;
    let batch: Vec<_> = (0..5).map(|n| record(i64::from(n), n, Timestamp::CreateTime(1))).collect();
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    let stop = Stop { shutdown: &shutdown, revoked: &revoked };
    assert_eq!(p.process_batch(&batch, stop).await.done, 2, "job 2 waits");
    let before = calls.load(Ordering::Relaxed);
    // The rewind did not take: records 3 and 4 come instead of 2. They are not run,
    // not in a batch either; the partition is rewound again, three times at most.
    for _ in 0..3 {
        let p3 = p.process_batch(&batch[3..], stop).await;
        assert_eq!((p3.done, p3.interrupted), (0, false));
        assert!(p3.wait.is_some());
    }
    assert_eq!(calls.load(Ordering::Relaxed), before, "nothing past the waiting record ran");
    assert_eq!(p.stats.batches(), 0);
    // Then record 2 is taken as gone (retention), and the partition goes on.
    assert_eq!(p.process_batch(&batch[3..], stop).await, Progress { done: 2, interrupted: false, wait: None });
    assert_eq!(p.retries.of_partition("jobs", 0), None);
}
