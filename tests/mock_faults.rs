//! Fault injection on librdkafka's in-process mock cluster: the relay loses nothing
//! when produce requests fail or the broker goes away.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use reliable_kafka::{headers, EnqueueOptions, KafkaConfig, Outbox, OutboxRelay};
use reliable_kafka_tests::*;

async fn enqueue(pool: &sqlx::PgPool, topic: &str, range: std::ops::Range<u32>) -> Vec<String> {
    let outbox = Outbox::new();
    let mut ids = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for n in range {
        let opts = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
        ids.push(
            outbox.enqueue_with(&mut tx, &Work { key: format!("k{}", n % 5), n }, opts).await.unwrap().to_string(),
        );
    }
    tx.commit().await.unwrap();
    ids
}

async fn pending(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_lose_nothing_and_duplicate_nothing() {
    let mock = MockCluster::new(3).unwrap();
    let topic = unique("mock-produce-errors");
    mock.create_topic(&topic, 4, 3).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    let mut ids = enqueue(&pool, &topic, 0..300).await;

    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RD_KAFKA_RESP_ERR__TRANSPORT,
    ];
    mock.request_errors(RDKafkaApiKey::Produce, &errors.repeat(4));

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(50).build().unwrap().spawn();
    ids.extend(enqueue(&pool, &topic, 300..600).await);
    assert!(eventually(Duration::from_secs(60), || async { pending(&pool).await == 0 }).await, "relay caught up");
    relay.shutdown().await.expect("graceful shutdown");

    let msgs = read_topic(&kafka, &topic, ids.len(), Duration::from_secs(30), Duration::from_secs(2)).await;
    let got = count_by_header(&msgs, headers::MESSAGE_ID);
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want, "every row published");
    assert!(got.values().all(|&c| c == 1), "idempotent producer retried without duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_during_relay_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("mock-outage");
    mock.create_topic(&topic, 2, 1).unwrap();
    // Short delivery timeout so that sends fail during the outage and the relay's own
    // retry (rows stay pending, attempts + 1) is exercised, not only librdkafka's.
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers())).set("message.timeout.ms", "1500");
    let (pool, _schema) = isolated_pool().await;
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone())
        .batch_size(100)
        .poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
        .spawn();
    let mut ids = enqueue(&pool, &topic, 0..200).await;
    assert!(eventually(Duration::from_secs(30), || async { pending(&pool).await == 0 }).await);

    mock.broker_down(1).unwrap();
    ids.extend(enqueue(&pool, &topic, 200..400).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(pending(&pool).await > 0, "nothing can be delivered while the broker is down");
    let failed_during_outage = relay.stats().failed();
    mock.broker_up(1).unwrap();

    assert!(
        eventually(Duration::from_secs(60), || async { pending(&pool).await == 0 }).await,
        "relay caught up after the outage"
    );
    relay.shutdown().await.expect("graceful shutdown");
    assert!(failed_during_outage > 0, "the outage made sends fail");

    let msgs = read_topic(&kafka, &topic, ids.len(), Duration::from_secs(30), Duration::from_secs(2)).await;
    let got: HashSet<String> = count_by_header(&msgs, headers::MESSAGE_ID).into_keys().collect();
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(got, want, "every row published at least once");
    let attempts: i64 = count(&pool, "SELECT max(attempts)::bigint FROM rk_outbox").await;
    assert!(attempts >= 2, "rows were retried by the relay");
    assert_eq!(count(&pool, "SELECT count(parked_at) FROM rk_outbox").await, 0, "an outage never parks a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_can_never_take_is_parked_and_the_others_flow() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("mock-too-large");
    mock.create_topic(&topic, 1, 1).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers())).set("message.max.bytes", "2000");
    let (pool, _schema) = isolated_pool().await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    let to = || EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
    outbox.enqueue_with(&mut tx, &Work { key: "a".into(), n: 1 }, to()).await.unwrap();
    outbox.enqueue_with(&mut tx, &Work { key: "x".repeat(5000), n: 2 }, to()).await.unwrap();
    outbox.enqueue_with(&mut tx, &Work { key: "b".into(), n: 3 }, to()).await.unwrap();
    tx.commit().await.unwrap();

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).max_send_attempts(2).build().unwrap();
    assert_eq!(
        relay.relay_once().await.unwrap(),
        reliable_kafka::RelayBatch { published: 2, failed: 1, lock_busy: false }
    );
    assert_eq!(relay.relay_once().await.unwrap().failed, 1);
    assert_eq!(relay.relay_once().await.unwrap(), Default::default(), "parked after 2 attempts: nothing left to try");
    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM rk_outbox WHERE parked_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    assert!(error.contains("too large"), "{error}");
    let msgs = read_topic(&kafka, &topic, 2, Duration::from_secs(20), Duration::from_secs(1)).await;
    assert_eq!(msgs.len(), 2, "the rows around it were published");
}

