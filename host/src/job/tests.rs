//! Tests of the whole pipeline, through [`parse`] and [`load`]: every rule, and
//! the message and line of every error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A job directory with the files the jobs below refer to.
struct Fixture {
    dir: tempfile::TempDir,
}

const WORD_COUNT: &str = r#"[job]
name = "wc"
parallelism = 2

[[source]]
id = "lines"
kind = "file"
path = "in.txt"

[[operator]]
id = "tokenize"
wasm = "tok.wasm"
inputs = ["lines"]

[[operator]]
id = "count"
wasm = "count.wasm"
inputs = ["tokenize"]
partition = "key-by"

[[sink]]
id = "out"
kind = "stdout"
inputs = ["count"]
"#;

/// The smallest valid job: a generator into a blackhole.
const MINIMAL: &str = r#"
[[source]]
id = "gen"
kind = "generator"

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["gen"]
"#;

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["tok.wasm", "count.wasm", "in.txt", "more.txt"] {
            std::fs::write(dir.path().join(file), b"x").expect("write fixture file");
        }
        Fixture { dir }
    }

    fn job_path(&self) -> PathBuf {
        self.dir.path().join("job.toml")
    }

    fn parse(&self, text: &str) -> Result<JobSpec, JobError> {
        self.parse_with(text, &[])
    }

    fn parse_with(&self, text: &str, overrides: &[&str]) -> Result<JobSpec, JobError> {
        let overrides: Vec<Override> = overrides
            .iter()
            .map(|o| o.parse().expect("override syntax"))
            .collect();
        parse(text, &self.job_path(), &overrides)
    }

    fn ok(&self, text: &str) -> JobSpec {
        self.parse(text)
            .unwrap_or_else(|e| panic!("expected a valid job, got: {e}"))
    }

    fn err(&self, text: &str) -> JobError {
        self.err_with(text, &[])
    }

    fn err_with(&self, text: &str, overrides: &[&str]) -> JobError {
        match self.parse_with(text, overrides) {
            Ok(spec) => panic!("expected an error, got {spec:#?}"),
            Err(e) => e,
        }
    }
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
}

/// The 1-based line of the last line of `text` that contains `needle`.
fn last_line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .rposition(|line| line.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
}

/// Asserts that `err` is on the line of `needle` and its message contains every
/// one of `parts`.
fn assert_error(err: &JobError, text: &str, needle: &str, parts: &[&str]) {
    assert_eq!(
        err.location().line(),
        Some(line_of(text, needle)),
        "wrong line for: {err}"
    );
    for part in parts {
        assert!(err.to_string().contains(part), "{part:?} not in: {err}");
    }
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the text");
    text.replacen(from, to, 1)
}

fn node<'a>(spec: &'a JobSpec, id: &str) -> &'a Node {
    let index = spec
        .node_index(id)
        .unwrap_or_else(|| panic!("no node {id}"));
    &spec.nodes[index]
}

// ----- the whole job -----

#[test]
fn a_checkpointed_job_restarts_with_exponential_delay_by_default() {
    let f = Fixture::new();
    let spec = f.ok(&format!("[checkpointing]\ninterval = \"1s\"\n{MINIMAL}"));
    assert_eq!(
        spec.restart,
        RestartStrategy::ExponentialDelay {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.1,
            reset_threshold: Duration::from_secs(3600),
            attempts: None,
        }
    );
}

#[test]
fn a_minimal_job_gets_flinks_defaults() {
    let f = Fixture::new();
    let spec = f.ok(MINIMAL);
    assert_eq!(spec.parallelism, 1);
    assert_eq!(spec.max_parallelism, 128);
    assert_eq!(spec.checkpointing, None);
    // Without checkpoints a restart would start over: Flink does not restart then.
    assert_eq!(spec.restart, RestartStrategy::None);
    assert_eq!(
        spec.state,
        StateConfig {
            backend: StateBackendKind::Heap,
            incremental: false,
            dir: None,
            heap_limit: 1 << 30,
            timer_limit: 1_000_000,
        }
    );
    assert_eq!(spec.nodes.len(), 2);
}

#[test]
fn the_job_name_defaults_to_the_file_stem() {
    let f = Fixture::new();
    assert_eq!(f.ok(MINIMAL).name, "job");
    assert_eq!(f.ok(WORD_COUNT).name, "wc");
}

#[test]
fn an_empty_job_name_is_rejected() {
    let f = Fixture::new();
    let text = format!("[job]\nname = \"\"\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "name", &["`name` is empty"]);
}

#[test]
fn the_job_dir_is_the_absolute_parent_of_the_job_file() {
    let f = Fixture::new();
    let spec = f.ok(MINIMAL);
    assert!(spec.dir.is_absolute());
    assert_eq!(spec.dir, f.dir.path());
}

#[test]
fn a_relative_job_file_gets_an_absolute_dir() {
    let spec = parse(MINIMAL, Path::new("jobs/../x/job.toml"), &[]).expect("valid job");
    assert!(spec.dir.is_absolute());
    assert!(spec.dir.ends_with("x"), "{}", spec.dir.display());
}

#[test]
fn the_word_count_job_is_read_completely() {
    let f = Fixture::new();
    let spec = f.ok(WORD_COUNT);
    assert_eq!(spec.name, "wc");
    let ids: Vec<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["lines", "tokenize", "count", "out"]);
    let tokenize = node(&spec, "tokenize");
    assert_eq!(tokenize.parallelism, 2);
    assert_eq!(tokenize.inputs, [0]);
    let NodeKind::Operator(op) = &tokenize.kind else {
        panic!("tokenize is an operator")
    };
    assert_eq!(
        op.wasm,
        std::fs::canonicalize(f.dir.path().join("tok.wasm")).expect("exists")
    );
    assert_eq!(op.config, "");
    assert_eq!(op.batch_size, 1024);
    assert_eq!(op.sandbox, SandboxSpec::default());
    assert_eq!(node(&spec, "count").partition, Partition::KeyBy);
    assert_eq!(
        node(&spec, "out").kind,
        NodeKind::Sink(SinkSpec {
            kind: SinkKind::Stdout(crate::connectors::StdoutSpec),
            rate: 0
        })
    );
    assert_eq!(spec.outputs_of(1), [2]);
}

// ----- graph -----

#[test]
fn nodes_come_out_in_topological_order() {
    let f = Fixture::new();
    // `count` is declared before the operator it reads from.
    let text = r#"
[[source]]
id = "gen"
kind = "generator"

[[operator]]
id = "count"
wasm = "count.wasm"
inputs = ["tokenize"]

[[operator]]
id = "tokenize"
wasm = "tok.wasm"
inputs = ["gen"]

[[sink]]
id = "out"
kind = "stdout"
inputs = ["count"]
"#;
    let spec = f.ok(text);
    let ids: Vec<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["gen", "tokenize", "count", "out"]);
    for (index, node) in spec.nodes.iter().enumerate() {
        assert!(node.inputs.iter().all(|&i| i < index), "{node:?}");
    }
    assert_eq!(node(&spec, "count").inputs, [1]);
}

#[test]
fn a_node_with_several_inputs_keeps_them_in_order() {
    let f = Fixture::new();
    let text = r#"
[[source]]
id = "a"
kind = "generator"

[[source]]
id = "b"
kind = "generator"

[[operator]]
id = "join"
wasm = "tok.wasm"
inputs = ["b", "a"]

[[sink]]
id = "out"
kind = "stdout"
inputs = ["join"]
"#;
    let spec = f.ok(text);
    assert_eq!(node(&spec, "join").inputs, [1, 0]);
    assert_eq!(spec.outputs_of(0), [2]);
}

#[test]
fn node_parallelism_defaults_to_the_jobs() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "partition = \"key-by\"", "parallelism = 3");
    let spec = f.ok(&text);
    assert_eq!(node(&spec, "lines").parallelism, 2);
    assert_eq!(node(&spec, "count").parallelism, 3);
    assert_eq!(node(&spec, "out").parallelism, 2);
}

#[test]
fn partition_defaults_to_forward_for_equal_parallelism_and_rebalance_otherwise() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "partition = \"key-by\"", "parallelism = 3");
    let spec = f.ok(&text);
    assert_eq!(node(&spec, "tokenize").partition, Partition::Forward);
    assert_eq!(node(&spec, "count").partition, Partition::Rebalance);
    assert_eq!(node(&spec, "out").partition, Partition::Rebalance);
}

#[test]
fn an_explicit_partition_is_kept() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "partition = \"key-by\"",
        "partition = \"broadcast\"",
    );
    assert_eq!(node(&f.ok(&text), "count").partition, Partition::Broadcast);
}

#[test]
fn forward_between_different_parallelisms_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "partition = \"key-by\"",
        "partition = \"forward\"\nparallelism = 4",
    );
    assert_error(
        &f.err(&text),
        &text,
        "partition = \"forward\"",
        &[
            "operator \"count\" uses partition = \"forward\" with parallelism 4",
            "input \"tokenize\" has parallelism 2",
            "does not allow a change of parallelism",
        ],
    );
}

#[test]
fn a_missing_input_lists_the_node_ids() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "inputs = [\"tokenize\"]",
        "inputs = [\"tokenise\"]",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::Graph { .. }));
    assert_eq!(err.location().line(), Some(line_of(&text, "tokenise")));
    assert_eq!(
        err.message(),
        "operator \"count\" reads from \"tokenise\", but no node has that id. Node ids: lines, tokenize, count, out."
    );
}

