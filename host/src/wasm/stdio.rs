//! A guest's stdout and stderr, captured line by line into the host's log, tagged with
//! the subtask that wrote them. Guests inherit no stdio of the host.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept whole; a guest printing without newlines is logged in pieces of
/// this size rather than buffered without bound.
const MAX_LINE: usize = 16 * 1024;

/// Which of the guest's streams this is.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// The guest's stdout, logged at info level.
    Stdout,
    /// The guest's stderr, logged at warn level.
    Stderr,
}

/// A guest output stream that writes complete lines to `tracing`.
#[derive(Clone)]
pub struct LogStream {
    task: Arc<str>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    /// A stream for subtask `task` (e.g. `count (1/4)`).
    pub fn new(task: Arc<str>, stream: Stream) -> Self {
        Self {
            task,
            stream,
            pending: Arc::default(),
        }
    }

    fn log(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
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
