//! Restart strategies: after a task failure, whether the job restarts and after how
//! long, with Flink's semantics for `none`, `fixed-delay`, `exponential-delay` and
//! `failure-rate`.
//!
//! [`RestartTracker`] is pure: the caller passes the time of the failure and a random
//! number for the jitter, and waits the returned delay itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::job::RestartStrategy;

/// What to do after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart from the latest completed checkpoint after waiting this long.
    Restart {
        /// The wait.
        after: Duration,
    },
    /// Do not restart: the job fails.
    GiveUp(GiveUpReason),
}

/// Why the restart strategy gave up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GiveUpReason {
    /// The strategy is `none`.
    #[error("the restart strategy is none")]
    NoRestarts,
    /// The strategy's `attempts` are used up.
    #[error("the job was restarted {attempts} times, as many as the restart strategy's attempts")]
    AttemptsExhausted {
        /// Restarts made.
        attempts: u32,
    },
    /// Too many failures in the `failure-rate` window.
    #[error("{failures} failures within {interval:?}, more than max-failures-per-interval = {max}")]
    FailureRateExceeded {
        /// Failures within the window, this one included.
        failures: usize,
        /// The allowed number.
        max: u32,
        /// The window.
        interval: Duration,
    },
}

/// The failure history a restart strategy needs.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    /// Restarts granted (since the last backoff reset, for `exponential-delay`).
    restarts: u32,
    /// The last failure and the wait granted for it.
    last: Option<(Instant, Duration)>,
    /// `exponential-delay`: the backoff before jitter of the last restart.
    backoff: Option<Duration>,
    /// `failure-rate`: failures within the window, oldest first.
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(strategy: RestartStrategy) -> Self {
        Self {
            strategy,
            restarts: 0,
            last: None,
            backoff: None,
            failures: VecDeque::new(),
        }
    }

    /// Restarts granted so far (for `exponential-delay`, since the last reset).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A task failed at `now`. `jitter` is a random number in `[0, 1)` (values outside
    /// are clamped); only `exponential-delay` uses it.
    pub fn on_failure(&mut self, now: Instant, jitter: f64) -> RestartDecision {
        let decision = match self.strategy.clone() {
            RestartStrategy::None => RestartDecision::GiveUp(GiveUpReason::NoRestarts),
            RestartStrategy::FixedDelay { attempts, delay } => self.fixed(attempts, delay),
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter: factor,
                reset_threshold,
                attempts,
            } => {
                let backoff = Backoff {
                    initial,
                    max,
                    multiplier,
                    factor,
                    reset_threshold,
                    attempts,
                };
                self.exponential(&backoff, now, jitter)
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => self.failure_rate(max_failures, interval, delay, now),
        };
        if let RestartDecision::Restart { after } = decision {
            self.restarts = self.restarts.saturating_add(1);
            self.last = Some((now, after));
        }
        decision
    }

    fn fixed(&self, attempts: u32, delay: Duration) -> RestartDecision {
        if self.restarts >= attempts {
            return RestartDecision::GiveUp(GiveUpReason::AttemptsExhausted {
                attempts: self.restarts,
            });
        }
        RestartDecision::Restart { after: delay }
    }

    fn exponential(&mut self, b: &Backoff, now: Instant, jitter: f64) -> RestartDecision {
        // The job ran from the end of the last wait until now; long enough, and the
        // backoff and the attempts start over.
        let ran = self
            .last
            .and_then(|(failed, waited)| failed.checked_add(waited))
            .map(|resumed| now.saturating_duration_since(resumed));
        if ran.is_some_and(|ran| ran >= b.reset_threshold) {
            self.backoff = None;
            self.restarts = 0;
        }
        if b.attempts.is_some_and(|attempts| self.restarts >= attempts) {
            return RestartDecision::GiveUp(GiveUpReason::AttemptsExhausted {
                attempts: self.restarts,
            });
        }
        let backoff = match self.backoff {
            None => b.initial.min(b.max),
            Some(previous) => scale(previous, b.multiplier).unwrap_or(b.max).min(b.max),
        };
        self.backoff = Some(backoff);
        RestartDecision::Restart {
            after: jittered(backoff, b.factor, jitter),
        }
    }

    fn failure_rate(
        &mut self,
        max_failures: u32,
        interval: Duration,
        delay: Duration,
        now: Instant,
    ) -> RestartDecision {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= interval)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let allowed = usize::try_from(max_failures).unwrap_or(usize::MAX);
        if self.failures.len() > allowed {
            return RestartDecision::GiveUp(GiveUpReason::FailureRateExceeded {
                failures: self.failures.len(),
                max: max_failures,
                interval,
            });
        }
        RestartDecision::Restart { after: delay }
    }
}

