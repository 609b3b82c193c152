//! The whole application in one process: HTTP API, outbox relay, the six consumer
//! groups (seven when payments are created by event), the dead-letter re-drive scheduler, the payment recovery bulkhead and, in
//! demo mode, the payment gateway and webhook receiver.

use std::net::SocketAddr;
use std::time::Duration;

use reliable_kafka::{
    CancellationToken, ContainerHandle, DeadLetterRedriver, KafkaConfig, ListenerContainer, ListenerContainerBuilder,
    Outbox, OutboxRelay, RedriveHandle, RelayHandle, TopicSpec, DEFAULT_DEAD_LETTER_SUFFIX,
};

use crate::alert::OrderAlerter;
use crate::api::{router, ApiState};
use crate::booking::Booking;
use crate::db::{AppBackend, Db};
use crate::events::{PAYMENT_NOTIFICATION_TOPIC, TOPICS};
use crate::gateway::{DemoGateway, GatewayBehaviour, GatewayClient};
use crate::handlers::{compensate_payment, issue_coupon, store_order_info, RedisCleanup};
use crate::http::Server;
use crate::payment_event::{create_payment, PaymentCreation};
use crate::recovery::PaymentRecovery;
use crate::store::Store;
use crate::webhook::{DemoReceiver, ReceiverBehaviour, WebhookNotifier};

/// Retries of a gateway call after the first attempt.
pub const GATEWAY_RETRIES: usize = 3;

/// Which flows the consumers serve (`--flows` of `concert scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flows {
    /// Every flow of the five seed documents; report `users= payments= failed= coupons= notified= dead_lettered=`.
    All,
    /// Only the payment-failure compensation (seed 000); report `payments= failed= compensated_db= cleaned_redis=`.
    PaymentFailure,
}

