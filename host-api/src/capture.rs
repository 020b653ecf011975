//! Bounded capture of what a guest writes: logs (from `report.log`, stdout and stderr) that are
//! truncated and flagged past their cap, and the stdout of a command component, which is its
//! output and ends the attempt `output_too_large` past its cap. Nothing here ever grows host
//! memory past its cap, and logging never fails or traps the guest.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::events::{Event, EventSink, LogLevel, LogLine};

/// Why the host ended an attempt on purpose. Carried through wasmtime as the trap's error so the
/// attempt's outcome comes from a value, not from parsing a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Killed {
    #[error("the attempt ran past its timeout")]
    TimedOut,
    #[error("the attempt was cancelled")]
    Cancelled,
    #[error("output of {size} bytes is over the limit of {limit} bytes")]
    OutputTooLarge { size: u64, limit: u64 },
}

/// A partial line longer than this is logged as it is rather than waiting for its newline.
const MAX_PARTIAL_LINE: usize = 8 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while logging; the data is still a
    // consistent Vec, so keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct LogState {
    lines: Vec<LogLine>,
    used: u64,
    truncated: bool,
    /// The unfinished last line of stdout and of stderr, indexed by [`Stdio`].
    partial: [Vec<u8>; 2],
}

struct LogShared {
    state: Mutex<LogState>,
    limit: u64,
    started: Instant,
    sink: Arc<dyn EventSink>,
}

/// The attempt's log: every source writes here; lines past the cap are dropped and flagged.
/// One allocation per attempt, shared by stdout, stderr and `report.log` (a live instance
/// carries it for as long as it sleeps, so it is kept small).
#[derive(Clone)]
pub(crate) struct Logs(Arc<LogShared>);

impl Logs {
    pub(crate) fn new(limit: u64, started: Instant, sink: Arc<dyn EventSink>) -> Logs {
        Logs(Arc::new(LogShared {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                used: 0,
                truncated: false,
                partial: [Vec::new(), Vec::new()],
            }),
            limit,
            started,
            sink,
        }))
    }

    pub(crate) fn push(&self, level: LogLevel, source: &str, message: &str) {
        let line = self.record(&mut lock(&self.0.state), level, source, message);
        self.publish(line);
    }

    /// Sends stored lines to the live sink (outside the state's lock).
    fn publish(&self, lines: impl IntoIterator<Item = LogLine>) {
        for line in lines {
            self.0.sink.event(Event::Log(line));
        }
    }

    /// Stores one line under the cap; the caller sends what it returns to the sink once the
    /// lock is released.
    fn record(
        &self,
        st: &mut LogState,
        level: LogLevel,
        source: &str,
        message: &str,
    ) -> Option<LogLine> {
        let cost = message.len() as u64 + 16;
        if st.truncated || st.used + cost > self.0.limit {
            st.truncated = true;
            return None;
        }
        st.used += cost;
        let line = LogLine {
            at_ms: u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            level,
            source: source.to_string(),
            message: message.to_string(),
        };
        st.lines.push(line.clone());
        Some(line)
    }

    pub(crate) fn progress(&self, done: u64, total: u64) {
        self.0.sink.event(Event::Progress { done, total });
    }

    pub(crate) fn take(&self) -> (Vec<LogLine>, bool) {
        let mut st = lock(&self.0.state);
        (std::mem::take(&mut st.lines), st.truncated)
    }
}

/// Which of the guest's standard streams a [`LogStream`] captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stdio {
    Stdout = 0,
    Stderr = 1,
}

impl Stdio {
    fn source(self) -> &'static str {
        match self {
            Stdio::Stdout => "stdout",
            Stdio::Stderr => "stderr",
        }
    }

    fn level(self) -> LogLevel {
        match self {
            Stdio::Stdout => LogLevel::Info,
            Stdio::Stderr => LogLevel::Warn,
        }
    }
}

/// A WASI output stream (stdout or stderr of a job) that turns written bytes into log lines.
#[derive(Clone)]
pub(crate) struct LogStream {
    logs: Logs,
    stdio: Stdio,
}

