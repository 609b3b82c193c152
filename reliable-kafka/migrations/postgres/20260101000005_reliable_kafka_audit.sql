-- reliable-kafka: what operators did to failed records (replays, purges, retries), one
-- row per operation, written by the operations API and the `rk` CLI.
CREATE TABLE IF NOT EXISTS rk_audit (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    operator  text        NOT NULL,
    action    text        NOT NULL,
    target    text        NOT NULL,
    records   bigint      NOT NULL,
    detail    text        NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS rk_audit_at_idx ON rk_audit (at);
