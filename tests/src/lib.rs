//! Shared helpers for the end-to-end tests: where the `weir` binary and the built guests
//! are, a scratch directory to write job files and inputs into, (in `s3`) an
//! S3-compatible server on loopback with a fault-injecting proxy in front of it, and (in
//! `rest`) a running job with its REST server.
//!
//! The tests drive the real binary with real components; `scripts/test.sh` builds both
//! before running them.

pub mod kafka;
pub mod rest;
pub mod s3;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `p` quantile (0..=1) of sorted samples, for the benchmarks' p50/p99.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The built guest `name` (e.g. `word_count_counter`), from `target/guests/`.
///
/// # Panics
/// When the guest was not built, with the command that builds it.
pub fn guest(name: &str) -> PathBuf {
    let path = repo().join("target/guests").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the guests first with scripts/build-guests.sh",
        path.display()
    );
    path
}

/// The `weir` binary of the same build profile as the running test.
///
/// # Panics
/// When it was not built, with the command that builds it.
pub fn weir_bin() -> PathBuf {
    // The test runs from <target>/<profile>/deps/; the binary is in <target>/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = profile_dir.join("weir");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --release -p weir-host` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Peak resident memory of a running process, from /proc, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for `child`, reading its piped stdout and stderr meanwhile and sampling its peak
/// resident memory; kills it and fails the test after `hang`. The output, and the peak
/// in MiB (as far as sampling every 10 ms saw it).
///
/// # Panics
/// When the child outlives `hang`, or its status cannot be read.
pub fn wait_bounded(mut child: Child, hang: Duration) -> (Output, u64) {
    fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut text);
            }
            text
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let started = Instant::now();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("the child's status") {
            break status;
        }
        if started.elapsed() > hang {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("weir ran for {hang:?} without ending, and was killed\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    (output, peak_kib / 1024)
}

/// Polls `done` every 20 ms until it holds; false once `timeout` has passed.
pub fn eventually(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The completed checkpoints (those with their `_metadata`, the commit point) in a job's
/// checkpoint directory, oldest first; none when the directory does not exist yet.
pub fn completed_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
                    e.path().join("_metadata").exists().then(|| (n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Runs the job file `text` (named `name`, checkpointing into `checkpoints`) in
/// `scratch` until `done` holds for its completed checkpoints (oldest first), then kills
/// it: a kill keeps the checkpoints. Returns its log.
///
/// # Panics
/// When the job ends or `done` does not hold within `wait`, with the log.
pub fn run_until_checkpoints(
    scratch: &Scratch,
    name: &str,
    text: &str,
    wait: Duration,
    done: impl Fn(&[(u64, PathBuf)]) -> bool,
) -> String {
    let job = scratch.write("job.toml", text);
    let log = scratch.path().join("weir.log");
    let child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("weir starts");
    let child = std::cell::RefCell::new(child);
    let dir = scratch.path().join("checkpoints").join(name);
    let ended = || child.borrow_mut().try_wait().ok().flatten().is_some();
    let reached = eventually(wait, || done(&completed_checkpoints(&dir)) || ended());
    let still_running = !ended();
    let mut child = child.into_inner();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        reached && still_running,
        "the job {} before its checkpoints were there:\n{log}",
        if reached { "ended" } else { "took too long" },
    );
    log
}

/// How many channel-state files (the in-flight records of an unaligned checkpoint,
/// `<node>-<subtask>-channels`) the checkpoint directory `chk` holds.
pub fn channel_state_files(chk: &Path) -> usize {
    std::fs::read_dir(chk)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with("-channels"))
                .count()
        })
        .unwrap_or(0)
}

