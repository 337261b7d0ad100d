//! A slow sink back-pressures an unbounded source: memory stays bounded, and Ctrl-C
//! stops the job cleanly.

use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_tests::{Scratch, guest, peak_rss_kib, toml_path};

#[test]
fn a_slow_sink_keeps_memory_bounded_and_ctrl_c_stops_the_job() {
    let scratch = Scratch::new();
    // 10 KB records from an unbounded generator: unthrottled, it would produce well over
    // a gigabyte per second. The sink takes 2000 records/s.
    let job = scratch.write(
        "job.toml",
        format!(
            r#"[job]
name = "backpressure"

[[source]]
id = "gen"
kind = "generator"
value-size = 10000

[[operator]]
id = "map"
wasm = "{}"
inputs = ["gen"]
config = '{{"uppercase": false}}'

[[sink]]
id = "slow"
kind = "blackhole"
rate = 2000
inputs = ["map"]
"#,
            toml_path(&guest("map_filter"))
        ),
    );
    let mut child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let pid = child.id();

    // Watch the process for a while; this measures, it does not order events.
    let watch = Duration::from_secs(6);
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < watch {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("weir exited early with {status}");
        }
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }

    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let output = child.wait_with_output().expect("weir exits after Ctrl-C");
    let stderr = String::from_utf8_lossy(&output.stderr);

    // Channels hold at most 4 batches of 1024 records each: two channels of 10 KB records
    // are ~80 MB at worst. Unbounded buffering would pass several GB in six seconds.
    let bound_kib = 400 * 1024;
    assert!(peak > 0, "could not read the memory of the weir process");
    assert!(
        peak < bound_kib,
        "peak RSS {peak} KiB exceeds {bound_kib} KiB:\n{stderr}"
    );
    assert_eq!(
        output.status.code(),
        Some(130),
        "Ctrl-C exits with 130:\n{stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
}
