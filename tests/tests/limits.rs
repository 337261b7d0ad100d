//! What the host keeps on a guest's behalf is bounded by the job file: keyed state on the
//! heap (`[state] heap-limit`), pending timers (`[state] timer-limit`), open state
//! handles (a fixed limit), and what one call may copy from the guest (`memory-limit`).
//! Hostile guests from `tests/guests/hostile` grow each without end; the real `weir`
//! binary stops them with an error that names the limit, and its memory stays small.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{Scratch, describe, guest, toml_path, wait_bounded};

/// No run here should take long; one that does has not been stopped, and is killed.
const HANG: Duration = Duration::from_secs(60);

/// Exit code of a job that failed while running.
const EXIT_FAILED: i32 = 1;

/// A job of 1000 keyed records through the hostile guest with `config`, at parallelism
/// 1 (every key is the subtask's), with `state` as its `[state]` section.
fn hostile_job(config: &str, state: &str) -> String {
    format!(
        r#"[job]
name = "limits"

[state]
{state}

[[source]]
id = "numbers"
kind = "generator"
count = 1000
keys = 20

[[operator]]
id = "hostile"
wasm = "{wasm}"
inputs = ["numbers"]
partition = "key-by"
config = '{config}'

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["hostile"]
"#,
        wasm = toml_path(&guest("hostile")),
    )
}

/// Runs `weir run` on `text`, sampling its peak resident memory until it exits; kills
/// it and fails the test after [`HANG`]. The output, and the peak in MiB.
fn run_measured(scratch: &Scratch, text: &str) -> (Output, u64) {
    let job = scratch.write("job.toml", text);
    let child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    wait_bounded(child, HANG)
}

/// Asserts the job failed (exit 1: the host survived, and said why) and its error says
/// every one of `needles`.
fn assert_failed_saying(output: &Output, needles: &[&str]) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILED),
        "{}",
        describe(output)
    );
    let text = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
}

#[test]
fn keyed_state_without_end_stops_at_the_heap_limit_and_the_host_stays_small() {
    let scratch = Scratch::new();
    let text = hostile_job(
        r#"{"process": "state-hog", "poison-value": "5"}"#,
        "heap-limit = \"64MiB\"",
    );
    let (output, peak_mib) = run_measured(&scratch, &text);
    assert_failed_saying(
        &output,
        &[
            "hostile",
            "`process` went over a state limit",
            "keyed state `count`",
            "heap-limit = \"64MiB\"",
            "backend = \"rocksdb\"",
        ],
    );
    // 64 MiB of state, a 256 MiB guest memory limit, the runtime: far below what an
    // unbounded guest reaches (it grew the host by 770 MB/s).
    assert!(peak_mib < 1024, "the host grew to {peak_mib} MiB");
}

#[test]
fn timers_without_end_stop_at_the_timer_limit() {
    let scratch = Scratch::new();
    let text = hostile_job(
        r#"{"process": "timer-hog", "poison-value": "5"}"#,
        "timer-limit = 100000",
    );
    let (output, peak_mib) = run_measured(&scratch, &text);
    assert_failed_saying(
        &output,
        &["`process` went over a state limit", "timer-limit = 100000"],
    );
    assert!(peak_mib < 1024, "the host grew to {peak_mib} MiB");
}

#[test]
fn opening_states_without_end_is_refused_at_the_handle_limit_quickly() {
    let scratch = Scratch::new();
    let text = hostile_job(r#"{"open": "handle-hog"}"#, "");
    let started = Instant::now();
    let (output, _) = run_measured(&scratch, &text);
    assert_failed_saying(
        &output,
        &[
            "cannot open state `s10000`",
            "10000 open state handles, the most one may",
        ],
    );
    // Opening is one lookup; 10,000 opens must not take the 46 s they did when each
    // open searched every state opened before. Generous, to stay robust on a slow CI
    // machine: the run takes well under a second.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "opening 10,000 states took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_record_of_200_mib_passes_through_a_guest_with_a_memory_limit_of_1_gib() {
    let scratch = Scratch::new();
    let text = format!(
        r#"[job]
name = "big-record"

[[source]]
id = "big"
kind = "generator"
count = 2
keys = 1
value-size = 209715200

[[operator]]
id = "map"
wasm = "{wasm}"
inputs = ["big"]
batch-size = 1
memory-limit = "1GiB"
# Uppercasing 200 MiB takes more than the default fuel; the copy budget is what is tested.
fuel-per-record = 0
config = '{{"uppercase": true}}'

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["map"]
"#,
        wasm = toml_path(&guest("map_filter")),
    );
    let (output, _) = run_measured(&scratch, &text);
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn a_heap_limit_with_the_rocksdb_backend_is_refused_as_a_setting_that_does_nothing() {
    let scratch = Scratch::new();
    let text = hostile_job("{}", "backend = \"rocksdb\"\nheap-limit = \"1GiB\"");
    let job = scratch.write("job.toml", text);
    let output = scratch.run(&["validate", job.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("heap-limit"), "{stderr}");
    assert!(stderr.contains("line"), "{stderr}");
}
