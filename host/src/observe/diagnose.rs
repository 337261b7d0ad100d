//! `weir checkpoints diagnose`: what the checkpoint troubleshooting guides tell a person
//! to do with a slow checkpoint, done for them.
//!
//! The guides' method: find the bottleneck, the operator and subtask that took longest
//! to checkpoint and the stage where it spent that time, because each stage points at a
//! different cause:
//!
//! - **start delay** (trigger to barrier): the barrier queued behind in-flight records,
//!   so the job is back-pressured upstream of that operator, or an operator is busy;
//! - **alignment** (first barrier to last): one input of that operator is slow, or the
//!   load is skewed across its upstream subtasks;
//! - **sync** (the blocking phase): the guest's `snapshot-state` or the state backend's
//!   synchronous phase;
//! - **async** (the upload): a large state or slow storage.
//!
//! Beside the stages, a subtask holding far more state than its operator's other
//! subtasks means key skew (a hot key, or keys that crowd a few key groups), whatever
//! the slowest stage is.
//!
//! [`diagnose`] is a pure function from a checkpoint's [`CheckpointMetadata`] to a
//! [`Diagnosis`], plain data that `weir checkpoints diagnose` renders with
//! [`diagnosis_text`] and that serialises (camelCase, as Flink's metric names) for the
//! REST API. Durations serialise as fractional milliseconds, as Flink's REST API counts
//! them; sizes in bytes. Finished subtasks have no statistics and take no part.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::stats::{flink_name, grouped, human_duration, human_size, is_finished, utc_time};
use crate::checkpoint::coordinator::SubtaskStats;
use crate::checkpoint::metadata::{CheckpointMetadata, TaskEntry};
use crate::runtime::{CheckpointId, SubtaskIndex};

/// A stage shorter than this is not a finding: a person would not notice it, and a
/// local checkpoint of a small state spends a few milliseconds per stage anyway.
pub const NOTABLE_STAGE: Duration = Duration::from_millis(100);

/// A subtask with at least this many times the median state of its operator's subtasks
/// is skewed. Twice is where one subtask clearly carries its share and another's.
pub const SKEW_FACTOR: u64 = 2;

/// Below this much state, a subtask is not called skewed however its peers compare: a
/// MiB writes in milliseconds and fits any heap, so the imbalance costs nothing yet.
pub const SKEW_MIN_STATE: u64 = 1 << 20;

/// What [`diagnose`] found in one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// The job's name.
    pub job: String,
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The state backend that took it ("heap" or "rocksdb").
    pub backend: String,
    /// When it was triggered, in milliseconds since the Unix epoch.
    pub trigger_timestamp: i64,
    /// From the trigger to the last acknowledgement; `None` when the wall clock went back
    /// in between, so the figure means nothing.
    #[serde(serialize_with = "optional_millis")]
    pub end_to_end_duration: Option<Duration>,
    /// Bytes of state over all subtasks.
    pub state_size: u64,
    /// Subtasks in the checkpoint, finished ones included.
    pub num_subtasks: usize,
    /// Of those, subtasks that had finished and took part only as "finished".
    pub num_finished_subtasks: usize,
    /// The longest stage of any running subtask: the checkpoint's bottleneck, notable or
    /// not. `None` when every subtask had finished.
    pub slowest: Option<StageTime>,
    /// What stands out, most important first: the stages of at least
    /// [`NOTABLE_STAGE`] (the slowest subtask of each, longest first), then skewed
    /// subtasks (most state first). Empty for a fast, even checkpoint.
    pub findings: Vec<Finding>,
}

/// One subtask, as Flink names it: `count (1/4)` is `{node: "count", subtask: 0,
/// parallelism: 4}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskRef {
    /// The node's id in the job file.
    pub node: String,
    /// Which subtask, from 0.
    pub subtask: SubtaskIndex,
    /// The node's parallelism when the checkpoint was taken.
    pub parallelism: u32,
}

impl SubtaskRef {
    fn of(task: &TaskEntry) -> Self {
        Self {
            node: task.node.clone(),
            subtask: SubtaskIndex(task.subtask),
            parallelism: task.parallelism,
        }
    }
}

impl fmt::Display for SubtaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&flink_name(&self.node, self.subtask.0, self.parallelism))
    }
}

/// A stage of a subtask's checkpoint, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// From the trigger until the subtask's first barrier (or, at a source, the trigger
    /// message) reached it.
    StartDelay,
    /// From the first barrier to the last, over the subtask's inputs.
    Alignment,
    /// The synchronous phase: the guest's `snapshot-state` and the backend's snapshot.
    Sync,
    /// The asynchronous phase: encoding and writing the state to storage.
    Async,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 4] = [
        Stage::StartDelay,
        Stage::Alignment,
        Stage::Sync,
        Stage::Async,
    ];

    /// How long `stats`' subtask spent in this stage.
    pub fn of(self, stats: &SubtaskStats) -> Duration {
        match self {
            Stage::StartDelay => stats.start_delay,
            Stage::Alignment => stats.alignment_duration,
            Stage::Sync => stats.sync_duration,
            Stage::Async => stats.async_duration,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::StartDelay => "start delay",
            Stage::Alignment => "alignment",
            Stage::Sync => "sync phase",
            Stage::Async => "async phase",
        })
    }
}

