//! Pacing to a number of records per second.

use std::time::{Duration, Instant};

/// Paces a stream to `rate` records per second; a rate of 0 means unpaced.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    started: Option<Instant>,
    count: u64,
}

impl Pacer {
    /// A pacer for `rate` records per second.
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            started: None,
            count: 0,
        }
    }

    /// How many records may go now, at most `max`.
    pub fn allowance(&mut self, max: usize) -> usize {
        if self.rate == 0 {
            return max;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = started.elapsed().as_secs_f64() * self.rate as f64;
        let allowed = (due as u64)
            .saturating_sub(self.count)
            .max(u64::from(self.count == 0));
        usize::try_from(allowed).unwrap_or(usize::MAX).min(max)
    }

    /// Counts `n` records as gone.
    pub fn record(&mut self, n: usize) {
        self.started.get_or_insert_with(Instant::now);
        self.count += u64::try_from(n).unwrap_or(u64::MAX);
    }

    /// When the next record is due.
    pub fn next_due(&self) -> Instant {
        let started = self.started.unwrap_or_else(Instant::now);
        if self.rate == 0 {
            return started;
        }
        started + Duration::from_secs_f64((self.count + 1) as f64 / self.rate as f64)
    }

    /// Sleeps until the records counted so far are due (for sinks, which pace by
    /// blocking).
    pub fn wait(&self) {
        if self.rate == 0 {
            return;
        }
        let due = self.next_due() - Duration::from_secs_f64(1.0 / self.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpaced_stream_gets_everything_at_once() {
        let mut p = Pacer::new(0);
        assert_eq!(p.allowance(1000), 1000);
    }

    #[test]
    fn a_paced_stream_starts_with_one_record() {
        let mut p = Pacer::new(10);
        assert_eq!(p.allowance(1000), 1);
        p.record(1);
        assert!(p.next_due() > Instant::now());
    }
}
