//! Resuming and restarting never re-runs committed work silently, through the real `weir`
//! binary: a finished job leaves a record that a resume reads, a fresh start into a file
//! sink's committed output is refused unless asked for, a second process of a running
//! job is refused naming the first, and shared files that no checkpoint references are
//! deleted at start and at the end.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{Scratch, describe, eventually, guest, toml_path};

/// How long a test waits for something a running job does within a second or two.
const WAIT: Duration = Duration::from_secs(60);

/// A word count over a generator of `count` records (`rate` per second, 0 = unpaced)
/// into a file sink, checkpointed every 100 ms with `state` as its `[state]` table and
/// `retention` as the checkpoints' retention.
fn job(count: u64, rate: u64, state: &str, retention: &str) -> String {
    format!(
        r#"[job]
name = "resume"

[checkpointing]
interval = "100ms"
dir = "checkpoints"
num-retained = 2
retention = "{retention}"

{state}

[[source]]
id = "numbers"
kind = "generator"
count = {count}
keys = 50
rate = {rate}

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["numbers"]
partition = "key-by"

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
"#,
        counter = toml_path(&guest("word_count_counter")),
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until `done` holds; panics with `what` after [`WAIT`].
fn wait_for(what: &str, done: impl Fn() -> bool) {
    assert!(
        eventually(WAIT, done),
        "{what} did not happen within {WAIT:?}"
    );
}

/// Whether `dir` holds a checkpoint with its `_metadata`.
fn has_completed_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name().to_string_lossy().starts_with("chk-")
                && e.path().join("_metadata").exists()
        })
    })
}