/// The slowest subtask of one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageTime {
    /// The stage.
    pub stage: Stage,
    /// The subtask that spent longest in it; of several that tie, the first in the job's
    /// order (the head of a chain, whose members share a start delay).
    pub subtask: SubtaskRef,
    /// How long it spent in the stage.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// That subtask's end-to-end duration, from the trigger to its acknowledgement.
    #[serde(serialize_with = "millis")]
    pub end_to_end_duration: Duration,
    /// The other subtasks that spent exactly as long in the stage, in the job's order.
    pub tied_with: Vec<SubtaskRef>,
}

/// One thing that stands out in a checkpoint, with the figures that show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Finding {
    /// A long start delay: backpressure upstream of the subtask.
    StartDelay {
        /// The subtask with the longest start delay.
        slowest: StageTime,
        /// The longest start delay of each node's running subtasks, in the job's order:
        /// where it jumps, barriers queued.
        by_node: Vec<NodeStartDelay>,
    },
    /// A long alignment: one slow input of the subtask, or skew upstream.
    Alignment {
        /// The subtask with the longest alignment.
        slowest: StageTime,
        /// Its start delay: when its first barrier arrived.
        #[serde(serialize_with = "millis")]
        start_delay: Duration,
        /// Bytes it processed from the inputs still without a barrier.
        processed_in_flight: u64,
    },
    /// A long synchronous phase: the guest's `snapshot-state` or the backend's sync phase.
    Sync {
        /// The subtask with the longest synchronous phase.
        slowest: StageTime,
        /// Fuel its guest spent in the phase, when fuel metering is on.
        sync_fuel: Option<u64>,
        /// The state backend whose snapshot is part of the phase.
        backend: String,
    },
    /// A long asynchronous phase: a large state or slow storage.
    Async {
        /// The subtask with the longest asynchronous phase.
        slowest: StageTime,
        /// Its whole state in this checkpoint, in bytes.
        state_size: u64,
        /// The bytes it wrote for this checkpoint (less than the state when incremental).
        checkpointed_size: u64,
        /// `checkpointed_size` over the asynchronous phase: the storage's throughput as
        /// this subtask saw it. `None` when the phase took no measurable time.
        bytes_per_second: Option<u64>,
    },
    /// A subtask with far more state than its operator's other subtasks: key skew.
    KeySkew {
        /// The skewed subtask.
        subtask: SubtaskRef,
        /// Its state, in bytes.
        state_size: u64,
        /// The median state of its operator's running subtasks (the lower of the middle
        /// two for an even count, so that with two subtasks it is the smaller one).
        median_state_size: u64,
        /// How many running subtasks the median is over.
        num_subtasks: usize,
    },
}

/// The longest start delay of one node's subtasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStartDelay {
    /// The node's id in the job file.
    pub node: String,
    /// The longest start delay of its running subtasks.
    #[serde(serialize_with = "millis")]
    pub start_delay: Duration,
}

/// A duration as fractional milliseconds.
fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Nanoseconds over 10^6, one rounding: 250.5 ms stays 250.5. A display figure: the
    // precision lost above 2^53 ns (104 days) does not matter.
    #[allow(clippy::cast_precision_loss)]
    let ms = d.as_nanos() as f64 / 1e6;
    s.serialize_f64(ms)
}

fn optional_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// What stands out in `metadata`'s checkpoint: its slowest subtask and stage, the stages
/// of at least [`NOTABLE_STAGE`] and the skewed subtasks. Pure.
pub fn diagnose(metadata: &CheckpointMetadata) -> Diagnosis {
    let running: Vec<&TaskEntry> = metadata.tasks.iter().filter(|t| !is_finished(t)).collect();
    let per_stage: Vec<(StageTime, &TaskEntry)> = Stage::ALL
        .iter()
        .filter_map(|&stage| slowest_of(stage, &running))
        .collect();
    // The longest of all; of stages that tie, the earliest.
    let slowest = per_stage
        .iter()
        .rev()
        .max_by_key(|(time, _)| time.duration)
        .map(|(time, _)| time.clone());

    let mut notable: Vec<(StageTime, &TaskEntry)> = per_stage
        .into_iter()
        .filter(|(time, _)| time.duration >= NOTABLE_STAGE)
        .collect();
    // Stable: of stages that tie, the earliest first.
    notable.sort_by_key(|(time, _)| std::cmp::Reverse(time.duration));
    let mut findings: Vec<Finding> = notable
        .into_iter()
        .map(|(time, task)| stage_finding(time, &task.stats, &metadata.backend, &running))
        .collect();
    findings.extend(skewed(&running));

    Diagnosis {
        job: metadata.job.clone(),
        checkpoint: CheckpointId(metadata.checkpoint),
        backend: metadata.backend.clone(),
        trigger_timestamp: metadata.triggered_at_ms,
        end_to_end_duration: u64::try_from(metadata.end_to_end_ms())
            .ok()
            .map(Duration::from_millis),
        state_size: metadata.state_size(),
        num_subtasks: metadata.tasks.len(),
        num_finished_subtasks: metadata.tasks.len() - running.len(),
        slowest,
        findings,
    }
}

