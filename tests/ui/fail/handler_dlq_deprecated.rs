//! `dlq` still works but is deprecated: a warning at the key, made an error here.
#![deny(deprecated)]

use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

#[event_handler(group = "g", dlq = "payment.failed.DLQ")]
async fn old_key(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g", dead_letter_topic = "payment.failed.DLQ")]
async fn new_key(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
