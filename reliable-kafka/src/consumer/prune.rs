//! Retention of the deduplication table: rows of a group older than
//! `processed_retention` are deleted every [`PRUNE_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::store::sql::DELETE_BATCH;
use crate::worker::sleep_or_shutdown;
use crate::Backend;

/// How often a container deletes its group's expired deduplication rows.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes deduplication rows of `group` older than `retention`, every
/// [`PRUNE_INTERVAL`], in statements of at most 10 000 rows, until `shutdown`.
pub(crate) async fn prune_processed<DB: Backend>(
    pool: Pool<DB>,
    sql: Arc<DB::DedupSql>,
    group: Arc<str>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        loop {
            match DB::prune_dedup(&pool, &sql, &group, crate::store::cutoff(retention)).await {
                Ok(n) if n >= DELETE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(%group, error = %crate::report(&e), "pruning the deduplication table failed");
                    break;
                }
            }
        }
        if sleep_or_shutdown(PRUNE_INTERVAL, &shutdown).await {
            return;
        }
    }
}
