//! `concert`: the reference application of reliable-kafka.
//!
//! Delivery semantics: every event leaves through the transactional outbox
//! (at-least-once, per-key order) and is consumed by idempotent consumer groups
//! (database effects once per event); notifications that keep failing are
//! dead-lettered, re-driven at most 3 times, then parked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use concert::app::{App, AppConfig, Flows, WorkerRole, Workers};
use concert::chaos::{self, ChaosConfig};
use concert::config::Env;
use concert::db::Db;
use concert::scenario::{self, ScenarioConfig};
use concert::store::Store;
use reliable_kafka::{EmbeddedKafka, KafkaConfig};

#[derive(Parser)]
#[command(version, about = "Concert booking reference application of reliable-kafka")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FlowsArg {
    /// Every flow of the seed documents; report `users= payments= failed= coupons= notified= dead_lettered=`.
    All,
    /// Only payment-failure compensation (seed 000); report `payments= failed= compensated_db= cleaned_redis=`.
    PaymentFailure,
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
        #[arg(long, value_enum, default_value_t = FlowsArg::All)]
        flows: FlowsArg,
        /// Run without gateway and webhook faults.
        #[arg(long)]
        no_faults: bool,
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
    },
    /// The fault-injection harness: drives users through every flow while processes
    /// are killed at the worst moments, the broker restarts, PostgreSQL connections and
    /// Redis drop, groups rebalance, the gateway and webhook fail; prints, last,
    /// `chaos: ok messages= faults= kinds= lost=0 duplicated=0 dead_lettered= compensated=`
    /// or `chaos: FAILED …` (exit 1). Needs PostgreSQL (`DATABASE_URL`, default
    /// postgres://127.0.0.1:5432/postgres; a database is created per run), Redis
    /// (`REDIS_URL`, default redis://127.0.0.1:6379) and the tansu binary.
    Chaos {
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
        /// Phases to run: `all`, `tansu` (worker processes on tansu) or `mock` (the
        /// mock cluster's broker errors; needs no tansu).
        #[arg(long, value_enum, default_value_t = PhasesArg::All)]
        phases: PhasesArg,
        /// Seconds the pipeline may take to settle after the faults of a phase.
        #[arg(long, default_value_t = 240)]
        settle_timeout_secs: u64,
        /// Switch a mechanism off to show the run fails without it: `no-dedup`,
        /// `offsets-before-commit` or `mark-before-send`.
        #[arg(long, value_enum)]
        sabotage: Option<SabotageArg>,
    },
    /// A relay or consumer process of the chaos harness (started by `chaos`). Reads
    /// `kill <fail point>` lines on stdin; stops gracefully on SIGTERM or end of stdin.
    #[command(hide = true)]
    Worker {
        /// What to run.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Notification webhook URL.
        #[arg(long)]
        webhook_url: String,
        /// Records per consumer transaction.
        #[arg(long, default_value_t = 20)]
        max_batch: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SabotageArg {
    NoDedup,
    OffsetsBeforeCommit,
    MarkBeforeSend,
}

#[derive(Clone, Copy, ValueEnum)]
enum PhasesArg {
    All,
    Tansu,
    Mock,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Relay,
    Consumers,
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,concert=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let env = Env::from_env();
    match cli.command {
        Some(Command::Chaos {
            faults_per_kind,
            users_per_wave,
            concurrency,
            fault_interval_ms,
            max_minutes,
            tansu,
            seed,
            phases,
            sabotage,
            settle_timeout_secs,
        }) => {
            let defaults = ChaosConfig::default();
            let cfg = ChaosConfig {
                faults_per_kind,
                users_per_wave,
                concurrency,
                fault_interval: Duration::from_millis(fault_interval_ms),
                max_duration: Duration::from_secs(max_minutes * 60),
                tansu: tansu.unwrap_or_else(find_tansu),
                database_url: env.database_url.clone().unwrap_or(defaults.database_url.clone()),
                redis_url: env.redis_url.clone().unwrap_or(defaults.redis_url.clone()),
                seed,
                settle_timeout: Duration::from_secs(settle_timeout_secs),
                phases: match phases {
                    PhasesArg::All => chaos::Phases::All,
                    PhasesArg::Tansu => chaos::Phases::Tansu,
                    PhasesArg::Mock => chaos::Phases::Mock,
                },
                sabotage: sabotage.map(|s| match s {
                    SabotageArg::NoDedup => chaos::Sabotage::NoDedup,
                    SabotageArg::OffsetsBeforeCommit => chaos::Sabotage::OffsetsBeforeCommit,
                    SabotageArg::MarkBeforeSend => chaos::Sabotage::MarkBeforeSend,
                }),
            };
            let report = chaos::run(cfg).await?;
            let faults: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
            println!("chaos faults: {}", faults.join(" "));
            for p in &report.problems {
                println!("chaos problem: {p}");
            }
            println!("{}", report.line());
            if !report.is_ok() {
                std::process::exit(1);
            }
            return Ok(());
        }
        Some(Command::Worker { role, webhook_url, max_batch }) => {
            let role = match role {
                RoleArg::Relay => WorkerRole::Relay,
                RoleArg::Consumers => WorkerRole::Consumers,
            };
            return run_worker(&env, role, &webhook_url, max_batch).await;
        }
        _ => {}
    }
    let services = Services::start(&env).await?;
    let Services { db, store, kafka, embedded_kafka: _embedded_kafka, .. } = &services;
    let (db, store, kafka) = (db.clone(), store.clone(), kafka.clone());
    match cli.command {
        Some(Command::Serve { listen, gateway_url, webhook_url, redrive_interval_secs }) => {
            let cfg = AppConfig {
                api_addr: listen,
                gateway_url,
                webhook_url,
                redrive_interval: Duration::from_secs(redrive_interval_secs),
                ..AppConfig::default()
            };
            let cfg = AppConfig { create_topics: services.embedded_kafka.is_none(), ..cfg };
            let app = App::start(db, store, kafka, &cfg).await?;
            eprintln!("serving on {}; Ctrl-C stops", app.api.url());
            tokio::signal::ctrl_c().await?;
            app.stop().await?;
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
                    no_faults,
                }) => ScenarioConfig {
                    users,
                    failure_rate,
                    concurrency,
                    seed,
                    settle_timeout: Duration::from_secs(settle_timeout_secs),
                    flows: match flows {
                        FlowsArg::All => Flows::All,
                        FlowsArg::PaymentFailure => Flows::PaymentFailure,
                    },
                    inject_faults: !no_faults,
                    progress: true,
                    create_topics: true,
                },
                _ => ScenarioConfig::demo(),
            };
            let cfg = ScenarioConfig { create_topics: services.embedded_kafka.is_none(), ..cfg };
            let report = scenario::run(db, store, kafka, &cfg).await?;
            eprintln!(
                "users={} wall={:.1}s throughput={:.0} users/s",
                cfg.users,
                report.wall.as_secs_f64(),
                cfg.users as f64 / report.wall.as_secs_f64()
            );
            println!("{}", report.line(cfg.flows));
            services.stop().await;
            if !report.is_ok() {
                std::process::exit(1);
            }
            return Ok(());
        }
    }
    services.stop().await;
    Ok(())
}

