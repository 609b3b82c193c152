//! Drives users through the flows over the HTTP API, as careful clients do.

use std::time::Duration;

use futures::StreamExt;
use indicatif::ProgressBar;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::seeding::seed_data;
use super::ScenarioConfig;
use crate::api::{CheckoutResponse, TokenResponse, IDEMPOTENCY_KEY_HEADER, QUEUE_TOKEN_HEADER};
use crate::app::Flows;
use crate::booking::{PaymentView, Reservation};
use crate::db::Db;

/// One group of users driven through the flows: its run id and coupon, and what went
/// wrong on the HTTP side.
#[derive(Debug, Clone, Copy)]
pub struct Wave {
    /// The run id (= concert id) of its users.
    pub run_id: i64,
    /// The coupon its users request.
    pub coupon_id: i64,
    /// Users whose flow hit an unexpected HTTP answer.
    pub errors: i64,
    /// Users whose repeated payment requests were answered with different payments.
    pub idempotency_violations: i64,
}

/// Creates `cfg.users` users and drives each through the flows over the API at `base`.
///
/// # Errors
/// When the data cannot be created (an unexpected HTTP answer is counted, not an
/// error).
pub async fn drive_wave(
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

/// How long [`call`] retries "retry later" answers: longer than the chaos harness's
/// database outage (20 s), as a client that waits out an outage of the service's
/// database.
pub const RETRY_LATER_FOR: Duration = Duration::from_secs(40);

struct UserOutcome {
    error: Option<String>,
    idempotency_violated: bool,
}

/// Sends `req`, as a careful client does: an answer "retry later" (500, 503) is retried,
/// 250 ms × attempt apart (at most 2 s), for up to [`RETRY_LATER_FOR`] (every request
/// of the flow is safe to repeat: payments carry an idempotency key, a seat hold is the
/// user's own).
async fn call<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    expect: &[StatusCode],
) -> Result<(StatusCode, T), String> {
    let mut attempt = 0;
    let started = std::time::Instant::now();
    let (status, text) = loop {
        attempt += 1;
        let again = req.try_clone().ok_or("request body cannot be repeated")?;
        let resp = again.send().await.map_err(|e| reliable_kafka::report(&e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| reliable_kafka::report(&e))?;
        let retry_later = matches!(status, StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE);
        if !retry_later || started.elapsed() >= RETRY_LATER_FOR {
            break (status, text);
        }
        tokio::time::sleep((Duration::from_millis(250) * attempt).min(Duration::from_secs(2))).await;
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
        idempotency_violated = answers
            .iter()
            .any(|a| (a.payment_id, a.reservation_id) != (answers[0].payment_id, answers[0].reservation_id));
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
