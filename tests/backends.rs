//! The same scenarios on every backend: PostgreSQL (production), MySQL/MariaDB
//! (`MYSQL_URL`, the development machines' MariaDB by default) and SQLite (the embedded
//! default). Each test body is stamped out once per backend by `backend_tests!`, against
//! the Kafka-protocol broker of `KAFKA_BROKERS`.

use std::time::Duration;

use rdkafka::message::Message;
use reliable_kafka::{
    event_handler, headers, Backend, DeadLetterInfo, DeadLetterReason, DeadLetterRedriver, EnqueueOptions, Event,
    HandlerContext, HandlerError, ListenerContainer, Outbox, OutboxRelay,
};
use reliable_kafka_tests::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "unused.by.tests", key = key)]
struct Forwarded {
    key: String,
    n: u32,
}

/// A handler generic over the backend: it forwards each `Work` as a `Forwarded` event
/// through the outbox, in the handler's transaction.
#[event_handler(group = "unused-by-tests")]
async fn forward<DB: Backend>(event: Work, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    let to = format!("{}.forwarded", ctx.record().topic);
    let options = EnqueueOptions { topic: Some(to), ..Default::default() };
    Outbox::new()
        .enqueue_with(ctx.tx(), &Forwarded { key: event.key, n: event.n }, options)
        .await
        .map_err(HandlerError::transient)?;
    Ok(())
}