#[test]
fn an_input_in_a_multi_line_list_is_located_on_its_own_line() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "inputs = [\"tokenize\"]",
        "inputs = [\n  \"lines\",\n  \"nope\",\n]",
    );
    assert_error(&f.err(&text), &text, "\"nope\"", &["reads from \"nope\""]);
}

#[test]
fn duplicate_ids_are_rejected_with_both_lines() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "id = \"count\"", "id = \"tokenize\"");
    let err = f.err(&text);
    assert!(matches!(err, JobError::Graph { .. }));
    let first = line_of(&text, "id = \"tokenize\"");
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("id = \"tokenize\""))
        .map(|(i, _)| i + 1)
        .nth(1)
        .expect("two lines");
    assert_eq!(err.location().line(), Some(second));
    assert!(
        err.message().contains(&format!(
            "the id \"tokenize\" is used twice: by operator \"tokenize\" on line {first}"
        )),
        "{err}"
    );
}

#[test]
fn ids_are_unique_across_kinds() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "id = \"out\"", "id = \"lines\"");
    let err = f.err(&text);
    assert_eq!(
        err.location().line(),
        Some(last_line_of(&text, "id = \"lines\""))
    );
    assert!(
        err.message()
            .contains("by source \"lines\" on line 6 and by this sink"),
        "{err}"
    );
}

#[test]
fn an_id_with_capitals_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "id = \"count\"", "id = \"Count Words\"");
    assert_error(
        &f.err(&text),
        &text,
        "Count Words",
        &["only lowercase letters, digits", "id = \"count-words\""],
    );
}

#[test]
fn a_node_without_id_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "id = \"count\"\n", "");
    let err = f.err(&text);
    assert!(
        err.message().contains("[[operator]] number 2 has no `id`"),
        "{err}"
    );
    assert_eq!(
        err.location().line(),
        Some(line_of(&text, "wasm = \"count.wasm\"") - 1)
    );
}

#[test]
fn a_source_with_inputs_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "path = \"in.txt\"",
        "path = \"in.txt\"\ninputs = [\"out\"]",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::Graph { .. }));
    assert_error(
        &err,
        &text,
        "inputs = [\"out\"]",
        &[
            "[[source]] \"lines\" has `inputs`",
            "make this node an [[operator]]",
        ],
    );
}

#[test]
fn an_operator_without_inputs_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "inputs = [\"tokenize\"]\n", "");
    let err = f.err(&text);
    assert!(
        err.message().contains("operator \"count\" has no inputs"),
        "{err}"
    );
    assert!(err.location().line().is_some());
}

#[test]
fn an_empty_inputs_list_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "inputs = [\"count\"]", "inputs = []");
    assert_error(
        &f.err(&text),
        &text,
        "inputs = []",
        &["sink \"out\" has no inputs"],
    );
}

#[test]
fn a_single_input_may_be_written_as_a_string() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "inputs = [\"count\"]", "inputs = \"count\"");
    assert_eq!(node(&f.ok(&text), "out").inputs, [2]);
}

#[test]
fn a_job_without_a_source_is_rejected() {
    let f = Fixture::new();
    let text = "[[sink]]\nid = \"out\"\nkind = \"stdout\"\ninputs = [\"x\"]\n";
    let err = f.err(text);
    assert_eq!(err.location().place, Place::Whole);
    assert!(err.message().contains("the job has no source"), "{err}");
}

#[test]
fn a_job_without_a_sink_is_rejected() {
    let f = Fixture::new();
    let err = f.err("[[source]]\nid = \"gen\"\nkind = \"generator\"\n");
    assert!(
        err.message()
            .contains("the job has no sink. Add a [[sink]]"),
        "{err}"
    );
}

#[test]
fn a_cycle_is_reported_with_its_path_and_a_line() {
    let f = Fixture::new();
    let text = r#"
[[source]]
id = "gen"
kind = "generator"

[[operator]]
id = "a"
wasm = "tok.wasm"
inputs = ["gen", "b"]

[[operator]]
id = "b"
wasm = "tok.wasm"
inputs = ["a"]

[[sink]]
id = "out"
kind = "stdout"
inputs = ["b"]
"#;
    let err = f.err(text);
    assert!(matches!(err, JobError::Graph { .. }));
    assert_error(
        &err,
        text,
        "inputs = [\"gen\", \"b\"]",
        &["the job graph has a cycle: a -> b -> a. Operators cannot feed their own inputs"],
    );
}

#[test]
fn a_node_reading_from_itself_is_a_cycle() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "inputs = [\"tokenize\"]",
        "inputs = [\"tokenize\", \"count\"]",
    );
    assert!(
        f.err(&text).message().contains("cycle: count -> count"),
        "{}",
        f.err(&text)
    );
}

#[test]
fn reading_from_a_sink_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "inputs = [\"tokenize\"]", "inputs = [\"out\"]");
    assert_error(
        &f.err(&text),
        &text,
        "inputs = [\"out\"]",
        &["reads from sink \"out\", but a sink has no output"],
    );
}

#[test]
fn listing_an_input_twice_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "inputs = [\"tokenize\"]",
        "inputs = [\"tokenize\", \"tokenize\"]",
    );
    assert!(
        f.err(&text).message().contains("lists \"tokenize\" twice"),
        "{}",
        f.err(&text)
    );
}

#[test]
fn an_operator_whose_output_goes_nowhere_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "inputs = [\"count\"]",
        "inputs = [\"tokenize\"]",
    );
    assert_error(
        &f.err(&text),
        &text,
        "id = \"count\"",
        &["operator \"count\" feeds no node"],
    );
}

// ----- parallelism -----

#[test]
fn parallelism_zero_is_rejected_for_a_node() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "partition = \"key-by\"", "parallelism = 0");
    assert_error(
        &f.err(&text),
        &text,
        "parallelism = 0",
        &[
            "operator \"count\" has parallelism 0",
            "leave it out to use the job's parallelism (2)",
        ],
    );
}

#[test]
fn parallelism_zero_is_rejected_for_the_job() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "parallelism = 2", "parallelism = 0");
    assert_error(
        &f.err(&text),
        &text,
        "parallelism = 0",
        &["`parallelism` is 0"],
    );
}

#[test]
fn max_parallelism_below_a_nodes_parallelism_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "partition = \"key-by\"",
        "partition = \"key-by\"\nparallelism = 200",
    );
    assert_error(
        &f.err(&text),
        &text,
        "parallelism = 200",
        &["operator \"count\" has parallelism 200, more than max-parallelism 128"],
    );
}

#[test]
fn max_parallelism_below_the_jobs_parallelism_points_at_the_job() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "parallelism = 2",
        "parallelism = 8\nmax-parallelism = 4",
    );
    assert_error(
        &f.err(&text),
        &text,
        "parallelism = 8",
        &["has parallelism 8, more than max-parallelism 4"],
    );
}

#[test]
fn max_parallelism_must_be_between_one_and_32768() {
    let f = Fixture::new();
    for bad in ["0", "32769"] {
        let text = replace(
            WORD_COUNT,
            "parallelism = 2",
            &format!("max-parallelism = {bad}"),
        );
        assert_error(
            &f.err(&text),
            &text,
            "max-parallelism",
            &["between 1 and 32768"],
        );
    }
    let text = replace(WORD_COUNT, "parallelism = 2", "max-parallelism = 32768");
    assert_eq!(f.ok(&text).max_parallelism, 32768);
}

// ----- keys and types -----

#[test]
fn an_unknown_key_names_the_key_and_its_line() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "partition = \"key-by\"", "paralelism = 4");
    let err = f.err(&text);
    assert!(matches!(err, JobError::UnknownKey(_)));
    assert_eq!(err.location().line(), Some(line_of(&text, "paralelism")));
    assert_eq!(
        err.message(),
        "unknown key `paralelism` in [[operator]] \"count\". Known keys: id, wasm, inputs, partition, parallelism, chaining, config, batch-size, fuel-per-record, memory-limit, call-timeout, sync-phase-timeout, sync-phase-fuel, on-runaway, dead-letter-dir, replay-limit, dirs, env. Did you mean `parallelism`?"
    );
}

#[test]
fn an_unknown_key_in_a_settings_table_is_rejected() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\nintervall = \"1s\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "intervall",
        &[
            "unknown key `intervall` in [checkpointing]",
            "Did you mean `interval`?",
        ],
    );
}

#[test]
fn an_unknown_top_level_table_is_rejected() {
    let f = Fixture::new();
    let text = format!("{MINIMAL}\n[[operators]]\nid = \"x\"\n");
    assert_error(
        &f.err(&text),
        &text,
        "[[operators]]",
        &[
            "unknown key `operators` in the job file (top level)",
            "Known keys: job, checkpointing, restart, state, network, rest, source, operator, sink",
            "Did you mean `operator`?",
        ],
    );
}

#[test]
fn a_key_of_another_source_kind_is_an_unknown_key() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\npath = \"in.txt\"",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::UnknownKey(_)));
    assert_error(
        &err,
        &text,
        "path",
        &[
            "unknown key `path` in [[source]] \"gen\" of kind \"generator\"",
            "Known keys: id, kind, parallelism, chaining, watermark, count, keys, seed, rate, value-size.",
            "`path` belongs to kind \"file\".",
        ],
    );
}

