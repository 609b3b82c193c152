-- reliable-kafka: what operators did to failed records (replays, purges, retries), one
-- row per operation, written by the operations API and the `rk` CLI.
CREATE TABLE IF NOT EXISTS rk_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    operator  TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    records   INTEGER NOT NULL,
    detail    TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS rk_audit_at_idx ON rk_audit (at);
