//! A worker process of phase 1 (`concert-chaos worker`, started by the
//! [`supervisor`](crate::supervisor)): the outbox relay or one member of every consumer
//! group, with the library's fail points armed on request.

use std::sync::Mutex;
use std::time::Duration;

use concert::app::{AppConfig, WorkerRole, Workers};
use concert::config::Env;
use concert::db::Db;
use concert::scenario::ScenarioConfig;
use concert::store::Store;
use reliable_kafka::testing::{fail, KILL_POINTS};

/// The fail point the worker SIGKILLs itself at, the next time it passes it.
static ARMED: Mutex<Option<&'static str>> = Mutex::new(None);

/// Runs `role` until SIGTERM or the end of stdin, then stops gracefully (drains,
/// commits, flushes). A line `kill <fail point>` on stdin makes it SIGKILL itself the
/// next time it passes that fail point (one of [`KILL_POINTS`]); any other line
/// disarms. The environment variable `CHAOS_SABOTAGE` names a sabotage switch to turn
/// on.
///
/// # Errors
/// When `DATABASE_URL`, `REDIS_URL` or `KAFKA_BROKERS` is unset, a service cannot be
/// reached, or a worker fails to stop.
pub async fn run(
    env: &Env,
    role: WorkerRole,
    webhook_url: &str,
    (max_batch, relay_shards, watermarks): (usize, u32, bool),
) -> anyhow::Result<()> {
    // First, so that a SIGTERM during start-up still means a graceful stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (Some(db_url), Some(redis_url), Some(kafka)) = (&env.database_url, &env.redis_url, &env.kafka) else {
        anyhow::bail!("a worker needs DATABASE_URL, REDIS_URL and KAFKA_BROKERS");
    };
    for point in KILL_POINTS {
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
    let cfg = AppConfig { max_batch, relay_shards, watermarks, ..ScenarioConfig::default().app_config() };
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
                    let point = l.strip_prefix("kill ").and_then(|p| KILL_POINTS.iter().copied().find(|k| *k == p.trim()));
                    *ARMED.lock().unwrap() = point;
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
