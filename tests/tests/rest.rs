//! The REST API of a running job, through the real `weir` binary: every endpoint answers
//! with Flink's field names, back pressure is measured where it is, a failed checkpoint
//! carries its reason (in the API and in `weir checkpoints list`), the history survives
//! a crash and a resume, and only the token holder may cancel a job that listens beyond
//! loopback.

use serde_json::Value;
use std::time::Duration;
use weir_tests::{RunningJob, Scratch, eventually, guest, toml_path};

/// How long a test waits for something a running job does within a second or two.
const WAIT: Duration = Duration::from_secs(60);

/// An unbounded keyed count whose sink is slower than its source, so the source is
/// back-pressured: `extra` goes into `[checkpointing]`, `rest` is the `[rest]` table.
fn job(checkpointing: &str, rest: &str) -> String {
    format!(
        r#"[job]
name = "rest"
parallelism = 2

[checkpointing]
interval = "200ms"
dir = "checkpoints"
{checkpointing}

[rest]
port = 0
{rest}

[[source]]
id = "gen"
kind = "generator"
keys = 500
rate = 20000

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["gen"]
partition = "key-by"

[[sink]]
id = "out"
kind = "blackhole"
rate = 5000
inputs = ["count"]
"#,
        counter = toml_path(&guest("word_count_counter")),
    )
}

fn start(scratch: &Scratch, text: &str, extra: &[&str]) -> RunningJob {
    scratch.write("job.toml", text);
    let mut args = vec!["run", "job.toml"];
    args.extend_from_slice(extra);
    RunningJob::start(scratch, &args)
}

/// The completed checkpoints the API counts.
fn completed(job: &RunningJob) -> u64 {
    job.json("/jobs/rest/checkpoints")["counts"]["completed"]
        .as_u64()
        .unwrap_or(0)
}

fn assert_fields(value: &Value, fields: &[&str], what: &str) {
    for field in fields {
        assert!(
            value.get(field).is_some(),
            "{what} lacks Flink's field `{field}`: {value:#}"
        );
    }
}

