//! The scenario: many users reserve and pay with injected payment failures; then the
//! database and Redis are checked for the compensation invariants.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reliable_kafka::{KafkaConfig, ListenerContainer, OutboxRelay};
use sqlx::PgPool;

use crate::booking::{Booking, GatewayBehaviour, PaymentOutcome};
use crate::events::PAYMENT_FAILED_TOPIC;
use crate::handlers::{compensate_payment, RedisCleanup};
use crate::store::{hold_key, token_key, RedisStore};

/// Seats per concert date.
const SEATS_PER_DATE: usize = 100;
/// Price of every seat, in points.
const SEAT_PRICE: i64 = 50_000;
/// Balance each user starts with, in points.
const START_BALANCE: i64 = 100_000;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Users; each reserves one seat and pays once.
    pub users: usize,
    /// Share of payments that fail, in `[0, 1]`; half of the failures happen after the
    /// balance was charged (they need a refund).
    pub failure_rate: f64,
    /// Users in flight at once.
    pub concurrency: usize,
    /// Seed of the failure assignment.
    pub seed: u64,
    /// How long to wait for the consumers to finish.
    pub settle_timeout: Duration,
    /// Partitions of `payment.failed` and its dead-letter topic when they are created.
    pub partitions: i32,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            users: 1000,
            failure_rate: 0.3,
            concurrency: 32,
            seed: 42,
            settle_timeout: Duration::from_secs(300),
            partitions: 3,
        }
    }
}

/// The consistency report, every count from queries on PostgreSQL and Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Payments made in this run.
    pub payments: i64,
    /// Of which failed.
    pub failed: i64,
    /// Failed payments fully compensated in the database (payment and reservation
    /// FAILED, seat AVAILABLE, refund when charged).
    pub compensated_db: i64,
    /// Failed payments whose seat hold and queue token are gone from Redis.
    pub cleaned_redis: i64,
    /// Compensations missing: failed payments not compensated in the database or not
    /// cleaned in Redis, seat counts below the seats actually available, balances below
    /// their history, completed payments whose seat is not sold.
    pub lost: i64,
    /// Effects applied twice: seat counts above the seats actually available, refunds
    /// given twice, balances above their history.
    pub duplicated: i64,
    /// Users whose flow hit an unexpected error.
    pub errors: i64,
    /// Wall time of the run.
    pub wall: Duration,
}

impl Report {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.errors == 0
            && self.compensated_db == self.failed
            && self.cleaned_redis == self.failed
    }

    /// The report's last line.
    pub fn line(&self) -> String {
        format!(
            "consistency: {} payments={} failed={} compensated_db={} cleaned_redis={} lost={} duplicated={}",
            if self.is_ok() { "ok" } else { "FAILED" },
            self.payments,
            self.failed,
            self.compensated_db,
            self.cleaned_redis,
            self.lost,
            self.duplicated
        )
    }
}