#[test]
fn a_key_of_another_sink_kind_is_an_unknown_key() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"blackhole\"",
        "kind = \"blackhole\"\npath = \"out\"",
    );
    assert_error(
        &f.err(&text),
        &text,
        "path",
        &[
            "unknown key `path` in [[sink]] \"out\" of kind \"blackhole\"",
            "belongs to kind \"file\"",
        ],
    );
}

#[test]
fn partition_on_a_source_is_an_unknown_key() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\npartition = \"forward\"",
    );
    assert_error(
        &f.err(&text),
        &text,
        "partition",
        &["unknown key `partition`"],
    );
}

#[test]
fn a_wrong_type_names_the_key_and_its_line() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "partition = \"key-by\"", "parallelism = \"4\"");
    let err = f.err(&text);
    assert!(matches!(err, JobError::Invalid { .. }));
    assert_error(
        &err,
        &text,
        "parallelism = \"4\"",
        &[
            "invalid value for `parallelism` in [[operator]] \"count\"",
            "expected u32",
        ],
    );
}

#[test]
fn a_wrong_type_in_a_settings_table_names_the_key_and_its_line() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\nunaligned = \"yes\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "unaligned",
        &[
            "invalid value for `unaligned` in [checkpointing]",
            "expected a boolean",
        ],
    );
}

#[test]
fn a_negative_count_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\ncount = -5",
    );
    assert_error(
        &f.err(&text),
        &text,
        "count = -5",
        &["invalid value for `count`"],
    );
}

#[test]
fn an_unknown_partition_lists_the_partitions() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "partition = \"key-by\"",
        "partition = \"keyby\"",
    );
    assert_error(
        &f.err(&text),
        &text,
        "keyby",
        &["`partition`", "forward", "rebalance", "broadcast", "key-by"],
    );
}

#[test]
fn a_settings_section_that_is_not_a_table_is_rejected() {
    let f = Fixture::new();
    let text = format!("job = 3\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "job = 3", &["`job` must be a table"]);
}

#[test]
fn a_node_section_that_is_not_an_array_of_tables_is_rejected() {
    let f = Fixture::new();
    let text = format!("{MINIMAL}\n[operator]\nid = \"x\"\n");
    assert_error(
        &f.err(&text),
        &text,
        "[operator]",
        &["`operator` must be an array of tables", "[[operator]]"],
    );
}

#[test]
fn nodes_written_as_inline_arrays_are_read() {
    let f = Fixture::new();
    let text = r#"
source = [{ id = "gen", kind = "generator", count = 10 }]
sink = [{ id = "out", kind = "stdout", inputs = ["gen"] }]
"#;
    let spec = f.ok(text);
    assert_eq!(spec.nodes.len(), 2);
    let text = r#"
source = [{ id = "gen", kind = "generator", cont = 10 }]
sink = [{ id = "out", kind = "stdout", inputs = ["gen"] }]
"#;
    assert_error(
        &f.err(text),
        text,
        "cont",
        &["unknown key `cont`", "Did you mean `count`?"],
    );
}

#[test]
fn a_syntax_error_reports_line_and_column() {
    let f = Fixture::new();
    let text = format!("{MINIMAL}\n[checkpointing\ninterval = \"1s\"\n");
    let err = f.err(&text);
    assert!(matches!(err, JobError::Syntax { .. }));
    let line = line_of(&text, "[checkpointing");
    assert_eq!(err.location().line(), Some(line));
    assert!(
        err.to_string()
            .contains(&format!("job.toml, line {line}, column ")),
        "{err}"
    );
    assert!(err.message().starts_with("invalid TOML: "), "{err}");
}

#[test]
fn a_duplicate_key_is_a_syntax_error() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\nkind = \"file\"",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::Syntax { .. }), "{err}");
    assert!(
        err.message()
            .contains("duplicate key, in `kind = \"file\"`"),
        "{err}"
    );
}

// ----- files -----

#[test]
fn a_missing_wasm_file_names_the_path_and_the_fix() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"../../target/guests/x.wasm\"",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::MissingFile(_)));
    assert_eq!(err.location().line(), Some(line_of(&text, "x.wasm")));
    let resolved = doc::normalize(&f.dir.path().join("../../target/guests/x.wasm"));
    assert_eq!(
        err.message(),
        format!(
            "operator \"tokenize\": the component file ../../target/guests/x.wasm does not exist (resolved to {}). Build the guests first (scripts/build-guests.sh) or fix the path.",
            resolved.display()
        )
    );
}

#[test]
fn a_directory_is_not_a_component_file() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("dir.wasm")).expect("mkdir");
    let text = replace(WORD_COUNT, "wasm = \"tok.wasm\"", "wasm = \"dir.wasm\"");
    assert!(
        f.err(&text)
            .message()
            .contains("dir.wasm is not a regular file"),
        "{}",
        f.err(&text)
    );
}

#[test]
fn an_operator_without_wasm_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "wasm = \"tok.wasm\"\n", "");
    assert!(
        f.err(&text)
            .message()
            .contains("operator \"tokenize\" has no `wasm`"),
        "{}",
        f.err(&text)
    );
}

#[test]
fn a_missing_input_file_of_a_file_source_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "path = \"in.txt\"",
        "path = [\n  \"in.txt\",\n  \"gone.txt\",\n]",
    );
    let err = f.err(&text);
    assert!(matches!(err, JobError::MissingFile(_)));
    assert_error(
        &err,
        &text,
        "gone.txt",
        &["source \"lines\": the input file gone.txt does not exist (resolved to "],
    );
}

#[test]
fn file_source_paths_are_absolute_and_accept_a_list() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "path = \"in.txt\"",
        "path = [\"in.txt\", \"./more.txt\"]",
    );
    let spec = f.ok(&text);
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::File(source),
        ..
    }) = &node(&spec, "lines").kind
    else {
        panic!("lines is a file source")
    };
    let canonical = |name: &str| std::fs::canonicalize(f.dir.path().join(name)).expect("exists");
    assert_eq!(source.paths, [canonical("in.txt"), canonical("more.txt")]);
}

#[test]
fn a_file_source_without_path_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "path = \"in.txt\"\n", "");
    assert!(
        f.err(&text)
            .message()
            .contains("source \"lines\" of kind \"file\" has no input"),
        "{}",
        f.err(&text)
    );
    let text = replace(WORD_COUNT, "path = \"in.txt\"", "path = []");
    assert_error(&f.err(&text), &text, "path = []", &["has no input"]);
}

#[test]
fn a_file_sink_writes_to_a_directory_resolved_against_the_job_file() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "kind = \"stdout\"",
        "kind = \"file\"\npath = \"out/\"\nrate = 10",
    );
    let spec = f.ok(&text);
    assert_eq!(
        node(&spec, "out").kind,
        NodeKind::Sink(SinkSpec {
            kind: SinkKind::File(crate::connectors::FileSinkSpec {
                path: f.dir.path().join("out")
            }),
            rate: 10
        })
    );
}

#[test]
fn a_file_sink_path_that_is_a_file_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "kind = \"stdout\"",
        "kind = \"file\"\npath = \"in.txt\"",
    );
    let err = f.err(&text);
    assert!(
        err.message().contains("writes a directory of files"),
        "{err}"
    );
    assert_eq!(
        err.location().line(),
        Some(last_line_of(&text, "path = \"in.txt\""))
    );
}

#[test]
fn a_file_sink_without_path_is_rejected() {
    let f = Fixture::new();
    let text = replace(WORD_COUNT, "kind = \"stdout\"", "kind = \"file\"");
    assert!(
        f.err(&text)
            .message()
            .contains("sink \"out\" of kind \"file\" has no `path`"),
        "{}",
        f.err(&text)
    );
}

// ----- kinds -----

#[test]
fn a_source_without_kind_lists_the_kinds() {
    let f = Fixture::new();
    let text = replace(MINIMAL, "kind = \"generator\"\n", "");
    assert!(
        f.err(&text).message().contains(
            "[[source]] \"gen\" has no `kind`. Set kind = \"generator\", kind = \"file\" or kind = \"kafka\"."
        ),
        "{}",
        f.err(&text)
    );
}

#[test]
fn an_unknown_source_kind_lists_the_kinds() {
    let f = Fixture::new();
    let text = replace(MINIMAL, "kind = \"generator\"", "kind = \"pulsar\"");
    assert_error(
        &f.err(&text),
        &text,
        "pulsar",
        &[
            "invalid value for `kind` in [[source]] \"gen\"",
            "`file`",
            "`generator`",
        ],
    );
}

#[test]
fn an_unknown_sink_kind_lists_the_kinds() {
    let f = Fixture::new();
    let text = replace(MINIMAL, "kind = \"blackhole\"", "kind = \"s3\"");
    assert_error(
        &f.err(&text),
        &text,
        "\"s3\"",
        &["`stdout`", "`file`", "`blackhole`"],
    );
}

#[test]
fn generator_defaults_are_applied() {
    let f = Fixture::new();
    let job = f.ok(MINIMAL);
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::Generator(spec),
        ..
    }) = &node(&job, "gen").kind
    else {
        panic!("gen is a generator")
    };
    assert_eq!(
        *spec,
        crate::connectors::GeneratorSpec {
            count: None,
            keys: 1000,
            seed: 0,
            rate: 0,
            value_size: 0
        }
    );
}

#[test]
fn generator_settings_are_read() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\ncount = 1000000\nkeys = 7\nseed = 42\nrate = 500\nvalue-size = 64",
    );
    let job = f.ok(&text);
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::Generator(spec),
        ..
    }) = &node(&job, "gen").kind
    else {
        panic!("gen is a generator")
    };
    assert_eq!(
        *spec,
        crate::connectors::GeneratorSpec {
            count: Some(1_000_000),
            keys: 7,
            seed: 42,
            rate: 500,
            value_size: 64
        }
    );
}

