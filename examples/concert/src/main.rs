//! `concert`: the reference application of reliable-kafka.
//!
//! Delivery semantics: payment failures are published through the transactional
//! outbox (at-least-once) and consumed by two idempotent consumer groups (database
//! effects exactly once per event).

use std::time::Duration;

use clap::{Parser, Subcommand};
use concert::config::Env;
use concert::scenario::{self, ScenarioConfig};
use concert::store::RedisStore;

#[derive(Parser)]
#[command(
    version,
    about = "Concert booking reference application of reliable-kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs users through reserve and pay with injected payment failures, waits for the
    /// compensating consumers, and prints the consistency report (last line).
    Scenario {
        /// Number of users (one seat and one payment each).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Share of failing payments, 0.0..=1.0.
        #[arg(long, default_value_t = 0.3, value_parser = parse_rate)]
        failure_rate: f64,
        /// Users in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seed of the failure assignment.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Seconds to wait for the consumers to settle.
        #[arg(long, default_value_t = 300)]
        settle_timeout_secs: u64,
    },
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be within 0.0..=1.0".to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,concert=info,reliable_kafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Scenario {
        users: 1000,
        failure_rate: 0.3,
        concurrency: 32,
        seed: 42,
        settle_timeout_secs: 300,
    });
    let env = Env::from_env();
    match command {
        Command::Scenario {
            users,
            failure_rate,
            concurrency,
            seed,
            settle_timeout_secs,
        } => {
            tracing::info!(
                brokers = env.kafka.brokers(),
                "running the scenario against PostgreSQL, Redis and Kafka"
            );
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(20)
                .connect(&env.database_url)
                .await?;
            let store = RedisStore::connect(&env.redis_url, Duration::from_secs(600)).await?;
            let cfg = ScenarioConfig {
                users,
                failure_rate,
                concurrency,
                seed,
                settle_timeout: Duration::from_secs(settle_timeout_secs),
                ..ScenarioConfig::default()
            };
            let report = scenario::run(pool, store, env.kafka, &cfg).await?;
            eprintln!(
                "users={users} wall={:.1}s throughput={:.0} users/s",
                report.wall.as_secs_f64(),
                users as f64 / report.wall.as_secs_f64()
            );
            println!("{}", report.line());
            if !report.is_ok() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
