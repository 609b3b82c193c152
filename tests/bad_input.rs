//! A corpus of malformed records published straight to a topic, interleaved with valid
//! ones: each malformed record is dead-lettered at once with its reason and raw bytes,
//! never retried, never stalling the partition; every valid record around it is
//! processed once. Real PostgreSQL and the Kafka-protocol broker (`KAFKA_BROKERS`).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use reliable_kafka::{headers as h, DeadLetterInfo, DeadLetterReason, ListenerContainer};
use reliable_kafka_tests::*;
use uuid::Uuid;

/// A record with the envelope headers given (`None` leaves a header out).
fn record(
    key: &[u8],
    payload: Option<&[u8]>,
    id: Option<&[u8]>,
    event: Option<&[u8]>,
    version: Option<&[u8]>,
) -> RawRecord {
    let mut headers = Vec::new();
    for (name, value) in [(h::MESSAGE_ID, id), (h::EVENT_TYPE, event), (h::SCHEMA_VERSION, version)] {
        if let Some(v) = value {
            headers.push((name.to_owned(), Some(v.to_vec())));
        }
    }
    RawRecord { key: Some(key.to_vec()), payload: payload.map(<[u8]>::to_vec), headers }
}

fn new_id() -> Vec<u8> {
    Uuid::now_v7().to_string().into_bytes()
}