#[test]
fn generator_keys_zero_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\nkeys = 0",
    );
    assert_error(&f.err(&text), &text, "keys = 0", &["`keys` is 0"]);
}

// ----- operator config -----

fn operator_spec(spec: &JobSpec, id: &str) -> OperatorSpec {
    match &node(spec, id).kind {
        NodeKind::Operator(op) => op.clone(),
        other => panic!("{id} is not an operator: {other:?}"),
    }
}

#[test]
fn a_config_string_is_passed_as_is() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"tok.wasm\"\nconfig = '{\"min-length\": 2}'",
    );
    assert_eq!(
        operator_spec(&f.ok(&text), "tokenize").config,
        "{\"min-length\": 2}"
    );
}

#[test]
fn a_config_table_is_passed_as_json() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"tok.wasm\"\nconfig = { min-length = 2, stop = [\"a\", \"the\"], lower = true }",
    );
    let config = operator_spec(&f.ok(&text), "tokenize").config;
    let json: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"min-length": 2, "stop": ["a", "the"], "lower": true})
    );
}

#[test]
fn a_config_as_a_table_section_is_passed_as_json() {
    let f = Fixture::new();
    let text = format!("{WORD_COUNT}\n[operator.config]\nmin-length = 3\n");
    // `[operator.config]` belongs to the last [[operator]], "count".
    assert_eq!(
        operator_spec(&f.ok(&text), "count").config,
        "{\"min-length\":3}"
    );
}

#[test]
fn a_config_of_another_type_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"tok.wasm\"\nconfig = 5",
    );
    assert_error(
        &f.err(&text),
        &text,
        "config = 5",
        &["invalid value for `config`", "expected a string or a table"],
    );
}

#[test]
fn batch_size_is_read_and_zero_is_rejected() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"tok.wasm\"\nbatch-size = 64",
    );
    assert_eq!(operator_spec(&f.ok(&text), "tokenize").batch_size, 64);
    let text = replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        "wasm = \"tok.wasm\"\nbatch-size = 0",
    );
    assert_error(
        &f.err(&text),
        &text,
        "batch-size = 0",
        &["`batch-size` is 0"],
    );
}

// ----- checkpointing -----

const FULL_CHECKPOINTING: &str = r#"[checkpointing]
interval = "2s"
mode = "at-least-once"
timeout = "10min"
min-pause = "500ms"
max-concurrent = 2
tolerable-failed = 3
unaligned = false
retention = "retain-on-cancellation"
num-retained = 3
dir = "file:///var/lib/weir/checkpoints"
"#;

#[test]
fn a_full_checkpointing_table_is_read() {
    let f = Fixture::new();
    let spec = f.ok(&format!("{FULL_CHECKPOINTING}{MINIMAL}"));
    assert_eq!(
        spec.checkpointing,
        Some(CheckpointingConfig {
            interval: Duration::from_secs(2),
            mode: CheckpointMode::AtLeastOnce,
            timeout: Duration::from_secs(600),
            min_pause: Duration::from_millis(500),
            max_concurrent: 2,
            tolerable_failed: 3,
            unaligned: false,
            aligned_timeout: Duration::ZERO,
            recover_without_channel_state: None,
            retention: Retention::RetainOnCancellation,
            num_retained: 3,
            dir: StorageUrl::File(PathBuf::from("/var/lib/weir/checkpoints")),
            savepoint_dir: None,
            s3: S3Settings::default(),
        })
    );
}

#[test]
fn an_s3_table_sets_the_endpoint_and_upload_settings() {
    let f = Fixture::new();
    let spec = f.ok(&format!(
        "[checkpointing]\ninterval = \"1s\"\ndir = \"s3://bucket/jobs\"\n[checkpointing.s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\nforce-path-style = true\npart-size = \"16MiB\"\nupload-concurrency = 8\nlease-timeout = \"5s\"\n{MINIMAL}"
    ));
    let s3 = spec.checkpointing.map(|c| c.s3).unwrap_or_default();
    assert_eq!(
        s3,
        S3Settings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-1".into()),
            force_path_style: true,
            part_size: Some(16 << 20),
            upload_concurrency: Some(8),
            lease_timeout: Some(std::time::Duration::from_secs(5)),
        }
    );
}

#[test]
fn an_s3_table_with_a_local_checkpoint_dir_is_refused_as_doing_nothing() {
    let f = Fixture::new();
    let err = f.err(&format!(
        "[checkpointing]\ninterval = \"1s\"\ndir = \"ckpt\"\n[checkpointing.s3]\nlease-timeout = \"5s\"\n{MINIMAL}"
    ));
    let err = err.to_string();
    assert!(
        err.contains("only applies to an s3:// checkpoint `dir`") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn an_unknown_key_in_the_s3_table_is_named_with_its_table() {
    let f = Fixture::new();
    let err = f.err(&format!(
        "[checkpointing]\ninterval = \"1s\"\n[checkpointing.s3]\nendpoint-url = \"x\"\n{MINIMAL}"
    ));
    let err = err.to_string();
    assert!(
        err.contains("endpoint-url") && err.contains("[checkpointing.s3]"),
        "{err}"
    );
}

#[test]
fn an_s3_part_below_five_mebibytes_is_refused() {
    let f = Fixture::new();
    let err = f.err(&format!(
        "[checkpointing]\ninterval = \"1s\"\n[checkpointing.s3]\npart-size = \"1MiB\"\n{MINIMAL}"
    ));
    assert!(err.to_string().contains("5 MiB"), "{err}");
}

#[test]
fn checkpointing_defaults_follow_flink() {
    let f = Fixture::new();
    let spec = f.ok(&format!("[checkpointing]\ninterval = \"1s\"\n{MINIMAL}"));
    let c = spec.checkpointing.expect("on");
    assert_eq!(c.mode, CheckpointMode::ExactlyOnce);
    assert_eq!(c.timeout, Duration::from_secs(600));
    assert_eq!(c.min_pause, Duration::ZERO);
    assert_eq!(c.max_concurrent, 1);
    assert_eq!(c.tolerable_failed, 0);
    assert!(!c.unaligned);
    assert_eq!(c.retention, Retention::DeleteOnCancellation);
    assert_eq!(c.num_retained, 1);
}

#[test]
fn checkpointing_is_off_without_an_interval() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\nmode = \"exactly-once\"\n{MINIMAL}");
    assert_eq!(f.ok(&text).checkpointing, None);
}

#[test]
fn checkpoint_dir_defaults_to_checkpoints_beside_the_job_file() {
    let f = Fixture::new();
    let spec = f.ok(&format!("[checkpointing]\ninterval = \"1s\"\n{MINIMAL}"));
    assert_eq!(
        spec.checkpointing.expect("on").dir,
        StorageUrl::File(f.dir.path().join("checkpoints"))
    );
}

#[test]
fn a_relative_checkpoint_dir_resolves_against_the_job_file() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\ndir = \"state/../chk\"\n{MINIMAL}");
    assert_eq!(
        f.ok(&text).checkpointing.expect("on").dir,
        StorageUrl::File(f.dir.path().join("chk"))
    );
}

#[test]
fn an_s3_checkpoint_dir_is_split_into_bucket_and_prefix() {
    let f = Fixture::new();
    let text =
        format!("[checkpointing]\ninterval = \"1s\"\ndir = \"s3://my-bucket/jobs/wc/\"\n{MINIMAL}");
    assert_eq!(
        f.ok(&text).checkpointing.expect("on").dir,
        StorageUrl::S3 {
            bucket: "my-bucket".into(),
            prefix: "jobs/wc".into()
        }
    );
}

#[test]
fn storage_urls_display_as_urls() {
    assert_eq!(
        StorageUrl::File(PathBuf::from("/tmp/chk")).to_string(),
        "file:///tmp/chk"
    );
    let s3 = |prefix: &str| StorageUrl::S3 {
        bucket: "b-1".into(),
        prefix: prefix.into(),
    };
    assert_eq!(s3("a/b").to_string(), "s3://b-1/a/b");
    assert_eq!(s3("").to_string(), "s3://b-1");
}

#[test]
fn a_bad_checkpoint_dir_is_rejected_with_the_reason() {
    let f = Fixture::new();
    for (dir, reason) in [
        ("hdfs://nn/chk", "the scheme \"hdfs\" is not supported"),
        ("file://relative/chk", "a file URL needs an absolute path"),
        ("s3://", "is not an S3 bucket name"),
        ("s3://My_Bucket/x", "is not an S3 bucket name"),
        ("", "it is empty"),
    ] {
        let text = format!("[checkpointing]\ninterval = \"1s\"\ndir = \"{dir}\"\n{MINIMAL}");
        assert_error(
            &f.err(&text),
            &text,
            "dir =",
            &[&format!("invalid checkpoint `dir` \"{dir}\""), reason],
        );
    }
}

#[test]
fn a_file_url_with_one_slash_is_accepted() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\ndir = \"file:/tmp/chk\"\n{MINIMAL}");
    assert_eq!(
        f.ok(&text).checkpointing.expect("on").dir,
        StorageUrl::File(PathBuf::from("/tmp/chk"))
    );
}

