//! The scenario / load runner: many concurrent users drive the flows over HTTP while
//! the payment gateway and the notification webhook fail, hang and decline on purpose;
//! then a consistency report is computed from the database and the key-value store.

use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reliable_kafka::KafkaConfig;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{CheckoutResponse, TokenResponse, IDEMPOTENCY_KEY_HEADER, QUEUE_TOKEN_HEADER};
use crate::app::{App, AppConfig, Flows};
use crate::booking::{PaymentView, Reservation};
use crate::db::Db;
use crate::gateway::GatewayBehaviour;
use crate::sql;
use crate::store::Store;
use crate::webhook::ReceiverBehaviour;

/// Seats per concert date.
const SEATS_PER_DATE: usize = 100;
/// Price of every seat, in points.
const SEAT_PRICE: i64 = 50_000;
/// Balance each user starts with, in points.
const START_BALANCE: i64 = 100_000;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Users; each reserves one seat, pays once (some send the payment several times)
    /// and, with all flows, requests a coupon.
    pub users: usize,
    /// Share of payments that fail, in `[0, 1]`: a fifth by insufficient balance
    /// (nothing charged), the rest declined by the gateway after the charge (refunded).
    pub failure_rate: f64,
    /// Users in flight at once.
    pub concurrency: usize,
    /// Seed of the failure assignment.
    pub seed: u64,
    /// How long to wait for the consumers to finish.
    pub settle_timeout: Duration,
    /// Flows driven and reported.
    pub flows: Flows,
    /// Inject gateway errors (5 % of calls answer 503) and hangs (2 % of payments answer
    /// after 3 s, past the 1 s timeout), and webhook failures (10 % of calls 503, 2 %
    /// stall past the 300 ms timeout, every 50th payment always fails: dead-lettered,
    /// re-driven 3 times, parked).
    pub inject_faults: bool,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Create the topics with the admin API (false on the embedded mock cluster, whose
    /// topics are created with it).
    pub create_topics: bool,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            users: 1000,
            failure_rate: 0.3,
            concurrency: 32,
            seed: 42,
            settle_timeout: Duration::from_secs(600),
            flows: Flows::All,
            inject_faults: true,
            progress: true,
            create_topics: true,
        }
    }
}

impl ScenarioConfig {
    /// The short demo run of `cargo run -p concert` without arguments: 200 users, every
    /// flow, faults injected.
    pub fn demo() -> Self {
        ScenarioConfig { users: 200, concurrency: 16, settle_timeout: Duration::from_secs(300), ..Self::default() }
    }

    /// The application settings of the run: short timeouts and fast schedulers.
    pub fn app_config(&self) -> AppConfig {
        let faults = self.inject_faults && self.flows == Flows::All;
        AppConfig {
            api_addr: ([127, 0, 0, 1], 0).into(),
            gateway_behaviour: GatewayBehaviour {
                decline_rate: self.failure_rate * 0.8,
                error_rate: if faults { 0.05 } else { 0.0 },
                hang_rate: if faults { 0.02 } else { 0.0 },
                hang: Duration::from_secs(3),
                seed: self.seed,
            },
            receiver_behaviour: if faults {
                ReceiverBehaviour {
                    fail_rate: 0.1,
                    delay_rate: 0.02,
                    delay: Duration::from_secs(3),
                    always_fail_every: 50,
                }
            } else {
                ReceiverBehaviour::default()
            },
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
            webhook_timeout: Duration::from_millis(300),
            webhook_backoff: Duration::from_millis(100),
            redrive_interval: Duration::from_secs(1),
            recovery_interval: Duration::from_millis(500),
            stuck_after: Duration::from_secs(6),
            flows: self.flows,
            create_topics: self.create_topics,
            relay_poll_interval: Duration::from_millis(50),
            ..AppConfig::default()
        }
    }
}

