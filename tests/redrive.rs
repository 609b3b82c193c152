//! Re-drive of dead-lettered records: bounded re-publishing, then parking. Real
//! PostgreSQL and broker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reliable_kafka::{headers, DeadLetterRedriver, ListenerContainer};
use reliable_kafka_tests::*;
use uuid::Uuid;

async fn parked(pool: &sqlx::PgPool) -> Vec<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT reason, redrive_count, message_id FROM rk_parked_messages ORDER BY parked_at")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_failing_is_redriven_max_times_then_parked() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("redrive-exhaust");
    let dlq = format!("{topic}.DLQ");
    create_topics(&kafka, &topic, 1).await;
    let group = unique("group");
    let id = Uuid::now_v7();
    produce_work(&kafka, &topic, id, &Work { key: "k".into(), n: 1 }).await;

    let recorder = Recorder::new(&topic, &group, Mode::AlwaysTransient, 2);
    let calls = recorder.calls.clone();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(&dlq)
        .group_id(unique("redrive"))
        .max_redrives(2)
        .build()
        .unwrap();

    for round in 1..=2u64 {
        assert!(
            eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == round }).await,
            "round {round}"
        );
        let r = redriver.redrive_once().await.unwrap();
        assert_eq!((r.redriven, r.parked), (1, 0), "round {round}");
    }
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 3 }).await);
    let r = redriver.redrive_once().await.unwrap();
    assert_eq!((r.redriven, r.parked), (0, 1), "third dead-lettering parks");
    assert_eq!(redriver.redrive_once().await.unwrap(), Default::default(), "nothing left");
    c.shutdown().await.unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 6, "2 attempts x (1 delivery + 2 re-drives)");
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 0);
    let rows = parked(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "re-driven 2 times (max 2)");
    assert_eq!(rows[0].1, 2);
    assert_eq!(rows[0].2, Some(id.to_string()), "parked with its message id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_record_that_now_succeeds_has_one_effect_and_poison_is_parked_at_once() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("redrive-heal");
    let dlq = format!("{topic}.DLQ");
    create_topics(&kafka, &topic, 1).await;
    let group = unique("group");
    produce_work(&kafka, &topic, Uuid::now_v7(), &Work { key: "k".into(), n: 1 }).await;
    produce_raw(
        &kafka,
        &topic,
        "k",
        b"garbage",
        &[(headers::MESSAGE_ID, Uuid::now_v7().to_string().as_bytes()), (headers::EVENT_TYPE, b"Work")],
    )
    .await;

    // The downstream is down for the first 2 calls (both attempts of the first delivery).
    let recorder = Recorder::new(&topic, &group, Mode::FailCalls(2), 2);
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(&dlq)
        .group_id(unique("redrive"))
        .interval(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() == 1 }).await,
        "re-driven record processed"
    );
    assert!(eventually(Duration::from_secs(10), || async { redriver.stats().parked() == 1 }).await);
    let redriven = redriver.stats().redriven();
    redriver.shutdown().await.expect("graceful shutdown");
    c.shutdown().await.unwrap();
    assert_eq!(redriven, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1);
    let rows = parked(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "dead-lettered as `deserialization`, which re-driving cannot fix");
    assert_eq!(rows[0].1, 0);
}

/// Seed 001's shared `DLQ-topic`: handlers of two topics (in two consumer groups)
/// dead-letter into one topic, each record names its original topic in
/// `kafka_dlt-original-topic`, and one re-driver sends each back to where it came
/// from, where it now succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_of_two_topics_share_one_dead_letter_topic_and_the_redriver_routes_each_back() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let (trace, coupon, shared) = (unique("trace"), unique("coupon"), unique("DLQ-topic"));
    for t in [&trace, &coupon, &shared] {
        create_topics(&kafka, t, 1).await;
    }
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    produce_work(&kafka, &trace, a, &Work { key: "k".into(), n: 1 }).await;
    produce_work(&kafka, &coupon, b, &Work { key: "k".into(), n: 2 }).await;

    // Each handler's only attempt of the first delivery fails; the re-driven one works.
    let to_shared = || reliable_kafka::HandlerOptions::new().dead_letter_topic(shared.clone());
    let trace_rec = Recorder::new(&trace, &unique("order-info"), Mode::FailCalls(1), 1);
    let coupon_rec = Recorder::new(&coupon, &unique("coupon-issue"), Mode::FailCalls(1), 1);
    let (trace_log, coupon_log) = (trace_rec.log.clone(), coupon_rec.log.clone());
    let c1 = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler_with(trace_rec, to_shared())
        .build()
        .unwrap()
        .spawn();
    let c2 = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler_with(coupon_rec, to_shared())
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(30), || async {
            c1.stats().dead_lettered() == 1 && c2.stats().dead_lettered() == 1
        })
        .await
    );
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(&shared)
        .group_id(unique("redrive"))
        .build()
        .unwrap();
    let r = redriver.redrive_once().await.unwrap();
    assert_eq!((r.redriven, r.parked), (2, 0), "both records re-driven from the one topic");
    assert!(
        eventually(Duration::from_secs(30), || async { c1.stats().processed() == 1 && c2.stats().processed() == 1 })
            .await
    );
    c1.shutdown().await.unwrap();
    c2.shutdown().await.unwrap();

    let seen = |log: &std::sync::Mutex<Vec<Call>>| {
        log.lock().unwrap().iter().map(|c| (c.message_id, c.topic.clone())).collect::<Vec<_>>()
    };
    assert_eq!(seen(&trace_log), vec![(a, trace.clone()), (a, trace.clone())], "back on trace only");
    assert_eq!(seen(&coupon_log), vec![(b, coupon.clone()), (b, coupon.clone())], "back on coupon only");
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 2, "one effect each");
}