macro_rules! backend_tests {
    ($backend:ident, $db:ident, $pool:expr, $effects_table:path) => {
        mod $backend {
            use super::*;

            async fn count(pool: &sqlx::Pool<reliable_kafka::$db>, sql: &str) -> i64 {
                sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn committed_rows_are_published_once_in_order_and_rolled_back_ones_never() {
                let pool = $pool;
                let kafka = kafka();
                let topic = unique("outbox");
                create_topics(&kafka, &topic, 1).await;
                let outbox = Outbox::new();
                let to = || EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
                let mut tx = pool.begin().await.unwrap();
                for n in 1..=3 {
                    outbox.enqueue_with(&mut tx, &Work { key: "k".into(), n }, to()).await.unwrap();
                }
                tx.commit().await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                outbox.enqueue_with(&mut tx, &Work { key: "k".into(), n: 99 }, to()).await.unwrap();
                tx.rollback().await.unwrap();

                let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
                let batch = relay.relay_once().await.unwrap();
                assert_eq!((batch.published, batch.failed), (3, 0));
                assert_eq!(relay.relay_once().await.unwrap().published, 0, "nothing is published twice");
                assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE delivered_at IS NOT NULL").await, 3);

                let msgs = read_topic(&kafka, &topic, 3, Duration::from_secs(20), Duration::from_secs(1)).await;
                let ns: Vec<u32> =
                    msgs.iter().map(|m| serde_json::from_slice::<Work>(m.payload().unwrap()).unwrap().n).collect();
                assert_eq!(ns, [1, 2, 3]);
                assert_eq!(header(&msgs[0], headers::EVENT_TYPE).as_deref(), Some("Work"));
                assert!(header(&msgs[0], headers::MESSAGE_ID).and_then(|v| Uuid::parse_str(&v).ok()).is_some());
                assert_eq!(msgs[0].key(), Some(&b"k"[..]));

                // Retention: delivered rows older than the retention are deleted.
                let relay = OutboxRelay::builder(kafka, pool.clone()).retention(Duration::ZERO).build().unwrap();
                assert_eq!(relay.cleanup_once().await.unwrap(), 3);
                assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox").await, 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redelivered_and_retried_messages_change_the_database_once() {
                let pool = $pool;
                $effects_table(&pool).await;
                let kafka = kafka();
                let topic = unique("idem");
                create_topics(&kafka, &topic, 1).await;
                let id = Uuid::now_v7();
                let work = Work { key: "k".into(), n: 1 };
                produce_work(&kafka, &topic, id, &work).await;
                produce_work(&kafka, &topic, id, &work).await; // redelivery: same message id
                produce_work(&kafka, &topic, Uuid::now_v7(), &Work { key: "k".into(), n: 2 }).await;

                let group = unique("group");
                // Each record fails on its first attempt, then succeeds.
                let recorder = Recorder::new(&topic, &group, Mode::FailFirst(1), 3);
                let c = ListenerContainer::builder(kafka, pool.clone()).handler(recorder).build().unwrap().spawn();
                assert!(
                    eventually(Duration::from_secs(30), || async {
                        c.stats().processed() + c.stats().duplicates() == 3
                    })
                    .await
                );
                c.shutdown().await.unwrap();
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 2);
                let dedup = format!("SELECT count(*) FROM rk_processed_messages WHERE consumer_group = '{group}'");
                assert_eq!(count(&pool, &dedup).await, 2);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exhausted_records_are_dead_lettered_redriven_then_parked() {
                let pool = $pool;
                $effects_table(&pool).await;
                let kafka = kafka();
                let topic = unique("dlq");
                create_topics(&kafka, &topic, 1).await;
                let id = Uuid::now_v7();
                produce_work(&kafka, &topic, id, &Work { key: "k".into(), n: 7 }).await;
                let group = unique("group");
                let recorder = Recorder::new(&topic, &group, Mode::AlwaysTransient, 2);
                let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
                assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 }).await);

                let dlq = format!("{topic}.DLQ");
                let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
                    .topic(&dlq)
                    .group_id(unique("redrive"))
                    .max_redrives(1)
                    .build()
                    .unwrap();
                assert_eq!(redriver.redrive_once().await.unwrap().redriven, 1);
                // The re-driven record fails again and is dead-lettered a second time.
                assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 2 }).await);
                c.shutdown().await.unwrap();
                assert_eq!(redriver.redrive_once().await.unwrap().parked, 1);

                let msgs = read_topic(&kafka, &dlq, 2, Duration::from_secs(20), Duration::from_millis(500)).await;
                assert_eq!(msgs.len(), 2);
                let info = DeadLetterInfo::from_headers(msgs[1].headers().unwrap()).unwrap();
                assert_eq!(info.reason, Some(DeadLetterReason::RetriesExhausted));
                assert_eq!(info.attempts, 2);
                assert_eq!(info.original_topic, topic);
                let parked = format!(
                    "SELECT count(*) FROM rk_parked_messages WHERE message_id = '{id}' AND original_topic = '{topic}' \
                     AND redrive_count = 1 AND reason LIKE 're-driven 1 times%'"
                );
                assert_eq!(count(&pool, &parked).await, 1);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 0, "failed attempts roll back");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn batches_commit_together_and_a_failing_record_is_isolated() {
                let pool = $pool;
                $effects_table(&pool).await;
                let kafka = kafka();
                let topic = unique("batch");
                create_topics(&kafka, &topic, 1).await;
                let repeated = Uuid::now_v7();
                for n in 1..=60 {
                    // Record 30 repeats the message id of record 10; record 45 fails.
                    let id = if n == 10 || n == 30 { repeated } else { Uuid::now_v7() };
                    produce_work(&kafka, &topic, id, &Work { key: "k".into(), n }).await;
                }
                let group = unique("group");
                let recorder = Recorder::new(&topic, &group, Mode::PermanentFor(45), 3);
                let c = ListenerContainer::builder(kafka.clone(), pool.clone())
                    .max_batch(25)
                    .handler(recorder)
                    .build()
                    .unwrap()
                    .spawn();
                assert!(
                    eventually(Duration::from_secs(30), || async {
                        c.stats().processed() + c.stats().duplicates() + c.stats().dead_lettered() == 60
                    })
                    .await,
                    "{:?}",
                    c.stats()
                );
                let stats = (c.stats().processed(), c.stats().duplicates(), c.stats().dead_lettered());
                assert!(c.stats().batches() >= 1, "records were fetched before the container started");
                assert!(c.stats().batch_fallbacks() >= 1, "the batch of record 45 fell back");
                c.shutdown().await.unwrap();
                assert_eq!(stats, (58, 1, 1));
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 58, "one effect per message id");
                assert_eq!(count(&pool, "SELECT count(*) FROM effects WHERE n = 45").await, 0);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects WHERE n = 30").await, 0, "a repeated id is skipped");
                let msgs = read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(20), Duration::from_millis(500)).await;
                assert_eq!(msgs.len(), 1);
                assert_eq!(serde_json::from_slice::<Work>(msgs[0].payload().unwrap()).unwrap().n, 45);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_generic_handler_forwards_through_the_outbox_in_its_transaction() {
                let pool = $pool;
                let kafka = kafka();
                let topic = unique("fwd");
                create_topics(&kafka, &topic, 1).await;
                create_topics(&kafka, &format!("{topic}.forwarded"), 1).await;
                for n in 1..=3 {
                    produce_work(&kafka, &topic, Uuid::now_v7(), &Work { key: "k".into(), n }).await;
                }
                let group = unique("group");
                let c = ListenerContainer::builder(kafka.clone(), pool.clone())
                    .handler_with(forward, reliable_kafka::HandlerOptions::new().topic(topic.clone()).group(group))
                    .build()
                    .unwrap()
                    .spawn();
                assert!(eventually(Duration::from_secs(30), || async { c.stats().processed() == 3 }).await);
                c.shutdown().await.unwrap();
                let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
                assert_eq!(relay.relay_once().await.unwrap().published, 3);
                let out = format!("{topic}.forwarded");
                let msgs = read_topic(&kafka, &out, 3, Duration::from_secs(20), Duration::from_millis(500)).await;
                let ns: Vec<u32> =
                    msgs.iter().map(|m| serde_json::from_slice::<Forwarded>(m.payload().unwrap()).unwrap().n).collect();
                assert_eq!(ns, [1, 2, 3]);
            }
        }
    };
}

