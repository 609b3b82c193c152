//! The relay's sequence numbers (`OutboxRelayBuilder::sequence_numbers`): the relay's
//! side of deduplication at the cost of a watermark (`consumer/watermark.rs`).
//!
//! The consumer takes a numbered record at or below the highest number it applied from
//! the record's source for a duplicate. That is safe when, in every partition, the
//! first copy of a row comes after no higher number of its source. The relay keeps
//! that as follows:
//!
//! 1. **One numberer per source.** A source is an outbox table's shard (`<uuid>/<shard>`,
//!    the uuid random per table and shard, in `rk_relay_sequences`). Only the shard's
//!    owner numbers its rows, at their first claim, from the shard's counter in the
//!    database, in claim order, so numbers grow in the order the rows are enqueued.
//!    A later owner goes on from the counter.
//! 2. **A row keeps its number** when it is sent again (a crash, a fatal producer
//!    error), and rows already numbered are claimed again first, in number order.
//! 3. **No gap inside a producer's sends.** The producer is idempotent with
//!    `enable.gapless.guarantee=true` and `message.timeout.ms=0` (no local timeout), so
//!    of one producer's records to a partition the broker keeps a prefix: an error
//!    that would leave a gap stops the producer (a fatal error) instead. After one the
//!    relay builds a new producer and sends the failed rows again with their numbers,
//!    lowest first: copies the broker kept are at or below the watermark, the others
//!    above it.
//! 4. **A row the broker refused gets a new number.** A send that fails without a
//!    fatal error was not written (librdkafka gives up on a record only for errors it
//!    cannot retry, and never on a timeout here), but later rows of its partition may
//!    have been since: its next claim numbers it again, above them. To close the window
//!    between that failure and the database learning of it, a batch is handed to the
//!    producer only once every record of the batch before it is acknowledged. One
//!    case costs a duplicate rather than a loss: a row whose copy may have been written
//!    (kept through a fatal error or a crash) and whose next send is refused outright
//!    (its topic deleted, its permission revoked) is applied twice if that copy was.
//!
//! A crash at any point leaves numbered rows pending; their next owner sends them in
//! number order (rule 2), and every copy the crashed producer had written is a prefix
//! of what it sent (rule 3). Re-driven, retried and replayed records lose the number
//! header (`crate::headers::RELAY_SEQ`): a watermark never swallows a copy sent again
//! on purpose.

use std::sync::RwLock;

use rdkafka::producer::Producer as _;
use rdkafka::ClientConfig;

use crate::kafka::{HealthContext, Producer};
use crate::{ConfigError, Error};

/// The producer settings a relay with sequence numbers needs, and may not be given
/// otherwise.
pub(crate) const SEQUENCED_PRESETS: [(&str, &str); 3] =
    [("enable.idempotence", "true"), ("enable.gapless.guarantee", "true"), ("message.timeout.ms", "0")];

/// Fails naming the first key of `cfg` that breaks [`SEQUENCED_PRESETS`].
pub(crate) fn check_sequenced(cfg: &ClientConfig) -> Result<(), ConfigError> {
    for (key, wanted) in SEQUENCED_PRESETS {
        if cfg.get(key).is_some_and(|v| v != wanted) {
            return Err(ConfigError::invalid(key, format!("must be {wanted} for a relay with sequence numbers")));
        }
    }
    if cfg.get("delivery.timeout.ms").is_some_and(|v| v != "0") {
        return Err(ConfigError::invalid(
            "delivery.timeout.ms",
            "must be 0 (no local timeout) for a relay with sequence numbers",
        ));
    }
    Ok(())
}

/// How often a relay with sequence numbers, waiting for acknowledgements, looks
/// whether its producer stopped with a fatal error.
pub(crate) const FATAL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The relay's producer, replaced after a fatal error.
pub(crate) struct ProducerSlot {
    current: RwLock<Producer>,
    config: ClientConfig,
    context: HealthContext,
}

impl ProducerSlot {
    pub(crate) fn new(config: ClientConfig, context: HealthContext) -> Result<Self, Error> {
        let producer = config.create_with_context(context.clone()).map_err(Error::kafka("create relay producer"))?;
        Ok(ProducerSlot { current: RwLock::new(producer), config, context })
    }

    /// The producer in use.
    pub(crate) fn get(&self) -> Producer {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the producer in use stopped with a fatal error.
    pub(crate) fn is_fatal(&self) -> bool {
        self.get().client().fatal_error().is_some()
    }

    /// Fails every record a producer stopped by a fatal error still holds (in its
    /// queues or in flight: possibly written), so that the relay's wait ends and the
    /// rows go out again, with their numbers, from a new producer.
    pub(crate) fn purge_if_fatal(&self) {
        let producer = self.get();
        if producer.client().fatal_error().is_some() {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
    }

    /// Replaces a producer that stopped with a fatal error by a new one (nothing of
    /// the old one is in flight: the pipeline settled every batch). Keeps the old one
    /// when librdkafka refuses a new one.
    /// Returns whether it did.
    pub(crate) fn renew_if_fatal(&self, table: &str) -> bool {
        let Some((code, reason)) = self.get().client().fatal_error() else { return false };
        match self.config.create_with_context(self.context.clone()) {
            Ok(fresh) => {
                tracing::error!(table, error = ?code, reason = %reason,
                    "relay producer stopped with a fatal error; a new one sends the failed rows again with their numbers");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                true
            }
            Err(e) => {
                tracing::error!(table, error = %crate::report(&e), "relay producer not replaced");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_break_the_numbering_are_refused_by_name() {
        let mut cfg = ClientConfig::new();
        for (k, v) in SEQUENCED_PRESETS {
            cfg.set(k, v);
        }
        assert!(check_sequenced(&cfg).is_ok());
        for (key, bad) in [
            ("message.timeout.ms", "30000"),
            ("enable.gapless.guarantee", "false"),
            ("enable.idempotence", "false"),
            ("delivery.timeout.ms", "1000"),
        ] {
            let mut c = cfg.clone();
            c.set(key, bad);
            assert!(check_sequenced(&c).unwrap_err().to_string().contains(key), "{key}");
        }
    }
}
