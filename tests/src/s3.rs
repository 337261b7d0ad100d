//! An S3-compatible server on loopback, and a proxy in front of it that injects faults,
//! for tests of S3 checkpoint storage: the storage's own tests and end-to-end tests of
//! the `weir` binary. Only the standard library: the proxy runs on plain threads, so sync
//! and async tests alike can use it.
//!
//! # Layout
//!
//! - [`S3Server`]: runs `s3s-fs` (found by [`s3s_fs_bin`]) on 127.0.0.1 over a temporary
//!   directory, with one bucket, [`BUCKET`]; can be killed and restarted on the same port
//!   with the same data.
//! - [`FaultProxy`]: an HTTP/1.1 proxy that passes requests through, or answers them with
//!   a [`Fault`] (an S3 error, a stall, a closed connection) as told at runtime, and keeps
//!   a log of what it did.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "weir-test-access-key";

/// The secret key the server accepts; s3s-fs checks every request's signature with it.
pub const SECRET_KEY: &str = "weir-test-secret-key";

/// The region clients sign for. s3s-fs accepts any; a client needs one.
pub const REGION: &str = "us-east-1";

/// The bucket every server starts with.
pub const BUCKET: &str = "weir-checkpoints";

/// The version of s3s-fs the tests are written against (0.15 needs a newer rustc).
pub const S3S_FS_VERSION: &str = "0.14.1";

/// How long a server may take to start listening. It takes milliseconds; a loaded test
/// machine may be slow, and a server that never starts must fail the test, not hang it.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `s3s-fs` binary: `$WEIR_S3S_FS`, or `s3s-fs` on `PATH`.
///
/// # Panics
/// When neither exists, with the command that installs it: a test that needs the server
/// fails rather than skips.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_S3S_FS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WEIR_S3S_FS is {}, which is not a file: point it at the s3s-fs binary, or \
             unset it and install s3s-fs with scripts/setup.sh",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "s3s-fs, the S3-compatible server the S3 tests run against, is not installed: \
             run scripts/setup.sh (it runs cargo install s3s-fs --version {S3S_FS_VERSION} \
             --locked --features binary), or set WEIR_S3S_FS to its path"
        )
    })
}

/// An `s3s-fs` server on 127.0.0.1 over a temporary directory, with bucket [`BUCKET`],
/// accepting [`ACCESS_KEY`] and [`SECRET_KEY`]. Killed when dropped.
pub struct S3Server {
    data: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When the binary is missing (see [`s3s_fs_bin`]) or the server does not start.
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("a temporary directory for the S3 server");
        std::fs::create_dir(data.path().join(BUCKET)).expect("the bucket's directory");
        let mut server = S3Server {
            data,
            port: 0,
            child: None,
        };
        server.spawn();
        server
    }

    /// The endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The address the server listens on (also while it is killed: a restart reuses it).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The bucket, [`BUCKET`].
    pub fn bucket(&self) -> &'static str {
        BUCKET
    }

    /// Creates another bucket.
    ///
    /// # Panics
    /// When its directory cannot be created.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.data.path().join(name)).expect("the bucket's directory");
    }

    /// What to set in a client's environment (`weir`'s) to sign requests the server
    /// accepts. The endpoint is not among them: pass [`endpoint`](Self::endpoint) (or a
    /// [`FaultProxy`]'s) with path-style addressing.
    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
        ]
    }

    /// [`env`](Self::env) and `AWS_ENDPOINT_URL`, for a client (`weir`) that takes its
    /// whole S3 configuration from the environment. Pass the server's
    /// [`endpoint`](Self::endpoint) or a [`FaultProxy`]'s. Path-style addressing needs no
    /// setting: the SDK uses it for an IP address.
    pub fn env_with_endpoint(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = self
            .env()
            .iter()
            .map(|&(name, value)| (name, value.to_owned()))
            .collect();
        env.push(("AWS_ENDPOINT_URL", endpoint.to_owned()));
        env
    }

    /// The file that holds object `key` of [`BUCKET`]: s3s-fs stores each object as a
    /// plain file, so a test can damage one behind the server's back.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }

    /// The ids of the multipart uploads in progress (neither completed nor aborted). s3s-fs
    /// has no ListMultipartUploads; it keeps `.upload-<id>.json` files in its root.
    ///
    /// # Panics
    /// When the data directory cannot be read.
    pub fn pending_uploads(&self) -> Vec<String> {
        let mut uploads: Vec<String> = std::fs::read_dir(self.data.path())
            .expect("the S3 server's data directory")
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name.strip_prefix(".upload-")?.strip_suffix(".json")?;
                Some(id.to_owned())
            })
            .collect();
        uploads.sort();
        uploads
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Kills the server at once, as a crash would: requests in flight break off.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is as good as killed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data, after a
    /// [`kill`](Self::kill) (or kills it first).
    ///
    /// # Panics
    /// When the server does not start, e.g. because the port was taken meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs the binary and waits until it listens; learns the port on the first start.
    fn spawn(&mut self) {
        let bin = s3s_fs_bin();
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            // The line that gives the address is logged at info level.
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
        let Some(stdout) = child.stdout.take() else {
            panic!("the S3 server's output was not captured");
        };
        let (tx, rx) = mpsc::channel();
        // Reads the address, then drains the log so the server never blocks on a full pipe.
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.split("server is running at http://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(address.trim().to_owned());
                }
            }
        });
        let address = match rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "{} did not start listening on 127.0.0.1:{} ({status:?}); is the port \
                     taken?",
                    bin.display(),
                    self.port
                );
            }
        };
        let addr: SocketAddr = address
            .parse()
            .unwrap_or_else(|e| panic!("the S3 server listens at `{address}`?: {e}"));
        self.port = addr.port();
        self.child = Some(child);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the proxy does with a request instead of passing it through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers `500 Internal Server Error` with S3's code `InternalError`.
    InternalError,
    /// Answers `503 Slow Down` with S3's code `SlowDown`: throttling.
    SlowDown,
    /// Answers `429 Too Many Requests` with a plain-text body and no S3 code, as a
    /// gateway or load balancer in front of a store does.
    TooManyRequests,
    /// Reads the request and never answers; the connection stays open until the client
    /// gives up (or the proxy is dropped).
    Stall,
    /// Reads the request and closes the connection without an answer.
    Close,
    /// Passes the request through, sends the answer's head and half its body, and closes
    /// the connection: a response that breaks off.
    CutBody,
    /// Passes the request through, sends the answer's head and half its body, and sends
    /// nothing more: a response that stops flowing.
    StallBody,
}

