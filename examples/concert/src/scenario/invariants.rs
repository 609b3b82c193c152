//! The consistency report of a run: every invariant of the flows, counted from the
//! database (the library's parked messages through [`reliable_kafka::Operations`]) and
//! the key-value store.

use std::collections::HashSet;
use std::time::Duration;

use crate::app::Flows;
use crate::db::Db;
use crate::events::{PaymentCompleted, PAYMENT_NOTIFICATION_TOPIC};
use crate::sql;
use crate::store::Store;

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
    /// The webhook outage of the run, when one was injected.
    pub outage: Option<Outage>,
}

/// What a webhook outage (`scenario --webhook-outage-secs`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long the receiver was down.
    pub down: Duration,
    /// Calls it answered `503` meanwhile.
    pub calls: u64,
    /// Notifications dead-lettered because of it (their error says `503`): 0 when the
    /// circuit breaker made them wait.
    pub dead_lettered: u64,
}

impl Outage {
    /// `outage: webhook_down_secs=… outage_calls=… outage_dead_lettered=…`
    pub fn line(&self) -> String {
        format!(
            "outage: webhook_down_secs={} outage_calls={} outage_dead_lettered={}",
            self.down.as_secs(),
            self.calls,
            self.dead_lettered
        )
    }
}

impl Report {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.errors == 0 && self.outage.is_none_or(|o| o.dead_lettered == 0)
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

/// Computes the report of run `run_id` from PostgreSQL and Redis.
///
/// # Errors
/// When a query fails.
pub async fn check(pool: &Db, store: &Store, run_id: i64, coupon_id: i64, flows: Flows) -> anyhow::Result<Report> {
    let mut r = Report::default();
    let mut lost = Vec::<(&str, i64)>::new();
    let mut dup = Vec::<(&str, i64)>::new();
    r.users = sql!(pool, query_scalar("SELECT count(*) FROM app_user WHERE run_id = $1").bind(run_id).fetch_one())?;
    let (payments, failed, completed, in_progress, compensated, unsold): (i64, i64, i64, i64, i64, i64) = sql!(
        pool,
        query_as(
            "SELECT count(*),
                count(CASE WHEN p.status = 'FAILED' THEN 1 END),
                count(CASE WHEN p.status = 'COMPLETED' THEN 1 END),
                count(CASE WHEN p.status = 'IN_PROGRESS' THEN 1 END),
                count(CASE WHEN p.status = 'FAILED' AND p.compensated_at IS NOT NULL
                                   AND r.status = 'FAILED' AND s.status = 'AVAILABLE'
                                   AND (NOT p.charged OR EXISTS (SELECT 1 FROM point_history h
                                                                 WHERE h.payment_id = p.id AND h.kind = 'REFUND')) THEN 1 END),
                count(CASE WHEN p.status = 'COMPLETED' AND (r.status <> 'CONFIRMED' OR s.status <> 'SOLD') THEN 1 END)
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
            "SELECT count(CASE WHEN u.balance > h.total THEN 1 END), count(CASE WHEN u.balance < h.total THEN 1 END)
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
        r.dead_lettered = dead_lettered_payments(pool, run_id).await?;
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

/// Completed payments of run `run_id` whose notification was dead-lettered and parked
/// after its re-drives: the distinct payments of the parked `payment-notification`
/// records of the run's users.
async fn dead_lettered_payments(pool: &Db, run_id: i64) -> anyhow::Result<i64> {
    let parked: Vec<PaymentCompleted> = pool
        .parked_messages()
        .await?
        .into_iter()
        .filter(|m| m.original_topic.as_deref() == Some(PAYMENT_NOTIFICATION_TOPIC))
        .filter_map(|m| serde_json::from_slice(m.payload.as_deref()?).ok())
        .collect();
    if parked.is_empty() {
        return Ok(0);
    }
    let users: Vec<i64> =
        sql!(pool, query_scalar("SELECT id FROM app_user WHERE run_id = $1").bind(run_id).fetch_all())?;
    let users: HashSet<i64> = users.into_iter().collect();
    let payments: HashSet<i64> = parked.iter().filter(|e| users.contains(&e.user_id)).map(|e| e.payment_id).collect();
    Ok(payments.len() as i64)
}
