//! The payment gateway: a small HTTP service (started by the app in demo mode and by
//! the tests) that approves, declines, fails (503) or hangs on demand, and the client
//! the app calls it with: connect and request timeouts, retries with exponential
//! backoff, jitter and a maximum count (seed 004).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};

use crate::http::Server;

/// The gateway's verdict on a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChargeStatus {
    /// Money taken.
    Approved,
    /// Refused.
    Declined,
}

/// How the demo gateway misbehaves. Rates are probabilities in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayBehaviour {
    /// Share of charges declined (decided once per payment id, with `seed`).
    pub decline_rate: f64,
    /// Share of calls answered `503 Service Unavailable` without deciding anything.
    pub error_rate: f64,
    /// Share of charges (per payment id) whose answer is delayed by `hang`; the charge
    /// itself is decided and recorded, as when a real gateway's response is lost.
    pub hang_rate: f64,
    /// The delay of a hanging answer.
    pub hang: Duration,
    /// Seed of the per-payment decisions.
    pub seed: u64,
}

impl Default for GatewayBehaviour {
    fn default() -> Self {
        GatewayBehaviour { decline_rate: 0.0, error_rate: 0.0, hang_rate: 0.0, hang: Duration::from_secs(30), seed: 7 }
    }
}

/// Body of `POST /charges`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Payment id; the gateway is idempotent on it.
    pub payment_id: i64,
    /// Amount in points.
    pub amount: i64,
}

/// Answer of the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeResponse {
    /// Verdict.
    pub status: ChargeStatus,
}

#[derive(Default)]
struct GatewayState {
    charges: HashMap<i64, ChargeStatus>,
    calls: u64,
    errors: u64,
    hangs: u64,
    /// Down: every call answered `503` (an outage), and the calls answered so.
    down: bool,
    outage_calls: u64,
}

/// The demo gateway server.
#[derive(Clone)]
pub struct DemoGateway {
    behaviour: Arc<Mutex<GatewayBehaviour>>,
    state: Arc<Mutex<GatewayState>>,
}

impl std::fmt::Debug for DemoGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoGateway").field("behaviour", &*self.behaviour.lock().unwrap()).finish_non_exhaustive()
    }
}

/// Uniform number in `[0, 1)` decided by `seed` and `id` alone.
fn per_id(seed: u64, id: i64, salt: u64) -> f64 {
    fastrand::Rng::with_seed(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt).f64()
}

impl DemoGateway {
    /// A gateway behaving as `behaviour`.
    pub fn new(behaviour: GatewayBehaviour) -> Self {
        DemoGateway { behaviour: Arc::new(Mutex::new(behaviour)), state: Arc::default() }
    }

    /// Changes the behaviour of later calls.
    pub fn set_behaviour(&self, behaviour: GatewayBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Charges recorded so far.
    pub fn charges(&self) -> HashMap<i64, ChargeStatus> {
        self.state.lock().unwrap().charges.clone()
    }

    /// Calls received.
    pub fn calls(&self) -> u64 {
        self.state.lock().unwrap().calls
    }

    /// Takes the gateway down (every call answered `503 Service Unavailable`, nothing
    /// charged) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Calls answered `503` because the gateway was down.
    pub fn outage_calls(&self) -> u64 {
        self.state.lock().unwrap().outage_calls
    }

    /// Faults injected so far: `(503 answers, answers held back by the hang)`.
    pub fn faults(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.errors, s.hangs)
    }

    /// The routes: `POST /charges`, `GET /charges/{payment_id}`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/charges", post(charge))
            .route("/charges/{payment_id}", get(status))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0: any free port).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<Server> {
        Server::start(self.router(), addr).await
    }
}

