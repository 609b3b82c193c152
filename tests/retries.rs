//! Retries that never stall a partition: the pause-and-poll back-off, retry topics,
//! the circuit breaker. Real PostgreSQL and the Kafka-protocol broker (`KAFKA_BROKERS`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::message::{Headers, Message};
use reliable_kafka::{
    headers, CircuitBreaker, CircuitState, DeadLetterInfo, EventHandler, FixedBackOff, HandlerContext, HandlerError,
    HandlerOptions, ListenerContainer, Postgres,
};
use reliable_kafka_tests::*;
use uuid::Uuid;

async fn effects_of(pool: &sqlx::PgPool, n: u32) -> i64 {
    count(pool, &format!("SELECT count(*) FROM effects WHERE n = {n}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_minute_retry_after_pauses_only_its_partition_and_the_member_keeps_polling() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka().set("max.poll.interval.ms", "30000");
    let (topic, group) = (unique("retry-after"), unique("group"));
    create_topics(&kafka, &topic, 2).await;
    let work = |n: u32| Work { key: format!("k{n}"), n };
    // Record 0 (partition 0) asks to be retried in 10 minutes; record 1 is on partition 1.
    produce_work_to(&kafka, &topic, 0, Uuid::now_v7(), &work(0)).await;
    produce_work_to(&kafka, &topic, 1, Uuid::now_v7(), &work(1)).await;
    let recorder = Recorder::new(&topic, &group, Mode::RetryAfterFor(0, Duration::from_secs(600)), 3);
    let log = recorder.log.clone();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { effects_of(&pool, 1).await == 1 }).await);
    assert!(eventually(Duration::from_secs(10), || async { c.stats().paused_partitions() == 1 }).await);
    // Past max.poll.interval.ms: the loop polls all along.
    let started = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(35) {
        longest_gap = longest_gap.max(c.stats().since_last_poll());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Partition 1 still flows; partition 0 keeps its order behind the waiting record.
    produce_work_to(&kafka, &topic, 1, Uuid::now_v7(), &work(2)).await;
    produce_work_to(&kafka, &topic, 0, Uuid::now_v7(), &work(3)).await;
    assert!(eventually(Duration::from_secs(15), || async { effects_of(&pool, 2).await == 1 }).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = c.shared_stats();
    let (health, assigned) = (c.health(), stats.assigned_partitions());
    c.shutdown().await.unwrap();
    assert!(longest_gap < Duration::from_secs(5), "polled at least every 5 s, longest gap {longest_gap:?}");
    assert_eq!(effects_of(&pool, 0).await, 0, "record 0 waits its 10 minutes");
    assert_eq!(effects_of(&pool, 3).await, 0, "record 3 waits behind record 0");
    let calls0 = log.lock().unwrap().iter().filter(|c| c.key == "k0").count();
    assert_eq!(calls0, 1, "one attempt of record 0 in 40 s: neither evicted nor redelivered early");
    assert_eq!((assigned, stats.retries(), stats.dead_lettered()), (2, 1, 0));
    assert_ne!(health.status, reliable_kafka::HealthStatus::Unhealthy, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topics_move_the_partition_on_and_retry_each_record_when_due_once() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("retry-topics"), unique("group"));
    for t in [topic.clone(), format!("{topic}-retry-1000"), format!("{topic}-retry-2000")] {
        create_topics(&kafka, &t, 2).await;
    }
    let items: Vec<_> = (0..12).map(|n| (Uuid::now_v7(), Work { key: format!("k{}", n % 4), n })).collect();
    produce_works(&kafka, &topic, &items).await;
    let recorder = retrying_recorder(&topic, &group);
    let log = recorder.log.clone();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    let done =
        eventually(Duration::from_secs(60), || async { count(&pool, "SELECT count(*) FROM effects").await == 12 })
            .await;
    let stats = c.shared_stats();
    c.shutdown().await.unwrap();
    assert!(done, "every record processed");
    let distinct = count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await;
    assert_eq!(distinct, 12, "each record's effect once");
    assert_eq!((stats.retries(), stats.dead_lettered()), (24, 0), "two retry-topic hops per record");

    let calls = log.lock().unwrap().clone();
    let mut by_id: HashMap<Uuid, Vec<&Call>> = HashMap::new();
    for call in &calls {
        by_id.entry(call.message_id).or_default().push(call);
    }
    for (id, mut attempts) in by_id {
        attempts.sort_by_key(|c| c.attempt);
        let topics: Vec<&str> = attempts.iter().map(|c| c.topic.as_str()).collect();
        let retry_1 = format!("{topic}-retry-1000");
        let retry_2 = format!("{topic}-retry-2000");
        assert_eq!(topics, [topic.as_str(), retry_1.as_str(), retry_2.as_str()], "{id}");
        let gap = |a: &Call, b: &Call| b.at.duration_since(a.at);
        assert!(gap(attempts[0], attempts[1]) >= Duration::from_millis(990), "{id}: never before its due time");
        assert!(gap(attempts[1], attempts[2]) >= Duration::from_millis(1990), "{id}: never before its due time");
    }
    // Non-blocking: every record had its first attempt before any record's second.
    let last_first = calls.iter().filter(|c| c.attempt == 1).map(|c| c.at).max().unwrap();
    let first_second = calls.iter().filter(|c| c.attempt == 2).map(|c| c.at).min().unwrap();
    assert!(last_first < first_second, "the source partition moved on past its failing records");
    // In each retry topic, a key's records come in the order they became due.
    for attempt in [2, 3] {
        let mut first_at: HashMap<Uuid, Instant> = HashMap::new();
        calls.iter().filter(|c| c.attempt == attempt - 1).for_each(|c| {
            first_at.insert(c.message_id, c.at);
        });
        for key in ["k0", "k1", "k2", "k3"] {
            let order: Vec<Instant> = calls
                .iter()
                .filter(|c| c.attempt == attempt && c.key == key)
                .map(|c| first_at[&c.message_id])
                .collect();
            assert!(order.windows(2).all(|w| w[0] <= w[1]), "{key}: attempt {attempt} in due order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_retry_topic_the_dead_letter_keeps_the_source_records_place() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("retry-dlt"), unique("group"));
    for t in [topic.clone(), format!("{topic}-retry-0")] {
        create_topics(&kafka, &t, 1).await;
    }
    let id = Uuid::now_v7();
    produce_work(&kafka, &topic, id, &Work { key: "k".into(), n: 7 }).await;
    let mut recorder = Recorder::new(&topic, &group, Mode::AlwaysTransient, 1);
    recorder.retry_topics = Some(reliable_kafka::RetryTopics::new([Duration::from_millis(500)]).suffix_with_index());
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 }).await);
    c.shutdown().await.unwrap();
    let copy = read_topic(&kafka, &format!("{topic}-retry-0"), 1, Duration::from_secs(20), Duration::ZERO).await;
    let h = copy[0].headers().expect("headers");
    let find = |name: &str| h.iter().filter(|x| x.key == name).last().and_then(|x| x.value).map(<[u8]>::to_vec);
    assert_eq!(find(headers::RETRY_TOPIC_ATTEMPTS), Some(2u32.to_be_bytes().to_vec()), "Spring's 4-byte int");
    assert_eq!(find(headers::RETRY_TOPIC_BACKOFF_TIMESTAMP).map(|v| v.len()), Some(8));
    assert_eq!(find(headers::MESSAGE_ID), Some(id.to_string().into_bytes()), "the envelope travels along");
    let dlq = read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(20), Duration::ZERO).await;
    let info = DeadLetterInfo::from_headers(dlq[0].headers().unwrap()).unwrap();
    assert_eq!((info.original_topic.as_str(), info.original_offset), (topic.as_str(), 0), "the source record");
    assert_eq!(info.attempts, 2);
    assert_eq!(info.reason, Some(reliable_kafka::DeadLetterReason::RetriesExhausted));
    let retry_headers = dlq[0].headers().unwrap().iter().filter(|x| x.key.starts_with("retry_topic-")).count();
    assert_eq!(retry_headers, 0, "the retry headers stay in the retry topics; rk-dlt-attempts counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_between_retry_topics_leaves_each_effect_once() {
    let (pool, schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("retry-kill"), unique("group"));
    let retry_1 = format!("{topic}-retry-1000");
    for t in [topic.clone(), retry_1.clone(), format!("{topic}-retry-2000")] {
        create_topics(&kafka, &t, 2).await;
    }
    let items: Vec<_> = (0..12).map(|n| (Uuid::now_v7(), Work { key: format!("k{n}"), n })).collect();
    produce_works(&kafka, &topic, &items).await;
    // A child process fails every record's first attempt, copies it to the first retry
    // topic, and dies by SIGKILL before it commits any offset.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rk-test-consumer"))
        .args([&schema, &topic, &group, "retry-topics"])
        .spawn()
        .expect("spawn child consumer");
    let copied = eventually(Duration::from_secs(60), || async { records_in(&kafka, &retry_1) >= 12 }).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(copied, "the child copied every record to the first retry topic");
    let recorder = retrying_recorder(&topic, &group);
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    let done =
        eventually(Duration::from_secs(60), || async { count(&pool, "SELECT count(*) FROM effects").await == 12 })
            .await;
    // Both lineages of a record (the child's copies, and the new ones of the
    // redelivered source records) reach the last retry topic: one commits, the other
    // is a duplicate.
    let both =
        eventually(Duration::from_secs(30), || async { c.stats().processed() + c.stats().duplicates() >= 24 }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = c.shared_stats();
    c.shutdown().await.unwrap();
    assert!(done && both, "processed {} duplicates {}", stats.processed(), stats.duplicates());
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 12);
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 12, "no second effect");
    assert!(stats.duplicates() >= 12, "the second lineage of each record was skipped: {}", stats.duplicates());
    assert_eq!(stats.dead_lettered(), 0);
}

/// A handler whose downstream is up or down (`HandlerError::unavailable`); a call
/// takes 300 ms while up and 100 ms to fail while down (so that a probe's half-open state lasts long enough to be seen).
struct Downstream {
    topic: String,
    group: String,
    up: Arc<AtomicBool>,
    calls_while_down: Arc<AtomicU32>,
}

impl EventHandler<Postgres> for Downstream {
    type Event = Work;

    fn options(&self) -> HandlerOptions {
        HandlerOptions::new()
            .topic(self.topic.clone())
            .group(self.group.clone())
            .backoff(FixedBackOff::new(Duration::from_millis(100), 5).unwrap())
            .circuit_breaker(CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_secs(2)))
    }

    fn handle<'a>(&'a self, w: Work, ctx: &'a mut HandlerContext<Postgres>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                self.calls_while_down.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(HandlerError::unavailable(std::io::Error::other("connection refused")));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)")
                .bind(ctx.message_id())
                .bind(&w.key)
                .bind(w.n as i32)
                .execute(ctx.tx())
                .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_on_an_outage_probes_half_open_and_closes_without_dead_letters() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("breaker"), unique("group"));
    create_topics(&kafka, &topic, 2).await;
    let items: Vec<_> = (0..6).map(|n| (Uuid::now_v7(), Work { key: format!("k{n}"), n })).collect();
    produce_works(&kafka, &topic, &items).await;
    let up = Arc::new(AtomicBool::new(false));
    let calls_while_down = Arc::new(AtomicU32::new(0));
    let handler = Downstream {
        topic: topic.clone(),
        group: group.clone(),
        up: up.clone(),
        calls_while_down: calls_while_down.clone(),
    };
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(handler).build().unwrap().spawn();
    // The states seen, every 10 ms.
    let seen = Arc::new(Mutex::new(Vec::<CircuitState>::new()));
    let sampler = {
        let (stats, seen) = (c.shared_stats(), seen.clone());
        tokio::spawn(async move {
            loop {
                let state = stats.circuit("Work").expect("the handler has a breaker");
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&state) {
                        seen.push(state);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().circuit("Work") == Some(CircuitState::Open) }).await
    );
    assert!(c.health().reasons.iter().any(|r| r.contains("circuit open")), "{:?}", c.health());
    // Two cool-downs of outage: the probes fail and it opens again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let down_calls = calls_while_down.load(Ordering::SeqCst);
    up.store(true, Ordering::SeqCst);
    let done =
        eventually(Duration::from_secs(30), || async { count(&pool, "SELECT count(*) FROM effects").await == 6 }).await;
    assert!(
        eventually(Duration::from_secs(5), || async { c.stats().circuit("Work") == Some(CircuitState::Closed) }).await
    );
    sampler.abort();
    let stats = c.shared_stats();
    c.shutdown().await.unwrap();
    assert!(done, "every record processed after the outage");
    assert_eq!(stats.dead_lettered(), 0, "the outage dead-lettered nothing");
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 6);
    let seen = seen.lock().unwrap().clone();
    use CircuitState::*;
    assert_eq!(seen[..4], [Closed, Open, HalfOpen, Open], "a failed probe opens it again: {seen:?}");
    assert_eq!(seen[seen.len() - 2..], [HalfOpen, Closed], "a successful probe closes it: {seen:?}");
    // The first failure opens it (unavailable), then one probe per 2 s cool-down: not
    // 6 records × 5 attempts.
    assert!(down_calls <= 2 + 3, "calls while down: {down_calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_blocking_holds_a_failing_keys_later_records_and_lets_other_keys_flow() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("key-blocking"), unique("group"));
    create_topics(&kafka, &topic, 1).await;
    // One partition: seat-7's first record fails twice; seat-7's later records must wait
    // for it, the other seats must not.
    let mut items = Vec::new();
    for n in 0..12u32 {
        let key = if n % 3 == 0 { "seat-7".to_owned() } else { format!("row-{n}") };
        items.push((Uuid::now_v7(), Work { key, n }));
    }
    produce_works(&kafka, &topic, &items).await;
    let mut recorder = Recorder::new(&topic, &group, Mode::TransientFor(0, 2), 4);
    recorder.backoff = FixedBackOff::new(Duration::from_millis(1500), 4).unwrap().into();
    let log = recorder.log.clone();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler_with(recorder, HandlerOptions::new().key_blocking(true))
        .build()
        .unwrap()
        .spawn();
    // A head is released (its row deleted) just after its effects commit, in a step of
    // its own (a crash between the two runs it again, as a duplicate), so wait for both.
    let settled = || async {
        count(&pool, "SELECT count(*) FROM effects").await == 12
            && count(&pool, "SELECT count(*) FROM rk_blocked_records").await == 0
    };
    let _ = eventually(Duration::from_secs(60), settled).await;
    let done = count(&pool, "SELECT count(*) FROM effects").await == 12;
    let stats = c.shared_stats();
    let left = count(&pool, "SELECT count(*) FROM rk_blocked_records").await;
    c.shutdown().await.unwrap();
    assert!(done, "every record processed");
    assert_eq!(left, 0, "every key released");
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 12, "each once");
    // seat-7 in offset order: 0, 3, 6, 9.
    let seat7: Vec<i32> =
        sqlx::query_scalar("SELECT n FROM effects WHERE key = 'seat-7' ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(seat7, [0, 3, 6, 9], "per-key order kept");
    // The other seats did not wait for seat-7's back-off (1.5 s, twice).
    let calls = log.lock().unwrap().clone();
    let first = calls[0].at;
    let others_done = calls.iter().filter(|c| c.key != "seat-7").map(|c| c.at).max().unwrap();
    let seat7_done = calls.iter().filter(|c| c.key == "seat-7").map(|c| c.at).max().unwrap();
    let seat7_retry = calls.iter().filter(|c| c.key == "seat-7" && c.attempt == 2).map(|c| c.at).min().unwrap();
    assert!(others_done < seat7_retry, "the other keys did not wait for seat-7's back-off");
    assert!(seat7_done.duration_since(first) >= Duration::from_millis(3000), "seat-7 waited out its back-off");
    assert_eq!(stats.deferred(), 4, "seat-7's failing head and the three behind it");
    assert_eq!((stats.retries(), stats.dead_lettered(), stats.paused_partitions()), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_resumes_paused_partitions_from_their_committed_offset() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (topic, group) = (unique("paused-rebalance"), unique("group"));
    create_topics(&kafka, &topic, 2).await;
    // Each partition: a record whose first call fails (then a 60 s back-off), and one
    // behind it.
    for (partition, n) in [(0, 0), (0, 1), (1, 2), (1, 3)] {
        produce_work_to(&kafka, &topic, partition, Uuid::now_v7(), &Work { key: format!("k{n}"), n }).await;
    }
    let member = |calls: &Arc<AtomicU32>| {
        let mut r = Recorder::new(&topic, &group, Mode::FailCalls(2), 3);
        r.backoff = FixedBackOff::new(Duration::from_secs(60), 3).unwrap().into();
        r.calls = calls.clone(); // the two members share the count: two failures in all
        ListenerContainer::builder(kafka.clone(), pool.clone()).handler(r).build().unwrap().spawn()
    };
    let calls = Arc::new(AtomicU32::new(0));
    let a = member(&calls);
    assert!(eventually(Duration::from_secs(30), || async { a.stats().paused_partitions() == 2 }).await);
    // A second member joins: each gets one partition. The one A keeps is resumed and
    // runs from its committed offset, not 60 s later; the one B takes starts there.
    let joined = Instant::now();
    let b = member(&calls);
    let done =
        eventually(Duration::from_secs(25), || async { count(&pool, "SELECT count(*) FROM effects").await == 4 }).await;
    let took = joined.elapsed();
    let (a_paused, b_paused) = (a.stats().paused_partitions(), b.stats().paused_partitions());
    let dead = a.stats().dead_lettered() + b.stats().dead_lettered();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(done, "every record processed after the rebalance, not after the back-off ({took:?})");
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 4, "each once");
    let order: Vec<i32> = sqlx::query_scalar("SELECT n FROM effects ORDER BY id").fetch_all(&pool).await.unwrap();
    let pos = |n: i32| order.iter().position(|&x| x == n).unwrap();
    assert!(pos(0) < pos(1) && pos(2) < pos(3), "partition order kept: {order:?}");
    assert_eq!((a_paused, b_paused, dead), (0, 0, 0));
}
