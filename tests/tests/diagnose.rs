//! `weir checkpoints diagnose` on real jobs whose slow stage is forced: a guest that
//! computes in `snapshot-state` is diagnosed as a slow sync phase, a rate-limited sink as
//! backpressure (a start delay), and one hot key with large values as key skew. Each job
//! runs until a few checkpoints have completed and is then killed; the diagnosis reads
//! the latest completed one, as a user's would.

use std::process::Output;
use std::time::Duration;
use weir_tests::{Scratch, describe, guest, run_until_checkpoints, toml_path};

/// How long a test waits for checkpoints a job completes within a second or two.
const WAIT: Duration = Duration::from_secs(60);

/// Exit code of a checkpoint that cannot be read.
const EXIT_FAILED: i32 = 1;

/// Runs the job `text` (named `name`) until its checkpoint `checkpoint` (or a later one:
/// retention keeps only the latest) has completed, then kills it.
fn run_until_checkpoint(scratch: &Scratch, name: &str, text: &str, checkpoint: u64) {
    run_until_checkpoints(scratch, name, text, WAIT, |done| {
        done.last().is_some_and(|(n, _)| *n >= checkpoint)
    });
}

/// `weir checkpoints diagnose checkpoints`, as text (for a person, and for failure
/// messages) and as JSON.
fn diagnose(scratch: &Scratch) -> (String, serde_json::Value) {
    let text = scratch.run(&["checkpoints", "diagnose", "checkpoints"]);
    assert!(text.status.success(), "{}", describe(&text));
    let json = scratch.run(&["checkpoints", "diagnose", "checkpoints", "--json"]);
    assert!(json.status.success(), "{}", describe(&json));
    let value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("the JSON does not parse: {e}\n{}", describe(&json)));
    (String::from_utf8_lossy(&text.stdout).into_owned(), value)
}

/// The text with every run of whitespace as one space, for phrases that may wrap.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `kind` of every finding, most important first.
fn kinds(diagnosis: &serde_json::Value) -> Vec<&str> {
    diagnosis["findings"]
        .as_array()
        .map(|findings| findings.iter().filter_map(|f| f["kind"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn a_guest_computing_in_snapshot_state_is_diagnosed_as_a_slow_sync_phase_with_its_fuel() {
    let scratch = Scratch::new();
    // `burn` runs 10^8 loop iterations in every `snapshot-state`: a few hundred
    // milliseconds and a few hundred million fuel, far above every other stage.
    let job = format!(
        r#"[job]
name = "sync"

[checkpointing]
interval = "100ms"
dir = "checkpoints"

[[source]]
id = "numbers"
kind = "generator"
keys = 20
rate = 1000

[[operator]]
id = "hostile"
wasm = "{}"
inputs = ["numbers"]
partition = "key-by"
config = '{{"snapshot": "burn"}}'

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["hostile"]
"#,
        toml_path(&guest("hostile"))
    );
    run_until_checkpoint(&scratch, "sync", &job, 2);
    let (text, diagnosis) = diagnose(&scratch);
    let said = flat(&text);

    assert_eq!(kinds(&diagnosis).first(), Some(&"sync"), "{text}");
    let finding = &diagnosis["findings"][0];
    assert_eq!(finding["slowest"]["subtask"]["node"], "hostile", "{text}");
    assert!(
        finding["syncFuel"].as_u64().unwrap_or(0) > 100_000_000,
        "{text}"
    );
    assert_eq!(diagnosis["slowest"]["stage"], "sync", "{text}");
    assert!(
        said.contains("1. Sync phase: hostile (1/1) spent") && said.contains("fuel in the guest"),
        "{text}"
    );
    assert!(said.contains("the guest's `snapshot-state`"), "{text}");
}

#[test]
fn a_rate_limited_sink_is_diagnosed_as_backpressure_shown_by_its_start_delay() {
    let scratch = Scratch::new();
    // An unpaced generator into a sink that takes 20,000 records/s, in a thread of its
    // own: the channel before it stays full (4 batches of 1024 records), and a barrier
    // waits behind them for a fifth of a second or more.
    let job = format!(
        r#"[job]
name = "backpressure"

[checkpointing]
interval = "100ms"
dir = "checkpoints"

[[source]]
id = "numbers"
kind = "generator"

[[operator]]
id = "map"
wasm = "{}"
inputs = ["numbers"]
config = '{{"uppercase": false}}'

[[sink]]
id = "slow"
kind = "blackhole"
rate = 20000
chaining = false
inputs = ["map"]
"#,
        toml_path(&guest("map_filter"))
    );
    run_until_checkpoint(&scratch, "backpressure", &job, 2);
    let (text, diagnosis) = diagnose(&scratch);
    let said = flat(&text);

    assert_eq!(kinds(&diagnosis).first(), Some(&"startDelay"), "{text}");
    let finding = &diagnosis["findings"][0];
    assert_eq!(finding["slowest"]["subtask"]["node"], "slow", "{text}");
    // The delay builds up in front of the sink, not at the source.
    let delay = |node: &str| {
        finding["byNode"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
            .and_then(|n| n["startDelay"].as_f64())
            .unwrap_or_else(|| panic!("no start delay of {node} in\n{text}"))
    };
    assert!(delay("slow") > delay("numbers"), "{text}");
    assert!(
        said.contains("1. Start delay: the barrier reached slow (1/1)"),
        "{text}"
    );
    assert!(said.contains("Backpressure upstream of slow"), "{text}");

    // A checkpoint that is not there gets the error `show` gives.
    let missing: Output = scratch.run(&["checkpoints", "diagnose", "checkpoints", "999999"]);
    assert_eq!(
        missing.status.code(),
        Some(EXIT_FAILED),
        "{}",
        describe(&missing)
    );
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(error.contains("there is no checkpoint 999999"), "{error}");
}

#[test]
fn one_hot_key_with_large_values_is_diagnosed_as_key_skew() {
    let scratch = Scratch::new();
    // Every record has the key `key-0` and a 1.5 MB value, which `latest` keeps: one of
    // its two subtasks holds 1.5 MB of state, the other none. Fuel is off, since copying
    // 1.5 MB through the guest's serialisation takes more than a record's default budget.
    let job = format!(
        r#"[job]
name = "skew"

[checkpointing]
interval = "100ms"
dir = "checkpoints"

[[source]]
id = "hot"
kind = "generator"
keys = 1
value-size = 1500000
rate = 20

[[operator]]
id = "latest"
wasm = "{}"
inputs = ["hot"]
partition = "key-by"
parallelism = 2
fuel-per-record = 0

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["latest"]
"#,
        toml_path(&guest("latest"))
    );
    run_until_checkpoint(&scratch, "skew", &job, 3);
    let (text, diagnosis) = diagnose(&scratch);
    let said = flat(&text);

    assert!(kinds(&diagnosis).contains(&"keySkew"), "{text}");
    let skew = diagnosis["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["kind"] == "keySkew"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(skew["subtask"]["node"], "latest", "{text}");
    assert_eq!(skew["numSubtasks"], 2, "{text}");
    let state = skew["stateSize"].as_u64().unwrap_or(0);
    let median = skew["medianStateSize"].as_u64().unwrap_or(u64::MAX);
    assert!(state >= 1_500_000 && median < 1_000, "{text}");
    assert!(said.contains("Key skew: latest ("), "{text}");
    assert!(said.contains("a hot key"), "{text}");
}
