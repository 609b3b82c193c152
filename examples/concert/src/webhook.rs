//! The notification webhook: the sender used by the `telegram-notification` group,
//! and a demo receiver (a real local HTTP server) that fails or stalls on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use reliable_kafka::{CircuitBreaker, EventHandler, FixedBackOff, HandlerContext, HandlerError, HandlerOptions};
use serde::{Deserialize, Serialize};

use crate::events::PaymentCompleted;
use crate::http::Server;

/// Consumer group of the notification sender (seed 003).
pub const NOTIFICATION_GROUP: &str = "telegram-notification";

/// Body posted to the webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Payment.
    pub payment_id: i64,
    /// User.
    pub user_id: i64,
    /// Where to send it (seed 003: the user's mail), if known.
    pub mail: Option<String>,
    /// Text for the user.
    pub text: String,
}

/// Sends a notification for each completed payment: `POST` to the webhook with connect
/// and request timeouts. 2xx records the notification (in the handler's transaction,
/// so once per payment); `503 Service Unavailable` and refused connections mean the
/// receiver is down (`HandlerError::unavailable`: the handler's circuit breaker opens
/// at once and the record waits without using up its attempts); other 5xx, 429 and
/// timeouts are transient (retried, then `payment-notification.DLQ`, then re-driven);
/// other 4xx permanent.
///
/// The HTTP call itself is at-least-once: a receiver may see a redelivered
/// notification when the database commit after a successful call failed.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    http: reqwest::Client,
    url: String,
    backoff: FixedBackOff,
    breaker: Option<CircuitBreaker>,
    topic: String,
    group: String,
}

impl WebhookNotifier {
    /// A sender to `url` with the given timeouts, retrying 3 times 200 ms apart.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(url: impl Into<String>, connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(connect_timeout).timeout(request_timeout).build()?;
        let backoff = FixedBackOff::new(Duration::from_millis(200), 3).expect("3 attempts is valid");
        Ok(WebhookNotifier {
            http,
            url: url.into(),
            backoff,
            breaker: Some(CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_secs(5))),
            topic: crate::events::PAYMENT_NOTIFICATION_TOPIC.to_owned(),
            group: NOTIFICATION_GROUP.to_owned(),
        })
    }

    /// Retry policy (default: 3 attempts, 200 ms apart).
    pub fn backoff(mut self, backoff: FixedBackOff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The circuit breaker in front of the receiver (default: 3 failures in a row within
    /// 10 s open it for 5 s).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// No circuit breaker: a `503` or a refused connection is then a transient failure
    /// like a `500`, retried and dead-lettered, as seed 003's scenario 1 describes.
    /// With the breaker (the default) an unavailable receiver holds the records back
    /// instead, without using up their attempts, and nothing is dead-lettered for an
    /// outage.
    pub fn without_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Consumes `topic` in `group` instead of the seed's `payment-notification` and
    /// `telegram-notification` (for several environments on one cluster, or tests).
    pub fn on(mut self, topic: impl Into<String>, group: impl Into<String>) -> Self {
        self.topic = topic.into();
        self.group = group.into();
        self
    }
}

impl<DB: crate::db::AppBackend> EventHandler<DB> for WebhookNotifier {
    type Event = PaymentCompleted;

    fn options(&self) -> HandlerOptions {
        let options = HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone()).backoff(self.backoff);
        match self.breaker {
            Some(b) => options.circuit_breaker(b),
            None => options,
        }
    }

    fn handle<'a>(
        &'a self,
        event: PaymentCompleted,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let body = Notification {
                payment_id: event.payment_id,
                user_id: event.user_id,
                mail: event.mail.clone(),
                text: format!(
                    "Payment {} of {} points completed at {}: {} on {}.",
                    event.payment_id,
                    event.amount,
                    event.confirmed_at.format("%Y-%m-%d %H:%M UTC"),
                    event.concert_title,
                    event.starts_at.format("%Y-%m-%d %H:%M UTC"),
                ),
            };
            post_json(&self.http, &self.url, &body).await?;
            crate::sql!(
                DB::ex(ctx.tx()),
                query("INSERT INTO notification (payment_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(event.payment_id)
                    .bind(event.user_id)
                    .execute()
            )?;
            Ok(())
        })
    }
}