/// What the proxy did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed to the server, and its answer back.
    Passed,
    /// The server could not be reached (killed?): the client's connection was closed.
    Unreachable,
    /// Answered with this fault.
    Faulted(Fault),
}

/// One request the proxy saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The request line: `PUT /bucket/key?partNumber=2&uploadId=… HTTP/1.1`.
    pub request_line: String,
    /// What the proxy did with it.
    pub outcome: Outcome,
}

/// How many requests the proxy handled, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every request.
    pub requests: usize,
    /// Passed through to the server.
    pub passed: usize,
    /// Answered with an HTTP error (`InternalError`, `SlowDown`).
    pub failed: usize,
    /// Never answered.
    pub stalled: usize,
    /// Closed without an answer, by a `Close` fault or because the server was down.
    pub closed: usize,
    /// Answered in part (`CutBody`, `StallBody`).
    pub cut: usize,
}

/// Which requests to fault, and how many more.
#[derive(Clone, Debug)]
struct Rule {
    fault: Fault,
    remaining: usize,
    /// Only requests whose request line contains this.
    matching: Option<String>,
}

/// What the proxy's threads share.
struct Shared {
    upstream: SocketAddr,
    rule: Mutex<Option<Rule>>,
    log: Mutex<Vec<Logged>>,
    /// Notified on every new log entry.
    logged: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// The fault for a request with `request_line`, taking one from the rule's count.
    fn take_fault(&self, request_line: &str) -> Option<Fault> {
        let mut rule = lock(&self.rule);
        let active = rule.as_mut()?;
        let matches = active
            .matching
            .as_deref()
            .is_none_or(|pattern| request_line.contains(pattern));
        if !matches || active.remaining == 0 {
            return None;
        }
        active.remaining -= 1;
        Some(active.fault)
    }

    fn record(&self, request_line: String, outcome: Outcome) {
        lock(&self.log).push(Logged {
            request_line,
            outcome,
        });
        self.logged.notify_all();
    }
}

