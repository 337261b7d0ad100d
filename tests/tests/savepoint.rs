//! Savepoints through the real `weir` binary: a keyed word count (a bounded generator's
//! keys are the words, the word-count counter counts them) into an exactly-once file
//! sink is stopped with a savepoint and resumed from it, and the committed output of
//! all its runs together must be exactly the output of one uninterrupted run.
//!
//! The resumes change what a savepoint allows to change: the counter's parallelism (its
//! keyed state moves by key group), the state backend (through a canonical savepoint),
//! the savepoint's directory, and the operators (with `--allow-non-restored-state`).
//! What must be refused is refused, naming why: a savepoint of an operator the job no
//! longer has, a flipped byte or a truncation in one of its files, a native RocksDB
//! savepoint restored into the heap backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;
use weir_tests::{
    RunningJob, Scratch, completed_checkpoints, copy_dir, describe, eventually, guest,
    run_until_checkpoints, savepoint_location, toml_path,
};

/// How long a test waits for something a running job does within a second or two.
const WAIT: Duration = Duration::from_secs(60);

/// Records of the bounded generator, one committed output line each.
const RECORDS: u64 = 40_000;

/// Distinct words: few enough that every one is counted many times, so a count that
/// restarts or skips shows up in many lines.
const KEYS: u64 = 300;

/// Records per second of each of the two generator subtasks in a run that is stopped
/// midway: the whole input takes five seconds, and a test stops the run after a second
/// or two, once [`STARTED`] records were counted.
const PACED: u64 = 4_000;

/// Records a paced run counts before the test takes its savepoint: some state in
/// every key group, and most of the input still to come.
const STARTED: u64 = 2_000;

/// The state backend of a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Heap,
    RocksDb,
}

/// What varies between the job files of one test's runs.
#[derive(Clone, Copy)]
struct Job {
    backend: Backend,
    /// The counter's id: state is matched to operators by it.
    counter: &'static str,
    /// The counter's parallelism (the generator and the sink keep the job's 2).
    parallelism: u32,
    /// Records per second per generator subtask; 0 is unpaced.
    rate: u64,
    /// The checkpoint interval.
    interval: &'static str,
}

impl Job {
    /// A run to stop midway: paced, the counter at parallelism 2, heap state.
    const PACED: Job = Job {
        backend: Backend::Heap,
        counter: "tally",
        parallelism: 2,
        rate: PACED,
        interval: "200ms",
    };

    /// A run to the end of the input, as fast as it goes.
    const TO_THE_END: Job = Job {
        rate: 0,
        ..Job::PACED
    };

    fn text(&self) -> String {
        let state = match self.backend {
            Backend::Heap => "backend = \"heap\"",
            Backend::RocksDb => "backend = \"rocksdb\"\ndir = \"state\"",
        };
        format!(
            r#"[job]
name = "wc"
parallelism = 2

[checkpointing]
interval = "{interval}"
mode = "exactly-once"
dir = "checkpoints"
savepoint-dir = "savepoints"
num-retained = 2
retention = "retain-on-cancellation"

[state]
{state}

[rest]
port = 0

[[source]]
id = "words"
kind = "generator"
count = {RECORDS}
keys = {KEYS}
rate = {rate}

[[operator]]
id = "{counter}"
wasm = "{wasm}"
inputs = ["words"]
partition = "key-by"
parallelism = {parallelism}

[[sink]]
id = "committed"
kind = "file"
path = "out"
inputs = ["{counter}"]
partition = "rebalance"
"#,
            interval = self.interval,
            rate = self.rate,
            counter = self.counter,
            parallelism = self.parallelism,
            wasm = toml_path(&guest("word_count_counter")),
        )
    }
}

/// The committed output of one uninterrupted run, sorted: what every test's runs
/// together must have committed. Computed once for all the tests.
fn uninterrupted() -> &'static [String] {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let scratch = Scratch::new();
        scratch.write("job.toml", Job::TO_THE_END.text());
        let run = scratch.run(&["run", "job.toml"]);
        assert!(run.status.success(), "{}", describe(&run));
        let lines = scratch.committed_lines("out");
        assert_eq!(lines.len() as u64, RECORDS, "one line per record");
        // The counter emits `word<TAB>n` on every update: each word's counts are 1..=n.
        let mut counts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for line in &lines {
            let (word, n) = line.split_once('\t').expect("word<TAB>count");
            counts
                .entry(word)
                .or_default()
                .push(n.parse().expect("a count"));
        }
        for (word, mut n) in counts {
            n.sort_unstable();
            assert!(
                n.iter().copied().eq(1..=n.len() as u64),
                "the counts of {word}: {n:?}"
            );
        }
        lines
    })
}

