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
//! Seed 004's scaling by partitioning: with [`PaymentRecovery::partitions`] `n` > 1 on
//! PostgreSQL, payment `id % n` is its partition, and the live recovery instances split
//! the partitions among them with a [`ShardLease`] (a session advisory lock per
//! partition, rebalanced before each run): each instance claims only its partitions'
//! payments, and an instance that dies loses its locks, so the others take its
//! partitions at their next run.
//!
//! On SQLite (one writer at a time) the claim takes no lock, so that the gateway call
//! never holds the database's write lock; the `IN_PROGRESS` guard of [`finalize`]
//! still settles each payment once.

use std::time::Duration;

use reliable_kafka::{CancellationToken, Outbox, ShardLease};

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
    /// Partitions of the pending payments (`id % partitions`), split among the live
    /// instances (PostgreSQL; default 1: every instance claims from all, still never
    /// settling one twice).
    pub partitions: u32,
}

/// Name of the recovery's shard lease, scoped by the database schema (`{schema}`), so
/// that applications in different schemas of one database never share partitions.
pub const RECOVERY_LEASE: &str = "concert-payment-recovery:{schema}";

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
            partitions: 1,
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
        self.recover_partitions(&[0], 1).await
    }

    /// [`PaymentRecovery::recover_once`] for the payments of `partitions` (of `count`:
    /// `id % count` in `partitions`) only; on SQLite, all of them. PostgreSQL and MySQL
    /// claim with `FOR UPDATE SKIP LOCKED`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recover_partitions(&self, partitions: &[u32], count: u32) -> Result<usize, BookingError> {
        let owned: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
        let count = i64::from(count.max(1));
        let mut settled = 0;
        for _ in 0..self.batch {
            let cutoff = (chrono::Utc::now() - self.stuck_after).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut claim = match &self.pool {
                Db::Postgres(_) | Db::MySql(_) => Some(self.pool.begin().await?),
                Db::Sqlite(_) => None,
            };
            const PG_CLAIM: &str =
                "SELECT id, traceparent FROM payment WHERE status = 'IN_PROGRESS' AND updated_at < $1::timestamptz \
                 AND (id % $2)::int4 = ANY($3) ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED";
            const LITE_CLAIM: &str =
                "SELECT id, traceparent FROM payment WHERE status = 'IN_PROGRESS' AND updated_at < $1 ORDER BY updated_at LIMIT 1";
            let stuck: Option<(i64, Option<String>)> = match claim.as_mut() {
                Some(crate::db::Tx::Postgres(tx)) => {
                    sqlx::query_as(PG_CLAIM).bind(&cutoff).bind(count).bind(&owned).fetch_optional(&mut **tx).await?
                }
                Some(crate::db::Tx::MySql(tx)) => {
                    // No array parameters: the partitions (numbers) are written in.
                    let owned: Vec<String> = owned.iter().map(i32::to_string).collect();
                    let my_claim = format!(
                        "SELECT id, traceparent FROM payment WHERE status = 'IN_PROGRESS' AND updated_at < ? \
                         AND id % {count} IN ({}) ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                        owned.join(", ")
                    );
                    let cutoff = chrono::Utc::now() - self.stuck_after;
                    sqlx::query_as(&my_claim).bind(cutoff).fetch_optional(&mut **tx).await?
                }
                Some(tx) => sql!(tx, query_as(LITE_CLAIM).bind(&cutoff).fetch_optional())?,
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

    /// One run: with partitions on PostgreSQL, joins the lease if not a member (again
    /// after an error), rebalances, and recovers the partitions held; else all.
    async fn run_once(&self, lease: &mut Option<ShardLease>) -> Result<usize, BookingError> {
        let pg = match &self.pool {
            Db::Postgres(pg) if self.partitions > 1 => pg,
            _ => return self.recover_once().await,
        };
        if lease.is_none() {
            let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(pg).await?;
            let name = RECOVERY_LEASE.replace("{schema}", &schema);
            *lease = Some(ShardLease::join(pg, &name, self.partitions).await?);
        }
        let Some(member) = lease.as_mut() else { return Ok(0) };
        let rebalanced = member.rebalance().await.map(<[u32]>::to_vec);
        let held = match rebalanced {
            Ok(held) => held,
            Err(e) => {
                // The session may be gone: join again next run.
                *lease = None;
                return Err(e.into());
            }
        };
        if held.is_empty() {
            return Ok(0);
        }
        self.recover_partitions(&held, self.partitions).await
    }

    /// Runs the recovery every `interval` (seed 004: 1 s) on a dedicated thread and
    /// runtime until `shutdown`: [`PaymentRecovery::recover_once`], or with
    /// [`PaymentRecovery::partitions`] > 1 on PostgreSQL, the partitions this instance
    /// holds in the lease.
    ///
    /// # Panics
    /// When the thread or its runtime cannot be created.
    pub fn spawn_bulkhead(self, interval: Duration, shutdown: CancellationToken) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("payment-recovery-{}", self.instance))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("recovery runtime");
                rt.block_on(async move {
                    let mut lease: Option<ShardLease> = None;
                    loop {
                        match self.run_once(&mut lease).await {
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
