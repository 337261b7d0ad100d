//! Bad input gets an error that says what and where, and a non-zero exit.

use weir_tests::{Scratch, describe, guest, toml_path};

/// A valid job over `counter`; tests break one thing in it.
fn job_text(wasm: &str) -> String {
    format!(
        r#"[job]
name = "bad"

[[source]]
id = "gen"
kind = "generator"
count = 10

[[operator]]
id = "count"
wasm = "{wasm}"
inputs = ["gen"]
partition = "key-by"

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["count"]
"#
    )
}

fn counter() -> String {
    toml_path(&guest("word_count_counter"))
}

/// Runs `weir run` on `text` and returns its exit code and stderr.
fn run(scratch: &Scratch, text: &str) -> (Option<i32>, String) {
    let job = scratch.write("job.toml", text);
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(!output.status.success(), "{}", describe(&output));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_valid_job_runs() {
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job_text(&counter()));
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn an_unknown_key_names_the_key_the_file_and_the_line() {
    let scratch = Scratch::new();
    let text = job_text(&counter()).replace(
        "partition = \"key-by\"",
        "partition = \"key-by\"\nparalelism = 2",
    );
    let (code, err) = run(&scratch, &text);
    assert_eq!(code, Some(2));
    assert!(err.contains("paralelism"), "{err}");
    assert!(err.contains("job.toml"), "{err}");
    assert!(err.contains("line 14"), "{err}");
}

#[test]
fn a_missing_wasm_file_names_the_path_and_how_to_build_it() {
    let scratch = Scratch::new();
    let (code, err) = run(&scratch, &job_text("nowhere/missing.wasm"));
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.wasm"), "{err}");
    assert!(err.contains("line 11"), "{err}");
    assert!(err.contains("build-guests"), "{err}");
}

#[test]
fn an_input_naming_no_node_lists_the_node_ids() {
    let scratch = Scratch::new();
    let (code, err) = run(
        &scratch,
        &job_text(&counter()).replace("inputs = [\"gen\"]", "inputs = [\"gne\"]"),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("gne"), "{err}");
    assert!(err.contains("gen"), "{err}");
    assert!(err.contains("line 12"), "{err}");
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let scratch = Scratch::new();
    let text = format!(
        "{}\n[[operator]]\nid = \"again\"\nwasm = \"{}\"\ninputs = [\"count\"]\n",
        job_text(&counter()).replace("inputs = [\"gen\"]", "inputs = [\"gen\", \"again\"]"),
        counter()
    );
    let (code, err) = run(&scratch, &text);
    assert_eq!(code, Some(2));
    assert!(err.contains("cycle"), "{err}");
    assert!(err.contains("count") && err.contains("again"), "{err}");
}

#[test]
fn a_component_without_the_handler_export_names_the_missing_export() {
    let scratch = Scratch::new();
    // The smallest valid component: a header and nothing else, so it exports nothing.
    let empty = scratch.write("empty.wasm", b"\0asm\x0d\x00\x01\x00");
    let (code, err) = run(&scratch, &job_text(&toml_path(&empty)));
    assert_eq!(code, Some(2));
    assert!(err.contains("weir:operator/handler@0.2.0"), "{err}");
    assert!(err.contains("empty.wasm"), "{err}");
}

#[test]
fn a_component_built_against_the_previous_contract_names_both_versions_and_how_to_rebuild() {
    let scratch = Scratch::new();
    let (code, err) = run(&scratch, &job_text(&toml_path(&guest("old_contract"))));
    assert_eq!(code, Some(2));
    assert!(err.contains("old_contract.wasm"), "{err}");
    assert!(
        err.contains("built against weir:operator@0.1.0")
            && err.contains("implements weir:operator@0.2.0"),
        "{err}"
    );
    assert!(err.contains("Rebuild it"), "{err}");
}

#[test]
fn a_core_module_is_told_apart_from_a_component() {
    let scratch = Scratch::new();
    let core = scratch.write("core.wasm", b"\0asm\x01\x00\x00\x00");
    let (code, err) = run(&scratch, &job_text(&toml_path(&core)));
    assert_eq!(code, Some(2));
    assert!(err.contains("core WebAssembly module"), "{err}");
}

#[test]
fn a_file_that_is_not_webassembly_says_so() {
    let scratch = Scratch::new();
    let junk = scratch.write("junk.wasm", "this is text");
    let (code, err) = run(&scratch, &job_text(&toml_path(&junk)));
    assert_eq!(code, Some(2));
    assert!(err.contains("not a WebAssembly component"), "{err}");
}

#[test]
fn a_record_without_a_key_on_a_key_by_edge_fails_the_job_with_a_sentence() {
    let scratch = Scratch::new();
    scratch.write("in.txt", "no key here\n");
    let text = job_text(&counter()).replace(
        "kind = \"generator\"\ncount = 10",
        "kind = \"file\"\npath = \"in.txt\"",
    );
    let (code, err) = run(&scratch, &text);
    assert_eq!(code, Some(1));
    assert!(err.contains("without a key"), "{err}");
}

#[test]
fn a_syntax_error_gives_the_line() {
    let scratch = Scratch::new();
    let (code, err) = run(&scratch, "[job]\nname = \"x\"\nparallelism = = 2\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn a_bad_override_names_the_override() {
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job_text(&counter()));
    let output = scratch.run(&[
        "run",
        job.to_str().unwrap_or_default(),
        "-D",
        "operator.nope.parallelism=2",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("nope"),
        "{}",
        describe(&output)
    );
}
