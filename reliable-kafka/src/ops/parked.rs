//! Parked records (dead letters the re-driver gave up on): list, replay to their
//! original topic, purge; each change audited.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};

use super::{DeadLetterFilter, Operations};
use crate::kafka::{send_one, HealthContext, OutRecord, Producer};
use crate::{headers, Backend, ConfigError, Error, KafkaConfig, ParkedMessage};

/// Most rows [`Operations::parked`] reads before filtering.
const PARKED_SCAN: i64 = 100_000;

/// What [`Operations::replay_parked`] did (with `dry_run`: would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Records published to their original topic (and their rows deleted).
    pub replayed: u64,
    /// Selected records that cannot be replayed: no original topic, or no payload (it
    /// was too large for the dead-letter topic; replay it from the original offset).
    pub unreplayable: u64,
}

impl<DB: Backend> Operations<DB> {
    /// The parked records `filter` selects, newest first (of the newest 100 000).
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn parked(&self, filter: &DeadLetterFilter) -> Result<Vec<ParkedMessage>, Error> {
        let all = DB::parked_list(&self.pool, &self.parked_list_sql, PARKED_SCAN)
            .await
            .map_err(Error::db("list parked records"))?;
        Ok(all.into_iter().filter(|p| filter.matches_parked(p)).collect())
    }

    /// The parked record of row `id`, if there is one.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn parked_message(&self, id: i64) -> Result<Option<ParkedMessage>, Error> {
        // The statement's one argument is the id (the list statement's is a limit).
        let rows =
            DB::parked_list(&self.pool, &self.parked_get_sql, id).await.map_err(Error::db("read parked record"))?;
        Ok(rows.into_iter().next())
    }

    /// Publishes the parked records `filter` selects (at most `limit`, oldest first,
    /// at most `rate` records per second) to their original topic with their key,
    /// payload and headers, minus the dead-letter headers and the re-drive count (the
    /// re-driver counts afresh), and deletes each row once its record is acknowledged;
    /// then writes an audit row (`parked.replay`). With `dry_run` nothing is sent,
    /// deleted or audited. A crash between send and delete replays a record twice; it
    /// keeps its message id, so the idempotent consumer applies it once.
    ///
    /// # Errors
    /// [`Error::Config`] for a `rate` that is not positive; [`Error::Kafka`] when a
    /// send fails (what was replayed before is deleted and audited); [`Error::Database`].
    pub async fn replay_parked(
        &self,
        kafka: &KafkaConfig,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
        rate: Option<f64>,
        dry_run: bool,
        operator: &str,
    ) -> Result<ReplayReport, Error> {
        let gap = match rate {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return Err(ConfigError::invalid("rate", "must be a positive number of records per second").into())
            }
            Some(r) => Some(Duration::from_secs_f64(1.0 / r)),
            None => None,
        };
        let mut selected = self.parked(filter).await?;
        selected.reverse(); // oldest first
        selected.truncate(limit.unwrap_or(usize::MAX));
        let mut report = ReplayReport::default();
        let replayable: Vec<ParkedMessage> = selected
            .into_iter()
            .filter(|p| {
                let ok = p.original_topic.is_some() && p.payload.is_some();
                report.unreplayable += u64::from(!ok);
                ok
            })
            .collect();
        if dry_run {
            report.replayed = replayable.len() as u64;
            return Ok(report);
        }
        let producer: Producer = kafka
            .client_config(KafkaConfig::PRODUCER_PRESETS)
            .create_with_context(HealthContext::new("rk-parked-replay"))
            .map_err(Error::kafka("create replay producer"))?;
        let mut next = tokio::time::Instant::now();
        let mut failure = None;
        for p in &replayable {
            if let Some(gap) = gap {
                tokio::time::sleep_until(next).await;
                next = tokio::time::Instant::now() + gap;
            }
            let record = OutRecord {
                topic: p.original_topic.clone().unwrap_or_default(),
                key: p.key.clone(),
                payload: p.payload.clone(),
                headers: replay_headers(&p.headers),
            };
            if let Err(e) = send_one(&producer, record).await {
                failure = Some(Error::Kafka { operation: "replay parked record", source: e });
                break;
            }
            DB::execute_id(&self.pool, &self.parked_delete_sql, p.id)
                .await
                .map_err(Error::db("delete replayed parked record"))?;
            report.replayed += 1;
        }
        crate::worker::flush(&producer).await;
        let detail = format!("{} unreplayable={}", filter.describe(), report.unreplayable);
        self.audit(operator, "parked.replay", "rk_parked_messages", report.replayed, &detail).await?;
        failure.map_or(Ok(report), Err)
    }

    /// Deletes the parked records `filter` selects (at most `limit`, oldest first) and
    /// writes an audit row (`parked.purge`). With `dry_run`, only counts them.
    ///
    /// # Errors
    /// [`Error::Database`] when a query fails.
    pub async fn purge_parked(
        &self,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
        dry_run: bool,
        operator: &str,
    ) -> Result<u64, Error> {
        let mut selected = self.parked(filter).await?;
        selected.reverse();
        selected.truncate(limit.unwrap_or(usize::MAX));
        if dry_run {
            return Ok(selected.len() as u64);
        }
        let mut n = 0;
        for p in &selected {
            n += DB::execute_id(&self.pool, &self.parked_delete_sql, p.id)
                .await
                .map_err(Error::db("purge parked record"))?;
        }
        self.audit(operator, "parked.purge", "rk_parked_messages", n, &filter.describe()).await?;
        Ok(n)
    }
}

