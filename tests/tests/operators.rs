//! The stateless Rust operator, the Python operator, guest logging and the compile cache.

use weir_tests::{Scratch, describe, guest, toml_path};

fn generator_job(wasm: &str, config: &str, count: u64, parallelism: u32) -> String {
    format!(
        r#"[job]
name = "ops"
parallelism = {parallelism}

[[source]]
id = "gen"
kind = "generator"
count = {count}
keys = 7

[[operator]]
id = "op"
wasm = "{wasm}"
inputs = ["gen"]
config = '{config}'

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["op"]
"#
    )
}

#[test]
fn map_filter_drops_short_values_and_prefixes_the_rest() {
    let scratch = Scratch::new();
    let wasm = toml_path(&guest("map_filter"));
    let job = scratch.write(
        "job.toml",
        generator_job(&wasm, r#"{"min-length": 2, "prefix": "> "}"#, 500, 2),
    );
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    // The generator's values are the decimal sequence numbers 0..500.
    let mut expected: Vec<String> = (10..500).map(|n| format!("> {n}")).collect();
    expected.sort();
    assert_eq!(scratch.committed_lines("out"), expected);
}

#[test]
fn the_python_operator_runs_in_a_job_and_logs_through_the_host() {
    let scratch = Scratch::new();
    let wasm = toml_path(&guest("python_upper"));
    let job = scratch.write(
        "job.toml",
        generator_job(&wasm, r#"{"min-length": 3}"#, 300, 1),
    );
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    let mut expected: Vec<String> = (100..300).map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(scratch.committed_lines("out"), expected);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("op (1/1)") && l.contains("python-upper opened")),
        "the guest's log line, tagged with its subtask, is missing:\n{stderr}"
    );
}

#[test]
fn a_second_start_loads_the_compiled_component_from_the_cache() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let wasm = toml_path(&guest("map_filter"));
    let job = scratch.write("job.toml", generator_job(&wasm, "", 10, 1));
    let run = || {
        let output = scratch
            .weir(&["run", job.to_str().unwrap_or_default()])
            .env("WEIR_CACHE_DIR", &cache)
            .output()
            .expect("weir starts");
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains("compiling component"), "{first}");
    let entries = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 1, "one compiled component in the cache");
    // The second run starts afresh into the first one's output.
    std::fs::remove_dir_all(scratch.path().join("out")).expect("the first run's output");
    let second = run();
    assert!(!second.contains("compiling component"), "{second}");
}

#[test]
fn validate_prints_the_plan_without_running() {
    let scratch = Scratch::new();
    let wasm = toml_path(&guest("map_filter"));
    let job = scratch.write("job.toml", generator_job(&wasm, "", 10, 3));
    let output = scratch.run(&["validate", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        !scratch.path().join("out").exists(),
        "validate must not run the job"
    );
}