#[test]
fn a_running_job_answers_every_endpoint_with_flinks_field_names() {
    let scratch = Scratch::new();
    let job = start(&scratch, &job("num-retained = 100", ""), &[]);
    assert!(
        eventually(WAIT, || completed(&job) >= 2),
        "no checkpoint completed:\n{}",
        job.log()
    );

    let overview = job.json("/overview");
    assert_fields(
        &overview,
        &[
            "taskmanagers",
            "slots-total",
            "jobs-running",
            "jobs-finished",
        ],
        "/overview",
    );
    assert_eq!(overview["jobs-running"], 1);

    let jobs = job.json("/jobs");
    let id = jobs["jobs"][0]["id"].as_str().expect("a job id").to_owned();
    assert_eq!(id.len(), 32, "a Flink-style job id: {id}");
    assert_eq!(jobs["jobs"][0]["status"], "RUNNING");

    let details = job.json(&format!("/jobs/{id}"));
    assert_fields(
        &details,
        &[
            "jid",
            "name",
            "state",
            "start-time",
            "duration",
            "vertices",
            "plan",
            "timestamps",
        ],
        "/jobs/:jobid",
    );
    let vertices = details["vertices"].as_array().expect("vertices");
    let names: Vec<&str> = vertices.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["gen", "count", "out"]);
    for v in vertices {
        assert_fields(
            v,
            &["id", "name", "parallelism", "status", "tasks", "metrics"],
            "a vertex",
        );
        assert_fields(
            &v["metrics"],
            &[
                "read-records",
                "write-records",
                "accumulated-busy-time",
                "accumulated-backpressured-time",
            ],
            "a vertex's metrics",
        );
    }
    let gen_id = vertices[0]["id"].as_str().expect("an id").to_owned();
    let edges = &details["plan"]["nodes"][1]["inputs"][0];
    assert_eq!(edges["ship_strategy"], "HASH", "count reads gen by key");
    assert_eq!(edges["id"], gen_id.as_str());

    let checkpoints = job.json(&format!("/jobs/{id}/checkpoints"));
    assert_fields(
        &checkpoints,
        &["counts", "summary", "latest", "history"],
        "checkpoints",
    );
    assert_fields(
        &checkpoints["counts"],
        &["restored", "total", "in_progress", "completed", "failed"],
        "counts",
    );
    assert_fields(
        &checkpoints["summary"]["end_to_end_duration"],
        &["min", "max", "avg", "p50", "p90", "p95", "p99", "p999"],
        "the summary",
    );
    let latest = &checkpoints["latest"]["completed"];
    assert_fields(
        latest,
        &[
            "id",
            "status",
            "trigger_timestamp",
            "end_to_end_duration",
            "state_size",
            "checkpointed_size",
            "num_subtasks",
            "num_acknowledged_subtasks",
            "external_path",
            "tasks",
        ],
        "the latest completed checkpoint",
    );
    assert_eq!(latest["status"], "COMPLETED");
    assert_eq!(latest["num_acknowledged_subtasks"], 6);
    let cid = latest["id"].as_u64().expect("an id");
    let path = latest["external_path"].as_str().expect("a path");
    assert!(path.ends_with(&format!("/rest/chk-{cid}")), "{path}");

    let config = job.json(&format!("/jobs/{id}/checkpoints/config"));
    assert_eq!(config["mode"], "exactly_once");
    assert_eq!(config["interval"], 200);
    assert_fields(
        &config,
        &[
            "timeout",
            "min_pause",
            "max_concurrent",
            "externalization",
            "state_backend",
            "unaligned_checkpoints",
        ],
        "the config",
    );

    let one = job.json(&format!("/jobs/{id}/checkpoints/details/{cid}"));
    assert_eq!(one["id"], cid);
    assert!(one["tasks"].get(&gen_id).is_some(), "per vertex: {one:#}");

    let subtasks = job.json(&format!(
        "/jobs/{id}/checkpoints/details/{cid}/subtasks/count"
    ));
    assert_fields(
        &subtasks,
        &["summary", "subtasks", "num_subtasks"],
        "the subtasks of a checkpoint",
    );
    assert_fields(
        &subtasks["summary"],
        &[
            "checkpoint_duration",
            "alignment",
            "start_delay",
            "end_to_end_duration",
            "state_size",
        ],
        "their summary",
    );
    let first = &subtasks["subtasks"][0];
    assert_eq!(first["status"], "completed");
    assert_fields(
        first,
        &[
            "index",
            "ack_timestamp",
            "end_to_end_duration",
            "state_size",
            "checkpoint",
            "alignment",
            "start_delay",
            "unaligned_checkpoint",
        ],
        "a subtask's checkpoint",
    );
    assert_fields(&first["checkpoint"], &["sync", "async"], "its stages");

    // The sink is the bottleneck: the source waits for room, the counter keeps busy.
    let high = eventually(WAIT, || {
        job.json(&format!("/jobs/{id}/vertices/{gen_id}/backpressure"))["backpressure-level"]
            == "high"
    });
    let pressure = job.json(&format!("/jobs/{id}/vertices/gen/backpressure"));
    assert!(high, "the source is not back-pressured: {pressure:#}");
    assert_fields(
        &pressure,
        &["status", "backpressure-level", "end-timestamp", "subtasks"],
        "backpressure",
    );
    assert_fields(
        &pressure["subtasks"][0],
        &[
            "subtask",
            "backpressure-level",
            "ratio",
            "idleRatio",
            "busyRatio",
        ],
        "a subtask's backpressure",
    );
    let sink = job.json(&format!("/jobs/{id}/vertices/out/backpressure"));
    assert_eq!(
        sink["backpressure-level"], "ok",
        "nothing waits downstream of the sink"
    );

    let metrics = job.json(&format!(
        "/jobs/{id}/metrics?get=numberOfCompletedCheckpoints,lastCheckpointDuration"
    ));
    let ids: Vec<&str> = metrics
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["numberOfCompletedCheckpoints", "lastCheckpointDuration"]
    );
    let busy =
        job.json("/jobs/rest/vertices/count/metrics?get=0.busyTimeMsPerSecond,1.numRecordsIn");
    assert_eq!(busy.as_array().map(Vec::len), Some(2), "{busy:#}");

    let diagnosis = job.json(&format!("/jobs/{id}/checkpoints/details/{cid}/diagnosis"));
    assert_eq!(diagnosis["checkpoint"], cid, "{diagnosis:#}");
    assert!(diagnosis["findings"].is_array(), "{diagnosis:#}");
    assert!(
        diagnosis["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("checkpoint {cid}"))),
        "{diagnosis:#}"
    );

    let vertex = job.json("/jobs/rest/vertices/count");
    assert_eq!(vertex["subtasks"].as_array().map(Vec::len), Some(2));

    let (status, body) = job.request("GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE weir_task_numRecordsIn_total counter"),
        "{body}"
    );

    for (path, needle) in [
        ("/jobs/nope", "there is no job nope"),
        (
            "/jobs/rest/vertices/nope/backpressure",
            "has no vertex nope",
        ),
        (
            "/jobs/rest/checkpoints/details/99999",
            "no statistics of checkpoint 99999",
        ),
        ("/nowhere", "there is no endpoint /nowhere"),
    ] {
        let (status, body) = job.request("GET", path, &[]);
        assert_eq!(status, 404, "{path}: {body}");
        let errors: Value = serde_json::from_str(&body).expect("JSON");
        let text = errors["errors"][0].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{path}: {body}");
    }

    let (status, body) = job.request("PATCH", &format!("/jobs/{id}?mode=cancel"), &[]);
    assert_eq!(status, 202, "{body}");
    let log_before = job.log();
    let exit = job.wait(WAIT);
    assert_eq!(
        exit.code(),
        Some(130),
        "a cancelled job exits as on Ctrl-C:\n{log_before}"
    );
}

