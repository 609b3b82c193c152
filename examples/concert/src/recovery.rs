//! Payment recovery (seed 004): settles payments stuck `IN_PROGRESS` (the gateway
//! timed out, or the process died between charge and outcome) by asking the gateway
//! what happened.
//!
//! It runs as a **bulkhead**: on its own OS thread with its own single-threaded Tokio
//! runtime and its own small connection pool, so a slow gateway or a backlog of stuck
//! payments never takes threads or connections from request handling. Several
//! instances can run at once: each payment is claimed with `FOR UPDATE SKIP LOCKED`
//! and finalized only while still `IN_PROGRESS`, so none is recovered twice.
//!
//! On SQLite (one writer at a time) the claim takes no lock, so that the gateway call
//! never holds the database's write lock; the `IN_PROGRESS` guard of [`finalize`]
//! still settles each payment once.

use std::time::Duration;

use reliable_kafka::{CancellationToken, Outbox};

use crate::booking::{finalize, BookingError, Outcome};
use crate::db::{Db, NOW_LITE};
use crate::gateway::{ChargeStatus, GatewayClient};
use crate::sql;
use crate::store::Store;

/// The recovery scheduler.
#[derive(Debug, Clone)]
pub struct PaymentRecovery {
    pool: Db,
    store: Store,
    gateway: GatewayClient,
    outbox: Outbox,
    /// Name written to `payment_recovery.recovered_by`.
    pub instance: String,
    /// A payment counts as stuck after this long `IN_PROGRESS`.
    pub stuck_after: Duration,
    /// Payments settled per run at most.
    pub batch: usize,
}

impl PaymentRecovery {
    /// A scheduler named `instance`.
    pub fn new(
        pool: Db,
        store: Store,
        gateway: GatewayClient,
        instance: impl Into<String>,
        stuck_after: Duration,
    ) -> Self {
        PaymentRecovery {
            pool,
            store,
            gateway,
            outbox: Outbox::new(),
            instance: instance.into(),
            stuck_after,
            batch: 100,
        }
    }

    /// Settles up to `batch` stuck payments; returns how many.
    ///
    /// For each: lock it (`SKIP LOCKED`: another instance's claim is left alone), ask the
    /// gateway (with the client's timeouts and backoff), write the outcome with
    /// [`finalize`] — approved completes it; declined, or never received by the gateway,
    /// fails it (refunded by the compensator) — and record the recovery.
    ///
    /// # Errors
    /// Database errors; a gateway that cannot be asked leaves the payment for the next
    /// run.
    pub async fn recover_once(&self) -> Result<usize, BookingError> {
        let mut settled = 0;
        for _ in 0..self.batch {
            let cutoff = (chrono::Utc::now() - self.stuck_after).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut claim = match &self.pool {
                Db::Postgres(_) => Some(self.pool.begin().await?),
                Db::Sqlite(_) => None,
            };
            const PG_CLAIM: &str =
                "SELECT id, traceparent FROM payment WHERE status = 'IN_PROGRESS' AND updated_at < $1::timestamptz \
                                    ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED";
            const LITE_CLAIM: &str =
                "SELECT id, traceparent FROM payment WHERE status = 'IN_PROGRESS' AND updated_at < $1 ORDER BY updated_at LIMIT 1";
            let stuck: Option<(i64, Option<String>)> = match claim.as_mut() {
                Some(tx) => sql!(tx, query_as(PG_CLAIM).bind(&cutoff).fetch_optional())?,
                None => sql!(&self.pool, query_as(LITE_CLAIM).bind(&cutoff).fetch_optional())?,
            };
            let Some((payment_id, traceparent)) = stuck else { break };
            // The settlement continues the trace of the request that created the payment.
            let span = tracing::info_span!("recover_payment", "otel.name" = "recover payment", payment_id);
            reliable_kafka::telemetry::set_parent_from_headers(&span, traceparent.as_deref(), None);
            let outcome = match self.gateway.status(payment_id).await {
                Ok(Some(ChargeStatus::Approved)) => Outcome::Approved,
                Ok(Some(ChargeStatus::Declined)) | Ok(None) => Outcome::Declined,
                Err(e) => {
                    tracing::warn!(payment_id, error = %reliable_kafka::report(&e), "recovery could not reach the gateway");
                    // Touch it so the next run tries the other stuck payments first.
                    let mut tx = match claim {
                        Some(tx) => tx,
                        None => self.pool.begin().await?,
                    };
                    let touch = format!("UPDATE payment SET updated_at = {NOW_LITE} WHERE id = $1");
                    sql!(
                        &mut tx,
                        query(("UPDATE payment SET updated_at = now() WHERE id = $1", touch.as_str()))
                            .bind(payment_id)
                            .execute()
                    )?;
                    tx.commit().await?;
                    continue;
                }
            };
            // Same transaction as the claim: the lock holds until the outcome commits, and
            // the `status = 'IN_PROGRESS'` guard makes a race with the request path harmless.
            let mut tx = match claim {
                Some(tx) => tx,
                None => self.pool.begin().await?,
            };
            let settle = finalize(tx.ex(), &self.outbox, payment_id, outcome, "recovered");
            let Some(after) = tracing::Instrument::instrument(settle, span).await? else {
                tx.commit().await?;
                continue;
            };
            let outcome = format!("{outcome:?}");
            sql!(
                &mut tx,
                query("INSERT INTO payment_recovery (payment_id, outcome, recovered_by) VALUES ($1, $2, $3)")
                    .bind(payment_id)
                    .bind(&outcome)
                    .bind(&self.instance)
                    .execute()
            )?;
            tx.commit().await?;
            if let Some(after) = after {
                if let Err(e) = after.run(&self.store).await {
                    tracing::warn!(payment_id, error = %reliable_kafka::report(&e), "releasing hold and token failed");
                }
            }
            settled += 1;
        }
        Ok(settled)
    }

    /// Runs [`PaymentRecovery::recover_once`] every `interval` (seed 004: 1 s) on a
    /// dedicated thread and runtime until `shutdown`.
    ///
    /// # Panics
    /// When the thread or its runtime cannot be created.
    pub fn spawn_bulkhead(self, interval: Duration, shutdown: CancellationToken) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("payment-recovery-{}", self.instance))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("recovery runtime");
                rt.block_on(async move {
                    loop {
                        match self.recover_once().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(instance = %self.instance, settled = n, "recovered stuck payments"),
                            Err(e) => {
                                tracing::warn!(error = %reliable_kafka::report(&e), "payment recovery run failed")
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                });
            })
            .expect("recovery thread")
    }
}
