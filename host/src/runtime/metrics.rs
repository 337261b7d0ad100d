//! What the runtime counts while a job runs, per subtask: records in and out, and where
//! the subtask's thread spends its time (Flink's busy, idle and back-pressured time).
//!
//! Counting costs a relaxed atomic add per batch. Time is measured only where a thread
//! waits: an input gate with nothing to read is idle, an output whose channel is full is
//! back-pressured, and the rest of the wall time is busy. The fast paths (a batch ready,
//! a channel with room) read no clock.
//!
//! Chained operators share their thread, so they share its [`TaskTimes`], as the
//! operators of one Flink task do; records are counted per member.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a subtask's thread is doing now, as its stack dump shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Activity {
    /// Processing: in the operator, the guest, the state backend or the runtime.
    Busy,
    /// Waiting for input (or, for a source, for its next poll or a control message).
    Idle,
    /// Waiting for room in a full output channel: its consumer is slower.
    BackPressured,
    /// The thread has ended.
    Finished,
}

impl Activity {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Idle,
            2 => Self::BackPressured,
            3 => Self::Finished,
            _ => Self::Busy,
        }
    }
}

/// Where one subtask thread's wall time went, since it started.
#[derive(Debug)]
pub struct TaskTimes {
    started: Instant,
    idle_ns: AtomicU64,
    back_pressured_ns: AtomicU64,
    activity: AtomicU8,
    /// Set when the thread ended, in nanoseconds after `started`: its clock stops.
    ended_ns: AtomicU64,
}

impl Default for TaskTimes {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            idle_ns: AtomicU64::new(0),
            back_pressured_ns: AtomicU64::new(0),
            activity: AtomicU8::new(Activity::Busy as u8),
            ended_ns: AtomicU64::new(u64::MAX),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Times of one thread, added up: what [`TaskTimes::read`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeTotals {
    /// Wall time since the thread started (until it ended).
    pub total: Duration,
    /// Of that, waiting for input.
    pub idle: Duration,
    /// Of that, waiting for room downstream.
    pub back_pressured: Duration,
}

impl TimeTotals {
    /// The rest: processing.
    pub fn busy(&self) -> Duration {
        self.total
            .saturating_sub(self.idle)
            .saturating_sub(self.back_pressured)
    }
}

impl TaskTimes {
    /// Runs `wait` as time of `activity` (idle or back-pressured).
    pub(crate) fn waiting<T>(&self, activity: Activity, wait: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        self.activity.store(activity as u8, Ordering::Relaxed);
        let result = wait();
        let spent = nanos(start.elapsed());
        self.activity.store(Activity::Busy as u8, Ordering::Relaxed);
        let counter = match activity {
            Activity::BackPressured => &self.back_pressured_ns,
            _ => &self.idle_ns,
        };
        counter.fetch_add(spent, Ordering::Relaxed);
        result
    }

    /// The thread has ended: its clock stops.
    pub(crate) fn end(&self) {
        self.activity
            .store(Activity::Finished as u8, Ordering::Relaxed);
        self.ended_ns
            .store(nanos(self.started.elapsed()), Ordering::Relaxed);
    }

    /// What the thread does now.
    pub fn activity(&self) -> Activity {
        Activity::from_u8(self.activity.load(Ordering::Relaxed))
    }

    /// The totals so far.
    pub fn read(&self) -> TimeTotals {
        let ended = self.ended_ns.load(Ordering::Relaxed);
        let total = if ended == u64::MAX {
            self.started.elapsed()
        } else {
            Duration::from_nanos(ended)
        };
        TimeTotals {
            total,
            idle: Duration::from_nanos(self.idle_ns.load(Ordering::Relaxed)),
            back_pressured: Duration::from_nanos(self.back_pressured_ns.load(Ordering::Relaxed)),
        }
    }
}

/// The counters of one subtask of one node.
#[derive(Debug, Default)]
pub struct SubtaskMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    /// Fuel the guest burned in its calls (WASM operators only).
    fuel: AtomicU64,
    /// Records sent to the dead-letter file (WASM operators with `dead-letter`).
    dead_letters: AtomicU64,
    /// Its thread's times, shared with the members of its chain.
    pub times: Arc<TaskTimes>,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl SubtaskMetrics {
    /// Counters of a subtask whose thread keeps `times`.
    pub fn new(times: Arc<TaskTimes>) -> Self {
        Self {
            times,
            ..Self::default()
        }
    }
    pub(crate) fn add_in(&self, n: usize) {
        add(&self.records_in, n);
    }
    pub(crate) fn add_out(&self, n: usize) {
        add(&self.records_out, n);
    }
    /// Counts fuel a guest call burned.
    pub fn add_fuel(&self, fuel: u64) {
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
    }
    /// Counts a record sent to the dead-letter file.
    pub fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }
    /// Records the subtask received (Flink's `numRecordsIn`).
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }
    /// Records the subtask emitted (Flink's `numRecordsOut`).
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }
    /// Fuel its guest burned.
    pub fn fuel(&self) -> u64 {
        self.fuel.load(Ordering::Relaxed)
    }
    /// Records it dead-lettered.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }
}

/// The counters of every subtask of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    /// The node's id.
    pub id: String,
    /// Per subtask, by index.
    pub subtasks: Vec<Arc<SubtaskMetrics>>,
}

impl NodeMetrics {
    /// Records the node received, over its subtasks.
    pub fn records_in(&self) -> u64 {
        self.subtasks.iter().map(|s| s.records_in()).sum()
    }
    /// Records the node emitted, over its subtasks.
    pub fn records_out(&self) -> u64 {
        self.subtasks.iter().map(|s| s.records_out()).sum()
    }
}

