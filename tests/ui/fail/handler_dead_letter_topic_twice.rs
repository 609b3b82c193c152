use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

#[event_handler(group = "g", dlq = "a.DLQ", dead_letter_topic = "b.DLQ")]
async fn old_then_new(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g", dead_letter_topic = "a.DLQ", dlq = "b.DLQ")]
async fn new_then_old(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g", dead_letter_topic = "a.DLQ", dead_letter_topic = "b.DLQ")]
async fn repeated(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
