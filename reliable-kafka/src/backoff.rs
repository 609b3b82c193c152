//! Retry policies: [`FixedBackOff`] and [`ExponentialBackOff`].
//!
//! Names follow Spring Kafka (`org.springframework.util.backoff`), with one
//! difference stated everywhere it matters: `max_attempts` here counts **all**
//! delivery attempts, the first one included. Spring's `FixedBackOff(1000, 3)` (three
//! retries) is `FixedBackOff::new(Duration::from_secs(1), 4)` here.

use std::time::Duration;

use crate::ConfigError;

/// Longest delay a policy may use: one day. Longer waits belong in a scheduler.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Most attempts a policy may make.
pub const MAX_ATTEMPTS: u32 = 10_000;

fn check_attempts(max_attempts: u32) -> Result<(), ConfigError> {
    if max_attempts == 0 {
        return Err(ConfigError::invalid("max_attempts", "must be at least 1 (the first attempt counts)"));
    }
    if max_attempts > MAX_ATTEMPTS {
        return Err(ConfigError::invalid("max_attempts", "must be at most 10000"));
    }
    Ok(())
}

/// The same delay between every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBackOff {
    interval: Duration,
    max_attempts: u32,
}

impl FixedBackOff {
    /// `interval` between attempts; `max_attempts` delivery attempts in total (≥ 1).
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming `max_attempts` when it is 0 or above
    /// [`MAX_ATTEMPTS`], or `interval` when it exceeds [`MAX_DELAY`].
    pub fn new(interval: Duration, max_attempts: u32) -> Result<Self, ConfigError> {
        check_attempts(max_attempts)?;
        if interval > MAX_DELAY {
            return Err(ConfigError::invalid("interval", "must be at most 24 h"));
        }
        Ok(FixedBackOff { interval, max_attempts })
    }

    /// Delay between attempts.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Delays growing by `multiplier` from `initial` up to `max_interval`, each spread by
/// ±`jitter` (a fraction of the delay) so that many consumers do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackOff {
    initial: Duration,
    multiplier: f64,
    max_interval: Duration,
    max_attempts: u32,
    jitter: f64,
}

impl ExponentialBackOff {
    /// Starts a builder with Spring Kafka's defaults: initial 100 ms, multiplier 2.0,
    /// max interval 30 s, no jitter, and 10 attempts.
    pub fn builder() -> ExponentialBackOffBuilder {
        ExponentialBackOffBuilder {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_secs(30),
            max_attempts: 10,
            jitter: 0.0,
        }
    }

    /// The delay before the first retry, without jitter.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// Growth factor between consecutive delays.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Upper bound of any delay, jitter included.
    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }

    /// Jitter fraction in `[0, 1]`.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Delay without jitter after failed attempt `attempt` (1-based).
    fn base_delay(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(1_000) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max_interval.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

/// Builder of [`ExponentialBackOff`]; fields as in [`ExponentialBackOff::builder`].
#[derive(Debug, Clone, Copy)]
pub struct ExponentialBackOffBuilder {
    initial: Duration,
    multiplier: f64,
    max_interval: Duration,
    max_attempts: u32,
    jitter: f64,
}

impl ExponentialBackOffBuilder {
    /// Delay before the first retry.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }
    /// Growth factor (≥ 1.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }
    /// Cap of every delay (≥ `initial`).
    pub fn max_interval(mut self, max_interval: Duration) -> Self {
        self.max_interval = max_interval;
        self
    }
    /// Delivery attempts in total, the first included (≥ 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }
    /// Each delay is multiplied by a uniform random factor in `[1 - jitter, 1 + jitter]`
    /// and then capped at `max_interval`; `jitter` is in `[0, 1]`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the key: `initial` is zero, `multiplier` is
    /// below 1 or not finite, `max_interval` is below `initial` or above [`MAX_DELAY`],
    /// `max_attempts` is 0 or above [`MAX_ATTEMPTS`], or `jitter` is outside `[0, 1]`.
    pub fn build(self) -> Result<ExponentialBackOff, ConfigError> {
        if self.initial.is_zero() {
            return Err(ConfigError::invalid("initial", "must be greater than zero"));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(ConfigError::invalid("multiplier", "must be a finite number >= 1.0"));
        }
        if self.max_interval < self.initial {
            return Err(ConfigError::invalid("max_interval", "must be at least `initial`"));
        }
        if self.max_interval > MAX_DELAY {
            return Err(ConfigError::invalid("max_interval", "must be at most 24 h"));
        }
        check_attempts(self.max_attempts)?;
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::invalid("jitter", "must be within [0, 1]"));
        }
        Ok(ExponentialBackOff {
            initial: self.initial,
            multiplier: self.multiplier,
            max_interval: self.max_interval,
            max_attempts: self.max_attempts,
            jitter: self.jitter,
        })
    }
}

/// A retry policy: how many attempts, and how long to wait after each failure.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BackOff {
    /// See [`FixedBackOff`].
    Fixed(FixedBackOff),
    /// See [`ExponentialBackOff`].
    Exponential(ExponentialBackOff),
}

impl Default for BackOff {
    /// Spring Kafka's `DefaultErrorHandler` default: `FixedBackOff(0, 9)`, i.e. ten
    /// attempts without delay. We wait 100 ms between them instead, which costs little
    /// and spares a struggling dependency.
    fn default() -> Self {
        BackOff::Fixed(FixedBackOff { interval: Duration::from_millis(100), max_attempts: 10 })
    }
}

impl BackOff {
    /// Attempts in total, the first included.
    pub fn max_attempts(&self) -> u32 {
        match self {
            BackOff::Fixed(f) => f.max_attempts,
            BackOff::Exponential(e) => e.max_attempts,
        }
    }

