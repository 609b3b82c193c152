-- Concert reference application: booking and payment.
CREATE TABLE IF NOT EXISTS concert (
    id         bigserial PRIMARY KEY,
    title      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS concert_date (
    id                   bigserial PRIMARY KEY,
    concert_id           bigint      NOT NULL REFERENCES concert (id),
    starts_at            timestamptz NOT NULL,
    total_seat_count     integer     NOT NULL,
    available_seat_count integer     NOT NULL CHECK (available_seat_count >= 0)
);

CREATE TABLE IF NOT EXISTS seat (
    id              bigserial PRIMARY KEY,
    concert_date_id bigint  NOT NULL REFERENCES concert_date (id),
    number          integer NOT NULL,
    price           bigint  NOT NULL CHECK (price > 0),
    status          text    NOT NULL CHECK (status IN ('AVAILABLE', 'RESERVED', 'SOLD')),
    UNIQUE (concert_date_id, number)
);

CREATE TABLE IF NOT EXISTS app_user (
    id      bigserial PRIMARY KEY,
    name    text   NOT NULL,
    balance bigint NOT NULL CHECK (balance >= 0)
);

-- Every change of a balance, so that balance = sum(amount) can be checked.
CREATE TABLE IF NOT EXISTS point_history (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES app_user (id),
    payment_id bigint,
    kind       text        NOT NULL CHECK (kind IN ('TOPUP', 'CHARGE', 'REFUND')),
    amount     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS point_history_payment_idx ON point_history (payment_id);

CREATE TABLE IF NOT EXISTS reservation (
    id              bigserial PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES app_user (id),
    seat_id         bigint      NOT NULL REFERENCES seat (id),
    concert_date_id bigint      NOT NULL REFERENCES concert_date (id),
    status          text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reservation_seat_idx ON reservation (seat_id);

CREATE TABLE IF NOT EXISTS payment (
    id             bigserial PRIMARY KEY,
    reservation_id bigint      NOT NULL UNIQUE REFERENCES reservation (id),
    user_id        bigint      NOT NULL REFERENCES app_user (id),
    amount         bigint      NOT NULL,
    status         text        NOT NULL CHECK (status IN ('COMPLETED', 'FAILED')),
    charged        boolean     NOT NULL,
    failure_reason text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    compensated_at timestamptz
);
