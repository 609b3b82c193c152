//! The fault-injection harness (`concert chaos`): the reference flows under crashes,
//! outages and timeouts at the worst moments, ending with one line of numbers.
//!
//! Phase 1 runs on PostgreSQL, Redis and a tansu broker of its own: this process serves
//! the API, the demo gateway and webhook receiver, the recovery and the re-driver,
//! while the outbox relay and two members of every consumer group run as [`Workers`]
//! child processes (`concert worker`). Users are driven through every flow in waves
//! while, in turn:
//!
//! | kind | how |
//! |---|---|
//! | `consumer-kill` | a consumer process SIGKILLs itself at the fail point `rk-consumer-after-commit` (handler transaction committed, offset not committed), and, as a control, at `rk-consumer-before-commit` |
//! | `relay-kill` | the relay process SIGKILLs itself at `rk-relay-after-send` (Kafka acknowledged, rows not marked), and at `rk-relay-before-send` |
//! | `broker` | tansu is stopped and restarted on the same storage; in phase 2, errors are injected into librdkafka's mock cluster |
//! | `db-drop` | every PostgreSQL connection of the workers is terminated (`pg_terminate_backend`), handler transactions included |
//! | `redis-outage` | Redis drops its clients and pauses for 1.5 s (`CLIENT KILL`, `CLIENT PAUSE`) |
//! | `rebalance` | a third consumer process joins every group, then the oldest leaves (SIGTERM) |
//! | `gateway-webhook` | the demo gateway answers 503 or hangs past the client timeout; the webhook answers 503 or stalls |
//! | `sigterm` | a consumer or relay process gets SIGTERM and must exit 0 (drained, committed, flushed) |
//!
//! Phase 2 runs the whole application in this process on a 3-broker mock cluster while
//! produce, fetch, offset-commit and heartbeat requests fail and group coordinators and
//! partition leaders move.
//!
//! Then it waits for the pipeline to settle and checks every invariant of the
//! scenario's consistency report on every wave (seat counts, balances, refunds once,
//! one coupon per user, each event's effect once, every failed payment compensated,
//! every completed payment notified or dead-lettered), plus: no record on the
//! dead-letter topics of groups whose handlers cannot fail (a false dead letter), and
//! every SIGTERMed process exited 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reliable_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use reliable_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use reliable_kafka::rdkafka::ClientConfig;
use reliable_kafka::{EmbeddedKafka, KafkaConfig, MockFault, DEFAULT_DEAD_LETTER_SUFFIX};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use crate::app::{App, AppConfig, Flows, WorkerRole};
use crate::db::Db;
use crate::events::{PAYMENT_NOTIFICATION_TOPIC, TOPICS};
use crate::scenario::{check, drive_wave, Report, ScenarioConfig, Wave};
use crate::sql;
use crate::store::Store;

/// `application_name` of the workers' PostgreSQL connections (the `db-drop` fault
/// terminates exactly these).
pub const WORKER_APPLICATION_NAME: &str = "concert-chaos-worker";

/// The fail points a worker can be told to die at (SIGKILL), one per line on its stdin
/// (`kill <point>`).
pub const KILL_POINTS: [&str; 4] =
    ["rk-consumer-after-commit", "rk-consumer-before-commit", "rk-relay-after-send", "rk-relay-before-send"];

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
}

/// A mechanism of the library the harness can switch off (fail points of the
/// `failpoints` feature), to show that the run then fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            Sabotage::NoDedup => "rk-sabotage-no-dedup",
            Sabotage::OffsetsBeforeCommit => "rk-sabotage-offsets-before-commit",
            Sabotage::MarkBeforeSend => "rk-sabotage-mark-before-send",
        }
    }
}

/// The phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    /// Both (the default; every fault kind).
    All,
    /// Only phase 1 (tansu, worker processes).
    Tansu,
    /// Only phase 2 (the mock cluster; no tansu needed).
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
        }
    }
}