fn spawn(scratch: &Scratch, args: &[&str]) -> Child {
    scratch
        .weir(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts")
}

#[test]
fn a_finished_job_leaves_a_record_and_resuming_it_says_so_and_writes_nothing() {
    let scratch = Scratch::new();
    let path = scratch.write("job.toml", job(5_000, 0, "", "delete-on-cancellation"));
    let path = path.to_str().unwrap_or_default();
    let first = scratch.run(&["run", path]);
    assert!(first.status.success(), "{}", describe(&first));
    let output = scratch.committed_lines("out");
    assert_eq!(output.len(), 5_000, "one count per record");
    // Retention deleted the checkpoints; the record of the finish stays.
    let job_dir = scratch.path().join("checkpoints/resume");
    assert!(!has_completed_checkpoint(&job_dir), "checkpoints were kept");
    assert!(
        job_dir.join("_finished").is_file(),
        "no record of the finish"
    );

    let resumed = scratch.run(&["run", path, "--from-checkpoint", "latest"]);
    assert!(resumed.status.success(), "{}", describe(&resumed));
    let text = stderr(&resumed);
    assert!(text.contains("there is nothing to resume"), "{text}");
    assert!(text.contains("job `resume` finished at"), "{text}");
    assert_eq!(
        scratch.committed_lines("out"),
        output,
        "the resume wrote output"
    );
}

#[test]
fn a_fresh_start_into_committed_output_is_refused_unless_duplicates_are_allowed() {
    let scratch = Scratch::new();
    let path = scratch.write("job.toml", job(2_000, 0, "", "delete-on-cancellation"));
    let path = path.to_str().unwrap_or_default();
    let first = scratch.run(&["run", path]);
    assert!(first.status.success(), "{}", describe(&first));
    let output = scratch.committed_lines("out");

    let again = scratch.run(&["run", path]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    let text = stderr(&again);
    assert!(text.contains("starts from the beginning"), "{text}");
    assert!(text.contains("would be written a second time"), "{text}");
    assert!(text.contains("--allow-duplicates"), "{text}");
    assert!(text.contains("a restart cannot help"), "{text}");
    assert_eq!(
        scratch.committed_lines("out"),
        output,
        "the refused run wrote output"
    );

    let allowed = scratch.run(&["run", path, "--allow-duplicates"]);
    assert!(allowed.status.success(), "{}", describe(&allowed));
    assert_eq!(
        scratch.committed_lines("out").len(),
        2 * output.len(),
        "--allow-duplicates appends a second copy"
    );
}

#[test]
fn a_second_run_of_a_running_job_is_refused_naming_the_first_and_a_killed_ones_lock_is_free() {
    let scratch = Scratch::new();
    let path = scratch.write(
        "job.toml",
        job(1_000_000, 2_000, "", "retain-on-cancellation"),
    );
    let path = path.to_str().unwrap_or_default();
    let job_dir = scratch.path().join("checkpoints/resume");
    let mut first = spawn(&scratch, &["run", path]);
    wait_for("a first checkpoint", || has_completed_checkpoint(&job_dir));

    let second = scratch.run(&["run", path, "--from-checkpoint", "latest"]);
    assert_eq!(second.status.code(), Some(2), "{}", describe(&second));
    let text = stderr(&second);
    assert!(
        text.contains(&format!("is locked by weir pid {}", first.id())),
        "{text}"
    );
    assert!(text.contains("Stop that process first"), "{text}");
    assert!(
        first.try_wait().ok().flatten().is_none(),
        "the refused run stopped the first"
    );

    // A process killed with the lock held leaves it behind; the next one takes it.
    let _ = first.kill();
    let _ = first.wait();
    let mut resumed = spawn(&scratch, &["run", path, "--from-checkpoint", "latest"]);
    let restored_at = Instant::now();
    wait_for("a checkpoint of the resumed run", || {
        std::fs::metadata(job_dir.join("_lock"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < restored_at.elapsed())
    });
    assert!(
        resumed.try_wait().ok().flatten().is_none(),
        "the resumed run stopped"
    );
    let _ = resumed.kill();
    let _ = resumed.wait();
}

/// The names in the job's `shared/` directory.
fn shared(scratch: &Scratch) -> Vec<String> {
    let dir = scratch.path().join("checkpoints/resume/shared");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the shared directory")
        .map(|e| {
            e.expect("an entry of shared/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn shared_files_no_checkpoint_references_are_deleted_at_start_and_at_the_end() {
    let scratch = Scratch::new();
    let rocksdb = "[state]\nbackend = \"rocksdb\"\ndir = \"state\"";
    let path = scratch.write(
        "job.toml",
        job(200_000, 20_000, rocksdb, "retain-on-cancellation"),
    );
    let path = path.to_str().unwrap_or_default();
    let job_dir = scratch.path().join("checkpoints/resume");
    let mut first = spawn(&scratch, &["run", path]);
    wait_for("a first checkpoint", || has_completed_checkpoint(&job_dir));
    let _ = first.kill();
    let _ = first.wait();
    // What a checkpoint that never completed leaves: an uploaded file nothing names.
    scratch.write(
        "checkpoints/resume/shared/count-0-orphan-1.sst",
        "never referenced",
    );
    let mut resumed = spawn(&scratch, &["run", path, "--from-checkpoint", "latest"]);
    wait_for("the orphan's deletion at start", || {
        !shared(&scratch).contains(&"count-0-orphan-1.sst".to_owned())
    });
    scratch.write(
        "checkpoints/resume/shared/count-0-orphan-2.sst",
        "never referenced",
    );
    let status = resumed.wait().expect("the resumed run ends");
    assert!(status.success(), "the resumed run failed");
    let left = shared(&scratch);
    assert!(
        !left.contains(&"count-0-orphan-2.sst".to_owned()),
        "an orphan outlived the job's end: {left:?}"
    );
    // The newest retained checkpoint still restores: its shared files were kept.
    let last = std::fs::read_dir(&job_dir)
        .expect("the job directory")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("_metadata").exists())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max()
        .map(|(_, path)| path)
        .expect("a retained checkpoint");
    let restored = scratch.run(&[
        "run",
        path,
        "--from-checkpoint",
        last.to_str().unwrap_or_default(),
    ]);
    assert!(restored.status.success(), "{}", describe(&restored));
}
