//! Exactly-once under SIGKILL: word count over a large input with an exactly-once file
//! sink, the `weir` process killed at random moments and resumed each time with
//! `--from-checkpoint latest`. The committed output must equal the failure-free output
//! exactly; in at-least-once mode nothing may be lost.
//!
//! The same harness runs with the heap and the RocksDB state backend (incremental and
//! full), and with checkpoints on a local directory and on an S3-compatible server.
//!
//! `WEIR_CRASH_KILLS` sets the number of kills (default 20); `WEIR_CRASH_SEED` replays a
//! run (the seed is printed).

use std::process::Stdio;
use std::time::Duration;
use weir_tests::{
    Scratch, XorShift, counted_lines, crash_kills, crash_seed, describe, word_count_operators,
    word_text,
};

/// What varies between the runs of the harness.
struct Setup {
    /// `exactly-once` or `at-least-once`.
    mode: &'static str,
    /// The `[state]` table.
    state: &'static str,
    /// The checkpoint directory, and the environment `weir` needs to reach it.
    storage: Storage,
    /// More of `[checkpointing]`.
    extra: &'static str,
    /// The `[network]` table.
    network: &'static str,
}

enum Storage {
    Local,
    S3(weir_tests::s3::S3Server),
}

const HEAP: &str = "[state]\nbackend = \"heap\"\n";
const ROCKSDB: &str = "[state]\nbackend = \"rocksdb\"\ndir = \"state\"\n";
const ROCKSDB_FULL: &str = "[state]\nbackend = \"rocksdb\"\nincremental = false\ndir = \"state\"\n";

impl Setup {
    fn local(mode: &'static str, state: &'static str) -> Self {
        Self {
            mode,
            state,
            storage: Storage::Local,
            extra: "",
            network: "",
        }
    }

