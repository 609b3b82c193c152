//! The data of a run: a concert with its dates and seats, the users with their
//! balances, and a coupon.

use super::ScenarioConfig;
use crate::db::Db;
use crate::sql;

/// Seats per concert date.
pub const SEATS_PER_DATE: usize = 100;
/// Price of every seat, in points.
pub const SEAT_PRICE: i64 = 50_000;
/// Balance each user starts with, in points.
pub const START_BALANCE: i64 = 100_000;

/// Creates a concert with `ceil(users / 100)` dates of 100 seats, `users` users (a
/// fifth of the failure share without enough balance), and a coupon with stock for
/// half of them. Returns the run id (= concert id), one seat per user, the user ids
/// and the coupon id.
pub(crate) async fn seed_data(pool: &Db, cfg: &ScenarioConfig) -> anyhow::Result<(i64, Vec<i64>, Vec<i64>, i64)> {
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
                 VALUES ($1, $2, $3, $3) RETURNING id",
                "INSERT INTO concert_date (concert_id, starts_at, total_seat_count, available_seat_count) \
                 VALUES ($1, STR_TO_DATE($2, '%Y-%m-%dT%H:%i:%s.%fZ'), $3, $3) RETURNING id"
            ))
            .bind(run_id)
            .bind(&starts_at)
            .bind(SEATS_PER_DATE as i32)
            .fetch_one()
        )?;
        let ids: Vec<i64> = sql!(
            &mut tx,
            query_scalar((
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $3) \
                 INSERT INTO seat (concert_date_id, number, price, status) \
                 SELECT $1, x, $2, 'AVAILABLE' FROM n RETURNING id",
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $3) \
                 INSERT INTO seat (concert_date_id, number, price, status) \
                 SELECT $1, x, $2, 'AVAILABLE' FROM n RETURNING id",
                // MariaDB: the CTE belongs to the SELECT; INSERT … RETURNING (MariaDB 10.5+).
                "INSERT INTO seat (concert_date_id, number, price, status) \
                 WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $3) \
                 SELECT $1, x, $2, 'AVAILABLE' FROM n RETURNING id"
            ))
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
    // The balances travel as one array: `unnest` on PostgreSQL, `json_each` on SQLite,
    // `JSON_TABLE` on MySQL.
    let balances_json = serde_json::to_string(&balances)?;
    let user_ids: Vec<i64> = match &mut tx {
        crate::db::Tx::Postgres(t) => {
            sqlx::query_scalar(
                "INSERT INTO app_user (name, balance, run_id, mail) \
                 SELECT 'user-' || $1 || '-' || n, b, $1, 'user-' || $1 || '-' || n || '@example.com' \
                 FROM unnest($2::bigint[]) WITH ORDINALITY AS t(b, n) RETURNING id",
            )
            .bind(run_id)
            .bind(&balances)
            .fetch_all(&mut **t)
            .await?
        }
        crate::db::Tx::MySql(t) => {
            sqlx::query_scalar(
                "INSERT INTO app_user (name, balance, run_id, mail) \
                 SELECT CONCAT('user-', ?, '-', n), b, ?, CONCAT('user-', ?, '-', n, '@example.com') \
                 FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, b BIGINT PATH '$')) AS t ORDER BY n RETURNING id",
            )
            .bind(run_id)
            .bind(run_id)
            .bind(run_id)
            .bind(&balances_json)
            .fetch_all(&mut **t)
            .await?
        }
        crate::db::Tx::Sqlite(t) => {
            sqlx::query_scalar(
                "INSERT INTO app_user (name, balance, run_id, mail) \
                 SELECT 'user-' || $1 || '-' || (key + 1), value, $1, 'user-' || $1 || '-' || (key + 1) || '@example.com' \
                 FROM json_each($2) ORDER BY key RETURNING id",
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