/// The consistency report, every count from queries on PostgreSQL and Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Users of the run.
    pub users: i64,
    /// Payments made.
    pub payments: i64,
    /// Of which failed.
    pub failed: i64,
    /// Of which completed.
    pub completed: i64,
    /// Failed payments fully compensated in the database (payment and reservation
    /// FAILED, seat AVAILABLE, refund when charged).
    pub compensated_db: i64,
    /// Failed payments whose seat hold and queue token are gone from Redis.
    pub cleaned_redis: i64,
    /// Coupons issued.
    pub coupons: i64,
    /// Completed payments whose notification was delivered.
    pub notified: i64,
    /// Completed payments whose notification was dead-lettered and parked.
    pub dead_lettered: i64,
    /// Effects missing (see [`Report::problems`]).
    pub lost: i64,
    /// Effects applied twice (see [`Report::problems`]).
    pub duplicated: i64,
    /// Users whose flow hit an unexpected HTTP answer.
    pub errors: i64,
    /// Each violated invariant with its count.
    pub problems: Vec<String>,
    /// Wall time of the run.
    pub wall: Duration,
}

impl Report {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.errors == 0
    }

    /// The last line of the report for `flows`.
    pub fn line(&self, flows: Flows) -> String {
        let verdict = if self.is_ok() { "ok" } else { "FAILED" };
        match flows {
            Flows::PaymentFailure => format!(
                "consistency: {verdict} payments={} failed={} compensated_db={} cleaned_redis={} lost={} duplicated={}",
                self.payments, self.failed, self.compensated_db, self.cleaned_redis, self.lost, self.duplicated
            ),
            Flows::All => format!(
                "consistency: {verdict} users={} payments={} failed={} coupons={} notified={} dead_lettered={} lost={} duplicated={}",
                self.users, self.payments, self.failed, self.coupons, self.notified, self.dead_lettered, self.lost, self.duplicated
            ),
        }
    }
}