backend_tests!(postgres, Postgres, isolated_pool().await.0, create_effects_table);
backend_tests!(sqlite, Sqlite, sqlite_pool().await, create_effects_table_sqlite);
backend_tests!(mysql, MySql, mysql_pool().await, create_effects_table_mysql);

#[tokio::test]
async fn the_database_url_scheme_picks_the_backend_and_a_bad_one_names_the_key() {
    let path = std::env::temp_dir().join(format!("rkt-anypool-{}.db", Uuid::new_v4().simple()));
    let pool = reliable_kafka::AnyPool::connect(&format!("sqlite://{}", path.display()), 2).await.unwrap();
    assert_eq!(pool.backend_name(), "sqlite");
    assert!(path.exists(), "the SQLite file is created");
    let pool = reliable_kafka::AnyPool::connect(&database_url(), 2).await.unwrap();
    assert_eq!(pool.backend_name(), "postgres");
    let server = mysql_url();
    let pool = reliable_kafka::AnyPool::connect(&server, 2).await.unwrap();
    assert_eq!(pool.backend_name(), "mysql");
    let mariadb = server.replacen("mysql:", "mariadb:", 1);
    assert_eq!(reliable_kafka::AnyPool::connect(&mariadb, 2).await.unwrap().backend_name(), "mysql");
    let err = reliable_kafka::AnyPool::connect("oracle://scott@127.0.0.1/orcl", 2).await.unwrap_err();
    match err {
        reliable_kafka::Error::Config(reliable_kafka::ConfigError::InvalidValue { key, reason }) => {
            assert_eq!(key, "DATABASE_URL");
            assert!(reason.contains("`oracle`"), "{reason}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let _ = std::fs::remove_file(path);
}

/// Rows another tool wrote that cannot be read are parked with the reason; the others
/// flow (PostgreSQL's typed columns cannot hold such rows).
macro_rules! malformed_row_test {
    ($name:ident, $pool:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let pool = $pool;
            let kafka = kafka();
            let topic = unique("malformed");
            create_topics(&kafka, &topic, 1).await;
            // Rows written by another tool: an id that is not a UUID, headers that are not JSON.
            sqlx::raw_sql(&format!(
                "INSERT INTO rk_outbox (id, aggregatetype, type, schema_version, payload, content_type) \
         VALUES ('not-a-uuid', '{topic}', 'Work', 1, x'7b7d', 'application/json');
         INSERT INTO rk_outbox (id, aggregatetype, type, schema_version, payload, content_type, headers) \
         VALUES ('{}', '{topic}', 'Work', 1, x'7b7d', 'application/json', 'not json');",
                Uuid::now_v7()
            ))
            .execute(&pool)
            .await
            .unwrap();
            let mut tx = pool.begin().await.unwrap();
            let options = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
            Outbox::new().enqueue_with(&mut tx, &Work { key: "k".into(), n: 1 }, options).await.unwrap();
            tx.commit().await.unwrap();

            let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
            assert_eq!(relay.relay_once().await.unwrap().published, 1);
            let parked: Vec<String> =
                sqlx::query_scalar("SELECT last_error FROM rk_outbox WHERE parked_at IS NOT NULL ORDER BY seq")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            assert_eq!(parked.len(), 2, "{parked:?}");
            assert!(parked[0].contains("not-a-uuid"), "{parked:?}");
            assert!(parked[1].starts_with("malformed outbox row"), "{parked:?}");
            assert_eq!(relay.relay_once().await.unwrap().published, 0, "parked rows are not claimed again");
            let msgs = read_topic(&kafka, &topic, 1, Duration::from_secs(20), Duration::from_millis(500)).await;
            assert_eq!(msgs.len(), 1);
        }
    };
}

malformed_row_test!(an_unreadable_sqlite_outbox_row_is_parked_and_the_others_are_published, sqlite_pool().await);
malformed_row_test!(an_unreadable_mysql_outbox_row_is_parked_and_the_others_are_published, mysql_pool().await);

/// MySQL's relay lease is a `GET_LOCK` held by the relay's session: of two instances one
/// publishes, each row once, in per-key order, and when it stops the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mysql_relays_publish_each_row_once_and_one_takes_over_when_the_other_stops() {
    let pool = mysql_pool().await;
    let kafka = kafka();
    let topic = unique("mysql-relays");
    create_topics(&kafka, &topic, 3).await;
    let spawn = || {
        OutboxRelay::builder(kafka.clone(), pool.clone())
            .batch_size(20)
            .poll_interval(Duration::from_millis(100))
            .build()
            .unwrap()
            .spawn()
    };
    let (a, b) = (spawn(), spawn());
    let outbox = Outbox::new();
    let enqueue = |from: u32, to_n: u32| {
        let (pool, outbox, topic) = (pool.clone(), outbox.clone(), topic.clone());
        async move {
            for chunk in (from..to_n).step_by(20) {
                let mut tx = pool.begin().await.unwrap();
                for n in chunk..(chunk + 20).min(to_n) {
                    let options = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
                    outbox.enqueue_with(&mut tx, &Work { key: format!("k{}", n % 7), n }, options).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    };
    enqueue(0, 300).await;
    assert!(
        eventually(Duration::from_secs(30), || async { a.stats().published() + b.stats().published() == 300 }).await
    );
    let (pa, pb) = (a.stats().published(), b.stats().published());
    assert!(pa == 0 || pb == 0, "one instance publishes at a time (a={pa}, b={pb})");
    let (publisher, standby) = if pa > 0 { (a, b) } else { (b, a) };
    publisher.shutdown().await.expect("graceful shutdown");
    enqueue(300, 400).await;
    assert!(
        eventually(Duration::from_secs(30), || async { standby.stats().published() == 100 }).await,
        "the standby took the lock: {}",
        standby.stats().published()
    );
    standby.shutdown().await.expect("graceful shutdown");

    let msgs = read_topic(&kafka, &topic, 400, Duration::from_secs(60), Duration::from_secs(2)).await;
    let works: Vec<Work> = msgs.iter().map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap()).collect();
    assert_eq!(works.len(), 400);
    assert_eq!(works.iter().map(|w| w.n).collect::<std::collections::HashSet<_>>().len(), 400, "each row once");
    let mut last = std::collections::HashMap::new();
    for w in &works {
        if let Some(prev) = last.insert(w.key.clone(), w.n) {
            assert!(prev < w.n, "key {} went {prev} then {}", w.key, w.n);
        }
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(pending, 0);
}

/// Rows are claimed by `seq`, not past a high-water mark: a transaction that took a
/// lower `seq` and committed after a later one is published too (InnoDB hands out
/// `AUTO_INCREMENT` values at insert, not at commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_row_committed_late_is_not_skipped() {
    let pool = mysql_pool().await;
    let kafka = kafka();
    let topic = unique("mysql-late");
    create_topics(&kafka, &topic, 1).await;
    let outbox = Outbox::new();
    let to = || EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
    let mut early = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut early, &Work { key: "early".into(), n: 1 }, to()).await.unwrap();
    let mut late = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut late, &Work { key: "late".into(), n: 2 }, to()).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 1, "the committed row goes first");
    early.commit().await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 1, "the late committer is published too");
    let msgs = read_topic(&kafka, &topic, 2, Duration::from_secs(30), Duration::from_secs(1)).await;
    let keys: Vec<String> =
        msgs.iter().map(|m| serde_json::from_slice::<Work>(m.payload().unwrap()).unwrap().key).collect();
    assert_eq!(keys, ["late", "early"]);
}