/// The database, key-value store and Kafka cluster of this run: the real services
/// where their variables are set, embedded stand-ins where not.
struct Services {
    db: Db,
    store: Store,
    kafka: KafkaConfig,
    embedded_kafka: Option<EmbeddedKafka>,
    /// The SQLite file created for this run, removed at the end.
    temporary_db: Option<PathBuf>,
}

impl Services {
    async fn start(env: &Env) -> anyhow::Result<Services> {
        let temporary_db = env
            .database_url
            .is_none()
            .then(|| std::env::temp_dir().join(format!("concert-{}.db", uuid::Uuid::now_v7().simple())));
        let database_url = match (&env.database_url, &temporary_db) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => format!("sqlite://{}", path.display()),
            (None, None) => unreachable!("a temporary database when DATABASE_URL is unset"),
        };
        let embedded_kafka = match env.kafka {
            Some(_) => None,
            None => {
                let cluster = EmbeddedKafka::start(1)?;
                let topics = concert::app::topics();
                let specs: Vec<(&str, i32)> =
                    topics.iter().map(|t| (t.as_str(), AppConfig::default().partitions)).collect();
                cluster.create_topics(&specs)?;
                Some(cluster)
            }
        };
        let kafka = match (&env.kafka, &embedded_kafka) {
            (Some(k), _) => k.clone(),
            (None, Some(cluster)) => cluster.config(),
            (None, None) => unreachable!("an embedded cluster when KAFKA_BROKERS is unset"),
        };
        // The first log line says what this run uses.
        tracing::info!(
            database = %match &temporary_db {
                Some(path) => format!("SQLite {} (embedded default; DATABASE_URL unset)", path.display()),
                None => redact(&database_url),
            },
            kafka = %match &embedded_kafka {
                Some(c) => format!("librdkafka mock cluster at {} (in-process, not durable; KAFKA_BROKERS unset)", c.bootstrap_servers()),
                None => kafka.brokers().to_owned(),
            },
            store = %match &env.redis_url {
                Some(url) => redact(url),
                None => "in-process key-value store (REDIS_URL unset)".to_owned(),
            },
            "concert services"
        );
        let db = Db::connect(&database_url, 30).await?;
        let ttl = Duration::from_secs(600);
        let store = match &env.redis_url {
            Some(url) => Store::connect(url, ttl, &env.redis_namespace).await?,
            None => Store::in_memory(ttl, &env.redis_namespace),
        };
        Ok(Services { db, store, kafka, embedded_kafka, temporary_db })
    }

    async fn stop(self) {
        self.db.close().await;
        drop(self.embedded_kafka);
        if let Some(path) = self.temporary_db {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// `tansu` on PATH, else `~/.cargo/bin/tansu`.
fn find_tansu() -> PathBuf {
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).find(|f| f.is_file()));
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo").join("bin").join("tansu")
    })
}

