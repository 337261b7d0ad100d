//! A guest that attacks its sandbox on purpose, for the sandbox tests: it loops
//! forever, allocates without end, recurses without end, floods its output, sleeps, and
//! tries to read files, open sockets and read the environment. It is not an example to
//! copy.
//!
//! Between attacks it is a keyed counter like the word-count counter, so a job has state
//! to checkpoint and an output to check for exactly-once: for every keyed record it adds
//! one to the key's count (`ValueState<u64>` named `count`) and emits
//! `"<key>\t<count>"`; records without a key pass through.
//!
//! Its `config` is a JSON object that picks the attacks, all optional:
//!
//! ```json
//! {"process": "spin", "poison-every": 5000, "snapshot": "sleep", "sleep-ms": 500}
//! ```
//!
//! - `process`: what a poison record sets off in `process` (a [`Behaviour`]). Probes
//!   (`read-file`, `write-file`, `list-dir`, `connect`, `lookup`, `env`) emit one
//!   record `probe <name> <arg>: ok …` or `probe <name> <arg>: denied …` and then count
//!   the record as usual.
//! - `probes`: more probes per poison record, as `[behaviour, argument]` pairs, e.g.
//!   `[["read-file", "/data/../secret"], ["env", "HOME"]]`.
//! - Which records are poison: `poison-value` (the value is exactly this text),
//!   `poison-key` (the key is exactly this text), `poison-every` (the value is a number
//!   `n` with `n % every == every - 1`). With none of them, every record is.
//! - `state-hog`, `timer-hog` (in `process`) and `handle-hog` (in `open`) grow what the
//!   host keeps for the guest without end: keyed state, timers, state handles.
//! - `open`, `snapshot`: what `open` and `snapshot-state` do; `snapshot-times` limits the
//!   misbehaving snapshots to the first few of the instance.
//! - `sleep-ms` (default an hour), `burn` (loop iterations, default 10⁸), `path`
//!   (default `/etc/passwd`), `address` (default `127.0.0.1:9`), `host` (default
//!   `localhost`), `var` (default `HOME`): the arguments of `sleep`, `burn` and the
//!   probes given as `process`.

use serde::Deserialize;
use std::hint::black_box;
use std::time::Duration;
use weir_sdk::{
    Batch, CheckpointId, Context, Error, Operator, Output, Record, RecordRef, Result, ValueState,
};

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Loop forever without calling the host.
    Spin,
    /// Allocate a MiB at a time, forever.
    MemoryBomb,
    /// Recurse without end: a stack overflow.
    Recurse,
    /// Emit 1 KiB records, a thousand per host call, forever.
    Flood,
    /// Sleep `sleep-ms` (a host wait on the monotonic clock).
    Sleep,
    /// Compute for `burn` loop iterations, then go on: much fuel, but it ends.
    Burn,
    /// Panic: a plain trap.
    Trap,
    /// Read the file `path`.
    ReadFile,
    /// Create the file `path` and write to it.
    WriteFile,
    /// List the directory `path`.
    ListDir,
    /// Open a TCP connection to `address`.
    Connect,
    /// Resolve the host name `host`.
    Lookup,
    /// Read the environment variable `var`, and count all variables.
    Env,
    /// Write keyed state without end: distinct 4 KiB keys into `count` (for `process`,
    /// at parallelism 1, where every key is the subtask's).
    StateHog,
    /// Register event-time timers without end, at ever later times (for `process`).
    TimerHog,
    /// Open value states `s0`, `s1`, … without end (for `open`).
    HandleHog,
}

/// The configuration as written in the job file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
struct Config {
    process: Option<Behaviour>,
    poison_value: Option<String>,
    poison_key: Option<String>,
    poison_every: Option<u64>,
    probes: Vec<(Behaviour, String)>,
    open: Option<Behaviour>,
    snapshot: Option<Behaviour>,
    snapshot_times: Option<u32>,
    sleep_ms: u64,
    burn: u64,
    path: String,
    address: String,
    host: String,
    var: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            process: None,
            poison_value: None,
            poison_key: None,
            poison_every: None,
            probes: Vec::new(),
            open: None,
            snapshot: None,
            snapshot_times: None,
            sleep_ms: 3_600_000,
            burn: 100_000_000,
            path: "/etc/passwd".to_owned(),
            address: "127.0.0.1:9".to_owned(),
            host: "localhost".to_owned(),
            var: "HOME".to_owned(),
        }
    }
}

impl Config {
    /// Whether `record` sets off the `process` behaviour.
    fn is_poison(&self, record: RecordRef<'_>) -> bool {
        let value = std::str::from_utf8(record.value).unwrap_or("");
        let by_value = self.poison_value.as_deref().map(|v| v == value);
        let by_key = self
            .poison_key
            .as_deref()
            .map(|k| record.key == Some(k.as_bytes()));
        let by_every = self.poison_every.map(|every| {
            value
                .parse::<u64>()
                .is_ok_and(|n| every > 0 && n % every == every - 1)
        });
        match [by_value, by_key, by_every] {
            [None, None, None] => true,
            tests => tests.into_iter().flatten().any(|hit| hit),
        }
    }
}