/// Settings of the application.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Where the API listens (port 0: any free port).
    pub api_addr: SocketAddr,
    /// Payment gateway base URL; `None` starts the demo gateway.
    pub gateway_url: Option<String>,
    /// Behaviour of the demo gateway.
    pub gateway_behaviour: GatewayBehaviour,
    /// Notification webhook URL; `None` starts the demo receiver.
    pub webhook_url: Option<String>,
    /// Behaviour of the demo receiver.
    pub receiver_behaviour: ReceiverBehaviour,
    /// TCP connect timeout of outgoing HTTP calls.
    pub connect_timeout: Duration,
    /// Whole-request timeout of outgoing HTTP calls.
    pub request_timeout: Duration,
    /// Interval of the dead-letter re-drive (seed 003: 5 min).
    pub redrive_interval: Duration,
    /// Re-drives per dead-lettered notification before it is parked (seed 003: 3).
    pub max_redrives: u32,
    /// Interval of the payment recovery (seed 004: 1 s).
    pub recovery_interval: Duration,
    /// Partitions of the pending payments that recovery instances split among them
    /// (seed 004's scaling by partitioning; PostgreSQL; default 3).
    pub recovery_partitions: u32,
    /// A payment is stuck after this long in progress; must exceed the longest charge
    /// call (`request_timeout` × 4 attempts + 1 s), checked at start.
    pub stuck_after: Duration,
    /// Partitions of topics the app creates (seed 001: 3).
    pub partitions: i32,
    /// Replicas of each partition (seed 001 and 004: 3), capped at the cluster's
    /// broker count with a warning (one tansu broker: 1).
    pub replication_factor: i32,
    /// Topic config `min.insync.replicas` (seed 001: 2), capped at the replication
    /// factor: with `acks=all` a write is acknowledged once this many replicas have it.
    pub min_insync_replicas: i32,
    /// Further topic configs of seed 004: `retention.ms` (168 h, the seed's
    /// `log.retention.hours`), `segment.bytes` (1 GiB) and `max.message.bytes`
    /// (1 MiB + 12, Kafka's default; the seed names the broker's `message.max.bytes`).
    pub topic_configs: Vec<(String, String)>,
    /// Partitions each consumer group member processes at the same time (seed 001's
    /// listener `concurrency: 3`; see [`ListenerContainerBuilder::partition_concurrency`]).
    pub partition_concurrency: usize,
    /// librdkafka properties of every consumer group's consumer (seed 001:
    /// `fetch.min.bytes` 50 000 and `fetch.max.bytes` 52 428 800, same names as
    /// Spring's; `fetch.wait.max.ms` is librdkafka's name of Spring's
    /// `fetch.max.wait.ms`).
    pub consumer_properties: Vec<(String, String)>,
    /// Flows served.
    pub flows: Flows,
    /// Where payments are created: in the use case (default, seed 004's gateway) or by
    /// the `payment-create-group` from an event (seed 002); see [`PaymentCreation`].
    pub payment_creation: PaymentCreation,
    /// Consumer instances per consumer group (seed 001 runs 3). Each is a member of
    /// the group and gets its own share of the partitions. Default 1: with the tansu
    /// broker, 3 members per group (18 consumers) rebalanced so often that the scenario
    /// got slower, not faster.
    pub consumers_per_group: usize,
    /// Whole-request timeout of notification webhook calls.
    pub webhook_timeout: Duration,
    /// Wait between the 3 attempts of a notification.
    pub webhook_backoff: Duration,
    /// How long the webhook's circuit breaker stays open before it probes.
    pub webhook_cool_down: Duration,
    /// Create the topics with the admin API at start (default true; the embedded mock
    /// cluster has no admin API, its topics are created with the cluster).
    pub create_topics: bool,
    /// Fallback poll of the outbox relay (default 500 ms; PostgreSQL also wakes it by
    /// notification, SQLite only by this poll).
    pub relay_poll_interval: Duration,
    /// Shards of the outbox relay (PostgreSQL; default 1, one relay publishes); with
    /// several relay processes, one per partition (3) lets each publish its share.
    pub relay_shards: u32,
    /// Deduplicate by watermark (PostgreSQL; default false): the relay numbers its
    /// records (`OutboxRelayBuilder::sequence_numbers`) and the consumer groups keep a
    /// watermark per partition instead of a row per record
    /// (`ListenerContainerBuilder::watermark_dedup`).
    pub watermarks: bool,
    /// Run the outbox relay and the consumer groups in this process (default true).
    /// False runs the API, the demo servers, the recovery and the re-driver only, with
    /// the relay and consumers in [`Workers`] processes (as the chaos harness does).
    pub pipeline: bool,
    /// Records of one partition processed in one transaction ([`ListenerContainerBuilder::max_batch`], default 1).
    pub max_batch: usize,
    /// The Prometheus recorder's handle, served at `/metrics` (none: `404`).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            api_addr: ([127, 0, 0, 1], 8080).into(),
            gateway_url: None,
            gateway_behaviour: GatewayBehaviour::default(),
            webhook_url: None,
            receiver_behaviour: ReceiverBehaviour::default(),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            redrive_interval: Duration::from_secs(300),
            max_redrives: 3,
            recovery_interval: Duration::from_secs(1),
            recovery_partitions: 3,
            stuck_after: Duration::from_secs(15),
            partitions: 3,
            replication_factor: 3,
            min_insync_replicas: 2,
            topic_configs: vec![
                ("retention.ms".into(), "604800000".into()),
                ("segment.bytes".into(), "1073741824".into()),
                ("max.message.bytes".into(), "1048588".into()),
            ],
            partition_concurrency: 3,
            consumer_properties: vec![
                ("fetch.min.bytes".into(), "50000".into()),
                ("fetch.max.bytes".into(), "52428800".into()),
            ],
            flows: Flows::All,
            payment_creation: PaymentCreation::UseCase,
            consumers_per_group: 1,
            webhook_timeout: Duration::from_secs(2),
            webhook_backoff: Duration::from_millis(200),
            webhook_cool_down: Duration::from_secs(5),
            create_topics: true,
            relay_poll_interval: Duration::from_millis(500),
            relay_shards: 1,
            watermarks: false,
            pipeline: true,
            max_batch: 1,
            metrics: None,
        }
    }
}

/// The running application.
#[derive(Debug)]
pub struct App {
    /// The HTTP API.
    pub api: Server,
    /// The demo gateway, when started.
    pub gateway: Option<(DemoGateway, Server)>,
    /// The demo webhook receiver, when started.
    pub receiver: Option<(DemoReceiver, Server)>,
    /// The consumer groups.
    pub containers: Vec<ContainerHandle>,
    /// The outbox relay (none without [`AppConfig::pipeline`]).
    pub relay: Option<RelayHandle>,
    /// The re-drive scheduler of `payment-notification.DLQ`.
    pub redriver: Option<RedriveHandle>,
    recovery: (CancellationToken, std::thread::JoinHandle<()>),
    /// The `/ops` page's sampler.
    sampler: tokio::task::JoinHandle<()>,
}

