use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

#[event_handler(group = "g")]
fn not_async(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g")]
async fn one_argument(_e: PaymentFailed) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g")]
async fn shared_context(_e: PaymentFailed, _ctx: &HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "g")]
async fn no_return(_e: PaymentFailed, _ctx: &mut HandlerContext) {}

#[event_handler(group = "g")]
async fn wrong_return(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), String> {
    Ok(())
}

fn main() {}
