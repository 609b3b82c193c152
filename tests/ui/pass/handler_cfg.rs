//! Outer attributes of the function reach every generated item: a `#[cfg]` that is
//! false removes the struct, its `EventHandler` impl, `call` and the `dlq` deprecation
//! (or the twins below would clash, and `deny(deprecated)` would fail); lint
//! attributes apply to the handler's body.
#![deny(deprecated, unfulfilled_lint_expectations)]

use reliable_kafka::{event_handler, Event, EventHandler, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed")]
struct PaymentFailed {
    id: u64,
}

#[cfg(any())]
#[event_handler(group = "g", dlq = "payment.failed.DLQ")]
async fn twin(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[cfg(all())]
#[event_handler(group = "g")]
async fn twin(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "h", dlq = "payment.failed.DLQ")]
#[cfg(any())]
async fn other_twin(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(group = "h")]
#[cfg(all())]
async fn other_twin(_e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    Ok(())
}

/// `expect` goes on `call` only, where the body is: fulfilled there, not left
/// unfulfilled on the struct or the impls.
#[event_handler(group = "i")]
#[expect(unused_variables)]
#[allow(clippy::needless_return)]
async fn linted(e: PaymentFailed, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    let unused = e.id;
    return Ok(());
}

fn main() {
    fn handler<H: EventHandler>(_: H) {}
    handler(twin);
    handler(other_twin);
    handler(linted);
}
