//! Envelope and header decoding of a consumed record (`rk-*` envelope headers,
//! Spring Kafka's `kafka_dlt-*` dead-letter headers, the JSON codec): no input may
//! panic, overflow the stack or hang.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run envelope -- -max_total_time=60`

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = reliable_kafka::testing::fuzz_decode_record(data);
});