/// Runs the scenario: creates a concert with enough seats and the users, starts the
/// outbox relay and both consumer groups, runs the users, waits until the consumers
/// are idle, and checks the invariants.
///
/// # Errors
/// When the services cannot be reached or set up.
pub async fn run(
    pool: PgPool,
    store: RedisStore,
    kafka: KafkaConfig,
    cfg: &ScenarioConfig,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    crate::migrate(&pool).await?;
    let dlq = format!(
        "{PAYMENT_FAILED_TOPIC}{}",
        reliable_kafka::DEFAULT_DEAD_LETTER_SUFFIX
    );
    kafka
        .ensure_topics(&[
            (PAYMENT_FAILED_TOPIC, cfg.partitions, 1),
            (&dlq, cfg.partitions, 1),
        ])
        .await?;

    let relay = OutboxRelay::builder(pool.clone(), kafka.clone())
        .build()?
        .spawn();
    let compensator = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(compensate_payment)
        .build()?
        .spawn();
    let cleanup = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(RedisCleanup {
            store: store.clone(),
        })
        .build()?
        .spawn();

    let (concert_id, seats, users) = seed_data(&pool, cfg.users).await?;
    tracing::info!(
        concert_id,
        users = users.len(),
        "data created; running users"
    );

    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let plans: Vec<(i64, i64, GatewayBehaviour)> = users
        .iter()
        .zip(&seats)
        .map(|(&u, &s)| {
            let behaviour = if rng.f64() < cfg.failure_rate {
                if rng.bool() {
                    GatewayBehaviour::DeclineBeforeCharge
                } else {
                    GatewayBehaviour::FailAfterCharge
                }
            } else {
                GatewayBehaviour::Approve
            };
            (u, s, behaviour)
        })
        .collect();

    let booking = Booking::new(pool.clone(), store.clone());
    let errors = futures::stream::iter(plans)
        .map(|(user, seat, behaviour)| {
            let booking = booking.clone();
            async move {
                let flow = async {
                    let token = booking.enter_queue(user).await?;
                    let reservation = booking.reserve(user, seat, token).await?;
                    booking.pay(&reservation, behaviour).await
                };
                match flow.await {
                    Ok(PaymentOutcome::Completed { .. } | PaymentOutcome::Failed { .. }) => 0,
                    Err(e) => {
                        tracing::error!(user, seat, error = %reliable_kafka::report(&e), "user flow failed");
                        1
                    }
                }
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .fold(0i64, |acc, e| async move { acc + e })
        .await;
    tracing::info!(elapsed = ?started.elapsed(), "users done; waiting for the consumers");

    let deadline = Instant::now() + cfg.settle_timeout;
    let mut report;
    loop {
        report = check(&pool, &store, concert_id, &users).await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL")
                .fetch_one(&pool)
                .await?;
        let settled = pending == 0
            && report.compensated_db == report.failed
            && report.cleaned_redis == report.failed;
        let idle = compensator.stats().idle_for() >= Duration::from_secs(1)
            && cleanup.stats().idle_for() >= Duration::from_secs(1);
        if (settled && idle) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tracing::info!(
        compensator_processed = compensator.stats().processed(),
        compensator_duplicates = compensator.stats().duplicates(),
        cleanup_processed = cleanup.stats().processed(),
        cleanup_duplicates = cleanup.stats().duplicates(),
        dead_lettered = compensator.stats().dead_lettered() + cleanup.stats().dead_lettered(),
        relay_published = relay.stats().published(),
        "consumers settled"
    );
    compensator.shutdown().await?;
    cleanup.shutdown().await?;
    relay.shutdown().await;
    report.errors = errors;
    report.wall = started.elapsed();
    Ok(report)
}

/// Creates a concert with `ceil(users / 100)` dates of 100 seats and `users` users.
/// Returns the concert id, one seat per user and the user ids.
async fn seed_data(pool: &PgPool, users: usize) -> anyhow::Result<(i64, Vec<i64>, Vec<i64>)> {
    let mut tx = pool.begin().await?;
    let concert_id: i64 =
        sqlx::query_scalar("INSERT INTO concert (title) VALUES ($1) RETURNING id")
            .bind(format!("scenario {}", uuid::Uuid::now_v7()))
            .fetch_one(&mut *tx)
            .await?;
    let dates = users.div_ceil(SEATS_PER_DATE).max(1);
    let mut seats = Vec::with_capacity(users);
    for d in 0..dates {
        let date_id: i64 = sqlx::query_scalar(
            "INSERT INTO concert_date (concert_id, starts_at, total_seat_count, available_seat_count) \
             VALUES ($1, now() + make_interval(days => $2), $3, $3) RETURNING id",
        )
        .bind(concert_id)
        .bind(d as i32 + 1)
        .bind(SEATS_PER_DATE as i32)
        .fetch_one(&mut *tx)
        .await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO seat (concert_date_id, number, price, status) \
             SELECT $1, n, $2, 'AVAILABLE' FROM generate_series(1, $3) AS n RETURNING id",
        )
        .bind(date_id)
        .bind(SEAT_PRICE)
        .bind(SEATS_PER_DATE as i32)
        .fetch_all(&mut *tx)
        .await?;
        seats.extend(ids);
    }
    seats.truncate(users);
    let user_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO app_user (name, balance) SELECT 'user-' || $1 || '-' || n, $2 FROM generate_series(1, $3) AS n RETURNING id",
    )
    .bind(concert_id)
    .bind(START_BALANCE)
    .bind(users as i32)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO point_history (user_id, kind, amount) SELECT id, 'TOPUP', balance FROM app_user WHERE id = ANY($1)")
        .bind(&user_ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((concert_id, seats, user_ids))
}

/// Computes the report from PostgreSQL and Redis.
async fn check(
    pool: &PgPool,
    store: &RedisStore,
    concert_id: i64,
    users: &[i64],
) -> anyhow::Result<Report> {
    let (payments, failed, compensated_db, unsold_completed): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE p.status = 'FAILED'),
                count(*) FILTER (WHERE p.status = 'FAILED' AND p.compensated_at IS NOT NULL
                                   AND r.status = 'FAILED' AND s.status = 'AVAILABLE'
                                   AND (NOT p.charged OR EXISTS (SELECT 1 FROM point_history h
                                                                 WHERE h.payment_id = p.id AND h.kind = 'REFUND'))),
                count(*) FILTER (WHERE p.status = 'COMPLETED' AND (r.status <> 'CONFIRMED' OR s.status <> 'SOLD'))
         FROM payment p
         JOIN reservation r ON r.id = p.reservation_id
         JOIN seat s ON s.id = r.seat_id
         JOIN concert_date d ON d.id = r.concert_date_id
         WHERE d.concert_id = $1",
    )
    .bind(concert_id)
    .fetch_one(pool)
    .await?;
    let (seats_over, seats_under): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(greatest(d.available_seat_count - a.n, 0)), 0)::bigint,
                coalesce(sum(greatest(a.n - d.available_seat_count, 0)), 0)::bigint
         FROM concert_date d
         CROSS JOIN LATERAL (SELECT count(*)::int AS n FROM seat s WHERE s.concert_date_id = d.id AND s.status = 'AVAILABLE') a
         WHERE d.concert_id = $1",
    )
    .bind(concert_id)
    .fetch_one(pool)
    .await?;
    let double_refunds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT payment_id FROM point_history
                               WHERE kind = 'REFUND' AND user_id = ANY($1)
                               GROUP BY payment_id HAVING count(*) > 1) x",
    )
    .bind(users)
    .fetch_one(pool)
    .await?;
    let (balance_over, balance_under): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE u.balance > h.total), count(*) FILTER (WHERE u.balance < h.total)
         FROM app_user u
         JOIN (SELECT user_id, sum(amount) AS total FROM point_history WHERE user_id = ANY($1) GROUP BY user_id) h
           ON h.user_id = u.id",
    )
    .bind(users)
    .fetch_one(pool)
    .await?;

    let failed_rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT r.seat_id, r.user_id FROM payment p JOIN reservation r ON r.id = p.reservation_id
         JOIN concert_date d ON d.id = r.concert_date_id WHERE d.concert_id = $1 AND p.status = 'FAILED'",
    )
    .bind(concert_id)
    .fetch_all(pool)
    .await?;
    let mut cleaned_redis = 0;
    for (seat, user) in &failed_rows {
        if store
            .count_existing(&[hold_key(*seat), token_key(*user)])
            .await?
            == 0
        {
            cleaned_redis += 1;
        }
    }

    Ok(Report {
        payments,
        failed,
        compensated_db,
        cleaned_redis,
        lost: (failed - compensated_db)
            + (failed - cleaned_redis)
            + seats_under
            + balance_under
            + unsold_completed,
        duplicated: seats_over + double_refunds + balance_over,
        errors: 0,
        wall: Duration::ZERO,
    })
}
