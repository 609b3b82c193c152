//! Test machinery (feature `testing`): never enable it in a production build.
//!
//! - **Fail points** of the [`fail`] crate on both sides of the moments a crash hurts
//!   most ([`KILL_POINTS`]); configure them with [`fail::cfg`] or
//!   [`fail::cfg_callback`] (the chaos harness SIGKILLs its workers there).
//! - **Sabotage switches** that turn one mechanism off, to show a harness fails
//!   without it: [`SABOTAGE_NO_DEDUP`], [`SABOTAGE_OFFSETS_BEFORE_COMMIT`],
//!   [`SABOTAGE_MARK_BEFORE_SEND`]; switch one on with `fail::cfg(name, "return")`.
//! - The **fuzzing entry point** [`fuzz_decode_record`].
//! - [`relay_once_stubbed`] and [`drain_stubbed`]: the relay with its Kafka send stubbed
//!   out, for benchmarks of the relay's own cost. They mark rows delivered without
//!   sending them.

use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

use crate::{Backend, Envelope, Error, OutboxRelay, RelayBatch};

pub use fail;

pub use crate::fault::{
    CONSUMER_AFTER_COMMIT, CONSUMER_BEFORE_COMMIT, RELAY_AFTER_SEND, RELAY_BEFORE_SEND, SABOTAGE_MARK_BEFORE_SEND,
    SABOTAGE_NO_DEDUP, SABOTAGE_OFFSETS_BEFORE_COMMIT,
};

/// The four fail points: around the commit of a handler's transaction (before its
/// offset is stored), and around the Kafka send of claimed outbox rows (before they
/// are marked).
pub const KILL_POINTS: [&str; 4] = [CONSUMER_AFTER_COMMIT, CONSUMER_BEFORE_COMMIT, RELAY_AFTER_SEND, RELAY_BEFORE_SEND];

/// One relay batch with the Kafka send stubbed out: rows are claimed and marked
/// delivered **without being published**. For benchmarks only: it loses every row it
/// claims.
///
/// # Errors
/// As [`OutboxRelay::relay_once`].
pub async fn relay_once_stubbed<DB: Backend>(relay: &OutboxRelay<DB>) -> Result<RelayBatch, Error> {
    relay.leased(true, crate::outbox::Until { batches: Some(1), ..Default::default() }).await
}

/// [`OutboxRelay::drain`] with the Kafka send stubbed out, as [`relay_once_stubbed`].
///
/// # Errors
/// As [`OutboxRelay::relay_once`].
pub async fn drain_stubbed<DB: Backend>(relay: &OutboxRelay<DB>) -> Result<RelayBatch, Error> {
    relay.leased(true, crate::outbox::Until::default()).await
}

/// Fuzzing entry point (the `fuzz/` crate): decodes `data` as a record and runs it
/// through everything the container and the re-driver do before a handler: the
/// envelope, the dead-letter headers, the header copy of a dead letter, the re-drive
/// headers and the JSON codec. Returns whether the envelope is valid. The property
/// fuzzed: no input panics, overflows the stack or hangs.
///
/// Layout of `data`: one byte, the header count (mod 16); per header a key length byte
/// (mod 64), the key (lossy UTF-8), a value length byte (255: a null value), the value;
/// the rest is the payload.
pub fn fuzz_decode_record(data: &[u8]) -> bool {
    let mut rest = data;
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a
    };
    let count = take(1).first().copied().unwrap_or(0) % 16;
    let mut headers = OwnedHeaders::new();
    for _ in 0..count {
        let klen = take(1).first().copied().unwrap_or(0) % 64;
        let key = String::from_utf8_lossy(take(usize::from(klen))).into_owned();
        let value = match take(1).first().copied().unwrap_or(0) {
            255 => None,
            n => Some(take(usize::from(n)).to_vec()),
        };
        headers = headers.insert(Header { key: &key, value: value.as_deref() });
    }
    let payload = rest.to_vec();
    let _ = crate::DeadLetterInfo::from_headers(&headers);
    let _ = crate::envelope::copy_headers(&headers, 10);
    let _ = crate::envelope::dead_letter::redrive_headers(Some(&headers), 1);
    let _ = <crate::JsonCodec as crate::Codec>::decode::<serde_json::Value>(&payload);
    let msg =
        OwnedMessage::new(Some(payload), Some(b"k".to_vec()), "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
    Envelope::from_headers(rdkafka::Message::headers(&msg)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::fuzz_decode_record;
    use proptest::prelude::*;

    fn header(out: &mut Vec<u8>, key: &str, value: &[u8]) {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }

    #[test]
    fn a_valid_envelope_decodes_and_a_broken_one_does_not() {
        let mut valid = vec![2];
        header(&mut valid, crate::headers::MESSAGE_ID, b"0190c2a4-55c1-7c2e-9a57-2f6c1c1e8f00");
        header(&mut valid, crate::headers::EVENT_TYPE, b"OrderPlaced");
        valid.extend_from_slice(br#"{"order_id":1}"#);
        assert!(fuzz_decode_record(&valid));
        let mut bad = vec![2];
        header(&mut bad, crate::headers::MESSAGE_ID, b"not-a-uuid");
        header(&mut bad, crate::headers::EVENT_TYPE, b"OrderPlaced");
        assert!(!fuzz_decode_record(&bad));
        assert!(!fuzz_decode_record(&[]));
    }

    proptest! {
        #[test]
        fn no_input_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = fuzz_decode_record(&data);
        }
    }
}