#[test]
fn a_failed_checkpoint_carries_its_reason_in_the_api_and_in_checkpoints_list() {
    let scratch = Scratch::new();
    // Barriers queue behind the back-pressured channels far longer than 10 ms.
    let job = start(
        &scratch,
        &job("timeout = \"10ms\"\ntolerable-failed = 1000", ""),
        &[],
    );
    let failed = || job.json("/jobs/rest/checkpoints")["latest"]["failed"].clone();
    assert!(
        eventually(WAIT, || failed().is_object()),
        "no checkpoint failed:\n{}",
        job.log()
    );
    let failed = failed();
    assert_eq!(failed["status"], "FAILED");
    let reason = failed["failure_message"]
        .as_str()
        .expect("a reason")
        .to_owned();
    assert!(reason.contains("not complete after"), "{reason}");
    let id = failed["id"].as_u64().expect("an id");
    assert!(job.json("/jobs/rest/checkpoints")["counts"]["failed"].as_u64() >= Some(1));

    // The statistics are stored after each failure, so the list names it.
    let listed = eventually(WAIT, || {
        let out = scratch.run(&["checkpoints", "list", "checkpoints/rest"]);
        String::from_utf8_lossy(&out.stdout).contains("failed: not complete after")
    });
    let out = scratch.run(&["checkpoints", "list", "checkpoints/rest"]);
    assert!(
        listed,
        "checkpoint {id} is not listed as failed:\n{}",
        weir_tests::describe(&out)
    );
}