/// Asserts that `scratch`'s committed output is exactly the uninterrupted run's.
fn assert_uninterrupted_output(scratch: &Scratch, what: &str) {
    let lines = scratch.committed_lines("out");
    let expected = uninterrupted();
    if lines != expected {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|l| lines.binary_search(l).is_err())
            .collect();
        let extra: Vec<&String> = lines
            .iter()
            .filter(|l| expected.binary_search(l).is_err())
            .collect();
        let mut unique = lines.clone();
        unique.dedup();
        panic!(
            "{what}: the committed output differs from an uninterrupted run's: {} lines missing (e.g. {:?}), {} unknown (e.g. {:?}), {} twice",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first(),
            lines.len() - unique.len()
        );
    }
}

/// The records the counter of the job in `running` took in so far.
fn counted(running: &RunningJob, counter: &str) -> u64 {
    running.records_in("wc", counter).iter().sum()
}

/// The committed part files of the file sink (hidden pending and in-progress files are
/// not committed); none while the directory does not exist.
fn committed_files(scratch: &Scratch) -> Vec<String> {
    std::fs::read_dir(scratch.path().join("out"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("part-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The sink's hidden files: pending (sealed for a checkpoint, not yet committed) and
/// in progress.
fn uncommitted_files(scratch: &Scratch) -> Vec<String> {
    std::fs::read_dir(scratch.path().join("out"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".part-"))
                .collect()
        })
        .unwrap_or_default()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that `savepoint` is a savepoint directory as promised: named
/// `savepoint-<job>-<n>`, its `_metadata` and every file it needs directly inside.
fn assert_self_contained(savepoint: &Path) {
    let name = savepoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        name.starts_with("savepoint-"),
        "{} is not named savepoint-<job>-<n>",
        savepoint.display()
    );
    assert!(
        savepoint.join("_metadata").is_file(),
        "{} has no _metadata",
        savepoint.display()
    );
    for entry in std::fs::read_dir(savepoint).expect("the savepoint directory") {
        let entry = entry.expect("an entry of the savepoint");
        assert!(
            entry.file_type().is_ok_and(|t| t.is_file()),
            "{} is not a plain file directly inside the savepoint",
            entry.path().display()
        );
    }
}

/// Writes `job` into `scratch` and starts it (from `from`, a savepoint, when given).
fn start(scratch: &Scratch, job: Job, from: Option<&Path>) -> RunningJob {
    scratch.write("job.toml", job.text());
    let mut args = vec!["run", "job.toml"];
    let from = from.map(|p| p.to_string_lossy().into_owned());
    if let Some(from) = &from {
        args.extend(["-s", from]);
    }
    RunningJob::start(scratch, &args)
}

/// The place of the job's address in the arguments of [`stop`].
const URL: &str = "<url>";

/// Stops `running` with a savepoint through `weir stop` with `stop_args` (its address
/// where they say [`URL`]), and checks that the run ended as a stop with a savepoint must: exit 0,
/// saying where the savepoint is, with more of its output committed and the input not
/// at its end. The savepoint.
fn stop(scratch: &Scratch, running: RunningJob, stop_args: &[&str]) -> PathBuf {
    let before = committed_so_far(scratch);
    let url = running.url("");
    let mut args = vec!["stop"];
    args.extend(
        stop_args
            .iter()
            .map(|&a| if a == URL { url.as_str() } else { a }),
    );
    let stopped = scratch.run(&args);
    assert!(
        stopped.status.success(),
        "{}\n--- the job's log ---\n{}",
        describe(&stopped),
        running.log()
    );
    let savepoint = savepoint_location(&stopped, scratch.path());
    let (status, log) = running.finish(WAIT);
    assert!(
        status.success(),
        "a stop with a savepoint exits 0: {status}\n{log}"
    );
    let name = savepoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("savepoint") && l.contains(&name)),
        "the run does not say it stopped with savepoint {name}:\n{log}"
    );
    assert_self_contained(&savepoint);
    let uncommitted = uncommitted_files(scratch);
    assert!(
        uncommitted.is_empty(),
        "the stop left output of the sink uncommitted: {uncommitted:?}\n{log}"
    );
    let after = committed_so_far(scratch);
    assert!(
        after.len() > before.len(),
        "the stop committed nothing: {} lines before, {} after",
        before.len(),
        after.len()
    );
    assert!(
        (after.len() as u64) < RECORDS,
        "the job had ended before it was stopped:\n{log}"
    );
    savepoint
}