    fn checkpointing(&self) -> String {
        match &self.storage {
            Storage::Local => "dir = \"checkpoints\"\n".to_owned(),
            // A killed process leaves its lease behind; the resume waits until it is
            // stale, so a short lease keeps twenty kills quick.
            Storage::S3(server) => format!(
                "dir = \"s3://{}/checkpoints\"\n[checkpointing.s3]\nlease-timeout = \"1s\"\n",
                server.bucket()
            ),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match &self.storage {
            Storage::Local => Vec::new(),
            Storage::S3(server) => server
                .env_with_endpoint(&server.endpoint())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

fn job(setup: &Setup) -> String {
    format!(
        r#"[job]
name = "crash"
parallelism = 2

[checkpointing]
interval = "100ms"
mode = "{mode}"
num-retained = 2
retention = "retain-on-cancellation"
{extra}
{checkpointing}
{state}
{network}

[[source]]
id = "lines"
kind = "file"
path = ["a.txt", "b.txt"]

{operators}

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
# Slow enough that a run takes a few seconds and the kills land mid-stream.
rate = 150000
"#,
        mode = setup.mode,
        extra = setup.extra,
        checkpointing = setup.checkpointing(),
        state = setup.state,
        network = setup.network,
        operators = word_count_operators(),
    )
}

/// What a run with kills saw.
struct Killed {
    /// The committed output lines, sorted.
    lines: Vec<String>,
    /// The failure-free output, sorted.
    expected: Vec<String>,
    /// How many kills landed before the job finished.
    landed: u32,
    /// After how many kills the latest completed checkpoint, the one the next run
    /// resumes from, held channel state (the in-flight records of an unaligned one).
    with_channel_state: u32,
}

/// Whether the latest completed checkpoint in `dir` holds channel state.
fn latest_has_channel_state(dir: &std::path::Path) -> bool {
    weir_tests::completed_checkpoints(dir)
        .last()
        .is_some_and(|(_, chk)| weir_tests::channel_state_files(chk) > 0)
}

/// Runs the job, killing it `kills` times at random moments.
fn run_with_kills(setup: &Setup, kills: u32, seed: u64) -> Killed {
    let scratch = Scratch::new();
    let env = setup.env();
    let mut rng = XorShift(seed);
    let texts = [word_text(&mut rng, 60_000), word_text(&mut rng, 40_000)];
    scratch.write("a.txt", &texts[0]);
    scratch.write("b.txt", &texts[1]);
    let job = scratch.write("job.toml", job(setup));
    let job = job.to_str().unwrap_or_default().to_owned();

    let mut landed = 0;
    let mut with_channel_state = 0;
    let mut first = true;
    for _ in 0..kills {
        let mut args = vec!["run", job.as_str()];
        if !first {
            args.extend(["--from-checkpoint", "latest"]);
        }
        first = false;
        let mut child = scratch
            .weir(&args)
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir starts");
        // A random moment: this is the point of the test, not an ordering of events.
        std::thread::sleep(Duration::from_millis(150 + rng.below(450)));
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
        landed += 1;
        if latest_has_channel_state(&scratch.path().join("checkpoints/crash")) {
            with_channel_state += 1;
        }
    }
    let output = scratch
        .weir(&["run", &job, "--from-checkpoint", "latest"])
        .envs(env.iter().cloned())
        .output()
        .expect("weir runs");
    assert!(
        output.status.success(),
        "the final run failed (seed {seed}):\n{}",
        describe(&output)
    );

    let lines = scratch.committed_lines("out");
    let leftovers: Vec<String> = std::fs::read_dir(scratch.path().join("out"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "uncommitted files left behind (seed {seed}): {leftovers:?}"
    );
    Killed {
        lines,
        expected: counted_lines(&texts),
        landed,
        with_channel_state,
    }
}

/// Runs the harness in exactly-once mode and checks the committed output is exactly the
/// failure-free output.
fn assert_exactly_once(setup: &Setup) -> Killed {
    let seed = crash_seed();
    let killed = run_with_kills(setup, crash_kills(), seed);
    let Killed {
        lines,
        expected,
        landed,
        ..
    } = &killed;
    let landed = *landed;
    println!("{landed} kills landed before the job finished");
    assert!(
        landed >= 5,
        "too few kills landed mid-run to test anything (seed {seed})"
    );
    if lines != expected {
        let missing = expected
            .iter()
            .filter(|l| lines.binary_search(l).is_err())
            .count();
        let extra = lines.len() + missing - expected.len();
        panic!(
            "committed output differs from the failure-free output (seed {seed}): {missing} lines missing, {extra} extra"
        );
    }
    killed
}

#[test]
fn exactly_once_output_survives_repeated_sigkill() {
    let _ = assert_exactly_once(&Setup::local("exactly-once", HEAP));
}

#[test]
fn exactly_once_output_survives_repeated_sigkill_with_incremental_rocksdb() {
    let _ = assert_exactly_once(&Setup::local("exactly-once", ROCKSDB));
}

#[test]
fn exactly_once_output_survives_repeated_sigkill_with_full_rocksdb_checkpoints() {
    let _ = assert_exactly_once(&Setup::local("exactly-once", ROCKSDB_FULL));
}

#[test]
fn exactly_once_output_survives_repeated_sigkill_with_checkpoints_on_s3() {
    let server = weir_tests::s3::S3Server::start();
    let _ = assert_exactly_once(&Setup {
        mode: "exactly-once",
        state: ROCKSDB,
        storage: Storage::S3(server),
        extra: "",
        network: "",
    });
}

#[test]
fn exactly_once_output_survives_repeated_sigkill_with_unaligned_checkpoints_under_backpressure() {
    // The sink is paced below what the tokenizer emits, so the channels into the
    // counters are full and every checkpoint persists some of them as channel state.
    let killed = assert_exactly_once(&Setup {
        extra: "unaligned = true",
        ..Setup::local("exactly-once", HEAP)
    });
    println!(
        "{} of the runs resumed from a checkpoint with channel state",
        killed.with_channel_state
    );
    assert!(
        killed.with_channel_state >= 1,
        "no run resumed from a checkpoint with channel state"
    );
}

#[test]
fn exactly_once_output_survives_repeated_sigkill_with_unaligned_checkpoints_across_workers_over_tcp()
 {
    // Subtask 0 of every node on worker 1 and subtask 1 on worker 2: half of the
    // rebalanced and key-by channels cross the connection between them, under
    // backpressure, so barriers overtake data on the wire.
    let killed = assert_exactly_once(&Setup {
        extra: "unaligned = true",
        network: "[network]\nlocal-workers = 2\n",
        ..Setup::local("exactly-once", HEAP)
    });
    assert!(
        killed.with_channel_state >= 1,
        "no run resumed from a checkpoint with channel state"
    );
}

#[test]
fn at_least_once_output_loses_nothing_under_sigkill() {
    let seed = crash_seed();
    let setup = Setup::local("at-least-once", HEAP);
    let Killed {
        lines,
        expected,
        landed,
        ..
    } = run_with_kills(&setup, crash_kills().min(10), seed);
    println!("{landed} kills landed before the job finished");
    let missing: Vec<&String> = expected
        .iter()
        .filter(|l| lines.binary_search(l).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines lost (seed {seed}), e.g. {:?}",
        missing.len(),
        missing.first()
    );
}
