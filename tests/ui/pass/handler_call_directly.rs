//! The annotated function stays callable, as `name::call(event, &mut ctx)`, so a unit
//! test can run a handler on a `HandlerContext::new(tx, record)` without a container.
//! The tests below are only type-checked (they would need a database), never run.
use reliable_kafka::{event_handler, Backend, Event, EventHandler, HandlerContext, HandlerError, RecordInfo, Sqlite};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "order.placed", key = id)]
pub struct OrderPlaced {
    id: u64,
}

/// Ships an order (these docs go on the struct and on `ship::call`).
#[event_handler(group = "shipping")]
pub async fn ship(event: OrderPlaced, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    if event.id == 0 {
        return Err(HandlerError::permanent("order 0 does not exist"));
    }
    let _attempt = ctx.attempt();
    Ok(())
}

/// Generic over the backend: `call` takes the type parameter.
#[event_handler(group = "audit")]
pub(crate) async fn audit<DB: Backend>(event: OrderPlaced, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    let _ = (event.id, ctx.message_id());
    Ok(())
}

#[event_handler(group = "audit-where")]
async fn audit_where<DB>(_event: OrderPlaced, _ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError>
where
    DB: Backend,
{
    Ok(())
}

#[event_handler(group = "lite")]
async fn lite(OrderPlaced { id }: OrderPlaced, _ctx: &mut HandlerContext<Sqlite>) -> Result<(), HandlerError> {
    let _ = id;
    Ok(())
}

fn record() -> RecordInfo {
    RecordInfo::new(OrderPlaced::TOPIC, uuid::Uuid::nil(), "OrderPlaced")
}

/// What a unit test of the handlers looks like.
async fn unit_test(
    pg: sqlx::Transaction<'static, sqlx::Postgres>,
    lite_tx: sqlx::Transaction<'static, sqlx::Sqlite>,
) -> Result<(), HandlerError> {
    let mut ctx = HandlerContext::new(pg, record()).with_attempt(2);
    ship::call(OrderPlaced { id: 1 }, &mut ctx).await?;
    audit::call(OrderPlaced { id: 1 }, &mut ctx).await?;
    audit::call::<sqlx::Postgres>(OrderPlaced { id: 1 }, &mut ctx).await?;
    let _pg = ctx.into_transaction();

    let mut ctx = HandlerContext::new(lite_tx, record());
    lite::call(OrderPlaced { id: 2 }, &mut ctx).await?;
    audit_where::call(OrderPlaced { id: 2 }, &mut ctx).await?;
    tests::from_child_module(&mut ctx).await
}

mod tests {
    use super::*;

    /// A private handler's `call` is visible in child modules, as a `#[cfg(test)] mod tests`.
    pub(super) async fn from_child_module(ctx: &mut HandlerContext<Sqlite>) -> Result<(), HandlerError> {
        lite::call(OrderPlaced { id: 3 }, ctx).await
    }
}

fn main() {
    fn postgres<H: EventHandler>(_: H) {}
    fn sqlite<H: EventHandler<Sqlite>>(_: H) {}
    postgres(ship);
    postgres(audit);
    sqlite(audit);
    postgres(audit_where);
    sqlite(audit_where);
    sqlite(lite);
    // Never run: needs a database.
    let _ = unit_test;
}