/// A handler that takes row 1 of `accounts`, waits until the test's transaction holds
/// row 2 and waits for row 1, then asks for row 2 (a deadlock, in which InnoDB rolls
/// back the lighter transaction: the handler's), swallows the error, and returns `Ok`.
struct DeadlockSwallower {
    topic: String,
    group: String,
    locked: std::sync::Arc<tokio::sync::Notify>,
    go: std::sync::Arc<tokio::sync::Notify>,
    swallowed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl reliable_kafka::EventHandler<reliable_kafka::MySql> for DeadlockSwallower {
    type Event = Work;

    fn options(&self) -> reliable_kafka::HandlerOptions {
        reliable_kafka::HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone())
    }

    fn handle<'a>(
        &'a self,
        _event: Work,
        ctx: &'a mut HandlerContext<reliable_kafka::MySql>,
    ) -> futures::future::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            sqlx::query("UPDATE accounts SET n = n + 1 WHERE id = 1").execute(ctx.tx()).await?;
            self.locked.notify_one();
            self.go.notified().await;
            if let Err(e) = sqlx::query("UPDATE accounts SET n = n + 1 WHERE id = 2").execute(ctx.tx()).await {
                *self.swallowed.lock().unwrap() = Some(e.to_string()); // the bug under test
            }
            Ok(())
        })
    }
}

