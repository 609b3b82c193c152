//! The verdict of a run: the scenario's invariants on every wave, false dead letters,
//! the fault kinds that landed often enough, and the report with its last line.

use std::collections::BTreeMap;
use std::time::Duration;

use concert::app::{App, Flows};
use concert::db::Db;
use concert::events::{PAYMENT_NOTIFICATION_TOPIC, TOPICS};
use concert::scenario::{check, Report, Wave};
use concert::store::Store;
use reliable_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use reliable_kafka::rdkafka::ClientConfig;
use reliable_kafka::DEFAULT_DEAD_LETTER_SUFFIX;

use crate::Phases;

/// What a harness run found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Events published (outbox rows).
    pub messages: i64,
    /// Faults that landed, by kind (sub-kinds named `kind/detail`).
    pub faults: BTreeMap<String, u64>,
    /// Fault kinds of the ten exercised enough (`faults_per_kind` times;
    /// `downstream-outage` and `db-outage` a fifth of that).
    pub kinds: usize,
    /// Effects missing.
    pub lost: i64,
    /// Effects applied twice.
    pub duplicated: i64,
    /// Notifications dead-lettered and parked after their re-drives.
    pub dead_lettered: i64,
    /// Failed payments compensated.
    pub compensated: i64,
    /// Redis cleanups (`post-payment-cleanup-group`, deduplicated in Redis) completed
    /// while the database refused every connection (`db-outage`).
    pub redis_cleanups_during_db_outage: u64,
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

    /// The last line: `chaos: ok messages=… faults=… kinds=… lost=0 duplicated=0 dead_lettered=… compensated=…
    /// redis_cleanups_during_db_outage=…`,
    /// or `chaos: FAILED …` followed by the first violated invariant.
    pub fn line(&self) -> String {
        let numbers = format!(
            "messages={} faults={} kinds={} lost={} duplicated={} dead_lettered={} compensated={} \
             redis_cleanups_during_db_outage={}",
            self.messages,
            self.total_faults(),
            self.kinds,
            self.lost,
            self.duplicated,
            self.dead_lettered,
            self.compensated,
            self.redis_cleanups_during_db_outage
        );
        match self.problems.first() {
            None if self.is_ok() => format!("chaos: ok {numbers}"),
            first => format!("chaos: FAILED {numbers} first={:?}", first.map(String::as_str).unwrap_or("")),
        }
    }

    /// Adds `n` landed faults of `kind`.
    pub(crate) fn count(&mut self, kind: &str, n: u64) {
        *self.faults.entry(kind.to_owned()).or_default() += n;
    }
}

/// With `--watermarks`: the consumer groups kept watermarks (`watermarks/rows`, the
/// groups' highest numbers summed in `watermarks/applied`), so the run proved the
/// watermark mode, not a fallback to deduplication rows.
pub(crate) async fn watermarks_used(pool: &Db, report: &mut ChaosReport) -> anyhow::Result<()> {
    let Db::Postgres(pg) = pool else { anyhow::bail!("--watermarks needs PostgreSQL") };
    let (rows, applied): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(seq)::int8 FROM rk_watermarks").fetch_one(pg).await?;
    report.count("watermarks/rows", rows as u64);
    report.count("watermarks/applied", applied.unwrap_or(0) as u64);
    if rows == 0 {
        report.problems.push("watermark mode: no consumer group kept a watermark".to_owned());
    }
    Ok(())
}

/// The faults the demo gateway and webhook receiver injected.
pub(crate) fn count_demo_faults(app: &App, report: &mut ChaosReport) {
    if let Some((g, _)) = &app.gateway {
        let (errors, hangs) = g.faults();
        report.count("gateway-webhook/gateway-503", errors);
        report.count("gateway-webhook/gateway-hang", hangs);
    }
    if let Some((r, _)) = &app.receiver {
        let (errors, delays) = r.faults();
        report.count("gateway-webhook/webhook-500", errors);
        report.count("gateway-webhook/webhook-stall", delays);
    }
}