/// The corpus: each malformed record with the reason it must be dead-lettered for.
fn corpus() -> Vec<(&'static str, RawRecord, DeadLetterReason)> {
    use DeadLetterReason::*;
    let w: &[u8] = b"Work";
    let good: &[u8] = br#"{"key":"k","n":1}"#;
    // 10,000 levels: the parser must fail cleanly, not overflow its stack. (The same
    // nesting inside a field Work does not have is skipped, and the record is valid.)
    let deep = format!(r#"{{"key":{}{},"n":1}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let mut c: Vec<(&'static str, RawRecord, DeadLetterReason)> = Vec::new();
    let mut payload = |name: &'static str, p: Vec<u8>| {
        c.push((name, record(b"k", Some(&p), Some(&new_id()), Some(w), None), Deserialization))
    };
    // Invalid JSON and wrong shapes.
    payload("truncated object", b"{".to_vec());
    payload("not JSON", b"not json".to_vec());
    payload("truncated array", b"[1,2".to_vec());
    payload("empty payload", Vec::new());
    payload("JSON null", b"null".to_vec());
    payload("JSON true", b"true".to_vec());
    payload("JSON number", b"123".to_vec());
    payload("JSON string", br#""work""#.to_vec());
    payload("JSON array", b"[]".to_vec());
    payload("empty object", b"{}".to_vec());
    payload("non-UTF-8 bytes", vec![0xff, 0xfe, 0xfd]);
    payload("UTF-16 BOM", vec![0xfe, 0xff, 0x00, 0x7b]);
    payload("NUL bytes", vec![0, 0, 0]);
    payload("trailing garbage", br#"{"key":"k","n":1} trailing"#.to_vec());
    payload("two documents", br#"{"key":"k","n":1}{"key":"k","n":2}"#.to_vec());
    payload("n as string", br#"{"key":"k","n":"two"}"#.to_vec());
    payload("n negative", br#"{"key":"k","n":-1}"#.to_vec());
    payload("n fractional", br#"{"key":"k","n":1.5}"#.to_vec());
    payload("n above u32", br#"{"key":"k","n":4294967296}"#.to_vec());
    payload("n huge", br#"{"key":"k","n":1e400}"#.to_vec());
    payload("n 40 digits", br#"{"key":"k","n":1234567890123456789012345678901234567890}"#.to_vec());
    payload("n null", br#"{"key":"k","n":null}"#.to_vec());
    payload("n missing", br#"{"key":"k"}"#.to_vec());
    payload("key missing", br#"{"n":1}"#.to_vec());
    payload("key number", br#"{"key":7,"n":1}"#.to_vec());
    payload("key object", br#"{"key":{"a":1},"n":1}"#.to_vec());
    payload("key null", br#"{"key":null,"n":1}"#.to_vec());
    payload("deeply nested", deep.into_bytes());
    payload("invalid escape", br#"{"key":"\q","n":1}"#.to_vec());
    payload("lone surrogate", br#"{"key":"\ud800","n":1}"#.to_vec());
    payload("single quotes", b"{'key':'k','n':1}".to_vec());
    payload("comment", br#"{"key":"k","n":1 /* c */}"#.to_vec());
    payload("NaN", br#"{"key":"k","n":NaN}"#.to_vec());
    c.push(("null payload", record(b"k", None, Some(&new_id()), Some(w), None), Deserialization));
    c.push((
        "non-UTF-8 key and bad payload",
        record(&[0xff, 0x00, 0xfe], Some(b"{"), Some(&new_id()), Some(w), None),
        Deserialization,
    ));
    // Envelope headers.
    c.push(("no message id", record(b"k", Some(good), None, Some(w), None), InvalidHeaders));
    c.push(("empty message id", record(b"k", Some(good), Some(b""), Some(w), None), InvalidHeaders));
    c.push(("message id not a UUID", record(b"k", Some(good), Some(b"order-7"), Some(w), None), InvalidHeaders));
    c.push(("message id non-UTF-8", record(b"k", Some(good), Some(&[0xff, 0xfe]), Some(w), None), InvalidHeaders));
    c.push(("message id with NUL", record(b"k", Some(good), Some(b"\0\0\0\0"), Some(w), None), InvalidHeaders));
    c.push(("no event type", record(b"k", Some(good), Some(&new_id()), None, None), InvalidHeaders));
    c.push((
        "event type non-UTF-8",
        record(b"k", Some(good), Some(&new_id()), Some(&[0xc3, 0x28]), None),
        InvalidHeaders,
    ));
    c.push((
        "schema version not a number",
        record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"one")),
        InvalidHeaders,
    ));
    c.push((
        "schema version negative",
        record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"-1")),
        InvalidHeaders,
    ));
    c.push((
        "schema version too large",
        record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"99999999999")),
        InvalidHeaders,
    ));
    c.push(("schema version empty", record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"")), InvalidHeaders));
    let mut null_id = record(b"k", Some(good), None, Some(w), None);
    null_id.headers.push((h::MESSAGE_ID.to_owned(), None));
    c.push(("null message id header", null_id, InvalidHeaders));
    // Unknown types and versions.
    c.push(("unknown event type", record(b"k", Some(good), Some(&new_id()), Some(b"Other"), None), UnknownEventType));
    c.push(("empty event type", record(b"k", Some(good), Some(&new_id()), Some(b""), None), UnknownEventType));
    c.push((
        "event type in other case",
        record(b"k", Some(good), Some(&new_id()), Some(b"work"), None),
        UnknownEventType,
    ));
    c.push((
        "newer schema version",
        record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"2")),
        UnsupportedSchemaVersion,
    ));
    c.push((
        "far newer schema version",
        record(b"k", Some(good), Some(&new_id()), Some(w), Some(b"4294967295")),
        UnsupportedSchemaVersion,
    ));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_record_is_dead_lettered_with_its_reason_and_the_valid_ones_are_processed() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("bad-input");
    create_topics(&kafka, &topic, 1).await;
    let corpus = corpus();
    assert!(corpus.len() >= 50, "{} records", corpus.len());
    // Each malformed record follows a valid one, and a valid one ends the partition.
    let mut records = Vec::new();
    for (i, (_, bad, _)) in corpus.iter().enumerate() {
        let valid = serde_json::to_vec(&Work { key: "k".into(), n: i as u32 }).unwrap();
        records.push(record(b"k", Some(&valid), Some(&new_id()), Some(b"Work"), Some(b"1")));
        records.push(bad.clone());
    }
    let last = serde_json::to_vec(&Work { key: "k".into(), n: 9999 }).unwrap();
    records.push(record(b"k", Some(&last), Some(&new_id()), Some(b"Work"), None));
    produce_raw_many(&kafka, &topic, &records).await;

    let group = unique("group");
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .max_batch(20)
        .handler(Recorder::new(&topic, &group, Mode::Succeed, 3))
        .build()
        .unwrap()
        .spawn();
    let valid = corpus.len() as u64 + 1;
    assert!(
        eventually(Duration::from_secs(60), || async {
            c.stats().processed() == valid && c.stats().dead_lettered() == corpus.len() as u64
        })
        .await,
        "{:?}",
        c.stats()
    );
    let retries = c.stats().retries();
    c.shutdown().await.unwrap();
    assert_eq!(retries, 0, "malformed records are never retried");
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, valid as i64, "every valid record, once");

    let dlq =
        read_topic(&kafka, &format!("{topic}.DLQ"), corpus.len(), Duration::from_secs(30), Duration::from_secs(1))
            .await;
    assert_eq!(dlq.len(), corpus.len());
    // In partition order, the dead letters are the corpus, each with its reason, an
    // error message and the raw bytes.
    let mut by_reason: HashMap<DeadLetterReason, usize> = HashMap::new();
    for ((name, bad, reason), m) in corpus.iter().zip(&dlq) {
        let info = DeadLetterInfo::from_headers(m.headers().expect("headers")).expect("dead-letter headers");
        assert_eq!(info.reason, Some(*reason), "{name}: {}", info.error_message);
        assert!(!info.error_message.is_empty(), "{name}");
        assert_eq!(m.payload(), bad.payload.as_deref(), "{name}: raw payload kept");
        assert_eq!(m.key(), bad.key.as_deref(), "{name}: raw key kept");
        assert_eq!(info.original_topic, topic);
        *by_reason.entry(*reason).or_default() += 1;
    }
    println!("dead-lettered by reason: {by_reason:?}");
}

/// A record larger than the dead-letter producer's `message.max.bytes` (1 MB by
/// default), published by a client configured for larger records: it is dead-lettered
/// without its payload (the size in `rk-dlt-payload-omitted`) instead of stalling the
/// partition on a dead-letter publish that can never succeed, and the re-driver parks
/// it rather than re-drive an empty record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_dead_lettered_without_its_payload_and_the_partition_moves_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("oversized");
    create_topics(&kafka, &topic, 1).await;
    let big = vec![b'x'; 1_500_000];
    let valid = serde_json::to_vec(&Work { key: "k".into(), n: 1 }).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for payload in [&big, &valid] {
        let id = new_id();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: h::MESSAGE_ID, value: Some(&id) })
            .insert(rdkafka::message::Header { key: h::EVENT_TYPE, value: Some("Work") });
        producer
            .send(FutureRecord::to(&topic).key("k").payload(payload).headers(headers), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let group = unique("group");
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(Recorder::new(&topic, &group, Mode::Succeed, 3))
        .build()
        .unwrap()
        .spawn();
    let done =
        eventually(Duration::from_secs(60), || async { c.stats().processed() == 1 && c.stats().dead_lettered() == 1 })
            .await;
    let stats = format!("{:?}", c.stats());
    c.shutdown().await.unwrap();
    assert!(done, "{stats}");
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1, "the valid record after it, once");
    let dlq = read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(dlq.len(), 1);
    let m = &dlq[0];
    let info = DeadLetterInfo::from_headers(m.headers().unwrap()).unwrap();
    assert_eq!(info.reason, Some(DeadLetterReason::Deserialization), "{}", info.error_message);
    assert_eq!(m.payload(), None, "payload left out");
    let omitted = m.headers().unwrap().iter().find(|x| x.key == h::DLT_PAYLOAD_OMITTED).and_then(|x| x.value);
    assert_eq!(omitted, Some(&b"1500000"[..]), "original size recorded");

    let redriver = reliable_kafka::DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(format!("{topic}.DLQ"))
        .group_id(unique("redrive"))
        .build()
        .unwrap();
    let r = redriver.redrive_once().await.unwrap();
    assert_eq!((r.redriven, r.parked), (0, 1), "parked, not re-driven empty");
}