/// The subtask of `running` that spent longest in `stage` (the first of those that tie,
/// the others named), and its entry.
fn slowest_of<'a>(stage: Stage, running: &[&'a TaskEntry]) -> Option<(StageTime, &'a TaskEntry)> {
    let longest = running.iter().map(|t| stage.of(&t.stats)).max()?;
    let mut tied = running
        .iter()
        .copied()
        .filter(|t| stage.of(&t.stats) == longest);
    let first = tied.next()?;
    let time = StageTime {
        stage,
        subtask: SubtaskRef::of(first),
        duration: longest,
        end_to_end_duration: first.stats.end_to_end,
        tied_with: tied.map(SubtaskRef::of).collect(),
    };
    Some((time, first))
}

/// The finding a notable stage makes, with the figures behind it: `stats` are the
/// slowest subtask's, `backend` the checkpoint's.
fn stage_finding(
    time: StageTime,
    stats: &SubtaskStats,
    backend: &str,
    running: &[&TaskEntry],
) -> Finding {
    match time.stage {
        Stage::StartDelay => Finding::StartDelay {
            slowest: time,
            by_node: start_delay_by_node(running),
        },
        Stage::Alignment => Finding::Alignment {
            slowest: time,
            start_delay: stats.start_delay,
            processed_in_flight: stats.processed_in_flight,
        },
        Stage::Sync => Finding::Sync {
            slowest: time,
            sync_fuel: stats.sync_fuel,
            backend: backend.to_owned(),
        },
        Stage::Async => {
            let seconds = stats.async_duration.as_secs_f64();
            // A display figure: the precision lost above 2^53 bytes does not show.
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let bytes_per_second =
                (seconds > 0.0).then(|| (stats.checkpointed_size as f64 / seconds) as u64);
            Finding::Async {
                slowest: time,
                state_size: stats.state_size,
                checkpointed_size: stats.checkpointed_size,
                bytes_per_second,
            }
        }
    }
}

/// The longest start delay of each node's running subtasks, in the order nodes first
/// appear.
fn start_delay_by_node(running: &[&TaskEntry]) -> Vec<NodeStartDelay> {
    let mut nodes: Vec<NodeStartDelay> = Vec::new();
    for task in running {
        match nodes.iter_mut().find(|n| n.node == task.node) {
            Some(node) => node.start_delay = node.start_delay.max(task.stats.start_delay),
            None => nodes.push(NodeStartDelay {
                node: task.node.clone(),
                start_delay: task.stats.start_delay,
            }),
        }
    }
    nodes
}

/// The subtasks with at least [`SKEW_MIN_STATE`] and [`SKEW_FACTOR`] times the median
/// state of their node's running subtasks, most state first.
fn skewed(running: &[&TaskEntry]) -> Vec<Finding> {
    let mut nodes: Vec<&str> = Vec::new();
    for task in running {
        if !nodes.contains(&task.node.as_str()) {
            nodes.push(&task.node);
        }
    }
    let mut found: Vec<(u64, Finding)> = Vec::new();
    for node in nodes {
        let subtasks: Vec<&TaskEntry> =
            running.iter().copied().filter(|t| t.node == node).collect();
        if subtasks.len() < 2 {
            continue;
        }
        let mut sizes: Vec<u64> = subtasks.iter().map(|t| t.stats.state_size).collect();
        sizes.sort_unstable();
        let median = sizes[(sizes.len() - 1) / 2];
        for task in &subtasks {
            let size = task.stats.state_size;
            if size >= SKEW_MIN_STATE && size >= median.saturating_mul(SKEW_FACTOR) {
                found.push((
                    size,
                    Finding::KeySkew {
                        subtask: SubtaskRef::of(task),
                        state_size: size,
                        median_state_size: median,
                        num_subtasks: subtasks.len(),
                    },
                ));
            }
        }
    }
    // Stable: of equal sizes, the first in the job's order first.
    found.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    found.into_iter().map(|(_, finding)| finding).collect()
}

/// The text of `weir checkpoints diagnose`: the checkpoint's header, its slowest stage,
/// then every finding with its figures and what it points to, most important first.
///
/// ```text
/// checkpoint 3 of job sync, triggered 2026-12-01 14:53:31.610 UTC
/// end-to-end 544ms, state size 226 B, 3 subtasks
/// slowest: the sync phase of hostile (1/1), 539ms
///
/// 1. Sync phase: hostile (1/1) spent 539ms in its synchronous phase (of its 544ms
///    end to end), with 1,225,001,563 fuel in the guest.
///    The synchronous phase is the guest's `snapshot-state` and the heap backend's
///    snapshot, and the subtask processes nothing meanwhile. ...
/// ```
pub fn diagnosis_text(d: &Diagnosis) -> String {
    let mut out = format!(
        "checkpoint {} of job {}, triggered {} UTC\nend-to-end {}, state size {}, {}\n",
        d.checkpoint,
        d.job,
        utc_time(d.trigger_timestamp),
        d.end_to_end_duration
            .map_or_else(|| "-".to_owned(), human_duration),
        human_size(d.state_size),
        subtasks(d.num_subtasks, d.num_finished_subtasks),
    );
    let Some(slowest) = &d.slowest else {
        out.push_str(
            "\nNothing to diagnose: every subtask had finished before this checkpoint, so none \
             reported how its stages went.\n",
        );
        return out;
    };
    out.push_str(&format!(
        "slowest: the {} of {}{}, {}\n\n",
        slowest.stage,
        slowest.subtask,
        ties(&slowest.tied_with),
        human_duration(slowest.duration)
    ));
    let stage_findings = d
        .findings
        .iter()
        .filter(|f| !matches!(f, Finding::KeySkew { .. }))
        .count();
    if stage_findings == 0 {
        let sentence = format!(
            "{}: no stage took {} or more; the longest was the {} of {}, {}.",
            if d.findings.is_empty() {
                "Nothing stands out"
            } else {
                "No stage stands out"
            },
            human_duration(NOTABLE_STAGE),
            slowest.stage,
            slowest.subtask,
            human_duration(slowest.duration)
        );
        out.push_str(&wrapped(&sentence, "", "", WRAP));
        if !d.findings.is_empty() {
            out.push('\n');
        }
    }
    for (i, finding) in d.findings.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let (headline, explanation) = finding_text(finding);
        out.push_str(&wrapped(&headline, &format!("{}. ", i + 1), INDENT, WRAP));
        for paragraph in explanation {
            out.push_str(&wrapped(&paragraph, INDENT, INDENT, WRAP));
        }
    }
    out
}

