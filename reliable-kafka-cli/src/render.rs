//! Printing results as a table for a person or as JSON for a script, and parsing
//! times given on the command line.

use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reliable_kafka::{
    AuditEntry, DeadLetterRecord, OutboxBacklog, ParkedMessage, PayloadView, RedriveReport, ReplayReport, TopicBacklog,
};
use serde_json::{json, Value};

use crate::Output;

/// `2026-12-01T03:00:00Z`, or an age before now (`2h`, `30m`, `1day`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(s).map_err(|e| format!("not RFC 3339 nor an age like `2h`: {e}"))?;
    Ok(Utc::now() - chrono::Duration::from_std(age).map_err(|e| e.to_string())?)
}

/// A progress bar on stderr for a person (hidden for JSON and when stderr is not a
/// terminal, as indicatif decides).
pub fn progress(total: u64, output: Output, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if output == Output::Json || total < 20 {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} records, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

fn age(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
}

fn text(b: &Option<Vec<u8>>) -> String {
    b.as_deref().map_or_else(|| "-".to_owned(), |k| String::from_utf8_lossy(k).into_owned())
}

fn payload_json(p: PayloadView) -> Value {
    match p {
        PayloadView::Json(v) => json!({ "json": v }),
        PayloadView::Text(t) => json!({ "text": t }),
        PayloadView::Hex(h) => json!({ "hex": h }),
        _ => Value::Null,
    }
}

fn payload_text(p: PayloadView) -> String {
    match p {
        PayloadView::Json(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        PayloadView::Text(t) => t,
        PayloadView::Hex(h) => format!("0x{h}"),
        _ => "(none)".to_owned(),
    }
}

fn record_json(r: &DeadLetterRecord, full: bool) -> Value {
    let info = r.info.as_ref();
    let mut v = json!({
        "topic": r.topic, "partition": r.partition, "offset": r.offset,
        "dead_lettered_at": r.dead_lettered_at().map(|t| t.to_rfc3339()),
        "key": r.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "message_id": r.message_id(),
        "reason": r.reason().map(|x| x.as_str()),
        "original_topic": info.map(|i| &i.original_topic),
        "original_partition": info.map(|i| i.original_partition),
        "original_offset": info.map(|i| i.original_offset),
        "consumer_group": info.map(|i| &i.consumer_group),
        "attempts": info.map(|i| i.attempts),
        "error": info.map(|i| &i.error_message),
        "redrive_count": r.redrive_count,
    });
    if full {
        v["headers"] = r.decoded_headers().into_iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
        v["payload"] = payload_json(r.payload_view());
    }
    v
}

fn parked_json(p: &ParkedMessage, full: bool) -> Value {
    let mut v = json!({
        "id": p.id, "dead_letter_topic": p.dead_letter_topic, "dead_letter_partition": p.dead_letter_partition,
        "dead_letter_offset": p.dead_letter_offset, "message_id": p.message_id, "original_topic": p.original_topic,
        "original_partition": p.original_partition, "original_offset": p.original_offset,
        "consumer_group": p.consumer_group, "reason": p.reason, "error": p.error_message, "attempts": p.attempts,
        "redrive_count": p.redrive_count, "key": p.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "dead_lettered_at": p.dead_lettered_at.map(|t| t.to_rfc3339()), "parked_at": p.parked_at.to_rfc3339(),
    });
    if full {
        let headers: Vec<Value> =
            p.decoded_headers().into_iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
        v["headers"] = Value::Array(headers);
        v["payload"] = payload_json(PayloadView::of(p.payload.as_deref()));
    }
    v
}

/// Prints in the chosen format.
pub struct Render(Output);

impl Render {
    pub fn new(output: Output) -> Self {
        Render(output)
    }

    fn json(&self, v: Value) {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }

    fn table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
        for r in rows {
            t.add_row(r);
        }
        println!("{t}");
    }

    fn fields(&self, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in fields {
            println!("{k:>width$}  {v}");
        }
    }

    pub fn outbox_status(&self, total: &OutboxBacklog, topics: &[TopicBacklog], parked_dead_letters: u64) {
        if self.0 == Output::Json {
            let per: Vec<Value> = topics
                .iter()
                .map(|t| {
                    json!({ "topic": t.topic, "pending": t.pending, "parked": t.parked,
                    "oldest_pending_age_secs": t.oldest_pending_age.map(|d| d.as_secs_f64()) })
                })
                .collect();
            return self.json(json!({
                "pending": total.pending, "parked": total.parked, "delivered": total.delivered,
                "oldest_pending_age_secs": total.oldest_pending_age.map(|d| d.as_secs_f64()),
                "parked_dead_letters": parked_dead_letters, "topics": per,
            }));
        }
        println!(
            "outbox: {} pending (oldest {}), {} parked, {} delivered kept; {} parked dead letters",
            total.pending,
            age(total.oldest_pending_age),
            total.parked,
            total.delivered,
            parked_dead_letters
        );
        if !topics.is_empty() {
            let rows = topics
                .iter()
                .map(|t| vec![t.topic.clone(), t.pending.to_string(), age(t.oldest_pending_age), t.parked.to_string()])
                .collect();
            self.table(&["topic", "pending", "oldest pending", "parked"], rows);
        }
    }

    pub fn count(&self, what: &str, key: &str, n: u64) {
        match self.0 {
            Output::Json => self.json(json!({ key: n })),
            Output::Table => println!("{n} {what}"),
        }
    }

    pub fn audit(&self, rows: &[AuditEntry]) {
        if self.0 == Output::Json {
            let v: Vec<Value> = rows
                .iter()
                .map(|a| {
                    json!({ "id": a.id, "at": a.at.to_rfc3339(), "operator": a.operator, "action": a.action,
                    "target": a.target, "records": a.records, "detail": a.detail })
                })
                .collect();
            return self.json(Value::Array(v));
        }
        let rows = rows
            .iter()
            .map(|a| {
                vec![
                    a.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    a.operator.clone(),
                    a.action.clone(),
                    a.target.clone(),
                    a.records.to_string(),
                    a.detail.clone(),
                ]
            })
            .collect();
        self.table(&["at (UTC)", "operator", "action", "target", "records", "detail"], rows);
    }

    pub fn dead_letters(&self, records: &[DeadLetterRecord]) {
        if self.0 == Output::Json {
            return self.json(records.iter().map(|r| record_json(r, true)).collect());
        }
        let rows = records
            .iter()
            .map(|r| {
                let info = r.info.as_ref();
                vec![
                    format!("{}@{}", r.partition, r.offset),
                    r.dead_lettered_at().map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    text(&r.key),
                    r.reason().map_or("-", |x| x.as_str()).to_owned(),
                    info.map_or("-".into(), |i| {
                        format!("{}/{}@{}", i.original_topic, i.original_partition, i.original_offset)
                    }),
                    r.redrive_count.to_string(),
                    info.map_or("-".into(), |i| i.error_message.chars().take(80).collect()),
                ]
            })
            .collect();
        self.table(
            &["partition@offset", "dead-lettered (UTC)", "key", "reason", "original", "re-drives", "error"],
            rows,
        );
        println!("{} records", records.len());
    }

    pub fn dead_letter(&self, r: &DeadLetterRecord) {
        if self.0 == Output::Json {
            return self.json(record_json(r, true));
        }
        let summary = record_json(r, false);
        let fields: Vec<(&str, String)> = summary
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        self.fields(&fields);
        println!("\nheaders:");
        let rows = r.decoded_headers().into_iter().map(|(k, v)| vec![k, v]).collect();
        self.table(&["header", "value"], rows);
        println!("\npayload:\n{}", payload_text(r.payload_view()));
    }

    pub fn redrive(&self, r: &RedriveReport, dry_run: bool, examined: u64) {
        if self.0 == Output::Json {
            return self.json(json!({ "redriven": r.redriven, "parked": r.parked, "skipped": r.skipped,
                "dry_run": dry_run, "examined_at_most": examined }));
        }
        let verb = if dry_run { "would be" } else { "were" };
        println!(
            "{} records {verb} re-driven, {} {verb} parked (cannot be replayed), {} passed over by the filter",
            r.redriven, r.parked, r.skipped
        );
    }

    pub fn parked(&self, rows: &[ParkedMessage]) {
        if self.0 == Output::Json {
            return self.json(rows.iter().map(|p| parked_json(p, false)).collect());
        }
        let rows = rows
            .iter()
            .map(|p| {
                vec![
                    p.id.to_string(),
                    p.parked_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    text(&p.key),
                    p.original_topic.clone().unwrap_or_else(|| "-".into()),
                    p.reason.clone(),
                    p.error_message.as_deref().map_or("-".into(), |e| e.chars().take(80).collect()),
                ]
            })
            .collect::<Vec<_>>();
        let n = rows.len();
        self.table(&["id", "parked (UTC)", "key", "original topic", "why parked", "error"], rows);
        println!("{n} records");
    }

    pub fn parked_one(&self, p: &ParkedMessage) {
        let v = parked_json(p, true);
        if self.0 == Output::Json {
            return self.json(v);
        }
        let fields: Vec<(&str, String)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "headers" && *k != "payload")
            .map(|(k, v)| (k.as_str(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        self.fields(&fields);
        println!("\nheaders:");
        let rows = v["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                vec![
                    h["key"].as_str().unwrap_or_default().to_owned(),
                    h["value"].as_str().unwrap_or_default().to_owned(),
                ]
            })
            .collect();
        self.table(&["header", "value"], rows);
        println!("\npayload:\n{}", payload_text(PayloadView::of(p.payload.as_deref())));
    }

    pub fn parked_replay(&self, r: &ReplayReport, dry_run: bool) {
        if self.0 == Output::Json {
            return self.json(json!({ "replayed": r.replayed, "unreplayable": r.unreplayable, "dry_run": dry_run }));
        }
        let verb = if dry_run { "would be" } else { "were" };
        println!(
            "{} parked records {verb} replayed; {} cannot be (no original topic or no payload)",
            r.replayed, r.unreplayable
        );
    }
}
