//! The scenario / load runner: many concurrent users drive the flows over HTTP while
//! the payment gateway and the notification webhook fail, hang and decline on purpose;
//! then a consistency report is computed from the database and the key-value store.
//!
//! [`seeding`] creates a run's concert, seats, users and coupon; [`driver`] takes the
//! users through the flows over the API ([`drive_wave`]); [`invariants`] computes the
//! [`Report`] ([`check`]). [`run`] does all three against an application started in
//! this process.

pub mod driver;
pub mod invariants;
pub mod seeding;

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use reliable_kafka::KafkaConfig;

pub use self::driver::{drive_wave, Wave};
pub use self::invariants::{check, Report};
use crate::app::{App, AppConfig, Flows};
use crate::db::Db;
use crate::gateway::GatewayBehaviour;
use crate::payment_event::PaymentCreation;
use crate::store::Store;
use crate::webhook::ReceiverBehaviour;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Users; each reserves one seat, pays once (some send the payment several times)
    /// and, with all flows, requests a coupon.
    pub users: usize,
    /// Share of payments that fail, in `[0, 1]`: a fifth by insufficient balance
    /// (nothing charged), the rest declined by the gateway after the charge (refunded).
    pub failure_rate: f64,
    /// Users in flight at once.
    pub concurrency: usize,
    /// Seed of the failure assignment.
    pub seed: u64,
    /// How long to wait for the consumers to finish.
    pub settle_timeout: Duration,
    /// Flows driven and reported.
    pub flows: Flows,
    /// Where payments are created (`--payment-creation`).
    pub payment_creation: PaymentCreation,
    /// Inject gateway errors (5 % of calls answer 503) and hangs (2 % of payments answer
    /// after 3 s, past the 1 s timeout), and webhook failures (10 % of calls 503, 2 %
    /// stall past the 300 ms timeout, every 50th payment always fails: dead-lettered,
    /// re-driven 3 times, parked).
    pub inject_faults: bool,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Create the topics with the admin API (false on the embedded mock cluster, whose
    /// topics are created with it).
    pub create_topics: bool,
    /// The Prometheus recorder's handle, given to the app (`/metrics`).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Take the demo webhook receiver down for this long, 3 s into the run (every call
    /// answered `503`): the notification group's circuit breaker makes the records
    /// wait, none is dead-lettered because of it.
    pub webhook_outage: Option<Duration>,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            users: 1000,
            failure_rate: 0.3,
            concurrency: 32,
            seed: 42,
            settle_timeout: Duration::from_secs(600),
            flows: Flows::All,
            payment_creation: PaymentCreation::UseCase,
            inject_faults: true,
            progress: true,
            create_topics: true,
            metrics: None,
            webhook_outage: None,
        }
    }
}

impl ScenarioConfig {
    /// The short demo run of `cargo run -p concert` without arguments: 200 users, every
    /// flow, faults injected.
    pub fn demo() -> Self {
        ScenarioConfig { users: 200, concurrency: 16, settle_timeout: Duration::from_secs(300), ..Self::default() }
    }

    /// The application settings of the run: short timeouts and fast schedulers.
    pub fn app_config(&self) -> AppConfig {
        let faults = self.inject_faults && self.flows == Flows::All;
        AppConfig {
            api_addr: ([127, 0, 0, 1], 0).into(),
            gateway_behaviour: GatewayBehaviour {
                decline_rate: self.failure_rate * 0.8,
                error_rate: if faults { 0.05 } else { 0.0 },
                hang_rate: if faults { 0.02 } else { 0.0 },
                hang: Duration::from_secs(3),
                seed: self.seed,
            },
            receiver_behaviour: if faults {
                ReceiverBehaviour {
                    fail_rate: 0.1,
                    delay_rate: 0.02,
                    delay: Duration::from_secs(3),
                    always_fail_every: 50,
                }
            } else {
                ReceiverBehaviour::default()
            },
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
            webhook_timeout: Duration::from_millis(300),
            webhook_backoff: Duration::from_millis(100),
            webhook_cool_down: Duration::from_secs(1),
            redrive_interval: Duration::from_secs(1),
            recovery_interval: Duration::from_millis(500),
            stuck_after: Duration::from_secs(6),
            flows: self.flows,
            payment_creation: self.payment_creation,
            create_topics: self.create_topics,
            relay_poll_interval: Duration::from_millis(50),
            metrics: self.metrics.clone(),
            ..AppConfig::default()
        }
    }
}