/// Runs the scenario against PostgreSQL, Redis and Kafka, with the application
/// started in this process on a free port.
///
/// # Errors
/// When the services cannot be reached or set up.
pub async fn run(pool: Db, store: Store, kafka: KafkaConfig, cfg: &ScenarioConfig) -> anyhow::Result<Report> {
    let started = Instant::now();
    let app = App::start(pool.clone(), store.clone(), kafka, &cfg.app_config()).await?;
    let base = app.api.url();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let bar = if cfg.progress { ProgressBar::new(cfg.users as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} users {pos}/{len} [{bar:40}] {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let wave = drive_wave(&pool, &http, &base, cfg, &bar).await?;
    bar.finish_with_message("users done; waiting for the consumers");
    let Wave { run_id, coupon_id, errors, idempotency_violations } = wave;
    tracing::info!(elapsed = ?started.elapsed(), errors, "users done; waiting for the consumers");

    let deadline = Instant::now() + cfg.settle_timeout;
    let mut report;
    loop {
        report = check(&pool, &store, run_id, coupon_id, cfg.flows).await?;
        let pending: i64 = sql!(
            &pool,
            query_scalar("SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL AND parked_at IS NULL").fetch_one()
        )?;
        if (pending == 0 && report.problems.is_empty() && app.consumers_idle_for(Duration::from_secs(1)))
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if idempotency_violations > 0 {
        report.duplicated += idempotency_violations;
        report.problems.push(format!("repeated payment requests answered differently: {idempotency_violations}"));
    }
    for p in &report.problems {
        tracing::error!("invariant violated: {p}");
    }
    let webhook_repeats =
        app.receiver.as_ref().map(|(r, _)| r.accepted().values().filter(|&&n| n > 1).count()).unwrap_or(0);
    let stats: Vec<String> = app
        .containers
        .iter()
        .map(|c| {
            format!(
                "{}: processed={} duplicates={} dead_lettered={}",
                c.group(),
                c.stats().processed(),
                c.stats().duplicates(),
                c.stats().dead_lettered()
            )
        })
        .collect();
    tracing::info!(
        ?stats,
        webhook_repeats,
        relay_published = app.relay.as_ref().map(|r| r.stats().published()),
        "consumers settled"
    );
    app.stop().await?;
    report.errors = errors;
    report.wall = started.elapsed();
    Ok(report)
}

/// One group of users driven through the flows: its run id and coupon, and what went
/// wrong on the HTTP side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wave {
    pub run_id: i64,
    pub coupon_id: i64,
    /// Users whose flow hit an unexpected HTTP answer.
    pub errors: i64,
    /// Users whose repeated payment requests were answered with different payments.
    pub idempotency_violations: i64,
}

/// Creates `cfg.users` users and drives each through the flows over the API at `base`.
pub(crate) async fn drive_wave(
    pool: &Db,
    http: &reqwest::Client,
    base: &str,
    cfg: &ScenarioConfig,
    bar: &ProgressBar,
) -> anyhow::Result<Wave> {
    let (run_id, seats, users, coupon_id) = seed_data(pool, cfg).await?;
    tracing::info!(run_id, users = users.len(), "data created; running users over HTTP");
    let outcomes: Vec<UserOutcome> = futures::stream::iter(users.iter().copied().zip(seats).enumerate())
        .map(|(i, (user, seat))| {
            let flows = cfg.flows;
            async move {
                let outcome = user_flow(http, base, i, user, seat, coupon_id, flows).await;
                bar.inc(1);
                outcome
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    let errors = outcomes.iter().filter(|o| o.error.is_some()).count() as i64;
    for o in outcomes.iter().filter_map(|o| o.error.as_ref()).take(5) {
        tracing::error!(error = %o, "user flow failed");
    }
    let idempotency_violations = outcomes.iter().filter(|o| o.idempotency_violated).count() as i64;
    Ok(Wave { run_id, coupon_id, errors, idempotency_violations })
}

struct UserOutcome {
    error: Option<String>,
    idempotency_violated: bool,
}

/// Sends `req`, as a careful client does: an answer "retry later" (500, 503) is retried
/// up to 5 times, 250 ms × attempt apart (every request of the flow is safe to repeat:
/// payments carry an idempotency key, a seat hold is the user's own).
async fn call<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    expect: &[StatusCode],
) -> Result<(StatusCode, T), String> {
    let mut attempt = 0;
    let (status, text) = loop {
        attempt += 1;
        let again = req.try_clone().ok_or("request body cannot be repeated")?;
        let resp = again.send().await.map_err(|e| reliable_kafka::report(&e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| reliable_kafka::report(&e))?;
        let retry_later = matches!(status, StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE);
        if !retry_later || attempt > 5 {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(250) * attempt).await;
    };
    if !expect.contains(&status) {
        return Err(format!("unexpected {status}: {text}"));
    }
    serde_json::from_str(&text).map(|v| (status, v)).map_err(|e| format!("bad body {text:?}: {e}"))
}

async fn user_flow(
    http: &reqwest::Client,
    base: &str,
    i: usize,
    user: i64,
    seat: i64,
    coupon_id: i64,
    flows: Flows,
) -> UserOutcome {
    let mut idempotency_violated = false;
    let result = async {
        let (_, t): (_, TokenResponse) = call(
            http.post(format!("{base}/api/queue/tokens")).json(&json!({ "user_id": user })),
            &[StatusCode::CREATED],
        )
        .await?;
        let (_, r): (_, Reservation) = call(
            http.post(format!("{base}/api/reservations"))
                .header(QUEUE_TOKEN_HEADER, &t.token)
                .json(&json!({ "user_id": user, "seat_id": seat })),
            &[StatusCode::CREATED],
        )
        .await?;
        let (_, c): (_, CheckoutResponse) =
            call(http.post(format!("{base}/api/reservations/{}/checkout", r.id)), &[StatusCode::CREATED]).await?;
        let pay = || {
            call::<PaymentView>(
                http.post(format!("{base}/api/payments"))
                    .header(IDEMPOTENCY_KEY_HEADER, c.idempotency_key.to_string())
                    .json(&json!({ "reservation_id": r.id, "user_id": user })),
                &[StatusCode::OK, StatusCode::ACCEPTED],
            )
        };
        // Every 10th user double-clicks: three identical requests at once, then one more.
        let repeats = if i.is_multiple_of(10) { 3 } else { 1 };
        let mut answers = futures::future::join_all((0..repeats).map(|_| pay())).await;
        if repeats > 1 {
            answers.push(pay().await);
        }
        let answers: Vec<PaymentView> = answers.into_iter().map(|a| a.map(|(_, p)| p)).collect::<Result<_, _>>()?;
        idempotency_violated = answers.iter().any(|a| a.payment_id != answers[0].payment_id);
        if flows == Flows::All {
            let req =
                || http.post(format!("{base}/api/coupons/{coupon_id}/requests")).json(&json!({ "user_id": user }));
            call::<serde_json::Value>(req(), &[StatusCode::ACCEPTED, StatusCode::CONFLICT]).await?;
            if i.is_multiple_of(9) {
                // A repeated request is refused.
                call::<serde_json::Value>(req(), &[StatusCode::CONFLICT]).await?;
            }
        }
        Ok::<(), String>(())
    }
    .await;
    UserOutcome { error: result.err().map(|e| format!("user {user}: {e}")), idempotency_violated }
}

/// Creates a concert with `ceil(users / 100)` dates of 100 seats, `users` users (a
/// fifth of the failure share without enough balance), and a coupon with stock for
/// half of them. Returns the run id (= concert id), one seat per user, the user ids
/// and the coupon id.
async fn seed_data(pool: &Db, cfg: &ScenarioConfig) -> anyhow::Result<(i64, Vec<i64>, Vec<i64>, i64)> {
    let users = cfg.users;
    let mut tx = pool.begin().await?;
    let title = format!("scenario {}", uuid::Uuid::now_v7());
    let run_id: i64 =
        sql!(&mut tx, query_scalar("INSERT INTO concert (title) VALUES ($1) RETURNING id").bind(&title).fetch_one())?;
    let dates = users.div_ceil(SEATS_PER_DATE).max(1);
    let mut seats = Vec::with_capacity(users);
    for d in 0..dates {
        let starts_at = (chrono::Utc::now() + chrono::TimeDelta::days(d as i64 + 1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let date_id: i64 = sql!(
            &mut tx,
            query_scalar((
                "INSERT INTO concert_date (concert_id, starts_at, total_seat_count, available_seat_count) \
                 VALUES ($1, $2::timestamptz, $3, $3) RETURNING id",
                "INSERT INTO concert_date (concert_id, starts_at, total_seat_count, available_seat_count) \
                 VALUES ($1, $2, $3, $3) RETURNING id"
            ))
            .bind(run_id)
            .bind(&starts_at)
            .bind(SEATS_PER_DATE as i32)
            .fetch_one()
        )?;
        let ids: Vec<i64> = sql!(
            &mut tx,
            query_scalar(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $3) \
                 INSERT INTO seat (concert_date_id, number, price, status) \
                 SELECT $1, x, $2, 'AVAILABLE' FROM n RETURNING id"
            )
            .bind(date_id)
            .bind(SEAT_PRICE)
            .bind(SEATS_PER_DATE as i32)
            .fetch_all()
        )?;
        seats.extend(ids);
    }
    seats.truncate(users);
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let balances: Vec<i64> =
        (0..users).map(|_| if rng.f64() < cfg.failure_rate * 0.2 { SEAT_PRICE / 2 } else { START_BALANCE }).collect();
    // The balances travel as one array: `unnest` on PostgreSQL, `json_each` on SQLite.
    let balances_json = serde_json::to_string(&balances)?;
    let user_ids: Vec<i64> = match &mut tx {
        crate::db::Tx::Postgres(t) => {
            sqlx::query_scalar(
                "INSERT INTO app_user (name, balance, run_id) \
                 SELECT 'user-' || $1 || '-' || n, b, $1 FROM unnest($2::bigint[]) WITH ORDINALITY AS t(b, n) RETURNING id",
            )
            .bind(run_id)
            .bind(&balances)
            .fetch_all(&mut **t)
            .await?
        }
        crate::db::Tx::Sqlite(t) => {
            sqlx::query_scalar(
                "INSERT INTO app_user (name, balance, run_id) \
                 SELECT 'user-' || $1 || '-' || (key + 1), value, $1 FROM json_each($2) ORDER BY key RETURNING id",
            )
            .bind(run_id)
            .bind(&balances_json)
            .fetch_all(&mut **t)
            .await?
        }
    };
    sql!(
        &mut tx,
        query("INSERT INTO point_history (user_id, kind, amount) SELECT id, 'TOPUP', balance FROM app_user WHERE run_id = $1")
            .bind(run_id)
            .execute()
    )?;
    let stock = (users / 2).max(1) as i32;
    let name = format!("run {run_id}");
    let coupon_id: i64 = sql!(
        &mut tx,
        query_scalar("INSERT INTO coupon_stock (name, total, remaining) VALUES ($1, $2, $2) RETURNING id")
            .bind(&name)
            .bind(stock)
            .fetch_one()
    )?;
    tx.commit().await?;
    Ok((run_id, seats, user_ids, coupon_id))
}

/// Computes the report of run `run_id` from PostgreSQL and Redis.
pub(crate) async fn check(
    pool: &Db,
    store: &Store,
    run_id: i64,
    coupon_id: i64,
    flows: Flows,
) -> anyhow::Result<Report> {
    let mut r = Report::default();
    let mut lost = Vec::<(&str, i64)>::new();
    let mut dup = Vec::<(&str, i64)>::new();
    r.users = sql!(pool, query_scalar("SELECT count(*) FROM app_user WHERE run_id = $1").bind(run_id).fetch_one())?;
    let (payments, failed, completed, in_progress, compensated, unsold): (i64, i64, i64, i64, i64, i64) = sql!(
        pool,
        query_as(
            "SELECT count(*),
                count(*) FILTER (WHERE p.status = 'FAILED'),
                count(*) FILTER (WHERE p.status = 'COMPLETED'),
                count(*) FILTER (WHERE p.status = 'IN_PROGRESS'),
                count(*) FILTER (WHERE p.status = 'FAILED' AND p.compensated_at IS NOT NULL
                                   AND r.status = 'FAILED' AND s.status = 'AVAILABLE'
                                   AND (NOT p.charged OR EXISTS (SELECT 1 FROM point_history h
                                                                 WHERE h.payment_id = p.id AND h.kind = 'REFUND'))),
                count(*) FILTER (WHERE p.status = 'COMPLETED' AND (r.status <> 'CONFIRMED' OR s.status <> 'SOLD'))
         FROM payment p
         JOIN reservation r ON r.id = p.reservation_id
         JOIN seat s ON s.id = r.seat_id
         JOIN app_user u ON u.id = p.user_id
         WHERE u.run_id = $1"
        )
        .bind(run_id)
        .fetch_one()
    )?;
    (r.payments, r.failed, r.completed, r.compensated_db) = (payments, failed, completed, compensated);
    lost.push(("payments of users", r.users - payments));
    lost.push(("payments still in progress", in_progress));
    lost.push(("failed payments not compensated in the database", failed - compensated));
    lost.push(("completed payments whose seat is not sold", unsold));

    let (seats_over, seats_under): (i64, i64) = sql!(
        pool,
        query_as(
            "SELECT CAST(coalesce(sum(CASE WHEN d.available_seat_count > a.n THEN d.available_seat_count - a.n ELSE 0 END), 0) AS BIGINT),
                    CAST(coalesce(sum(CASE WHEN a.n > d.available_seat_count THEN a.n - d.available_seat_count ELSE 0 END), 0) AS BIGINT)
             FROM concert_date d
             JOIN (SELECT d2.id AS date_id, count(s.id) AS n FROM concert_date d2
                   LEFT JOIN seat s ON s.concert_date_id = d2.id AND s.status = 'AVAILABLE'
                   WHERE d2.concert_id = $1 GROUP BY d2.id) a ON a.date_id = d.id
             WHERE d.concert_id = $1"
        )
        .bind(run_id)
        .fetch_one()
    )?;
    dup.push(("seat counts above the seats available", seats_over));
    lost.push(("seat counts below the seats available", seats_under));
    dup.push((
        "payments refunded twice",
        sql!(
            pool,
            query_scalar(
                "SELECT count(*) FROM (SELECT h.payment_id FROM point_history h JOIN app_user u ON u.id = h.user_id
                  WHERE h.kind = 'REFUND' AND u.run_id = $1 GROUP BY h.payment_id HAVING count(*) > 1) x"
            )
            .bind(run_id)
            .fetch_one()
        )?,
    ));
    let (balance_over, balance_under): (i64, i64) = sql!(
        pool,
        query_as(
            "SELECT count(*) FILTER (WHERE u.balance > h.total), count(*) FILTER (WHERE u.balance < h.total)
             FROM app_user u JOIN (SELECT user_id, sum(amount) AS total FROM point_history GROUP BY user_id) h ON h.user_id = u.id
             WHERE u.run_id = $1"
        )
        .bind(run_id)
        .fetch_one()
    )?;
    dup.push(("balances above their history", balance_over));
    lost.push(("balances below their history", balance_under));

    let failed_rows: Vec<(i64, i64)> = sql!(
        pool,
        query_as(
            "SELECT r.seat_id, r.user_id FROM payment p JOIN reservation r ON r.id = p.reservation_id
             JOIN app_user u ON u.id = p.user_id WHERE u.run_id = $1 AND p.status = 'FAILED'"
        )
        .bind(run_id)
        .fetch_all()
    )?;
    for (seat, user) in &failed_rows {
        if store.count_existing(&[store.hold_key(*seat), store.token_key(*user)]).await? == 0 {
            r.cleaned_redis += 1;
        }
    }
    lost.push(("failed payments not cleaned in Redis", failed - r.cleaned_redis));

    if flows == Flows::All {
        r.notified = sql!(
            pool,
            query_scalar("SELECT count(*) FROM notification n JOIN app_user u ON u.id = n.user_id WHERE u.run_id = $1")
                .bind(run_id)
                .fetch_one()
        )?;
        r.dead_lettered = sql!(
            pool,
            query_scalar((
                "SELECT count(DISTINCT (convert_from(k.payload, 'UTF8')::jsonb->>'payment_id')) FROM rk_parked_messages k
                 JOIN app_user u ON u.id = (convert_from(k.payload, 'UTF8')::jsonb->>'user_id')::bigint
                 WHERE k.original_topic = 'payment-notification' AND u.run_id = $1",
                "SELECT count(DISTINCT json_extract(CAST(k.payload AS TEXT), '$.payment_id')) FROM rk_parked_messages k
                 JOIN app_user u ON u.id = json_extract(CAST(k.payload AS TEXT), '$.user_id')
                 WHERE k.original_topic = 'payment-notification' AND u.run_id = $1"
            ))
            .bind(run_id)
            .fetch_one()
        )?;
        lost.push(("completed payments neither notified nor dead-lettered", completed - r.notified - r.dead_lettered));
        r.coupons =
            sql!(pool, query_scalar("SELECT count(*) FROM coupon WHERE coupon_id = $1").bind(coupon_id).fetch_one())?;
        let (requests, stock): (i64, i64) = sql!(
            pool,
            query_as(
                "SELECT (SELECT count(*) FROM coupon_request WHERE coupon_id = $1), \
                 (SELECT CAST(total AS BIGINT) FROM coupon_stock WHERE id = $1)"
            )
            .bind(coupon_id)
            .fetch_one()
        )?;
        lost.push(("coupon requests without a coupon", requests - r.coupons));
        dup.push(("coupons above stock", r.coupons - stock));
        dup.push((
            "users with more than one coupon",
            sql!(
                pool,
                query_scalar(
                    "SELECT count(*) FROM (SELECT user_id FROM coupon WHERE coupon_id = $1 GROUP BY user_id HAVING count(*) > 1) x"
                )
                .bind(coupon_id)
                .fetch_one()
            )?,
        ));
        for (what, table) in [("order information", "order_info"), ("order alerts", "order_alert")] {
            let q = format!(
                "SELECT count(*), count(DISTINCT t.payment_id) FROM {table} t
                 JOIN payment p ON p.id = t.payment_id JOIN app_user u ON u.id = p.user_id WHERE u.run_id = $1"
            );
            let (rows, distinct): (i64, i64) = sql!(pool, query_as(&q).bind(run_id).fetch_one())?;
            lost.push((what, completed - distinct));
            dup.push((what, rows - distinct));
        }
    }
    for (what, n) in lost {
        if n != 0 {
            r.lost += n.abs();
            r.problems.push(format!("lost: {what}: {n}"));
        }
    }
    for (what, n) in dup {
        if n > 0 {
            r.duplicated += n;
            r.problems.push(format!("duplicated: {what}: {n}"));
        }
    }
    Ok(r)
}
