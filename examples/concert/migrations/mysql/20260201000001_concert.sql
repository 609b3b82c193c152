-- Concert reference application on MySQL 8.0.16+ / MariaDB 10.6+: the tables of
-- migrations/postgres in their final shape, in one step. Timestamps are DATETIME(6) in
-- UTC, UUIDs BINARY(16) (sqlx's encoding), JSON bodies LONGTEXT.

CREATE TABLE IF NOT EXISTS concert (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    title      TEXT        NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
);

CREATE TABLE IF NOT EXISTS concert_date (
    id                   BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    concert_id           BIGINT      NOT NULL,
    starts_at            DATETIME(6) NOT NULL,
    total_seat_count     INT         NOT NULL,
    available_seat_count INT         NOT NULL CHECK (available_seat_count >= 0),
    FOREIGN KEY (concert_id) REFERENCES concert (id)
);

CREATE TABLE IF NOT EXISTS seat (
    id              BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    concert_date_id BIGINT      NOT NULL,
    number          INT         NOT NULL,
    price           BIGINT      NOT NULL CHECK (price > 0),
    status          VARCHAR(16) NOT NULL CHECK (status IN ('AVAILABLE', 'RESERVED', 'SOLD')),
    UNIQUE KEY seat_number_idx (concert_date_id, number),
    FOREIGN KEY (concert_date_id) REFERENCES concert_date (id)
);

CREATE TABLE IF NOT EXISTS app_user (
    id      BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name    TEXT   NOT NULL,
    balance BIGINT NOT NULL CHECK (balance >= 0),
    run_id  BIGINT,
    mail    TEXT,
    KEY app_user_run_idx (run_id)
);

CREATE TABLE IF NOT EXISTS point_history (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    payment_id BIGINT,
    kind       VARCHAR(16) NOT NULL CHECK (kind IN ('TOPUP', 'CHARGE', 'REFUND')),
    amount     BIGINT      NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY point_history_payment_idx (payment_id),
    FOREIGN KEY (user_id) REFERENCES app_user (id)
);

CREATE TABLE IF NOT EXISTS reservation (
    id              BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id         BIGINT      NOT NULL,
    seat_id         BIGINT      NOT NULL,
    concert_date_id BIGINT      NOT NULL,
    status          VARCHAR(16) NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED')),
    queue_token     TEXT,
    created_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY reservation_seat_idx (seat_id),
    FOREIGN KEY (user_id) REFERENCES app_user (id),
    FOREIGN KEY (seat_id) REFERENCES seat (id),
    FOREIGN KEY (concert_date_id) REFERENCES concert_date (id)
);

CREATE TABLE IF NOT EXISTS payment (
    id              BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    reservation_id  BIGINT      NOT NULL,
    user_id         BIGINT      NOT NULL,
    amount          BIGINT      NOT NULL,
    status          VARCHAR(16) NOT NULL CHECK (status IN ('IN_PROGRESS', 'COMPLETED', 'FAILED')),
    charged         BOOLEAN     NOT NULL,
    failure_reason  TEXT,
    idempotency_key BINARY(16),
    created_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    compensated_at  DATETIME(6),
    traceparent     TEXT,
    UNIQUE KEY payment_reservation_idx (reservation_id),
    UNIQUE KEY payment_idempotency_key_idx (idempotency_key),
    -- The recovery scheduler's scan of stuck payments (PostgreSQL: a partial index).
    KEY payment_in_progress_idx (status, updated_at),
    FOREIGN KEY (reservation_id) REFERENCES reservation (id),
    FOREIGN KEY (user_id) REFERENCES app_user (id)
);

CREATE TABLE IF NOT EXISTS checkout (
    idempotency_key BINARY(16)  NOT NULL PRIMARY KEY,
    reservation_id  BIGINT      NOT NULL,
    request_body    LONGTEXT,
    created_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    FOREIGN KEY (reservation_id) REFERENCES reservation (id)
);

CREATE TABLE IF NOT EXISTS payment_history (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_id BIGINT      NOT NULL,
    status     VARCHAR(32) NOT NULL,
    note       TEXT,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY payment_history_payment_idx (payment_id),
    FOREIGN KEY (payment_id) REFERENCES payment (id)
);

CREATE TABLE IF NOT EXISTS payment_recovery (
    id           BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_id   BIGINT      NOT NULL,
    outcome      TEXT        NOT NULL,
    recovered_by TEXT        NOT NULL,
    recovered_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    FOREIGN KEY (payment_id) REFERENCES payment (id)
);

CREATE TABLE IF NOT EXISTS notification (
    payment_id BIGINT      NOT NULL PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    sent_at    DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    FOREIGN KEY (payment_id) REFERENCES payment (id)
);

CREATE TABLE IF NOT EXISTS order_info (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_id BIGINT      NOT NULL,
    user_id    BIGINT      NOT NULL,
    seat_id    BIGINT      NOT NULL,
    amount     BIGINT      NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY order_info_payment_idx (payment_id)
);

CREATE TABLE IF NOT EXISTS order_alert (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_id BIGINT      NOT NULL,
    message    TEXT        NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY order_alert_payment_idx (payment_id)
);

CREATE TABLE IF NOT EXISTS coupon_stock (
    id        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name      TEXT   NOT NULL,
    total     INT    NOT NULL,
    remaining INT    NOT NULL CHECK (remaining >= 0)
);

CREATE TABLE IF NOT EXISTS coupon_request (
    coupon_id    BIGINT      NOT NULL,
    user_id      BIGINT      NOT NULL,
    requested_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (coupon_id, user_id),
    FOREIGN KEY (coupon_id) REFERENCES coupon_stock (id),
    FOREIGN KEY (user_id) REFERENCES app_user (id)
);

CREATE TABLE IF NOT EXISTS coupon (
    id        BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    coupon_id BIGINT      NOT NULL,
    user_id   BIGINT      NOT NULL,
    code      TEXT        NOT NULL,
    issued_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    UNIQUE KEY coupon_user_idx (coupon_id, user_id),
    FOREIGN KEY (coupon_id) REFERENCES coupon_stock (id),
    FOREIGN KEY (user_id) REFERENCES app_user (id)
);