/// Where a run publishes its counters for readers on other threads (the REST server):
/// each run of a job (a restart is a new run, with counters from zero, as Flink's new
/// task instances) replaces what the previous one published.
#[derive(Clone, Debug, Default)]
pub struct MetricsSlot(Arc<std::sync::RwLock<Option<RunMetrics>>>);

/// One run's counters, per node in graph order.
pub type RunMetrics = Arc<[Arc<NodeMetrics>]>;

impl MetricsSlot {
    pub(crate) fn publish(&self, nodes: RunMetrics) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(nodes);
        }
    }

    /// The counters of the current run, per node in graph order; `None` before the
    /// first run started.
    pub fn current(&self) -> Option<RunMetrics> {
        self.0.read().ok().and_then(|slot| slot.clone())
    }
}

/// Per-second rates of a thread's times between two readings, as Flink's
/// `busyTimeMsPerSecond`, `idleTimeMsPerSecond` and `backPressuredTimeMsPerSecond`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeRates {
    /// Milliseconds per second spent processing.
    pub busy: f64,
    /// Milliseconds per second spent waiting for input.
    pub idle: f64,
    /// Milliseconds per second spent waiting for room downstream.
    pub back_pressured: f64,
}

impl TimeRates {
    /// The rates between `earlier` and `later` readings of one thread; all zero when no
    /// time passed.
    pub fn between(earlier: TimeTotals, later: TimeTotals) -> Self {
        let span = later.total.saturating_sub(earlier.total).as_secs_f64();
        if span <= 0.0 {
            return Self::default();
        }
        let per_second = |a: Duration, b: Duration| {
            (b.saturating_sub(a).as_secs_f64() * 1000.0 / span).clamp(0.0, 1000.0)
        };
        Self {
            busy: per_second(earlier.busy(), later.busy()),
            idle: per_second(earlier.idle, later.idle),
            back_pressured: per_second(earlier.back_pressured, later.back_pressured),
        }
    }

    /// The share of time back-pressured, 0 to 1 (Flink's `backpressureRatio`).
    pub fn back_pressure_ratio(&self) -> f64 {
        self.back_pressured / 1000.0
    }

    /// The share of time busy, 0 to 1 (Flink's `busyRatio`).
    pub fn busy_ratio(&self) -> f64 {
        self.busy / 1000.0
    }

    /// The share of time idle, 0 to 1 (Flink's `idleRatio`).
    pub fn idle_ratio(&self) -> f64 {
        self.idle / 1000.0
    }
}

/// Flink's back-pressure levels of a ratio: `ok` up to 10 %, `low` up to 50 %, `high`
/// above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackPressureLevel {
    /// At most 10 % of the time back-pressured.
    Ok,
    /// At most 50 %.
    Low,
    /// More.
    High,
}

impl BackPressureLevel {
    /// The level of `ratio` (0 to 1), with Flink's thresholds.
    pub fn of(ratio: f64) -> Self {
        if ratio <= 0.10 {
            Self::Ok
        } else if ratio <= 0.5 {
            Self::Low
        } else {
            Self::High
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(total: u64, idle: u64, back_pressured: u64) -> TimeTotals {
        TimeTotals {
            total: Duration::from_millis(total),
            idle: Duration::from_millis(idle),
            back_pressured: Duration::from_millis(back_pressured),
        }
    }

    #[test]
    fn busy_time_is_what_is_left_of_the_wall_time() {
        assert_eq!(totals(1000, 300, 200).busy(), Duration::from_millis(500));
        assert_eq!(totals(100, 300, 200).busy(), Duration::ZERO);
    }

    #[test]
    fn rates_are_milliseconds_per_second_between_two_readings() {
        let rates = TimeRates::between(totals(1000, 100, 0), totals(3000, 500, 1000));
        assert!((rates.idle - 200.0).abs() < 1e-9);
        assert!((rates.back_pressured - 500.0).abs() < 1e-9);
        assert!((rates.busy - 300.0).abs() < 1e-9);
        assert!((rates.busy + rates.idle + rates.back_pressured - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn no_time_between_readings_gives_zero_rates() {
        let t = totals(1000, 100, 0);
        assert_eq!(TimeRates::between(t, t), TimeRates::default());
    }

    #[test]
    fn levels_follow_flinks_thresholds() {
        assert_eq!(BackPressureLevel::of(0.0), BackPressureLevel::Ok);
        assert_eq!(BackPressureLevel::of(0.10), BackPressureLevel::Ok);
        assert_eq!(BackPressureLevel::of(0.11), BackPressureLevel::Low);
        assert_eq!(BackPressureLevel::of(0.5), BackPressureLevel::Low);
        assert_eq!(BackPressureLevel::of(0.51), BackPressureLevel::High);
    }

    #[test]
    fn a_wait_counts_as_its_activity_and_the_thread_is_busy_after_it() {
        let times = TaskTimes::default();
        times.waiting(Activity::BackPressured, || {
            assert_eq!(times.activity(), Activity::BackPressured);
            std::thread::sleep(Duration::from_millis(5));
        });
        assert_eq!(times.activity(), Activity::Busy);
        let read = times.read();
        assert!(read.back_pressured >= Duration::from_millis(5));
        assert_eq!(read.idle, Duration::ZERO);
        times.end();
        assert_eq!(times.activity(), Activity::Finished);
        assert_eq!(
            times.read().total,
            times.read().total,
            "the clock stops at the end"
        );
    }
}