/// A lock that a panicking test thread poisoned is still good for counting.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of an S3 server, passing requests through
/// unchanged (the `Host` header too, so signatures stay valid) unless told to fault them.
/// Stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy on a free port in front of `upstream` (e.g. [`S3Server::addr`]), passing
    /// everything through.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            rule: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            logged: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&accepting);
                thread::spawn(move || serve(client, &shared));
            }
        });
        FaultProxy { addr, shared }
    }

    /// The endpoint URL clients use instead of the server's, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next `n` requests with `fault`, then passes through again.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        *lock(&self.shared.rule) = Some(Rule {
            fault,
            remaining: n,
            matching: None,
        });
    }

    /// Answers the next `n` requests whose request line contains `pattern` (e.g.
    /// `partNumber=2`) with `fault`; others pass through.
    pub fn fail_matching(&self, pattern: &str, n: usize, fault: Fault) {
        *lock(&self.shared.rule) = Some(Rule {
            fault,
            remaining: n,
            matching: Some(pattern.to_owned()),
        });
    }

    /// Passes every request through from now on.
    pub fn pass_through(&self) {
        *lock(&self.shared.rule) = None;
    }

    /// Every request so far, in the order they were handled.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// How many requests so far, by outcome.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for entry in lock(&self.shared.log).iter() {
            counts.requests += 1;
            match entry.outcome {
                Outcome::Passed => counts.passed += 1,
                Outcome::Faulted(
                    Fault::InternalError | Fault::SlowDown | Fault::TooManyRequests,
                ) => counts.failed += 1,
                Outcome::Faulted(Fault::Stall) => counts.stalled += 1,
                Outcome::Faulted(Fault::Close) | Outcome::Unreachable => counts.closed += 1,
                Outcome::Faulted(Fault::CutBody | Fault::StallBody) => counts.cut += 1,
            }
        }
        counts
    }

    /// Waits until `done` holds for the log, as requests are handled; false if it did not
    /// within `timeout`. For ordering a test after a request it cannot await (one of a
    /// `weir` process, or of a cancelled task).
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Logged]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut log = lock(&self.shared.log);
        while !done(&log) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            log = self
                .shared
                .logged
                .wait_timeout(log, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A parsed request or response head, and its raw bytes to forward unchanged.
struct Head {
    raw: Vec<u8>,
    first_line: String,
    content_length: Option<usize>,
    chunked: bool,
}

impl Head {
    /// The status of a response head.
    fn status(&self) -> u16 {
        self.first_line
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0)
    }
}

/// A connection with a read buffer, for reading heads and bodies of HTTP/1.1 messages.
struct Conn {
    stream: TcpStream,
    buffer: VecDeque<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buffer: VecDeque::new(),
        }
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buffer.extend(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next message head, or `None` at a clean end of the stream.
    fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            let contiguous = self.buffer.make_contiguous();
            if let Some(end) = contiguous.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 4).collect();
                return parse_head(raw).map(Some);
            }
            if !self.fill()? {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a torn head"))
                };
            }
        }
    }

    /// Exactly `n` bytes.
    fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buffer.len() < n {
            if !self.fill()? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a torn body"));
            }
        }
        Ok(self.buffer.drain(..n).collect())
    }

    /// One line, with its `\r\n`.
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let contiguous = self.buffer.make_contiguous();
            if let Some(end) = contiguous.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buffer.drain(..end + 2).collect());
            }
            if !self.fill()? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a torn line"));
            }
        }
    }

    /// The body that follows `head`, raw (chunked framing kept), for forwarding.
    fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked {
            let mut body = Vec::new();
            loop {
                let line = self.read_line()?;
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a bad chunk size"))?;
                body.extend(line);
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let trailer = self.read_line()?;
                        let end = trailer == b"\r\n";
                        body.extend(trailer);
                        if end {
                            return Ok(body);
                        }
                    }
                }
                body.extend(self.read_exact(size + 2)?);
            }
        }
        self.read_exact(head.content_length.unwrap_or(0))
    }

    /// Everything until the peer closes (a response without a length).
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? {}
        Ok(self.buffer.drain(..).collect())
    }
}

fn parse_head(raw: Vec<u8>) -> io::Result<Head> {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_owned();
    let (mut content_length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            content_length =
                Some(value.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a bad content-length")
                })?);
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    Ok(Head {
        raw,
        first_line,
        content_length,
        chunked,
    })
}

