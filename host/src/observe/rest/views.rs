//! The JSON bodies of the REST API, with the paths and field names of Flink's REST API
//! (its `rest_v1_dispatcher` documentation), so that scripts written for Flink work.
//! Pure functions of what the job published, and the readers of the few request bodies
//! (the savepoint triggers); the handlers in `mod.rs` only route.
//!
//! Weir runs one job per process, in one "task manager": `/overview` counts that job,
//! and `slots-total` is the number of subtask threads.

use crate::checkpoint::coordinator::SubtaskStats;
use crate::checkpoint::stats::{
    CheckpointRecord, CheckpointStats, CheckpointStatus, CompletedFigures, Summary, VertexRecord,
};
use crate::observe::live::{JobState, LiveJob, SavepointFormat, Status, Vertex};
use crate::runtime::metrics::{Activity, BackPressureLevel, NodeMetrics, TimeRates};
use crate::runtime::now_ms;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What the views read besides the job: its counters and rates now.
pub struct Now<'a> {
    /// The job.
    pub job: &'a LiveJob,
    /// Its status.
    pub status: Status,
    /// Its checkpoint statistics.
    pub stats: CheckpointStats,
    /// The current run's counters, per node; empty before the first run.
    pub metrics: Vec<Arc<NodeMetrics>>,
    /// Per node and subtask, the time rates.
    pub rates: Vec<Vec<TimeRates>>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Now<'_> {
    fn end_ms(&self) -> i64 {
        if self.status.state.is_terminal() {
            self.status.timestamps.last().map_or(-1, |(_, t)| *t)
        } else {
            -1
        }
    }

    fn duration_ms(&self) -> i64 {
        let end = match self.end_ms() {
            -1 => now_ms(),
            end => end,
        };
        end - self.job.start_ms
    }

    /// Per subtask of vertex `v`: its activity, or `None` before the first run.
    fn activities(&self, v: usize) -> Vec<Option<Activity>> {
        let parallelism = self.job.vertices[v].parallelism as usize;
        match self.metrics.get(v) {
            Some(node) => node
                .subtasks
                .iter()
                .map(|s| Some(s.times.activity()))
                .collect(),
            None => vec![None; parallelism],
        }
    }

    fn subtask_status(&self, activity: Option<Activity>) -> &'static str {
        match (activity, self.status.state) {
            (Some(Activity::Finished), JobState::Finished) => "FINISHED",
            (Some(Activity::Finished), JobState::Canceled) => "CANCELED",
            (Some(Activity::Finished), JobState::Failed) => "FAILED",
            (Some(Activity::Finished), JobState::Restarting) => "CANCELED",
            (Some(Activity::Finished), _) => "FINISHED",
            (Some(_), _) => "RUNNING",
            (None, JobState::Initializing) => "INITIALIZING",
            (None, _) => "CREATED",
        }
    }

    fn vertex_status(&self, v: usize) -> (&'static str, Map<String, Value>) {
        let mut counts = Map::new();
        for state in [
            "CREATED",
            "SCHEDULED",
            "DEPLOYING",
            "RUNNING",
            "FINISHED",
            "CANCELING",
            "CANCELED",
            "FAILED",
            "RECONCILING",
            "INITIALIZING",
        ] {
            counts.insert(state.into(), json!(0));
        }
        let statuses: Vec<&str> = self
            .activities(v)
            .into_iter()
            .map(|a| self.subtask_status(a))
            .collect();
        for s in &statuses {
            if let Some(Value::Number(n)) = counts.get_mut(*s) {
                *n = (n.as_u64().unwrap_or(0) + 1).into();
            }
        }
        let status = if statuses.contains(&"RUNNING") {
            "RUNNING"
        } else {
            statuses.first().copied().unwrap_or("CREATED")
        };
        (status, counts)
    }

    fn subtask_metrics(&self, v: usize, s: usize) -> Value {
        let Some(sub) = self.metrics.get(v).and_then(|n| n.subtasks.get(s)) else {
            return json!({});
        };
        let times = sub.times.read();
        json!({
            "read-records": sub.records_in(),
            "read-records-complete": true,
            "write-records": sub.records_out(),
            "write-records-complete": true,
            "accumulated-backpressured-time": ms(times.back_pressured),
            "accumulated-idle-time": ms(times.idle),
            "accumulated-busy-time": ms(times.busy()),
        })
    }

    fn vertex_metrics(&self, v: usize) -> Value {
        let Some(node) = self.metrics.get(v) else {
            return json!({});
        };
        let sum = |f: &dyn Fn(&crate::runtime::metrics::TimeTotals) -> std::time::Duration| {
            node.subtasks
                .iter()
                .map(|s| ms(f(&s.times.read())))
                .sum::<u64>()
        };
        json!({
            "read-records": node.records_in(),
            "read-records-complete": true,
            "write-records": node.records_out(),
            "write-records-complete": true,
            "accumulated-backpressured-time": sum(&|t| t.back_pressured),
            "accumulated-idle-time": sum(&|t| t.idle),
            "accumulated-busy-time": sum(&|t| t.busy()),
        })
    }
}