impl LogStream {
    pub(crate) fn new(logs: Logs, stdio: Stdio) -> LogStream {
        LogStream { logs, stdio }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut st = lock(&self.logs.0.state);
            let st = &mut *st;
            let i = self.stdio as usize;
            for chunk in bytes.split_inclusive(|b| *b == b'\n') {
                let complete = match chunk.strip_suffix(b"\n") {
                    Some(line) => {
                        st.partial[i].extend_from_slice(line);
                        true
                    }
                    None => {
                        st.partial[i].extend_from_slice(chunk);
                        st.partial[i].len() >= MAX_PARTIAL_LINE
                    }
                };
                if complete {
                    lines.extend(self.emit(st));
                }
            }
        }
        self.logs.publish(lines);
    }

    fn emit(&self, st: &mut LogState) -> Option<LogLine> {
        let i = self.stdio as usize;
        let mut partial = std::mem::take(&mut st.partial[i]);
        let line = self.logs.record(
            st,
            self.stdio.level(),
            self.stdio.source(),
            String::from_utf8_lossy(&partial).trim_end_matches('\r'),
        );
        partial.clear(); // keeps its capacity for the next line
        st.partial[i] = partial;
        line
    }

    /// Logs a last line that had no newline.
    pub(crate) fn finish(&self) {
        let line = {
            let mut st = lock(&self.logs.0.state);
            if st.partial[self.stdio as usize].is_empty() {
                return;
            }
            self.emit(&mut st)
        };
        self.logs.publish(line);
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
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

/// The job's output buffer, capped. Shared by `io.output` (which replaces it) and a command
/// component's stdout (which appends to it).
#[derive(Clone)]
pub(crate) struct OutputBuffer {
    data: Arc<Mutex<Vec<u8>>>,
    limit: u64,
}

impl OutputBuffer {
    pub(crate) fn new(limit: u64) -> OutputBuffer {
        OutputBuffer {
            data: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    pub(crate) fn replace(&self, bytes: Vec<u8>) -> Result<(), Killed> {
        let size = bytes.len() as u64;
        if size > self.limit {
            return Err(Killed::OutputTooLarge {
                size,
                limit: self.limit,
            });
        }
        *lock(&self.data) = bytes;
        Ok(())
    }

    fn append(&self, bytes: &[u8]) -> Result<(), Killed> {
        let mut data = lock(&self.data);
        let size = data.len() as u64 + bytes.len() as u64;
        if size > self.limit {
            return Err(Killed::OutputTooLarge {
                size,
                limit: self.limit,
            });
        }
        data.extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.data))
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputBuffer {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|k| StreamError::Trap(wasmtime::Error::new(k)))
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a write: a write past the cap is what ends the attempt, with the size
        // the guest tried to reach.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputBuffer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.append(buf) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(k) => Poll::Ready(Err(std::io::Error::other(k))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for OutputBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputBuffer {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NoEvents;

    #[test]
    fn logs_stop_at_the_cap_and_say_so() {
        let logs = Logs::new(100, Instant::now(), Arc::new(NoEvents));
        let stream = LogStream::new(logs.clone(), Stdio::Stderr);
        for _ in 0..1000 {
            stream.write_bytes(b"0123456789\n");
        }
        let (lines, truncated) = logs.take();
        assert!(truncated);
        assert!(!lines.is_empty() && lines.len() < 10, "{}", lines.len());
        assert_eq!(lines[0].message, "0123456789");
    }

    #[test]
    fn lines_are_split_across_writes() {
        let logs = Logs::new(10_000, Instant::now(), Arc::new(NoEvents));
        let stream = LogStream::new(logs.clone(), Stdio::Stdout);
        stream.write_bytes(b"hel");
        stream.write_bytes(b"lo\nwor");
        stream.write_bytes(b"ld");
        stream.finish();
        let msgs: Vec<_> = logs.take().0.into_iter().map(|l| l.message).collect();
        assert_eq!(msgs, ["hello", "world"]);
    }

    #[test]
    fn stdout_and_stderr_keep_their_own_unfinished_lines() {
        let logs = Logs::new(10_000, Instant::now(), Arc::new(NoEvents));
        let out = LogStream::new(logs.clone(), Stdio::Stdout);
        let err = LogStream::new(logs.clone(), Stdio::Stderr);
        out.write_bytes(b"to ");
        err.write_bytes(b"oh ");
        out.write_bytes(b"stdout\n");
        err.write_bytes(b"no\n");
        let lines: Vec<_> = logs
            .take()
            .0
            .into_iter()
            .map(|l| (l.source, l.level, l.message))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "stdout".to_string(),
                    LogLevel::Info,
                    "to stdout".to_string()
                ),
                ("stderr".to_string(), LogLevel::Warn, "oh no".to_string()),
            ]
        );
    }

    #[test]
    fn output_over_the_cap_is_refused_with_its_size() {
        let out = OutputBuffer::new(4);
        assert!(out.append(b"abcd").is_ok());
        assert_eq!(
            out.append(b"e"),
            Err(Killed::OutputTooLarge { size: 5, limit: 4 })
        );
        assert_eq!(out.take(), b"abcd");
    }
}
