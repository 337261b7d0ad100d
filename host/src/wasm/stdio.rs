//! A guest's stdout and stderr, captured line by line into the host's log, tagged with
//! the subtask that wrote them. Guests inherit no stdio of the host.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept whole; a guest printing without newlines is logged in pieces of
/// this size rather than buffered without bound.
const MAX_LINE: usize = 16 * 1024;

/// Lines of stderr kept for the error of a call that traps: a Rust panic is two lines
/// (`panicked at <file>:<line>:<col>:` and its message), a Python traceback a few more.
const RECENT_LINES: usize = 8;

/// The most bytes of one recent line kept for an error message.
const RECENT_LINE_BYTES: usize = 1024;

/// Which of the guest's streams this is.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// The guest's stdout, logged at info level.
    Stdout,
    /// The guest's stderr, logged at warn level.
    Stderr,
}

/// A guest output stream that writes complete lines to `tracing`. A stderr stream also
/// keeps its last few lines, so that the error of a call that trapped can quote what the
/// guest said before it (a panic message).
#[derive(Clone)]
pub struct LogStream {
    task: Arc<str>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
    recent: Arc<Mutex<VecDeque<String>>>,
}

impl LogStream {
    /// A stream for subtask `task` (e.g. `count (1/4)`).
    pub fn new(task: Arc<str>, stream: Stream) -> Self {
        Self {
            task,
            stream,
            pending: Arc::default(),
            recent: Arc::default(),
        }
    }

    /// Forgets the lines kept so far: a new guest call starts.
    pub fn forget(&self) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.clear();
        }
    }

    /// The lines written since [`LogStream::forget`] (the last [`RECENT_LINES`]), with an
    /// unfinished last line, for the error of a call that trapped.
    pub fn recent(&self) -> Vec<String> {
        let mut lines: Vec<String> = match self.recent.lock() {
            Ok(recent) => recent.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(pending) = self.pending.lock()
            && !pending.is_empty()
        {
            lines.push(shorten(&pending));
        }
        lines
    }

    fn log(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if matches!(self.stream, Stream::Stderr)
            && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() == RECENT_LINES {
                recent.pop_front();
            }
            recent.push_back(shorten(text.as_bytes()));
        }
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "weir::guest::stdout", task = %self.task, "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "weir::guest::stderr", task = %self.task, "{text}")
            }
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            self.log(&line[..line.len() - 1]);
        }
        if pending.len() >= MAX_LINE {
            let chunk = std::mem::take(&mut *pending);
            self.log(&chunk);
        }
    }
}

/// `line` as text of at most [`RECENT_LINE_BYTES`].
fn shorten(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(RECENT_LINE_BYTES)]);
    text.trim_end_matches('\r').to_owned()
}

impl Drop for LogStream {
    fn drop(&mut self) {
        // The last clone flushes a final line that had no newline.
        if Arc::strong_count(&self.pending) == 1
            && let Ok(pending) = self.pending.lock()
            && !pending.is_empty()
        {
            self.log(&pending);
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_keeps_the_last_lines_since_the_call_began() {
        let err = LogStream::new(Arc::from("op (1/1)"), Stream::Stderr);
        err.write_bytes(b"before the call\n");
        err.forget();
        for i in 0..RECENT_LINES + 2 {
            err.write_bytes(format!("line {i}\n").as_bytes());
        }
        err.write_bytes(b"unfinished");
        let recent = err.recent();
        assert_eq!(recent.len(), RECENT_LINES + 1);
        assert_eq!(recent[0], "line 2");
        assert_eq!(recent.last().map(String::as_str), Some("unfinished"));
    }

    #[test]
    fn stdout_keeps_nothing_for_errors() {
        let out = LogStream::new(Arc::from("op (1/1)"), Stream::Stdout);
        out.write_bytes(b"hello\n");
        assert!(out.recent().is_empty());
    }
}
