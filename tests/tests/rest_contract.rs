//! The REST server of a running job against its contract: schemathesis checks every
//! operation of `/openapi.json` (status codes, content types, bodies against the
//! schemas, malformed input refused) with `tests/rest/contract.py`; the Prometheus
//! client's parser reads `/metrics` (`tests/rest/metrics.py`); and the cancel, which
//! ends the job, comes last.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use weir_tests::RunningJob;
use weir_tests::rest::keyed_count_job;
use weir_tests::{Scratch, describe, eventually, repo};

/// Long enough for a cold compile of the counter and the first checkpoints on a loaded
/// two-core machine.
const START: Duration = Duration::from_secs(60);

/// Examples per operation: enough for schemathesis to try each parameter real, made up
/// and malformed, few enough that the run takes seconds.
const MAX_EXAMPLES: &str = "25";

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(repo().join("tests/rest").join(script))
        .args(args)
        .output()
        .expect("python3 starts")
}

/// `name` running until a checkpoint completed, checkpointing every `interval`.
fn started(scratch: &Scratch, name: &str, interval: &str) -> RunningJob {
    scratch.write("job.toml", keyed_count_job(name, interval));
    let job = RunningJob::start(scratch, &["run", "job.toml"]);
    assert!(
        eventually(START, || {
            let (status, body) = job.request("GET", &format!("/jobs/{name}/checkpoints"), &[]);
            status == 200 && body.contains("\"COMPLETED\"")
        }),
        "no checkpoint completed\n{}",
        job.log()
    );
    job
}

#[test]
fn the_server_keeps_its_openapi_contract_and_cancels_last() {
    let scratch = Scratch::new();
    // The history holds ten checkpoints: at one every two seconds, the ids schemathesis is
    // given stay in it for the whole run, so that their details answer 200, not 404.
    let job = started(&scratch, "contract-demo", "2s");
    let work = scratch.path().to_string_lossy().into_owned();
    let output = python("contract.py", &[&job.url(""), &work, MAX_EXAMPLES]);
    assert!(
        output.status.success(),
        "schemathesis found the server off its contract\n{}\n--- weir ---\n{}",
        describe(&output),
        job.log()
    );

    let (status, body) = job.request("GET", "/jobs/no-such-job", &[]);
    assert_eq!(status, 404, "{body}");
    let errors: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(errors["errors"][0].is_string(), "{body}");

    let status = job.cancel("contract-demo", START);
    assert_eq!(
        status.code(),
        Some(130),
        "a cancelled job exits as on Ctrl-C"
    );
}

fn family<'a>(families: &'a Value, name: &str) -> &'a Value {
    let family = &families[name];
    assert!(family.is_object(), "no family {name} in /metrics");
    family
}

#[test]
fn the_prometheus_text_parses_with_counters_as_counters_and_gauges_as_gauges() {
    let scratch = Scratch::new();
    let job = started(&scratch, "metrics-demo", "500ms");
    let output = python("metrics.py", &[&job.url("/metrics")]);
    assert!(output.status.success(), "{}", describe(&output));
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("metrics.py prints JSON");
    assert!(
        parsed["content_type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        parsed["content_type"]
    );
    let families = &parsed["families"];

    // The parser names a counter's family without Prometheus' `_total`.
    let records_in = family(families, "weir_task_numRecordsIn");
    assert_eq!(records_in["type"], "counter");
    let mut seen: Vec<(String, String)> = records_in["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            assert_eq!(s["name"], "weir_task_numRecordsIn_total", "{s}");
            assert_eq!(s["labels"]["job_name"], "metrics-demo", "{s}");
            (
                s["labels"]["operator_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                s["labels"]["subtask_index"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String)> = ["count", "gen", "out"]
        .iter()
        .flat_map(|op| ["0", "1"].map(|s| ((*op).to_owned(), s.to_owned())))
        .collect();
    assert_eq!(seen, expected, "a sample per operator and subtask");
    let counted: f64 = records_in["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["labels"]["operator_name"] == "count")
        .filter_map(|s| s["value"].as_f64())
        .sum();
    assert!(counted > 0.0, "the counter received records");

    for counter in [
        "weir_task_numRecordsOut",
        "weir_task_accumulatedBusyTime",
        "weir_task_accumulatedIdleTime",
        "weir_task_accumulatedBackPressuredTime",
        "weir_job_numRestarts",
        "weir_job_numberOfCompletedCheckpoints",
        "weir_job_numberOfFailedCheckpoints",
        "weir_job_totalNumberOfCheckpoints",
    ] {
        assert_eq!(family(families, counter)["type"], "counter", "{counter}");
    }
    for gauge in [
        "weir_task_busyTimeMsPerSecond",
        "weir_task_idleTimeMsPerSecond",
        "weir_task_backPressuredTimeMsPerSecond",
        "weir_task_checkpointedStateSize",
        "weir_job_uptime",
        "weir_job_numberOfInProgressCheckpoints",
        "weir_job_lastCheckpointDuration",
        "weir_job_lastCheckpointSize",
        "weir_job_lastCheckpointFullSize",
        "weir_job_lastCompletedCheckpointId",
        "weir_job_lastCheckpointRestoreTimestamp",
    ] {
        assert_eq!(family(families, gauge)["type"], "gauge", "{gauge}");
    }

    // The job-level checkpoint figures are one sample each, of the job, and a
    // checkpoint has completed.
    let one = |name: &str| {
        let samples = family(families, name)["samples"]
            .as_array()
            .expect("samples")
            .clone();
        assert_eq!(samples.len(), 1, "{name}: {samples:?}");
        assert_eq!(samples[0]["labels"]["job_name"], "metrics-demo", "{name}");
        samples[0]["value"].as_f64().unwrap_or(f64::NAN)
    };
    assert!(one("weir_job_numberOfCompletedCheckpoints") >= 1.0);
    assert!(one("weir_job_lastCompletedCheckpointId") >= 1.0);
    assert!(one("weir_job_lastCheckpointDuration") >= 0.0);
    assert!(one("weir_job_lastCheckpointFullSize") > 0.0);
    assert_eq!(
        one("weir_job_lastCheckpointRestoreTimestamp"),
        -1.0,
        "no restore"
    );

    let status = job.cancel("metrics-demo", START);
    assert_eq!(
        status.code(),
        Some(130),
        "a cancelled job exits as on Ctrl-C"
    );
}