/// `POST`s `body` as JSON to `url`, classifying failures as the handlers need them:
/// refused connections and `503` mean the receiver is down
/// ([`HandlerError::unavailable`]), other 5xx, 429 and timeouts are transient, other
/// 4xx permanent.
///
/// # Errors
/// The classified failure.
pub(crate) async fn post_json<T: Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    body: &T,
) -> Result<(), HandlerError> {
    let resp = http.post(url).json(body).send().await.map_err(|e| {
        if e.is_connect() {
            HandlerError::unavailable(e)
        } else {
            HandlerError::transient(e)
        }
    })?;
    let status = resp.status();
    if let Err(e) = resp.error_for_status() {
        return Err(match status {
            StatusCode::SERVICE_UNAVAILABLE => HandlerError::unavailable(e),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => HandlerError::transient(e),
            _ => HandlerError::permanent(e),
        });
    }
    Ok(())
}

/// How the demo receiver misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReceiverBehaviour {
    /// Share of calls answered `500` (a fault of the call, not an outage).
    pub fail_rate: f64,
    /// Share of calls answered after `delay` (past the sender's timeout, typically).
    pub delay_rate: f64,
    /// The delay.
    pub delay: Duration,
    /// Payments whose id is a multiple of this always get `500` (0: none), so that
    /// some notifications end dead-lettered and parked.
    pub always_fail_every: i64,
}

/// A webhook receiver recording what it accepted.
#[derive(Clone, Default)]
pub struct DemoReceiver {
    behaviour: Arc<Mutex<ReceiverBehaviour>>,
    accepted: Arc<Mutex<HashMap<i64, u32>>>,
    alerts: Arc<Mutex<HashMap<i64, u32>>>,
    faults: Arc<Mutex<(u64, u64)>>,
    /// Down (every call answered `503`), and the calls answered so.
    outage: Arc<Mutex<(bool, u64)>>,
}

impl std::fmt::Debug for DemoReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoReceiver").field("behaviour", &*self.behaviour.lock().unwrap()).finish_non_exhaustive()
    }
}

impl DemoReceiver {
    /// A receiver behaving as `behaviour`.
    pub fn new(behaviour: ReceiverBehaviour) -> Self {
        DemoReceiver {
            behaviour: Arc::new(Mutex::new(behaviour)),
            accepted: Arc::default(),
            alerts: Arc::default(),
            faults: Arc::default(),
            outage: Arc::default(),
        }
    }

    /// Changes the behaviour of later calls.
    pub fn set_behaviour(&self, behaviour: ReceiverBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Notifications accepted, by payment id, with how often each was received.
    pub fn accepted(&self) -> HashMap<i64, u32> {
        self.accepted.lock().unwrap().clone()
    }

    /// Order alerts accepted (`POST /alert`), by payment id, with how often each was
    /// received.
    pub fn alerts(&self) -> HashMap<i64, u32> {
        self.alerts.lock().unwrap().clone()
    }

    /// Takes the receiver down (every call answered `503 Service Unavailable`) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.outage.lock().unwrap().0 = down;
    }

    /// Calls answered `503` because the receiver was down.
    pub fn outage_calls(&self) -> u64 {
        self.outage.lock().unwrap().1
    }

    /// Faults injected so far: `(500 answers, answers delayed)`.
    pub fn faults(&self) -> (u64, u64) {
        *self.faults.lock().unwrap()
    }

    /// Serves `POST /notify` (notifications, with the faults of its behaviour) and
    /// `POST /alert` (order alerts; down with the rest in an outage, no other faults)
    /// on `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<Server> {
        Server::start(
            Router::new().route("/notify", post(receive)).route("/alert", post(receive_alert)).with_state(self.clone()),
            addr,
        )
        .await
    }

    fn down(&self) -> bool {
        let mut outage = self.outage.lock().unwrap();
        if outage.0 {
            outage.1 += 1;
        }
        outage.0
    }
}

async fn receive_alert(State(r): State<DemoReceiver>, Json(a): Json<crate::alert::Alert>) -> StatusCode {
    if r.down() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    *r.alerts.lock().unwrap().entry(a.payment_id).or_default() += 1;
    StatusCode::OK
}

async fn receive(State(r): State<DemoReceiver>, Json(n): Json<Notification>) -> StatusCode {
    if r.down() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let b = *r.behaviour.lock().unwrap();
    if (b.always_fail_every > 0 && n.payment_id % b.always_fail_every == 0) || fastrand::f64() < b.fail_rate {
        r.faults.lock().unwrap().0 += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if fastrand::f64() < b.delay_rate {
        r.faults.lock().unwrap().1 += 1;
        tokio::time::sleep(b.delay).await;
    }
    *r.accepted.lock().unwrap().entry(n.payment_id).or_default() += 1;
    StatusCode::OK
}
