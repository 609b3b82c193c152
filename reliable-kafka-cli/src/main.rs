//! `rk`: what an operator of a reliable-kafka service needs at 3 a.m. — the outbox
//! backlog, the dead-letter topics and the parked records, read and replayed, every
//! change audited in `rk_audit`. It reads `DATABASE_URL`, `KAFKA_BROKERS` and
//! `KAFKA_CONFIG_*` as the library does.
//!
//! Exit codes: 0 done; 1 failed (database, broker, a replay that stopped part-way);
//! 2 usage error; 3 refused (a purge without `--yes`); 4 nothing found (`show` of a
//! record that does not exist).

mod commands;
mod render;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect and replay what failed in a reliable-kafka service.
#[derive(Debug, Parser)]
#[command(
    name = "rk",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 done; 1 failed (database, broker, a replay stopped part-way); 2 usage error; 3 refused (purge without --yes); 4 not found."
)]
pub struct Cli {
    /// The service's database (postgres://…, mysql://… or sqlite:…).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Bootstrap brokers (other librdkafka settings: KAFKA_CONFIG_<KEY>, dots as `_`).
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub brokers: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Who runs this, for the audit rows (default: $USER).
    #[arg(long, env = "RK_OPERATOR", global = true)]
    pub operator: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for a person.
    Table,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The transactional outbox: backlog and parked rows.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Dead-letter topics: list, show, replay to the original topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Parked records (dead letters the re-driver gave up on): list, show, replay, purge.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// The audit trail of replays, purges and retries.
    Audit {
        /// Newest rows shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Pending and parked rows and the oldest pending age, in total and per topic.
    Status,
    /// Puts rows the relay parked back to pending, so it tries them again.
    Retry {
        /// Only rows of this topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

/// Which records a command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Dead-letter reason, e.g. `retries-exhausted` (parked: also a word of the parking reason).
    #[arg(long)]
    pub reason: Option<String>,
    /// From this time on: RFC 3339 (`2026-12-01T03:00:00Z`) or an age (`2h`, `30m`).
    #[arg(long, value_parser = render::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time: RFC 3339 or an age.
    #[arg(long, value_parser = render::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Record key, exactly (UTF-8).
    #[arg(long)]
    pub key: Option<String>,
    /// The topic the record was first consumed from.
    #[arg(long)]
    pub original_topic: Option<String>,
}

/// How a replay runs.
#[derive(Debug, Clone, Default, Args)]
pub struct ReplayArgs {
    /// Records acted on at most (replayed, or parked when they cannot be).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Records per second at most.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Show what would be replayed; send, delete and audit nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The records of a dead-letter topic (read without a consumer group).
    List {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Records shown at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One record, every header decoded, its payload as JSON or hex.
    Show {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        /// Its partition.
        #[arg(long)]
        partition: i32,
        /// Its offset.
        #[arg(long)]
        offset: i64,
    },
    /// Publishes records back to the topic of their `kafka_dlt-original-topic` header.
    /// Progress is kept as the committed offsets of `--group`: after a crash the next
    /// replay goes on where it stopped; records the filter leaves are passed over.
    Replay {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        replay: ReplayArgs,
        /// Consumer group keeping the progress (default `rk-replay.<topic>`, and for a
        /// filtered replay `rk-replay.<topic>.<hash of the filter>`, so that records a
        /// filter passes over stay there for a replay of all).
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// Parked records, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Records shown at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One parked record, every header decoded, its payload as JSON or hex.
    Show {
        /// Its row id (the `id` column of `list`).
        id: i64,
    },
    /// Publishes parked records to their original topic and deletes their rows.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        replay: ReplayArgs,
    },
    /// Deletes parked records for good.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Records deleted at most.
        #[arg(long)]
        limit: Option<usize>,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Really delete (required).
        #[arg(long)]
        yes: bool,
    },
}

/// Exit codes, documented in `rk --help` and the README.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// A database or broker operation failed.
    pub const FAILED: u8 = 1;
    /// A purge without `--yes`.
    pub const REFUSED: u8 = 3;
    /// `show` of a record that does not exist.
    pub const NOT_FOUND: u8 = 4;
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    match commands::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rk: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}