/// `GET /overview`.
pub fn overview(now: &Now<'_>) -> Value {
    let state = now.status.state;
    let slots: u32 = now.job.vertices.iter().map(|v| v.parallelism).sum();
    json!({
        "taskmanagers": 1,
        "slots-total": slots,
        "slots-available": 0,
        "jobs-running": u8::from(!state.is_terminal()),
        "jobs-finished": u8::from(state == JobState::Finished),
        "jobs-cancelled": u8::from(state == JobState::Canceled),
        "jobs-failed": u8::from(state == JobState::Failed),
        "weir-version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /jobs`.
pub fn jobs(now: &Now<'_>) -> Value {
    json!({ "jobs": [{ "id": now.job.id, "status": now.status.state }] })
}

fn task_counts(now: &Now<'_>) -> Value {
    let (mut total, mut running, mut finished) = (0u64, 0u64, 0u64);
    for v in 0..now.job.vertices.len() {
        for a in now.activities(v) {
            total += 1;
            match now.subtask_status(a) {
                "RUNNING" => running += 1,
                "FINISHED" => finished += 1,
                _ => {}
            }
        }
    }
    json!({
        "total": total, "created": 0, "scheduled": 0, "deploying": 0,
        "running": running, "finished": finished, "canceling": 0, "canceled": 0,
        "failed": 0, "reconciling": 0, "initializing": 0,
    })
}

/// `GET /jobs/overview`.
pub fn jobs_overview(now: &Now<'_>) -> Value {
    let last = now
        .status
        .timestamps
        .last()
        .map_or(now.job.start_ms, |(_, t)| *t);
    json!({ "jobs": [{
        "jid": now.job.id,
        "name": now.job.name,
        "state": now.status.state,
        "start-time": now.job.start_ms,
        "end-time": now.end_ms(),
        "duration": now.duration_ms(),
        "last-modification": last,
        "tasks": task_counts(now),
    }]})
}

fn vertex_json(now: &Now<'_>, v: usize, vertex: &Vertex) -> Value {
    let (status, tasks) = now.vertex_status(v);
    json!({
        "id": vertex.id,
        "name": vertex.name,
        "maxParallelism": now.job.max_parallelism,
        "parallelism": vertex.parallelism,
        "status": status,
        "start-time": now.job.start_ms,
        "end-time": now.end_ms(),
        "duration": now.duration_ms(),
        "tasks": tasks,
        "metrics": now.vertex_metrics(v),
    })
}

/// `GET /jobs/:jobid`.
pub fn job(now: &Now<'_>) -> Value {
    let job = now.job;
    let vertices: Vec<Value> = job
        .vertices
        .iter()
        .enumerate()
        .map(|(v, vertex)| vertex_json(now, v, vertex))
        .collect();
    let mut status_counts = Map::new();
    for v in &vertices {
        if let Some(s) = v["status"].as_str() {
            let n = status_counts.get(s).and_then(Value::as_u64).unwrap_or(0);
            status_counts.insert(s.to_owned(), json!(n + 1));
        }
    }
    let mut timestamps = Map::new();
    for (state, at) in &now.status.timestamps {
        if let Ok(Value::String(name)) = serde_json::to_value(state) {
            timestamps.insert(name, json!(at));
        }
    }
    let nodes: Vec<Value> = job
        .vertices
        .iter()
        .map(|vertex| {
            json!({
                "id": vertex.id,
                "parallelism": vertex.parallelism,
                "operator": "",
                "operator_strategy": "",
                "description": format!("{} ({})", vertex.name, vertex.description),
                "inputs": vertex.inputs.iter().enumerate().map(|(num, (i, ship))| json!({
                    "num": num,
                    "id": job.vertices[*i].id,
                    "ship_strategy": ship,
                    "exchange": "pipelined_bounded",
                })).collect::<Vec<_>>(),
                "optimizer_properties": {},
            })
        })
        .collect();
    let mut body = json!({
        "jid": job.id,
        "name": job.name,
        "isStoppable": false,
        "state": now.status.state,
        "job-type": "STREAMING",
        "start-time": job.start_ms,
        "end-time": now.end_ms(),
        "duration": now.duration_ms(),
        "maxParallelism": job.max_parallelism,
        "now": now_ms(),
        "timestamps": timestamps,
        "vertices": vertices,
        "status-counts": status_counts,
        "plan": { "jid": job.id, "name": job.name, "type": "STREAMING", "nodes": nodes },
    });
    if let Some(why) = &now.status.failure {
        body["failure-cause"] = json!(why);
    }
    body
}

/// `GET /jobs/:jobid/vertices/:vertexid`.
pub fn vertex(now: &Now<'_>, v: usize) -> Value {
    let vertex = &now.job.vertices[v];
    let subtasks: Vec<Value> = now
        .activities(v)
        .into_iter()
        .enumerate()
        .map(|(s, a)| {
            json!({
                "subtask": s,
                "status": now.subtask_status(a),
                "attempt": now.status.restarts,
                "endpoint": "localhost",
                "start-time": now.job.start_ms,
                "end-time": now.end_ms(),
                "duration": now.duration_ms(),
                "metrics": now.subtask_metrics(v, s),
            })
        })
        .collect();
    json!({
        "id": vertex.id,
        "name": vertex.name,
        "parallelism": vertex.parallelism,
        "maxParallelism": now.job.max_parallelism,
        "now": now_ms(),
        "subtasks": subtasks,
    })
}

/// `GET /jobs/:jobid/vertices/:vertexid/backpressure`: Flink's levels from the
/// measured back-pressured time, not from sampling stacks.
pub fn backpressure(now: &Now<'_>, v: usize) -> Value {
    let rates = now.rates.get(v).cloned().unwrap_or_default();
    let mut worst = BackPressureLevel::Ok;
    let subtasks: Vec<Value> = rates
        .iter()
        .enumerate()
        .map(|(s, r)| {
            let level = BackPressureLevel::of(r.back_pressure_ratio());
            if level as u8 > worst as u8 {
                worst = level;
            }
            json!({
                "subtask": s,
                "attempt-number": now.status.restarts,
                "backpressure-level": level,
                "ratio": r.back_pressure_ratio(),
                "idleRatio": r.idle_ratio(),
                "busyRatio": r.busy_ratio(),
            })
        })
        .collect();
    json!({
        "status": "ok",
        "backpressure-level": worst,
        "end-timestamp": now_ms(),
        "subtasks": subtasks,
    })
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "min": s.min, "max": s.max, "avg": s.avg,
        "p50": s.p50, "p90": s.p90, "p95": s.p95, "p99": s.p99, "p999": s.p999,
    })
}

fn class_name(status: CheckpointStatus) -> &'static str {
    match status {
        CheckpointStatus::InProgress => ".PendingCheckpointStatistics",
        CheckpointStatus::Completed => ".CompletedCheckpointStatistics",
        CheckpointStatus::Failed => ".FailedCheckpointStatistics",
    }
}

