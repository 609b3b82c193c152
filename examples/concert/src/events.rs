//! Events of the application, with the topics of the seed documents.

use reliable_kafka::Event;
use serde::{Deserialize, Serialize};

/// Topic of [`PaymentFailed`] (seed 000).
pub const PAYMENT_FAILED_TOPIC: &str = "payment.failed";
/// Topic of [`PaymentCompleted`] (seed 003).
pub const PAYMENT_NOTIFICATION_TOPIC: &str = "payment-notification";
/// Topic of [`OrderPlaced`] (seed 001).
pub const TRACE_TOPIC: &str = "trace-topic";
/// Topic of [`CouponIssueRequested`] (seed 001).
pub const COUPON_TOPIC: &str = "coupon-topic";
/// Topic of [`PaymentRequested`] (seed 002; the seed names none).
pub const PAYMENT_REQUESTED_TOPIC: &str = "payment.requested";

/// Every topic of the application, for creation at start-up.
pub const TOPICS: &[&str] =
    &[PAYMENT_FAILED_TOPIC, PAYMENT_NOTIFICATION_TOPIC, TRACE_TOPIC, COUPON_TOPIC, PAYMENT_REQUESTED_TOPIC];

/// The payment use case charged the points (or found them short) and asks for the
/// payment record to be created (seed 002, with
/// [`PaymentCreation::Event`](crate::payment_event::PaymentCreation::Event)); the
/// `payment-create-group` creates it. Keyed by reservation, like [`PaymentFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(topic = "payment.requested", key = reservation_id, version = 1)]
pub struct PaymentRequested {
    /// The checkout's idempotency key, unique per payment.
    pub idempotency_key: uuid::Uuid,
    /// Reservation paid.
    pub reservation_id: i64,
    /// Paying user.
    pub user_id: i64,
    /// Seat.
    pub seat_id: i64,
    /// Concert date.
    pub concert_date_id: i64,
    /// Amount in points.
    pub amount: i64,
    /// Whether the points were charged; false: insufficient balance, the payment is
    /// created `FAILED` and the seat released.
    pub charged: bool,
    /// The queue token the payment was made with.
    pub queue_token: String,
}

/// A payment failed; everything needed to compensate travels with the event so the
/// consumers need no call back to the payment service. Keyed by reservation, so all
/// events of one reservation stay in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(topic = "payment.failed", key = reservation_id, version = 1)]
pub struct PaymentFailed {
    /// Failed payment.
    pub payment_id: i64,
    /// Reservation to fail.
    pub reservation_id: i64,
    /// Paying user.
    pub user_id: i64,
    /// Seat to release.
    pub seat_id: i64,
    /// Concert date whose available seat count to restore.
    pub concert_date_id: i64,
    /// Amount in points.
    pub amount: i64,
    /// Whether the balance was charged (then it must be refunded).
    pub charged: bool,
    /// The queue token the payment was made with (expired by the cleanup).
    pub queue_token: String,
    /// Why the payment failed.
    pub reason: String,
}

/// A payment completed (event type `payment.completed`), published to
/// `payment-notification` for the user's notification: seed 003's
/// `PaymentCompletedEvent` (`mail`, `concertTitle`, `startDt`, `confirmDt`, `amount`,
/// here in snake case) with the ids that key and deduplicate it. Version 2; a version-1
/// record (ids and amount only) reads with the seed's fields empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(topic = "payment-notification", key = user_id, version = 2, name = "payment.completed")]
pub struct PaymentCompleted {
    /// Payment.
    pub payment_id: i64,
    /// Reservation confirmed.
    pub reservation_id: i64,
    /// User to notify.
    pub user_id: i64,
    /// Amount in points.
    pub amount: i64,
    /// The user's mail address, if known (seed: `mail`).
    #[serde(default)]
    pub mail: Option<String>,
    /// Title of the concert (seed: `concertTitle`).
    #[serde(default)]
    pub concert_title: String,
    /// When the concert date starts, UTC (seed: `startDt`).
    #[serde(default)]
    pub starts_at: chrono::DateTime<chrono::Utc>,
    /// When the payment was confirmed, UTC (seed: `confirmDt`).
    #[serde(default)]
    pub confirmed_at: chrono::DateTime<chrono::Utc>,
}

/// An order was placed (a payment completed), published to `trace-topic` for the
/// order-information store and the alert sender (seed 001).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(topic = "trace-topic", key = reservation_id, version = 1)]
pub struct OrderPlaced {
    /// Payment.
    pub payment_id: i64,
    /// Reservation.
    pub reservation_id: i64,
    /// Buyer.
    pub user_id: i64,
    /// Seat.
    pub seat_id: i64,
    /// Amount in points.
    pub amount: i64,
}

/// A user was granted a coupon (stock already decremented); the consumer creates it
/// (seed 001). Keyed by coupon, so one coupon's requests stay in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(topic = "coupon-topic", key = coupon_id, version = 1)]
pub struct CouponIssueRequested {
    /// Coupon kind.
    pub coupon_id: i64,
    /// User.
    pub user_id: i64,
}
