//! Listener container: idempotent consumer, retry, dead-lettering, poison pills and a
//! crash between the database commit and the offset commit. Real PostgreSQL and the
//! Kafka-protocol broker (`KAFKA_BROKERS`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::message::Message;
use reliable_kafka::{headers, DeadLetterInfo, DeadLetterReason, ListenerContainer};
use reliable_kafka_tests::*;
use uuid::Uuid;

struct Setup {
    pool: sqlx::PgPool,
    schema: String,
    kafka: reliable_kafka::KafkaConfig,
    topic: String,
    group: String,
}

async fn setup(name: &str, partitions: i32) -> Setup {
    let (pool, schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique(name);
    create_topics(&kafka, &topic, partitions).await;
    Setup { pool, schema, kafka, group: unique("group"), topic }
}

async fn effects(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM effects").await
}

fn dead_letters(msgs: &[rdkafka::message::OwnedMessage]) -> Vec<DeadLetterInfo> {
    msgs.iter().map(|m| DeadLetterInfo::from_headers(m.headers().expect("headers")).expect("dlt headers")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_changes_the_database_once() {
    let s = setup("dup", 1).await;
    let id = Uuid::now_v7();
    let work = Work { key: "k".into(), n: 1 };
    produce_work(&s.kafka, &s.topic, id, &work).await;
    produce_work(&s.kafka, &s.topic, id, &work).await; // redelivery: same message id
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "k".into(), n: 2 }).await;

    let recorder = Recorder::new(&s.topic, &s.group, Mode::Succeed, 1);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() + c.stats().duplicates() == 3 }).await
    );
    assert_eq!(c.stats().duplicates(), 1);
    c.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the duplicate never reached the handler");
    assert_eq!(effects(&s.pool).await, 2);
    assert_eq!(count(&s.pool, &format!("SELECT count(*) FROM effects WHERE message_id = '{id}'")).await, 1);
    let dedup =
        count(&s.pool, &format!("SELECT count(*) FROM rk_processed_messages WHERE consumer_group = '{}'", s.group))
            .await;
    assert_eq!(dedup, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_after_db_commit_before_offset_commit_causes_no_second_effect() {
    let s = setup("crash", 2).await;
    let n = 20;
    for i in 0..n {
        produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: format!("k{}", i % 4), n: i }).await;
    }
    // A separate process processes everything, then dies by SIGKILL before its
    // (hour-long) commit interval: the database has the effects, Kafka no offsets.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rk-test-consumer"))
        .args([&s.schema, &s.topic, &s.group])
        .spawn()
        .expect("spawn child consumer");
    let done = eventually(Duration::from_secs(60), || async { effects(&s.pool).await == i64::from(n) }).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(done, "child processed all records");

    let recorder = Recorder::new(&s.topic, &s.group, Mode::Succeed, 1);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    let redelivered = eventually(Duration::from_secs(60), || async { c.stats().duplicates() == u64::from(n) }).await;
    let stats = (c.stats().received(), c.stats().processed(), c.stats().duplicates());
    c.shutdown().await.unwrap();
    assert!(redelivered, "every record came again after the crash (received, processed, duplicates) = {stats:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no handler ran twice");
    assert_eq!(effects(&s.pool).await, i64::from(n), "no second effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_below_max_attempts_end_in_one_effect() {
    let s = setup("transient", 1).await;
    for i in 0..3 {
        produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "k".into(), n: i }).await;
    }
    let recorder = Recorder::new(&s.topic, &s.group, Mode::FailFirst(2), 4);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().processed() == 3 }).await);
    let (retries, dead) = (c.stats().retries(), c.stats().dead_lettered());
    c.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 9, "3 attempts per record");
    assert_eq!(retries, 6);
    assert_eq!(dead, 0);
    assert_eq!(effects(&s.pool).await, 3, "failed attempts rolled back their effects");
    let ns: Vec<i32> = sqlx::query_scalar("SELECT n FROM effects ORDER BY id").fetch_all(&s.pool).await.unwrap();
    assert_eq!(ns, [0, 1, 2], "partition order kept through retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_every_attempt_is_dead_lettered_after_exactly_max_attempts() {
    let s = setup("exhausted", 1).await;
    let id = Uuid::now_v7();
    produce_work(&s.kafka, &s.topic, id, &Work { key: "seat-7".into(), n: 7 }).await;
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "seat-8".into(), n: 8 }).await;
    let recorder = Recorder::new(&s.topic, &s.group, Mode::AlwaysTransient, 3);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 2 }).await);
    c.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6, "exactly 3 attempts per record");
    assert_eq!(effects(&s.pool).await, 0);

    let dlq =
        read_topic(&s.kafka, &format!("{}.DLQ", s.topic), 2, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(dlq.len(), 2);
    let first = &dlq[0];
    assert_eq!(first.key(), Some(&b"seat-7"[..]), "original key kept");
    assert_eq!(serde_json::from_slice::<Work>(first.payload().unwrap()).unwrap().n, 7, "original payload kept");
    assert_eq!(header(first, headers::MESSAGE_ID), Some(id.to_string()), "original headers kept");
    let info = &dead_letters(&dlq)[0];
    assert_eq!(info.original_topic, s.topic);
    assert_eq!(info.original_partition, 0);
    assert_eq!(info.original_offset, 0);
    assert!(info.original_timestamp_ms.is_some());
    assert_eq!(info.consumer_group, s.group);
    assert_eq!(info.reason, Some(DeadLetterReason::RetriesExhausted));
    assert_eq!(info.attempts, 3);
    assert_eq!(info.error_kind, "reliable_kafka::HandlerError::Transient");
    assert_eq!(info.error_message, "transient failure: downstream unavailable (attempt 3)");
    assert_eq!(dead_letters(&dlq)[1].original_offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_without_retry() {
    let s = setup("permanent", 1).await;
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "k".into(), n: 1 }).await;
    let recorder = Recorder::new(&s.topic, &s.group, Mode::Permanent, 5);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 }).await);
    c.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let dlq =
        read_topic(&s.kafka, &format!("{}.DLQ", s.topic), 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    let info = &dead_letters(&dlq)[0];
    assert_eq!(info.reason, Some(DeadLetterReason::PermanentError));
    assert_eq!(info.attempts, 1);
    assert_eq!(info.error_message, "permanent failure: seat does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_at_once_and_the_partition_moves_on() {
    let s = setup("poison", 1).await;
    let h = headers::MESSAGE_ID;
    let ok = |n| Work { key: "k".into(), n };
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &ok(1)).await;
    let poison_id = Uuid::now_v7().to_string();
    produce_raw(&s.kafka, &s.topic, "k", b"{not json", &[(h, poison_id.as_bytes()), (headers::EVENT_TYPE, b"Work")])
        .await;
    produce_raw(
        &s.kafka,
        &s.topic,
        "k",
        br#"{"key":"k","n":"two"}"#,
        &[(h, Uuid::now_v7().to_string().as_bytes()), (headers::EVENT_TYPE, b"Work")],
    )
    .await;
    produce_raw(&s.kafka, &s.topic, "k", br#"{"key":"k","n":3}"#, &[(headers::EVENT_TYPE, b"Work")]).await; // no message id
    produce_raw(
        &s.kafka,
        &s.topic,
        "k",
        br#"{"key":"k","n":4}"#,
        &[(h, Uuid::now_v7().to_string().as_bytes()), (headers::EVENT_TYPE, b"Other")],
    )
    .await;
    produce_raw(
        &s.kafka,
        &s.topic,
        "k",
        br#"{"key":"k","n":5}"#,
        &[(h, Uuid::now_v7().to_string().as_bytes()), (headers::EVENT_TYPE, b"Work"), (headers::SCHEMA_VERSION, b"9")],
    )
    .await;
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &ok(6)).await;

    let recorder = Recorder::new(&s.topic, &s.group, Mode::Succeed, 5);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() == 2 && c.stats().dead_lettered() == 5 })
            .await
    );
    let retries = c.stats().retries();
    c.shutdown().await.unwrap();
    assert_eq!(retries, 0, "poison pills are never retried");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let ns: Vec<i32> = sqlx::query_scalar("SELECT n FROM effects ORDER BY id").fetch_all(&s.pool).await.unwrap();
    assert_eq!(ns, [1, 6], "the records around the poison pills were processed");

    let dlq =
        read_topic(&s.kafka, &format!("{}.DLQ", s.topic), 5, Duration::from_secs(30), Duration::from_secs(1)).await;
    let infos = dead_letters(&dlq);
    let reasons: Vec<_> = infos.iter().map(|i| i.reason.unwrap()).collect();
    use DeadLetterReason::*;
    assert_eq!(reasons, [Deserialization, Deserialization, InvalidHeaders, UnknownEventType, UnsupportedSchemaVersion]);
    assert_eq!(dlq[0].payload(), Some(&b"{not json"[..]), "raw bytes kept");
    assert!(infos[0].error_message.starts_with("decoding failed: "), "{}", infos[0].error_message);
    assert!(infos[2].error_message.contains(headers::MESSAGE_ID), "{}", infos[2].error_message);
    assert!(infos.iter().all(|i| i.attempts <= 1));
}

