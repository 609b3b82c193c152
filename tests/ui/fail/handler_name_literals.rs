use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

#[event_handler(group = 42)]
async fn integer_group(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g", topic = "", dead_letter_topic = b"x.DLQ")]
async fn empty_topic_byte_dlq(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
