//! The fault-injection harness of the concert reference application
//! (`cargo run --release -p concert-chaos`): the reference flows under crashes,
//! outages and timeouts at the worst moments, ending with one line of numbers.
//!
//! Phase 1 runs on PostgreSQL, Redis and a tansu broker of its own ([`broker`]): this
//! process serves the API, the demo gateway and webhook receiver, the recovery and the
//! re-driver, while the outbox relay and two members of every consumer group run as
//! [`concert::app::Workers`] child processes (`concert-chaos worker`, see [`worker`] and
//! [`supervisor`]). Users are driven through every flow in waves while, in turn
//! ([`faults`]):
//!
//! | kind | how |
//! |---|---|
//! | `consumer-kill` | a consumer process SIGKILLs itself at the fail point `rk-consumer-after-commit` (handler transaction committed, offset not committed), and, as a control, at `rk-consumer-before-commit` |
//! | `relay-kill` | the relay process SIGKILLs itself at `rk-relay-after-send` (Kafka acknowledged, rows not marked), and at `rk-relay-before-send` |
//! | `broker` | tansu is stopped and restarted on the same storage; in phase 2, errors are injected into librdkafka's mock cluster |
//! | `db-drop` | every PostgreSQL connection of the workers is terminated (`pg_terminate_backend`), handler transactions included |
//! | `db-outage` | the consumer processes freeze for 4 s (a backlog builds), then for 20 s the database refuses every connection (`ALLOW_CONNECTIONS false`) and all existing ones are terminated, this process's included; the Redis cleanup group, deduplicated in Redis, must keep completing (`redis_cleanups_during_db_outage`); one landing per five of the other kinds' |
//! | `redis-outage` | Redis drops its clients and pauses for 1.5 s (`CLIENT KILL`, `CLIENT PAUSE`) |
//! | `rebalance` | a third consumer process joins every group, then the oldest leaves (SIGTERM) |
//! | `gateway-webhook` | the demo gateway answers 503 or hangs past the client timeout; the webhook answers 500 or stalls |
//! | `downstream-outage` | the webhook receiver and the gateway answer 503 to every call for 10 s, then 20 s, … up to 60 s (one landing per five of the other kinds'): no notification may be dead-lettered because of it (the notification group's circuit breaker holds them) |
//! | `sigterm` | a consumer or relay process gets SIGTERM and must exit 0 (drained, committed, flushed) |
//!
//! Phase 2 runs the whole application in this process on a 3-broker mock cluster while
//! produce, fetch, offset-commit and heartbeat requests fail and group coordinators and
//! partition leaders move ([`phases`]).
//!
//! Then it waits for the pipeline to settle and checks every invariant of the
//! scenario's consistency report on every wave (seat counts, balances, refunds once,
//! one coupon per user, each event's effect once, every failed payment compensated,
//! every completed payment notified or dead-lettered), plus: no record on the
//! dead-letter topics of groups whose handlers cannot fail (a false dead letter), and
//! every SIGTERMed process exited 0 ([`checks`]).
//!
//! This is the only crate of the workspace that enables the library's `testing`
//! feature (fail points and sabotage switches, [`reliable_kafka::testing`]).

pub mod broker;
pub mod checks;
pub mod faults;
pub mod phases;
pub mod supervisor;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use concert::db::Db;
use concert::store::Store;
use reliable_kafka::testing;

pub use crate::checks::ChaosReport;
use crate::supervisor::WORKER_APPLICATION_NAME;

/// Settings of a harness run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Each fault kind is injected (and must land) at least this often (default 10).
    pub faults_per_kind: u32,
    /// Users per wave; waves follow each other until every kind is done.
    pub users_per_wave: usize,
    /// Users in flight at once.
    pub concurrency: usize,
    /// Pause between two faults.
    pub fault_interval: Duration,
    /// Upper bound of the fault phase; kinds not done by then fail the run.
    pub max_duration: Duration,
    /// How long the pipeline may take to settle after the last fault.
    pub settle_timeout: Duration,
    /// The tansu binary.
    pub tansu: PathBuf,
    /// PostgreSQL URL of a database the harness may create databases from.
    pub database_url: String,
    /// Redis URL (the `redis-outage` fault pauses this server).
    pub redis_url: String,
    /// Seed of the failure assignment.
    pub seed: u64,
    /// Which phases run.
    pub phases: Phases,
    /// A mechanism to switch off, to show the harness fails without it.
    pub sabotage: Option<Sabotage>,
    /// Relay processes of phase 1 (default 1). With more than one, the outbox is
    /// published in [`RELAY_SHARDS`] shards that the relays split among them.
    pub relays: usize,
    /// Deduplicate by watermark: the relays number their records and the consumers
    /// keep a watermark per partition (`AppConfig::watermarks`).
    pub watermarks: bool,
}

/// Shards of the outbox relay when phase 1 runs several relays: one per partition.
pub const RELAY_SHARDS: u32 = 3;

