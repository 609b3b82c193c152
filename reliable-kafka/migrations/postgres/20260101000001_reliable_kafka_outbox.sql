-- reliable-kafka: transactional outbox.
-- Columns id, aggregatetype, aggregateid, type and payload follow Debezium's outbox
-- event router, so the same table can later be read by CDC (set
-- route.topic.replacement=${routedByValue}: aggregatetype holds the destination topic).
CREATE TABLE IF NOT EXISTS rk_outbox (
    id             uuid        PRIMARY KEY,
    seq            bigserial   NOT NULL,
    aggregatetype  text        NOT NULL,
    aggregateid    text,
    type           text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text
);

-- The relay claims undelivered rows in insertion order.
CREATE INDEX IF NOT EXISTS rk_outbox_pending_idx ON rk_outbox (seq) WHERE delivered_at IS NULL;
-- Retention deletes delivered rows by age.
CREATE INDEX IF NOT EXISTS rk_outbox_delivered_idx ON rk_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Wake relays at commit: one notification per inserting statement (PostgreSQL folds
-- identical notifications of one transaction into one).
CREATE OR REPLACE FUNCTION rk_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rk_outbox', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS rk_outbox_notify ON rk_outbox;
CREATE TRIGGER rk_outbox_notify AFTER INSERT ON rk_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION rk_outbox_notify();
