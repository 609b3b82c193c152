//! Child process of the recovery-partition test: runs the reference application's
//! payment recovery bulkhead named `<name>` on schema `<schema>`, with `<partitions>`
//! partitions, `<batch>` payments per run every 200 ms, asking the gateway at
//! `<gateway-url>`, until it is killed. Its database sessions carry `application_name`
//! = `<name>`, so the test can tell which partitions it holds.

use std::time::Duration;

use concert::db::Db;
use concert::gateway::GatewayClient;
use concert::recovery::PaymentRecovery;
use concert::store::Store;
use reliable_kafka::CancellationToken;
use reliable_kafka_tests::database_url;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[tokio::main]
async fn main() {
    reliable_kafka_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let [_, schema, name, partitions, batch, gateway_url] = args.as_slice() else {
        eprintln!("usage: rk-test-recovery <schema> <name> <partitions> <batch> <gateway-url>");
        std::process::exit(2);
    };
    let options: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options.options([("search_path", schema.as_str())]).application_name(name))
        .await
        .expect("pool");
    let gateway =
        GatewayClient::new(gateway_url, Duration::from_millis(300), Duration::from_secs(2), 3).expect("gateway");
    let mut recovery = PaymentRecovery::new(
        Db::Postgres(pool),
        Store::in_memory(Duration::from_secs(60), schema),
        gateway,
        name.as_str(),
        Duration::from_millis(500),
    );
    recovery.partitions = partitions.parse().expect("partitions");
    recovery.batch = batch.parse().expect("batch");
    let thread = recovery.spawn_bulkhead(Duration::from_millis(200), CancellationToken::new());
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}