/// A mechanism of the library the harness can switch off (a sabotage switch of the
/// `testing` feature), to show that the run then fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sabotage {
    /// The consumer skips the dedup insert (`rk-sabotage-no-dedup`).
    NoDedup,
    /// The consumer commits a batch's offsets before its transaction
    /// (`rk-sabotage-offsets-before-commit`).
    OffsetsBeforeCommit,
    /// The relay marks rows sent before Kafka has them (`rk-sabotage-mark-before-send`).
    MarkBeforeSend,
}

impl Sabotage {
    /// The fail point that switches the mechanism off.
    pub fn fail_point(self) -> &'static str {
        match self {
            Sabotage::NoDedup => testing::SABOTAGE_NO_DEDUP,
            Sabotage::OffsetsBeforeCommit => testing::SABOTAGE_OFFSETS_BEFORE_COMMIT,
            Sabotage::MarkBeforeSend => testing::SABOTAGE_MARK_BEFORE_SEND,
        }
    }
}

/// The phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phases {
    /// Both (the default; every fault kind).
    All,
    /// Only phase 1 (tansu, worker processes).
    Tansu,
    /// Only phase 2 (the mock cluster's broker errors; needs no tansu).
    Mock,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            faults_per_kind: 10,
            users_per_wave: 20,
            concurrency: 4,
            fault_interval: Duration::from_millis(500),
            max_duration: Duration::from_secs(20 * 60),
            settle_timeout: Duration::from_secs(240),
            tansu: PathBuf::from("tansu"),
            database_url: "postgres://127.0.0.1:5432/postgres".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            seed: 42,
            phases: Phases::All,
            sabotage: None,
            relays: 1,
            watermarks: false,
        }
    }
}

/// Runs the harness; the report's [`ChaosReport::line`] is the verdict.
///
/// # Errors
/// When a service cannot be reached or set up (not when an invariant is violated:
/// that is in the report).
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    for point in faults::KILL_POINTS {
        anyhow::ensure!(
            testing::KILL_POINTS.contains(&point),
            "{point} is not a fail point of reliable-kafka ({:?})",
            testing::KILL_POINTS
        );
    }
    if let Some(s) = cfg.sabotage {
        eprintln!("chaos: SABOTAGED: {} is on; this run is expected to fail", s.fail_point());
        testing::fail::cfg(s.fail_point(), "return").map_err(|e| anyhow::anyhow!("fail point: {e}"))?;
    }
    let dir = std::env::temp_dir().join(format!("concert-chaos-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("chaos: logs of the broker and the workers in {}", dir.display());
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&cfg.database_url).await?;
    let database = format!("concert_chaos_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
    let result = run_in(&cfg, &dir, admin.clone(), &database).await;
    // Keep the database of a failed run for inspection.
    if result.as_ref().is_ok_and(ChaosReport::is_ok) {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).execute(&admin).await?;
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("chaos: database {database} and logs in {} kept for inspection", dir.display());
    }
    result
}

async fn run_in(cfg: &ChaosConfig, dir: &Path, admin: sqlx::PgPool, database: &str) -> anyhow::Result<ChaosReport> {
    let mut url = reqwest::Url::parse(&cfg.database_url)?;
    url.set_path(database);
    let front_url = url.to_string();
    url.query_pairs_mut().append_pair("application_name", WORKER_APPLICATION_NAME);
    let worker_url = url.to_string();
    let pool = Db::connect(&front_url, 20).await?;
    let namespace = format!("chaos-{}", uuid::Uuid::now_v7().simple());
    let store = Store::connect(&cfg.redis_url, Duration::from_secs(600), &namespace).await?;
    let mut report = ChaosReport::default();
    let mut waves = Vec::new();
    if cfg.phases != Phases::Mock {
        let ctx = phases::TansuPhase { dir, admin, database, worker_url, namespace };
        waves.extend(phases::tansu_phase(cfg, ctx, &pool, &store, &mut report).await?);
    }
    if cfg.phases != Phases::Tansu {
        // Phase 2: broker errors on the mock cluster, whole app in this process.
        waves.extend(phases::mock_phase(cfg, &pool, &store, &mut report).await?);
    }
    for kind in [
        "gateway-webhook/gateway-503",
        "gateway-webhook/gateway-hang",
        "gateway-webhook/webhook-500",
        "gateway-webhook/webhook-stall",
    ] {
        let n = report.faults.get(kind).copied().unwrap_or(0);
        report.count("gateway-webhook", n);
    }
    for wave in &waves {
        let r = checks::check_wave(&pool, &store, wave).await?;
        checks::add_wave(&mut report, wave, &r);
    }
    // Every event published: the outbox's rows, pending, parked or delivered.
    let backlog = pool.outbox_backlog().await?;
    report.messages = i64::try_from(backlog.pending + backlog.parked + backlog.delivered).unwrap_or(i64::MAX);
    report.kinds = checks::kinds_done(&mut report, cfg.faults_per_kind, cfg.phases);
    if cfg.watermarks {
        checks::watermarks_used(&pool, &mut report).await?;
    }
    // The violated invariants first, then what kept the run from settling.
    let (mut first, rest): (Vec<String>, Vec<String>) =
        report.problems.drain(..).partition(|p| p.starts_with("wave ") || p.starts_with("false dead"));
    first.extend(rest);
    report.problems = first;
    pool.close().await;
    Ok(report)
}