/// "5 subtasks" or "5 subtasks (2 finished)".
fn subtasks(all: usize, finished: usize) -> String {
    let noun = if all == 1 { "subtask" } else { "subtasks" };
    if finished == 0 {
        format!("{all} {noun}")
    } else {
        format!("{all} {noun} ({finished} finished)")
    }
}

/// " (tied with out (1/2))", naming at most three, or nothing.
fn ties(tied: &[SubtaskRef]) -> String {
    const NAMED: usize = 3;
    if tied.is_empty() {
        return String::new();
    }
    let names: Vec<String> = tied.iter().take(NAMED).map(ToString::to_string).collect();
    let more = tied.len().saturating_sub(NAMED);
    if more == 0 {
        format!(" (tied with {})", names.join(", "))
    } else {
        format!(" (tied with {} and {more} more)", names.join(", "))
    }
}

/// " (of its 1.15s end to end)", when the subtask's end-to-end duration is known.
fn of_end_to_end(time: &StageTime) -> String {
    if time.end_to_end_duration.is_zero() {
        String::new()
    } else {
        format!(
            " (of its {} end to end)",
            human_duration(time.end_to_end_duration)
        )
    }
}

/// Where the text of `weir checkpoints diagnose` wraps, indent included: a terminal's
/// 80 columns.
const WRAP: usize = 80;

/// The indent of a finding's text under its number, `1. `.
const INDENT: &str = "   ";