#[tokio::test]
async fn bad_container_configuration_fails_at_build_naming_the_key() {
    let (pool, _schema) = isolated_pool().await;
    let r = |topic: &str, group: &str| Recorder::new(topic, group, Mode::Succeed, 1);
    let msg = |b: reliable_kafka::ListenerContainerBuilder| {
        let e = b.build().expect_err("must be rejected");
        std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string())
    };
    let base = || ListenerContainer::builder(kafka(), pool.clone());
    assert!(msg(base()).contains("handler"));
    assert!(msg(base().handler(r("t", "g")).dead_letter_suffix("")).contains("dead-letter topic of `t`"));
    assert!(msg(base().handler(r("t", "g")).handler(r("t", "g"))).contains("more than one handler"));
    assert!(msg(base().handler(r("t", "g")).handler(r("u", "h"))).contains("declares group `h`"));
    assert!(msg(base().handler(r("t", "g")).processed_table("x y")).contains("processed_table"));
    assert!(msg(base().handler(r("t", "g")).commit_interval(Duration::ZERO)).contains("commit_interval"));
    // librdkafka's own checks, at build, naming the property.
    let with = |k: &str, v: &str| ListenerContainer::builder(kafka().set(k, v), pool.clone()).handler(r("t", "g"));
    assert!(msg(with("no.such.property", "1")).contains("no.such.property"));
    assert!(msg(with("session.timeout.ms", "-5")).contains("session.timeout.ms"));
    assert!(msg(with("session.timeout.ms", "0")).contains("session.timeout.ms"));
    let relay = reliable_kafka::OutboxRelay::builder(kafka().set("linger.ms", "-1"), pool.clone()).build();
    assert!(format!("{:?}", relay.expect_err("must be rejected")).contains("linger.ms"));
    // Long back-offs are fine (the partition waits paused, polling goes on); a handler
    // call longer than max.poll.interval.ms is not.
    let mut slow = r("t", "g");
    slow.backoff = reliable_kafka::FixedBackOff::new(Duration::from_secs(100), 4).unwrap().into();
    assert!(base().handler(slow).build().is_ok());
    assert!(msg(base().handler(r("t", "g")).handler_timeout(Duration::from_secs(400))).contains("max.poll.interval.ms"));
    // Retry topics and a back-off of the handler's own conflict; a breaker must open
    // before the last attempt.
    let retrying = reliable_kafka::HandlerOptions::new()
        .retry_topics(reliable_kafka::RetryTopics::new([Duration::from_secs(1)]))
        .backoff(reliable_kafka::FixedBackOff::new(Duration::from_secs(1), 2).unwrap());
    assert!(msg(base().handler_with(r("t", "g"), retrying)).contains("retry_topics"));
    let breaker = reliable_kafka::HandlerOptions::new().circuit_breaker(reliable_kafka::CircuitBreaker::new(
        5,
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    assert!(msg(base().handler_with(r("t", "g"), breaker)).contains("circuit_breaker"));
}

/// Runs one record through a `mode` handler and returns the dead-letter info.
async fn dead_letter_of(name: &str, mode: Mode, attempts: u32, timeout: Duration) -> (Setup, DeadLetterInfo, u32) {
    let s = setup(name, 1).await;
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "k".into(), n: 1 }).await;
    produce_work(&s.kafka, &s.topic, Uuid::now_v7(), &Work { key: "k".into(), n: 2 }).await;
    let recorder = Recorder::new(&s.topic, &s.group, mode, attempts);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone())
        .handler(recorder)
        .handler_timeout(timeout)
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 2 }).await);
    c.shutdown().await.unwrap();
    let dlq =
        read_topic(&s.kafka, &format!("{}.DLQ", s.topic), 2, Duration::from_secs(30), Duration::from_secs(1)).await;
    let info = dead_letters(&dlq).remove(0);
    (s, info, calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_record_and_the_container_goes_on() {
    let (s, info, calls) = dead_letter_of("panic", Mode::Panic, 3, Duration::from_secs(15)).await;
    assert_eq!(calls, 2, "a panic is permanent: one attempt per record, both records reached");
    assert_eq!(info.reason, Some(DeadLetterReason::PermanentError));
    assert_eq!(info.error_message, "permanent failure: handler panicked: handler bug for n = 1");
    assert_eq!(effects(&s.pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_swallows_a_failed_statement_is_not_taken_for_a_success() {
    let (s, info, _) = dead_letter_of("swallow", Mode::SwallowDbError, 3, Duration::from_secs(15)).await;
    assert_eq!(info.reason, Some(DeadLetterReason::PermanentError));
    assert!(info.error_message.contains("transaction was aborted"), "{}", info.error_message);
    let dedup = count(&s.pool, "SELECT count(*) FROM rk_processed_messages").await;
    assert_eq!((effects(&s.pool).await, dedup), (0, 0), "nothing was committed, and nothing claims it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_over_its_timeout_is_retried_then_dead_lettered() {
    let (s, info, calls) =
        dead_letter_of("timeout", Mode::Sleep(Duration::from_secs(5)), 2, Duration::from_millis(200)).await;
    assert_eq!(calls, 4, "2 attempts per record");
    assert_eq!(info.reason, Some(DeadLetterReason::RetriesExhausted));
    assert_eq!(info.error_message, "transient failure: handler did not finish within 200ms");
    assert_eq!(effects(&s.pool).await, 0, "abandoned attempts rolled back");
}

/// A handler that writes each batch with one multi-row statement and notes the batch sizes.
struct MultiRow {
    topic: String,
    group: String,
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl reliable_kafka::EventHandler for MultiRow {
    type Event = Work;
    fn options(&self) -> reliable_kafka::HandlerOptions {
        reliable_kafka::HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone())
    }
    fn handle<'a>(
        &'a self,
        event: Work,
        ctx: &'a mut reliable_kafka::HandlerContext,
    ) -> futures::future::BoxFuture<'a, Result<(), reliable_kafka::HandlerError>> {
        let record = ctx.record().clone();
        self.handle_batch(vec![(event, record)], ctx)
    }
    fn handle_batch<'a>(
        &'a self,
        events: Vec<(Work, reliable_kafka::RecordInfo)>,
        ctx: &'a mut reliable_kafka::HandlerContext,
    ) -> futures::future::BoxFuture<'a, Result<(), reliable_kafka::HandlerError>> {
        Box::pin(async move {
            self.sizes.lock().unwrap().push(events.len());
            insert_effects(ctx.tx(), &events).await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handler_writes_each_batch_with_one_statement_and_each_record_once() {
    let s = setup("multirow", 1).await;
    let items: Vec<_> = (1..=100).map(|n| (Uuid::now_v7(), Work { key: "k".into(), n })).collect();
    produce_works(&s.kafka, &s.topic, &items).await;
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = MultiRow { topic: s.topic.clone(), group: s.group.clone(), sizes: sizes.clone() };
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone())
        .max_batch(30)
        .handler(handler)
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().processed() == 100 }).await);
    c.shutdown().await.unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 100, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 30), "{sizes:?}");
    assert!(sizes.len() < 100, "records were batched: {sizes:?}");
    assert_eq!(effects(&s.pool).await, 100);
    let ordered =
        count(&s.pool, "SELECT count(*) FROM effects e1 JOIN effects e2 ON e2.id = e1.id + 1 WHERE e2.n = e1.n + 1")
            .await;
    assert_eq!(ordered, 99, "partition order kept across batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_in_parallel_keep_each_keys_order_and_apply_each_record_once() {
    let s = setup("parallel", 4).await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    let items: Vec<_> = (1..=40).flat_map(|n| keys.map(|key| (Uuid::now_v7(), Work { key: key.into(), n }))).collect();
    produce_works(&s.kafka, &s.topic, &items).await;
    let recorder = Recorder::new(&s.topic, &s.group, Mode::FailCalls(3), 3);
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone())
        .max_batch(10)
        .partition_concurrency(4)
        .handler(recorder)
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().processed() == 240 }).await, "{:?}", c.stats());
    c.shutdown().await.unwrap();
    assert_eq!(effects(&s.pool).await, 240, "one effect per record despite the failed calls");
    // Per key, effects were written in the order of n (the partition's order).
    let out_of_order = count(
        &s.pool,
        "SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY id) AS prev FROM effects) x WHERE n <= prev",
    )
    .await;
    assert_eq!(out_of_order, 0);
    // The offsets were committed at shutdown: the group's next member has nothing to do.
    let again = Recorder::new(&s.topic, &s.group, Mode::Succeed, 1);
    let c = ListenerContainer::builder(s.kafka.clone(), s.pool.clone()).handler(again).build().unwrap().spawn();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(c.stats().received(), 0, "every offset was committed");
    c.shutdown().await.unwrap();
}