fn checkpoint_type(c: &CheckpointRecord) -> &'static str {
    if c.savepoint_format.is_some() {
        "SAVEPOINT"
    } else if c.unaligned {
        "UNALIGNED_CHECKPOINT"
    } else {
        "CHECKPOINT"
    }
}

fn vertex_checkpoint(c: &CheckpointRecord, vertex: &Vertex, part: &VertexRecord) -> Value {
    let acks: Vec<&SubtaskStats> = part.acknowledged().map(|(_, a)| &a.stats).collect();
    let latest_ack = part
        .acknowledged()
        .map(|(_, a)| a.ack_ms)
        .max()
        .unwrap_or(-1);
    json!({
        "id": c.id,
        "status": c.status,
        "latest_ack_timestamp": latest_ack,
        "checkpointed_size": acks.iter().map(|a| a.checkpointed_size).sum::<u64>(),
        "state_size": acks.iter().map(|a| a.state_size).sum::<u64>(),
        "end_to_end_duration": if latest_ack < 0 { 0 } else { latest_ack - c.trigger_ms },
        "alignment_buffered": 0,
        "processed_data": acks.iter().map(|a| a.processed_in_flight).sum::<u64>(),
        "persisted_data": acks.iter().map(|a| a.persisted_in_flight).sum::<u64>(),
        "num_subtasks": part.subtasks.len(),
        "num_acknowledged_subtasks": acks.len(),
        "vertex": vertex.name,
    })
}

