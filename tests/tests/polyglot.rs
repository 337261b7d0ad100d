//! Operators in other languages on the 0.2.0 contract: the Python (componentize-py) and
//! JavaScript (ComponentizeJS) keyed counters of `examples/`, with their keyed value
//! state and their operator-managed state, checkpointed, killed with SIGKILL once a
//! checkpoint is complete, and resumed with `--from-checkpoint latest`. The committed
//! output must be exactly the failure-free one.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_tests::{Scratch, counted_lines, describe, guest, toml_path};

/// Words `w0` … `w199` in a fixed pseudo-random order, eight to a line.
fn input(lines: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut text = String::new();
    for _ in 0..lines {
        for i in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&format!("w{}", state % 200));
        }
        text.push('\n');
    }
    text
}

fn job(counter: &Path) -> String {
    format!(
        r#"[job]
name = "polyglot"
parallelism = 2

[checkpointing]
interval = "200ms"
dir = "checkpoints"

[[source]]
id = "lines"
kind = "file"
path = "input.txt"

[[operator]]
id = "tokenize"
wasm = "{tokenizer}"
inputs = ["lines"]
partition = "rebalance"

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["tokenize"]
partition = "key-by"

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
# Slow enough that the run outlasts a few checkpoints and the kill lands mid-stream.
rate = 20000
"#,
        tokenizer = toml_path(&guest("word_count_tokenizer")),
        counter = toml_path(counter),
    )
}

/// Whether a checkpoint of the job has completed: its `_metadata` is the commit point.
fn a_checkpoint_completed(dir: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(dir) else {
        return false;
    };
    jobs.filter_map(Result::ok).any(|job| {
        std::fs::read_dir(job.path()).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().join("_metadata").exists())
        })
    })
}

fn exactly_once_across_a_kill(counter: &str) {
    let scratch = Scratch::new();
    let text = input(20_000);
    scratch.write("input.txt", &text);
    let expected = counted_lines(&[text]);
    let job = scratch.write("job.toml", job(&guest(counter)));
    let job = job.to_str().unwrap_or_default().to_owned();

    let mut child = scratch
        .weir(&["run", &job])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts");
    // Wait for the event the kill must follow: a completed checkpoint. The first start
    // may compile the component (tens of seconds for a JavaScript one).
    let started = Instant::now();
    while !a_checkpoint_completed(&scratch.path().join("checkpoints")) {
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the job ended before a checkpoint completed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no checkpoint completed in 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let committed_before = scratch.committed_lines("out").len();
    assert!(
        committed_before < expected.len(),
        "the kill landed after the job had committed everything"
    );

    let output = scratch.run(&["run", &job, "--from-checkpoint", "latest"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(scratch.committed_lines("out"), expected);
}

#[test]
fn the_python_counter_is_exactly_once_across_a_sigkill_and_a_resume() {
    exactly_once_across_a_kill("python_counter");
}

#[test]
fn the_javascript_counter_is_exactly_once_across_a_sigkill_and_a_resume() {
    exactly_once_across_a_kill("js_counter");
}