/// Serves one client connection until it closes.
fn serve(client: TcpStream, shared: &Shared) {
    let Ok(writer) = client.try_clone() else {
        return;
    };
    let mut client = Conn::new(client);
    let mut writer = writer;
    let mut upstream: Option<Conn> = None;
    loop {
        let Ok(Some(request)) = client.read_head() else {
            return;
        };
        let Ok(body) = client.read_body(&request) else {
            return;
        };
        let line = request.first_line.clone();
        let is_head = line.starts_with("HEAD ");
        match shared.take_fault(&line) {
            Some(fault @ (Fault::InternalError | Fault::SlowDown | Fault::TooManyRequests)) => {
                shared.record(line, Outcome::Faulted(fault));
                if writer.write_all(&error_response(fault, is_head)).is_err() {
                    return;
                }
            }
            Some(Fault::Stall) => {
                shared.record(line, Outcome::Faulted(Fault::Stall));
                stall(&mut client, shared);
                return;
            }
            Some(Fault::Close) => {
                shared.record(line, Outcome::Faulted(Fault::Close));
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Some(fault @ (Fault::CutBody | Fault::StallBody)) => {
                let Ok((response, _)) =
                    forward(&mut upstream, shared.upstream, &request, &body, is_head)
                else {
                    shared.record(line, Outcome::Unreachable);
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                };
                shared.record(line, Outcome::Faulted(fault));
                let head_len = response
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(response.len(), |end| end + 4);
                let half = head_len + (response.len() - head_len) / 2;
                if writer.write_all(&response[..half]).is_ok() && fault == Fault::StallBody {
                    stall(&mut client, shared);
                }
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            None => match forward(&mut upstream, shared.upstream, &request, &body, is_head) {
                Ok((response, keep_alive)) => {
                    shared.record(line, Outcome::Passed);
                    if writer.write_all(&response).is_err() || !keep_alive {
                        let _ = writer.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Err(_) => {
                    shared.record(line, Outcome::Unreachable);
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
            },
        }
    }
}

/// Holds a connection without answering until the client gives up or the proxy stops.
fn stall(client: &mut Conn, shared: &Shared) {
    // Polls the stop flag between reads; the read itself notices the client leaving.
    if client
        .stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        match client.fill() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Sends the request upstream (reconnecting once if a kept-alive connection went stale,
/// e.g. after a server restart) and returns the raw response, interim ones included, and
/// whether the connection can carry another.
fn forward(
    upstream: &mut Option<Conn>,
    addr: SocketAddr,
    request: &Head,
    body: &[u8],
    is_head: bool,
) -> io::Result<(Vec<u8>, bool)> {
    let reused = upstream.is_some();
    match exchange(upstream, addr, request, body, is_head) {
        Err(_) if reused => {
            *upstream = None;
            exchange(upstream, addr, request, body, is_head)
        }
        other => other,
    }
}

fn exchange(
    upstream: &mut Option<Conn>,
    addr: SocketAddr,
    request: &Head,
    body: &[u8],
    is_head: bool,
) -> io::Result<(Vec<u8>, bool)> {
    let conn = match upstream {
        Some(conn) => conn,
        None => upstream.insert(Conn::new(TcpStream::connect(addr)?)),
    };
    let result = (|| {
        conn.stream.write_all(&request.raw)?;
        conn.stream.write_all(body)?;
        let mut response = Vec::new();
        loop {
            let Some(head) = conn.read_head()? else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the server closed the connection without an answer",
                ));
            };
            let status = head.status();
            response.extend(&head.raw);
            if (100..200).contains(&status) {
                continue;
            }
            if is_head || status == 204 || status == 304 {
                return Ok((response, true));
            }
            if head.chunked || head.content_length.is_some() {
                response.extend(conn.read_body(&head)?);
                return Ok((response, true));
            }
            response.extend(conn.read_to_end()?);
            return Ok((response, false));
        }
    })();
    if !matches!(result, Ok((_, true))) {
        *upstream = None;
    }
    result
}

/// An error response for `fault`: S3's XML, or a gateway's plain text for 429.
fn error_response(fault: Fault, is_head: bool) -> Vec<u8> {
    let (status, content_type, body) = match fault {
        Fault::TooManyRequests => (
            "429 Too Many Requests",
            "text/plain",
            "Too Many Requests".to_owned(),
        ),
        Fault::SlowDown => (
            "503 Slow Down",
            "application/xml",
            s3_error("SlowDown", "Please reduce your request rate."),
        ),
        _ => (
            "500 Internal Server Error",
            "application/xml",
            s3_error(
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        ),
    };
    let body = if is_head { String::new() } else { body };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         x-amz-request-id: weir-fault-proxy\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend(body.into_bytes());
    response
}

/// An S3 error document.
fn s3_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>weir-fault-proxy</RequestId></Error>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends a bare HTTP request and returns the response's status line, or `None` if the
    /// connection closed or stayed silent for `wait`.
    fn status_line(endpoint: SocketAddr, request_line: &str, wait: Duration) -> Option<String> {
        let mut stream = TcpStream::connect(endpoint).expect("connect to the proxy");
        stream.set_read_timeout(Some(wait)).expect("read timeout");
        write!(
            stream,
            "{request_line}\r\nhost: {endpoint}\r\ncontent-length: 0\r\n\r\n"
        )
        .expect("send a request");
        let mut line = String::new();
        match BufReader::new(stream).read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
            _ => None,
        }
    }

    /// Whether `line` is the server's answer: it refuses these unsigned requests with a
    /// 4xx, where the proxy's faults are 5xx or nothing.
    fn from_the_server(line: Option<String>) -> bool {
        line.is_some_and(|line| line.starts_with("HTTP/1.1 4"))
    }

    fn proxy_addr(proxy: &FaultProxy) -> SocketAddr {
        proxy
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("an address")
    }

    #[test]
    fn requests_pass_through_to_the_server_unless_a_fault_is_set() {
        let server = S3Server::start();
        let proxy = FaultProxy::start(server.addr());
        let addr = proxy_addr(&proxy);
        let passed = status_line(addr, "GET /x HTTP/1.1", Duration::from_secs(10));
        assert!(from_the_server(passed));
        proxy.fail_next(2, Fault::SlowDown);
        for _ in 0..2 {
            let failed = status_line(addr, "GET /x HTTP/1.1", Duration::from_secs(10));
            assert_eq!(failed.as_deref(), Some("HTTP/1.1 503 Slow Down"));
        }
        let passed = status_line(addr, "GET /x HTTP/1.1", Duration::from_secs(10));
        assert!(from_the_server(passed));
        assert_eq!(
            proxy.counts(),
            Counts {
                requests: 4,
                passed: 2,
                failed: 2,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn a_stalled_request_gets_no_answer_and_a_closed_one_no_connection() {
        let server = S3Server::start();
        let proxy = FaultProxy::start(server.addr());
        let addr = proxy_addr(&proxy);
        proxy.fail_next(1, Fault::Stall);
        assert_eq!(
            status_line(addr, "GET /x HTTP/1.1", Duration::from_millis(300)),
            None
        );
        proxy.fail_next(1, Fault::Close);
        assert_eq!(
            status_line(addr, "GET /x HTTP/1.1", Duration::from_secs(10)),
            None
        );
        let counts = proxy.counts();
        assert_eq!((counts.stalled, counts.closed), (1, 1), "{counts:?}");
    }

    #[test]
    fn only_matching_requests_are_faulted() {
        let server = S3Server::start();
        let proxy = FaultProxy::start(server.addr());
        let addr = proxy_addr(&proxy);
        proxy.fail_matching("partNumber=2", usize::MAX, Fault::InternalError);
        let other = status_line(
            addr,
            "PUT /b/k?partNumber=1 HTTP/1.1",
            Duration::from_secs(10),
        );
        assert!(from_the_server(other));
        let matching = status_line(
            addr,
            "PUT /b/k?partNumber=2 HTTP/1.1",
            Duration::from_secs(10),
        );
        assert_eq!(
            matching.as_deref(),
            Some("HTTP/1.1 500 Internal Server Error")
        );
    }

    #[test]
    fn a_killed_server_restarts_on_its_port_with_its_data() {
        let mut server = S3Server::start();
        let addr = server.addr();
        std::fs::write(server.object_path("kept"), b"data").expect("an object");
        server.kill();
        assert!(TcpStream::connect(addr).is_err(), "the server is down");
        let proxy = FaultProxy::start(addr);
        assert_eq!(
            status_line(
                proxy_addr(&proxy),
                "GET /x HTTP/1.1",
                Duration::from_secs(10)
            ),
            None
        );
        assert_eq!(proxy.counts().closed, 1);
        server.restart();
        assert_eq!(server.addr(), addr);
        assert!(TcpStream::connect(addr).is_ok(), "the server is up again");
        assert_eq!(
            std::fs::read(server.object_path("kept")).expect("the object"),
            b"data"
        );
    }

    #[test]
    fn the_environment_names_the_credentials_the_server_accepts() {
        let server = S3Server::start();
        let env = server.env();
        assert!(env.contains(&("AWS_ACCESS_KEY_ID", ACCESS_KEY)));
        assert!(env.contains(&("AWS_SECRET_ACCESS_KEY", SECRET_KEY)));
        assert!(env.contains(&("AWS_REGION", REGION)));
        assert!(server.endpoint().starts_with("http://127.0.0.1:"));
        let with_endpoint = server.env_with_endpoint("http://127.0.0.1:1");
        assert!(with_endpoint.contains(&("AWS_ENDPOINT_URL", "http://127.0.0.1:1".to_owned())));
        assert_eq!(server.pending_uploads(), Vec::<String>::new());
    }
}