/// One checkpoint as in the history and `GET .../checkpoints/details/:id`.
pub fn checkpoint(job: &LiveJob, c: &CheckpointRecord) -> Value {
    let mut tasks = Map::new();
    for (node, part) in &c.vertices {
        if let Some((_, vertex)) = job.vertex(node) {
            tasks.insert(vertex.id.clone(), vertex_checkpoint(c, vertex, part));
        }
    }
    let mut body = json!({
        "className": class_name(c.status),
        "id": c.id,
        "status": c.status,
        "is_savepoint": c.savepoint_format.is_some(),
        "savepointFormat": c.savepoint_format,
        "trigger_timestamp": c.trigger_ms,
        "latest_ack_timestamp": c.latest_ack_ms,
        "checkpointed_size": c.checkpointed_size(),
        "state_size": c.state_size(),
        "end_to_end_duration": c.end_to_end_ms(),
        "alignment_buffered": 0,
        "processed_data": c.processed_data(),
        "persisted_data": c.persisted_data(),
        "num_subtasks": c.num_subtasks(),
        "num_acknowledged_subtasks": c.num_acknowledged(),
        "checkpoint_type": checkpoint_type(c),
        "tasks": tasks,
    });
    match c.status {
        CheckpointStatus::Completed => {
            body["external_path"] = json!(c.external_path);
            body["discarded"] = json!(false);
        }
        CheckpointStatus::Failed => {
            body["failure_timestamp"] = json!(c.end_ms);
            body["failure_message"] = json!(c.failure);
        }
        CheckpointStatus::InProgress => {}
    }
    body
}

/// `GET /jobs/:jobid/checkpoints`.
pub fn checkpoints(job: &LiveJob, stats: &CheckpointStats) -> Value {
    let figure = |f: fn(&CompletedFigures) -> u64| summary_json(&stats.summary(f));
    json!({
        "counts": {
            "restored": stats.counts.restored,
            "total": stats.total(),
            "in_progress": stats.in_progress(),
            "completed": stats.counts.completed,
            "failed": stats.counts.failed,
        },
        "summary": {
            "checkpointed_size": figure(|f| f.checkpointed_size),
            "state_size": figure(|f| f.state_size),
            "end_to_end_duration": figure(|f| f.end_to_end_ms),
            "alignment_buffered": summary_json(&Summary::default()),
            "processed_data": figure(|f| f.processed_data),
            "persisted_data": figure(|f| f.persisted_data),
        },
        "latest": {
            "completed": stats.latest_completed.as_ref().map(|c| checkpoint(job, c)),
            "savepoint": stats.latest_savepoint.as_ref().map(|c| checkpoint(job, c)),
            "failed": stats.latest_failed.as_ref().map(|c| checkpoint(job, c)),
            "restored": stats.restored.as_ref().map(|r| json!({
                "id": r.id,
                "restore_timestamp": r.restore_ms,
                "is_savepoint": r.is_savepoint,
                "external_path": r.external_path,
            })),
        },
        "history": stats.history.iter().rev().map(|c| checkpoint(job, c)).collect::<Vec<_>>(),
    })
}

/// `GET /jobs/:jobid/checkpoints/config`.
pub fn checkpoint_config(job: &LiveJob) -> Option<Value> {
    let c = job.checkpointing.as_ref()?;
    Some(json!({
        "mode": c.mode,
        "interval": c.interval_ms,
        "timeout": c.timeout_ms,
        "min_pause": c.min_pause_ms,
        "max_concurrent": c.max_concurrent,
        "externalization": {
            "enabled": true,
            "delete_on_cancellation": !c.retain_on_cancellation,
        },
        "state_backend": job.state_backend,
        "checkpoint_storage": if c.storage.starts_with("s3://") {
            "S3CheckpointStorage"
        } else {
            "FileSystemCheckpointStorage"
        },
        "checkpoint_storage_location": c.storage,
        "unaligned_checkpoints": c.unaligned,
        "tolerable_failed_checkpoints": c.tolerable_failed,
        "aligned_checkpoint_timeout": c.aligned_timeout_ms,
        "checkpoints_after_tasks_finish": true,
        "state_changelog_enabled": false,
    }))
}

fn duration_summary(values: impl Iterator<Item = std::time::Duration>) -> Value {
    summary_json(&Summary::of(values.map(ms)))
}