impl App {
    /// Migrates, creates the topics, and starts every part.
    ///
    /// # Errors
    /// When a service cannot be reached or a part cannot be configured.
    pub async fn start(pool: Db, store: Store, kafka: KafkaConfig, cfg: &AppConfig) -> anyhow::Result<App> {
        // A payment whose charge call may still be retrying must not look stuck: the
        // recovery would fail it while the gateway might still take the money.
        let longest_charge = cfg.request_timeout * (GATEWAY_RETRIES as u32 + 1) + Duration::from_secs(1);
        if cfg.stuck_after <= longest_charge {
            anyhow::bail!(
                "stuck_after ({:?}) must exceed the longest charge call ({longest_charge:?} = request_timeout x {} attempts + 1 s of backoff)",
                cfg.stuck_after,
                GATEWAY_RETRIES + 1
            );
        }
        crate::migrate(&pool).await?;
        if cfg.create_topics {
            let brokers = kafka.broker_count(Duration::from_secs(10)).await?;
            let specs = topic_specs(cfg, brokers);
            tracing::info!(
                brokers,
                topics = specs.len(),
                partitions = cfg.partitions,
                replication = specs.first().map(TopicSpec::replicas),
                configs = ?specs.first().map(TopicSpec::configs),
                "ensuring topics"
            );
            kafka.ensure_topics(&specs).await?;
        }

        let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
        let gateway = match &cfg.gateway_url {
            Some(_) => None,
            None => {
                let g = DemoGateway::new(cfg.gateway_behaviour);
                let server = g.start(any_port).await?;
                Some((g, server))
            }
        };
        let receiver = match &cfg.webhook_url {
            Some(_) => None,
            None => {
                let r = DemoReceiver::new(cfg.receiver_behaviour);
                let server = r.start(any_port).await?;
                Some((r, server))
            }
        };
        let gateway_url =
            cfg.gateway_url.clone().unwrap_or_else(|| gateway.as_ref().map(|(_, s)| s.url()).unwrap_or_default());
        let webhook_url = cfg
            .webhook_url
            .clone()
            .unwrap_or_else(|| receiver.as_ref().map(|(_, s)| format!("{}/notify", s.url())).unwrap_or_default());
        let client = GatewayClient::new(&gateway_url, cfg.connect_timeout, cfg.request_timeout, GATEWAY_RETRIES)?;

        let parts = Parts { relay: cfg.pipeline, consumers: cfg.pipeline, redriver: true };
        let (relay, containers, redriver) = match &pool {
            Db::Postgres(p) => start_pipeline(p.clone(), &kafka, &store, cfg, &webhook_url, parts)?,
            Db::MySql(p) => start_pipeline(p.clone(), &kafka, &store, cfg, &webhook_url, parts)?,
            Db::Sqlite(p) => start_pipeline(p.clone(), &kafka, &store, cfg, &webhook_url, parts)?,
        };

        // The bulkhead gets its own small pool as well as its own thread and runtime
        // (SQLite: the same pool; its writes queue on one lock anyway).
        let recovery_pool = match &pool {
            Db::Postgres(p) => Db::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with((*p.connect_options()).clone())
                    .await?,
            ),
            Db::MySql(p) => Db::MySql(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(2)
                    .connect_with((*p.connect_options()).clone())
                    .await?,
            ),
            Db::Sqlite(p) => Db::Sqlite(p.clone()),
        };
        let recovery_token = CancellationToken::new();
        let mut recovery = PaymentRecovery::new(recovery_pool, store.clone(), client.clone(), "app", cfg.stuck_after);
        recovery.partitions = cfg.recovery_partitions;
        let recovery = recovery.spawn_bulkhead(cfg.recovery_interval, recovery_token.clone());

