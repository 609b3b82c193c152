//! What each command does, on the library's operations API.

use std::time::Duration;

use anyhow::{bail, Context};
use reliable_kafka::{
    read_dead_letters, AnyPool, Backend, DeadLetterFilter, DeadLetterRedriver, KafkaConfig, Operations,
};

use crate::render::{self, Render};
use crate::{exit, Cli, Command, DlqCommand, FilterArgs, OutboxCommand, ParkedCommand};

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let mut kafka = KafkaConfig::from_env();
    if let Some(b) = &cli.brokers {
        kafka = kafka.set("bootstrap.servers", b.as_str());
    }
    let url = cli.database_url.clone().context("no database: set DATABASE_URL or --database-url")?;
    match AnyPool::connect(&url, 4).await.context("connect to the database")? {
        AnyPool::Postgres(pool) => on(pool, kafka, cli).await,
        AnyPool::MySql(pool) => on(pool, kafka, cli).await,
        AnyPool::Sqlite(pool) => on(pool, kafka, cli).await,
        _ => bail!("this rk was built without that database's driver"),
    }
}

fn operator(cli: &Cli) -> String {
    cli.operator.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".to_owned())
}

/// The replay group of `topic` for `selection`: `rk-replay.<topic>` for all records,
/// `rk-replay.<topic>.<8 hex digits of the filter>` for a selection, so that a filtered
/// replay passing over the other records never hides them from a later replay.
fn default_group(topic: &str, selection: &DeadLetterFilter) -> String {
    if *selection == DeadLetterFilter::new() {
        return format!("rk-replay.{topic}");
    }
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, selection.describe().as_bytes());
    format!("rk-replay.{topic}.{}", &id.simple().to_string()[..8])
}

fn filter(f: &FilterArgs) -> DeadLetterFilter {
    let mut out = DeadLetterFilter::new();
    out.reason = f.reason.clone();
    out.since = f.since;
    out.until = f.until;
    out.key = f.key.as_ref().map(|k| k.as_bytes().to_vec());
    out.original_topic = f.original_topic.clone();
    out
}

async fn on<DB: Backend>(pool: sqlx::Pool<DB>, kafka: KafkaConfig, cli: Cli) -> anyhow::Result<u8> {
    let ops = Operations::new(pool.clone());
    let out = Render::new(cli.output);
    let who = operator(&cli);
    match &cli.command {
        Command::Outbox(OutboxCommand::Status) => {
            let total = ops.outbox_backlog().await?;
            let topics = ops.outbox_topics().await?;
            let parked = ops.parked_count().await?;
            out.outbox_status(&total, &topics, parked);
        }
        Command::Outbox(OutboxCommand::Retry { topic }) => {
            let n = ops.retry_parked_outbox(topic.as_deref(), &who).await?;
            out.count("outbox rows put back to pending", "retried", n);
        }
        Command::Audit { limit } => out.audit(&ops.audit_log(*limit).await?),
        Command::Dlq(DlqCommand::List { topic, filter: f, limit }) => {
            let records = read_dead_letters(&kafka, topic, &filter(f), *limit).await?;
            out.dead_letters(&records);
        }
        Command::Dlq(DlqCommand::Show { topic, partition, offset }) => {
            let all = read_dead_letters(&kafka, topic, &DeadLetterFilter::new(), usize::MAX).await?;
            match all.iter().find(|r| r.partition == *partition && r.offset == *offset) {
                Some(r) => out.dead_letter(r),
                None => {
                    eprintln!("rk: no record at {topic}/{partition}@{offset}");
                    return Ok(exit::NOT_FOUND);
                }
            }
        }
        Command::Dlq(DlqCommand::Replay { topic, filter: f, replay, group }) => {
            let selection = filter(f);
            let group = group.clone().unwrap_or_else(|| default_group(topic, &selection));
            let mut builder = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
                .topic(topic.clone())
                .group_id(group.clone())
                // An operator's replay: every reason (Spring's records have none),
                // however often it was re-driven.
                .any_reason()
                .max_redrives(u32::MAX)
                .idle_timeout(Duration::from_secs(10))
                .max_run_time(Duration::from_secs(24 * 3600))
                .dry_run(replay.dry_run)
                .filter(move |r| selection.matches(r));
            if let Some(rate) = replay.rate {
                builder = builder.rate_limit(rate);
            }
            if let Some(limit) = replay.limit {
                builder = builder.max_records_per_run(limit as u64);
            }
            let redriver = builder.build()?;
            let pending = redriver.pending().await?;
            let bar = render::progress(pending, cli.output, "re-driving");
            let stats = redriver.stats();
            let detail = format!("{} group={group}", filter(f).describe());
            let run = ops.replay_dead_letters(&redriver, &who, &detail);
            tokio::pin!(run);
            let report = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => bar.set_position(stats.examined()),
                }
            };
            bar.finish_and_clear();
            let report = report?;
            out.redrive(&report, replay.dry_run, pending);
        }
        Command::Parked(ParkedCommand::List { filter: f, limit }) => {
            let mut rows = ops.parked(&filter(f)).await?;
            rows.truncate(*limit);
            out.parked(&rows);
        }
        Command::Parked(ParkedCommand::Show { id }) => match ops.parked_message(*id).await? {
            Some(p) => out.parked_one(&p),
            None => {
                eprintln!("rk: no parked record with id {id}");
                return Ok(exit::NOT_FOUND);
            }
        },
        Command::Parked(ParkedCommand::Replay { filter: f, replay }) => {
            let report = ops.replay_parked(&kafka, &filter(f), replay.limit, replay.rate, replay.dry_run, &who).await?;
            out.parked_replay(&report, replay.dry_run);
        }
        Command::Parked(ParkedCommand::Purge { filter: f, limit, dry_run, yes }) => {
            if !yes && !dry_run {
                let n = ops.purge_parked(&filter(f), *limit, true, &who).await?;
                eprintln!(
                    "rk: this would delete {n} parked records for good; add --yes to do it (or --dry-run to list)"
                );
                return Ok(exit::REFUSED);
            }
            let n = ops.purge_parked(&filter(f), *limit, *dry_run, &who).await?;
            out.count(
                if *dry_run { "parked records that would be deleted" } else { "parked records deleted" },
                "purged",
                n,
            );
        }
    }
    Ok(exit::OK)
}