/// `text` in lines of at most `width` characters (a longer word gets a line of its own),
/// the first after `first` and the others after `rest`.
fn wrapped(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    let mut prefix = first;
    for word in text.split_whitespace() {
        let fits = line.is_empty()
            || prefix.chars().count() + line.chars().count() + 1 + word.chars().count() <= width;
        if !fits {
            out.push_str(prefix);
            out.push_str(&line);
            out.push('\n');
            line.clear();
            prefix = rest;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(prefix);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A finding's headline with its figures, and the paragraphs that say what it points to.
fn finding_text(finding: &Finding) -> (String, Vec<String>) {
    match finding {
        Finding::StartDelay { slowest, by_node } => {
            let node = &slowest.subtask.node;
            let delays: Vec<String> = by_node
                .iter()
                .map(|n| format!("{} {}", n.node, human_duration(n.start_delay)))
                .collect();
            (
                format!(
                    "Start delay: the barrier reached {}{} {} after the trigger{}.",
                    slowest.subtask,
                    ties(&slowest.tied_with),
                    human_duration(slowest.duration),
                    of_end_to_end(slowest)
                ),
                vec![
                    format!(
                        "Backpressure upstream of {node}: the barrier queued behind in-flight \
                         records on its way there, so {node}, or a node between the sources \
                         and it, processes more slowly than its input arrives, or is \
                         constantly busy. Barriers queue before the node where the start \
                         delay jumps: make that node faster, or give it more parallelism."
                    ),
                    format!(
                        "Start delay by node (its slowest subtask): {}.",
                        delays.join(", ")
                    ),
                ],
            )
        }
        Finding::Alignment {
            slowest,
            start_delay,
            processed_in_flight,
        } => {
            let node = &slowest.subtask.node;
            (
                format!(
                    "Alignment: {}{} waited {} between its first barrier and its last{}.",
                    slowest.subtask,
                    ties(&slowest.tied_with),
                    human_duration(slowest.duration),
                    of_end_to_end(slowest)
                ),
                vec![format!(
                    "One input of {node} is slow, or the load is skewed across the subtasks \
                     that feed it: its first barrier came {} after the trigger, and while it \
                     waited for the others it processed {} from the inputs that had not \
                     delivered theirs. The start delays of the nodes upstream of {node} show \
                     which input lagged.",
                    human_duration(*start_delay),
                    human_size(*processed_in_flight)
                )],
            )
        }
        Finding::Sync {
            slowest,
            sync_fuel,
            backend,
        } => {
            let fuel = sync_fuel.map_or_else(String::new, |fuel| {
                format!(", with {} fuel in the guest", grouped(fuel))
            });
            (
                format!(
                    "Sync phase: {}{} spent {} in its synchronous phase{}{fuel}.",
                    slowest.subtask,
                    ties(&slowest.tied_with),
                    human_duration(slowest.duration),
                    of_end_to_end(slowest)
                ),
                vec![format!(
                    "The synchronous phase is the guest's `snapshot-state` and the {backend} \
                     backend's snapshot, and the subtask processes nothing meanwhile. Look at \
                     what `snapshot-state` computes (its fuel counts that) or waits for, or at \
                     the backend's sync phase. `sync-phase-timeout` and `sync-phase-fuel` in \
                     the job file bound it."
                )],
            )
        }
        Finding::Async {
            slowest,
            state_size,
            checkpointed_size,
            bytes_per_second,
        } => {
            let rate =
                bytes_per_second.map_or_else(String::new, |bps| format!(", {}/s", human_size(bps)));
            (
                format!(
                    "Async phase: {}{} spent {} writing its state{}: {} written{rate}, of {} of \
                     state.",
                    slowest.subtask,
                    ties(&slowest.tied_with),
                    human_duration(slowest.duration),
                    of_end_to_end(slowest),
                    human_size(*checkpointed_size),
                    human_size(*state_size)
                ),
                vec![
                    "The asynchronous phase writes the state to the checkpoint storage, so \
                     either the state is large (see how it grows with `weir checkpoints list`, \
                     and keep in keyed state only what the operator needs) or the storage's \
                     throughput is low."
                        .to_owned(),
                ],
            )
        }
        Finding::KeySkew {
            subtask,
            state_size,
            median_state_size,
            num_subtasks,
        } => {
            let node = &subtask.node;
            let compared = if *median_state_size == 0 {
                format!("while the median of {node}'s {num_subtasks} subtasks holds none")
            } else {
                // A display ratio: the precision lost above 2^53 bytes does not show.
                #[allow(clippy::cast_precision_loss)]
                let ratio = *state_size as f64 / *median_state_size as f64;
                let ratio = if ratio < 10.0 {
                    format!("{ratio:.1}")
                } else {
                    format!("{ratio:.0}")
                };
                format!(
                    "{ratio}× the median of {node}'s {num_subtasks} subtasks ({})",
                    human_size(*median_state_size)
                )
            };
            (
                format!(
                    "Key skew: {subtask} holds {} of state, {compared}.",
                    human_size(*state_size)
                ),
                vec![format!(
                    "Its keys are not spread evenly over {node}'s subtasks: a hot key, or keys \
                     that crowd a few key groups, put most of the state (and likely most of \
                     the load) on one subtask. More parallelism does not split a single hot \
                     key; a key that spreads it (salted, or finer-grained) does."
                )],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::{FORMAT_VERSION, TaskState};
    use crate::storage::FileHandle;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const MIB: u64 = 1 << 20;

    fn running(node: &str, subtask: u32, parallelism: u32, stats: SubtaskStats) -> TaskEntry {
        TaskEntry {
            node: node.into(),
            subtask,
            parallelism,
            state: TaskState::Parts(crate::checkpoint::snapshot::StateParts {
                file: Some(FileHandle {
                    path: format!("chk-7/{node}-{subtask}"),
                    size: stats.state_size,
                    checksum: 0,
                }),
                ..Default::default()
            }),
            channel_state: None,
            stats,
        }
    }

    fn finished(node: &str, subtask: u32, parallelism: u32, stats: SubtaskStats) -> TaskEntry {
        TaskEntry {
            state: TaskState::Finished,
            ..running(node, subtask, parallelism, stats)
        }
    }

    fn metadata(tasks: Vec<TaskEntry>) -> CheckpointMetadata {
        CheckpointMetadata {
            version: FORMAT_VERSION,
            job: "wc".into(),
            checkpoint: 7,
            kind: crate::checkpoint::metadata::SnapshotKind::Checkpoint,
            max_parallelism: 128,
            backend: "heap".into(),
            mode: "exactly-once".into(),
            // 2026-11-21 10:15:03.123 UTC
            triggered_at_ms: 1_795_256_103_123,
            completed_at_ms: 1_795_256_104_323,
            tasks,
        }
    }

    /// Stats with one stage at `d` and everything else quick.
    fn stage(stage: Stage, d: Duration) -> SubtaskStats {
        let mut stats = SubtaskStats {
            start_delay: ms(2),
            alignment_duration: Duration::ZERO,
            sync_duration: Duration::from_micros(300),
            async_duration: ms(3),
            state_size: 4096,
            checkpointed_size: 4096,
            ..SubtaskStats::default()
        };
        match stage {
            Stage::StartDelay => stats.start_delay = d,
            Stage::Alignment => stats.alignment_duration = d,
            Stage::Sync => stats.sync_duration = d,
            Stage::Async => stats.async_duration = d,
        }
        stats.end_to_end = stats.start_delay
            + stats.alignment_duration
            + stats.sync_duration
            + stats.async_duration
            + ms(1);
        stats
    }

    fn quick() -> SubtaskStats {
        stage(Stage::Async, ms(3))
    }

    /// A source, a keyed counter of parallelism 2 and a sink; `count (2/2)` has `stats`.
    fn pipeline(stats: SubtaskStats) -> CheckpointMetadata {
        metadata(vec![
            running("gen", 0, 1, quick()),
            running("count", 0, 2, quick()),
            running("count", 1, 2, stats),
            running("out", 0, 1, quick()),
        ])
    }

    fn count(subtask: u32) -> SubtaskRef {
        SubtaskRef {
            node: "count".into(),
            subtask: SubtaskIndex(subtask),
            parallelism: 2,
        }
    }

    /// The text with every run of whitespace as one space, for phrases that may wrap.
    fn flat(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn kinds(d: &Diagnosis) -> Vec<&'static str> {
        d.findings
            .iter()
            .map(|f| match f {
                Finding::StartDelay { .. } => "start delay",
                Finding::Alignment { .. } => "alignment",
                Finding::Sync { .. } => "sync",
                Finding::Async { .. } => "async",
                Finding::KeySkew { .. } => "key skew",
            })
            .collect()
    }

    #[test]
    fn a_long_start_delay_points_at_backpressure_upstream_of_its_subtask() {
        let d = diagnose(&pipeline(stage(Stage::StartDelay, ms(900))));
        assert_eq!(kinds(&d), ["start delay"]);
        let Finding::StartDelay { slowest, by_node } = &d.findings[0] else {
            unreachable!("checked above");
        };
        assert_eq!(
            (slowest.subtask.clone(), slowest.duration),
            (count(1), ms(900))
        );
        let delays: Vec<(&str, Duration)> = by_node
            .iter()
            .map(|n| (n.node.as_str(), n.start_delay))
            .collect();
        assert_eq!(delays, [("gen", ms(2)), ("count", ms(900)), ("out", ms(2))]);
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("1. Start delay: the barrier reached count (2/2) 900ms"),
            "{text}"
        );
        assert!(
            flat(&text).contains("Backpressure upstream of count"),
            "{text}"
        );
        assert!(
            flat(&text).contains("gen 2.00ms, count 900ms, out 2.00ms"),
            "{text}"
        );
    }

    #[test]
    fn a_long_alignment_points_at_a_slow_input_with_the_data_processed_meanwhile() {
        let mut stats = stage(Stage::Alignment, ms(400));
        stats.processed_in_flight = 3 * MIB;
        let d = diagnose(&pipeline(stats));
        assert_eq!(kinds(&d), ["alignment"]);
        let Finding::Alignment {
            slowest,
            start_delay,
            processed_in_flight,
        } = &d.findings[0]
        else {
            unreachable!("checked above");
        };
        assert_eq!(slowest.subtask, count(1));
        assert_eq!((*start_delay, *processed_in_flight), (ms(2), 3 * MIB));
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("Alignment: count (2/2) waited 400ms"),
            "{text}"
        );
        assert!(flat(&text).contains("One input of count is slow"), "{text}");
        assert!(flat(&text).contains("3.00 MiB"), "{text}");
    }

    #[test]
    fn a_long_sync_phase_points_at_snapshot_state_and_shows_its_fuel() {
        let mut stats = stage(Stage::Sync, ms(300));
        stats.sync_fuel = Some(123_456_789);
        let d = diagnose(&pipeline(stats));
        assert_eq!(kinds(&d), ["sync"]);
        assert_eq!(
            d.findings[0],
            Finding::Sync {
                slowest: StageTime {
                    stage: Stage::Sync,
                    subtask: count(1),
                    duration: ms(300),
                    end_to_end_duration: ms(306),
                    tied_with: Vec::new(),
                },
                sync_fuel: Some(123_456_789),
                backend: "heap".into(),
            }
        );
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("Sync phase: count (2/2) spent 300ms in its synchronous phase (of its 306ms end to end), with 123,456,789 fuel"),
            "{text}"
        );
        assert!(
            flat(&text).contains("`snapshot-state` and the heap backend's snapshot"),
            "{text}"
        );
    }

    #[test]
    fn a_sync_phase_without_fuel_metering_shows_no_fuel() {
        let d = diagnose(&pipeline(stage(Stage::Sync, ms(300))));
        let text = diagnosis_text(&d);
        assert!(!flat(&text).contains("fuel in the guest"), "{text}");
    }

    #[test]
    fn a_long_async_phase_points_at_state_size_or_storage_with_bytes_and_throughput() {
        let mut stats = stage(Stage::Async, ms(2_000));
        stats.state_size = 64 * MIB;
        stats.checkpointed_size = 16 * MIB;
        // Spread evenly, so that only the stage stands out.
        let mut peer = quick();
        peer.state_size = 64 * MIB;
        let d = diagnose(&metadata(vec![
            running("count", 0, 2, peer),
            running("count", 1, 2, stats),
        ]));
        assert_eq!(kinds(&d), ["async"]);
        let Finding::Async {
            state_size,
            checkpointed_size,
            bytes_per_second,
            ..
        } = &d.findings[0]
        else {
            unreachable!("checked above");
        };
        assert_eq!(
            (*state_size, *checkpointed_size, *bytes_per_second),
            (64 * MIB, 16 * MIB, Some(8 * MIB))
        );
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("16.0 MiB written, 8.00 MiB/s, of 64.0 MiB of state"),
            "{text}"
        );
    }

    #[test]
    fn a_subtask_with_far_more_state_than_its_peers_is_key_skew_whatever_the_slowest_stage() {
        let mut hot = stage(Stage::Sync, ms(250));
        hot.state_size = 10 * MIB;
        let mut cold = quick();
        cold.state_size = 2 * MIB;
        let d = diagnose(&metadata(vec![
            running("count", 0, 3, cold.clone()),
            running("count", 1, 3, hot),
            running("count", 2, 3, cold),
        ]));
        assert_eq!(kinds(&d), ["sync", "key skew"]);
        let skewed = SubtaskRef {
            node: "count".into(),
            subtask: SubtaskIndex(1),
            parallelism: 3,
        };
        assert_eq!(
            d.findings[1],
            Finding::KeySkew {
                subtask: skewed,
                state_size: 10 * MIB,
                median_state_size: 2 * MIB,
                num_subtasks: 3,
            }
        );
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("2. Key skew: count (2/3) holds 10.0 MiB of state, 5.0× the median of count's 3 subtasks (2.00 MiB)"),
            "{text}"
        );
    }

    #[test]
    fn with_two_subtasks_the_median_is_the_smaller_one() {
        let mut hot = quick();
        hot.state_size = 3 * MIB;
        let d = diagnose(&pipeline(hot));
        assert_eq!(kinds(&d), ["key skew"]);
        let Finding::KeySkew {
            median_state_size, ..
        } = &d.findings[0]
        else {
            unreachable!("checked above");
        };
        assert_eq!(*median_state_size, 4096);
    }

    #[test]
    fn a_hot_subtask_beside_empty_peers_is_compared_to_none() {
        let mut hot = quick();
        hot.state_size = 2 * MIB;
        let mut empty = quick();
        empty.state_size = 0;
        let d = diagnose(&metadata(vec![
            running("count", 0, 2, empty),
            running("count", 1, 2, hot),
        ]));
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains(
                "holds 2.00 MiB of state, while the median of count's 2 subtasks holds none"
            ),
            "{text}"
        );
    }

    #[test]
    fn less_than_twice_the_median_is_no_skew() {
        let sizes = [4 * MIB, 5 * MIB, 7 * MIB];
        let tasks = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let mut stats = quick();
                stats.state_size = size;
                running("count", u32::try_from(i).unwrap_or(0), 3, stats)
            })
            .collect();
        assert_eq!(kinds(&diagnose(&metadata(tasks))), Vec::<&str>::new());
    }

    #[test]
    fn a_small_state_is_no_skew_however_uneven() {
        let mut hot = quick();
        hot.state_size = 500_000;
        let mut cold = quick();
        cold.state_size = 10;
        let d = diagnose(&metadata(vec![
            running("count", 0, 2, cold),
            running("count", 1, 2, hot),
        ]));
        assert!(d.findings.is_empty(), "{d:?}");
    }

    #[test]
    fn a_single_subtask_has_no_peers_to_be_skewed_against() {
        let mut big = quick();
        big.state_size = 100 * MIB;
        let d = diagnose(&metadata(vec![
            running("gen", 0, 1, quick()),
            running("count", 0, 1, big),
        ]));
        assert!(d.findings.is_empty(), "{d:?}");
    }

    #[test]
    fn several_skewed_subtasks_are_listed_most_state_first() {
        let sized = |subtask, size| {
            let mut stats = quick();
            stats.state_size = size;
            running("count", subtask, 5, stats)
        };
        let d = diagnose(&metadata(vec![
            sized(0, 4 * MIB),
            sized(1, MIB),
            sized(2, MIB),
            sized(3, 9 * MIB),
            sized(4, MIB),
        ]));
        let skewed: Vec<u32> = d
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::KeySkew { subtask, .. } => Some(subtask.subtask.0),
                _ => None,
            })
            .collect();
        assert_eq!(skewed, [3, 0]);
    }

    #[test]
    fn a_fast_checkpoint_has_nothing_that_stands_out() {
        let d = diagnose(&pipeline(stage(Stage::Sync, ms(12))));
        assert!(d.findings.is_empty(), "{d:?}");
        let slowest = d.slowest.clone().expect("running subtasks");
        assert_eq!((slowest.stage, slowest.subtask), (Stage::Sync, count(1)));
        let text = diagnosis_text(&d);
        assert!(
            flat(&text).contains("Nothing stands out: no stage took 100ms or more; the longest was the sync phase of count (2/2), 12.0ms."),
            "{text}"
        );
        assert!(!flat(&text).contains("1. "), "{text}");
    }

    #[test]
    fn a_stage_of_exactly_the_threshold_stands_out() {
        let d = diagnose(&pipeline(stage(Stage::Sync, NOTABLE_STAGE)));
        assert_eq!(kinds(&d), ["sync"]);
    }

    #[test]
    fn skew_in_a_fast_checkpoint_says_no_stage_stands_out_and_lists_the_skew() {
        let mut hot = quick();
        hot.state_size = 8 * MIB;
        let text = diagnosis_text(&diagnose(&pipeline(hot)));
        assert!(flat(&text).contains("No stage stands out"), "{text}");
        assert!(flat(&text).contains("1. Key skew: count (2/2)"), "{text}");
    }

    #[test]
    fn several_slow_stages_are_listed_longest_first() {
        let mut stats = stage(Stage::Sync, ms(200));
        stats.async_duration = ms(700);
        let d = diagnose(&metadata(vec![
            running("gen", 0, 1, stage(Stage::StartDelay, ms(400))),
            running("count", 0, 1, stats),
        ]));
        assert_eq!(kinds(&d), ["async", "start delay", "sync"]);
        let slowest = d.slowest.expect("running subtasks");
        assert_eq!((slowest.stage, slowest.duration), (Stage::Async, ms(700)));
    }

    #[test]
    fn finished_subtasks_are_never_the_slowest_nor_counted_for_skew() {
        // What a finished subtask reported is not about this checkpoint.
        let mut stale = stage(Stage::Sync, ms(5_000));
        stale.state_size = 50 * MIB;
        let d = diagnose(&metadata(vec![
            running("count", 0, 3, quick()),
            running("count", 1, 3, quick()),
            finished("count", 2, 3, stale),
        ]));
        assert!(d.findings.is_empty(), "{d:?}");
        assert_eq!(d.slowest.as_ref().map(|s| s.duration), Some(ms(3)));
        assert_eq!((d.num_subtasks, d.num_finished_subtasks), (3, 1));
        let text = diagnosis_text(&d);
        assert!(flat(&text).contains("3 subtasks (1 finished)"), "{text}");
    }

    #[test]
    fn a_checkpoint_where_every_subtask_had_finished_has_nothing_to_diagnose() {
        let d = diagnose(&metadata(vec![
            finished("gen", 0, 1, SubtaskStats::default()),
            finished("out", 0, 1, SubtaskStats::default()),
        ]));
        assert_eq!((d.slowest.clone(), d.findings.len()), (None, 0));
        assert!(
            flat(&diagnosis_text(&d)).contains("Nothing to diagnose: every subtask had finished")
        );
    }

    #[test]
    fn subtasks_that_tie_name_the_first_in_the_jobs_order_and_the_others() {
        // A chain's members share their start delay.
        let delayed = stage(Stage::StartDelay, ms(600));
        let d = diagnose(&metadata(vec![
            running("count", 0, 2, quick()),
            running("count", 1, 2, delayed.clone()),
            running("out", 1, 2, delayed),
        ]));
        let slowest = d.slowest.clone().expect("running subtasks");
        assert_eq!(slowest.subtask, count(1));
        let out = SubtaskRef {
            node: "out".into(),
            subtask: SubtaskIndex(1),
            parallelism: 2,
        };
        assert_eq!(slowest.tied_with, [out]);
        let text = diagnosis_text(&d);
        assert!(
            flat(&text)
                .contains("slowest: the start delay of count (2/2) (tied with out (2/2)), 600ms"),
            "{text}"
        );
    }

    #[test]
    fn stages_that_tie_name_the_earliest_stage() {
        let mut stats = stage(Stage::Sync, ms(300));
        stats.start_delay = ms(300);
        let d = diagnose(&pipeline(stats));
        assert_eq!(d.slowest.as_ref().map(|s| s.stage), Some(Stage::StartDelay));
        assert_eq!(kinds(&d), ["start delay", "sync"]);
    }

    #[test]
    fn the_diagnosis_serialises_in_camel_case_with_milliseconds() {
        let mut stats = stage(Stage::Sync, Duration::from_micros(250_500));
        stats.sync_fuel = Some(42);
        let json = serde_json::to_value(diagnose(&pipeline(stats))).expect("serialises");
        assert_eq!(json["checkpoint"], 7);
        assert_eq!(json["endToEndDuration"], 1_200.0);
        assert_eq!(json["numFinishedSubtasks"], 0);
        assert_eq!(json["slowest"]["stage"], "sync");
        assert_eq!(json["slowest"]["subtask"]["node"], "count");
        assert_eq!(json["slowest"]["subtask"]["subtask"], 1);
        let finding = &json["findings"][0];
        assert_eq!(finding["kind"], "sync");
        assert_eq!(finding["syncFuel"], 42);
        assert_eq!(finding["slowest"]["duration"], 250.5);
        assert_eq!(finding["slowest"]["tiedWith"], serde_json::json!([]));
    }

    #[test]
    fn a_completion_before_the_trigger_has_no_end_to_end_duration() {
        let mut m = pipeline(quick());
        m.completed_at_ms = m.triggered_at_ms - 5;
        let d = diagnose(&m);
        assert_eq!(d.end_to_end_duration, None);
        assert!(diagnosis_text(&d).contains("end-to-end -,"));
        assert_eq!(
            serde_json::to_value(&d).expect("serialises")["endToEndDuration"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn findings_wrap_within_the_terminal_width_under_their_number() {
        let mut stats = stage(Stage::Alignment, ms(400));
        stats.sync_duration = ms(300);
        stats.async_duration = ms(200);
        stats.state_size = 80 * MIB;
        let text = diagnosis_text(&diagnose(&metadata(vec![
            running("a-node-with-a-rather-long-name", 0, 2, quick()),
            running("a-node-with-a-rather-long-name", 1, 2, stats),
        ])));
        assert!(text.lines().count() > 12, "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= WRAP, "{line:?} in\n{text}");
        }
        let under_a_number = text
            .lines()
            .skip_while(|l| !l.starts_with("1. "))
            .skip(1)
            .all(|l| l.is_empty() || l.starts_with(INDENT) || l.starts_with(char::is_numeric));
        assert!(under_a_number, "{text}");
        assert!(text.contains("\n1. Alignment: "), "{text}");
        assert_eq!(wrapped("", INDENT, INDENT, WRAP), "");
        assert_eq!(wrapped("a b c", "1. ", "   ", 5), "1. a\n   b\n   c\n");
    }

    #[test]
    fn the_header_names_the_checkpoint_and_its_totals() {
        let text = diagnosis_text(&diagnose(&pipeline(quick())));
        assert!(
            text.starts_with(
                "checkpoint 7 of job wc, triggered 2026-11-21 10:15:03.123 UTC\n\
                 end-to-end 1.20s, state size 16.0 KiB, 4 subtasks\n"
            ),
            "{text}"
        );
    }
}
