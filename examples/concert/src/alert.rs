//! The order alert of seed 001: the `order-alert-group` consumer of `trace-topic`
//! calls an alert webhook (the demo receiver's `POST /alert` when none is given), with
//! retries, a circuit breaker and dead-lettering to `trace-topic.DLQ`, like the
//! notification group.

use std::time::Duration;

use futures::future::BoxFuture;
use reliable_kafka::{CircuitBreaker, EventHandler, FixedBackOff, HandlerContext, HandlerError, HandlerOptions};
use serde::{Deserialize, Serialize};

use crate::events::OrderPlaced;
use crate::handlers::ORDER_ALERT_GROUP;
use crate::webhook::post_json;

/// Body posted to the alert webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    /// Payment of the order.
    pub payment_id: i64,
    /// User.
    pub user_id: i64,
    /// Text for the operators.
    pub text: String,
}

/// Sends an alert for each placed order: `POST` to the alert webhook, then records it
/// in `order_alert` in the handler's transaction (so the table holds one row per order
/// however often the webhook was called). Seed 001's `FixedBackOff(1000, 3)`: 4
/// attempts 1 s apart; `503` and refused connections open the circuit breaker and the
/// record waits; a record that fails every attempt goes to `trace-topic.DLQ`.
#[derive(Debug, Clone)]
pub struct OrderAlerter {
    http: reqwest::Client,
    url: String,
    backoff: FixedBackOff,
}

impl OrderAlerter {
    /// An alerter posting to `url` with the given timeouts and seed 001's back-off.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(url: impl Into<String>, connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(connect_timeout).timeout(request_timeout).build()?;
        let backoff = FixedBackOff::new(Duration::from_secs(1), 4).expect("4 attempts is valid");
        Ok(OrderAlerter { http, url: url.into(), backoff })
    }
}

impl<DB: crate::db::AppBackend> EventHandler<DB> for OrderAlerter {
    type Event = OrderPlaced;

    fn options(&self) -> HandlerOptions {
        HandlerOptions::new().group(ORDER_ALERT_GROUP).backoff(self.backoff).circuit_breaker(CircuitBreaker::new(
            3,
            Duration::from_secs(10),
            Duration::from_secs(5),
        ))
    }

    fn handle<'a>(
        &'a self,
        event: OrderPlaced,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let text = format!(
                "order placed: payment {} by user {} for {} points",
                event.payment_id, event.user_id, event.amount
            );
            post_json(
                &self.http,
                &self.url,
                &Alert { payment_id: event.payment_id, user_id: event.user_id, text: text.clone() },
            )
            .await?;
            crate::sql!(
                DB::ex(ctx.tx()),
                query("INSERT INTO order_alert (payment_id, message) VALUES ($1, $2)")
                    .bind(event.payment_id)
                    .bind(&text)
                    .execute()
            )?;
            Ok(())
        })
    }
}