/// `GET /jobs/:jobid/checkpoints/details/:checkpointid/subtasks/:vertexid`.
pub fn checkpoint_subtasks(c: &CheckpointRecord, vertex: &Vertex) -> Value {
    let empty = VertexRecord {
        subtasks: vec![None; vertex.parallelism as usize],
    };
    let part = c.vertex(&vertex.name).unwrap_or(&empty);
    let mut body = vertex_checkpoint(c, vertex, part);
    let acks: Vec<&SubtaskStats> = part.acknowledged().map(|(_, a)| &a.stats).collect();
    let stat =
        |f: fn(&SubtaskStats) -> std::time::Duration| duration_summary(acks.iter().map(|a| f(a)));
    let size = |f: fn(&SubtaskStats) -> u64| summary_json(&Summary::of(acks.iter().map(|a| f(a))));
    body["summary"] = json!({
        "checkpointed_size": size(|a| a.checkpointed_size),
        "state_size": size(|a| a.state_size),
        "end_to_end_duration": stat(|a| a.end_to_end),
        "checkpoint_duration": {
            "sync": stat(|a| a.sync_duration),
            "async": stat(|a| a.async_duration),
        },
        "alignment": {
            "buffered": summary_json(&Summary::default()),
            "processed": size(|a| a.processed_in_flight),
            "persisted": size(|a| a.persisted_in_flight),
            "duration": stat(|a| a.alignment_duration),
        },
        "start_delay": stat(|a| a.start_delay),
    });
    body["subtasks"] = part
        .subtasks
        .iter()
        .enumerate()
        .map(|(index, ack)| match ack {
            None => json!({ "index": index, "status": "pending_or_failed" }),
            Some(a) => json!({
                "index": index,
                "status": "completed",
                "ack_timestamp": a.ack_ms,
                "end_to_end_duration": ms(a.stats.end_to_end),
                "state_size": a.stats.state_size,
                "checkpointed_size": a.stats.checkpointed_size,
                "checkpoint": {
                    "sync": ms(a.stats.sync_duration),
                    "async": ms(a.stats.async_duration),
                },
                "alignment": {
                    "buffered": 0,
                    "processed": a.stats.processed_in_flight,
                    "persisted": a.stats.persisted_in_flight,
                    "duration": ms(a.stats.alignment_duration),
                },
                "start_delay": ms(a.stats.start_delay),
                "unaligned_checkpoint": a.stats.unaligned,
                "aborted": c.status == CheckpointStatus::Failed,
                "sync_fuel": a.stats.sync_fuel,
            }),
        })
        .collect();
    body
}

/// `GET /jobs/:jobid/stacks`: per subtask, what its thread does (`activity`: `BUSY`,
/// `IDLE`, `BACK_PRESSURED`, `FINISHED`) and its guest's stack, as data and as the text
/// of a thread dump.
pub fn stacks(
    job: &LiveJob,
    metrics: Option<&[Arc<NodeMetrics>]>,
    guests: &[crate::wasm::SubtaskStack],
) -> Value {
    use crate::wasm::GuestStack;
    let mut text = String::new();
    let mut subtasks = Vec::new();
    for (v, vertex) in job.vertices.iter().enumerate() {
        for s in 0..vertex.parallelism {
            let activity = metrics
                .and_then(|m| m.get(v)?.subtasks.get(s as usize))
                .map(|m| m.times.activity());
            let guest = guests
                .iter()
                .find(|g| g.node == vertex.name && g.subtask.0 == s)
                .map(|g| &g.stack);
            let name = format!("{} ({}/{})", vertex.name, s + 1, vertex.parallelism);
            let host = match activity {
                Some(Activity::Busy) => "busy: processing",
                Some(Activity::Idle) => "idle: waiting for input",
                Some(Activity::BackPressured) => "back-pressured: waiting for room downstream",
                Some(Activity::Finished) => "finished",
                None => "not started",
            };
            text.push_str(&format!("\"{name}\" {host}\n"));
            match guest {
                Some(GuestStack::InGuest { frames }) => {
                    for frame in frames {
                        text.push_str(&format!("    at {frame}\n"));
                    }
                }
                Some(GuestStack::NotInGuest) => text.push_str("    (not in guest code)\n"),
                Some(GuestStack::NoInstance) => text.push_str("    (no guest instance)\n"),
                Some(GuestStack::NoEpochs) => {
                    text.push_str("    (guest stacks need epoch interruption)\n");
                }
                None => {}
            }
            text.push('\n');
            subtasks.push(json!({
                "vertex": vertex.id,
                "name": vertex.name,
                "subtask": s,
                "threadName": name,
                "activity": activity,
                "guest": guest,
            }));
        }
    }
    json!({ "subtasks": subtasks, "text": text })
}

/// The job's metrics by Flink's names, for `GET /jobs/:jobid/metrics` and Prometheus.
pub fn job_metrics(now: &Now<'_>) -> Vec<(&'static str, f64)> {
    let s = &now.stats;
    let last = s.latest_completed.as_ref();
    let figure = |f: fn(&CheckpointRecord) -> u64| last.map_or(-1.0, |c| f(c) as f64);
    vec![
        ("uptime", now.duration_ms() as f64),
        ("numRestarts", now.status.restarts as f64),
        ("totalNumberOfCheckpoints", s.total() as f64),
        ("numberOfCompletedCheckpoints", s.counts.completed as f64),
        ("numberOfFailedCheckpoints", s.counts.failed as f64),
        ("numberOfInProgressCheckpoints", s.in_progress() as f64),
        (
            "lastCheckpointDuration",
            last.map_or(-1.0, |c| c.end_to_end_ms() as f64),
        ),
        (
            "lastCheckpointSize",
            figure(CheckpointRecord::checkpointed_size),
        ),
        (
            "lastCheckpointFullSize",
            figure(CheckpointRecord::state_size),
        ),
        ("lastCompletedCheckpointId", figure(|c| c.id)),
        (
            "lastCheckpointRestoreTimestamp",
            s.restored.as_ref().map_or(-1.0, |r| r.restore_ms as f64),
        ),
    ]
}