impl ParkedMessage {
    /// The headers as [`crate::DeadLetterRecord::decoded_headers`] shows them: Spring's
    /// big-endian numbers as numbers, text as text, the rest as hex.
    pub fn decoded_headers(&self) -> Vec<(String, String)> {
        self.headers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let key = h.get("key")?.as_str()?;
                let raw = match (h.get("value").and_then(|v| v.as_str()), h.get("hex").and_then(|v| v.as_str())) {
                    (Some(text), _) => Some(text.as_bytes().to_vec()),
                    (None, Some(hex)) => Some(unhex(hex)),
                    (None, None) => None,
                };
                Some((key.to_owned(), super::decode_header(key, raw.as_deref())))
            })
            .collect()
    }
}

/// The headers of a replayed record from a parked row's JSON headers (see
/// [`ParkedMessage::headers`]): without the dead-letter headers and the re-drive count.
pub(crate) fn replay_headers(json: &serde_json::Value) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    for h in json.as_array().into_iter().flatten() {
        let Some(key) = h.get("key").and_then(|k| k.as_str()) else { continue };
        if headers::DEAD_LETTER_PREFIXES.iter().any(|p| key.starts_with(p))
            || key == headers::REDRIVE_COUNT
            || key == headers::RELAY_SEQ
        {
            continue;
        }
        let value: Option<Vec<u8>> =
            match (h.get("value").and_then(|v| v.as_str()), h.get("hex").and_then(|v| v.as_str())) {
                (Some(text), _) => Some(text.as_bytes().to_vec()),
                (None, Some(hex)) => Some(unhex(hex)),
                (None, None) => None,
            };
        out = out.insert(Header { key, value: value.as_deref() });
    }
    out
}

/// The bytes of lowercase or uppercase hex; pairs that are not hex are left out.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks_exact(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn replayed_headers_drop_the_dead_letter_ones_and_decode_binary_values() {
        let json = serde_json::json!([
            { "key": "rk-message-id", "value": "0190-abc" },
            { "key": "kafka_dlt-original-partition", "hex": "00000002" },
            { "key": "rk-dlt-reason", "value": "retries-exhausted" },
            { "key": "rk-redrive-count", "value": "3" },
            { "key": "rk-relay-seq", "value": "5f0c/0:42" },
            { "key": "trace-bin", "hex": "00ff10" },
            { "key": "empty" },
            { "key": "edited", "hex": "zz€41" },
        ]);
        let h = replay_headers(&json);
        let got: Vec<(&str, Option<&[u8]>)> = h.iter().map(|x| (x.key, x.value)).collect();
        assert_eq!(
            got,
            [
                ("rk-message-id", Some(&b"0190-abc"[..])),
                ("trace-bin", Some(&[0u8, 0xff, 0x10][..])),
                ("empty", None),
                ("edited", Some(&b""[..]))
            ]
        );
    }
}
