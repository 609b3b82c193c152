//! Redis as a handler's deduplication store (`RedisDedup`, feature `redis`), against
//! real Redis and the broker: each record's Redis writes are applied once however often
//! it is delivered, with no database at all; a failed attempt writes nothing; a
//! watched key that changes before `EXEC` makes the attempt run again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reliable_kafka::{
    EventHandler, FixedBackOff, HandlerContext, HandlerError, HandlerOptions, ListenerContainer, RedisDedup,
};
use reliable_kafka_tests::*;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A pool that can never connect: a handler deduplicated in Redis must not need it.
fn no_database() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap()
}

/// What the counting handler does on each call.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Queues `INCR <prefix>:<n>` and succeeds.
    Count,
    /// Queues the `INCR`, then fails transiently on the first call of each record.
    FailFirstAfterWriting,
    /// Watches `<prefix>:guard`, and on its first call changes it from another
    /// connection before returning: `EXEC` must abort and the attempt run again.
    RaceOnFirstCall,
}

struct Counter {
    topic: String,
    group: String,
    prefix: String,
    dedup: RedisDedup,
    behaviour: Behaviour,
    calls: Arc<AtomicU32>,
}

impl EventHandler<sqlx::Postgres> for Counter {
    type Event = Work;

    fn options(&self) -> HandlerOptions {
        HandlerOptions::new()
            .topic(self.topic.clone())
            .group(self.group.clone())
            .backoff(FixedBackOff::new(Duration::from_millis(50), 5))
            .redis_dedup(self.dedup.clone())
    }

    fn handle<'a>(
        &'a self,
        event: Work,
        ctx: &'a mut HandlerContext<sqlx::Postgres>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let first_attempt = ctx.attempt() == 1;
            let tx = ctx.redis();
            if let Behaviour::RaceOnFirstCall = self.behaviour {
                let guard = format!("{}:guard", self.prefix);
                tx.watch(&[&guard]).await.map_err(HandlerError::transient)?;
                if call == 0 {
                    let _: () = redis::cmd("INCR").arg(&guard).query_async(&mut redis().await).await.unwrap();
                }
            }
            tx.pipeline().incr(format!("{}:{}", self.prefix, event.n), 1).ignore();
            if let (Behaviour::FailFirstAfterWriting, true) = (self.behaviour, first_attempt) {
                return Err(HandlerError::transient(std::io::Error::other("downstream refused")));
            }
            Ok(())
        })
    }
}

struct Run {
    prefix: String,
    group: String,
    dedup: RedisDedup,
    calls: Arc<AtomicU32>,
    stats: Arc<reliable_kafka::ContainerStats>,
}

/// Produces `items` (ids may repeat) to a fresh topic and runs a [`Counter`] until
/// `expect_done` records are done (processed or skipped as duplicates).
async fn run(items: &[(Uuid, Work)], behaviour: Behaviour, expect_done: u64) -> Run {
    let kafka = kafka();
    let topic = unique("redis-dedup");
    create_topics(&kafka, &topic, 1).await;
    produce_works(&kafka, &topic, items).await;
    let prefix = unique("rk-test-effects");
    let group = unique("redis-dedup-group");
    let dedup = RedisDedup::new(redis::Client::open(redis_url()).unwrap()).key_prefix(unique("rk-test-processed"));
    let calls = Arc::new(AtomicU32::new(0));
    let handler = Counter {
        topic: topic.clone(),
        group: group.clone(),
        prefix: prefix.clone(),
        dedup: dedup.clone(),
        behaviour,
        calls: calls.clone(),
    };
    let c = ListenerContainer::builder(kafka.clone(), no_database()).group_id(&group).handler(handler).build().unwrap();
    let stats = c.stats();
    let c = c.spawn();
    let done =
        eventually(Duration::from_secs(60), || async { stats.processed() + stats.duplicates() >= expect_done }).await;
    c.shutdown().await.unwrap();
    assert!(done, "processed {} duplicates {} of {expect_done}", stats.processed(), stats.duplicates());
    Run { prefix, group, dedup, calls, stats }
}

async fn counters(prefix: &str, n: u32) -> Vec<Option<i64>> {
    let mut conn = redis().await;
    let mut out = Vec::new();
    for i in 0..n {
        out.push(redis::cmd("GET").arg(format!("{prefix}:{i}")).query_async(&mut conn).await.unwrap());
    }
    out
}

fn works(n: u32) -> Vec<(Uuid, Work)> {
    (0..n).map(|i| (Uuid::now_v7(), Work { key: format!("k{i}"), n: i })).collect()
}

/// Five records, each delivered twice (the second copy with the same message id):
/// each counter is 1, the copies are counted as duplicates, each message id is
/// remembered with the store's TTL, and the container never had a database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_is_applied_once_in_redis_without_a_database() {
    let once = works(5);
    let twice: Vec<_> = once.iter().chain(once.iter()).cloned().collect();
    let r = run(&twice, Behaviour::Count, 10).await;

    assert_eq!(counters(&r.prefix, 5).await, vec![Some(1); 5], "each record's write applied once");
    assert_eq!((r.stats.processed(), r.stats.duplicates()), (5, 5));
    assert_eq!(r.calls.load(Ordering::SeqCst), 5, "the handler ran once per message id");
    let mut conn = redis().await;
    for (id, _) in &once {
        let ttl_ms: i64 = redis::cmd("PTTL").arg(r.dedup.key(&r.group, *id)).query_async(&mut conn).await.unwrap();
        let default_ms = reliable_kafka::REDIS_DEDUP_DEFAULT_TTL.as_millis() as i64;
        assert!(ttl_ms > default_ms - 60_000 && ttl_ms <= default_ms, "message id kept with the TTL: {ttl_ms} ms");
    }
}