/// A chaos worker: `role` until SIGTERM or the end of stdin; `kill <point>` on stdin
/// makes it SIGKILL itself the next time it passes that fail point.
async fn run_worker(env: &Env, role: WorkerRole, webhook_url: &str, max_batch: usize) -> anyhow::Result<()> {
    // First, so that a SIGTERM during start-up still means a graceful stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (Some(db_url), Some(redis_url), Some(kafka)) = (&env.database_url, &env.redis_url, &env.kafka) else {
        anyhow::bail!("a worker needs DATABASE_URL, REDIS_URL and KAFKA_BROKERS");
    };
    static ARMED: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);
    for point in chaos::KILL_POINTS {
        fail::cfg_callback(point, move || {
            if *ARMED.lock().unwrap() == Some(point) {
                eprintln!("chaos worker: SIGKILL at {point}");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        })
        .map_err(|e| anyhow::anyhow!("fail point {point}: {e}"))?;
    }
    if let Some(point) = std::env::var("CHAOS_SABOTAGE").ok().filter(|p| !p.is_empty()) {
        fail::cfg(point.as_str(), "return").map_err(|e| anyhow::anyhow!("fail point {point}: {e}"))?;
    }
    let db = Db::connect(db_url, 10).await?;
    let store = Store::connect(redis_url, Duration::from_secs(600), &env.redis_namespace).await?;
    let cfg = AppConfig { max_batch, ..ScenarioConfig::default().app_config() };
    let workers = Workers::start(db.clone(), &store, kafka, &cfg, role, webhook_url)?;
    // stdin is read on a thread of its own: tokio's stdin reads on its blocking pool,
    // and the runtime would wait at exit for that read to end.
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            _ = term.recv() => break,
            line = line_rx.recv() => match line {
                None => break,
                Some(l) => {
                    let point = l.strip_prefix("kill ").and_then(|p| chaos::KILL_POINTS.iter().find(|k| **k == p.trim()));
                    *ARMED.lock().unwrap() = point.copied();
                }
            },
        }
    }
    tracing::info!("stopping: draining, committing, flushing");
    workers.stop().await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
