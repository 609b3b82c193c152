//! `concert-chaos`: the fault-injection harness of the concert reference application.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use concert::app::WorkerRole;
use concert::config::Env;
use concert_chaos::{ChaosConfig, Phases, Sabotage};

/// The fault-injection harness of the concert reference application.
///
/// Drives users through every flow while processes are killed at the worst moments,
/// the broker restarts, PostgreSQL connections and Redis drop, groups rebalance, the
/// gateway and webhook fail; prints, last,
/// `chaos: ok messages= faults= kinds= lost=0 duplicated=0 dead_lettered= compensated=
/// redis_cleanups_during_db_outage=`
/// or `chaos: FAILED …` (exit 1). Needs PostgreSQL (`DATABASE_URL`, default
/// postgres://127.0.0.1:5432/postgres; a database is created per run), Redis
/// (`REDIS_URL`, default redis://127.0.0.1:6379) and the tansu binary.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    chaos: ChaosArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

// The options of a harness run (the default command).
#[derive(Args)]
struct ChaosArgs {
    /// Each fault kind lands at least this often.
    #[arg(long, default_value_t = 10)]
    faults_per_kind: u32,
    /// Users per wave; waves run until the faults are done.
    #[arg(long, default_value_t = 20)]
    users_per_wave: usize,
    /// Users in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Milliseconds between two faults.
    #[arg(long, default_value_t = 500)]
    fault_interval_ms: u64,
    /// Upper bound of the fault phase, in minutes.
    #[arg(long, default_value_t = 20)]
    max_minutes: u64,
    /// The tansu binary (default: `tansu` on PATH, else ~/.cargo/bin/tansu).
    #[arg(long, env = "TANSU")]
    tansu: Option<PathBuf>,
    /// Seed of the failure assignment.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Phases to run: `all`, `tansu` (worker processes on tansu) or `mock` (the mock
    /// cluster's broker errors; needs no tansu).
    #[arg(long, value_enum, default_value_t = Phases::All)]
    phases: Phases,
    /// Seconds the pipeline may take to settle after the faults of a phase.
    #[arg(long, default_value_t = 240)]
    settle_timeout_secs: u64,
    /// Switch a mechanism off to show the run fails without it: `no-dedup`,
    /// `offsets-before-commit` or `mark-before-send`.
    #[arg(long, value_enum)]
    sabotage: Option<Sabotage>,
    /// Relay processes in phase 1; more than one publish the outbox in 3 shards
    /// split among them (`OutboxRelayBuilder::shards`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    relays: u16,
    /// Deduplicate by watermark: relays with sequence numbers, consumers in watermark
    /// mode (`OutboxRelayBuilder::sequence_numbers`, `watermark_dedup`).
    #[arg(long)]
    watermarks: bool,
}

#[derive(Subcommand)]
enum Command {
    /// A relay or consumer process of the harness (started by it). Reads `kill <fail
    /// point>` lines on stdin; stops gracefully on SIGTERM or end of stdin.
    #[command(hide = true)]
    Worker {
        /// What to run.
        #[arg(long, value_enum)]
        role: WorkerRole,
        /// Notification webhook URL.
        #[arg(long)]
        webhook_url: String,
        /// Records per consumer transaction.
        #[arg(long, default_value_t = 20)]
        max_batch: usize,
        /// Shards of the outbox relay (role `relay`).
        #[arg(long, default_value_t = 1)]
        relay_shards: u32,
        /// Deduplicate by watermark.
        #[arg(long)]
        watermarks: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,concert=info,concert_chaos=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let env = Env::from_env();
    if let Some(Command::Worker { role, webhook_url, max_batch, relay_shards, watermarks }) = cli.command {
        return concert_chaos::worker::run(&env, role, &webhook_url, (max_batch, relay_shards, watermarks)).await;
    }
    let args = cli.chaos;
    let defaults = ChaosConfig::default();
    let cfg = ChaosConfig {
        faults_per_kind: args.faults_per_kind,
        users_per_wave: args.users_per_wave,
        concurrency: args.concurrency,
        fault_interval: Duration::from_millis(args.fault_interval_ms),
        max_duration: Duration::from_secs(args.max_minutes * 60),
        settle_timeout: Duration::from_secs(args.settle_timeout_secs),
        tansu: args.tansu.unwrap_or_else(find_tansu),
        database_url: env.database_url.unwrap_or(defaults.database_url),
        redis_url: env.redis_url.unwrap_or(defaults.redis_url),
        seed: args.seed,
        phases: args.phases,
        sabotage: args.sabotage,
        relays: usize::from(args.relays),
        watermarks: args.watermarks,
    };
    let report = concert_chaos::run(cfg).await?;
    let faults: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("chaos faults: {}", faults.join(" "));
    for p in &report.problems {
        println!("chaos problem: {p}");
    }
    println!("{}", report.line());
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// `tansu` on PATH, else `~/.cargo/bin/tansu`.
fn find_tansu() -> PathBuf {
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).find(|f| f.is_file()));
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo").join("bin").join("tansu")
    })
}
