//! `GET /metrics`: the job's and every subtask's metrics in Prometheus' text format
//! (version 0.0.4), named as Flink's Prometheus reporter names them (`<scope>_<name>`,
//! Flink's camel-case names), with Weir's prefix: `weir_job_lastCheckpointDuration`,
//! `weir_task_busyTimeMsPerSecond{job_name, operator_name, subtask_index}`. What only
//! grows is a counter, with Prometheus' `_total` suffix.

use crate::observe::rest::views::{self, Now};
use std::fmt::Write;

/// What the help line says of each metric.
fn help(name: &str) -> &'static str {
    match name {
        "uptime" => "Milliseconds since the job started.",
        "numRestarts" => "Restarts of the job after failures.",
        "totalNumberOfCheckpoints" => "Checkpoints triggered.",
        "numberOfCompletedCheckpoints" => "Checkpoints completed.",
        "numberOfFailedCheckpoints" => "Checkpoints failed.",
        "numberOfInProgressCheckpoints" => "Checkpoints in progress.",
        "lastCheckpointDuration" => {
            "Milliseconds from trigger to last acknowledgement of the latest completed checkpoint."
        }
        "lastCheckpointSize" => "Bytes the latest completed checkpoint wrote.",
        "lastCheckpointFullSize" => "Bytes of state in the latest completed checkpoint.",
        "lastCompletedCheckpointId" => "Id of the latest completed checkpoint.",
        "lastCheckpointRestoreTimestamp" => {
            "When the current run restored its checkpoint, in ms since the epoch (-1: none)."
        }
        "numRecordsIn" => "Records the subtask received.",
        "numRecordsOut" => "Records the subtask emitted.",
        "busyTimeMsPerSecond" => "Milliseconds per second the subtask was busy.",
        "idleTimeMsPerSecond" => "Milliseconds per second the subtask waited for input.",
        "backPressuredTimeMsPerSecond" => {
            "Milliseconds per second the subtask waited for room downstream."
        }
        "accumulatedBusyTime" => "Milliseconds the subtask was busy.",
        "accumulatedIdleTime" => "Milliseconds the subtask waited for input.",
        "accumulatedBackPressuredTime" => "Milliseconds the subtask waited for room downstream.",
        "fuelConsumed" => "Fuel the subtask's guest burned.",
        "numDeadLetters" => "Records the subtask sent to its dead-letter file.",
        "checkpointedStateSize" => {
            "Bytes of the subtask's state in the latest completed checkpoint."
        }
        _ => "",
    }
}

/// A label value, escaped as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, scope: &str, name: &str) -> String {
    let counter = views::is_counter(name);
    let full = if counter {
        format!("weir_{scope}_{name}_total")
    } else {
        format!("weir_{scope}_{name}")
    };
    let _ = writeln!(out, "# HELP {full} {}", help(name));
    let _ = writeln!(
        out,
        "# TYPE {full} {}",
        if counter { "counter" } else { "gauge" }
    );
    full
}

/// The text of `GET /metrics`.
pub fn render(now: &Now<'_>) -> String {
    let mut out = String::new();
    let job = format!(
        "job_id=\"{}\",job_name=\"{}\"",
        now.job.id,
        escape(&now.job.name)
    );
    for (name, value) in views::job_metrics(now) {
        let full = family(&mut out, "job", name);
        let _ = writeln!(out, "{full}{{{job}}} {}", views::format_value(value));
    }
    // One family at a time, every subtask in it, as the format requires.
    let mut subtasks = Vec::new();
    for (v, vertex) in now.job.vertices.iter().enumerate() {
        for s in 0..vertex.parallelism as usize {
            let labels = format!(
                "{job},operator_name=\"{}\",subtask_index=\"{s}\"",
                escape(&vertex.name)
            );
            subtasks.push((labels, views::subtask_metrics(now, v, s)));
        }
    }
    let names: Vec<&str> = subtasks
        .first()
        .map(|(_, m)| m.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    for (i, name) in names.into_iter().enumerate() {
        let full = family(&mut out, "task", name);
        for (labels, metrics) in &subtasks {
            if let Some((_, value)) = metrics.get(i) {
                let _ = writeln!(out, "{full}{{{labels}}} {}", views::format_value(*value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn counters_get_the_total_suffix_and_gauges_do_not() {
        let mut out = String::new();
        assert_eq!(
            family(&mut out, "task", "numRecordsIn"),
            "weir_task_numRecordsIn_total"
        );
        assert_eq!(
            family(&mut out, "task", "busyTimeMsPerSecond"),
            "weir_task_busyTimeMsPerSecond"
        );
        assert!(out.contains("# TYPE weir_task_numRecordsIn_total counter\n"));
        assert!(out.contains("# TYPE weir_task_busyTimeMsPerSecond gauge\n"));
    }
}