/// The relay places keys as Java's Kafka client does (`partitioner=murmur2_random`, the
/// producer preset): the partition of each key is `(murmur2(key) & 0x7fffffff) % n`. The
/// expected partitions were computed with kafka-python's Java-compatible `murmur2`
/// (`kafka.partitioner.default`), an implementation independent of librdkafka's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_puts_each_key_on_the_partition_the_java_client_would() {
    // (key, partition of 3, partition of 8)
    let expected = [
        ("7", 0, 3),
        ("order-1", 1, 6),
        ("payment-42", 2, 5),
        ("user:1001", 2, 1),
        ("k", 2, 0),
        ("concert-2026-11-26", 2, 1),
        ("\u{fc}ber", 0, 3),
    ];
    let mock = MockCluster::new(1).unwrap();
    let (three, eight) = (unique("murmur2-3"), unique("murmur2-8"));
    mock.create_topic(&three, 3, 1).unwrap();
    mock.create_topic(&eight, 8, 1).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for (n, (key, _, _)) in expected.iter().enumerate() {
        for topic in [&three, &eight] {
            let opts = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
            outbox.enqueue_with(&mut tx, &Work { key: (*key).to_owned(), n: n as u32 }, opts).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 2 * expected.len());
    for (topic, column) in [(&three, 1), (&eight, 2)] {
        let msgs = read_topic(&kafka, topic, expected.len(), Duration::from_secs(30), Duration::from_secs(1)).await;
        assert_eq!(msgs.len(), expected.len(), "{topic}");
        for m in &msgs {
            let key = std::str::from_utf8(rdkafka::Message::key(m).unwrap()).unwrap();
            let (_, p3, p8) = expected.iter().find(|(k, _, _)| *k == key).unwrap();
            let want = if column == 1 { *p3 } else { *p8 };
            assert_eq!(rdkafka::Message::partition(m), want, "key {key:?} on {topic}");
        }
    }
}

/// Fails every record permanently after telling the test it holds one, and counts the
/// records it sees.
struct Refuses {
    topic: String,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    hold: Duration,
}

