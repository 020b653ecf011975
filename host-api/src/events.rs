//! Live events from a running attempt (logs and progress) and the sink that receives them.

use serde::{Deserialize, Serialize};

/// How much a log line matters. `stdout`/`stderr` lines captured from WASI come in as `Info`
/// and `Warn`, tagged with their stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the attempt started.
    pub at_ms: u64,
    pub level: LogLevel,
    /// `report` for the WIT `report.log` call, `stdout` or `stderr` for captured WASI streams.
    pub source: String,
    pub message: String,
}

/// Something a running attempt reported, delivered as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Log(LogLine),
    Progress { done: u64, total: u64 },
}

/// Receives live events. Called on the thread running the guest, so it must not block: hand the
/// event to a channel and return.
pub trait EventSink: Send + Sync {
    fn event(&self, event: Event);
}

/// An [`EventSink`] that drops everything (the report still holds the logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _event: Event) {}
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn event(&self, event: Event) {
        self(event)
    }
}