/// What a harness run found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Events published (outbox rows).
    pub messages: i64,
    /// Faults that landed, by kind (sub-kinds named `kind/detail`).
    pub faults: BTreeMap<String, u64>,
    /// Fault kinds of the eight exercised at least `faults_per_kind` times.
    pub kinds: usize,
    /// Effects missing.
    pub lost: i64,
    /// Effects applied twice.
    pub duplicated: i64,
    /// Notifications dead-lettered and parked after their re-drives.
    pub dead_lettered: i64,
    /// Failed payments compensated.
    pub compensated: i64,
    /// Every violated invariant, the first one first.
    pub problems: Vec<String>,
}

impl ChaosReport {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.lost == 0 && self.duplicated == 0
    }

    /// Faults that landed, all kinds.
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().filter(|(k, _)| !k.contains('/')).map(|(_, n)| n).sum()
    }

    /// The last line: `chaos: ok messages=… faults=… kinds=… lost=0 duplicated=0 dead_lettered=… compensated=…`,
    /// or `chaos: FAILED …` followed by the first violated invariant.
    pub fn line(&self) -> String {
        let numbers = format!(
            "messages={} faults={} kinds={} lost={} duplicated={} dead_lettered={} compensated={}",
            self.messages,
            self.total_faults(),
            self.kinds,
            self.lost,
            self.duplicated,
            self.dead_lettered,
            self.compensated
        );
        match self.problems.first() {
            None if self.is_ok() => format!("chaos: ok {numbers}"),
            first => format!("chaos: FAILED {numbers} first={:?}", first.map(String::as_str).unwrap_or("")),
        }
    }

    fn count(&mut self, kind: &str, n: u64) {
        *self.faults.entry(kind.to_owned()).or_default() += n;
    }
}

/// A worker child process.
struct Worker {
    role: WorkerRole,
    name: String,
    child: Child,
    stdin: ChildStdin,
    started: Instant,
}

impl Worker {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// Asks the worker to SIGKILL itself at `point`; returns whether it did within `wait`.
    async fn kill_at(&mut self, point: &str, wait: Duration) -> anyhow::Result<bool> {
        let armed = async {
            self.stdin.write_all(format!("kill {point}\n").as_bytes()).await?;
            self.stdin.flush().await
        };
        if armed.await.is_err() {
            return Ok(false); // the worker is gone already: not a landed fault
        }
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                Ok(status?.signal() == Some(Signal::SIGKILL as i32))
            }
            Err(_) => {
                let _ = self.stdin.write_all(b"disarm\n").await;
                Ok(false)
            }
        }
    }

    /// SIGTERM; the exit status, or `None` when it did not exit within `wait` (then it
    /// is killed).
    async fn terminate(mut self, wait: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        kill(self.pid(), Signal::SIGTERM)?;
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }
}

/// The tansu broker of the run.
struct Broker {
    tansu: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// How far `tansu.log` has been read for signs of a dead storage actor.
    log_read: u64,
}

