//! The faults: the kinds of phase 1 with their schedule and how each is injected, and
//! the broker faults of phase 2 on the mock cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use concert::app::WorkerRole;
use concert::events::TOPICS;
use concert::handlers::CLEANUP_GROUP;
use nix::sys::signal::{kill, Signal};
use reliable_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use reliable_kafka::MockFault;

use crate::supervisor::{Supervisor, WORKER_APPLICATION_NAME};

/// Handler transaction committed, offset not committed.
pub(crate) const CONSUMER_AFTER_COMMIT: &str = "rk-consumer-after-commit";
/// Before the handler transaction commits (a control: nothing to repeat).
pub(crate) const CONSUMER_BEFORE_COMMIT: &str = "rk-consumer-before-commit";
/// Kafka acknowledged, outbox rows not marked.
pub(crate) const RELAY_AFTER_SEND: &str = "rk-relay-after-send";
/// Outbox rows claimed, not sent.
pub(crate) const RELAY_BEFORE_SEND: &str = "rk-relay-before-send";

/// The fail points a worker is told to die at (each one of
/// [`reliable_kafka::testing::KILL_POINTS`], checked at the start of a run).
pub(crate) const KILL_POINTS: [&str; 4] =
    [CONSUMER_AFTER_COMMIT, CONSUMER_BEFORE_COMMIT, RELAY_AFTER_SEND, RELAY_BEFORE_SEND];

/// A fault of phase 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ConsumerKill { after_commit: bool },
    RelayKill { after_send: bool },
    BrokerRestart,
    DbDrop,
    RedisOutage,
    Rebalance,
    Sigterm,
    DownstreamOutage,
    DbOutage,
}

/// The order the kinds of phase 1 take turns in.
pub(crate) const SCHEDULE: [Kind; 11] = [
    Kind::ConsumerKill { after_commit: true },
    Kind::RelayKill { after_send: true },
    Kind::DbDrop,
    Kind::BrokerRestart,
    Kind::ConsumerKill { after_commit: false },
    Kind::RedisOutage,
    Kind::RelayKill { after_send: false },
    Kind::Sigterm,
    Kind::Rebalance,
    Kind::DownstreamOutage,
    Kind::DbOutage,
];

/// How long `db-outage` refuses every connection to the database.
pub(crate) const DB_OUTAGE: Duration = Duration::from_secs(20);

/// How long `db-outage` freezes the consumer processes first (SIGSTOP), so that the
/// consumer groups have a backlog when the outage starts: less than their session
/// timeout (6 s), so that no rebalance follows.
const BACKLOG_FREEZE: Duration = Duration::from_secs(4);

/// Landings `downstream-outage` and `db-outage` need: one per five of the other
/// kinds' (an outage lasts 10 to 60 s), at least one.
pub(crate) fn outages_needed(faults_per_kind: u32) -> u32 {
    (faults_per_kind / 5).max(1)
}

