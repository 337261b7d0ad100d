//! The sandbox, end to end: the `hostile` guest attacks it from inside real jobs run by
//! the real `weir` binary. Every attack is contained with a clear error and exit code,
//! none crashes or hangs the host, and the checkpoints stay consistent: the committed
//! output of a job that survives an attack is exactly-once.
//!
//! Limits are small here (fuel budgets of 10⁵, timeouts of a few hundred milliseconds)
//! so that every attack is stopped within a second.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{Scratch, describe, guest, toml_path, wait_bounded};

/// No run here should take long; one that does has hung, and is killed.
const HANG: Duration = Duration::from_secs(45);

/// Exit code of a job that failed while running.
const EXIT_FAILED: i32 = 1;

/// A job: `count` records (`rate` per second, 0 = unlimited) from a generator over 20
/// keys, through the hostile guest with `config` and the extra operator keys `keys`,
/// into a file sink, checkpointed every 100 ms.
fn job(count: u64, rate: u64, config: &str, keys: &str, extra: &str) -> String {
    format!(
        r#"[job]
name = "sandbox"

[checkpointing]
interval = "100ms"
dir = "checkpoints"
{extra}

[restart]
strategy = "none"

[[source]]
id = "numbers"
kind = "generator"
count = {count}
keys = 20
rate = {rate}

[[operator]]
id = "hostile"
wasm = "{wasm}"
inputs = ["numbers"]
partition = "key-by"
batch-size = 64
config = '{config}'
{keys}

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["hostile"]
"#,
        wasm = toml_path(&guest("hostile")),
    )
}

/// Runs `weir run` on `text` in `scratch` with `env` added, killing it after [`HANG`].
fn run(scratch: &Scratch, text: &str, env: &[(&str, &str)]) -> Output {
    let job = scratch.write("job.toml", text);
    let mut command = scratch.weir(&["run", job.to_str().unwrap_or_default()]);
    command.envs(env.iter().copied());
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    wait_bounded(child, HANG).0
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the job failed (exit 1, not a signal: the host survived) and its error says
/// every one of `needles`.
fn assert_contained(output: &Output, needles: &[&str]) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILED),
        "{}",
        describe(output)
    );
    let text = stderr(output);
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
}

/// The counter's committed output per key (counts, sorted), and the other lines.
fn committed(scratch: &Scratch) -> (BTreeMap<String, Vec<u64>>, Vec<String>) {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut other = Vec::new();
    for line in scratch.committed_lines("out") {
        match line.split_once('\t') {
            Some((key, count)) if count.parse::<u64>().is_ok() => per_key
                .entry(key.to_owned())
                .or_default()
                .push(count.parse().unwrap_or(0)),
            _ => other.push(line),
        }
    }
    for counts in per_key.values_mut() {
        counts.sort_unstable();
    }
    (per_key, other)
}

/// Asserts exactly-once: every key counted 1, 2, …, n with nothing missing or repeated,
/// `total` records in all.
fn assert_exactly_once(per_key: &BTreeMap<String, Vec<u64>>, total: usize) {
    for (key, counts) in per_key {
        let n = u64::try_from(counts.len()).unwrap_or(0);
        assert_eq!(counts, &(1..=n).collect::<Vec<_>>(), "updates of {key}");
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), total);
}

#[test]
fn an_endless_loop_runs_out_of_fuel_and_the_error_names_the_record_and_the_guest_function() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "spin", "poison-value": "37"}"#,
        "fuel-per-record = 100000",
        "",
    )
    .replace("batch-size = 64", "batch-size = 1");
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "hostile (1/1) failed",
            "`process` ran out of fuel (fuel exhausted: 100000)",
            "record 37 of this subtask's input (key \"key-",
            "wasm backtrace",
            "hostile::spin",
        ],
    );
}

#[test]
fn a_batch_that_runs_out_of_fuel_names_its_records_and_keys() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "spin", "poison-value": "37"}"#,
        "fuel-per-record = 100000",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "fuel-per-record 100000",
            "records 0..=63 of this subtask's input (keys \"key-",
            " more; with batch-size = 1 the error names the one record)",
        ],
    );
}