impl Broker {
    async fn start(tansu: &Path, dir: &Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut b = Broker { tansu: tansu.to_owned(), dir: dir.to_owned(), port, child: None, log_read: 0 };
        b.spawn().await?;
        Ok(b)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start tansu ({}); install it or pass --tansu", self.tansu.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.address()).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "tansu did not listen on {} within 20 s", self.address());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the broker (`crash`: SIGKILL; else SIGINT, SIGKILL after 5 s) and starts it
    /// again on the same storage after `down`.
    async fn restart(&mut self, down: Duration, crash: bool) -> anyhow::Result<()> {
        if crash {
            if let Some(mut child) = self.child.take() {
                child.kill().await?;
            }
        }
        self.stop().await?;
        tokio::time::sleep(down).await;
        self.spawn().await
    }

    /// Whether tansu logged, since the last call, that its storage actor is gone.
    ///
    /// tansu 0.6.0's storage actor (`ChannelRequestService::serve`) ends at the first
    /// error of any request, including a client that disconnected while its request
    /// was served (a killed process); every later request then fails with
    /// `UnableToSend` while the process stays up. The harness restarts it then, as a
    /// liveness probe would; its storage keeps the data.
    fn storage_dead(&mut self) -> anyhow::Result<bool> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(self.dir.join("tansu.log"))?;
        f.seek(std::io::SeekFrom::Start(self.log_read))?;
        let mut text = Vec::new();
        f.read_to_end(&mut text)?;
        self.log_read += text.len() as u64;
        Ok(String::from_utf8_lossy(&text).contains("SendError"))
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Everything a run owns: its database, broker, Redis namespace and worker processes.
struct Run {
    cfg: ChaosConfig,
    dir: PathBuf,
    admin: sqlx::PgPool,
    database: String,
    worker_url: String,
    namespace: String,
    broker: Arc<tokio::sync::Mutex<Broker>>,
    brokers: String,
    webhook_url: String,
    workers: Vec<Worker>,
    spawned: usize,
    report: ChaosReport,
}

impl Run {
    fn spawn_worker(&mut self, role: WorkerRole) -> anyhow::Result<()> {
        self.spawned += 1;
        let name = format!(
            "{}-{}",
            match role {
                WorkerRole::Relay => "relay",
                WorkerRole::Consumers => "consumers",
            },
            self.spawned
        );
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .args(["--role", if role == WorkerRole::Relay { "relay" } else { "consumers" }])
            .args(["--webhook-url", &self.webhook_url])
            .env("DATABASE_URL", &self.worker_url)
            .env("REDIS_URL", &self.cfg.redis_url)
            .env("REDIS_NAMESPACE", &self.namespace)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000")
            .env("KAFKA_CONFIG_HEARTBEAT_INTERVAL_MS", "500")
            .env("KAFKA_CONFIG_RECONNECT_BACKOFF_MAX_MS", "500")
            .env("KAFKA_CONFIG_TOPIC_METADATA_REFRESH_INTERVAL_MS", "2000")
            .env("CHAOS_SABOTAGE", self.cfg.sabotage.map_or("", Sabotage::fail_point))
            .env("RUST_LOG", std::env::var("CHAOS_WORKER_LOG").unwrap_or_else(|_| "warn,concert=info".into()))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        self.workers.push(Worker { role, name, child, stdin, started: Instant::now() });
        Ok(())
    }

    fn take_worker(&mut self, role: WorkerRole) -> Worker {
        // The oldest of the role.
        let i = self.workers.iter().position(|w| w.role == role).expect("a worker of the role");
        self.workers.remove(i)
    }

    /// Restarts workers that died on their own (a crash is a finding, not a fault).
    async fn check_workers(&mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(status) = w.child.try_wait()? {
                dead.push((i, w.name.clone(), status));
            }
        }
        for (i, name, status) in dead.into_iter().rev() {
            let w = self.workers.remove(i);
            self.report.problems.push(format!("worker {name} exited on its own: {status}"));
            self.spawn_worker(w.role)?;
        }
        Ok(())
    }

    async fn inject(&mut self, kind: Kind, turn: u64) -> anyhow::Result<()> {
        match kind {
            Kind::ConsumerKill { after_commit } => {
                let point = if after_commit { KILL_POINTS[0] } else { KILL_POINTS[1] };
                let mut w = self.take_worker(WorkerRole::Consumers);
                let landed = w.kill_at(point, Duration::from_secs(30)).await?;
                if landed {
                    self.report.count("consumer-kill", u64::from(after_commit));
                    self.report.count(&format!("consumer-kill/{point}"), 1);
                } else {
                    w.child.kill().await?;
                }
                self.spawn_worker(WorkerRole::Consumers)?;
            }
            Kind::RelayKill { after_send } => {
                let point = if after_send { KILL_POINTS[2] } else { KILL_POINTS[3] };
                let mut w = self.take_worker(WorkerRole::Relay);
                if w.kill_at(point, Duration::from_secs(30)).await? {
                    self.report.count("relay-kill", u64::from(after_send));
                    self.report.count(&format!("relay-kill/{point}"), 1);
                } else {
                    w.child.kill().await?;
                }
                self.spawn_worker(WorkerRole::Relay)?;
            }
            Kind::BrokerRestart => {
                let crash = turn.is_multiple_of(2);
                self.broker.lock().await.restart(Duration::from_millis(500 + 250 * (turn % 4)), crash).await?;
                self.report.count("broker", 1);
                self.report.count("broker/tansu-restart", 1);
                self.report
                    .count(if crash { "broker/tansu-restart-sigkill" } else { "broker/tansu-restart-sigint" }, 1);
            }
            Kind::DbDrop => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name = $2",
                )
                .bind(&self.database)
                .bind(WORKER_APPLICATION_NAME)
                .fetch_one(&self.admin)
                .await?;
                if n > 0 {
                    self.report.count("db-drop", 1);
                    self.report.count("db-drop/connections", n as u64);
                }
            }
            Kind::RedisOutage => {
                let client = redis::Client::open(self.cfg.redis_url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let _: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                    .query_async(&mut conn)
                    .await?;
                let _: () = redis::cmd("CLIENT").arg(&["PAUSE", "1500", "ALL"][..]).query_async(&mut conn).await?;
                self.report.count("redis-outage", 1);
            }
            Kind::Rebalance => {
                self.spawn_worker(WorkerRole::Consumers)?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let w = self.take_worker(WorkerRole::Consumers);
                self.expect_clean_exit(w).await?;
                self.report.count("rebalance", 1);
            }
            Kind::Sigterm => {
                let done = self.report.faults.get("sigterm").copied().unwrap_or(0);
                let role = if done.is_multiple_of(3) { WorkerRole::Relay } else { WorkerRole::Consumers };
                let w = self.take_worker(role);
                if let Some(rest) = Duration::from_secs(3).checked_sub(w.started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                self.expect_clean_exit(w).await?;
                self.report.count("sigterm", 1);
                self.spawn_worker(role)?;
            }
        }
        Ok(())
    }

    async fn expect_clean_exit(&mut self, w: Worker) -> anyhow::Result<()> {
        let name = w.name.clone();
        if std::env::var_os("CHAOS_GDB_ON_HANG").is_some() {
            // Debug aid: the threads of a worker that does not stop within 20 s.
            let pid = w.pid().as_raw();
            let out = self.dir.join(format!("{name}.hang.txt"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if kill(Pid::from_raw(pid), None).is_ok() {
                    let bt = Command::new("gdb")
                        .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
                        .output()
                        .await;
                    if let Ok(bt) = bt {
                        let _ = std::fs::write(out, bt.stdout);
                    }
                }
            });
        }
        match w.terminate(Duration::from_secs(60)).await? {
            Some(status) if status.success() => {}
            Some(status) => self.report.problems.push(format!("worker {name} ended with {status} after SIGTERM")),
            None => self.report.problems.push(format!("worker {name} did not stop within 60 s of SIGTERM")),
        }
        Ok(())
    }
}

/// Restarts tansu when its storage actor died (see [`Broker::storage_dead`]) or the
/// process exited; counts the revivals.
async fn watch_broker(broker: Arc<tokio::sync::Mutex<Broker>>, revived: Arc<AtomicU64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut b = broker.lock().await;
        let exited = b.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || b.storage_dead().unwrap_or(false) {
            tracing::warn!(exited, "tansu stopped serving; restarting it");
            match b.restart(Duration::from_millis(100), true).await {
                Ok(()) => {
                    revived.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(error = %e, "tansu restart failed"),
            }
        }
    }
}

/// A fault of phase 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ConsumerKill { after_commit: bool },
    RelayKill { after_send: bool },
    BrokerRestart,
    DbDrop,
    RedisOutage,
    Rebalance,
    Sigterm,
}

