//! Checkpoints under backpressure: a fast generator feeds a sink limited to a few
//! thousand records a second, over channels, so that every channel is full. Checkpoints
//! complete aligned, unaligned (and then carry the in-flight records as channel state),
//! aligned with a timeout (and then some turn unaligned), and with buffer debloating. A
//! checkpoint's channel state replays on restore, or is dropped when
//! `recover-without-channel-state` names it.

use std::path::Path;
use std::time::Duration;
use weir_tests::{
    Scratch, channel_state_files, completed_checkpoints, describe, run_until_checkpoints, toml_path,
};

/// How long a test waits for checkpoints that take a second or two each.
const WAIT: Duration = Duration::from_secs(90);

/// The job: generator → map → slow sink, every edge a channel (rebalance), three
/// records of 100 bytes a millisecond into the sink. `extra` goes into
/// `[checkpointing]`, `network` after it.
fn job(name: &str, extra: &str, network: &str, sink: &str) -> String {
    format!(
        r#"[job]
name = "{name}"

[checkpointing]
interval = "200ms"
dir = "checkpoints"
num-retained = 20
{extra}

{network}

[[source]]
id = "gen"
kind = "generator"
value-size = 100
{count}

[[operator]]
id = "map"
wasm = "{map}"
inputs = ["gen"]
partition = "rebalance"
config = '{{"uppercase": false}}'

[[sink]]
id = "out"
inputs = ["map"]
partition = "rebalance"
{sink}
"#,
        count = if sink.contains("file") {
            "count = 30000"
        } else {
            ""
        },
        map = toml_path(&weir_tests::guest("map_filter")),
    )
}

const SLOW_BLACKHOLE: &str = "kind = \"blackhole\"\nrate = 3000";

/// Runs `text` until `checkpoints` checkpoints have completed, then kills it (a kill
/// keeps every checkpoint).
fn run_until(scratch: &Scratch, name: &str, text: &str, checkpoints: usize) {
    run_until_checkpoints(scratch, name, text, WAIT, |done| done.len() >= checkpoints);
}

/// `weir checkpoints show` of every completed checkpoint of job `name`: (id, report).
fn shown(scratch: &Scratch, name: &str) -> Vec<(u64, String)> {
    let dir = format!("checkpoints/{name}");
    completed_checkpoints(&scratch.path().join(&dir))
        .into_iter()
        .map(|(id, _)| {
            let show = scratch.run(&["checkpoints", "show", &dir, &id.to_string()]);
            assert!(show.status.success(), "{}", describe(&show));
            (id, String::from_utf8_lossy(&show.stdout).into_owned())
        })
        .collect()
}

/// The `unaligned` line of a `weir checkpoints show` report.
fn unaligned_line(report: &str) -> &str {
    report
        .lines()
        .find(|l| l.starts_with("unaligned"))
        .unwrap_or_else(|| panic!("no unaligned line in:\n{report}"))
}

fn is_unaligned(report: &str) -> bool {
    unaligned_line(report).contains("yes")
}

#[test]
fn aligned_checkpoints_complete_under_backpressure() {
    let scratch = Scratch::new();
    run_until(
        &scratch,
        "aligned",
        &job("aligned", "", "", SLOW_BLACKHOLE),
        2,
    );
    for (id, report) in shown(&scratch, "aligned") {
        assert!(!is_unaligned(&report), "checkpoint {id}:\n{report}");
    }
}

#[test]
fn unaligned_checkpoints_complete_under_backpressure_and_carry_the_in_flight_records() {
    let scratch = Scratch::new();
    let text = job("unaligned", "unaligned = true", "", SLOW_BLACKHOLE);
    run_until(&scratch, "unaligned", &text, 4);
    let reports = shown(&scratch, "unaligned");
    for (id, report) in &reports {
        assert!(is_unaligned(report), "checkpoint {id}:\n{report}");
    }
    // The channels are full: every checkpoint after the first few persisted records.
    let (id, report) = reports.last().expect("checkpoints");
    let line = unaligned_line(report);
    assert!(
        !line.contains(" 0 B "),
        "checkpoint {id} persisted nothing:\n{report}"
    );
    let dir = scratch
        .path()
        .join("checkpoints/unaligned")
        .join(format!("chk-{id}"));
    let channel_files = channel_state_files(&dir);
    assert!(
        channel_files >= 1,
        "no channel state file in {}:\n{report}",
        dir.display()
    );
}