    /// The delay after failed attempt `attempt` (1-based) before attempt `attempt + 1`,
    /// or `None` when `attempt` was the last one.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts() {
            return None;
        }
        Some(match self {
            BackOff::Fixed(f) => f.interval,
            BackOff::Exponential(e) => {
                let base = e.base_delay(attempt);
                if e.jitter == 0.0 {
                    base
                } else {
                    let factor = 1.0 - e.jitter + 2.0 * e.jitter * fastrand::f64();
                    Duration::from_secs_f64(base.as_secs_f64() * factor).min(e.max_interval)
                }
            }
        })
    }

    /// The longest total time all retries can wait (jitter at its maximum), used to
    /// check a policy against the consumer's `max.poll.interval.ms`.
    pub fn max_total_delay(&self) -> Duration {
        match self {
            BackOff::Fixed(f) => f.interval * f.max_attempts.saturating_sub(1),
            BackOff::Exponential(e) => (1..e.max_attempts)
                .map(|a| Duration::from_secs_f64(e.base_delay(a).as_secs_f64() * (1.0 + e.jitter)).min(e.max_interval))
                .sum(),
        }
    }
}

impl From<FixedBackOff> for BackOff {
    fn from(f: FixedBackOff) -> Self {
        BackOff::Fixed(f)
    }
}

impl From<ExponentialBackOff> for BackOff {
    fn from(e: ExponentialBackOff) -> Self {
        BackOff::Exponential(e)
    }
}

/// Anything that can become a validated [`BackOff`]: a policy, or the `Result` of a
/// policy constructor, so `backoff = FixedBackOff::new(..)` in `#[event_handler]` needs
/// no `unwrap` and a bad value surfaces from the container's `build()`.
pub trait IntoBackOff {
    /// Converts.
    ///
    /// # Errors
    /// The constructor's [`ConfigError`].
    fn into_backoff(self) -> Result<BackOff, ConfigError>;
}

impl<T: Into<BackOff>> IntoBackOff for T {
    fn into_backoff(self) -> Result<BackOff, ConfigError> {
        Ok(self.into())
    }
}

impl<T: Into<BackOff>> IntoBackOff for Result<T, ConfigError> {
    fn into_backoff(self) -> Result<BackOff, ConfigError> {
        self.map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases = [
            (ExponentialBackOff::builder().initial(Duration::ZERO).build(), "initial"),
            (ExponentialBackOff::builder().multiplier(0.5).build(), "multiplier"),
            (ExponentialBackOff::builder().multiplier(f64::NAN).build(), "multiplier"),
            (ExponentialBackOff::builder().max_interval(Duration::from_millis(1)).build(), "max_interval"),
            (ExponentialBackOff::builder().max_attempts(0).build(), "max_attempts"),
            (ExponentialBackOff::builder().max_attempts(20_000).build(), "max_attempts"),
            (ExponentialBackOff::builder().max_interval(Duration::MAX).build(), "max_interval"),
            (ExponentialBackOff::builder().jitter(1.5).build(), "jitter"),
        ];
        for (res, key) in cases {
            let err = res.unwrap_err();
            assert!(matches!(&err, ConfigError::InvalidValue { key: k, .. } if k == key), "{err}");
        }
        assert!(FixedBackOff::new(Duration::ZERO, 0).is_err());
        assert!(FixedBackOff::new(Duration::MAX, 3).is_err());
        assert!(FixedBackOff::new(Duration::MAX, 3).is_err());
    }

    #[test]
    fn fixed_gives_max_attempts_minus_one_delays() {
        let b: BackOff = FixedBackOff::new(Duration::from_millis(50), 3).unwrap().into();
        assert_eq!(b.delay_after(1), Some(Duration::from_millis(50)));
        assert_eq!(b.delay_after(2), Some(Duration::from_millis(50)));
        assert_eq!(b.delay_after(3), None);
        assert_eq!(b.max_total_delay(), Duration::from_millis(100));
    }

    #[test]
    fn exponential_without_jitter_is_exact() {
        let b: BackOff = ExponentialBackOff::builder()
            .initial(Duration::from_millis(100))
            .multiplier(2.0)
            .max_interval(Duration::from_millis(500))
            .max_attempts(6)
            .build()
            .unwrap()
            .into();
        let delays: Vec<u128> = (1..6).map(|a| b.delay_after(a).unwrap().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(b.delay_after(6), None);
    }

    proptest! {
        #[test]
        fn exponential_delays_stay_within_bounds(
            initial_ms in 1u64..10_000,
            multiplier in 1.0f64..10.0,
            extra_ms in 0u64..100_000,
            max_attempts in 1u32..50,
            jitter in 0.0f64..=1.0,
        ) {
            let e = ExponentialBackOff::builder()
                .initial(Duration::from_millis(initial_ms))
                .multiplier(multiplier)
                .max_interval(Duration::from_millis(initial_ms + extra_ms))
                .max_attempts(max_attempts)
                .jitter(jitter)
                .build()
                .unwrap();
            let b = BackOff::from(e);
            let mut total = Duration::ZERO;
            for attempt in 1..max_attempts {
                let d = b.delay_after(attempt).unwrap();
                let base = e.base_delay(attempt).as_secs_f64();
                prop_assert!(d <= e.max_interval());
                prop_assert!(d.as_secs_f64() >= base * (1.0 - jitter) - 1e-6);
                prop_assert!(d.as_secs_f64() <= base * (1.0 + jitter) + 1e-6);
                prop_assert!(e.base_delay(attempt + 1) >= e.base_delay(attempt));
                total += d;
            }
            prop_assert!(b.delay_after(max_attempts).is_none());
            prop_assert!(total <= b.max_total_delay() + Duration::from_millis(1));
        }
    }
}