impl reliable_kafka::EventHandler for Refuses {
    type Event = Work;
    fn options(&self) -> reliable_kafka::HandlerOptions {
        reliable_kafka::HandlerOptions::new().topic(self.topic.clone())
    }
    fn handle<'a>(
        &'a self,
        _: Work,
        _: &'a mut reliable_kafka::HandlerContext,
    ) -> futures::future::BoxFuture<'a, Result<(), reliable_kafka::HandlerError>> {
        Box::pin(async move {
            let _ = self.entered.send(());
            tokio::time::sleep(self.hold).await;
            Err(reliable_kafka::HandlerError::permanent("refused"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_dead_letter_publish_to_a_broker_that_is_down() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("mock-dlq-outage");
    mock.create_topic(&topic, 1, 1).unwrap();
    mock.create_topic(&format!("{topic}.DLQ"), 1, 1).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    produce_work(&kafka, &topic, uuid::Uuid::now_v7(), &Work { key: "k".into(), n: 1 }).await;
    let group = unique("dlq-outage");
    let (entered, mut held) = tokio::sync::mpsc::unbounded_channel();
    let handler = Refuses { topic: topic.clone(), entered, hold: Duration::from_millis(500) };
    let c = reliable_kafka::ListenerContainer::builder(kafka.clone(), pool.clone())
        .group_id(group.clone())
        .handler(handler)
        .build()
        .unwrap()
        .spawn();
    // The broker goes down while the handler holds the record; its dead letter then
    // waits for an acknowledgement that librdkafka gives up on after 300 s.
    tokio::time::timeout(Duration::from_secs(60), held.recv()).await.expect("record handled");
    mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(40), c.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown waited for the dead-letter acknowledgement");
    println!("stopped {:?} after shutdown", started.elapsed());
    mock.broker_up(1).unwrap();

    // Its offset was not committed: the group's next member gets the record again.
    let recorder = Recorder::new(&topic, &group, Mode::Succeed, 1);
    let next = reliable_kafka::ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(recorder)
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(60), || async { count(&pool, "SELECT count(*) FROM effects").await == 1 }).await,
        "the record was redelivered to the next member"
    );
    next.shutdown().await.unwrap();
}

/// The embedded cluster gives each partition the spec's replicas (the reference app's
/// default: 3 brokers, replication 3), refuses more replicas than brokers, and
/// `broker_count` reports its brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_keeps_a_specs_replicas_and_refuses_more_than_its_brokers() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let cluster = reliable_kafka::EmbeddedKafka::start(3).unwrap();
    let topic = unique("replicated");
    cluster
        .create_topics(&[reliable_kafka::TopicSpec::new(&topic, 3)
            .replication_factor(3)
            .config("min.insync.replicas", "2")])
        .unwrap();
    assert!(cluster.create_topics(&[(unique("over").as_str(), 1, 4)]).is_err(), "4 replicas on 3 brokers");
    assert_eq!(cluster.config().broker_count(Duration::from_secs(10)).await.unwrap(), 3);

    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
    let replicas: Vec<usize> = md.topics()[0].partitions().iter().map(|p| p.replicas().len()).collect();
    assert_eq!(replicas, vec![3, 3, 3]);
}

/// A container whose broker stops answering (every request now takes 2 minutes) stops
/// on shutdown: librdkafka's close, which waits for the group coordinator, is bounded
/// by `CONSUMER_CLOSE_TIMEOUT` once the offsets are committed (the chaos harness met a
/// worker that never stopped after a broker restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_broker_stops_answering_stops_on_shutdown() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("mock-silent-broker");
    mock.create_topic(&topic, 3, 1).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let recorder = Recorder::new(&topic, &unique("group"), Mode::Succeed, 1);
    let c = reliable_kafka::ListenerContainer::builder(kafka, pool).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().assigned_partitions() == 3 }).await, "joined");
    mock.broker_round_trip_time(1, Duration::from_secs(120)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(40), c.shutdown()).await;
    println!("stopped after {:?}", started.elapsed());
    assert!(matches!(stopped, Ok(Ok(()))), "shutdown returned and succeeded: {stopped:?}");
}

