//! Child process of the crash test: consumes `<topic>` in `<group>` with the
//! [`Recorder`] handler on schema `<schema>`, and never commits offsets on its own
//! (commit interval of one hour), so that a SIGKILL lands after the database commit
//! and before the offset commit. With a fourth argument `retry-topics`, the handler
//! fails its first two attempts and retries through the retry topics of 1 s and 2 s.

use std::time::Duration;

use reliable_kafka::{CancellationToken, ListenerContainer};
use reliable_kafka_tests::{kafka, pool_in_schema, retrying_recorder, Mode, Recorder};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (schema, topic, group, retry) = match args.as_slice() {
        [_, schema, topic, group] => (schema, topic, group, false),
        [_, schema, topic, group, mode] if mode == "retry-topics" => (schema, topic, group, true),
        _ => {
            eprintln!("usage: rk-test-consumer <schema> <topic> <group> [retry-topics]");
            std::process::exit(2);
        }
    };
    let pool = pool_in_schema(schema, 4).await;
    let recorder = if retry { retrying_recorder(topic, group) } else { Recorder::new(topic, group, Mode::Succeed, 1) };
    let container = ListenerContainer::builder(kafka(), pool)
        .handler(recorder)
        .commit_interval(Duration::from_secs(3600))
        .build()
        .expect("container");
    container.run(CancellationToken::new()).await.expect("run");
}
