//! The two phases of a run: phase 1 on tansu with the pipeline in worker processes,
//! phase 2 on librdkafka's mock cluster with the whole application in this process;
//! each drives users in waves while its faults land, then waits for the pipeline to
//! settle.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concert::app::{topics, App, AppConfig, WorkerRole};
use concert::db::Db;
use concert::scenario::{drive_wave, ScenarioConfig, Wave};
use concert::store::Store;
use indicatif::ProgressBar;
use reliable_kafka::{EmbeddedKafka, KafkaConfig};
use tokio::sync::watch;

use crate::broker::{watch_broker, Broker};
use crate::checks::{
    check_wave, count_demo_faults, false_dead_letters, lagging_partitions, outage_dead_letters, ChaosReport,
};
use crate::faults::{inject_until_done, mock_fault};
use crate::supervisor::Supervisor;
use crate::ChaosConfig;

/// What phase 1 needs besides the configuration: the run's directory, the
/// administration pool and the name of the run's database, the workers' database URL
/// and the run's Redis namespace.
pub(crate) struct TansuPhase<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) admin: sqlx::PgPool,
    pub(crate) database: &'a str,
    pub(crate) worker_url: String,
    pub(crate) namespace: String,
}

/// Phase 1: tansu, PostgreSQL, Redis, worker processes; every fault kind but the mock
/// cluster's.
pub(crate) async fn tansu_phase(
    cfg: &ChaosConfig,
    ctx: TansuPhase<'_>,
    pool: &Db,
    store: &Store,
    report: &mut ChaosReport,
) -> anyhow::Result<Vec<Wave>> {
    let TansuPhase { dir, admin, database, worker_url, namespace } = ctx;
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
    let phase_started = chrono::Utc::now();
    let mut run = Supervisor {
        cfg: cfg.clone(),
        dir: dir.to_owned(),
        admin,
        database: database.to_owned(),
        worker_url,
        namespace,
        broker: broker.clone(),
        brokers: brokers.clone(),
        webhook_url,
        receiver: app.receiver.as_ref().map(|(r, _)| r.clone()),
        gateway: app.gateway.as_ref().map(|(g, _)| g.clone()),
        workers: Vec::new(),
        spawned: 0,
        report: std::mem::take(report),
    };
    // The relays (one by default; `--relays N` runs N over 3 shards) and two consumer
    // workers.
    for _ in 0..cfg.relays.max(1) {
        run.spawn_worker(WorkerRole::Relay)?;
    }
    run.spawn_worker(WorkerRole::Consumers)?;
    run.spawn_worker(WorkerRole::Consumers)?;

    // Users, in waves, until the faults are done.
    let (stop_load, load_stopped) = watch::channel(false);
    let load = {
        let (pool, base, scenario) = (pool.clone(), app.api.url(), scenario.clone());
        tokio::spawn(drive_waves(pool, base, scenario, load_stopped))
    };
    let started = Instant::now();
    inject_until_done(&mut run).await?;
    let _ = stop_load.send(true);
    let waves = load.await??;
    eprintln!("chaos: phase 1 faults done after {:.0} s; settling", started.elapsed().as_secs_f64());
    run.check_workers().await?;
    let settled = settle(pool, store, &waves, cfg.settle_timeout).await?;
    if !settled {
        run.report.problems.push(format!("phase 1 did not settle within {:?}", cfg.settle_timeout));
        run.report.problems.extend(lagging_partitions(&brokers, AppConfig::default().partitions).await?);
        let revivals = dir.join("tansu-revivals.log");
        run.report.problems.push(format!(
            "tansu was revived {} times; the last reason logged: {}",
            revived.load(Ordering::Relaxed),
            crate::supervisor::log_tail(&revivals, 4)
        ));
    }
    for w in std::mem::take(&mut run.workers) {
        run.expect_clean_exit(w).await?;
    }
    run.report.problems.extend(false_dead_letters(&brokers, AppConfig::default().partitions).await?);
    run.report.problems.extend(outage_dead_letters(&kafka, phase_started).await?);
    count_demo_faults(&app, &mut run.report);
    app.stop().await?;
    watchdog.abort();
    broker.lock().await.stop().await?;
    run.report.count("broker/tansu-revived", revived.load(Ordering::Relaxed));

    *report = run.report;
    Ok(waves)
}

/// Phase 2: the whole application in this process on a 3-broker mock cluster while
/// requests fail and coordinators and leaders move.
pub(crate) async fn mock_phase(
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
    let names = topics();
    cluster.create_topics(&names.iter().map(|t| (t.as_str(), partitions)).collect::<Vec<_>>())?;
    let kafka = cluster.config().set("session.timeout.ms", "6000").set("reconnect.backoff.max.ms", "500");
    let app = App::start(
        pool.clone(),
        store.clone(),
        kafka,
        &AppConfig { max_batch: 20, watermarks: cfg.watermarks, ..app_cfg_base.app_config() },
    )
    .await?;
    let (stop_load, load_stopped) = watch::channel(false);
    let load = tokio::spawn(drive_waves(pool.clone(), app.api.url(), app_cfg_base, load_stopped));
    // A container's name is its consumer group.
    let groups: Vec<String> = app.containers.iter().map(|c| c.name().to_owned()).collect();
    let n = u64::from(cfg.faults_per_kind);
    let mut i = 0u64;
    while i < n.max(10) * 2 {
        let (fault, sub) = mock_fault(i, &groups);
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

/// Drives waves of users through the API at `base`, 2 s apart, until `stop`.
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
        match drive_wave(&pool, &http, &base, &cfg, &ProgressBar::hidden()).await {
            Ok(wave) => waves.push(wave),
            // Its data could not be created (`db-outage`): no request was sent, so
            // there is nothing to check; the next wave tries again.
            Err(e) => tracing::warn!(error = %reliable_kafka::report(e.as_ref()), "wave not started"),
        }
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
        let mut clean = pool.outbox_backlog().await?.pending == 0;
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