/// The final offset commit of a stopping container is bounded too: librdkafka's
/// synchronous commit has no timeout, and with the coordinator answering after 2
/// minutes it held the shutdown that long. Past `FINAL_COMMIT_TIMEOUT` the container
/// stops without it; the record comes again to the group's next member, which the
/// dedup row turns into no second effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_commit_the_coordinator_never_answers_does_not_hold_the_shutdown() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("mock-final-commit");
    mock.create_topic(&topic, 1, 1).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    produce_work(&kafka, &topic, uuid::Uuid::now_v7(), &Work { key: "k".into(), n: 1 }).await;
    let group = unique("final-commit");
    // The offset is stored after the record, and committed only at shutdown.
    let c = reliable_kafka::ListenerContainer::builder(kafka.clone(), pool.clone())
        .commit_interval(Duration::from_secs(3600))
        .handler(Recorder::new(&topic, &group, Mode::Succeed, 1))
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(60), || async { count(&pool, "SELECT count(*) FROM effects").await == 1 }).await,
        "the record was handled"
    );
    mock.broker_round_trip_time(1, Duration::from_secs(120)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), c.shutdown()).await;
    println!("stopped after {:?}", started.elapsed());
    assert!(matches!(stopped, Ok(Ok(()))), "shutdown returned and succeeded: {stopped:?}");
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();

    // The next member gets the record again (or the late commit landed): one effect.
    let next = reliable_kafka::ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(Recorder::new(&topic, &group, Mode::Succeed, 1))
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(30), || async { next.stats().assigned_partitions() == 1 }).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    next.shutdown().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1, "no second effect");
}

/// For each partition of `msgs`: whether every row's first copy comes after no higher
/// number of its source (what consumers in watermark mode rely on), and the copies.
fn first_copies_in_number_order(msgs: &[rdkafka::message::OwnedMessage]) -> Result<usize, String> {
    use rdkafka::message::Message;
    let mut highest: std::collections::HashMap<(i32, String), i64> = Default::default();
    let mut seen: HashSet<String> = HashSet::new();
    for m in msgs {
        let id = header(m, headers::MESSAGE_ID).expect("message id");
        let seq = header(m, headers::RELAY_SEQ).expect("numbered");
        let (source, n) = seq.rsplit_once(':').unwrap();
        let n: i64 = n.parse().unwrap();
        let top = highest.entry((m.partition(), source.to_owned())).or_insert(0);
        if seen.insert(id.clone()) && n <= *top {
            return Err(format!(
                "partition {} offset {}: first copy of {id} numbered {n} after {top}",
                m.partition(),
                m.offset()
            ));
        }
        *top = (*top).max(n);
    }
    Ok(msgs.len() - seen.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbering_relay_through_produce_errors_keeps_first_copies_in_number_order() {
    let mock = MockCluster::new(3).unwrap();
    let topic = unique("mock-numbered");
    mock.create_topic(&topic, 4, 3).unwrap();
    let kafka = test_settings(KafkaConfig::new(mock.bootstrap_servers()));
    let (pool, _schema) = isolated_pool().await;
    let mut ids = enqueue(&pool, &topic, 0..300).await;
    use RDKafkaRespErr::*;
    // Retriable errors, and errors librdkafka's idempotent producer cannot retry
    // without a gap: with the gapless guarantee they stop the producer (fatal), and the
    // relay sends the failed rows again with their numbers from a new one.
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR__TRANSPORT,
        RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
        RD_KAFKA_RESP_ERR_INVALID_RECORD,
    ];
    mock.request_errors(RDKafkaApiKey::Produce, &errors.repeat(3));
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone())
        .batch_size(50)
        .poll_interval(Duration::from_millis(100))
        .sequence_numbers(true)
        .build()
        .unwrap()
        .spawn();
    ids.extend(enqueue(&pool, &topic, 300..600).await);
    assert!(eventually(Duration::from_secs(90), || async { pending(&pool).await == 0 }).await, "relay caught up");
    let renewals = relay.stats().producer_renewals();
    relay.shutdown().await.expect("graceful shutdown");
    assert!(renewals > 0, "the errors stopped a producer at least once");
    let msgs = read_topic(&kafka, &topic, ids.len(), Duration::from_secs(30), Duration::from_secs(2)).await;
    let got = count_by_header(&msgs, headers::MESSAGE_ID);
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want, "every row published");
    let copies = first_copies_in_number_order(&msgs).unwrap();
    eprintln!("{} records, {copies} second copies, {renewals} producers renewed", msgs.len());
}
