//! [`Health`]: how a worker is doing, for readiness and liveness probes, from what it
//! records as it runs (no query, no broker round trip: cheap enough for every probe).
//!
//! | worker | unhealthy | degraded |
//! |---|---|---|
//! | container | stopped; all brokers down; not polled for longer than `max.poll.interval.ms` | not polled for half of it; no partition assigned |
//! | relay | stopped; all brokers down while rows are pending; its last claim failed (database); the oldest pending row older than `max_pending_age` | all brokers down while idle; the last batch had failed sends; the oldest pending row older than half of `max_pending_age` |
//! | re-driver | stopped | its last run failed; no run for three intervals |
//!
//! "All brokers down" is what librdkafka reports when every broker connection it
//! holds is lost (at once, when a broker stops); it ends at the first statistics report
//! that shows a connection up again (`statistics.interval.ms`, preset to
//! [`STATISTICS_INTERVAL`]), or when a record is fetched (container) or acknowledged
//! (relay). With statistics turned off, only the latter ends it.

use std::time::Duration;

/// The `statistics.interval.ms` preset of the container's consumer and the relay's
/// producer: how soon health sees a broker back, and how fresh the consumer lag is.
pub const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// A worker's health, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working, with something an operator should look at (reasons say what).
    Degraded,
    /// Not doing its work: take the instance out of service (readiness fails).
    Unhealthy,
}

impl HealthStatus {
    /// `healthy`, `degraded` or `unhealthy`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker's health and why: see the module table for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The worker's name (consumer group, outbox table, re-drive group).
    pub worker: String,
    /// The worst of what was found.
    pub status: HealthStatus,
    /// One line per finding that is not healthy, worst first.
    pub reasons: Vec<String>,
    /// The consumer lag of the container's assigned partitions (records), from
    /// librdkafka's last statistics; `None` for other workers or before any.
    pub consumer_lag: Option<i64>,
}

impl Health {
    pub(crate) fn new(worker: &str) -> Self {
        Health { worker: worker.to_owned(), status: HealthStatus::Healthy, reasons: Vec::new(), consumer_lag: None }
    }

    /// Records a finding of `status` (worse findings first in `reasons`).
    pub(crate) fn found(&mut self, status: HealthStatus, reason: String) {
        if status > self.status {
            self.reasons.insert(0, reason);
            self.status = status;
        } else {
            self.reasons.push(reason);
        }
    }

    /// The worst status of `healths` ([`HealthStatus::Healthy`] for none): an
    /// instance is ready while none is unhealthy.
    pub fn worst<'a>(healths: impl IntoIterator<Item = &'a Health>) -> HealthStatus {
        healths.into_iter().map(|h| h.status).max().unwrap_or(HealthStatus::Healthy)
    }
}

/// Implemented by the workers' stats; gives [`crate::WorkerHandle::health`].
pub trait WorkerHealth: sealed::Sealed {
    /// The health of the worker named `worker`, from its stats.
    fn health(&self, worker: &str) -> Health;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `d` as people read it in a probe's answer: `850ms`, `12.3s`, `4m05s`.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_comes_first_and_sets_the_status() {
        let mut h = Health::new("g");
        h.found(HealthStatus::Degraded, "slow".into());
        h.found(HealthStatus::Unhealthy, "down".into());
        h.found(HealthStatus::Degraded, "lag".into());
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.reasons, ["down", "slow", "lag"]);
        assert_eq!(Health::worst([&h, &Health::new("r")]), HealthStatus::Unhealthy);
        assert_eq!(Health::worst([]), HealthStatus::Healthy);
        assert_eq!(human(Duration::from_millis(245_000)), "4m05s");
    }
}