#[test]
fn checkpoint_statistics_survive_a_crash_and_a_resume() {
    let scratch = Scratch::new();
    let text = job("", "");
    let mut job = start(&scratch, &text, &[]);
    assert!(eventually(WAIT, || completed(&job) >= 3), "{}", job.log());
    // The statistics are written after each checkpoint: wait until storage has them.
    let stored =
        || std::fs::read(scratch.path().join("checkpoints/rest/_checkpoint-stats")).is_ok();
    assert!(
        eventually(WAIT, stored),
        "no statistics stored:\n{}",
        job.log()
    );
    let before = job.json("/jobs/rest/checkpoints");
    job.kill();

    let job = start(&scratch, &text, &["--from-checkpoint", "latest"]);
    let resumed = eventually(WAIT, || {
        job.json("/jobs/rest/checkpoints")["counts"]["restored"] == 1
    });
    let after = job.json("/jobs/rest/checkpoints");
    assert!(resumed, "{after:#}\n{}", job.log());
    let restored = after["latest"]["restored"]["id"]
        .as_u64()
        .expect("a restored id");
    let ids = |v: &Value| -> Vec<u64> {
        v["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|c| c["id"].as_u64())
            .collect()
    };
    let earlier = ids(&before);
    assert!(
        earlier.contains(&restored),
        "checkpoint {restored} is not one of the crashed run's {earlier:?}"
    );
    for id in earlier.iter().filter(|&&id| id <= restored) {
        assert!(
            ids(&after).contains(id),
            "checkpoint {id} is missing after the resume: {after:#}"
        );
    }
    assert!(
        after["counts"]["completed"].as_u64() >= before["counts"]["completed"].as_u64(),
        "{after:#}"
    );
}

#[test]
fn beyond_loopback_only_the_token_holder_may_cancel_the_job() {
    let scratch = Scratch::new();
    let mut job = start(
        &scratch,
        &job("", "address = \"0.0.0.0\"\ntoken = \"t0ken-for-tests\""),
        &[],
    );
    // It listens on every interface; the test reaches it on loopback.
    job.address = job.address.replace("0.0.0.0", "127.0.0.1");
    let running = |job: &RunningJob| {
        job.json("/jobs").pointer("/jobs/0/status") == Some(&Value::from("RUNNING"))
    };
    assert!(eventually(WAIT, || running(&job)), "{}", job.log());
    let (status, body) = job.request("PATCH", "/jobs/rest", &[]);
    assert_eq!(status, 401, "{body}");
    let (status, body) = job.request("PATCH", "/jobs/rest", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 403, "{body}");
    assert!(running(&job), "a refused cancel changes nothing");
    let (status, body) = job.request(
        "PATCH",
        "/jobs/rest",
        &[("Authorization", "Bearer t0ken-for-tests")],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(job.wait(WAIT).code(), Some(130));
}

#[test]
fn beyond_loopback_without_a_token_nothing_may_change_the_job() {
    let scratch = Scratch::new();
    let mut job = start(&scratch, &job("", "address = \"0.0.0.0\""), &[]);
    job.address = job.address.replace("0.0.0.0", "127.0.0.1");
    let (status, body) = job.request("PATCH", "/jobs/rest", &[("Authorization", "Bearer x")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no token is set"), "{body}");
    assert!(job.log().contains("without a token"), "{}", job.log());
}

/// A job whose operator burns in `hostile::burn` on every record.
fn burning_job() -> String {
    format!(
        r#"[job]
name = "flame"

[rest]
port = 0

[[source]]
id = "gen"
kind = "generator"
keys = 10

[[operator]]
id = "burn"
wasm = "{hostile}"
inputs = ["gen"]
config = '{{"process": "burn", "burn": 2000000}}'
fuel-per-record = 0

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["burn"]
"#,
        hostile = toml_path(&guest("hostile")),
    )
}

#[test]
fn a_flame_graph_and_a_stack_dump_show_the_guests_own_functions() {
    let scratch = Scratch::new();
    let job = start(&scratch, &burning_job(), &[]);
    let running = eventually(WAIT, || {
        job.json("/jobs/flame/vertices/burn")["subtasks"][0]["metrics"]["read-records"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert!(running, "the operator never ran:\n{}", job.log());
    let first = job.json("/jobs/flame/vertices/burn/flamegraph");
    assert_eq!(first["endTimestamp"], -3, "Flink's \"waiting\": {first:#}");
    let sampled = eventually(WAIT, || {
        let answer = job.json("/jobs/flame/vertices/burn/flamegraph");
        answer["endTimestamp"].as_i64().is_some_and(|t| t > 0)
    });
    assert!(sampled, "no flame graph:\n{}", job.log());
    let graph = job.json("/jobs/flame/vertices/burn/flamegraph");
    assert_eq!(graph["data"]["name"], "root");
    assert!(graph["data"]["value"].as_u64() > Some(0), "{graph:#}");
    assert!(
        graph.to_string().contains("hostile::burn"),
        "the guest's function is in the graph: {graph:#}"
    );
    let (status, body) = job.request("GET", "/jobs/flame/vertices/gen/flamegraph", &[]);
    assert_eq!(status, 200, "{body}");
    let refused = eventually(WAIT, || {
        job.request("GET", "/jobs/flame/vertices/gen/flamegraph", &[])
            .0
            == 409
    });
    assert!(refused, "a native source has no guest to sample");

    let dump = job.json("/jobs/flame/stacks");
    let burning = dump["subtasks"]
        .as_array()
        .expect("subtasks")
        .iter()
        .find(|s| s["name"] == "burn")
        .expect("the operator's subtask")
        .clone();
    assert_fields(
        &burning,
        &["threadName", "activity", "guest"],
        "a subtask's stack",
    );

    let out = scratch.run(&["stack", &format!("http://{}", job.address)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", weir_tests::describe(&out));
    assert!(text.contains("\"burn (1/1)\""), "{text}");
    assert!(text.contains("\"gen (1/1)\""), "{text}");
    // The burn takes most of each call, so most dumps catch it inside the guest.
    let caught = eventually(WAIT, || {
        let out = scratch.run(&["stack", &format!("http://{}", job.address)]);
        String::from_utf8_lossy(&out.stdout).contains("at hostile::burn")
    });
    assert!(caught, "no dump showed the guest's frame:\n{text}");
}