        let probes: Vec<_> = relay
            .iter()
            .map(|r| r.probe())
            .chain(containers.iter().map(|c| c.probe()))
            .chain(redriver.iter().map(|r| r.probe()))
            .collect();
        let ops = crate::ops_page::OpsState::new(
            pool.clone(),
            kafka.clone(),
            probes.clone(),
            containers.iter().map(|c| (c.name().to_owned(), c.shared_stats())).collect(),
            relay.as_ref().map(|r| r.shared_stats()),
            TOPICS.iter().map(|t| format!("{t}{DEFAULT_DEAD_LETTER_SUFFIX}")).collect(),
        );
        let mut booking = Booking::new(pool, store, client);
        booking.creation = cfg.payment_creation;
        let sampler = ops.spawn_sampler();
        let api = Server::start(
            router(ApiState { booking, outbox: Outbox::new(), probes, metrics: cfg.metrics.clone() })
                .merge(crate::ops_page::router(ops)),
            cfg.api_addr,
        )
        .await?;
        tracing::info!(api = %api.url(), gateway = %gateway_url, webhook = %webhook_url, "concert app started");
        Ok(App { api, gateway, receiver, containers, relay, redriver, recovery: (recovery_token, recovery), sampler })
    }

    /// Whether every consumer group has been idle for `d`.
    pub fn consumers_idle_for(&self, d: Duration) -> bool {
        self.containers.iter().all(|c| c.stats().idle_for() >= d)
    }

    /// Stops the API, then the schedulers and consumers (each finishes its record in
    /// hand and commits), then the relay.
    ///
    /// # Errors
    /// The first error of a worker (re-driver, container, relay).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.api.stop().await;
        self.sampler.abort();
        self.recovery.0.cancel();
        let _ = tokio::task::spawn_blocking(move || self.recovery.1.join()).await;
        // Every worker is stopped, whatever the one before returned.
        let mut results = Vec::new();
        if let Some(r) = self.redriver {
            results.push(r.shutdown().await);
        }
        for c in self.containers {
            results.push(c.shutdown().await);
        }
        if let Some(relay) = self.relay {
            results.push(relay.shutdown().await);
        }
        if let Some((_, s)) = self.gateway {
            s.stop().await;
        }
        if let Some((_, s)) = self.receiver {
            s.stop().await;
        }
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

/// Every topic of the application with its dead-letter topic.
pub fn topics() -> Vec<String> {
    TOPICS.iter().flat_map(|t| [(*t).to_owned(), format!("{t}{DEFAULT_DEAD_LETTER_SUFFIX}")]).collect()
}

/// The app's topics as `cfg` configures them, for a cluster of `brokers` brokers: the
/// replication factor and `min.insync.replicas` are capped at what the cluster can
/// hold (a warning says so), so the seeds' settings run on a one-broker development
/// cluster too.
pub fn topic_specs(cfg: &AppConfig, brokers: usize) -> Vec<TopicSpec> {
    let brokers = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
    let replicas = cfg.replication_factor.clamp(1, brokers);
    let min_insync = cfg.min_insync_replicas.clamp(1, replicas);
    if replicas < cfg.replication_factor || min_insync < cfg.min_insync_replicas {
        tracing::warn!(
            brokers,
            replication = replicas,
            min_insync_replicas = min_insync,
            configured_replication = cfg.replication_factor,
            configured_min_insync_replicas = cfg.min_insync_replicas,
            "fewer brokers than the configured replication: topics get fewer replicas"
        );
    }
    topics()
        .into_iter()
        .map(|name| {
            cfg.topic_configs.iter().fold(
                TopicSpec::new(name, cfg.partitions)
                    .replication_factor(replicas)
                    .config("min.insync.replicas", min_insync.to_string()),
                |spec, (k, v)| spec.config(k.clone(), v.clone()),
            )
        })
        .collect()
}

/// Which part of the pipeline a [`Workers`] process runs (`--role` of the chaos
/// harness's workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerRole {
    /// The outbox relay.
    Relay,
    /// One member of each consumer group.
    Consumers,
}

/// The relay or the consumer groups in a process of their own, beside an [`App`]
/// started without [`AppConfig::pipeline`]: the processes the chaos harness kills.
#[derive(Debug)]
pub struct Workers {
    /// The relay, for [`WorkerRole::Relay`].
    pub relay: Option<RelayHandle>,
    /// The consumer groups, for [`WorkerRole::Consumers`].
    pub containers: Vec<ContainerHandle>,
}

impl Workers {
    /// Starts `role` against tables migrated by the [`App`], sending notifications to
    /// `webhook_url`.
    ///
    /// # Errors
    /// When a part cannot be configured.
    pub fn start(
        pool: Db,
        store: &Store,
        kafka: &KafkaConfig,
        cfg: &AppConfig,
        role: WorkerRole,
        webhook_url: &str,
    ) -> anyhow::Result<Workers> {
        let parts =
            Parts { relay: role == WorkerRole::Relay, consumers: role == WorkerRole::Consumers, redriver: false };
        let (relay, containers, _) = match &pool {
            Db::Postgres(p) => start_pipeline(p.clone(), kafka, store, cfg, webhook_url, parts)?,
            Db::MySql(p) => start_pipeline(p.clone(), kafka, store, cfg, webhook_url, parts)?,
            Db::Sqlite(p) => start_pipeline(p.clone(), kafka, store, cfg, webhook_url, parts)?,
        };
        Ok(Workers { relay, containers })
    }