/// `exponential-delay`'s settings, unpacked.
struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    factor: f64,
    reset_threshold: Duration,
    attempts: Option<u32>,
}

/// `d · factor`, or `None` when that is not a duration (overflow, NaN, negative).
fn scale(d: Duration, factor: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).ok()
}

/// `backoff` moved by up to `± factor · backoff`: `jitter` 0 gives the low end, 0.5 the
/// backoff itself, towards 1 the high end.
fn jittered(backoff: Duration, factor: f64, jitter: f64) -> Duration {
    let factor = if factor.is_finite() {
        factor.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    scale(backoff, 1.0 + factor * (2.0 * jitter - 1.0)).unwrap_or(backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn restart(after: Duration) -> RestartDecision {
        RestartDecision::Restart { after }
    }

    fn exponential(attempts: Option<u32>, jitter: f64) -> RestartTracker {
        RestartTracker::new(RestartStrategy::ExponentialDelay {
            initial: SECOND,
            max: 10 * SECOND,
            multiplier: 2.0,
            jitter,
            reset_threshold: 60 * SECOND,
            attempts,
        })
    }

    /// Fails at `t`, `t + 1s`, … and returns the delays (no jitter offset).
    fn delays(tracker: &mut RestartTracker, t0: Instant, n: u32) -> Vec<RestartDecision> {
        (0..n)
            .map(|i| tracker.on_failure(t0 + i * SECOND, 0.5))
            .collect()
    }

    #[test]
    fn the_none_strategy_never_restarts() {
        let mut t = RestartTracker::new(RestartStrategy::None);
        assert_eq!(
            t.on_failure(Instant::now(), 0.5),
            RestartDecision::GiveUp(GiveUpReason::NoRestarts)
        );
    }

    #[test]
    fn fixed_delay_restarts_up_to_its_attempts_with_its_delay() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 2,
            delay: 3 * SECOND,
        });
        let t0 = Instant::now();
        assert_eq!(t.on_failure(t0, 0.0), restart(3 * SECOND));
        assert_eq!(t.on_failure(t0 + 100 * SECOND, 0.9), restart(3 * SECOND));
        assert_eq!(
            t.on_failure(t0 + 1000 * SECOND, 0.5),
            RestartDecision::GiveUp(GiveUpReason::AttemptsExhausted { attempts: 2 })
        );
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn fixed_delay_with_zero_attempts_gives_up_at_once() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 0,
            delay: SECOND,
        });
        assert!(matches!(
            t.on_failure(Instant::now(), 0.5),
            RestartDecision::GiveUp(_)
        ));
    }

    #[test]
    fn exponential_delay_starts_at_initial_and_doubles_up_to_max() {
        let mut t = exponential(None, 0.0);
        let got = delays(&mut t, Instant::now(), 6);
        let want: Vec<_> = [1, 2, 4, 8, 10, 10]
            .into_iter()
            .map(|s| restart(s * SECOND))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn exponential_delay_resets_after_running_longer_than_the_threshold() {
        let mut t = exponential(None, 0.0);
        let t0 = Instant::now();
        let _ = delays(&mut t, t0, 3);
        // The last wait was 4 s from t0 + 2 s; the job then ran for 60 s.
        assert_eq!(t.on_failure(t0 + 66 * SECOND, 0.5), restart(SECOND));
    }

    #[test]
    fn exponential_delay_keeps_growing_when_the_job_ran_shorter_than_the_threshold() {
        let mut t = exponential(None, 0.0);
        let t0 = Instant::now();
        let _ = delays(&mut t, t0, 3);
        assert_eq!(t.on_failure(t0 + 65 * SECOND, 0.5), restart(8 * SECOND));
    }

    #[test]
    fn exponential_delay_jitters_by_at_most_the_jitter_factor() {
        let t0 = Instant::now();
        let low = exponential(None, 0.1).on_failure(t0, 0.0);
        let middle = exponential(None, 0.1).on_failure(t0, 0.5);
        let high = exponential(None, 0.1).on_failure(t0, 0.999_999);
        assert_eq!(low, restart(Duration::from_millis(900)));
        assert_eq!(middle, restart(SECOND));
        let RestartDecision::Restart { after } = high else {
            panic!("expected a restart");
        };
        assert!(after > Duration::from_millis(1099) && after <= Duration::from_millis(1100));
    }

    #[test]
    fn exponential_delay_clamps_a_jitter_argument_outside_zero_to_one() {
        let t0 = Instant::now();
        assert_eq!(
            exponential(None, 0.5).on_failure(t0, -3.0),
            restart(Duration::from_millis(500))
        );
        assert_eq!(
            exponential(None, 0.5).on_failure(t0, f64::NAN),
            restart(SECOND)
        );
    }

    #[test]
    fn exponential_delay_grows_the_backoff_before_jitter_not_after() {
        let mut t = exponential(None, 0.5);
        let t0 = Instant::now();
        let _ = t.on_failure(t0, 0.0);
        assert_eq!(t.on_failure(t0 + SECOND, 0.5), restart(2 * SECOND));
    }

    #[test]
    fn exponential_delay_gives_up_after_its_attempts() {
        let mut t = exponential(Some(2), 0.0);
        let t0 = Instant::now();
        let got = delays(&mut t, t0, 3);
        assert_eq!(got[..2], [restart(SECOND), restart(2 * SECOND)]);
        assert_eq!(
            got[2],
            RestartDecision::GiveUp(GiveUpReason::AttemptsExhausted { attempts: 2 })
        );
    }

    #[test]
    fn exponential_delay_attempts_start_over_after_a_reset() {
        let mut t = exponential(Some(2), 0.0);
        let t0 = Instant::now();
        let _ = delays(&mut t, t0, 2);
        assert_eq!(t.on_failure(t0 + 100 * SECOND, 0.5), restart(SECOND));
        assert_eq!(t.restarts(), 1);
    }

    #[test]
    fn exponential_delay_survives_an_absurd_multiplier() {
        let mut t = RestartTracker::new(RestartStrategy::ExponentialDelay {
            initial: SECOND,
            max: 10 * SECOND,
            multiplier: f64::MAX,
            jitter: 0.0,
            reset_threshold: 60 * SECOND,
            attempts: None,
        });
        let got = delays(&mut t, Instant::now(), 3);
        assert_eq!(got[1..], [restart(10 * SECOND), restart(10 * SECOND)]);
    }

    fn failure_rate() -> RestartTracker {
        RestartTracker::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: 60 * SECOND,
            delay: 5 * SECOND,
        })
    }

    #[test]
    fn failure_rate_restarts_after_its_delay_while_under_the_rate() {
        let mut t = failure_rate();
        let t0 = Instant::now();
        assert_eq!(t.on_failure(t0, 0.5), restart(5 * SECOND));
        assert_eq!(t.on_failure(t0 + 30 * SECOND, 0.5), restart(5 * SECOND));
    }

    #[test]
    fn failure_rate_gives_up_when_more_than_max_failures_fall_in_the_interval() {
        let mut t = failure_rate();
        let t0 = Instant::now();
        let _ = t.on_failure(t0, 0.5);
        let _ = t.on_failure(t0 + 30 * SECOND, 0.5);
        assert_eq!(
            t.on_failure(t0 + 59 * SECOND, 0.5),
            RestartDecision::GiveUp(GiveUpReason::FailureRateExceeded {
                failures: 3,
                max: 2,
                interval: 60 * SECOND
            })
        );
    }

    #[test]
    fn failure_rate_forgets_failures_that_left_the_sliding_window() {
        let mut t = failure_rate();
        let t0 = Instant::now();
        let _ = t.on_failure(t0, 0.5);
        let _ = t.on_failure(t0 + 30 * SECOND, 0.5);
        assert_eq!(t.on_failure(t0 + 60 * SECOND, 0.5), restart(5 * SECOND));
        assert!(matches!(
            t.on_failure(t0 + 61 * SECOND, 0.5),
            RestartDecision::GiveUp(_)
        ));
    }

    #[test]
    fn the_give_up_reason_says_what_ran_out() {
        let message = GiveUpReason::FailureRateExceeded {
            failures: 3,
            max: 2,
            interval: 60 * SECOND,
        }
        .to_string();
        assert!(
            message.contains("max-failures-per-interval = 2"),
            "{message}"
        );
    }
}