/// [`start`], wait for `progress`, [`stop`].
fn run_and_stop(
    scratch: &Scratch,
    job: Job,
    from: Option<&Path>,
    progress: impl Fn(&RunningJob) -> bool,
    stop_args: &[&str],
) -> PathBuf {
    let running = start(scratch, job, from);
    assert!(
        eventually(WAIT, || progress(&running)),
        "the job made no progress:\n{}",
        running.log()
    );
    stop(scratch, running, stop_args)
}

/// Whether a paced first run has counted [`STARTED`] records.
fn started(running: &RunningJob) -> bool {
    counted(running, Job::PACED.counter) >= STARTED
}

/// The committed lines, sorted; none before the sink created its directory.
fn committed_so_far(scratch: &Scratch) -> Vec<String> {
    if scratch.path().join("out").is_dir() {
        scratch.committed_lines("out")
    } else {
        Vec::new()
    }
}

/// A copy of `scratch` (output, checkpoints, savepoints), and `path` inside the copy.
fn copy_of(scratch: &Scratch, path: &Path) -> (Scratch, PathBuf) {
    let copy = Scratch::new();
    copy_dir(scratch.path(), copy.path());
    let relative = path
        .strip_prefix(scratch.path())
        .expect("the path is in the scratch directory");
    let moved = copy.path().join(relative);
    (copy, moved)
}

/// Runs `job` in `scratch` from `savepoint` to the end of the input, with `extra`
/// arguments.
fn resume(scratch: &Scratch, job: Job, savepoint: &Path, extra: &[&str]) -> Output {
    scratch.write("job.toml", job.text());
    let savepoint = savepoint.to_string_lossy();
    let mut args = vec!["run", "job.toml", "-s", &savepoint];
    args.extend_from_slice(extra);
    scratch.run(&args)
}

#[test]
fn a_savepoint_commits_nothing_and_a_stop_with_one_resumes_at_parallelism_1_3_and_4_exactly_once() {
    let scratch = Scratch::new();
    // No periodic checkpoint in the first run: nothing but the savepoints can commit.
    let first = Job {
        interval: "1h",
        ..Job::PACED
    };
    let running = start(&scratch, first, None);
    assert!(eventually(WAIT, || started(&running)), "{}", running.log());

    // An intermediate savepoint into the job file's savepoint-dir.
    let taken = scratch.run(&["savepoint", &running.url("")]);
    assert!(
        taken.status.success(),
        "{}\n--- the job's log ---\n{}",
        describe(&taken),
        running.log()
    );
    let intermediate = savepoint_location(&taken, scratch.path());
    assert!(
        intermediate.starts_with(scratch.path().join("savepoints")),
        "{} is not in the job's savepoint-dir",
        intermediate.display()
    );
    assert_self_contained(&intermediate);
    assert_eq!(
        committed_files(&scratch),
        Vec::<String>::new(),
        "an intermediate savepoint committed output of the exactly-once sink"
    );
    assert_eq!(
        running.json("/jobs/wc")["state"],
        "RUNNING",
        "the job goes on after a savepoint"
    );

    // The stop commits (see `stop`), and Weir never deletes a savepoint.
    let stops = scratch.path().join("stops");
    let stops = stops.to_string_lossy();
    let savepoint = stop(&scratch, running, &["--savepoint", &stops, URL]);
    assert!(
        savepoint.starts_with(scratch.path().join("stops")),
        "{} is not in the directory the stop named",
        savepoint.display()
    );
    assert!(
        intermediate.join("_metadata").is_file(),
        "the intermediate savepoint is gone"
    );

    // Each rescaled resume in its own copy of the output and the savepoint.
    let copies: Vec<(u32, Scratch, PathBuf)> = [1, 3, 4]
        .into_iter()
        .map(|p| {
            let (copy, savepoint) = copy_of(&scratch, &savepoint);
            (p, copy, savepoint)
        })
        .collect();
    std::thread::scope(|s| {
        for (parallelism, copy, savepoint) in &copies {
            s.spawn(move || {
                let job = Job {
                    parallelism: *parallelism,
                    ..Job::TO_THE_END
                };
                let resumed = resume(copy, job, savepoint, &[]);
                assert!(
                    resumed.status.success(),
                    "resumed at parallelism {parallelism}: {}",
                    describe(&resumed)
                );
                assert_uninterrupted_output(
                    copy,
                    &format!("stopped at parallelism 2, resumed at {parallelism}"),
                );
            });
        }
    });
}

