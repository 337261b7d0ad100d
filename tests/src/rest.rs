//! A running `weir` job with its REST server, for the tests of the server, its page and
//! its OpenAPI document: the job is started with `[rest] port = 0`, its address read from
//! the log line that names it, and it is killed when the test ends however it ends.

use crate::{Scratch, wait_bounded};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The log line's words before the server's address.
const ADDRESS_AT: &str = "REST API and metrics at http://";

/// A `weir run` in progress, with the address of its REST server.
pub struct RunningJob {
    child: Option<Child>,
    address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl RunningJob {
    /// Starts `weir run` on the job file `job` (relative to the scratch dir) and waits up
    /// to `within` for its REST server's address in the log.
    ///
    /// # Panics
    /// When `weir` cannot start or names no address in time.
    pub fn start(scratch: &Scratch, job: &str, within: Duration) -> Self {
        let mut child = scratch
            .weir(&["run", job])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir starts");
        let stderr = child.stderr.take().expect("weir's stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = mpsc::channel();
        let kept = log.clone();
        // Reads the log to its end, so that weir never blocks on a full pipe, and keeps
        // it for the failure messages.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(ADDRESS_AT) {
                    let rest = line[at + ADDRESS_AT.len()..].split_whitespace().next();
                    let address = rest.unwrap_or_default().trim_end_matches('/');
                    if let Ok(address) = address.parse::<SocketAddr>() {
                        let _ = found.send(address);
                    }
                }
                if let Ok(mut log) = kept.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let address = match address.recv_timeout(within) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                panic!("weir named no REST address within {within:?}\n{log}");
            }
        };
        Self {
            child: Some(child),
            address,
            log,
        }
    }

    /// Where the REST server listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>` with `path` appended.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// What weir logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `GET path`: the status and the body.
    ///
    /// # Panics
    /// When the server cannot be reached or answers what is not HTTP.
    pub fn get(&self, path: &str) -> (u16, String) {
        request(self.address, "GET", path)
    }

    /// `GET path` of a JSON body, expecting 200.
    ///
    /// # Panics
    /// When the answer is not 200 with JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
    }

    /// Cancels the job through `PATCH /jobs/:id`, expecting 202, and waits up to
    /// `within` for weir to exit.
    ///
    /// # Panics
    /// When the cancel is refused or weir does not exit in time.
    pub fn cancel(mut self, job: &str, within: Duration) -> Output {
        let (status, body) = request(self.address, "PATCH", &format!("/jobs/{job}"));
        assert_eq!(status, 202, "PATCH /jobs/{job}: {body}");
        let child = self.child.take().expect("the job runs until cancelled");
        wait_bounded(child, within).0
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.0 request without a body (so the answer is never chunked), to loopback.
///
/// # Panics
/// When the server cannot be reached or the answer has no status line.
pub fn request(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot reach the REST server at {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .expect("a request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {head:?}"));
    (status, body.to_owned())
}
