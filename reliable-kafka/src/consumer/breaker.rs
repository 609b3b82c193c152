//! The circuit breaker of a handler ([`CircuitBreaker`]): closed → open → half-open →
//! closed, in memory, per container.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::stats::ContainerStats;
use crate::{ConfigError, HandlerError};

/// A handler's circuit breaker (see `HandlerOptions::circuit_breaker`).
///
/// - **Closed** (the start): records go to the handler. `consecutive_failures`
///   transient failures in a row, each within `window` of the first, or one
///   [`HandlerError::Unavailable`], open it.
/// - **Open**: the handler is not called. Every partition that brings it a record is
///   paused, its record waiting (no attempt is used up), until `cool_down` has passed.
/// - **Half-open**: one record is let through as a probe; the other partitions wait
///   up to a second more each time they ask. The probe's success closes the breaker; a
///   transient failure opens it for another `cool_down`.
///
/// A [`HandlerError::Unavailable`] is never counted as an attempt of its record (it
/// waits for the breaker instead), so an outage the handler reports as such
/// dead-letters nothing: records wait for the downstream. A plain transient failure
/// counts as usual, also while the breaker opens or probes (the downstream answered
/// something), so a poison record that fails every time is still dead-lettered after
/// its last attempt rather than keeping the breaker half-open for ever; the back-off
/// of such a record waits at least until the breaker lets a probe through. A
/// permanent failure says the downstream answered: it counts as a success for the
/// /// breaker. The state is per container (each member learns on its own), as with
/// Resilience4j breakers in Spring services; it shows in
/// [`ContainerStats::circuit`], in the health report (degraded while open), and in the
/// metric `rk_consumer_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub(crate) consecutive_failures: u32,
    pub(crate) window: Duration,
    pub(crate) cool_down: Duration,
}

impl Default for CircuitBreaker {
    /// 5 failures in a row within 30 s open it, for 30 s.
    fn default() -> Self {
        CircuitBreaker { consecutive_failures: 5, window: Duration::from_secs(30), cool_down: Duration::from_secs(30) }
    }
}

impl CircuitBreaker {
    /// A breaker that opens after `consecutive_failures` transient failures in a row
    /// within `window`, and probes after `cool_down`.
    pub fn new(consecutive_failures: u32, window: Duration, cool_down: Duration) -> Self {
        CircuitBreaker { consecutive_failures, window, cool_down }
    }

    /// The wait between opening and the probe.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }

    /// # Errors
    /// [`ConfigError::InvalidValue`] naming `circuit_breaker` when a count or duration is
    /// zero, or when the breaker would open only after the back-off's last attempt
    /// (`max_attempts`), so that records would be dead-lettered before it opens.
    pub(crate) fn validate(&self, topic: &str, max_attempts: u32) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::invalid("circuit_breaker", format!("`{topic}`: {why}")));
        if self.consecutive_failures == 0 || self.window.is_zero() || self.cool_down.is_zero() {
            return bad("consecutive_failures, window and cool_down must be greater than zero".into());
        }
        if self.consecutive_failures > max_attempts {
            return bad(format!(
                "it opens after {} failures but the back-off gives up after {max_attempts} attempts; lower consecutive_failures or raise the attempts",
                self.consecutive_failures
            ));
        }
        Ok(())
    }
}

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Records go to the handler.
    Closed,
    /// The downstream is taken as unavailable: the handler is not called.
    Open,
    /// One probe record is on its way to the handler.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    /// The value of the `rk_consumer_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

/// The longest wait of a partition that finds the breaker half-open.
const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32, first: Instant },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// A breaker at run time, shared by the partitions of its handler.
pub(crate) struct Breaker {
    settings: CircuitBreaker,
    /// A probe that has not reported back after this long (its partition was revoked)
    /// is given up, and another record probes.
    probe_timeout: Duration,
    state: Mutex<State>,
    handler: String,
    stats: Arc<ContainerStats>,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("handler", &self.handler).field("settings", &self.settings).finish()
    }
}

impl Breaker {
    pub(crate) fn new(
        settings: CircuitBreaker,
        handler: &str,
        group: &str,
        handler_timeout: Duration,
        stats: Arc<ContainerStats>,
    ) -> Self {
        let gauge = crate::telemetry::record::circuit_state(group, handler);
        gauge.set(CircuitState::Closed.gauge());
        stats.set_circuit(handler, CircuitState::Closed);
        Breaker {
            settings,
            probe_timeout: handler_timeout + Duration::from_secs(1),
            state: Mutex::new(State::Closed { failures: 0, first: Instant::now() }),
            handler: handler.to_owned(),
            stats,
            gauge,
        }
    }

    fn publish(&self, state: CircuitState) {
        self.gauge.set(state.gauge());
        self.stats.set_circuit(&self.handler, state);
    }