/// With `partition_concurrency` > 1 a revoke abandons the batches of the revoked
/// partitions and waits for them before its commit (0.2 fix): the member that loses a
/// partition never dead-letters a record its new owner also works on. In 0.1 the old
/// member's batches ran on after the revoke and both members dead-lettered the same
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_abandons_the_revoked_partitions_batches_so_no_record_is_dead_lettered_twice() {
    let s = setup("revoke", 4).await;
    let items: Vec<_> = (1..=8).map(|n| (Uuid::now_v7(), Work { key: format!("k{n}"), n })).collect();
    produce_works(&s.kafka, &s.topic, &items).await;
    let member = || {
        let mut recorder = Recorder::new(&s.topic, &s.group, Mode::AlwaysTransient, 4);
        recorder.backoff = reliable_kafka::FixedBackOff::new(Duration::from_millis(800), 4).unwrap().into();
        ListenerContainer::builder(s.kafka.clone(), s.pool.clone())
            .partition_concurrency(4)
            .handler(recorder)
            .build()
            .unwrap()
            .spawn()
    };
    let a = member();
    assert!(eventually(Duration::from_secs(30), || async { a.stats().retries() > 0 }).await, "A is retrying");
    // B joins while A's batches wait between attempts: the group rebalances.
    let b = member();
    let done = || async { a.stats().dead_lettered() + b.stats().dead_lettered() >= 8 };
    assert!(eventually(Duration::from_secs(90), done).await, "A {:?} B {:?}", a.stats(), b.stats());
    let dlq =
        read_topic(&s.kafka, &format!("{}.DLQ", s.topic), 8, Duration::from_secs(30), Duration::from_secs(5)).await;
    let per_id = count_by_header(&dlq, headers::MESSAGE_ID);
    assert_eq!(per_id.len(), 8, "every record dead-lettered");
    assert!(per_id.values().all(|&n| n == 1), "no record dead-lettered twice: {per_id:?}");
    assert_eq!(a.stats().dead_lettered() + b.stats().dead_lettered(), 8);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