const SCHEDULE: [Kind; 9] = [
    Kind::ConsumerKill { after_commit: true },
    Kind::RelayKill { after_send: true },
    Kind::DbDrop,
    Kind::BrokerRestart,
    Kind::ConsumerKill { after_commit: false },
    Kind::RedisOutage,
    Kind::RelayKill { after_send: false },
    Kind::Sigterm,
    Kind::Rebalance,
];

/// Runs the harness; the report's [`ChaosReport::line`] is the verdict.
///
/// # Errors
/// When a service cannot be reached or set up (not when an invariant is violated:
/// that is in the report).
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    if let Some(s) = cfg.sabotage {
        eprintln!("chaos: SABOTAGED: {} is on; this run is expected to fail", s.fail_point());
        fail::cfg(s.fail_point(), "return").map_err(|e| anyhow::anyhow!("fail point: {e}"))?;
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
        waves.extend(tansu_phase(cfg, dir, admin, database, worker_url, namespace, &pool, &store, &mut report).await?);
    }
    if cfg.phases != Phases::Tansu {
        // Phase 2: broker errors on the mock cluster, whole app in this process.
        waves.extend(mock_phase(cfg, &pool, &store, &mut report).await?);
    }
    for kind in [
        "gateway-webhook/gateway-503",
        "gateway-webhook/gateway-hang",
        "gateway-webhook/webhook-503",
        "gateway-webhook/webhook-stall",
    ] {
        let n = report.faults.get(kind).copied().unwrap_or(0);
        report.count("gateway-webhook", n);
    }
    for wave in &waves {
        let r = check_wave(&pool, &store, wave).await?;
        add_wave(&mut report, wave, &r);
    }
    report.messages = sql!(&pool, query_scalar("SELECT count(*) FROM rk_outbox").fetch_one())?;
    report.kinds = kinds_done(&mut report, cfg.faults_per_kind, cfg.phases);
    // The violated invariants first, then what kept the run from settling.
    let (mut first, rest): (Vec<String>, Vec<String>) =
        report.problems.drain(..).partition(|p| p.starts_with("wave ") || p.starts_with("false dead"));
    first.extend(rest);
    report.problems = first;
    pool.close().await;
    Ok(report)
}

