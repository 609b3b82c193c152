//! Procedural macros of [reliable-kafka](https://docs.rs/reliable-kafka); use them
//! through its re-exports `reliable_kafka::Event` and `reliable_kafka::event_handler`.
//!
//! The entry points are thin: parsing and expansion live in `event.rs` and
//! `handler.rs`, every error carries the span of the token at fault, and the generated
//! code reaches the runtime only through `::reliable_kafka` (override with
//! `crate = "path"`).
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod args;
mod event;
mod handler;

/// Derives `reliable_kafka::Event`.
///
/// `#[event(topic = "payment.failed", key = payment_id, version = 1, name = "PaymentFailed")]`
///
/// | key | required | meaning |
/// |---|---|---|
/// | `topic` | yes | topic the outbox relay publishes to |
/// | `key` | no | field whose `ToString` is the record key (same key → same partition, in order) |
/// | `version` | no (1) | schema version (`u32`) |
/// | `name` | no (type name) | event type header value |
/// | `codec` | no (`JsonCodec`) | path of a `reliable_kafka::Codec` type |
/// | `crate` | no | path of the `reliable_kafka` crate, as a string |
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::expand(syn::parse_macro_input!(input as syn::DeriveInput))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Turns `async fn name(event: E, ctx: &mut HandlerContext) -> Result<(), HandlerError>`
/// into a unit struct `name` implementing `reliable_kafka::EventHandler`, to register
/// with `ListenerContainer::builder(..).handler(name)`.
///
/// The context's type argument picks the backend: `&mut HandlerContext` (PostgreSQL),
/// `&mut HandlerContext<Sqlite>`, or `&mut HandlerContext<DB>` in a function generic
/// over `DB: Backend`, which then works with either.
///
/// `#[event_handler(group = "payment-compensator-group", topic = PaymentFailed::TOPIC, backoff = FixedBackOff::new(Duration::from_secs(1), 4), dead_letter_topic = "payment.failed.DLQ")]`
///
/// Several functions with the same `topic` and `group` and different event types form
/// that topic's route table in one container: each record goes to the function of its
/// event type.
///
/// | key | required | meaning |
/// |---|---|---|
/// | `group` | yes | consumer group |
/// | `topic` | no (the event's topic) | topic to consume |
/// | `backoff` | no (container default) | expression of a `BackOff`, `FixedBackOff`, `ExponentialBackOff`, or a `Result` of one |
/// | `dead_letter_topic` | no (`<topic>.DLQ`) | dead-letter topic |
/// | `retry_topics` | no (pause-and-poll back-off) | string literal of comma-separated delays, `"1s, 10s, 1m"` (units `ms`, `s`, `m`, `h`; checked at compile time): one retry topic each, `RetryTopics` |
/// | `circuit_breaker` | no | expression of a `CircuitBreaker` |
/// | `key_blocking` | no (`false`) | `true` for key-blocking retry |
/// | `identity` | no (container default, the `rk-*` envelope) | expression of an `IdentitySource`, e.g. `IdentitySource::cloud_events()` |
/// | `dlq` | | deprecated name of `dead_letter_topic` (a warning at the key); not both |
/// | `crate` | no | path of the `reliable_kafka` crate, as a string |
///
/// `group`, `topic` and `dead_letter_topic` take a string literal (checked not to be
/// empty) or any expression of a `&'static str` (or `String`): a `const GROUP: &str`, an
/// event's `PaymentFailed::TOPIC`, `concat!(..)`. A value of another type is reported at
/// the value.
///
/// The function stays callable, as the associated function `name::call` with the same
/// arguments, generics and docs, so a unit test runs a handler without a container:
/// `name::call(event, &mut HandlerContext::new(tx, record_info)).await`.
///
/// The function's `#[cfg(..)]`, `#[cfg_attr(..)]` and lint levels (`allow`, `warn`,
/// `deny`, `forbid`) go on every generated item, its docs on the struct and on `call`,
/// and its other attributes (`#[expect(..)]`, `#[deprecated]`, `#[tracing::instrument]`,
/// …) on `call`, which holds the body.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), item.into()).into()
}
