//! `topic`, `group` and `dead_letter_topic` take any `&'static str` expression: a
//! literal, a `const`, an associated const, `concat!(..)`; `retry_topics` a literal
//! of delays, `circuit_breaker` and `key_blocking` expressions.
use reliable_kafka::{event_handler, Event, EventHandler, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

const GROUP: &str = "payment-compensator-group";

mod names {
    pub const PARKED: &str = "payment.failed.parked";
}

#[event_handler(group = GROUP, topic = PaymentFailed::TOPIC, dead_letter_topic = names::PARKED)]
async fn from_consts(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(
    group = concat!("payment", "-audit-group"),
    topic = <PaymentFailed as Event>::TOPIC,
    dead_letter_topic = concat!("payment.failed", ".audit.DLQ"),
)]
async fn from_macros(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "literal-group", topic = "payment.failed", dead_letter_topic = "payment.failed.DLQ")]
async fn from_literals(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(
    group = "notification-group",
    retry_topics = "1s, 10s",
    circuit_breaker = reliable_kafka::CircuitBreaker::new(3, std::time::Duration::from_secs(10), std::time::Duration::from_secs(5)),
)]
async fn with_retries(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "seat-group", key_blocking = true)]
async fn key_blocked(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

fn options<H: EventHandler>(handler: H) -> String {
    format!("{:?}", handler.options())
}

fn main() {
    let o = options(from_consts);
    for name in ["\"payment-compensator-group\"", "\"payment.failed\"", "\"payment.failed.parked\""] {
        assert!(o.contains(name), "{name} missing in {o}");
    }
    let o = options(from_macros);
    for name in ["\"payment-audit-group\"", "\"payment.failed\"", "\"payment.failed.audit.DLQ\""] {
        assert!(o.contains(name), "{name} missing in {o}");
    }
    let o = options(with_retries);
    for part in ["delays: [1s, 10s]", "consecutive_failures: 3"] {
        assert!(o.contains(part), "{part} missing in {o}");
    }
    assert!(options(key_blocked).contains("key_blocking: Some(true)"));
    let o = options(from_literals);
    for name in ["\"literal-group\"", "\"payment.failed\"", "\"payment.failed.DLQ\""] {
        assert!(o.contains(name), "{name} missing in {o}");
    }
}