/// The consistency report of `wave`; a failed query is retried (the Redis connection
/// may just have been dropped by a fault).
pub(crate) async fn check_wave(pool: &Db, store: &Store, wave: &Wave) -> anyhow::Result<Report> {
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

/// Adds the findings of `wave` to `report`.
pub(crate) fn add_wave(report: &mut ChaosReport, wave: &Wave, r: &Report) {
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

/// The ten fault kinds, each with the sub-counts it needs (those of the phases run);
/// records a problem for each kind short of `n`.
pub(crate) fn kinds_done(report: &mut ChaosReport, n: u32, phases: Phases) -> usize {
    let n = u64::from(n);
    let get = |k: &str| report.faults.get(k).copied().unwrap_or(0);
    let outages = u64::from(crate::faults::outages_needed(n as u32));
    let needs: [(&str, Vec<&str>); 10] = [
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
                "gateway-webhook/webhook-500",
                "gateway-webhook/webhook-stall",
            ],
        ),
        ("sigterm", vec!["sigterm"]),
        ("downstream-outage", vec!["downstream-outage"]),
        ("db-outage", vec!["db-outage"]),
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
        let n = if kind == "downstream-outage" || kind == "db-outage" { outages } else { n };
        match subs.iter().map(|s| (s, get(s))).find(|(_, c)| *c < n) {
            None => done += 1,
            Some((sub, c)) => short.push(format!("fault kind {kind}: {sub} landed {c} times, fewer than {n}")),
        }
    }
    if get("db-outage") > 0 && report.redis_cleanups_during_db_outage == 0 {
        // Seed 000's fault isolation: the cleanup needs no database.
        short.push("fault isolation: no Redis cleanup completed during the database outages".to_owned());
    }
    report.problems.extend(short);
    done
}

/// Notifications dead-lettered because of a `downstream-outage` since `since`: their
/// error says `503` (the receiver's other faults answer 500). The circuit breaker must
/// have made them wait instead.
pub(crate) async fn outage_dead_letters(
    kafka: &reliable_kafka::KafkaConfig,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<String>> {
    let topic = format!("{PAYMENT_NOTIFICATION_TOPIC}{DEFAULT_DEAD_LETTER_SUFFIX}");
    let filter = reliable_kafka::DeadLetterFilter::new().since(since);
    let dead = reliable_kafka::read_dead_letters(kafka, &topic, &filter, 100_000).await?;
    let n = dead.iter().filter(|d| d.info.as_ref().is_some_and(|i| i.error_message.contains("503"))).count();
    Ok(if n > 0 {
        vec![format!("false dead letters: {n} notifications dead-lettered by the downstream outage")]
    } else {
        vec![]
    })
}

/// Records on the dead-letter topics of groups whose handlers never fail for good
/// (all but the notification sender's), counted from the partitions' watermarks: each
/// is a false dead letter.
pub(crate) async fn false_dead_letters(brokers: &str, partitions: i32) -> anyhow::Result<Vec<String>> {
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

/// The consumer groups' lag where a phase did not settle: for every group of the
/// reference app and every topic it has committed on, the partitions whose committed
/// offset is below the high watermark, with both (what a stalled partition looks like
/// from outside, for the log of a failed run).
pub(crate) async fn lagging_partitions(brokers: &str, partitions: i32) -> anyhow::Result<Vec<String>> {
    use concert::handlers::{CLEANUP_GROUP, COMPENSATOR_GROUP, COUPON_GROUP, ORDER_ALERT_GROUP, ORDER_INFO_GROUP};
    use reliable_kafka::rdkafka::{Offset, TopicPartitionList};
    let groups = [
        COMPENSATOR_GROUP,
        CLEANUP_GROUP,
        ORDER_INFO_GROUP,
        ORDER_ALERT_GROUP,
        COUPON_GROUP,
        concert::webhook::NOTIFICATION_GROUP,
    ];
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let timeout = Duration::from_secs(30);
        for group in groups {
            let consumer: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", group).create()?;
            let mut tpl = TopicPartitionList::new();
            for topic in TOPICS {
                for p in 0..partitions {
                    tpl.add_partition(topic, p);
                }
            }
            let committed = consumer.committed_offsets(tpl, timeout)?;
            for e in committed.elements() {
                let Offset::Offset(at) = e.offset() else { continue };
                let (_, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                if at < high {
                    found.push(format!("lag: {group} {}[{}] committed={at} high={high}", e.topic(), e.partition()));
                }
            }
        }
        Ok(found)
    })
    .await?
}