#[test]
fn an_endless_loop_without_fuel_is_stopped_by_the_call_timeout() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "spin", "poison-value": "37"}"#,
        "fuel-per-record = 0\ncall-timeout = \"300ms\"",
        "",
    );
    let started = Instant::now();
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "`process` ran past its call-timeout of 300ms (deadline exceeded)",
            "hostile::spin",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_memory_bomb_hits_the_memory_limit_and_the_host_survives() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "memory-bomb", "poison-value": "5"}"#,
        "memory-limit = \"16MiB\"",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "`process` grew its memory past memory-limit (16 MiB)",
            "memory-limit exceeded",
            "hostile::memory_bomb",
        ],
    );
}

#[test]
fn a_memory_limit_too_small_to_start_is_the_users_to_fix() {
    let scratch = Scratch::new();
    let text = job(10, 0, "{}", "memory-limit = \"1MiB\"", "");
    let output = run(&scratch, &text, &[]);
    assert_contained(&output, &["raise memory-limit", "a restart cannot help"]);
}

#[test]
fn deep_recursion_overflows_the_stack_and_is_reported_as_such() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "recurse", "poison-value": "5"}"#,
        "",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(&output, &["stack overflow", "hostile::recurse"]);
}

#[test]
fn an_enormous_output_is_stopped_at_the_memory_limit() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "flood", "poison-value": "5"}"#,
        "memory-limit = \"32MiB\"",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "emitted more than memory-limit (32 MiB) of records in one call",
            "output limit exceeded",
        ],
    );
}

#[test]
fn by_default_a_guest_reaches_no_file_no_network_and_no_environment() {
    let scratch = Scratch::new();
    let config = r#"{"poison-value": "3", "probes": [["read-file", "/etc/passwd"], ["list-dir", "/"], ["write-file", "/tmp/hostile-was-here"], ["connect", "127.0.0.1:9"], ["connect", "[::1]:9"], ["lookup", "localhost"], ["env", "HOME"], ["env", "PATH"]]}"#;
    let text = job(10, 0, config, "", "");
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let (per_key, probes) = committed(&scratch);
    assert_exactly_once(&per_key, 10);
    assert_eq!(probes.len(), 8, "{probes:#?}");
    for line in &probes {
        assert!(line.contains(": denied "), "{line}");
    }
    assert!(
        probes
            .iter()
            .any(|l| l.contains("env HOME: denied") && l.contains("(0 variables)")),
        "{probes:#?}"
    );
    assert!(!std::path::Path::new("/tmp/hostile-was-here").exists());
}

#[test]
fn granted_directories_and_variables_reach_exactly_what_was_granted() {
    let scratch = Scratch::new();
    scratch.write("data/in.txt", "granted line\n");
    scratch.write("secret.txt", "not for guests\n");
    scratch.write("rw/.keep", "");
    std::os::unix::fs::symlink("../secret.txt", scratch.path().join("data/escape"))
        .expect("a symlink out of the granted directory");
    std::os::unix::fs::symlink("/etc/passwd", scratch.path().join("data/absolute"))
        .expect("an absolute symlink");
    let config = r#"{"poison-value": "3", "probes": [["read-file", "/data/in.txt"], ["read-file", "/data/../secret.txt"], ["read-file", "/data/escape"], ["read-file", "/data/absolute"], ["read-file", "/secret.txt"], ["write-file", "/data/new.txt"], ["write-file", "/rw/new.txt"], ["list-dir", "/data"], ["env", "GREETING"], ["env", "WEIR_SANDBOX_PASSED"], ["env", "HOME"]]}"#;
    let keys = r#"dirs = [{ host = "data", guest = "/data" }, { host = "rw", guest = "/rw", writable = true }]
env = ["GREETING=hello", "WEIR_SANDBOX_PASSED"]"#;
    let text = job(10, 0, config, keys, "");
    let output = run(&scratch, &text, &[("WEIR_SANDBOX_PASSED", "from the host")]);
    assert!(output.status.success(), "{}", describe(&output));
    let (_, probes) = committed(&scratch);
    let find = |prefix: &str| {
        probes
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {probes:#?}"))
            .clone()
    };
    assert!(find("probe read-file /data/in.txt:").contains("ok 13 bytes: granted line"));
    for escape in [
        "/data/../secret.txt",
        "/data/escape",
        "/data/absolute",
        "/secret.txt",
    ] {
        let line = find(&format!("probe read-file {escape}:"));
        assert!(line.contains("denied"), "{line}");
        assert!(
            !line.contains("not for guests") && !line.contains("root:"),
            "{line}"
        );
    }
    assert!(find("probe write-file /data/new.txt:").contains("denied"));
    assert!(!scratch.path().join("data/new.txt").exists());
    assert!(find("probe write-file /rw/new.txt:").contains("ok written"));
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("rw/new.txt")).ok(),
        Some("written by hostile\n".to_owned())
    );
    assert!(find("probe list-dir /data:").contains("ok absolute,escape,in.txt"));
    assert!(find("probe env GREETING:").contains("ok hello (2 variables)"));
    assert!(find("probe env WEIR_SANDBOX_PASSED:").contains("ok from the host"));
    assert!(find("probe env HOME:").contains("denied"));
}