/// Whether a metric of [`job_metrics`] or [`subtask_metrics`] only grows (a Prometheus
/// counter) rather than going up and down (a gauge).
pub fn is_counter(name: &str) -> bool {
    matches!(
        name,
        "numRestarts"
            | "totalNumberOfCheckpoints"
            | "numberOfCompletedCheckpoints"
            | "numberOfFailedCheckpoints"
            | "numRecordsIn"
            | "numRecordsOut"
            | "accumulatedBusyTime"
            | "accumulatedIdleTime"
            | "accumulatedBackPressuredTime"
            | "fuelConsumed"
            | "numDeadLetters"
    )
}

/// One subtask's metrics by Flink's names (and Weir's own: fuel, dead letters, the
/// state size of the latest completed checkpoint).
pub fn subtask_metrics(now: &Now<'_>, v: usize, s: usize) -> Vec<(&'static str, f64)> {
    let Some(sub) = now.metrics.get(v).and_then(|n| n.subtasks.get(s)) else {
        return Vec::new();
    };
    let times = sub.times.read();
    let rates = now
        .rates
        .get(v)
        .and_then(|r| r.get(s))
        .copied()
        .unwrap_or_default();
    let state_size = now
        .stats
        .latest_completed
        .as_ref()
        .and_then(|c| {
            c.vertex(&now.job.vertices[v].name)?
                .subtasks
                .get(s)?
                .clone()
        })
        .map_or(0.0, |a| a.stats.state_size as f64);
    vec![
        ("numRecordsIn", sub.records_in() as f64),
        ("numRecordsOut", sub.records_out() as f64),
        ("busyTimeMsPerSecond", rates.busy),
        ("idleTimeMsPerSecond", rates.idle),
        ("backPressuredTimeMsPerSecond", rates.back_pressured),
        ("accumulatedBusyTime", ms(times.busy()) as f64),
        ("accumulatedIdleTime", ms(times.idle) as f64),
        (
            "accumulatedBackPressuredTime",
            ms(times.back_pressured) as f64,
        ),
        ("fuelConsumed", sub.fuel() as f64),
        ("numDeadLetters", sub.dead_letters() as f64),
        ("checkpointedStateSize", state_size),
    ]
}

/// Flink's `GET .../metrics` answer: without `get`, the names there are; with it, the
/// values (as strings, as Flink sends them) of the names asked for that exist.
pub fn metric_list(metrics: &[(String, f64)], get: Option<&str>) -> Value {
    let Some(get) = get else {
        return metrics.iter().map(|(id, _)| json!({ "id": id })).collect();
    };
    let wanted: Vec<&str> = get.split(',').map(str::trim).collect();
    metrics
        .iter()
        .filter(|(id, _)| wanted.contains(&id.as_str()))
        .map(|(id, value)| json!({ "id": id, "value": format_value(*value) }))
        .collect()
}

/// A metric value as Flink prints it: integers without a fraction.
pub fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// What a savepoint trigger asks for: the body of `POST /jobs/:id/savepoints` or of
/// `POST /jobs/:id/stop`, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointTrigger {
    /// Where to write it; `None` for the job's `savepoint-dir`.
    pub directory: Option<String>,
    /// Its format.
    pub format: SavepointFormat,
    /// Whether the job stops once it is complete.
    pub stop: bool,
}

/// Why a trigger's body was refused. The client's to fix; sending it again as it was
/// cannot help.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is not declared as JSON (415).
    #[error("the body must be JSON, sent with `Content-Type: application/json`, not `{0}`")]
    NotJson(String),
    /// The body is JSON that does not say what it must (400).
    #[error("{0}")]
    Invalid(String),
}

/// Flink's `SavepointTriggerRequestBody`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointBody {
    #[serde(rename = "target-directory")]
    target_directory: Option<String>,
    #[serde(rename = "cancel-job")]
    cancel_job: Option<bool>,
    #[serde(rename = "formatType")]
    format_type: Option<SavepointFormat>,
}

/// Flink's `StopWithSavepointRequestBody`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(rename = "targetDirectory")]
    target_directory: Option<String>,
    drain: Option<bool>,
    #[serde(rename = "formatType")]
    format_type: Option<SavepointFormat>,
}