async fn charge(
    State(g): State<DemoGateway>,
    Json(req): Json<ChargeRequest>,
) -> Result<Json<ChargeResponse>, StatusCode> {
    let b = *g.behaviour.lock().unwrap();
    let (status, hang) = {
        let mut s = g.state.lock().unwrap();
        s.calls += 1;
        if s.down {
            s.outage_calls += 1;
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        if fastrand::f64() < b.error_rate {
            s.errors += 1;
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let status = *s.charges.entry(req.payment_id).or_insert_with(|| {
            if per_id(b.seed, req.payment_id, 1) < b.decline_rate {
                ChargeStatus::Declined
            } else {
                ChargeStatus::Approved
            }
        });
        let hang = per_id(b.seed, req.payment_id, 2) < b.hang_rate;
        s.hangs += u64::from(hang);
        (status, hang)
    };
    if hang {
        tokio::time::sleep(b.hang).await;
    }
    Ok(Json(ChargeResponse { status }))
}

async fn status(State(g): State<DemoGateway>, Path(payment_id): Path<i64>) -> Result<Json<ChargeResponse>, StatusCode> {
    let b = *g.behaviour.lock().unwrap();
    let mut s = g.state.lock().unwrap();
    s.calls += 1;
    if s.down {
        s.outage_calls += 1;
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    if fastrand::f64() < b.error_rate {
        s.errors += 1;
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    match s.charges.get(&payment_id) {
        Some(status) => Ok(Json(ChargeResponse { status: *status })),
        None => Err(StatusCode::NOT_FOUND),
    }
}

/// Errors of [`GatewayClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No answer within the request timeout: the charge may or may not have happened.
    #[error("payment gateway timed out")]
    Timeout(#[source] reqwest::Error),
    /// The gateway could not be reached or answered 5xx, after every retry.
    #[error("payment gateway unavailable")]
    Unavailable(#[source] reqwest::Error),
    /// The gateway answered something unexpected.
    #[error("unexpected answer from the payment gateway")]
    Protocol(#[source] reqwest::Error),
}

impl GatewayError {
    fn retryable(&self) -> bool {
        matches!(self, GatewayError::Unavailable(_))
    }
}

fn classify(e: reqwest::Error) -> GatewayError {
    if e.is_timeout() {
        GatewayError::Timeout(e)
    } else if e.is_connect() || e.status().is_some_and(|s| s.is_server_error()) {
        GatewayError::Unavailable(e)
    } else {
        GatewayError::Protocol(e)
    }
}

/// Client of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
    retry: ExponentialBuilder,
}

impl GatewayClient {
    /// A client of the gateway at `base` (e.g. `http://127.0.0.1:8081`) with a TCP
    /// connect timeout, a whole-request timeout, and up to `max_retries` retries of
    /// unavailability (5xx, refused connection) with exponential backoff from 50 ms to
    /// 1 s and full jitter (`backon`). Timeouts are not retried: the outcome is then
    /// unknown and the payment is left to the recovery scheduler.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        base: impl Into<String>,
        connect_timeout: Duration,
        request_timeout: Duration,
        max_retries: usize,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(connect_timeout).timeout(request_timeout).build()?;
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(max_retries);
        Ok(GatewayClient { http, base: base.into(), retry })
    }

    /// Asks the gateway to charge; idempotent per payment id.
    ///
    /// # Errors
    /// [`GatewayError`]; [`GatewayError::Timeout`] leaves the outcome unknown.
    pub async fn charge(&self, payment_id: i64, amount: i64) -> Result<ChargeStatus, GatewayError> {
        let url = format!("{}/charges", self.base);
        let attempt = || async {
            let resp = self
                .http
                .post(&url)
                .json(&ChargeRequest { payment_id, amount })
                .send()
                .await
                .map_err(classify)?
                .error_for_status()
                .map_err(classify)?;
            resp.json::<ChargeResponse>().await.map(|r| r.status).map_err(classify)
        };
        attempt.retry(self.retry).when(GatewayError::retryable).await
    }

    /// What the gateway knows of a payment: `None` when it never received the charge.
    ///
    /// # Errors
    /// [`GatewayError`].
    pub async fn status(&self, payment_id: i64) -> Result<Option<ChargeStatus>, GatewayError> {
        let url = format!("{}/charges/{payment_id}", self.base);
        let attempt = || async {
            let resp = self.http.get(&url).send().await.map_err(classify)?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = resp.error_for_status().map_err(classify)?;
            resp.json::<ChargeResponse>().await.map(|r| Some(r.status)).map_err(classify)
        };
        attempt.retry(self.retry).when(GatewayError::retryable).await
    }
}