#[test]
fn an_invalid_duration_names_the_key_the_value_and_the_line() {
    let text = format!("[checkpointing]\n\ninterval = \"10 parsecs\"\n{MINIMAL}");
    let err = parse(&text, Path::new("job.toml"), &[]).expect_err("invalid");
    assert!(matches!(err, JobError::Invalid { .. }));
    assert_eq!(
        err.to_string(),
        "job.toml, line 3: invalid duration \"10 parsecs\" for `interval`: expected a number followed by ms, s, min, h or d, e.g. \"500ms\"."
    );
}

#[test]
fn a_duration_written_as_a_number_needs_a_unit() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = 2000\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "2000",
        &["invalid duration \"2000\"", "needs a unit"],
    );
    let text = format!("[checkpointing]\ninterval = true\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "true",
        &["a duration string such as \"500ms\""],
    );
}

#[test]
fn an_interval_below_ten_milliseconds_is_rejected() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"5ms\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "5ms",
        &["shorter than the minimum of 10ms"],
    );
    let text = format!("[checkpointing]\ninterval = \"1s\"\ntimeout = \"0s\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "timeout",
        &["`timeout` 0ns is shorter"],
    );
}

#[test]
fn unaligned_checkpoints_need_exactly_once() {
    let f = Fixture::new();
    let text = format!(
        "[checkpointing]\ninterval = \"1s\"\nmode = \"at-least-once\"\nunaligned = true\n{MINIMAL}"
    );
    assert_error(
        &f.err(&text),
        &text,
        "unaligned",
        &["unaligned checkpoints need mode = \"exactly-once\""],
    );
}

#[test]
fn unaligned_checkpoints_need_max_concurrent_one() {
    let f = Fixture::new();
    let text = format!(
        "[checkpointing]\ninterval = \"1s\"\nmax-concurrent = 2\nunaligned = true\naligned-timeout = \"100ms\"\n{MINIMAL}"
    );
    assert_error(&f.err(&text), &text, "unaligned", &["max-concurrent is 2"]);
    let text = text.replace("max-concurrent = 2\n", "");
    let c = f.ok(&text).checkpointing.expect("on");
    assert!(c.unaligned);
    assert_eq!(c.aligned_timeout, Duration::from_millis(100));
}

#[test]
fn num_retained_and_max_concurrent_of_zero_are_rejected() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\nnum-retained = 0\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "num-retained",
        &["`num-retained` is 0"],
    );
    let text = format!("[checkpointing]\ninterval = \"1s\"\nmax-concurrent = 0\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "max-concurrent",
        &["`max-concurrent` is 0"],
    );
}

#[test]
fn an_unknown_checkpoint_mode_lists_the_modes() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\nmode = \"twice\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "twice",
        &[
            "invalid value for `mode` in [checkpointing]",
            "`exactly-once`",
            "`at-least-once`",
        ],
    );
}

// ----- restart -----

#[test]
fn each_restart_strategy_is_read_with_flinks_defaults() {
    let f = Fixture::new();
    let restart = |table: &str| f.ok(&format!("[restart]\n{table}\n{MINIMAL}")).restart;
    assert_eq!(restart("strategy = \"none\""), RestartStrategy::None);
    assert_eq!(
        restart("strategy = \"fixed-delay\""),
        RestartStrategy::FixedDelay {
            attempts: 3,
            delay: Duration::from_secs(1)
        }
    );
    assert_eq!(
        restart("strategy = \"fixed-delay\"\nattempts = 5\ndelay = \"10s\""),
        RestartStrategy::FixedDelay {
            attempts: 5,
            delay: Duration::from_secs(10)
        }
    );
    assert_eq!(
        restart("strategy = \"failure-rate\""),
        RestartStrategy::FailureRate {
            max_failures: 1,
            interval: Duration::from_secs(60),
            delay: Duration::from_secs(1)
        }
    );
    assert_eq!(
        restart("max-backoff = \"5min\"\nattempts = 10"),
        RestartStrategy::ExponentialDelay {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.1,
            reset_threshold: Duration::from_secs(3600),
            attempts: Some(10),
        }
    );
}

#[test]
fn a_restart_key_of_another_strategy_names_the_strategy() {
    let f = Fixture::new();
    let text = format!("[restart]\nstrategy = \"failure-rate\"\nattempts = 3\n{MINIMAL}");
    let err = f.err(&text);
    assert!(matches!(err, JobError::UnknownKey(_)));
    assert_error(
        &err,
        &text,
        "attempts",
        &[
            "unknown key `attempts` in [restart] for strategy \"failure-rate\"",
            "Known keys: strategy, max-failures-per-interval, failure-rate-interval, delay.",
            "`attempts` belongs to strategy \"fixed-delay\" and strategy \"exponential-delay\".",
        ],
    );
}

#[test]
fn the_default_strategy_rejects_fixed_delay_keys() {
    let f = Fixture::new();
    let text = format!("[restart]\ndelay = \"1s\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "delay",
        &["[restart] for strategy \"exponential-delay\""],
    );
}

#[test]
fn an_unknown_restart_strategy_lists_the_strategies() {
    let f = Fixture::new();
    let text = format!("[restart]\nstrategy = \"always\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "always",
        &[
            "invalid value for `strategy` in [restart]",
            "`none`",
            "`fixed-delay`",
            "`exponential-delay`",
            "`failure-rate`",
        ],
    );
}

#[test]
fn exponential_delay_settings_are_checked() {
    let f = Fixture::new();
    for (setting, message) in [
        ("backoff-multiplier = 0.5", "the backoff must not shrink"),
        ("jitter-factor = 1.5", "between 0.0 and 1.0"),
        (
            "initial-backoff = \"2min\"",
            "`max-backoff` 60s is shorter than `initial-backoff` 120s",
        ),
        ("initial-backoff = \"0s\"", "`initial-backoff` is 0"),
        ("attempts = 0", "`attempts` is 0"),
    ] {
        let text = format!("[restart]\n{setting}\n{MINIMAL}");
        let err = f.err(&text);
        assert!(err.to_string().contains(message), "{setting}: {err}");
        assert!(err.location().line().is_some(), "{setting}: {err}");
    }
}

#[test]
fn failure_rate_settings_are_checked() {
    let f = Fixture::new();
    let text =
        format!("[restart]\nstrategy = \"failure-rate\"\nmax-failures-per-interval = 0\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "max-failures",
        &["`max-failures-per-interval` is 0"],
    );
}

// ----- state -----

#[test]
fn state_backend_and_dir_are_read() {
    let f = Fixture::new();
    let text =
        format!("[state]\nbackend = \"rocksdb\"\nincremental = true\ndir = \"rocks\"\n{MINIMAL}");
    assert_eq!(
        f.ok(&text).state,
        StateConfig {
            backend: StateBackendKind::RocksDb,
            incremental: true,
            dir: Some(f.dir.path().join("rocks")),
            heap_limit: 1 << 30,
            timer_limit: 1_000_000,
        }
    );
}