/// Phase 1: tansu, PostgreSQL, Redis, worker processes; every fault kind but the mock
/// cluster's.
#[allow(clippy::too_many_arguments)]
async fn tansu_phase(
    cfg: &ChaosConfig,
    dir: &Path,
    admin: sqlx::PgPool,
    database: &str,
    worker_url: String,
    namespace: String,
    pool: &Db,
    store: &Store,
    report: &mut ChaosReport,
) -> anyhow::Result<Vec<Wave>> {
    let broker = Broker::start(&cfg.tansu, dir).await?;
    let brokers = broker.address();
    let broker = Arc::new(tokio::sync::Mutex::new(broker));
    let revived = Arc::new(AtomicU64::new(0));
    let watchdog = tokio::spawn(watch_broker(broker.clone(), revived.clone()));
    let kafka = KafkaConfig::new(brokers.clone())
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("reconnect.backoff.max.ms", "500");
    let scenario = ScenarioConfig {
        users: cfg.users_per_wave,
        concurrency: cfg.concurrency,
        seed: cfg.seed,
        progress: false,
        ..ScenarioConfig::default()
    };
    let app_cfg = AppConfig { pipeline: false, max_batch: 20, ..scenario.app_config() };
    let app = App::start(pool.clone(), store.clone(), kafka.clone(), &app_cfg).await?;
    let webhook_url = app.receiver.as_ref().map(|(_, s)| format!("{}/notify", s.url())).expect("demo receiver");
    let mut run = Run {
        cfg: cfg.clone(),
        dir: dir.to_owned(),
        admin,
        database: database.to_owned(),
        worker_url,
        namespace,
        broker: broker.clone(),
        brokers: brokers.clone(),
        webhook_url,
        workers: Vec::new(),
        spawned: 0,
        report: std::mem::take(report),
    };
    run.spawn_worker(WorkerRole::Relay)?;
    run.spawn_worker(WorkerRole::Consumers)?;
    run.spawn_worker(WorkerRole::Consumers)?;

    // Users, in waves, until the faults are done.
    let (stop_load, load_stopped) = watch::channel(false);
    let load = {
        let (pool, base, scenario) = (pool.clone(), app.api.url(), scenario.clone());
        tokio::spawn(drive_waves(pool, base, scenario, load_stopped))
    };
    let started = Instant::now();
    let n = u64::from(cfg.faults_per_kind);
    let mut turn = 0u64;
    let mut landed: BTreeMap<String, u64> = BTreeMap::new();
    let mut tried: BTreeMap<String, u64> = BTreeMap::new();
    while SCHEDULE.iter().any(|k| landed.get(&format!("{k:?}")).copied().unwrap_or(0) < n) {
        if started.elapsed() > cfg.max_duration {
            run.report.problems.push(format!("fault phase exceeded {:?}", cfg.max_duration));
            break;
        }
        let kind = SCHEDULE[(turn % SCHEDULE.len() as u64) as usize];
        turn += 1;
        if landed.get(&format!("{kind:?}")).copied().unwrap_or(0) >= n {
            continue;
        }
        let tries = tried.entry(format!("{kind:?}")).or_default();
        *tries += 1;
        if *tries > 2 * n + 5 {
            // A kind that does not land is reported short by `kinds_done`.
            landed.insert(format!("{kind:?}"), n);
            run.report.problems.push(format!("{kind:?} did not land in {} tries", *tries - 1));
            continue;
        }
        run.check_workers().await?;
        let before = run.report.faults.clone();
        run.inject(kind, turn).await.with_context(|| format!("inject {kind:?}"))?;
        if run.report.faults != before {
            *landed.entry(format!("{kind:?}")).or_default() += 1;
        }
        tracing::info!(?kind, turn, elapsed = ?started.elapsed(), "fault injected");
        tokio::time::sleep(cfg.fault_interval).await;
    }
    let _ = stop_load.send(true);
    let waves = load.await??;
    eprintln!("chaos: phase 1 faults done after {:.0} s; settling", started.elapsed().as_secs_f64());
    run.check_workers().await?;
    let settled = settle(pool, store, &waves, cfg.settle_timeout).await?;
    if !settled {
        run.report.problems.push(format!("phase 1 did not settle within {:?}", cfg.settle_timeout));
    }
    for w in std::mem::take(&mut run.workers) {
        run.expect_clean_exit(w).await?;
    }
    run.report.problems.extend(false_dead_letters(&brokers, AppConfig::default().partitions).await?);
    count_demo_faults(&app, &mut run.report);
    app.stop().await?;
    watchdog.abort();
    broker.lock().await.stop().await?;
    run.report.count("broker/tansu-revived", revived.load(Ordering::Relaxed));

    *report = run.report;
    Ok(waves)
}