/// Takes the receiver down for `down`, 3 s from now; returns `down` when it is up again.
async fn webhook_outage(receiver: crate::webhook::DemoReceiver, down: Duration) -> Duration {
    tokio::time::sleep(Duration::from_secs(3)).await;
    tracing::warn!(?down, "webhook outage: the receiver answers 503 to every call");
    receiver.set_down(true);
    tokio::time::sleep(down).await;
    receiver.set_down(false);
    tracing::warn!("webhook outage over");
    down
}

/// Runs the scenario against PostgreSQL, Redis and Kafka, with the application
/// started in this process on a free port.
///
/// # Errors
/// When the services cannot be reached or set up.
pub async fn run(pool: Db, store: Store, kafka: KafkaConfig, cfg: &ScenarioConfig) -> anyhow::Result<Report> {
    let started = Instant::now();
    let app = App::start(pool.clone(), store.clone(), kafka.clone(), &cfg.app_config()).await?;
    let started_at = chrono::Utc::now();
    let outage = match (cfg.webhook_outage, app.receiver.as_ref()) {
        (Some(down), Some((receiver, _))) => Some(tokio::spawn(webhook_outage(receiver.clone(), down))),
        _ => None,
    };
    let base = app.api.url();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let bar = if cfg.progress { ProgressBar::new(cfg.users as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} users {pos}/{len} [{bar:40}] {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let wave = drive_wave(&pool, &http, &base, cfg, &bar).await?;
    bar.finish_with_message("users done; waiting for the consumers");
    let Wave { run_id, coupon_id, errors, idempotency_violations } = wave;
    tracing::info!(elapsed = ?started.elapsed(), errors, "users done; waiting for the consumers");

    let deadline = Instant::now() + cfg.settle_timeout;
    let outage = match outage {
        Some(task) => Some(task.await?),
        None => None,
    };
    let mut report;
    loop {
        report = check(&pool, &store, run_id, coupon_id, cfg.flows).await?;
        let pending = pool.outbox_backlog().await?.pending;
        if (pending == 0 && report.problems.is_empty() && app.consumers_idle_for(Duration::from_secs(1)))
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The probes an orchestrator would call: every worker alive, none unhealthy.
    for probe in ["/health/live", "/health/ready"] {
        let r = http.get(format!("{base}{probe}")).send().await?;
        let status = r.status();
        if !status.is_success() {
            report.problems.push(format!("{probe} answered {status}: {}", r.text().await.unwrap_or_default()));
        }
    }
    if let (Some(outage), Some((receiver, _))) = (outage, app.receiver.as_ref()) {
        let topic =
            format!("{}{}", crate::events::PAYMENT_NOTIFICATION_TOPIC, reliable_kafka::DEFAULT_DEAD_LETTER_SUFFIX);
        let filter = reliable_kafka::DeadLetterFilter::new().since(started_at);
        let dead = reliable_kafka::read_dead_letters(&kafka, &topic, &filter, 100_000).await?;
        let by_outage =
            dead.iter().filter(|d| d.info.as_ref().is_some_and(|i| i.error_message.contains("503"))).count() as u64;
        report.outage =
            Some(invariants::Outage { down: outage, calls: receiver.outage_calls(), dead_lettered: by_outage });
        if by_outage > 0 {
            report.problems.push(format!("notifications dead-lettered because of the webhook outage: {by_outage}"));
        }
    }
    if idempotency_violations > 0 {
        report.duplicated += idempotency_violations;
        report.problems.push(format!("repeated payment requests answered differently: {idempotency_violations}"));
    }
    for p in &report.problems {
        tracing::error!("invariant violated: {p}");
    }
    let webhook_repeats =
        app.receiver.as_ref().map(|(r, _)| r.accepted().values().filter(|&&n| n > 1).count()).unwrap_or(0);
    let stats: Vec<String> = app
        .containers
        .iter()
        .map(|c| {
            format!(
                "{}: processed={} duplicates={} dead_lettered={}",
                c.name(),
                c.stats().processed(),
                c.stats().duplicates(),
                c.stats().dead_lettered()
            )
        })
        .collect();
    tracing::info!(
        ?stats,
        webhook_repeats,
        relay_published = app.relay.as_ref().map(|r| r.stats().published()),
        "consumers settled"
    );
    app.stop().await?;
    report.errors = errors;
    report.wall = started.elapsed();
    Ok(report)
}