/// InnoDB rolls back a whole transaction on a deadlock; a handler that swallows the
/// error and returns `Ok` must not be counted as processed with its work (and its dedup
/// row) gone: the container asks MariaDB (`@@in_transaction`) and dead-letters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_handler_that_swallows_a_deadlock_is_dead_lettered_not_counted_as_done() {
    let pool = mysql_pool().await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO accounts VALUES (1, 0), (2, 0);
         CREATE TABLE ballast (id INT PRIMARY KEY)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let kafka = kafka();
    let topic = unique("mysql-deadlock");
    create_topics(&kafka, &topic, 1).await;
    let id = Uuid::now_v7();
    produce_work(&kafka, &topic, id, &Work { key: "k".into(), n: 1 }).await;
    let handler = DeadlockSwallower {
        topic: topic.clone(),
        group: unique("group"),
        locked: Default::default(),
        go: Default::default(),
        swallowed: Default::default(),
    };
    let (locked, go, swallowed) = (handler.locked.clone(), handler.go.clone(), handler.swallowed.clone());
    // The other transaction: heavier (200 rows written), so that InnoDB picks the
    // handler's as the deadlock victim; it holds row 2.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO ballast (id) WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 200) SELECT x FROM n")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET n = n + 10 WHERE id = 2").execute(&mut *other).await.unwrap();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(handler).build().unwrap().spawn();
    tokio::time::timeout(Duration::from_secs(30), locked.notified()).await.expect("the handler holds row 1");
    let waiter = tokio::spawn(async move {
        // Waits for row 1 until the deadlock's rollback releases it.
        sqlx::query("UPDATE accounts SET n = n + 10 WHERE id = 1").execute(&mut *other).await.unwrap();
        other.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.notify_one();
    waiter.await.expect("the other transaction commits");
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 }).await, "{:?}", c.stats());
    assert_eq!(c.stats().processed(), 0);
    c.shutdown().await.unwrap();
    let why = swallowed.lock().unwrap().clone().expect("the handler hit the deadlock");
    assert!(why.contains("1213") || why.to_lowercase().contains("deadlock"), "{why}");
    let rows: Vec<(i32, i32)> =
        sqlx::query_as("SELECT id, n FROM accounts ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(rows, [(1, 10), (2, 10)], "the handler's update was rolled back; the other transaction's committed");
    let dedup: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_processed_messages").fetch_one(&pool).await.unwrap();
    assert_eq!(dedup, 0, "no dedup row for a record whose work is gone");
    let msgs =
        read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(20), Duration::from_millis(500)).await;
    assert_eq!(msgs.len(), 1);
    let info = DeadLetterInfo::from_headers(msgs[0].headers().unwrap()).unwrap();
    assert!(info.error_message.to_lowercase().contains("transaction"), "{}", info.error_message);
}
