//! Events of the application.

use reliable_kafka::Event;
use serde::{Deserialize, Serialize};

/// Topic of [`PaymentFailed`] (seed 000).
pub const PAYMENT_FAILED_TOPIC: &str = "payment.failed";

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