#[test]
fn a_trap_inside_snapshot_state_fails_the_job_with_the_function_named() {
    let scratch = Scratch::new();
    let text = job(1_000_000, 2000, r#"{"snapshot": "trap"}"#, "", "");
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &["the operator trapped in `snapshot-state`", "wasm backtrace"],
    );
}

#[test]
fn a_guest_sleeping_in_open_is_stopped_at_the_call_timeout() {
    let scratch = Scratch::new();
    let text = job(
        10,
        0,
        r#"{"open": "sleep"}"#,
        "call-timeout = \"300ms\"",
        "",
    );
    let started = Instant::now();
    let output = run(&scratch, &text, &[]);
    assert_contained(&output, &["`open` ran past its call-timeout of 300ms"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_guest_sleeping_in_snapshot_state_past_the_call_timeout_is_stopped() {
    let scratch = Scratch::new();
    let text = job(
        1_000_000,
        2000,
        r#"{"snapshot": "sleep"}"#,
        "call-timeout = \"300ms\"",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &["`snapshot-state` ran past its call-timeout of 300ms"],
    );
}

#[test]
fn a_slow_snapshot_declines_its_checkpoint_and_later_ones_complete_exactly_once() {
    let scratch = Scratch::new();
    let text = job(
        3000,
        3000,
        r#"{"snapshot": "sleep", "sleep-ms": 400, "snapshot-times": 2}"#,
        "sync-phase-timeout = \"150ms\"\ncall-timeout = \"2s\"",
        "tolerable-failed = 2",
    );
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stderr(&output);
    assert!(
        text.contains("operator `hostile`, subtask 1/1: the synchronous phase of checkpoint"),
        "{text}"
    );
    assert!(
        text.contains("over its sync-phase-timeout of 150ms"),
        "{text}"
    );
    assert!(text.contains("checkpoint completed"), "{text}");
    assert!(!text.contains("Restarting"), "{text}");
    let (per_key, _) = committed(&scratch);
    assert_exactly_once(&per_key, 3000);
}

#[test]
fn a_snapshot_over_its_fuel_limit_declines_its_checkpoint() {
    let scratch = Scratch::new();
    let text = job(
        3000,
        3000,
        r#"{"snapshot": "burn", "burn": 1000000, "snapshot-times": 1}"#,
        "sync-phase-fuel = 100000",
        "tolerable-failed = 1",
    );
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stderr(&output);
    assert!(
        text.contains("fuel in `snapshot-state`, over its sync-phase-fuel of 100000"),
        "{text}"
    );
    let (per_key, _) = committed(&scratch);
    assert_exactly_once(&per_key, 3000);
}

#[test]
fn a_runaway_record_fails_the_job_through_the_restart_strategy_by_default() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "spin", "poison-value": "500"}"#,
        "fuel-per-record = 100000",
        "",
    )
    .replace(
        "strategy = \"none\"",
        "strategy = \"fixed-delay\"\nattempts = 1\ndelay = \"100ms\"",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(&output, &["Restarting", "gave up", "ran out of fuel"]);
}

/// The dead-letter file's entries, in order.
fn dead_letters(scratch: &Scratch) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(scratch.path().join("dead-letter/hostile.jsonl"))
        .unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn poison_records_are_dead_lettered_while_checkpoints_keep_completing() {
    let scratch = Scratch::new();
    // A poison record every second (records 2999, 5999, 8999 at 3000 records/s).
    let text = job(
        9000,
        3000,
        r#"{"process": "spin", "poison-every": 3000}"#,
        "fuel-per-record = 100000\non-runaway = \"dead-letter\"",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stderr(&output);
    assert!(!text.contains("Restarting"), "{text}");
    let letters = dead_letters(&scratch);
    let values: Vec<&str> = letters.iter().filter_map(|l| l["value"].as_str()).collect();
    assert_eq!(values, ["2999", "5999", "8999"], "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter["operator"], "hostile");
        assert_eq!(letter["function"], "process");
        assert!(
            letter["error"]
                .as_str()
                .is_some_and(|e| e.contains("fuel exhausted")),
            "{letter}"
        );
        assert!(
            letter["backtrace"]
                .as_str()
                .is_some_and(|b| b.contains("hostile::spin")),
            "{letter}"
        );
    }
    // Checkpoints every 100 ms over three seconds: they kept completing between the
    // poison records (and the job never restarted).
    let completed = text.matches("checkpoint completed").count();
    assert!(completed >= 10, "only {completed} checkpoints completed");
    let (per_key, _) = committed(&scratch);
    assert_exactly_once(&per_key, 9000 - 3);
}

#[test]
fn a_loop_on_one_key_dead_letters_exactly_that_keys_records() {
    let scratch = Scratch::new();
    let text = job(
        400,
        0,
        r#"{"process": "spin", "poison-key": "key-7"}"#,
        "fuel-per-record = 100000\non-runaway = \"dead-letter\"",
        "",
    );
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let letters = dead_letters(&scratch);
    assert!(!letters.is_empty());
    assert!(letters.iter().all(|l| l["key"] == "key-7"), "{letters:#?}");
    let (per_key, _) = committed(&scratch);
    assert!(!per_key.contains_key("key-7"));
    assert_exactly_once(&per_key, 400 - letters.len());
}

#[test]
fn the_fuel_of_the_synchronous_phase_is_in_the_checkpoint_statistics() {
    let scratch = Scratch::new();
    let text = job(
        3000,
        3000,
        "{}",
        "",
        "num-retained = 3\nretention = \"retain-on-cancellation\"",
    );
    let output = run(&scratch, &text, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let list = scratch.run(&["checkpoints", "list", "checkpoints"]);
    assert!(list.status.success(), "{}", describe(&list));
    let table = String::from_utf8_lossy(&list.stdout).into_owned();
    // The oldest retained checkpoint: the final one found the operator finished.
    let id = table
        .lines()
        .skip(1)
        .filter(|l| l.contains("completed"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .min()
        .unwrap_or_else(|| panic!("no completed checkpoint in:\n{table}"))
        .to_string();
    let show = scratch.run(&["checkpoints", "show", "checkpoints/sandbox", &id]);
    assert!(show.status.success(), "{}", describe(&show));
    let table = String::from_utf8_lossy(&show.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.starts_with("hostile (1/1)"))
        .unwrap_or_else(|| panic!("no row for the operator in:\n{table}"));
    let fuel = row.split_whitespace().last().unwrap_or("-");
    assert!(
        fuel.chars().all(|c| c.is_ascii_digit() || c == ',') && fuel != "0",
        "SYNC FUEL is `{fuel}` in:\n{table}"
    );
}

#[test]
fn dead_letter_falls_back_to_failing_with_a_backend_that_cannot_restore_in_memory() {
    let scratch = Scratch::new();
    let text = job(
        1000,
        0,
        r#"{"process": "spin", "poison-value": "500"}"#,
        "fuel-per-record = 100000\non-runaway = \"dead-letter\"",
        "",
    )
    .replace(
        "[restart]",
        "[state]\nbackend = \"rocksdb\"\ndir = \"state\"\n\n[restart]",
    );
    let output = run(&scratch, &text, &[]);
    assert_contained(
        &output,
        &[
            "ran out of fuel",
            "on-runaway = \"dead-letter\" could not apply",
            "in memory",
        ],
    );
    assert!(dead_letters(&scratch).is_empty());
}