    /// Stops gracefully: each container finishes its records in hand and commits, the
    /// relay finishes its batch.
    ///
    /// # Errors
    /// The first container error, else the relay's.
    pub async fn stop(self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        // All groups drain at once; each commits its own offsets.
        let results = futures::future::join_all(self.containers.into_iter().map(|c| {
            let group = c.name().to_owned();
            async move {
                let r = c.shutdown().await;
                tracing::info!(%group, elapsed = ?started.elapsed(), ok = r.is_ok(), "consumer group stopped");
                r
            }
        }))
        .await;
        let relay = match self.relay {
            Some(relay) => {
                let r = relay.shutdown().await;
                tracing::info!(elapsed = ?started.elapsed(), ok = r.is_ok(), "relay stopped");
                r
            }
            None => Ok(()),
        };
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        relay?;
        Ok(())
    }
}

/// The relay, the consumer groups and the re-driver, on the database's backend.
type Pipeline = (Option<RelayHandle>, Vec<ContainerHandle>, Option<RedriveHandle>);

#[derive(Clone, Copy)]
struct Parts {
    relay: bool,
    consumers: bool,
    redriver: bool,
}

fn start_pipeline<DB: AppBackend>(
    pool: sqlx::Pool<DB>,
    kafka: &KafkaConfig,
    store: &Store,
    cfg: &AppConfig,
    webhook_url: &str,
    parts: Parts,
) -> anyhow::Result<Pipeline> {
    let relay = match parts.relay {
        true => Some(
            OutboxRelay::builder(kafka.clone(), pool.clone())
                .poll_interval(cfg.relay_poll_interval)
                .shards(cfg.relay_shards)
                .sequence_numbers(cfg.watermarks)
                .build()?
                .spawn(),
        ),
        false => None,
    };
    let mut containers = Vec::new();
    let mut group = |make: &dyn Fn() -> ListenerContainerBuilder<DB>| -> anyhow::Result<()> {
        for _ in 0..cfg.consumers_per_group.max(1) * usize::from(parts.consumers) {
            containers.push(make().build()?.spawn());
        }
        Ok(())
    };
    let build = || {
        cfg.consumer_properties.iter().fold(
            ListenerContainer::builder(kafka.clone(), pool.clone())
                .max_batch(cfg.max_batch)
                .partition_concurrency(cfg.partition_concurrency)
                .watermark_dedup(cfg.watermarks),
            |b, (k, v)| b.consumer_property(k, v),
        )
    };
    group(&|| build().handler(compensate_payment))?;
    let cleanup = RedisCleanup::new(store.clone());
    group(&|| build().handler(cleanup.clone()))?;
    if cfg.payment_creation == PaymentCreation::Event {
        group(&|| build().handler(create_payment))?;
    }
    let mut redriver = None;
    if cfg.flows == Flows::All {
        let notifier = WebhookNotifier::new(webhook_url, cfg.connect_timeout, cfg.webhook_timeout)?
            .backoff(reliable_kafka::FixedBackOff::new(cfg.webhook_backoff, 3)?)
            .circuit_breaker(reliable_kafka::CircuitBreaker::new(3, Duration::from_secs(10), cfg.webhook_cool_down));
        group(&|| build().handler(notifier.clone()))?;
        group(&|| build().handler(store_order_info))?;
        // The alert webhook is the notification webhook's sibling `alert` (the demo
        // receiver serves both).
        let alert_url = reqwest::Url::parse(webhook_url)?.join("alert")?;
        let alerter = OrderAlerter::new(alert_url, cfg.connect_timeout, cfg.webhook_timeout)?;
        group(&|| build().handler(alerter.clone()))?;
        group(&|| build().handler(issue_coupon))?;
    }
    if cfg.flows == Flows::All && parts.redriver {
        redriver = Some(
            DeadLetterRedriver::builder(kafka.clone(), pool.clone())
                .topic(format!("{PAYMENT_NOTIFICATION_TOPIC}{DEFAULT_DEAD_LETTER_SUFFIX}"))
                .group_id("notification-redrive")
                .max_redrives(cfg.max_redrives)
                .interval(cfg.redrive_interval)
                .build()?
                .spawn(),
        );
    }
    Ok((relay, containers, redriver))
}
