//! SQL text the dialects share, written once: `$n` placeholders in the order they
//! appear, and no PostgreSQL-only syntax (`FILTER`), so that MySQL's translation
//! ([`super::mysql::dialect`]: `?` placeholders, `INSERT IGNORE`) applies to every
//! statement.

/// Rows deleted per statement by retention (outbox cleanup, dedup pruning); a loop
/// repeats the statement while a full batch was deleted.
pub(crate) const DELETE_BATCH: u64 = 10_000;

/// The outbox insert.
pub(crate) fn outbox_insert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, key_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    )
}

/// The insert of one deduplication row; inserts nothing for a known message id.
pub(crate) fn dedup_insert(table: &str) -> String {
    format!("INSERT INTO {table} (consumer_group, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
/// Deletes up to [`DELETE_BATCH`] deduplication rows of group `$1` processed before
/// `$2`; `row_id` is the dialect's physical row id (`ctid`, `rowid`).
pub(crate) fn dedup_prune(table: &str, row_id: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE {row_id} IN (SELECT {row_id} FROM {table} WHERE consumer_group = $1 \
         AND processed_at < $2 LIMIT {DELETE_BATCH})"
    )
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
/// Deletes up to [`DELETE_BATCH`] outbox rows delivered before `$1`; `key` is a
/// unique column.
pub(crate) fn outbox_cleanup(table: &str, key: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE delivered_at < $1 LIMIT {DELETE_BATCH})"
    )
}

/// Counts of the outbox: pending rows, oldest pending insert time, parked rows,
/// delivered rows kept by retention.
pub(crate) fn outbox_backlog(table: &str) -> String {
    format!(
        "SELECT count(CASE WHEN delivered_at IS NULL AND parked_at IS NULL THEN 1 END), \
         min(CASE WHEN delivered_at IS NULL AND parked_at IS NULL THEN created_at END), \
         count(CASE WHEN parked_at IS NOT NULL THEN 1 END), \
         count(CASE WHEN delivered_at IS NOT NULL THEN 1 END) FROM {table}"
    )
}

/// The relay's gauges, in the columns of [`outbox_backlog`] (delivered rows not
/// counted: 0): pending and parked rows through their partial indexes, never a scan of
/// the delivered rows kept by retention.
pub(crate) fn relay_gauges(table: &str) -> String {
    let pending = "delivered_at IS NULL AND parked_at IS NULL";
    format!(
        "SELECT (SELECT count(*) FROM {table} WHERE {pending}), (SELECT min(created_at) FROM {table} WHERE {pending}), \
         (SELECT count(*) FROM {table} WHERE parked_at IS NOT NULL), (SELECT count(*) FROM {table} WHERE 1 = 0)"
    )
}

/// The insert of a parked record. Parking twice (after a crash) changes nothing: the
/// record's coordinates and time are unique.
pub(crate) fn park_insert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (dead_letter_topic, dead_letter_partition, dead_letter_offset, message_id, original_topic, \
         original_partition, original_offset, consumer_group, reason, error_message, attempts, redrive_count, \
         record_key, payload, headers, dead_lettered_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT DO NOTHING"
    )
}

/// Parked records, newest first, at most `$1`.
pub(crate) fn parked_list(table: &str) -> String {
    format!(
        "SELECT id, dead_letter_topic, dead_letter_partition, dead_letter_offset, message_id, original_topic, \
         original_partition, original_offset, consumer_group, reason, error_message, attempts, redrive_count, \
         record_key, payload, headers, dead_lettered_at, parked_at FROM {table} ORDER BY id DESC LIMIT $1"
    )
}

/// The outbox backlog per topic: pending, oldest pending, parked (topics with
/// delivered rows only are left out).
pub(crate) fn outbox_topics(table: &str) -> String {
    format!(
        "SELECT aggregatetype, count(CASE WHEN delivered_at IS NULL AND parked_at IS NULL THEN 1 END), \
         min(CASE WHEN delivered_at IS NULL AND parked_at IS NULL THEN created_at END), \
         count(CASE WHEN parked_at IS NOT NULL THEN 1 END) FROM {table} \
         WHERE delivered_at IS NULL GROUP BY aggregatetype ORDER BY aggregatetype"
    )
}

/// Parked outbox rows back to pending (attempts reset), of topic `$1` or all (`NULL`).
pub(crate) fn outbox_retry(table: &str) -> String {
    format!(
        "UPDATE {table} SET parked_at = NULL, attempts = 0 \
         WHERE parked_at IS NOT NULL AND delivered_at IS NULL AND aggregatetype = COALESCE($1, aggregatetype)"
    )
}

/// The parked record of id `$1`.
pub(crate) fn parked_get(table: &str) -> String {
    format!(
        "SELECT id, dead_letter_topic, dead_letter_partition, dead_letter_offset, message_id, original_topic, \
         original_partition, original_offset, consumer_group, reason, error_message, attempts, redrive_count, \
         record_key, payload, headers, dead_lettered_at, parked_at FROM {table} WHERE id = $1"
    )
}

/// Deletes the parked record of id `$1`.
pub(crate) fn parked_delete(table: &str) -> String {
    format!("DELETE FROM {table} WHERE id = $1")
}

/// The audit insert.
pub(crate) fn audit_insert() -> String {
    "INSERT INTO rk_audit (operator, action, target, records, detail) VALUES ($1, $2, $3, $4, $5)".to_owned()
}

/// The newest audit rows, at most `$1`.
pub(crate) fn audit_list() -> String {
    "SELECT id, at, operator, action, target, records, detail FROM rk_audit ORDER BY id DESC LIMIT $1".to_owned()
}

/// The number of parked records.
pub(crate) fn parked_count(table: &str) -> String {
    format!("SELECT count(*) FROM {table}")
}