/// The faults the demo gateway and webhook receiver injected.
fn count_demo_faults(app: &App, report: &mut ChaosReport) {
    if let Some((g, _)) = &app.gateway {
        let (errors, hangs) = g.faults();
        report.count("gateway-webhook/gateway-503", errors);
        report.count("gateway-webhook/gateway-hang", hangs);
    }
    if let Some((r, _)) = &app.receiver {
        let (errors, delays) = r.faults();
        report.count("gateway-webhook/webhook-503", errors);
        report.count("gateway-webhook/webhook-stall", delays);
    }
}

/// The consistency report of `wave`; a failed query is retried (the Redis connection
/// may just have been dropped by a fault).
async fn check_wave(pool: &Db, store: &Store, wave: &Wave) -> anyhow::Result<Report> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match check(pool, store, wave.run_id, wave.coupon_id, Flows::All).await {
            Ok(r) => return Ok(r),
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, "consistency check failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn add_wave(report: &mut ChaosReport, wave: &Wave, r: &Report) {
    report.lost += r.lost;
    report.duplicated += r.duplicated + wave.idempotency_violations;
    report.dead_lettered += r.dead_lettered;
    report.compensated += r.compensated_db;
    for p in &r.problems {
        report.problems.push(format!("wave {}: {p}", wave.run_id));
    }
    if wave.errors > 0 {
        report.problems.push(format!("wave {}: {} users got an unexpected HTTP answer", wave.run_id, wave.errors));
    }
    if wave.idempotency_violations > 0 {
        report.problems.push(format!(
            "wave {}: repeated payment requests answered differently: {}",
            wave.run_id, wave.idempotency_violations
        ));
    }
}