#[test]
fn canonical_savepoints_move_state_from_heap_to_rocksdb_and_back() {
    let scratch = Scratch::new();
    let on_heap = run_and_stop(
        &scratch,
        Job::PACED,
        None,
        started,
        &["--savepoint", "--type", "canonical", URL],
    );
    assert!(
        on_heap.starts_with(scratch.path().join("savepoints")),
        "a stop naming no directory uses savepoint-dir: {}",
        on_heap.display()
    );
    // The RocksDB run must itself commit output (a checkpoint of its own) before it
    // is stopped, so that it held the restored state and added to it.
    let after_heap = scratch.committed_lines("out").len();
    let rocksdb = Job {
        backend: Backend::RocksDb,
        ..Job::PACED
    };
    let on_rocksdb = run_and_stop(
        &scratch,
        rocksdb,
        Some(&on_heap),
        |_| scratch.committed_lines("out").len() > after_heap + 1_000,
        // One value after --savepoint is the job, not a directory.
        &["--type", "canonical", "--savepoint", URL],
    );
    let resumed = resume(&scratch, Job::TO_THE_END, &on_rocksdb, &[]);
    assert!(resumed.status.success(), "{}", describe(&resumed));
    assert_uninterrupted_output(&scratch, "heap → rocksdb → heap");
}

#[test]
fn a_savepoint_moved_to_another_directory_restores() {
    let scratch = Scratch::new();
    let stops = scratch.path().join("stops");
    let stops = stops.to_string_lossy();
    let savepoint = run_and_stop(
        &scratch,
        Job::PACED,
        None,
        started,
        &["--savepoint", &stops, URL],
    );
    let elsewhere = Scratch::new();
    let moved = elsewhere
        .path()
        .join("archive")
        .join(savepoint.file_name().expect("a name"));
    std::fs::create_dir_all(moved.parent().expect("a parent")).expect("the archive");
    std::fs::rename(&savepoint, &moved).expect("the savepoint moves");
    assert!(!savepoint.exists());
    let resumed = resume(&scratch, Job::TO_THE_END, &moved, &[]);
    assert!(resumed.status.success(), "{}", describe(&resumed));
    assert_uninterrupted_output(&scratch, "restored from a moved savepoint");
}