#[test]
fn an_unknown_state_backend_lists_the_backends() {
    let f = Fixture::new();
    let text = format!("[state]\nbackend = \"rocks-db\"\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "rocks-db", &["`heap`", "`rocksdb`"]);
}

// ----- [rest] -----

#[test]
fn the_rest_server_listens_on_loopback_from_port_8081_by_default() {
    let f = Fixture::new();
    let rest = f.ok(MINIMAL).rest;
    assert_eq!(
        rest,
        RestConfig {
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            ports: (8081, 8180),
            token: None,
        }
    );
    assert!(rest.is_loopback());
}

#[test]
fn a_rest_port_is_one_port_a_range_or_zero_for_any() {
    let f = Fixture::new();
    let port = |p: &str| f.ok(&format!("[rest]\nport = {p}\n{MINIMAL}")).rest.ports;
    assert_eq!(port("9000"), (9000, 9000));
    assert_eq!(port("\"9000-9010\""), (9000, 9010));
    assert_eq!(port("0"), (0, 0));
    assert_eq!(
        f.ok(&format!(
            "[rest]\naddress = \"0.0.0.0\"\ntoken = \"s3cret\"\n{MINIMAL}"
        ))
        .rest
        .token
        .as_deref(),
        Some("s3cret")
    );
}

#[test]
fn a_bad_rest_address_or_port_or_an_empty_token_is_refused_with_the_fix() {
    let f = Fixture::new();
    let text = format!("[rest]\naddress = \"localhost:80\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "localhost:80",
        &["not an IP address", "0.0.0.0"],
    );
    for bad in ["\"9010-9000\"", "70000", "\"http\""] {
        let text = format!("[rest]\nport = {bad}\n{MINIMAL}");
        assert_error(&f.err(&text), &text, "port =", &["port = 0"]);
    }
    let text = format!("[rest]\ntoken = \" \"\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "token", &["anyone"]);
    let text = format!("[rest]\nbind-port = 1\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "bind-port", &["bind-port"]);
}

// ----- overrides -----

#[test]
fn an_override_parses_key_and_value() {
    let o: Override = "checkpointing.interval=500ms".parse().expect("valid");
    assert_eq!(o.key, "checkpointing.interval");
    assert_eq!(o.value, "500ms");
    let o: Override = "operator.t.config=a=b".parse().expect("valid");
    assert_eq!(o.value, "a=b");
    assert_eq!(o.to_string(), "operator.t.config=a=b");
}

#[test]
fn an_override_without_equals_is_rejected() {
    let err = "job.parallelism".parse::<Override>().expect_err("no =");
    assert!(err.to_string().contains("expected key=value"), "{err}");
    assert!("=4".parse::<Override>().is_err());
}

#[test]
fn an_override_replaces_a_value_in_the_file() {
    let f = Fixture::new();
    let spec = f
        .parse_with(WORD_COUNT, &["job.parallelism=4"])
        .expect("valid");
    assert_eq!(spec.parallelism, 4);
    assert_eq!(node(&spec, "tokenize").parallelism, 4);
}

#[test]
fn an_override_value_is_read_as_toml_when_it_is_toml_and_as_a_string_otherwise() {
    let f = Fixture::new();
    let spec = f
        .parse_with(
            WORD_COUNT,
            &[
                "job.name=\"quoted\"",
                "checkpointing.interval=500ms",
                "checkpointing.unaligned=true",
                "checkpointing.dir=file:///tmp/x",
                "source.lines.path=[\"in.txt\", \"more.txt\"]",
            ],
        )
        .expect("valid");
    assert_eq!(spec.name, "quoted");
    let c = spec.checkpointing.clone().expect("on");
    assert_eq!(c.interval, Duration::from_millis(500));
    assert!(c.unaligned);
    assert_eq!(c.dir, StorageUrl::File(PathBuf::from("/tmp/x")));
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::File(source),
        ..
    }) = &node(&spec, "lines").kind
    else {
        panic!("file source")
    };
    assert_eq!(source.paths.len(), 2);
}

#[test]
fn an_override_creates_a_missing_table() {
    let f = Fixture::new();
    let spec = f
        .parse_with(MINIMAL, &["checkpointing.interval=1s", "job.parallelism=3"])
        .expect("valid");
    assert_eq!(
        spec.checkpointing.expect("on").interval,
        Duration::from_secs(1)
    );
    assert_eq!(spec.parallelism, 3);
}

#[test]
fn an_override_of_zero_is_a_valid_duration() {
    let f = Fixture::new();
    let spec = f
        .parse_with(
            MINIMAL,
            &["checkpointing.interval=1s", "checkpointing.min-pause=0"],
        )
        .expect("valid");
    assert_eq!(spec.checkpointing.expect("on").min_pause, Duration::ZERO);
}

#[test]
fn an_override_addresses_a_node_by_kind_and_id() {
    let f = Fixture::new();
    let spec = f
        .parse_with(
            WORD_COUNT,
            &[
                "operator.count.parallelism=4",
                "operator.tokenize.config.min-length=2",
                "source.lines.path=more.txt",
            ],
        )
        .expect("valid");
    assert_eq!(node(&spec, "count").parallelism, 4);
    assert_eq!(node(&spec, "tokenize").parallelism, 2);
    assert_eq!(
        operator_spec(&spec, "tokenize").config,
        "{\"min-length\":2}"
    );
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::File(source),
        ..
    }) = &node(&spec, "lines").kind
    else {
        panic!("file source")
    };
    assert!(source.paths[0].ends_with("more.txt"));
}

#[test]
fn an_override_can_switch_a_sink_kind() {
    let f = Fixture::new();
    let spec = f
        .parse_with(WORD_COUNT, &["sink.out.kind=blackhole"])
        .expect("valid");
    assert_eq!(
        node(&spec, "out").kind,
        NodeKind::Sink(SinkSpec {
            kind: SinkKind::Blackhole(crate::connectors::BlackholeSpec),
            rate: 0
        })
    );
}

#[test]
fn overrides_apply_in_order() {
    let f = Fixture::new();
    let spec = f
        .parse_with(WORD_COUNT, &["job.parallelism=4", "job.parallelism=5"])
        .expect("valid");
    assert_eq!(spec.parallelism, 5);
}

#[test]
fn an_override_naming_a_missing_node_is_an_error_naming_the_override() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["operator.cont.parallelism=4"]);
    assert!(matches!(err, JobError::Override { .. }));
    assert_eq!(
        err.location().place,
        Place::Override("operator.cont.parallelism=4".into())
    );
    assert_eq!(
        err.message(),
        "no [[operator]] has id \"cont\". Operator ids: tokenize, count."
    );
    let err = f.err_with(MINIMAL, &["operator.x.parallelism=4"]);
    assert!(
        err.message().contains("The job file has no [[operator]]."),
        "{err}"
    );
}

#[test]
fn an_error_in_an_overridden_value_names_the_override() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["checkpointing.interval=abc"]);
    assert!(matches!(err, JobError::Invalid { .. }));
    assert_eq!(err.location().line(), None);
    assert!(
        err.to_string().ends_with(
            "job.toml, in -D checkpointing.interval=abc: invalid duration \"abc\" for `interval`: expected a number followed by ms, s, min, h or d, e.g. \"500ms\"."
        ),
        "{err}"
    );
}

#[test]
fn an_error_in_an_overridden_value_of_an_existing_table_names_the_override() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\n{MINIMAL}");
    let err = f.err_with(&text, &["checkpointing.interval=1ms"]);
    assert_eq!(
        err.location().place,
        Place::Override("checkpointing.interval=1ms".into())
    );
}

#[test]
fn a_type_error_from_an_override_names_the_override() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["operator.count.parallelism=many"]);
    assert_eq!(
        err.location().place,
        Place::Override("operator.count.parallelism=many".into())
    );
    assert!(
        err.message().contains("invalid value for `parallelism`"),
        "{err}"
    );
}

#[test]
fn an_unknown_key_from_an_override_names_the_override() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["job.paralelism=4"]);
    assert!(matches!(err, JobError::UnknownKey(_)));
    assert_eq!(
        err.location().place,
        Place::Override("job.paralelism=4".into())
    );
    assert!(
        err.message().contains("Did you mean `parallelism`?"),
        "{err}"
    );
    let err = f.err_with(WORD_COUNT, &["chekpointing.interval=1s"]);
    assert_eq!(
        err.location().place,
        Place::Override("chekpointing.interval=1s".into())
    );
}

#[test]
fn a_graph_error_caused_by_an_override_names_the_override() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["operator.count.inputs=[\"nope\"]"]);
    assert_eq!(
        err.location().place,
        Place::Override("operator.count.inputs=[\"nope\"]".into())
    );
    let err = f.err_with(WORD_COUNT, &["operator.count.wasm=gone.wasm"]);
    assert!(matches!(err, JobError::MissingFile(_)));
    assert_eq!(
        err.location().place,
        Place::Override("operator.count.wasm=gone.wasm".into())
    );
}

#[test]
fn an_override_through_a_value_is_rejected() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["job.name.first=x"]);
    assert!(matches!(err, JobError::Override { .. }));
    assert!(
        err.message()
            .contains("`job.name` is a value, not a table, so it has no key `first`"),
        "{err}"
    );
}

#[test]
fn an_override_with_an_invalid_key_is_rejected() {
    let f = Fixture::new();
    for key in ["job..parallelism", "job.para llelism", ".x"] {
        let err = f.err_with(WORD_COUNT, &[&format!("{key}=1")]);
        assert!(matches!(err, JobError::Override { .. }), "{err}");
        assert!(err.message().contains("is not a dotted key"), "{err}");
    }
}

#[test]
fn an_override_of_a_node_needs_kind_id_and_key() {
    let f = Fixture::new();
    let err = f.err_with(WORD_COUNT, &["operator.count=4"]);
    assert!(
        err.message().contains("-D operator.<id>.parallelism=4"),
        "{err}"
    );
}

#[test]
fn an_override_into_inline_tables_works() {
    let f = Fixture::new();
    let text = format!("checkpointing = {{ interval = \"1s\" }}\n{MINIMAL}");
    let spec = f
        .parse_with(&text, &["checkpointing.mode=at-least-once"])
        .expect("valid");
    assert_eq!(
        spec.checkpointing.expect("on").mode,
        CheckpointMode::AtLeastOnce
    );
    let text = r#"
source = [{ id = "gen", kind = "generator" }]
sink = [{ id = "out", kind = "stdout", inputs = ["gen"] }]
"#;
    let spec = f.parse_with(text, &["source.gen.count=5"]).expect("valid");
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::Generator(g),
        ..
    }) = &node(&spec, "gen").kind
    else {
        panic!("generator")
    };
    assert_eq!(g.count, Some(5));
}

// ----- load and Display -----

#[test]
fn load_reads_the_file_and_resolves_relative_to_it() {
    let f = Fixture::new();
    std::fs::write(f.job_path(), WORD_COUNT).expect("write job");
    let spec = load(&f.job_path(), &[]).expect("valid");
    assert_eq!(spec.dir, f.dir.path());
    assert_eq!(spec.nodes.len(), 4);
    let overrides = ["job.parallelism=3".parse().expect("valid")];
    assert_eq!(
        load(&f.job_path(), &overrides).expect("valid").parallelism,
        3
    );
}