/// The eight fault kinds, each with the sub-counts it needs (those of the phases run);
/// records a problem for each kind short of `n`.
fn kinds_done(report: &mut ChaosReport, n: u32, phases: Phases) -> usize {
    let n = u64::from(n);
    let get = |k: &str| report.faults.get(k).copied().unwrap_or(0);
    let needs: [(&str, Vec<&str>); 8] = [
        ("consumer-kill", vec!["consumer-kill/rk-consumer-after-commit"]),
        ("relay-kill", vec!["relay-kill/rk-relay-after-send"]),
        ("broker", vec!["broker/tansu-restart", "broker/mock-faults"]),
        ("db-drop", vec!["db-drop"]),
        ("redis-outage", vec!["redis-outage"]),
        ("rebalance", vec!["rebalance"]),
        (
            "gateway-webhook",
            vec![
                "gateway-webhook/gateway-503",
                "gateway-webhook/gateway-hang",
                "gateway-webhook/webhook-503",
                "gateway-webhook/webhook-stall",
            ],
        ),
        ("sigterm", vec!["sigterm"]),
    ];
    let mut done = 0;
    let mut short = Vec::new();
    for (kind, subs) in needs {
        let subs: Vec<&str> = subs
            .into_iter()
            .filter(|s| match phases {
                Phases::All => true,
                Phases::Tansu => *s != "broker/mock-faults",
                Phases::Mock => *s == "broker/mock-faults",
            })
            .collect();
        if subs.is_empty() {
            continue;
        }
        match subs.iter().map(|s| (s, get(s))).find(|(_, c)| *c < n) {
            None => done += 1,
            Some((sub, c)) => short.push(format!("fault kind {kind}: {sub} landed {c} times, fewer than {n}")),
        }
    }
    report.problems.extend(short);
    done
}

async fn drive_waves(
    pool: Db,
    base: String,
    scenario: ScenarioConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Wave>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut waves = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        let cfg = ScenarioConfig { seed: scenario.seed + n, ..scenario.clone() };
        waves.push(drive_wave(&pool, &http, &base, &cfg, &ProgressBar::hidden()).await?);
        n += 1;
        // A steady trickle, not a flood: tansu's fetch cost grows with consumer lag.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(waves)
}

/// Waits until no outbox row is pending and every wave's invariants hold, twice in a
/// row a second apart; false at the deadline.
async fn settle(pool: &Db, store: &Store, waves: &[Wave], timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut good = 0;
    let mut last_said = Instant::now();
    while Instant::now() < deadline {
        let pending: i64 = sql!(
            pool,
            query_scalar("SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL AND parked_at IS NULL").fetch_one()
        )?;
        let mut clean = pending == 0;
        for w in waves {
            if !clean {
                break;
            }
            let problems = check_wave(pool, store, w).await?.problems;
            if !problems.is_empty() && last_said.elapsed() >= Duration::from_secs(10) {
                tracing::info!(wave = w.run_id, ?problems, "waiting for the pipeline to settle");
                last_said = Instant::now();
            }
            clean = problems.is_empty();
        }
        good = if clean { good + 1 } else { 0 };
        if good >= 2 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(false)
}

/// Records on the dead-letter topics of groups whose handlers never fail for good
/// (all but the notification sender's), counted from the partitions' watermarks: each
/// is a false dead letter.
async fn false_dead_letters(brokers: &str, partitions: i32) -> anyhow::Result<Vec<String>> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let mut found = Vec::new();
        for topic in TOPICS.iter().filter(|t| **t != PAYMENT_NOTIFICATION_TOPIC) {
            let dlq = format!("{topic}{DEFAULT_DEAD_LETTER_SUFFIX}");
            let mut n = 0;
            for p in 0..partitions {
                let (low, high) = consumer.fetch_watermarks(&dlq, p, Duration::from_secs(30))?;
                n += high - low;
            }
            if n > 0 {
                found.push(format!("false dead letters: {n} records on {dlq}"));
            }
        }
        Ok(found)
    })
    .await?
}

