//! Word count end to end: file source → tokenizer (WASM) → key-by → counter (WASM, keyed
//! value state) → file sink, checked against counts computed here.

use std::collections::{BTreeMap, HashMap, HashSet};
use weir_tests::{Scratch, describe, guest, toml_path};

const WORDS: &[&str] = &[
    "river", "weir", "stream", "Flow", "water", "stone", "mill", "bank", "current", "eddy", "pool",
    "reed", "heron", "trout", "bridge", "ford", "delta", "ström", "café", "naïve",
];

/// A few thousand lines of words and punctuation, the same on every run.
fn input_text(lines: usize) -> String {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::new();
    for _ in 0..lines {
        let n = next() % 12;
        for i in 0..n {
            let word = WORDS[usize::try_from(next() % 20).unwrap_or(0)];
            text.push_str(word);
            text.push_str(match next() % 5 {
                0 => ", ",
                1 => " -- ",
                2 if i + 1 == n => ".",
                _ => " ",
            });
        }
        text.push('\n');
    }
    text
}

/// Counts computed without Weir: lower-case, split on anything not alphanumeric.
fn expected_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

fn job(scratch: &Scratch, parallelism: u32) -> std::path::PathBuf {
    scratch.write(
        "job.toml",
        format!(
            r#"
[job]
name = "word-count-test"
parallelism = {parallelism}

[[source]]
id = "lines"
kind = "file"
path = ["a.txt", "b.txt", "c.txt"]

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
"#,
            tokenizer = toml_path(&guest("word_count_tokenizer")),
            counter = toml_path(&guest("word_count_counter")),
        ),
    )
}

/// Runs the word count with `args` after the job file; returns weir's log.
fn run_word_count(parallelism: u32, args: &[&str]) -> String {
    let scratch = Scratch::new();
    let texts = [input_text(3000), input_text(1), input_text(1700)];
    for (name, text) in ["a.txt", "b.txt", "c.txt"].iter().zip(&texts) {
        scratch.write(name, text);
    }
    let expected = expected_counts(&texts.concat());
    let job = job(&scratch, parallelism);

    let mut all = vec!["run", job.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    let output = scratch.run(&all);
    assert!(output.status.success(), "{}", describe(&output));

    // The counter emits `word<TAB>count` on every update, so each word must show up with
    // the counts 1..=n exactly once each, and in one part file only (its key's subtask).
    let parts = scratch.parts("out");
    assert!(
        parts.iter().all(|(subtask, _)| *subtask < parallelism),
        "a part file of an unknown subtask"
    );
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut owner: HashMap<String, HashSet<u32>> = HashMap::new();
    for (part, lines) in &parts {
        for line in lines {
            let (word, count) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("malformed output line {line:?}"));
            let count: u64 = count
                .parse()
                .unwrap_or_else(|_| panic!("malformed count in {line:?}"));
            seen.entry(word.to_owned()).or_default().push(count);
            owner.entry(word.to_owned()).or_default().insert(*part);
        }
    }
    let mut finals = BTreeMap::new();
    for (word, mut counts) in seen {
        counts.sort_unstable();
        let n = u64::try_from(counts.len()).unwrap_or(0);
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "updates of {word:?}");
        finals.insert(word, n);
    }
    assert_eq!(finals, expected);
    for (word, parts) in owner {
        assert_eq!(
            parts.len(),
            1,
            "{word:?} was counted by several subtasks: {parts:?}"
        );
    }
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn word_count_with_parallelism_1_matches_an_independent_count() {
    let _ = run_word_count(1, &[]);
}

#[test]
fn word_count_with_parallelism_4_matches_an_independent_count_and_keys_stay_on_one_subtask() {
    let _ = run_word_count(4, &[]);
}

#[test]
fn word_count_across_three_workers_over_tcp_matches_an_independent_count() {
    // Subtasks 0 and 3 on worker 1, 1 on worker 2, 2 on worker 3: the rebalance and the
    // key-by cross every connection in both directions.
    let log = run_word_count(4, &["-D", "network.local-workers=3"]);
    assert!(
        log.contains("3 workers in this process, 3 connections between them on 127.0.0.1"),
        "{log}"
    );
    let carried = log
        .lines()
        .find_map(|l| {
            l.split_once("the exchange between workers carried ")?
                .1
                .strip_suffix(" MiB")
        })
        .and_then(|mib| mib.trim().parse::<f64>().ok());
    assert!(
        carried.is_some_and(|mib| mib > 0.0),
        "nothing crossed between workers:\n{log}"
    );
}

#[test]
fn the_bundled_demo_job_runs() {
    let scratch = Scratch::new();
    let job = weir_tests::repo().join("examples/word-count/job.toml");
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().any(|l| l.split_once('\t').is_some()),
        "{}",
        describe(&output)
    );
}

#[test]
fn an_override_changes_the_parallelism_of_one_node() {
    let scratch = Scratch::new();
    scratch.write("a.txt", input_text(200));
    scratch.write("b.txt", "");
    scratch.write("c.txt", "");
    let job = job(&scratch, 1);
    let output = scratch.run(&[
        "run",
        job.to_str().unwrap_or_default(),
        "-D",
        "sink.out.parallelism=3",
        "-D",
        "operator.count.parallelism=3",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(scratch.parts("out").len(), 3);
}