#[test]
fn load_of_a_missing_file_is_an_io_error_naming_the_file() {
    let f = Fixture::new();
    let path = f.dir.path().join("nope.toml");
    let err = load(&path, &[]).expect_err("missing");
    assert!(matches!(err, JobError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read the job file: ", path.display())),
        "{err}"
    );
}

#[test]
fn every_error_starts_with_the_file_and_line() {
    let text = "[job]\nparallelism = \"two\"\n";
    let err = parse(text, Path::new("examples/wc/job.toml"), &[]).expect_err("invalid");
    assert!(
        err.to_string()
            .starts_with("examples/wc/job.toml, line 2: "),
        "{err}"
    );
    assert!(err.to_string().ends_with('.'), "{err}");
}

// ----- the sandbox -----

/// The word-count job with `keys` added to the `tokenize` operator.
fn with_sandbox(keys: &str) -> String {
    replace(
        WORD_COUNT,
        "wasm = \"tok.wasm\"",
        &format!("wasm = \"tok.wasm\"\n{keys}"),
    )
}

#[test]
fn an_operator_gets_a_metered_sandbox_with_nothing_granted_by_default() {
    let sandbox = SandboxSpec::default();
    assert_eq!(sandbox.fuel_per_record, Some(10_000_000));
    assert_eq!(sandbox.memory_limit, 256 << 20);
    assert_eq!(sandbox.call_timeout, Duration::from_secs(10));
    assert_eq!(sandbox.sync_phase_timeout, None);
    assert_eq!(sandbox.sync_phase_fuel, None);
    assert_eq!(sandbox.on_runaway, RunawayPolicy::Fail);
    assert!(sandbox.dirs.is_empty() && sandbox.env.is_empty());
}

#[test]
fn every_sandbox_key_is_read() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("data")).expect("a data dir");
    let text = with_sandbox(
        r#"fuel-per-record = 5000
memory-limit = "64MiB"
call-timeout = "2s"
sync-phase-timeout = "500ms"
sync-phase-fuel = 1000000
on-runaway = "dead-letter"
dead-letter-dir = "letters"
replay-limit = "8MiB"
dirs = [{ host = "data", guest = "/data" }, { host = ".", guest = "/job", writable = true }]
env = ["GREETING=hello=world", "EMPTY="]"#,
    );
    let sandbox = operator_spec(&f.ok(&text), "tokenize").sandbox;
    let dir = std::fs::canonicalize(f.dir.path()).expect("exists");
    assert_eq!(
        sandbox,
        SandboxSpec {
            fuel_per_record: Some(5000),
            memory_limit: 64 << 20,
            call_timeout: Duration::from_secs(2),
            sync_phase_timeout: Some(Duration::from_millis(500)),
            sync_phase_fuel: Some(1_000_000),
            on_runaway: RunawayPolicy::DeadLetter {
                dir: f.dir.path().join("letters"),
                replay_limit: 8 << 20,
            },
            dirs: vec![
                DirGrant {
                    host: dir.join("data"),
                    guest: "/data".into(),
                    writable: false
                },
                DirGrant {
                    host: dir,
                    guest: "/job".into(),
                    writable: true
                },
            ],
            env: vec![
                ("GREETING".into(), "hello=world".into()),
                ("EMPTY".into(), String::new())
            ],
        }
    );
}

#[test]
fn fuel_per_record_zero_turns_fuel_metering_off() {
    let f = Fixture::new();
    let text = with_sandbox("fuel-per-record = 0");
    let sandbox = operator_spec(&f.ok(&text), "tokenize").sandbox;
    assert_eq!(sandbox.fuel_per_record, None);
    let text = with_sandbox("fuel-per-record = 0\nsync-phase-fuel = 100");
    assert_error(
        &f.err(&text),
        &text,
        "sync-phase-fuel = 100",
        &[
            "`sync-phase-fuel` needs fuel metering",
            "fuel-per-record = 0",
        ],
    );
}

#[test]
fn a_memory_limit_is_a_binary_size_of_at_least_one_mebibyte() {
    let f = Fixture::new();
    let text = with_sandbox("memory-limit = 1048576");
    assert_eq!(
        operator_spec(&f.ok(&text), "tokenize").sandbox.memory_limit,
        1 << 20
    );
    let text = with_sandbox("memory-limit = \"512KiB\"");
    assert_error(
        &f.err(&text),
        &text,
        "memory-limit",
        &[
            "operator \"tokenize\": `memory-limit` is 512 KiB",
            "at least 1 MiB",
            "default 256 MiB",
        ],
    );
    let text = with_sandbox("memory-limit = \"64MB\"");
    assert_error(
        &f.err(&text),
        &text,
        "memory-limit",
        &[
            "invalid size \"64MB\" for `memory-limit`",
            "write 64MiB instead",
        ],
    );
}

#[test]
fn a_call_timeout_below_the_enforceable_least_is_rejected() {
    let f = Fixture::new();
    let text = with_sandbox("call-timeout = \"50ms\"");
    assert_error(
        &f.err(&text),
        &text,
        "call-timeout",
        &[
            "`call-timeout` is 50ms",
            "least the host can enforce (100ms)",
        ],
    );
    let text = with_sandbox("call-timeout = \"0\"");
    assert_error(
        &f.err(&text),
        &text,
        "call-timeout",
        &["no guest call can run without a deadline"],
    );
    let text = with_sandbox("call-timeout = \"soon\"");
    assert_error(
        &f.err(&text),
        &text,
        "call-timeout",
        &["invalid duration \"soon\" for `call-timeout`"],
    );
}

#[test]
fn a_sync_phase_limit_must_be_positive_and_below_the_call_timeout() {
    let f = Fixture::new();
    let text = with_sandbox("sync-phase-timeout = \"0s\"");
    assert_error(
        &f.err(&text),
        &text,
        "sync-phase-timeout",
        &["would decline every checkpoint"],
    );
    let text = with_sandbox("sync-phase-timeout = \"10s\"");
    assert_error(
        &f.err(&text),
        &text,
        "sync-phase-timeout",
        &["must be shorter than `call-timeout` (10s)"],
    );
    let text = with_sandbox("sync-phase-fuel = 0");
    assert_error(
        &f.err(&text),
        &text,
        "sync-phase-fuel",
        &["would decline every checkpoint"],
    );
}

#[test]
fn dead_letter_settings_without_the_dead_letter_policy_are_rejected() {
    let f = Fixture::new();
    let text = with_sandbox("dead-letter-dir = \"letters\"");
    assert_error(
        &f.err(&text),
        &text,
        "dead-letter-dir",
        &["only used with on-runaway = \"dead-letter\""],
    );
    let text = with_sandbox("on-runaway = \"dead-letter\"\nreplay-limit = 0");
    assert_error(
        &f.err(&text),
        &text,
        "replay-limit",
        &["`replay-limit` is 0"],
    );
    let text = with_sandbox("on-runaway = \"skip\"");
    assert_error(&f.err(&text), &text, "on-runaway", &["fail", "dead-letter"]);
}

#[test]
fn the_dead_letter_dir_defaults_to_one_beside_the_job_file() {
    let f = Fixture::new();
    let text = with_sandbox("on-runaway = \"dead-letter\"");
    let sandbox = operator_spec(&f.ok(&text), "tokenize").sandbox;
    assert_eq!(
        sandbox.on_runaway,
        RunawayPolicy::DeadLetter {
            dir: f.dir.path().join("dead-letter"),
            replay_limit: 64 << 20
        }
    );
}

