-- Concert reference application on SQLite: the tables of migrations/postgres, with
-- timestamps as RFC 3339 text in UTC and UUIDs as 16-byte blobs (sqlx's encoding).

CREATE TABLE IF NOT EXISTS concert (
    id         INTEGER PRIMARY KEY,
    title      TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS concert_date (
    id                   INTEGER PRIMARY KEY,
    concert_id           INTEGER NOT NULL REFERENCES concert (id),
    starts_at            TEXT    NOT NULL,
    total_seat_count     INTEGER NOT NULL,
    available_seat_count INTEGER NOT NULL CHECK (available_seat_count >= 0)
);

CREATE TABLE IF NOT EXISTS seat (
    id              INTEGER PRIMARY KEY,
    concert_date_id INTEGER NOT NULL REFERENCES concert_date (id),
    number          INTEGER NOT NULL,
    price           INTEGER NOT NULL CHECK (price > 0),
    status          TEXT    NOT NULL CHECK (status IN ('AVAILABLE', 'RESERVED', 'SOLD')),
    UNIQUE (concert_date_id, number)
);

CREATE TABLE IF NOT EXISTS app_user (
    id      INTEGER PRIMARY KEY,
    name    TEXT    NOT NULL,
    balance INTEGER NOT NULL CHECK (balance >= 0),
    run_id  INTEGER
);
CREATE INDEX IF NOT EXISTS app_user_run_idx ON app_user (run_id);

CREATE TABLE IF NOT EXISTS point_history (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES app_user (id),
    payment_id INTEGER,
    kind       TEXT    NOT NULL CHECK (kind IN ('TOPUP', 'CHARGE', 'REFUND')),
    amount     INTEGER NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS point_history_payment_idx ON point_history (payment_id);

CREATE TABLE IF NOT EXISTS reservation (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES app_user (id),
    seat_id         INTEGER NOT NULL REFERENCES seat (id),
    concert_date_id INTEGER NOT NULL REFERENCES concert_date (id),
    status          TEXT    NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED')),
    queue_token     TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS reservation_seat_idx ON reservation (seat_id);

CREATE TABLE IF NOT EXISTS payment (
    id              INTEGER PRIMARY KEY,
    reservation_id  INTEGER NOT NULL UNIQUE REFERENCES reservation (id),
    user_id         INTEGER NOT NULL REFERENCES app_user (id),
    amount          INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('IN_PROGRESS', 'COMPLETED', 'FAILED')),
    charged         BOOLEAN NOT NULL,
    failure_reason  TEXT,
    idempotency_key BLOB UNIQUE,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    compensated_at  TEXT
);
CREATE INDEX IF NOT EXISTS payment_in_progress_idx ON payment (updated_at) WHERE status = 'IN_PROGRESS';

CREATE TABLE IF NOT EXISTS checkout (
    idempotency_key BLOB    PRIMARY KEY,
    reservation_id  INTEGER NOT NULL REFERENCES reservation (id),
    request_body    TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS payment_history (
    id         INTEGER PRIMARY KEY,
    payment_id INTEGER NOT NULL REFERENCES payment (id),
    status     TEXT    NOT NULL,
    note       TEXT,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS payment_history_payment_idx ON payment_history (payment_id);

CREATE TABLE IF NOT EXISTS payment_recovery (
    id           INTEGER PRIMARY KEY,
    payment_id   INTEGER NOT NULL REFERENCES payment (id),
    outcome      TEXT    NOT NULL,
    recovered_by TEXT    NOT NULL,
    recovered_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS notification (
    payment_id INTEGER PRIMARY KEY REFERENCES payment (id),
    user_id    INTEGER NOT NULL,
    sent_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS order_info (
    id         INTEGER PRIMARY KEY,
    payment_id INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    seat_id    INTEGER NOT NULL,
    amount     INTEGER NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS order_info_payment_idx ON order_info (payment_id);

CREATE TABLE IF NOT EXISTS order_alert (
    id         INTEGER PRIMARY KEY,
    payment_id INTEGER NOT NULL,
    message    TEXT    NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS order_alert_payment_idx ON order_alert (payment_id);

CREATE TABLE IF NOT EXISTS coupon_stock (
    id        INTEGER PRIMARY KEY,
    name      TEXT    NOT NULL,
    total     INTEGER NOT NULL,
    remaining INTEGER NOT NULL CHECK (remaining >= 0)
);
CREATE TABLE IF NOT EXISTS coupon_request (
    coupon_id    INTEGER NOT NULL REFERENCES coupon_stock (id),
    user_id      INTEGER NOT NULL REFERENCES app_user (id),
    requested_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (coupon_id, user_id)
);
CREATE TABLE IF NOT EXISTS coupon (
    id        INTEGER PRIMARY KEY,
    coupon_id INTEGER NOT NULL REFERENCES coupon_stock (id),
    user_id   INTEGER NOT NULL REFERENCES app_user (id),
    code      TEXT    NOT NULL,
    issued_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (coupon_id, user_id)
);