/// A scratch directory for one test, with its own compile cache.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new, empty scratch directory.
    ///
    /// # Panics
    /// When no temporary directory can be created.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory in the scratch dir");
        }
        std::fs::write(&path, contents).expect("a file in the scratch dir");
        path
    }

    /// A `weir` command with the scratch directory as working directory and a compile
    /// cache shared by all tests (compiling the Python guest takes seconds).
    pub fn weir(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(weir_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("WEIR_CACHE_DIR", repo().join("target/test-compile-cache"))
            .env("WEIR_LOG", "info");
        cmd
    }

    /// Runs `weir` with `args` to completion.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn run(&self, args: &[&str]) -> Output {
        self.weir(args).output().expect("weir starts")
    }

    /// The committed output of a file sink in `dir` (relative to the scratch dir): per
    /// sink subtask, the lines of its `part-<subtask>-<n>` files in order. Hidden
    /// in-progress and pending files are not output.
    ///
    /// # Panics
    /// When the directory cannot be read.
    pub fn parts(&self, dir: &str) -> Vec<(u32, Vec<String>)> {
        let mut files: Vec<(u32, u64, std::path::PathBuf)> =
            std::fs::read_dir(self.dir.path().join(dir))
                .expect("the sink's directory")
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (subtask, seq) = name.strip_prefix("part-")?.split_once('-')?;
                    Some((subtask.parse().ok()?, seq.parse().ok()?, e.path()))
                })
                .collect();
        files.sort();
        let mut parts: Vec<(u32, Vec<String>)> = Vec::new();
        for (subtask, _, path) in files {
            let text = std::fs::read_to_string(&path).expect("a part file");
            let lines = text.lines().map(str::to_owned);
            match parts.last_mut() {
                Some((s, existing)) if *s == subtask => existing.extend(lines),
                _ => parts.push((subtask, lines.collect())),
            }
        }
        parts
    }
}