/// Recurses `depth` times; the work after the call keeps it from becoming a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 1;
    }
    let below = recurse(black_box(depth - 1));
    below.wrapping_mul(depth | 1).rotate_left(7)
}

/// Loops until the host stops the guest.
#[inline(never)]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates until the host stops the guest.
#[inline(never)]
fn memory_bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        black_box(&hoard);
    }
}

/// Emits until the host stops the guest, straight through the host call, as a guest
/// that streams its output would.
#[inline(never)]
fn flood() -> ! {
    use weir_sdk::__bindings::weir::operator::types::{Batch as Flat, Blobs};
    const RECORDS: u32 = 1000;
    const SIZE: u32 = 1024;
    let chunk = Flat {
        keys: Blobs {
            bytes: Vec::new(),
            ends: vec![0; RECORDS as usize],
        },
        values: Blobs {
            bytes: vec![b'x'; (RECORDS * SIZE) as usize],
            ends: (1..=RECORDS).map(|i| i * SIZE).collect(),
        },
        timestamps: vec![0; RECORDS as usize],
        flags: vec![0; RECORDS as usize],
    };
    loop {
        weir_sdk::__bindings::weir::operator::output::emit(&chunk);
    }
}

/// What a probe of `behaviour` on `arg` (a path, an address, a host or a variable)
/// found: `probe <name> <arg>: ok …` or `probe <name> <arg>: denied …`.
fn probe(behaviour: Behaviour, arg: &str) -> String {
    let (name, outcome): (&str, std::result::Result<String, String>) = match behaviour {
        Behaviour::ReadFile => (
            "read-file",
            std::fs::read(arg)
                .map(|bytes| {
                    let text = String::from_utf8_lossy(&bytes);
                    format!(
                        "{} bytes: {}",
                        bytes.len(),
                        text.lines().next().unwrap_or("")
                    )
                })
                .map_err(|e| e.to_string()),
        ),
        Behaviour::WriteFile => (
            "write-file",
            std::fs::write(arg, b"written by hostile\n")
                .map(|()| "written".to_owned())
                .map_err(|e| e.to_string()),
        ),
        Behaviour::ListDir => (
            "list-dir",
            std::fs::read_dir(arg)
                .and_then(|entries| {
                    let mut names = entries
                        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect::<std::io::Result<Vec<String>>>()?;
                    names.sort();
                    Ok(names.join(","))
                })
                .map_err(|e| e.to_string()),
        ),
        Behaviour::Connect => (
            "connect",
            std::net::TcpStream::connect(arg)
                .map(|_| "connected".to_owned())
                .map_err(|e| e.to_string()),
        ),
        Behaviour::Lookup => {
            use std::net::ToSocketAddrs;
            (
                "lookup",
                (arg, 80)
                    .to_socket_addrs()
                    .map(|addrs| format!("{} addresses", addrs.count()))
                    .map_err(|e| e.to_string()),
            )
        }
        Behaviour::Env => {
            let all = std::env::vars().count();
            (
                "env",
                std::env::var(arg)
                    .map(|value| format!("{value} ({all} variables)"))
                    .map_err(|e| format!("{e} ({all} variables)")),
            )
        }
        other => ("other", Err(format!("{other:?} is not a probe"))),
    };
    match outcome {
        Ok(found) => format!("probe {name} {arg}: ok {found}"),
        Err(why) => format!("probe {name} {arg}: denied {why}"),
    }
}

/// The argument a probe of `behaviour` takes from the config.
fn probe_arg(behaviour: Behaviour, config: &Config) -> &str {
    match behaviour {
        Behaviour::Connect => &config.address,
        Behaviour::Lookup => &config.host,
        Behaviour::Env => &config.var,
        _ => &config.path,
    }
}

/// Computes for `iterations` rounds.
#[inline(never)]
fn burn(iterations: u64) -> u64 {
    let mut n: u64 = 1;
    for i in 0..iterations {
        n = black_box(n.wrapping_mul(31).wrapping_add(i));
    }
    n
}

/// Does `behaviour`; returns what a probe found.
fn misbehave(behaviour: Behaviour, config: &Config) -> Option<String> {
    match behaviour {
        Behaviour::Spin => spin(),
        Behaviour::MemoryBomb => memory_bomb(),
        Behaviour::Recurse => Some(recurse(black_box(u64::MAX)).to_string()),
        Behaviour::Flood => flood(),
        Behaviour::Sleep => {
            std::thread::sleep(Duration::from_millis(config.sleep_ms));
            None
        }
        Behaviour::Burn => Some(format!("burnt {}", burn(config.burn))),
        Behaviour::Trap => panic!("hostile: trapping as configured"),
        Behaviour::TimerHog => timer_hog(),
        Behaviour::HandleHog => {
            if let Err(e) = handle_hog() {
                panic!("hostile: {e}");
            }
            None
        }
        Behaviour::StateHog => panic!("hostile: state-hog needs its state; it runs in process"),
        probe_kind => Some(probe(probe_kind, probe_arg(probe_kind, config))),
    }
}