/// Injects the kinds of [`SCHEDULE`] in turn, `fault_interval` apart, until each landed
/// `faults_per_kind` times (a kind that keeps missing is given up on, with a problem),
/// or `max_duration` is over.
pub(crate) async fn inject_until_done(run: &mut Supervisor) -> anyhow::Result<()> {
    let cfg = run.cfg.clone();
    let started = Instant::now();
    let n = u64::from(cfg.faults_per_kind);
    let mut turn = 0u64;
    let mut landed: BTreeMap<String, u64> = BTreeMap::new();
    let mut tried: BTreeMap<String, u64> = BTreeMap::new();
    let needed = |k: &Kind| match k {
        Kind::DownstreamOutage | Kind::DbOutage => u64::from(outages_needed(cfg.faults_per_kind)),
        _ => n,
    };
    while SCHEDULE.iter().any(|k| landed.get(&format!("{k:?}")).copied().unwrap_or(0) < needed(k)) {
        if started.elapsed() > cfg.max_duration {
            run.report.problems.push(format!("fault phase exceeded {:?}", cfg.max_duration));
            break;
        }
        let kind = SCHEDULE[(turn % SCHEDULE.len() as u64) as usize];
        turn += 1;
        if landed.get(&format!("{kind:?}")).copied().unwrap_or(0) >= needed(&kind) {
            continue;
        }
        let tries = tried.entry(format!("{kind:?}")).or_default();
        *tries += 1;
        if *tries > 2 * n + 5 {
            // A kind that does not land is reported short by `kinds_done`.
            landed.insert(format!("{kind:?}"), needed(&kind));
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
    Ok(())
}

impl Supervisor {
    /// Injects one fault of `kind` (`turn` varies its details); counts it in the report
    /// when it landed.
    async fn inject(&mut self, kind: Kind, turn: u64) -> anyhow::Result<()> {
        match kind {
            Kind::ConsumerKill { after_commit } => {
                let point = if after_commit { CONSUMER_AFTER_COMMIT } else { CONSUMER_BEFORE_COMMIT };
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
                let point = if after_send { RELAY_AFTER_SEND } else { RELAY_BEFORE_SEND };
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
            Kind::DownstreamOutage => {
                // 10 s the first time, 10 s more each time after, up to 60 s.
                let done = self.report.faults.get("downstream-outage").copied().unwrap_or(0);
                let down = Duration::from_secs(10 * (1 + done % 6));
                let (Some(receiver), Some(gateway)) = (self.receiver.clone(), self.gateway.clone()) else {
                    anyhow::bail!("downstream-outage needs the demo receiver and gateway");
                };
                let before = (receiver.outage_calls(), gateway.outage_calls());
                tracing::warn!(?down, "downstream outage: webhook and gateway answer 503");
                receiver.set_down(true);
                gateway.set_down(true);
                tokio::time::sleep(down).await;
                receiver.set_down(false);
                gateway.set_down(false);
                let calls = (receiver.outage_calls() - before.0, gateway.outage_calls() - before.1);
                if calls.0 > 0 {
                    self.report.count("downstream-outage", 1);
                    self.report.count("downstream-outage/webhook-503", calls.0);
                    self.report.count("downstream-outage/gateway-503", calls.1);
                    self.report.count("downstream-outage/seconds", down.as_secs());
                }
            }
            Kind::DbOutage => self.db_outage().await?,
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
}

impl Supervisor {
    /// `db-outage`: the consumer processes freeze for [`BACKLOG_FREEZE`] while the
    /// waves go on; then the database refuses new connections
    /// (`ALLOW_CONNECTIONS false`) and every existing one is terminated, the consumers
    /// go on, and for [`DB_OUTAGE`] the Redis cleanup group (deduplicated in Redis)
    /// must keep completing: its processed-message keys are counted.
    async fn db_outage(&mut self) -> anyhow::Result<()> {
        let consumers: Vec<_> =
            self.workers.iter().filter(|w| w.role == WorkerRole::Consumers).map(|w| w.pid()).collect();
        for pid in &consumers {
            kill(*pid, Signal::SIGSTOP)?;
        }
        tokio::time::sleep(BACKLOG_FREEZE).await;
        let db = self.database.clone();
        let outage = async {
            sqlx::query(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false")).execute(&self.admin).await?;
            let terminated: i64 =
                sqlx::query_scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&db)
                    .fetch_one(&self.admin)
                    .await?;
            let before = self.cleanups_done().await?;
            for pid in &consumers {
                kill(*pid, Signal::SIGCONT)?;
            }
            tracing::warn!(?DB_OUTAGE, terminated, "database outage: connections refused and terminated");
            tokio::time::sleep(DB_OUTAGE).await;
            let during = self.cleanups_done().await?.saturating_sub(before);
            anyhow::Ok((terminated, during))
        }
        .await;
        // Whatever happened, the database and the consumers come back.
        for pid in &consumers {
            let _ = kill(*pid, Signal::SIGCONT);
        }
        sqlx::query(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")).execute(&self.admin).await?;
        let (terminated, during) = outage?;
        tracing::info!(terminated, redis_cleanups = during, "database outage over");
        self.report.count("db-outage", 1);
        self.report.count("db-outage/connections", terminated as u64);
        self.report.count("db-outage/seconds", DB_OUTAGE.as_secs());
        self.report.redis_cleanups_during_db_outage += during;
        Ok(())
    }

    /// Messages the Redis cleanup group has processed: its keys in Redis.
    async fn cleanups_done(&self) -> anyhow::Result<u64> {
        let client = redis::Client::open(self.cfg.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let pattern = format!("concert:{}:processed:{CLEANUP_GROUP}:*", self.namespace);
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await?;
        Ok(keys.len() as u64)
    }
}

/// The `i`-th broker fault of phase 2 with the sub-kind it is counted as: request
/// errors on produce, fetch, offset-commit and heartbeat, group coordinators and
/// partition leaders moved, in turn over the three brokers.
pub(crate) fn mock_fault(i: u64, groups: &[String]) -> (MockFault, String) {
    use RDKafkaRespErr::*;
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
    (fault, sub)
}
