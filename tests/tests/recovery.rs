//! Recovery: a trapping guest restarts from the latest checkpoint through the restart
//! strategy; corrupt and half-written checkpoints are skipped for the next older one;
//! the checkpoint statistics can be read back.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_tests::{Scratch, completed_checkpoints, describe, guest, toml_path};

/// A generator paced well below what the pipeline can take, so checkpoints are quick
/// and a record `n` arrives at a predictable time (n / rate seconds in): the guest sees
/// the poison record after many checkpoints have completed.
fn job(count: u64, rate: u64, counter_config: &str) -> String {
    format!(
        r#"[job]
name = "recovery"
parallelism = 2

[checkpointing]
interval = "100ms"
dir = "checkpoints"
num-retained = 3
retention = "retain-on-cancellation"

[restart]
strategy = "fixed-delay"
attempts = 3
delay = "100ms"

[[source]]
id = "numbers"
kind = "generator"
count = {count}
keys = 50
rate = {rate}
parallelism = 1

[[operator]]
id = "count"
wasm = "{faulty}"
inputs = ["numbers"]
partition = "key-by"
config = '{counter_config}'

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
"#,
        faulty = toml_path(&guest("faulty")),
    )
}

/// The counter's committed output per key: the counts it emitted, sorted.
fn counts_per_key(scratch: &Scratch) -> BTreeMap<String, Vec<u64>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in scratch.parts("out").into_iter().flat_map(|(_, l)| l) {
        let (key, count) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        per_key.entry(key.to_owned()).or_default().push(
            count
                .parse()
                .unwrap_or_else(|_| panic!("bad count in {line:?}")),
        );
    }
    for counts in per_key.values_mut() {
        counts.sort_unstable();
    }
    per_key
}

#[test]
fn a_guest_that_traps_on_one_record_recovers_through_the_restart_strategy() {
    let scratch = Scratch::new();
    // Record 10000 arrives two seconds in; restored instances let it pass ("once").
    let job = scratch.write(
        "job.toml",
        job(12_000, 5_000, r#"{"trap-on": "10000", "once": true}"#),
    );
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trapped in `process`"), "{stderr}");
    assert!(stderr.contains("Restarting"), "{stderr}");
    assert!(stderr.contains("restoring from checkpoint"), "{stderr}");
    // Exactly once: every key counted 1, 2, …, n with nothing missing or repeated, and
    // the counts add up to the records generated.
    let per_key = counts_per_key(&scratch);
    for (key, counts) in &per_key {
        let n = u64::try_from(counts.len()).unwrap_or(0);
        assert_eq!(counts, &(1..=n).collect::<Vec<_>>(), "updates of {key}");
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 12_000);
}

#[test]
fn a_guest_that_always_traps_fails_the_job_once_the_restart_strategy_gives_up() {
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job(100, 0, r#"{"trap-on": "10"}"#));
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gave up"), "{stderr}");
    assert!(
        stderr.contains("count ("),
        "the failing subtask is named:\n{stderr}"
    );
    assert!(
        stderr.contains("wasm backtrace"),
        "the guest's backtrace is shown:\n{stderr}"
    );
    // The panic message is in the error itself, not only in the guest's stderr lines
    // logged before it.
    let error = stderr
        .split_once("error: ")
        .map(|(_, error)| error)
        .unwrap_or_default();
    assert!(
        error.contains("The guest wrote to stderr before it trapped:")
            && error.contains("faulty: trapping on the record `10`, as configured by `trap-on`"),
        "the panic message is in the error:\n{stderr}"
    );
}

#[test]
fn corrupt_and_half_written_checkpoints_are_skipped_for_an_older_complete_one() {
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job(15_000, 5_000, "{}"));
    let job = job.to_str().unwrap_or_default().to_owned();
    let checkpoints = scratch.path().join("checkpoints/recovery");

    let mut child = scratch
        .weir(&["run", &job])
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts");
    // Wait (bounded) until three checkpoints are complete, then crash the process.
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_checkpoints(&checkpoints).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no three checkpoints within a minute"
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the job ended before three checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();

    let complete = completed_checkpoints(&checkpoints);
    let [.., (older, _), (newer, newer_dir), (newest, newest_dir)] = complete.as_slice() else {
        panic!("expected three checkpoints, found {complete:?}");
    };
    // The newest: one byte of a data file flipped.
    let data = newest_dir.join("count-0");
    let mut bytes = std::fs::read(&data).expect("a data file of the newest checkpoint");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).expect("corrupting a data file");
    // The one before: its `_metadata` half-written.
    let metadata = newer_dir.join("_metadata");
    let bytes = std::fs::read(&metadata).expect("_metadata");
    std::fs::write(&metadata, &bytes[..bytes.len() / 2]).expect("truncating _metadata");
    // And a checkpoint that never got its `_metadata`.
    scratch.write(
        &format!("checkpoints/recovery/chk-{}/count-0", newest + 1),
        "partial",
    );

    // The sink committed output after the checkpoint the restore falls back to: the
    // replay would write it again, so the run is refused, naming that checkpoint.
    let refused = scratch.run(&["run", &job, "--from-checkpoint", "latest"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for needle in [
        format!("skipping checkpoint {newest}"),
        format!("skipping checkpoint {newer}"),
        "It stays there for inspection".to_owned(),
        format!(
            "checkpoint {} in file://{} never completed",
            newest + 1,
            checkpoints.display()
        ),
        format!("restores checkpoint {older}"),
        "committed after that checkpoint".to_owned(),
        "--allow-duplicates".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "`{needle}` missing:\n{stderr}");
    }

    let output = scratch.run(&[
        "run",
        &job,
        "--from-checkpoint",
        "latest",
        "--allow-duplicates",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("restoring from checkpoint {older}")),
        "{stderr}"
    );
    // Told to go on, falling back past a checkpoint whose commit already happened
    // repeats output, but nothing is lost: every key has every count from 1 to its total, and the
    // totals add up to the records generated.
    let per_key = counts_per_key(&scratch);
    let mut total = 0;
    for (key, counts) in per_key {
        let mut distinct = counts.clone();
        distinct.dedup();
        let n = u64::try_from(distinct.len()).unwrap_or(0);
        assert_eq!(distinct, (1..=n).collect::<Vec<_>>(), "updates of {key}");
        total += distinct.len();
    }
    assert_eq!(total, 15_000, "records lost after skipping two checkpoints");
}

#[test]
fn checkpoint_statistics_are_listed_and_shown_per_subtask() {
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job(5_000, 10_000, "{}"));
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));

    let list = scratch.run(&["checkpoints", "list", "checkpoints"]);
    assert!(list.status.success(), "{}", describe(&list));
    let table = String::from_utf8_lossy(&list.stdout);
    let ids: Vec<u64> = table
        .lines()
        .skip(1)
        .filter(|l| l.contains("completed"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!ids.is_empty(), "{table}");
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first:\n{table}"
    );

    // The last checkpoint is the final one, where most subtasks had finished; show an
    // earlier one where every subtask ran.
    let id = ids.last().copied().unwrap_or(1).to_string();
    let show = scratch.run(&["checkpoints", "show", "checkpoints/recovery", &id]);
    assert!(show.status.success(), "{}", describe(&show));
    let table = String::from_utf8_lossy(&show.stdout);
    for needle in [
        "START DELAY",
        "ALIGNMENT",
        "SYNC",
        "ASYNC",
        "count (1/2)",
        "count (2/2)",
        "numbers (1/1)",
        "*",
    ] {
        assert!(table.contains(needle), "`{needle}` missing from:\n{table}");
    }
}
