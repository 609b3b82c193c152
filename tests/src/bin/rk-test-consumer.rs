//! Child process of the crash test: consumes `<topic>` in `<group>` with the
//! [`Recorder`] handler on schema `<schema>`, and never commits offsets on its own
//! (commit interval of one hour), so that a SIGKILL lands after the database commit
//! and before the offset commit.

use std::time::Duration;

use reliable_kafka::{CancellationToken, ListenerContainer};
use reliable_kafka_tests::{kafka, pool_in_schema, Mode, Recorder};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, schema, topic, group] = args.as_slice() else {
        eprintln!("usage: rk-test-consumer <schema> <topic> <group>");
        std::process::exit(2);
    };
    let pool = pool_in_schema(schema, 4).await;
    let container = ListenerContainer::builder(kafka(), pool)
        .handler(Recorder::new(topic, group, Mode::Succeed, 1))
        .commit_interval(Duration::from_secs(3600))
        .build()
        .expect("container");
    container.run(CancellationToken::new()).await.expect("run");
}
