//! Route tables and identity sources against real PostgreSQL and the Kafka-protocol
//! broker (`KAFKA_BROKERS`, tansu in CI): the relay writing CloudEvents, one topic with
//! several event types, records of other producers, and the build-time checks.

use std::time::Duration;

use futures::future::BoxFuture;
use reliable_kafka::{
    headers, ConfigError, Error, Event, EventHandler, HandlerContext, HandlerError, HandlerOptions, HeaderFormat,
    IdentitySource, ListenerContainer, Outbox, OutboxRelay, UnknownEventType,
};
use reliable_kafka_tests::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "unused.by.tests", key = seat, name = "com.example.seat.held")]
struct SeatHeld {
    seat: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "unused.by.tests", key = seat, name = "com.example.seat.released")]
struct SeatReleased {
    seat: String,
}

/// Writes `(kind, seat, message id)` into `effects`, in the handler's transaction.
struct Effect<E> {
    topic: String,
    kind: &'static str,
    seat: fn(&E) -> &str,
}

impl<E: Event> EventHandler for Effect<E> {
    type Event = E;
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new().topic(self.topic.clone()).group("interop-test")
    }
    fn handle<'a>(&'a self, e: E, ctx: &'a mut HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = ctx.message_id();
            sqlx::query("INSERT INTO seat_effects (kind, seat, message_id) VALUES ($1, $2, $3)")
                .bind(self.kind)
                .bind((self.seat)(&e))
                .bind(id)
                .execute(ctx.tx())
                .await?;
            Ok(())
        })
    }
}

