//! Child process of the sharded-relay test: runs one relay instance on schema
//! `<schema>` with `<shards>` shards until it is killed. Its database sessions carry
//! `application_name` = `<name>`, so the test can tell which shards it holds.

use std::time::Duration;

use reliable_kafka::{CancellationToken, OutboxRelay};
use reliable_kafka_tests::{database_url, kafka};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, schema, shards, name] = args.as_slice() else {
        eprintln!("usage: rk-test-relay <schema> <shards> <name>");
        std::process::exit(2);
    };
    let options: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.options([("search_path", schema.as_str())]).application_name(name))
        .await
        .expect("pool");
    let relay = OutboxRelay::builder(kafka(), pool)
        .shards(shards.parse().expect("shards"))
        .batch_size(50)
        .poll_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(300))
        .build()
        .expect("relay");
    relay.run(CancellationToken::new()).await.expect("run");
}
