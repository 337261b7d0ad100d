//! Flink's per-second time metrics (`busyTimeMsPerSecond`, `idleTimeMsPerSecond`,
//! `backPressuredTimeMsPerSecond`) over a sliding window: a reading of every subtask's
//! times each second, and the rates between the oldest reading in the window and now.

use crate::runtime::metrics::{MetricsSlot, NodeMetrics, TimeRates, TimeTotals};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the sampler reads the times.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Readings kept: the rates are over the last five seconds, as Flink's UI smooths them
/// over a few samples, so one slow batch does not flip a vertex to "high".
const WINDOW: usize = 5;

/// Every subtask's times at one moment, per node and subtask.
type Reading = Vec<Vec<TimeTotals>>;

/// The readings of the current run.
#[derive(Debug, Default)]
struct Window {
    /// The run the readings are of: a restart starts a new window.
    run: Option<Arc<[Arc<NodeMetrics>]>>,
    readings: VecDeque<Reading>,
}

/// The sliding window of readings, shared by the sampler and the handlers.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    slot: MetricsSlot,
    window: Arc<Mutex<Window>>,
}

fn read(nodes: &[Arc<NodeMetrics>]) -> Reading {
    nodes
        .iter()
        .map(|n| n.subtasks.iter().map(|s| s.times.read()).collect())
        .collect()
}

impl Rates {
    /// Rates of the runs published in `slot`.
    pub fn new(slot: MetricsSlot) -> Self {
        Self {
            slot,
            window: Arc::default(),
        }
    }

    /// Takes a reading; called every [`SAMPLE_EVERY`].
    pub fn sample(&self) {
        let Some(run) = self.slot.current() else {
            return;
        };
        let reading = read(&run);
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        if !window.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, &run)) {
            window.run = Some(run);
            window.readings.clear();
        }
        window.readings.push_back(reading);
        if window.readings.len() > WINDOW {
            window.readings.pop_front();
        }
    }

    /// Per node and subtask: the rates over the window, up to now. Before the first
    /// reading, the rates since the subtask started.
    pub fn current(&self) -> Vec<Vec<TimeRates>> {
        let Some(run) = self.slot.current() else {
            return Vec::new();
        };
        let now = read(&run);
        let oldest = self.window.lock().ok().and_then(|w| {
            w.run
                .as_ref()
                .filter(|r| Arc::ptr_eq(r, &run))
                .and_then(|_| w.readings.front().cloned())
        });
        now.iter()
            .enumerate()
            .map(|(n, subtasks)| {
                subtasks
                    .iter()
                    .enumerate()
                    .map(|(s, later)| {
                        let earlier = oldest
                            .as_ref()
                            .and_then(|o| o.get(n)?.get(s).copied())
                            .unwrap_or_default();
                        TimeRates::between(earlier, *later)
                    })
                    .collect()
            })
            .collect()
    }
}
