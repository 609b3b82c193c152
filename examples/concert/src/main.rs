//! `concert`: the reference application of reliable-kafka.
//!
//! Delivery semantics: every event leaves through the transactional outbox
//! (at-least-once, per-key order) and is consumed by idempotent consumer groups
//! (database effects once per event); notifications that keep failing are
//! dead-lettered, re-driven at most 3 times, then parked.
//!
//! The fault-injection harness is its own crate: `cargo run --release -p concert-chaos`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use concert::app::{App, AppConfig, Flows};
use concert::config::Env;
use concert::payment_event::PaymentCreation;
use concert::scenario::{self, ScenarioConfig};
use concert::services::Services;

#[derive(Parser)]
#[command(version, about = "Concert booking reference application of reliable-kafka")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Drives many users over HTTP through the flows with injected failures, waits for
    /// the consumers, and prints the consistency report (last line).
    Scenario {
        /// Number of users.
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
        #[arg(long, default_value_t = 600)]
        settle_timeout_secs: u64,
        /// Flows to drive.
        #[arg(long, value_enum, default_value_t = Flows::All)]
        flows: Flows,
        /// Where payments are created: `use-case` (with the payment gateway, seed 004)
        /// or `event` (by the `payment-create-group`, seed 002).
        #[arg(long, value_enum, env = "PAYMENT_CREATION", default_value_t = PaymentCreation::UseCase)]
        payment_creation: PaymentCreation,
        /// Gateway and webhook faults: `all` (503s, hangs, stalls, always-failing
        /// notifications) or `none`.
        #[arg(long, value_enum, default_value_t = Faults::All)]
        faults: Faults,
        /// The same as `--faults none`.
        #[arg(long, hide = true)]
        no_faults: bool,
        /// Take the webhook receiver down for N seconds, 3 s into the run: the
        /// notifications wait behind the circuit breaker and none is dead-lettered
        /// because of it (the line before the consistency line says
        /// `outage_dead_lettered=…`).
        #[arg(long, value_name = "N")]
        webhook_outage_secs: Option<u64>,
        /// Write the final Prometheus exposition of the run to FILE, and check that it
        /// holds every documented metric.
        #[arg(long, value_name = "FILE")]
        metrics_out: Option<PathBuf>,
        /// Write every finished span to FILE as JSON lines, and check that the handler
        /// spans continue the traces of the HTTP requests that caused them.
        #[arg(long, value_name = "FILE")]
        trace_out: Option<PathBuf>,
    },
    /// Serves the HTTP API with every consumer and scheduler, until Ctrl-C.
    Serve {
        /// API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Payment gateway base URL (default: start the demo gateway).
        #[arg(long, env = "GATEWAY_URL")]
        gateway_url: Option<String>,
        /// Notification webhook URL (default: start the demo receiver).
        #[arg(long, env = "WEBHOOK_URL")]
        webhook_url: Option<String>,
        /// Seconds between re-drives of dead-lettered notifications.
        #[arg(long, default_value_t = 300)]
        redrive_interval_secs: u64,
        /// Where payments are created: `use-case` (with the payment gateway, seed 004)
        /// or `event` (by the `payment-create-group`, seed 002).
        #[arg(long, value_enum, env = "PAYMENT_CREATION", default_value_t = PaymentCreation::UseCase)]
        payment_creation: PaymentCreation,
    },
}

/// The faults `scenario --faults` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Faults {
    /// Gateway 503s and hangs, webhook 500s and stalls, always-failing notifications.
    All,
    /// None.
    None,
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
    let cli = Cli::parse();
    let (metrics_out, trace_out) = match &cli.command {
        Some(Command::Scenario { metrics_out, trace_out, .. }) => (metrics_out.clone(), trace_out.clone()),
        _ => (None, None),
    };
    let telemetry = concert::telemetry::install(trace_out.as_deref())?;
    let services = Services::start(&Env::from_env()).await?;
    let (db, store, kafka) = (services.db.clone(), services.store.clone(), services.kafka.clone());
    // The embedded mock cluster has no admin API: its topics are created with it.
    let create_topics = services.embedded_kafka.is_none();
    match cli.command {
        Some(Command::Serve { listen, gateway_url, webhook_url, redrive_interval_secs, payment_creation }) => {
            let cfg = AppConfig {
                api_addr: listen,
                gateway_url,
                webhook_url,
                redrive_interval: Duration::from_secs(redrive_interval_secs),
                payment_creation,
                create_topics,
                metrics: Some(telemetry.metrics.clone()),
                ..AppConfig::default()
            };
            let app = App::start(db, store, kafka, &cfg).await?;
            eprintln!("serving on {}; Ctrl-C stops", app.api.url());
            tokio::signal::ctrl_c().await?;
            app.stop().await?;
            services.stop().await;
            telemetry.shutdown();
            Ok(())
        }
        command => {
            let cfg = match command {
                Some(Command::Scenario {
                    users,
                    failure_rate,
                    concurrency,
                    seed,
                    settle_timeout_secs,
                    flows,
                    payment_creation,
                    faults,
                    no_faults,
                    webhook_outage_secs,
                    ..
                }) => ScenarioConfig {
                    users,
                    failure_rate,
                    concurrency,
                    seed,
                    settle_timeout: Duration::from_secs(settle_timeout_secs),
                    flows,
                    payment_creation,
                    inject_faults: faults == Faults::All && !no_faults,
                    webhook_outage: webhook_outage_secs.map(Duration::from_secs),
                    progress: true,
                    create_topics,
                    metrics: Some(telemetry.metrics.clone()),
                },
                _ => {
                    ScenarioConfig { create_topics, metrics: Some(telemetry.metrics.clone()), ..ScenarioConfig::demo() }
                }
            };
            let report = scenario::run(db, store, kafka, &cfg).await?;
            eprintln!(
                "users={} wall={:.1}s throughput={:.0} users/s",
                cfg.users,
                report.wall.as_secs_f64(),
                cfg.users as f64 / report.wall.as_secs_f64()
            );
            services.stop().await;
            telemetry.shutdown();
            let mut telemetry_ok = true;
            if let Some(path) = &metrics_out {
                telemetry.write_metrics(path)?;
                let text = std::fs::read_to_string(path)?;
                let problems = concert::telemetry::check_exposition(&text);
                eprintln!(
                    "metrics: {} documented metrics checked in {}: {}",
                    reliable_kafka::telemetry::METRICS.len(),
                    path.display(),
                    if problems.is_empty() { "ok".to_owned() } else { problems.join("; ") }
                );
                telemetry_ok &= problems.is_empty();
            }
            if let Some(path) = &trace_out {
                let (handlers, inside) = concert::telemetry::handler_spans_in_request_traces(path)?;
                let share = if handlers == 0 { 0.0 } else { inside as f64 / handlers as f64 };
                eprintln!("traces: handler_spans={handlers} in_request_trace={inside} ({:.2} %)", share * 100.0);
                telemetry_ok &= share >= 0.99;
            }
            if let Some(outage) = &report.outage {
                println!("{}", outage.line());
            }
            println!("{}", report.line(cfg.flows));
            if !report.is_ok() || !telemetry_ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