impl Scratch {
    /// Every committed output line of the file sink in `dir`, whatever subtask wrote it,
    /// sorted: the multiset a run's output is compared by.
    ///
    /// # Panics
    /// When the directory cannot be read.
    pub fn committed_lines(&self, dir: &str) -> Vec<String> {
        let mut lines: Vec<String> = self.parts(dir).into_iter().flat_map(|(_, l)| l).collect();
        lines.sort();
        lines
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The path as a string for a job file (TOML basic strings need escaped backslashes).
pub fn toml_path(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A `weir run` in the background whose REST server the test talks to; killed when
/// dropped.
pub struct RunningJob {
    child: std::process::Child,
    /// `127.0.0.1:<port>`, from the job's log.
    pub address: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RunningJob {
    /// Starts `weir run <args>` in `scratch` and waits for its REST server's address in
    /// the log (the job file should set `[rest] port = 0`).
    ///
    /// # Panics
    /// When `weir` does not start or logs no address within a minute.
    pub fn start(scratch: &Scratch, args: &[&str]) -> Self {
        Self::spawn(scratch.weir(args))
    }

    /// [`start`](Self::start) with a `weir run` command made by [`Scratch::weir`] and
    /// given more, e.g. an environment.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("weir starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("a piped stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut job = Self {
            child,
            address: String::new(),
            stderr,
        };
        let found = eventually(Duration::from_secs(60), || job.logged_address().is_some());
        assert!(found, "weir logged no REST address:\n{}", job.log());
        job.address = job.logged_address().unwrap_or_default();
        job
    }

    fn logged_address(&self) -> Option<String> {
        let log = self.log();
        let start = log.find("metrics at http://")? + "metrics at http://".len();
        let end = log[start..].find('/')?;
        Some(log[start..start + end].to_owned())
    }

    /// What `weir` logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends `method path` with `headers`; the status and the body.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http(&self.address, method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// `GET path`, which must answer 200 with JSON.
    ///
    /// # Panics
    /// When it does not.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.request("GET", path, &[]);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Waits for the process to end by itself, within `timeout`.
    ///
    /// # Panics
    /// When it does not.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "weir did not end within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://<address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Cancels job `job` through `PATCH /jobs/:id`, which must answer 202, and waits up
    /// to `within` for `weir` to exit.
    ///
    /// # Panics
    /// When the cancel is refused or `weir` does not exit in time.
    pub fn cancel(self, job: &str, within: Duration) -> std::process::ExitStatus {
        let (status, body) = self.request("PATCH", &format!("/jobs/{job}"), &[]);
        assert_eq!(status, 202, "PATCH /jobs/{job}: {body}");
        self.wait(within)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP/1.1 request to `address` (`host:port`): its status and body.
///
/// # Errors
/// When the connection fails or the answer is not HTTP.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    weir::observe::rest::client::request(address, method, path, headers)
}

impl RunningJob {
    /// Waits for the process to end by itself within `timeout`, then for its log to be
    /// read to the end: the exit status and the whole log, its last lines included.
    ///
    /// # Panics
    /// When it does not end in time.
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "weir did not end within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread holds the other handle on the log until the pipe is at its
        // end, which is after the process's last line.
        let read = eventually(Duration::from_secs(10), || {
            std::sync::Arc::strong_count(&self.stderr) == 1
        });
        assert!(read, "the log of the ended weir was not read to its end");
        (status, self.log())
    }

    /// The exit status, once the process ended.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The records each subtask of `vertex` of job `job` took in, from the REST API;
    /// none while the server does not know the vertex yet.
    pub fn records_in(&self, job: &str, vertex: &str) -> Vec<u64> {
        let Ok((200, body)) = http(
            &self.address,
            "GET",
            &format!("/jobs/{job}/vertices/{vertex}"),
            &[],
        ) else {
            return Vec::new();
        };
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        value["subtasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["metrics"]["read-records"].as_u64().unwrap_or(0))
            .collect()
    }
}

/// Copies everything in directory `from` into directory `to` (which must exist),
/// recursively, keeping modification times.
///
/// # Panics
/// When `cp` fails.
pub fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {}/. {}",
        from.display(),
        to.display()
    );
}

/// Where the savepoint is that `weir savepoint` or `weir stop --savepoint` printed: the
/// one line of its stdout, a path or a `file://` URL, a relative path taken from `cwd`.
///
/// # Panics
/// When stdout is not one line.
pub fn savepoint_location(output: &Output, cwd: &Path) -> PathBuf {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [line] = lines[..] else {
        panic!("not one line of stdout:\n{}", describe(output));
    };
    let path = PathBuf::from(line.strip_prefix("file://").unwrap_or(line));
    if path.is_absolute() {
        path
    } else {
        cwd.join(path)
    }
}

/// A small, seedable generator for the tests' randomness (kill moments, input text).
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The word count's two operators, as job-file sections: `tokenize` (rebalanced from
/// the node `lines`) and `count` (key-by), with the example guests.
pub fn word_count_operators() -> String {
    format!(
        r#"[[operator]]
id = "tokenize"
wasm = "{tokenizer}"
inputs = ["lines"]
partition = "rebalance"

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["tokenize"]
partition = "key-by"
"#,
        tokenizer = toml_path(&guest("word_count_tokenizer")),
        counter = toml_path(&guest("word_count_counter")),
    )
}

/// `lines` lines of eight words each, drawn from 500 (`w0` … `w499`): the input of the
/// word count in the crash tests.
pub fn word_text(rng: &mut XorShift, lines: usize) -> String {
    let mut text = String::new();
    for _ in 0..lines {
        for i in 0..8 {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&format!("w{}", rng.below(500)));
        }
        text.push('\n');
    }
    text
}

/// The failure-free output of the word counter over `texts`, computed here: for every
/// word, the lines `word<TAB>1` … `word<TAB>n`, sorted.
pub fn counted_lines(texts: &[String]) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for word in texts.iter().flat_map(|t| t.split_whitespace()) {
        *counts.entry(word).or_insert(0) += 1;
    }
    let mut lines: Vec<String> = counts
        .iter()
        .flat_map(|(word, &n)| (1..=n).map(move |k| format!("{word}\t{k}")))
        .collect();
    lines.sort();
    lines
}

/// `WEIR_CRASH_KILLS`, the kills of a crash test (default 20).
pub fn crash_kills() -> u32 {
    std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// `WEIR_CRASH_SEED`, or one from the clock; printed, so that a run can be replayed.
pub fn crash_seed() -> u64 {
    let seed = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    println!("WEIR_CRASH_SEED={seed}");
    seed
}
