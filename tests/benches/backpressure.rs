//! Checkpoints under backpressure: a generator into a sink limited to 3,000 records/s,
//! over full channels (generator → map → sink, every edge a channel), checkpointing
//! every 500 ms for `WEIR_BENCH_SECONDS` (default 12) in each of four ways: aligned
//! (the baseline), unaligned, aligned with a 100 ms timeout, and aligned with buffer
//! debloating to 200 ms. Prints each way's completed checkpoints, their median
//! end-to-end duration and the sink's median start delay, and the ratio of the median
//! duration to the aligned one, measured in the same run (targets: unaligned ≤ 0.25×
//! aligned; debloated ≤ 0.5×, since an aligned barrier still waits about `target` per
//! back-pressured hop).

use std::time::Duration;
use weir_tests::{RunningJob, Scratch, guest, toml_path};

fn job(extra: &str, network: &str) -> String {
    format!(
        r#"[job]
name = "bench"

[checkpointing]
interval = "500ms"
dir = "checkpoints"
{extra}

{network}

[rest]
port = 0

[[source]]
id = "gen"
kind = "generator"
value-size = 100

[[operator]]
id = "map"
wasm = "{map}"
inputs = ["gen"]
partition = "rebalance"
config = '{{"uppercase": false}}'

[[sink]]
id = "out"
kind = "blackhole"
rate = 3000
inputs = ["map"]
partition = "rebalance"
"#,
        map = toml_path(&guest("map_filter")),
    )
}

/// Runs one way for `seconds`; the completed checkpoints, the median end-to-end
/// duration and the median start delay at the sink, in milliseconds.
fn run(text: &str, seconds: u64) -> (u64, f64, f64) {
    let scratch = Scratch::new();
    scratch.write("job.toml", text);
    let job = RunningJob::start(&scratch, &["run", "job.toml"]);
    std::thread::sleep(Duration::from_secs(seconds));
    let checkpoints = job.json("/jobs/bench/checkpoints");
    let completed = checkpoints["counts"]["completed"].as_u64().unwrap_or(0);
    let mut durations: Vec<f64> = Vec::new();
    let mut delays: Vec<f64> = Vec::new();
    for entry in checkpoints["history"].as_array().into_iter().flatten() {
        if entry["status"] != "COMPLETED" {
            continue;
        }
        durations.push(entry["end_to_end_duration"].as_f64().unwrap_or(0.0));
        let id = entry["id"].as_u64().unwrap_or(0);
        let detail = job.json(&format!(
            "/jobs/bench/checkpoints/details/{id}/subtasks/out"
        ));
        for subtask in detail["subtasks"].as_array().into_iter().flatten() {
            delays.push(subtask["start_delay"].as_f64().unwrap_or(0.0));
        }
    }
    let _ = job.cancel("bench", Duration::from_secs(30));
    (completed, median(&mut durations), median(&mut delays))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let seconds = std::env::var("WEIR_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    println!(
        "checkpoints every 500 ms under backpressure (a sink at 3000 records/s behind full channels), {seconds} s each"
    );
    let debloat =
        "[network.buffer-debloat]\nenabled = true\ntarget = \"200ms\"\nperiod = \"100ms\"";
    let ways = [
        ("aligned", job("", "")),
        ("unaligned", job("unaligned = true", "")),
        (
            "aligned-timeout 100ms",
            job("unaligned = true\naligned-timeout = \"100ms\"", ""),
        ),
        ("debloat 200ms", job("", debloat)),
    ];
    let mut baseline = f64::NAN;
    for (name, text) in ways {
        let (completed, duration, delay) = run(&text, seconds);
        if name == "aligned" {
            baseline = duration;
        }
        println!(
            "  {name:<22} {completed:>3} completed   end-to-end p50 {duration:>7.0} ms   sink start delay p50 {delay:>7.0} ms   /aligned {:.2}",
            duration / baseline
        );
    }
    println!("  (targets: unaligned ≤ 0.25× aligned; debloat ≤ 0.5×, about `target` per hop)");
}