/// Phase 2: the whole application in this process on a 3-broker mock cluster while
/// requests fail and coordinators and leaders move.
async fn mock_phase(
    cfg: &ChaosConfig,
    pool: &Db,
    store: &Store,
    report: &mut ChaosReport,
) -> anyhow::Result<Vec<Wave>> {
    let started = Instant::now();
    let cluster = EmbeddedKafka::start(3)?;
    let app_cfg_base = ScenarioConfig {
        users: cfg.users_per_wave,
        concurrency: cfg.concurrency,
        seed: cfg.seed + 1000,
        progress: false,
        create_topics: false,
        ..ScenarioConfig::default()
    };
    let partitions = AppConfig::default().partitions;
    let topics = crate::app::topics();
    cluster.create_topics(&topics.iter().map(|t| (t.as_str(), partitions)).collect::<Vec<_>>())?;
    let kafka = cluster.config().set("session.timeout.ms", "6000").set("reconnect.backoff.max.ms", "500");
    let app = App::start(pool.clone(), store.clone(), kafka, &AppConfig { max_batch: 20, ..app_cfg_base.app_config() })
        .await?;
    let (stop_load, load_stopped) = watch::channel(false);
    let load = tokio::spawn(drive_waves(pool.clone(), app.api.url(), app_cfg_base, load_stopped));
    let groups: Vec<String> = app.containers.iter().map(|c| c.group().to_owned()).collect();
    use RDKafkaRespErr::*;
    let n = u64::from(cfg.faults_per_kind);
    let mut i = 0u64;
    while i < n.max(10) * 2 {
        let broker = ((i / 6) % 3) as i32 + 1;
        let fault = match i % 6 {
            0 => MockFault::RequestErrors {
                api: RDKafkaApiKey::Produce,
                errors: vec![
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR__TRANSPORT,
                ],
            },
            1 => MockFault::RequestErrors {
                api: RDKafkaApiKey::Fetch,
                errors: vec![RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR__TRANSPORT],
            },
            2 => MockFault::RequestErrors {
                api: RDKafkaApiKey::OffsetCommit,
                errors: vec![RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE],
            },
            3 => MockFault::RequestErrors {
                api: RDKafkaApiKey::Heartbeat,
                errors: vec![RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
            },
            4 => MockFault::MoveGroupCoordinator { group: groups[(i as usize / 6) % groups.len()].clone(), broker },
            _ => MockFault::MovePartitionLeader {
                topic: TOPICS[(i as usize / 6) % TOPICS.len()].to_owned(),
                partition: ((i / 6) % 3) as i32,
                broker,
            },
        };
        let sub = match &fault {
            MockFault::RequestErrors { api, .. } => format!("broker/mock-{api:?}-errors"),
            MockFault::MoveGroupCoordinator { .. } => "broker/mock-coordinator-move".into(),
            _ => "broker/mock-leader-move".into(),
        };
        cluster.inject(fault)?;
        report.count("broker", 1);
        report.count("broker/mock-faults", 1);
        report.count(&sub, 1);
        i += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let _ = stop_load.send(true);
    let waves = load.await??;
    eprintln!("chaos: phase 2 faults done after {:.0} s; settling", started.elapsed().as_secs_f64());
    if !settle(pool, store, &waves, cfg.settle_timeout).await? {
        report.problems.push(format!("phase 2 (mock cluster) did not settle within {:?}", cfg.settle_timeout));
    }
    count_demo_faults(&app, report);
    report.problems.extend(false_dead_letters(cluster.bootstrap_servers(), partitions).await?);
    let stopping = Instant::now();
    app.stop().await?;
    tracing::info!(elapsed = ?stopping.elapsed(), "phase 2 application stopped");
    drop(cluster);
    Ok(waves)
}