#[test]
fn state_of_an_operator_the_job_no_longer_has_is_refused_naming_it_unless_allowed() {
    let scratch = Scratch::new();
    // The address before a bare `--savepoint`: after it, it would be its directory.
    let savepoint = run_and_stop(&scratch, Job::PACED, None, started, &[URL, "--savepoint"]);
    let before = scratch.committed_lines("out");
    let (allowed, allowed_savepoint) = copy_of(&scratch, &savepoint);
    // The counter under another id: the savepoint's `tally` has no operator to go to.
    let renamed = Job {
        counter: "recount",
        ..Job::TO_THE_END
    };

    let refused = resume(&scratch, renamed, &savepoint, &[]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(stderr(&refused).contains("tally"), "{}", describe(&refused));
    assert_eq!(
        scratch.committed_lines("out"),
        before,
        "the refused run wrote output"
    );

    let resumed = resume(
        &allowed,
        renamed,
        &allowed_savepoint,
        &["--allow-non-restored-state"],
    );
    assert!(resumed.status.success(), "{}", describe(&resumed));
    // The source and the sink restored: every record once. The new counter started
    // empty: the words the first run counted are counted from 1 again.
    let lines = allowed.committed_lines("out");
    assert_eq!(lines.len() as u64, RECORDS, "{}", describe(&resumed));
    let again = before
        .iter()
        .filter(|l| l.ends_with("\t1"))
        .filter(|l| lines.iter().filter(|m| m == l).count() == 2)
        .count();
    assert!(
        again > 0,
        "no word was counted from 1 again: the new operator did not start empty"
    );
}

/// The largest file of `savepoint` other than its `_metadata` (or that, when there is
/// no other): where its state is.
fn largest_file(savepoint: &Path) -> PathBuf {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(savepoint)
        .expect("the savepoint directory")
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .collect();
    files.sort();
    let other = files
        .iter()
        .rev()
        .find(|(_, p)| p.file_name().is_some_and(|n| n != "_metadata"));
    other
        .or(files.last())
        .map(|(_, p)| p.clone())
        .expect("a file in the savepoint")
}

#[test]
fn a_savepoint_file_with_a_flipped_byte_or_truncated_is_refused_naming_the_file() {
    let scratch = Scratch::new();
    let savepoint = run_and_stop(&scratch, Job::PACED, None, started, &[URL, "--savepoint"]);
    let before = scratch.committed_lines("out");
    let (flipped, flipped_savepoint) = copy_of(&scratch, &savepoint);
    let (truncated, truncated_savepoint) = copy_of(&scratch, &savepoint);

    // The same file in both copies: the savepoint's largest, where the state is.
    let name = largest_file(&savepoint)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = flipped_savepoint.join(&name);
    let mut bytes = std::fs::read(&file).expect("the file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).expect("the flipped file");
    let file = truncated_savepoint.join(&name);
    let len = std::fs::metadata(&file).expect("the file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len / 2))
        .expect("the truncation");

    std::thread::scope(|s| {
        for (copy, savepoint, what) in [
            (&flipped, &flipped_savepoint, "a flipped byte"),
            (&truncated, &truncated_savepoint, "a truncation"),
        ] {
            let (before, name) = (&before, &name);
            s.spawn(move || {
                let refused = resume(copy, Job::TO_THE_END, savepoint, &[]);
                assert!(
                    !refused.status.success(),
                    "{what} in {name} was restored:\n{}",
                    describe(&refused)
                );
                assert!(
                    stderr(&refused).contains(name.as_str()),
                    "the refusal of {what} does not name {name}:\n{}",
                    describe(&refused)
                );
                assert_eq!(
                    &copy.committed_lines("out"),
                    before,
                    "the refused run wrote output"
                );
            });
        }
    });
}

#[test]
fn savepoint_dispose_deletes_a_savepoint() {
    let scratch = Scratch::new();
    let running = start(&scratch, Job::PACED, None);
    assert!(eventually(WAIT, || started(&running)), "{}", running.log());
    let dir = scratch.path().join("kept");
    let taken = scratch.run(&["savepoint", &running.url(""), &dir.to_string_lossy()]);
    assert!(taken.status.success(), "{}", describe(&taken));
    let savepoint = savepoint_location(&taken, scratch.path());
    assert!(
        savepoint.starts_with(&dir),
        "{} is not in the directory the command named",
        savepoint.display()
    );
    assert_self_contained(&savepoint);

    let disposed = scratch.run(&["savepoint", "dispose", &savepoint.to_string_lossy()]);
    assert!(disposed.status.success(), "{}", describe(&disposed));
    assert!(
        !savepoint.exists(),
        "{} is still there after dispose",
        savepoint.display()
    );
}

#[test]
fn a_native_savepoint_of_rocksdb_restores_into_rocksdb_and_is_refused_by_the_heap_backend() {
    let scratch = Scratch::new();
    let rocksdb = Job {
        backend: Backend::RocksDb,
        ..Job::PACED
    };
    let savepoint = run_and_stop(
        &scratch,
        rocksdb,
        None,
        started,
        &["--savepoint", "--type", "native", URL],
    );
    let before = scratch.committed_lines("out");
    let (heap, heap_savepoint) = copy_of(&scratch, &savepoint);
    std::thread::scope(|s| {
        s.spawn(|| {
            let job = Job {
                backend: Backend::RocksDb,
                ..Job::TO_THE_END
            };
            let resumed = resume(&scratch, job, &savepoint, &[]);
            assert!(resumed.status.success(), "{}", describe(&resumed));
            assert_uninterrupted_output(&scratch, "a native savepoint into rocksdb");
        });
        s.spawn(|| {
            let refused = resume(&heap, Job::TO_THE_END, &heap_savepoint, &[]);
            assert!(!refused.status.success(), "{}", describe(&refused));
            let text = stderr(&refused);
            assert!(
                text.contains("native") && text.contains("canonical"),
                "the refusal says neither that the savepoint is native nor that a canonical one would do:\n{}",
                describe(&refused)
            );
            assert_eq!(heap.committed_lines("out"), before, "the refused run wrote output");
        });
    });
}

#[test]
fn a_retained_checkpoint_restores_with_s_at_another_parallelism() {
    let scratch = Scratch::new();
    run_until_checkpoints(&scratch, "wc", &Job::PACED.text(), WAIT, |done| {
        done.len() >= 2
    });
    let (_, newest) = completed_checkpoints(&scratch.path().join("checkpoints/wc"))
        .pop()
        .expect("a retained checkpoint");
    let job = Job {
        parallelism: 3,
        ..Job::TO_THE_END
    };
    let resumed = resume(&scratch, job, &newest, &[]);
    assert!(resumed.status.success(), "{}", describe(&resumed));
    assert_uninterrupted_output(&scratch, "a retained checkpoint restored at parallelism 3");
}