#[test]
fn a_granted_directory_must_exist_and_have_an_absolute_guest_path() {
    let f = Fixture::new();
    let text = with_sandbox(r#"dirs = [{ host = "nowhere", guest = "/data" }]"#);
    assert_error(
        &f.err(&text),
        &text,
        "dirs",
        &["the granted directory nowhere", "does not exist"],
    );
    let text = with_sandbox(r#"dirs = [{ host = "in.txt", guest = "/data" }]"#);
    assert_error(&f.err(&text), &text, "dirs", &["is not a directory"]);
    let text = with_sandbox(r#"dirs = [{ host = ".", guest = "data" }]"#);
    assert_error(&f.err(&text), &text, "dirs", &["must be absolute"]);
    let text = with_sandbox(r#"dirs = [{ host = ".", guest = "/a/../b" }]"#);
    assert_error(&f.err(&text), &text, "dirs", &["without `..`"]);
    let text =
        with_sandbox(r#"dirs = [{ host = ".", guest = "/a" }, { host = ".", guest = "/a" }]"#);
    assert_error(&f.err(&text), &text, "dirs", &["granted twice"]);
    let text = with_sandbox(r#"dirs = [{ guest = "/a" }]"#);
    assert_error(
        &f.err(&text),
        &text,
        "dirs",
        &["needs both `host` and `guest`"],
    );
    let text = with_sandbox(r#"dirs = [{ host = ".", guest = "/a", mode = "rw" }]"#);
    assert_error(&f.err(&text), &text, "dirs", &["mode"]);
}

#[test]
fn environment_grants_are_checked_and_a_bare_name_takes_the_hosts_value() {
    let f = Fixture::new();
    // PATH is set wherever the tests run.
    let path = std::env::var("PATH").expect("PATH is set");
    let text = with_sandbox(r#"env = ["PATH"]"#);
    assert_eq!(
        operator_spec(&f.ok(&text), "tokenize").sandbox.env,
        [("PATH".to_owned(), path)]
    );
    let text = with_sandbox(r#"env = ["WEIR_SURELY_NOT_SET_ANYWHERE"]"#);
    assert_error(
        &f.err(&text),
        &text,
        "env",
        &["the host has no such variable"],
    );
    let text = with_sandbox(r#"env = ["1BAD=x"]"#);
    assert_error(&f.err(&text), &text, "env", &["is not NAME=value or NAME"]);
    let text = with_sandbox(r#"env = ["A=1", "A=2"]"#);
    assert_error(&f.err(&text), &text, "env", &["sets A twice"]);
}

#[test]
fn sandbox_keys_can_be_overridden_from_the_command_line() {
    let f = Fixture::new();
    let spec = f
        .parse_with(
            WORD_COUNT,
            &[
                "operator.tokenize.fuel-per-record=7",
                "operator.tokenize.call-timeout=3s",
            ],
        )
        .expect("valid");
    let sandbox = operator_spec(&spec, "tokenize").sandbox;
    assert_eq!(sandbox.fuel_per_record, Some(7));
    assert_eq!(sandbox.call_timeout, Duration::from_secs(3));
}

#[test]
fn every_node_may_be_chained_unless_the_node_or_the_job_says_otherwise() {
    let f = Fixture::new();
    let spec = f.ok(WORD_COUNT);
    assert!(spec.nodes.iter().all(|n| n.chaining));
    let text = replace(
        WORD_COUNT,
        "wasm = \"count.wasm\"",
        "wasm = \"count.wasm\"\nchaining = false",
    );
    let spec = f.ok(&text);
    assert!(!node(&spec, "count").chaining);
    assert!(node(&spec, "tokenize").chaining);
    let text = replace(
        WORD_COUNT,
        "parallelism = 2",
        "parallelism = 2\nchaining = false",
    );
    assert!(f.ok(&text).nodes.iter().all(|n| !n.chaining));
}

#[test]
fn chaining_that_is_not_a_boolean_is_refused_on_its_line() {
    let f = Fixture::new();
    let text = replace(
        WORD_COUNT,
        "kind = \"stdout\"",
        "kind = \"stdout\"\nchaining = \"no\"",
    );
    let err = f.err(&text);
    assert_eq!(err.location().line(), Some(line_of(&text, "chaining")));
}

#[test]
fn aligned_timeout_without_unaligned_is_refused() {
    let f = Fixture::new();
    let text = format!("[checkpointing]\ninterval = \"1s\"\naligned-timeout = \"1s\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "aligned-timeout",
        &["needs unaligned = true"],
    );
}

#[test]
fn unaligned_turns_checkpoints_unaligned_after_the_aligned_timeout() {
    let f = Fixture::new();
    let c = |extra: &str| {
        f.ok(&format!(
            "[checkpointing]\ninterval = \"1s\"\n{extra}{MINIMAL}"
        ))
        .checkpointing
        .expect("on")
        .unaligned_after()
    };
    assert_eq!(c(""), None);
    assert_eq!(c("unaligned = true\n"), Some(Duration::ZERO));
    assert_eq!(
        c("unaligned = true\naligned-timeout = \"30ms\"\n"),
        Some(Duration::from_millis(30))
    );
}

#[test]
fn savepoint_dir_is_a_storage_url_beside_the_checkpoint_dir() {
    let f = Fixture::new();
    let text = format!(
        "[checkpointing]\ninterval = \"1s\"\nsavepoint-dir = \"s3://bucket/savepoints\"\n{MINIMAL}"
    );
    let c = f.ok(&text).checkpointing.expect("on");
    assert_eq!(
        c.savepoint_dir,
        Some(StorageUrl::S3 {
            bucket: "bucket".into(),
            prefix: "savepoints".into()
        })
    );
}

#[test]
fn recover_without_channel_state_names_a_checkpoint() {
    let f = Fixture::new();
    let text = format!(
        "[checkpointing]\ninterval = \"1s\"\nunaligned = true\nrecover-without-channel-state = 7\n{MINIMAL}"
    );
    let c = f.ok(&text).checkpointing.expect("on");
    assert_eq!(c.recover_without_channel_state, Some(7));
}

#[test]
fn the_network_defaults_to_four_batches_a_channel_without_debloating() {
    let f = Fixture::new();
    let network = f.ok(MINIMAL).network;
    assert_eq!(
        network,
        NetworkConfig {
            channel_capacity: 4,
            debloat: None,
            local_workers: 1,
        }
    );
}

#[test]
fn buffer_debloating_takes_flinks_target_and_period() {
    let f = Fixture::new();
    let on = |extra: &str| {
        f.ok(&format!(
            "[network]\nchannel-capacity = 8\n\n[network.buffer-debloat]\nenabled = true\n{extra}\n{MINIMAL}"
        ))
        .network
    };
    let network = on("");
    assert_eq!(network.channel_capacity, 8);
    assert_eq!(
        network.debloat,
        Some(DebloatConfig {
            target: Duration::from_secs(1),
            period: Duration::from_millis(200),
        })
    );
    let network = on("target = \"100ms\"\nperiod = \"50ms\"");
    assert_eq!(
        network.debloat,
        Some(DebloatConfig {
            target: Duration::from_millis(100),
            period: Duration::from_millis(50),
        })
    );
}

#[test]
fn a_debloat_setting_without_enabled_is_refused() {
    let f = Fixture::new();
    let text = format!("[network.buffer-debloat]\ntarget = \"100ms\"\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "target",
        &["only applies when buffer debloating is on"],
    );
}

#[test]
fn bad_network_settings_are_refused_with_the_fix() {
    let f = Fixture::new();
    let text = format!("[network]\nchannel-capacity = 0\n{MINIMAL}");
    assert_error(
        &f.err(&text),
        &text,
        "channel-capacity",
        &["between 1 and 1024 batches"],
    );
    let text = format!("[network.buffer-debloat]\nenabled = true\nperiod = \"0s\"\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "period", &["`period` is zero"]);
    let text = format!("[network.buffer-debloat]\nenabled = true\ntargt = \"1s\"\n{MINIMAL}");
    assert_error(&f.err(&text), &text, "targt", &["[network.buffer-debloat]"]);
    for workers in ["0", "17"] {
        let text = format!("[network]\nlocal-workers = {workers}\n{MINIMAL}");
        assert_error(
            &f.err(&text),
            &text,
            "local-workers",
            &["between 1 and 16 workers"],
        );
    }
    let text = format!("[network]\nlocal-workers = 3\n{MINIMAL}");
    assert_eq!(f.ok(&text).network.local_workers, 3);
}

// ----- the Kafka connectors -----

const KAFKA: &str = r#"
[[source]]
id = "events"
kind = "kafka"
bootstrap-servers = "127.0.0.1:9092"
topic = ["a", "b"]
group-id = "g"
starting-offsets = "timestamp"
starting-timestamp = 1767225600000
bounded = true
properties = { "fetch.wait.max.ms" = 50, "client.rack" = "r1" }
watermark = { max-out-of-orderness = "2s", idle-timeout = "30s" }

[[sink]]
id = "out"
kind = "kafka"
bootstrap-servers = "127.0.0.1:9092"
topic = "results"
inputs = ["events"]
"#;

#[test]
fn a_kafka_source_and_sink_are_read_with_their_defaults() {
    use crate::connectors::{SinkDelivery, StartingOffsets, TopicSelector};
    let f = Fixture::new();
    let spec = f.ok(KAFKA);
    let NodeKind::Source(SourceSpec {
        kind: SourceKind::Kafka(source),
        watermark,
    }) = &node(&spec, "events").kind
    else {
        panic!("events is a Kafka source")
    };
    assert_eq!(
        source.topics,
        TopicSelector::Names(vec!["a".into(), "b".into()])
    );
    assert_eq!(source.group_id.as_deref(), Some("g"));
    assert_eq!(
        source.starting_offsets,
        StartingOffsets::Timestamp(1_767_225_600_000)
    );
    assert!(source.bounded);
    assert_eq!(
        source
            .properties
            .get("fetch.wait.max.ms")
            .map(String::as_str),
        Some("50")
    );
    assert_eq!(
        *watermark,
        Some(WatermarkStrategy {
            max_out_of_orderness: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(30)),
        })
    );
    let NodeKind::Sink(SinkSpec {
        kind: SinkKind::Kafka(sink),
        ..
    }) = &node(&spec, "out").kind
    else {
        panic!("out is a Kafka sink")
    };
    assert_eq!(sink.delivery, SinkDelivery::AtLeastOnce);
    assert_eq!(sink.topic, "results");
}

#[test]
fn a_property_that_weir_sets_itself_is_refused_with_what_to_set_instead() {
    let f = Fixture::new();
    let text = replace(
        KAFKA,
        "\"client.rack\" = \"r1\"",
        "\"enable.auto.commit\" = true",
    );
    assert_error(
        &f.err(&text),
        &text,
        "properties = ",
        &[
            "\"enable.auto.commit\" is Weir's to set",
            "offsets live in Weir's checkpoints",
        ],
    );
}

#[test]
fn an_exactly_once_kafka_sink_needs_a_transactional_id_prefix() {
    let f = Fixture::new();
    let text = replace(
        KAFKA,
        "topic = \"results\"",
        "topic = \"results\"\ndelivery = \"exactly-once\"",
    );
    assert_error(
        &f.err(&text),
        &text,
        "delivery = ",
        &["needs `transactional-id-prefix`"],
    );
}

#[test]
fn a_watermark_on_a_source_without_timestamps_is_refused() {
    let f = Fixture::new();
    let text = replace(
        MINIMAL,
        "kind = \"generator\"",
        "kind = \"generator\"\nwatermark = { max-out-of-orderness = \"1s\" }",
    );
    assert_error(
        &f.err(&text),
        &text,
        "watermark = ",
        &["carry no timestamps", "kind = \"kafka\""],
    );
}

#[test]
fn an_unknown_watermark_key_is_refused() {
    let f = Fixture::new();
    let text = replace(KAFKA, "idle-timeout = \"30s\"", "idleness = \"30s\"");
    assert!(
        f.err(&text).to_string().contains("idleness"),
        "{}",
        f.err(&text)
    );
}