/// Writes ever new 4 KiB keys into `count` until the host stops the call.
fn state_hog(count: &ValueState<u64>) -> Result<()> {
    let mut key = vec![b'k'; 4096];
    for i in 0u64.. {
        key[..8].copy_from_slice(&i.to_le_bytes());
        count.set(&key, &i)?;
    }
    Ok(())
}

/// Registers ever later timers for one key until the host stops the call.
fn timer_hog() -> ! {
    for t in 0i64.. {
        weir_sdk::timers::register(weir_sdk::TimeDomain::EventTime, b"hog", t);
    }
    unreachable!("the timer hog registered i64::MAX timers")
}

/// Opens ever more states until the host refuses one; keeps every handle.
fn handle_hog() -> Result<()> {
    let mut handles = Vec::new();
    for i in 0u64.. {
        handles.push(ValueState::<u64>::open(&format!("s{i}"))?);
    }
    Ok(())
}

/// The operator: a keyed counter that misbehaves as configured.
pub struct Hostile {
    config: Config,
    count: ValueState<u64>,
    snapshots: u32,
}

impl Operator for Hostile {
    fn open(ctx: &Context) -> Result<Self> {
        let config: Config = ctx.config_json()?;
        if let Some(behaviour) = config.open {
            misbehave(behaviour, &config);
        }
        Ok(Self {
            config,
            count: ValueState::open("count")?,
            snapshots: 0,
        })
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        for record in batch.iter() {
            if self.config.is_poison(record) {
                if self.config.process == Some(Behaviour::StateHog) {
                    state_hog(&self.count)?;
                }
                if let Some(behaviour) = self.config.process
                    && let Some(found) = misbehave(behaviour, &self.config)
                {
                    out.emit(&Record::new(found));
                }
                for (behaviour, arg) in &self.config.probes {
                    out.emit(&Record::new(probe(*behaviour, arg)));
                }
            }
            let Some(key) = record.key else {
                out.emit(record);
                continue;
            };
            let count = self.count.get(key)?.unwrap_or(0) + 1;
            self.count.set(key, &count)?;
            let value = format!("{}\t{count}", String::from_utf8_lossy(key));
            out.emit_with(Some(key), record.timestamp, |v| {
                v.extend_from_slice(value.as_bytes());
            });
        }
        Ok(())
    }

    fn snapshot_state(&mut self, _checkpoint: CheckpointId) -> Result<Vec<u8>> {
        self.snapshots += 1;
        let within = self
            .config
            .snapshot_times
            .is_none_or(|times| self.snapshots <= times);
        if let Some(behaviour) = self.config.snapshot
            && within
        {
            misbehave(behaviour, &self.config);
        }
        Ok(Vec::new())
    }

    fn restore_state(&mut self, state: Vec<u8>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::new("hostile keeps no operator state"))
        }
    }
}

weir_sdk::export_operator!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `json` as the SDK hands a config to `open`.
    fn config(json: &str) -> Config {
        let ctx = Context {
            config: json.into(),
            ..Context::default()
        };
        ctx.config_json().expect("a valid config")
    }

    fn keyed<'a>(key: &'a str, value: &'a str) -> RecordRef<'a> {
        RecordRef::new(value.as_bytes()).with_key(key.as_bytes())
    }

    #[test]
    fn without_a_selector_every_record_is_poison() {
        assert!(config("{}").is_poison(keyed("a", "1")));
    }

    #[test]
    fn poison_is_selected_by_value_key_or_period() {
        let c = config(r#"{"poison-value": "bad"}"#);
        assert!(c.is_poison(keyed("a", "bad")));
        assert!(!c.is_poison(keyed("bad", "good")));
        let c = config(r#"{"poison-key": "key-7"}"#);
        assert!(c.is_poison(keyed("key-7", "1")));
        assert!(!c.is_poison(keyed("key-8", "1")));
        let c = config(r#"{"poison-every": 100}"#);
        assert!(c.is_poison(keyed("a", "99")));
        assert!(c.is_poison(keyed("a", "199")));
        assert!(!c.is_poison(keyed("a", "100")));
        assert!(!c.is_poison(keyed("a", "not a number")));
    }

    #[test]
    fn recursion_of_a_bounded_depth_returns() {
        assert_ne!(recurse(100), 0);
    }

    #[test]
    fn a_denied_probe_says_so() {
        assert!(
            probe(Behaviour::ReadFile, "/no/such/file/anywhere")
                .starts_with("probe read-file /no/such/file/anywhere: denied")
        );
    }

    #[test]
    fn probes_are_read_from_the_config_as_pairs() {
        let c = config(r#"{"probes": [["read-file", "/data/a"], ["env", "HOME"]]}"#);
        assert_eq!(
            c.probes,
            [
                (Behaviour::ReadFile, "/data/a".to_owned()),
                (Behaviour::Env, "HOME".to_owned())
            ]
        );
    }

    #[test]
    fn an_unknown_behaviour_is_a_config_error() {
        let ctx = Context {
            config: r#"{"process": "explode"}"#.into(),
            ..Context::default()
        };
        assert!(ctx.config_json::<Config>().is_err());
    }
}