#[test]
fn an_aligned_timeout_turns_back_pressured_checkpoints_unaligned() {
    let scratch = Scratch::new();
    let text = job(
        "timeout",
        "unaligned = true\naligned-timeout = \"20ms\"",
        "",
        SLOW_BLACKHOLE,
    );
    run_until(&scratch, "timeout", &text, 3);
    let reports = shown(&scratch, "timeout");
    assert!(
        reports.iter().any(|(_, r)| is_unaligned(r)),
        "no checkpoint went unaligned:\n{}",
        reports
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn debloated_aligned_checkpoints_complete_under_backpressure() {
    let scratch = Scratch::new();
    let network = "[network.buffer-debloat]\nenabled = true\ntarget = \"100ms\"\nperiod = \"50ms\"";
    let text = job("debloat", "", network, SLOW_BLACKHOLE);
    run_until(&scratch, "debloat", &text, 3);
    for (id, report) in shown(&scratch, "debloat") {
        assert!(!is_unaligned(&report), "checkpoint {id}:\n{report}");
    }
}

#[test]
fn unaligned_debloated_checkpoints_complete_with_the_channels_between_workers_over_tcp() {
    let scratch = Scratch::new();
    let network = "[network]\nlocal-workers = 2\n\n[network.buffer-debloat]\nenabled = true\ntarget = \"100ms\"\nperiod = \"50ms\"";
    // Two subtasks a node, one on each worker: every rebalance crosses the connection.
    let text = job("across", "unaligned = true", network, SLOW_BLACKHOLE).replacen(
        "[job]\n",
        "[job]\nparallelism = 2\n",
        1,
    );
    let log = run_until_checkpoints(&scratch, "across", &text, WAIT, |done| done.len() >= 4);
    assert!(
        log.contains("2 workers in this process, 1 connection between them on 127.0.0.1"),
        "{log}"
    );
    let reports = shown(&scratch, "across");
    for (id, report) in &reports {
        assert!(is_unaligned(report), "checkpoint {id}:\n{report}");
    }
    let (id, report) = reports.last().expect("checkpoints");
    assert!(
        !unaligned_line(report).contains(" 0 B "),
        "checkpoint {id} persisted nothing in flight:\n{report}"
    );
}

/// Copies directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The records a bounded job's file sink committed, as their sequence numbers.
fn committed_numbers(scratch: &Scratch) -> Vec<u64> {
    let mut numbers: Vec<u64> = scratch
        .committed_lines("out")
        .iter()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {l}"))
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Asserts that `numbers` (sorted) are `0..count`, each once.
fn assert_exactly(numbers: &[u64], count: u64, log: &str) {
    let mut unique = numbers.to_vec();
    unique.dedup();
    let twice = numbers.len() - unique.len();
    let missing: Vec<u64> = (0..count)
        .filter(|n| unique.binary_search(n).is_err())
        .collect();
    assert!(
        twice == 0 && missing.is_empty(),
        "not exactly once: {twice} records twice, {} missing (the first {:?})\n{log}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn channel_state_replays_on_restore_and_recover_without_channel_state_drops_it() {
    let scratch = Scratch::new();
    // A bounded generator (its values are its sequence numbers) into an exactly-once
    // file sink paced to 3000 records/s: 30,000 records take ten seconds.
    let sink = "kind = \"file\"\npath = \"out\"\nrate = 3000";
    let text = job("drop", "unaligned = true", "", sink).replace("value-size = 100\n", "");
    run_until(&scratch, "drop", &text, 4);
    let (latest, report) = shown(&scratch, "drop").pop().expect("checkpoints");
    assert!(
        is_unaligned(&report) && !unaligned_line(&report).contains(" 0 B "),
        "checkpoint {latest} has no channel state:\n{report}"
    );
    let copy = Scratch::new();
    std::fs::remove_dir(copy.path()).expect("an empty scratch");
    copy_dir(scratch.path(), copy.path());

    // Restored with its channel state: every record exactly once.
    let job = scratch.path().join("job.toml");
    let resumed = scratch.run(&[
        "run",
        job.to_str().unwrap_or_default(),
        "--from-checkpoint",
        "latest",
    ]);
    assert!(resumed.status.success(), "{}", describe(&resumed));
    let numbers = committed_numbers(&scratch);
    assert_exactly(&numbers, 30_000, &describe(&resumed));

    // Without it: the records in flight at that checkpoint are lost, none twice.
    let job = copy.path().join("job.toml");
    let dropped = copy.run(&[
        "run",
        job.to_str().unwrap_or_default(),
        "--from-checkpoint",
        "latest",
        "-D",
        &format!("checkpointing.recover-without-channel-state={latest}"),
    ]);
    assert!(dropped.status.success(), "{}", describe(&dropped));
    let log = String::from_utf8_lossy(&dropped.stderr);
    assert!(
        log.contains(&format!(
            "restoring checkpoint {latest} without its channel state"
        )),
        "{log}"
    );
    let numbers = committed_numbers(&copy);
    let mut unique = numbers.clone();
    unique.dedup();
    assert_eq!(unique.len(), numbers.len(), "no record twice");
    assert!(
        numbers.len() < 30_000,
        "the dropped channel state held records, so some are missing"
    );
}
