use reliable_kafka::{event_handler, Event, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

const PARTITIONS: u32 = 3;

#[event_handler(group = "g", topic = PARTITIONS)]
async fn not_a_str(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
