//! The job the tests of the REST server's page and OpenAPI document run (with
//! [`RunningJob`](crate::RunningJob)).

/// A back-pressured keyed count that never ends: a generator faster than the sink, a
/// WebAssembly counter keyed by the generator's keys, a checkpoint every `interval`
/// (`"500ms"`), and the REST server on any free port of loopback.
pub fn keyed_count_job(name: &str, interval: &str) -> String {
    format!(
        r#"
[job]
name = "{name}"
parallelism = 2
[checkpointing]
interval = "{interval}"
[rest]
port = 0
[[source]]
id = "gen"
kind = "generator"
keys = 1000
rate = 20000
[[operator]]
id = "count"
wasm = "{wasm}"
inputs = ["gen"]
partition = "key-by"
[[sink]]
id = "out"
kind = "blackhole"
rate = 15000
inputs = ["count"]
"#,
        wasm = crate::toml_path(&crate::guest("word_count_counter"))
    )
}