/// A handler that queued its write and then failed wrote nothing: after its retry
/// succeeds, each counter is 1, not 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_writes_nothing_and_its_retry_writes_once() {
    let r = run(&works(3), Behaviour::FailFirstAfterWriting, 3).await;

    assert_eq!(counters(&r.prefix, 3).await, vec![Some(1); 3]);
    assert_eq!(r.calls.load(Ordering::SeqCst), 6, "two attempts per record");
    assert_eq!(r.stats.processed(), 3);
}

/// A key the handler watched changes before `EXEC`: nothing of that attempt is
/// written, the attempt runs again (not counted as a failed attempt), and the record's
/// write is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_key_changed_before_exec_runs_the_attempt_again() {
    let r = run(&works(1), Behaviour::RaceOnFirstCall, 1).await;

    assert_eq!(counters(&r.prefix, 1).await, vec![Some(1)], "applied once");
    assert_eq!(r.calls.load(Ordering::SeqCst), 2, "the aborted attempt ran again");
    let guard: i64 =
        redis::cmd("GET").arg(format!("{}:guard", r.prefix)).query_async(&mut redis().await).await.unwrap();
    assert_eq!(guard, 1, "the concurrent change stands");
}

/// Key-blocking retry keeps its records in the database: `build()` refuses it for a
/// handler deduplicated in Redis and names the setting.
#[tokio::test]
async fn key_blocking_with_redis_dedup_is_refused_at_build_time() {
    struct Blocking(RedisDedup);
    impl EventHandler<sqlx::Postgres> for Blocking {
        type Event = Work;
        fn options(&self) -> HandlerOptions {
            HandlerOptions::new().topic("t").key_blocking(true).redis_dedup(self.0.clone())
        }
        fn handle<'a>(
            &'a self,
            _: Work,
            _: &'a mut HandlerContext<sqlx::Postgres>,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let dedup = RedisDedup::new(redis::Client::open(redis_url()).unwrap());
    let err =
        ListenerContainer::builder(kafka(), no_database()).group_id("g").handler(Blocking(dedup)).build().unwrap_err();
    let text = reliable_kafka::report(&err);
    assert!(text.contains("redis_dedup") && text.contains("key-blocking"), "{text}");
}

/// The reference application's Redis cleanup, deduplicated in Redis, called directly:
/// it queues the compare-and-deletes (the payment's own hold and token, not another
/// user's hold) and sends nothing before `EXEC`.
#[tokio::test]
async fn the_applications_redis_cleanup_queues_its_compare_and_deletes() {
    use concert::events::PaymentFailed;
    use concert::handlers::RedisCleanup;
    use concert::store::Store;
    let store = Store::connect(&redis_url(), Duration::from_secs(60), &unique("ns")).await.unwrap();
    let token = store.issue_token(7).await.unwrap();
    assert_eq!(store.hold_seat(1, 7).await.unwrap(), Some(true));
    assert_eq!(store.hold_seat(2, 8).await.unwrap(), Some(true));
    let cleanup = RedisCleanup::new(store.clone());
    assert!(cleanup.dedup.is_some(), "a store on Redis deduplicates in Redis");
    assert!(format!("{:?}", EventHandler::<sqlx::Postgres>::options(&cleanup)).contains("RedisDedup"));

    let mut queued = redis::pipe();
    for seat_id in [1, 2] {
        let event = PaymentFailed {
            payment_id: seat_id,
            reservation_id: seat_id,
            user_id: 7,
            seat_id,
            concert_date_id: 1,
            amount: 10,
            charged: false,
            queue_token: token.clone(),
            reason: "declined".into(),
        };
        let tx = reliable_kafka::RedisTx::new(redis().await);
        let info = reliable_kafka::RecordInfo::new("payment.failed", Uuid::now_v7(), "PaymentFailed");
        let mut ctx = HandlerContext::<sqlx::Postgres>::with_redis(tx, info);
        cleanup.handle(event, &mut ctx).await.unwrap();
        assert!(store.token_is_active(7, &token).await.unwrap(), "nothing sent before EXEC");
        for cmd in ctx.into_redis().into_pipeline().cmd_iter() {
            queued.add_command(cmd.clone()).ignore();
        }
    }
    let _: () = queued.atomic().query_async(&mut redis().await).await.unwrap();
    assert!(!store.token_is_active(7, &token).await.unwrap(), "the payment's token expired");
    assert_eq!(store.hold_seat(1, 9).await.unwrap(), Some(true), "seat 1's hold released");
    assert_eq!(store.hold_seat(2, 9).await.unwrap(), None, "another user's hold on seat 2 kept");
}