/// The body as `T`: an empty body is `{}`, as Flink reads one; a body declared as
/// anything but JSON is refused. A body without a `Content-Type` is read as JSON.
fn json_body<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
    what: &str,
) -> Result<T, BodyError> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if let Some(declared) = content_type
        && !empty
    {
        let essence = declared.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(BodyError::NotJson(declared.to_owned()));
        }
    }
    let body = if empty { b"{}".as_slice() } else { body };
    let invalid = |e: serde_json::Error| BodyError::Invalid(format!("the body is not {what}: {e}"));
    // Read as a value first: serde would also take a struct from an array of its fields.
    let value: Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err(BodyError::Invalid(format!(
            "the body is not {what}: it is JSON but not an object (`{{...}}`)"
        )));
    }
    serde_json::from_value(value).map_err(invalid)
}

/// A target directory, which must name something when it is given.
fn target_directory(directory: Option<String>, field: &str) -> Result<Option<String>, BodyError> {
    match directory {
        Some(d) if d.trim().is_empty() => Err(BodyError::Invalid(format!(
            "`{field}` is empty: name a directory or an s3:// URL, or leave it out (or null) for the job's [checkpointing] savepoint-dir"
        ))),
        directory => Ok(directory),
    }
}

/// The body of `POST /jobs/:id/savepoints`: `target-directory`, `cancel-job`
/// (stop-with-savepoint) and `formatType`, each optional.
///
/// # Errors
/// When the body is not JSON of that shape, or names an empty directory.
pub fn savepoint_trigger(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<SavepointTrigger, BodyError> {
    let body: SavepointBody = json_body(content_type, body, "a savepoint request")?;
    Ok(SavepointTrigger {
        directory: target_directory(body.target_directory, "target-directory")?,
        format: body.format_type.unwrap_or_default(),
        stop: body.cancel_job.unwrap_or(false),
    })
}

/// The body of `POST /jobs/:id/stop`: `targetDirectory`, `drain` (which must be false)
/// and `formatType`, each optional.
///
/// # Errors
/// When the body is not JSON of that shape, names an empty directory, or asks to drain.
pub fn stop_trigger(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<SavepointTrigger, BodyError> {
    let body: StopBody = json_body(content_type, body, "a stop-with-savepoint request")?;
    if body.drain == Some(true) {
        return Err(BodyError::Invalid(
            "`drain` = true is not supported: Weir stops the job once the savepoint is complete without ending its input first (no end-of-input, so no final watermark fires its timers). Leave `drain` out or send false".to_owned(),
        ));
    }
    Ok(SavepointTrigger {
        directory: target_directory(body.target_directory, "targetDirectory")?,
        format: body.format_type.unwrap_or_default(),
        stop: true,
    })
}

/// The answer to a savepoint trigger, as Flink's `TriggerResponse`.
pub fn savepoint_triggered(trigger: &str) -> Value {
    json!({ "request-id": trigger })
}

/// The class named in a failed savepoint's `failure-cause`, where Flink names a Java
/// exception.
pub const SAVEPOINT_FAILURE_CLASS: &str = "weir.SavepointFailure";

/// A savepoint operation's status, as Flink's `AsynchronousOperationResult`: `None`
/// while it is in progress, else its location or the sentence saying why it failed.
/// A failure's sentence is in `failure-cause.stack-trace`, where Flink's clients look,
/// and in `failure-cause.message`.
pub fn savepoint_status(outcome: Option<&Result<String, String>>) -> Value {
    match outcome {
        None => json!({ "status": { "id": "IN_PROGRESS" }, "operation": null }),
        Some(Ok(location)) => json!({
            "status": { "id": "COMPLETED" },
            "operation": { "location": location },
        }),
        Some(Err(why)) => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "failure-cause": {
                    "class": SAVEPOINT_FAILURE_CLASS,
                    "stack-trace": why,
                    "message": why,
                },
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn an_empty_savepoint_body_asks_for_a_canonical_savepoint_in_the_default_directory() {
        let expected = SavepointTrigger {
            directory: None,
            format: SavepointFormat::Canonical,
            stop: false,
        };
        assert_eq!(savepoint_trigger(None, b""), Ok(expected.clone()));
        assert_eq!(savepoint_trigger(JSON, b" {} "), Ok(expected.clone()));
        assert_eq!(
            savepoint_trigger(
                JSON,
                br#"{"target-directory": null, "cancel-job": null, "formatType": null}"#
            ),
            Ok(expected)
        );
    }

    #[test]
    fn a_savepoint_body_names_its_directory_format_and_whether_to_stop() {
        let body =
            br#"{"target-directory": "s3://b/sp", "cancel-job": true, "formatType": "NATIVE"}"#;
        assert_eq!(
            savepoint_trigger(Some("application/json; charset=utf-8"), body),
            Ok(SavepointTrigger {
                directory: Some("s3://b/sp".to_owned()),
                format: SavepointFormat::Native,
                stop: true,
            })
        );
    }

    #[test]
    fn a_stop_body_always_stops_and_uses_flinks_camel_case_names() {
        let body = br#"{"targetDirectory": "/sp", "drain": false, "formatType": "CANONICAL"}"#;
        assert_eq!(
            stop_trigger(JSON, body),
            Ok(SavepointTrigger {
                directory: Some("/sp".to_owned()),
                format: SavepointFormat::Canonical,
                stop: true,
            })
        );
        assert_eq!(stop_trigger(None, b"").map(|t| t.stop), Ok(true));
    }

    #[test]
    fn a_stop_that_asks_to_drain_is_refused_with_a_reason() {
        let Err(BodyError::Invalid(why)) = stop_trigger(JSON, br#"{"drain": true}"#) else {
            panic!("drain = true was accepted");
        };
        assert!(why.contains("drain"), "{why}");
    }

    #[test]
    fn unknown_fields_wrong_types_and_unknown_formats_are_refused_naming_the_problem() {
        for (body, names) in [
            (
                r#"{"targetDirectory": "/sp"}"#,
                "unknown field `targetDirectory`",
            ),
            (r#"{"cancel-job": "yes"}"#, "invalid type"),
            (
                r#"{"formatType": "canonical"}"#,
                "unknown variant `canonical`",
            ),
            (r#"{"target-directory": "/sp""#, "EOF"),
            ("[null, null, null]", "not an object"),
        ] {
            let Err(BodyError::Invalid(why)) = savepoint_trigger(JSON, body.as_bytes()) else {
                panic!("{body} was accepted");
            };
            assert!(why.contains(names), "{body}: {why}");
            assert!(
                why.starts_with("the body is not a savepoint request"),
                "{why}"
            );
        }
        let Err(BodyError::Invalid(why)) = stop_trigger(JSON, br#"{"target-directory": "/sp"}"#)
        else {
            panic!("the savepoint body's name was accepted by stop");
        };
        assert!(why.contains("unknown field `target-directory`"), "{why}");
    }

    #[test]
    fn an_empty_target_directory_is_refused_rather_than_read_as_the_default() {
        let Err(BodyError::Invalid(why)) =
            savepoint_trigger(JSON, br#"{"target-directory": "  "}"#)
        else {
            panic!("an empty directory was accepted");
        };
        assert!(why.contains("`target-directory` is empty"), "{why}");
    }

    #[test]
    fn a_body_declared_as_something_other_than_json_is_refused() {
        assert_eq!(
            savepoint_trigger(Some("application/x-www-form-urlencoded"), b"{}"),
            Err(BodyError::NotJson(
                "application/x-www-form-urlencoded".to_owned()
            ))
        );
        assert!(
            savepoint_trigger(Some("text/plain"), b"").is_ok(),
            "an empty body has no type to be wrong about"
        );
    }

    #[test]
    fn a_savepoint_status_is_in_progress_then_completed_with_a_location_or_a_cause() {
        assert_eq!(
            savepoint_status(None),
            json!({ "status": { "id": "IN_PROGRESS" }, "operation": null })
        );
        let done = savepoint_status(Some(&Ok("/sp/savepoint-1".to_owned())));
        assert_eq!(done["status"]["id"], "COMPLETED");
        assert_eq!(done["operation"]["location"], "/sp/savepoint-1");
        let failed = savepoint_status(Some(&Err("no savepoint-dir".to_owned())));
        assert_eq!(failed["status"]["id"], "COMPLETED");
        let cause = &failed["operation"]["failure-cause"];
        assert_eq!(cause["class"], SAVEPOINT_FAILURE_CLASS);
        assert_eq!(cause["stack-trace"], "no savepoint-dir");
        assert_eq!(cause["message"], "no savepoint-dir");
        assert!(failed["operation"].get("location").is_none());
    }

    #[test]
    fn metric_values_print_as_flink_prints_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-1.0), "-1");
        assert_eq!(format_value(12.5), "12.5");
    }

    #[test]
    fn a_metric_list_without_get_names_every_metric_and_with_get_only_those_asked() {
        let metrics = vec![("a".to_owned(), 1.0), ("b".to_owned(), 2.5)];
        assert_eq!(
            metric_list(&metrics, None),
            json!([{ "id": "a" }, { "id": "b" }])
        );
        assert_eq!(
            metric_list(&metrics, Some("b,zzz")),
            json!([{ "id": "b", "value": "2.5" }])
        );
    }
}
