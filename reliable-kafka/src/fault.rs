//! Fail points and sabotage switches inside the library, for fault-injection harnesses
//! (feature `testing`, see [`crate::testing`]). Without the feature, `fault_point!`
//! expands to nothing and [`sabotaged`] is a constant `false`.

/// After the handler's transaction is checked, before it commits.
pub const CONSUMER_BEFORE_COMMIT: &str = "rk-consumer-before-commit";
/// After the handler's transaction committed, before its offset is stored.
pub const CONSUMER_AFTER_COMMIT: &str = "rk-consumer-after-commit";
/// After rows are claimed, before they are sent.
pub const RELAY_BEFORE_SEND: &str = "rk-relay-before-send";
/// After Kafka acknowledged rows, before they are marked.
pub const RELAY_AFTER_SEND: &str = "rk-relay-after-send";

/// Switch: the consumer skips the deduplication insert.
pub const SABOTAGE_NO_DEDUP: &str = "rk-sabotage-no-dedup";
/// Switch: the consumer stores and commits offsets before it processes a batch.
pub const SABOTAGE_OFFSETS_BEFORE_COMMIT: &str = "rk-sabotage-offsets-before-commit";
/// Switch: the relay marks rows delivered before Kafka acknowledged them.
pub const SABOTAGE_MARK_BEFORE_SEND: &str = "rk-sabotage-mark-before-send";

/// A fail point of the `fail` crate (feature `testing`); nothing without the feature.
macro_rules! fault_point {
    ($name:expr) => {
        #[cfg(feature = "testing")]
        fail::fail_point!($name);
        #[cfg(not(feature = "testing"))]
        let _ = $name;
    };
}

/// Whether the sabotage switch `name` is on (`fail::cfg(name, "return")`); always
/// false without the `testing` feature.
#[cfg_attr(not(feature = "testing"), allow(unused_variables))]
pub(crate) fn sabotaged(name: &str) -> bool {
    #[cfg(feature = "testing")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "testing"))]
    {
        false
    }
}
