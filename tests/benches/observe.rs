//! What watching a job costs: the same bounded keyed count through the real `weir`
//! binary, once with nobody asking and once with a client polling the REST API and
//! `/metrics` ten times a second (five times what the web page asks), alternated three
//! times each; the median throughput of each and their ratio (target ≥ 0.98).
//!
//! `WEIR_BENCH_RECORDS` sets the records per run (default 10 million).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_tests::{RunningJob, Scratch, guest, toml_path};

/// The endpoints a watcher reads on each round: what the web page and a Prometheus
/// scrape ask for.
const POLLED: [&str; 6] = [
    "/jobs/bench",
    "/jobs/bench/checkpoints",
    "/jobs/bench/vertices/gen/backpressure",
    "/jobs/bench/vertices/count/backpressure",
    "/jobs/bench/vertices/count/metrics?get=0.busyTimeMsPerSecond",
    "/metrics",
];

fn job(records: u64) -> String {
    format!(
        r#"[job]
name = "bench"

[checkpointing]
interval = "1s"
dir = "checkpoints"

[rest]
port = 0

[[source]]
id = "gen"
kind = "generator"
count = {records}
keys = 100000

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["gen"]
partition = "key-by"

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["count"]
"#,
        counter = toml_path(&guest("word_count_counter")),
    )
}

/// One run: records per second, and the requests the watcher made.
fn run(records: u64, watched: bool) -> (f64, u64) {
    let scratch = Scratch::new();
    scratch.write("job.toml", job(records));
    let started = Instant::now();
    let job = RunningJob::start(&scratch, &["run", "job.toml"]);
    let (stop, requests) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = watched.then(|| {
        let (stop, requests, address) = (stop.clone(), requests.clone(), job.address.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for path in POLLED {
                    if weir_tests::http(&address, "GET", path, &[]).is_ok() {
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let status = job.wait(Duration::from_secs(600));
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    assert!(status.success(), "the benchmark job failed: {status}");
    (records as f64 / elapsed, requests.load(Ordering::Relaxed))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("keyed count through `weir run`, {records} records, 1 s checkpoints");
    let (mut quiet, mut watched, mut requests) = (Vec::new(), Vec::new(), 0);
    for round in 1..=3 {
        let (q, _) = run(records, false);
        let (w, r) = run(records, true);
        println!(
            "  round {round}: unwatched {:.2} M records/s, watched {:.2} M records/s ({r} requests)",
            q / 1e6,
            w / 1e6
        );
        quiet.push(q);
        watched.push(w);
        requests += r;
    }
    let (q, w) = (median(quiet), median(watched));
    println!(
        "median: unwatched {:.2} M records/s, watched {:.2} M records/s, ratio {:.3} (target ≥ 0.98); {requests} requests in all",
        q / 1e6,
        w / 1e6,
        w / q
    );
}