/// The effects table of [`Effect`] (no unique constraint: a second effect would show).
async fn seat_effects(pool: &sqlx::PgPool) {
    sqlx::query("CREATE TABLE seat_effects (kind text NOT NULL, seat text NOT NULL, message_id uuid NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

fn held(topic: &str) -> Effect<SeatHeld> {
    Effect { topic: topic.to_owned(), kind: "held", seat: |e| &e.seat }
}
fn released(topic: &str) -> Effect<SeatReleased> {
    Effect { topic: topic.to_owned(), kind: "released", seat: |e| &e.seat }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_from_the_relay_route_by_type_and_unknown_types_are_dead_lettered_with_the_reason() {
    let (pool, _schema) = isolated_pool().await;
    seat_effects(&pool).await;
    let kafka = kafka().set("fetch.wait.max.ms", "10");
    let topic = unique("seats");
    create_topics(&kafka, &topic, 2).await;
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone())
        .header_format(HeaderFormat::cloud_events("/concert/booking"))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
        .spawn();
    let to = || reliable_kafka::EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
    // Per seat: held, released, held again; one transaction each.
    let outbox = Outbox::new();
    for seat in ["A1", "A2", "B7"] {
        for released_too in [false, true, false] {
            let mut tx = pool.begin().await.unwrap();
            if released_too {
                outbox.enqueue_with(&mut tx, &SeatReleased { seat: seat.into() }, to()).await.unwrap();
            } else {
                outbox.enqueue_with(&mut tx, &SeatHeld { seat: seat.into() }, to()).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
    }
    // A CloudEvent of a type no handler takes, from another producer.
    produce_raw(
        &kafka,
        &topic,
        "A1",
        b"{}",
        &[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"refund-1"),
            ("ce_source", b"/billing"),
            ("ce_type", b"com.example.seat.refunded"),
        ],
    )
    .await;

    let container = ListenerContainer::builder(kafka.clone(), pool.clone())
        .identity(IdentitySource::cloud_events())
        .handler(held(&topic))
        .handler(released(&topic))
        .max_batch(10)
        .build()
        .unwrap()
        .spawn();
    let dead =
        read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(60), Duration::from_millis(500)).await;
    assert!(
        eventually(Duration::from_secs(60), || async { count(&pool, "SELECT count(*) FROM seat_effects").await == 9 })
            .await,
        "all nine events handled"
    );
    let stats = (container.stats().processed(), container.stats().dead_lettered());
    container.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    assert_eq!(stats, (9, 1));
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM seat_effects").await, 9, "each once");
    // Per seat, the handlers ran in the seat's partition order across both types.
    for seat in ["A1", "A2", "B7"] {
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM seat_effects WHERE seat = $1 ORDER BY ctid")
            .bind(seat)
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(kinds, ["held", "released", "held"], "seat {seat}");
    }
    // The message id is the row id the relay wrote as `ce_id`.
    let outbox_ids = count(&pool, "SELECT count(*) FROM rk_outbox o JOIN seat_effects e ON e.message_id = o.id").await;
    assert_eq!(outbox_ids, 9);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(header(d, headers::DLT_REASON).as_deref(), Some("unknown-event-type"));
    assert_eq!(header(d, "ce_id").as_deref(), Some("refund-1"), "the original headers are kept");
    let why = header(d, headers::DLT_EXCEPTION_MESSAGE).unwrap();
    assert!(
        why.contains("`com.example.seat.refunded`")
            && why.contains("`com.example.seat.held`, `com.example.seat.released`"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_event_types_are_committed_and_counted_and_debezium_records_are_deduplicated() {
    let (pool, _schema) = isolated_pool().await;
    seat_effects(&pool).await;
    let kafka = kafka().set("fetch.wait.max.ms", "10");
    let topic = unique("outbox.event.seat");
    create_topics(&kafka, &topic, 1).await;
    let id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::to_vec(&SeatHeld { seat: "C3".into() }).unwrap();
    // Debezium's router: the event id in `id`, the type in `eventType`. The same event
    // twice (a connector restart re-reads the WAL), then a type nobody here takes.
    for _ in 0..2 {
        produce_raw(&kafka, &topic, "C3", &payload, &[("id", id.as_bytes()), ("eventType", b"com.example.seat.held")])
            .await;
    }
    produce_raw(&kafka, &topic, "C3", b"{}", &[("id", b"17"), ("eventType", b"SeatAudited")]).await;
    let container = ListenerContainer::builder(kafka.clone(), pool.clone())
        .identity(IdentitySource::debezium())
        .unknown_event_types(UnknownEventType::Skip)
        .handler(held(&topic))
        .handler(released(&topic))
        .build()
        .unwrap()
        .spawn();
    let s = container.stats();
    assert!(
        eventually(Duration::from_secs(60), || async { s.processed() + s.duplicates() + s.skipped() == 3 }).await,
        "three records seen"
    );
    let stats = (s.processed(), s.duplicates(), s.skipped(), s.dead_lettered());
    container.shutdown().await.unwrap();
    assert_eq!(stats, (1, 1, 1, 0));
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT message_id FROM seat_effects").fetch_one(&pool).await.unwrap();
    assert_eq!(stored.to_string(), id, "a UUID event id is the message id itself");
}

#[tokio::test]
async fn build_rejects_route_tables_it_cannot_route() {
    let pool = sqlx::PgPool::connect_lazy(&database_url()).unwrap();
    let kafka = reliable_kafka::KafkaConfig::new("127.0.0.1:1");
    let config_error = |r: Result<ListenerContainer, Error>| match r.unwrap_err() {
        Error::Config(e) => e,
        other => panic!("not a configuration error: {other:?}"),
    };

    let two_for_one_type =
        ListenerContainer::builder(kafka.clone(), pool.clone()).handler(held("t")).handler(held("t"));
    assert_eq!(
        config_error(two_for_one_type.build()),
        ConfigError::DuplicateRoute { topic: "t".into(), event_type: "com.example.seat.held".into() }
    );
    // The same types on two topics are two route tables.
    assert!(ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(held("t"))
        .handler(held("u"))
        .build()
        .is_ok());

    let mixed = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(held("t"))
        .handler_with(released("t"), HandlerOptions::new().identity(IdentitySource::cloud_events()));
    let e = config_error(mixed.build());
    assert!(e.to_string().contains("`identity`") && e.to_string().contains("different identity sources"), "{e}");

    let untyped = ListenerContainer::builder(kafka.clone(), pool.clone())
        .identity(IdentitySource::topic_partition_offset())
        .handler(held("t"))
        .handler(released("t"));
    let e = config_error(untyped.build());
    assert!(e.to_string().contains("gives no event type"), "{e}");
    // One handler needs no event type.
    let single =
        ListenerContainer::builder(kafka, pool).identity(IdentitySource::topic_partition_offset()).handler(held("t"));
    assert!(single.build().is_ok());
    let relay = OutboxRelay::builder(
        reliable_kafka::KafkaConfig::new("127.0.0.1:1"),
        sqlx::PgPool::connect_lazy(&database_url()).unwrap(),
    )
    .header_format(HeaderFormat::cloud_events(""));
    assert!(
        matches!(relay.build(), Err(Error::Config(ConfigError::InvalidValue { key, .. })) if key == "header_format")
    );
}
