-- Checkout idempotency (seed 004), payment states with the gateway, notifications
-- (seed 003), order trace and coupons (seed 001), payment recovery (seed 004).

ALTER TABLE payment DROP CONSTRAINT IF EXISTS payment_status_check;
ALTER TABLE payment ADD CONSTRAINT payment_status_check CHECK (status IN ('IN_PROGRESS', 'COMPLETED', 'FAILED'));
ALTER TABLE payment ADD COLUMN IF NOT EXISTS idempotency_key uuid UNIQUE;
ALTER TABLE payment ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS payment_in_progress_idx ON payment (updated_at) WHERE status = 'IN_PROGRESS';

-- A checkout: the idempotency key handed out when the order page opens, and the body
-- of the first payment request made with it.
CREATE TABLE IF NOT EXISTS checkout (
    idempotency_key uuid        PRIMARY KEY,
    reservation_id  bigint      NOT NULL REFERENCES reservation (id),
    request_body    jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Every payment status change, in order.
CREATE TABLE IF NOT EXISTS payment_history (
    id         bigserial PRIMARY KEY,
    payment_id bigint      NOT NULL REFERENCES payment (id),
    status     text        NOT NULL,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_history_payment_idx ON payment_history (payment_id);

-- Payments finalized by the recovery scheduler, one row per recovery (no unique key,
-- so a double recovery would show).
CREATE TABLE IF NOT EXISTS payment_recovery (
    id           bigserial PRIMARY KEY,
    payment_id   bigint      NOT NULL REFERENCES payment (id),
    outcome      text        NOT NULL,
    recovered_by text        NOT NULL,
    recovered_at timestamptz NOT NULL DEFAULT now()
);

-- Notifications sent (telegram-notification group).
CREATE TABLE IF NOT EXISTS notification (
    payment_id bigint      PRIMARY KEY REFERENCES payment (id),
    user_id    bigint      NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);

-- Order information (order-info-group) and alerts (order-alert-group); no unique key,
-- so a duplicate effect would show.
CREATE TABLE IF NOT EXISTS order_info (
    id         bigserial PRIMARY KEY,
    payment_id bigint      NOT NULL,
    user_id    bigint      NOT NULL,
    seat_id    bigint      NOT NULL,
    amount     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_info_payment_idx ON order_info (payment_id);
CREATE TABLE IF NOT EXISTS order_alert (
    id         bigserial PRIMARY KEY,
    payment_id bigint      NOT NULL,
    message    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_alert_payment_idx ON order_alert (payment_id);

-- Coupons: stock per kind, one request and at most one coupon per user and kind.
CREATE TABLE IF NOT EXISTS coupon_stock (
    id        bigserial PRIMARY KEY,
    name      text    NOT NULL,
    total     integer NOT NULL,
    remaining integer NOT NULL CHECK (remaining >= 0)
);
CREATE TABLE IF NOT EXISTS coupon_request (
    coupon_id    bigint      NOT NULL REFERENCES coupon_stock (id),
    user_id      bigint      NOT NULL REFERENCES app_user (id),
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (coupon_id, user_id)
);
CREATE TABLE IF NOT EXISTS coupon (
    id        bigserial PRIMARY KEY,
    coupon_id bigint      NOT NULL REFERENCES coupon_stock (id),
    user_id   bigint      NOT NULL REFERENCES app_user (id),
    code      text        NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (coupon_id, user_id)
);

ALTER TABLE app_user ADD COLUMN IF NOT EXISTS run_id bigint;
CREATE INDEX IF NOT EXISTS app_user_run_idx ON app_user (run_id);

ALTER TABLE reservation ADD COLUMN IF NOT EXISTS queue_token text;