    /// Whether records go to the handler without a probe (batches are tried only then).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.state.lock().unwrap_or_else(|p| p.into_inner()), State::Closed { .. })
    }

    /// Whether a record may go to the handler now; `Some(until)` when it must wait.
    pub(crate) fn admit(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            State::Closed { .. } => None,
            State::Open { until } if now < until => Some(until),
            State::HalfOpen { since } if now.duration_since(since) < self.probe_timeout => {
                Some(now + PROBE_WAIT.min(self.settings.cool_down))
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                drop(state);
                tracing::info!(handler = %self.handler, "circuit half-open: probing with one record");
                self.publish(CircuitState::HalfOpen);
                None
            }
        }
    }

    /// The probe never reached the downstream (a duplicate, an undecodable payload):
    /// the next record probes at once.
    pub(crate) fn release_probe(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, State::HalfOpen { .. }) {
            *state = State::Open { until: Instant::now() };
        }
    }

    /// The handler succeeded (or failed permanently: the downstream answered).
    pub(crate) fn on_success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0, first: Instant::now() };
        drop(state);
        if !was_closed {
            tracing::info!(handler = %self.handler, "circuit closed: the downstream answers again");
            self.publish(CircuitState::Closed);
        }
    }

    /// A transient failure. `Some(until)` when the breaker is open now (this failure
    /// opened it, or it was open or probing already): the record waits until then and
    /// the attempt is not counted.
    pub(crate) fn on_failure(&self, e: &HandlerError, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open = match *state {
            State::Open { until } => return Some(until),
            State::HalfOpen { .. } => true,
            State::Closed { failures, first } => {
                let failures = if now.duration_since(first) > self.settings.window { 1 } else { failures + 1 };
                let first = if failures == 1 { now } else { first };
                *state = State::Closed { failures, first };
                matches!(e, HandlerError::Unavailable(_)) || failures >= self.settings.consecutive_failures
            }
        };
        if !open {
            return None;
        }
        let probing = matches!(*state, State::HalfOpen { .. });
        let until = now + self.settings.cool_down;
        *state = State::Open { until };
        drop(state);
        if probing {
            tracing::info!(handler = %self.handler, cool_down = ?self.settings.cool_down, error = %crate::report(e),
                "circuit open again: the probe failed");
        } else {
            tracing::warn!(handler = %self.handler, cool_down = ?self.settings.cool_down, error = %crate::report(e),
                "circuit open: the downstream is unavailable; the handler's partitions wait");
        }
        self.publish(CircuitState::Open);
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        let settings = CircuitBreaker::new(failures, Duration::from_secs(10), Duration::from_secs(5));
        Breaker::new(settings, "H", "g", Duration::from_secs(2), Arc::default())
    }

    #[test]
    fn closed_open_half_open_closed() {
        let b = breaker(3);
        let t0 = Instant::now();
        let e = || HandlerError::transient("503");
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.on_failure(&e(), t0), None);
        assert_eq!(b.on_failure(&e(), t0), None);
        let until = b.on_failure(&e(), t0).expect("the third failure in a row opens it");
        assert_eq!(until, t0 + Duration::from_secs(5));
        assert_eq!(b.stats.circuit("H"), Some(CircuitState::Open));
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Some(until), "open: records wait");
        // After the cool-down one record probes; the others wait a second.
        let later = until + Duration::from_millis(1);
        assert_eq!(b.admit(later), None);
        assert_eq!(b.stats.circuit("H"), Some(CircuitState::HalfOpen));
        assert_eq!(b.admit(later), Some(later + PROBE_WAIT));
        // The probe fails: open again.
        assert_eq!(b.on_failure(&e(), later), Some(later + Duration::from_secs(5)));
        let again = later + Duration::from_secs(6);
        assert_eq!(b.admit(again), None, "the next probe");
        b.on_success();
        assert_eq!(b.stats.circuit("H"), Some(CircuitState::Closed));
        assert_eq!(b.admit(again), None);
        assert_eq!(b.on_failure(&e(), again), None, "the count starts over");
    }

    #[test]
    fn failures_apart_by_more_than_the_window_do_not_add_up_and_unavailable_opens_at_once() {
        let b = breaker(2);
        let t0 = Instant::now();
        let e = HandlerError::transient("503");
        assert_eq!(b.on_failure(&e, t0), None);
        assert_eq!(b.on_failure(&e, t0 + Duration::from_secs(11)), None, "outside the window");
        assert!(b.on_failure(&e, t0 + Duration::from_secs(12)).is_some());
        let b = breaker(5);
        assert!(b.on_failure(&HandlerError::unavailable("webhook down"), t0).is_some());
    }

    #[test]
    fn a_lost_probe_is_replaced_after_the_probe_timeout() {
        let b = breaker(1);
        let t0 = Instant::now();
        let until = b.on_failure(&HandlerError::transient("x"), t0).unwrap();
        assert_eq!(b.admit(until), None, "the probe");
        assert!(b.admit(until + Duration::from_secs(1)).is_some());
        assert_eq!(b.admit(until + Duration::from_secs(4)), None, "the probe never reported: another one");
    }

    #[test]
    fn settings_that_cannot_open_before_the_last_attempt_are_rejected() {
        assert!(CircuitBreaker::default().validate("t", 10).is_ok());
        let e = CircuitBreaker::default().validate("t", 3).unwrap_err().to_string();
        assert!(e.contains("circuit_breaker"), "{e}");
        assert!(CircuitBreaker::new(0, Duration::from_secs(1), Duration::from_secs(1)).validate("t", 3).is_err());
    }
}
