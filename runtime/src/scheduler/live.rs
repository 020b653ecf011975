//! What a running attempt reports as it goes (log lines, progress), held until the next write
//! under a per-attempt budget, so that nothing a guest does turns into unbounded rows:
//!
//! - progress is coalesced: only the latest value since the last write is kept, so a guest
//!   calling `report.progress` a million times writes at most one row per flush interval;
//! - every event written counts against [`MAX_EVENTS_PER_ATTEMPT`]; past it, events are
//!   dropped and one warning says so (logs are also capped in bytes by the job's
//!   `max_log_bytes`, in the sandbox).

use serde_json::json;
use wasmjobs_host::Event;

use crate::store::NewEvent;

/// Most guest-generated events (log lines and progress updates together) one attempt writes
/// to its job's history.
pub const MAX_EVENTS_PER_ATTEMPT: usize = 10_000;

/// One attempt's events not yet written, and what its budget has left.
#[derive(Debug, Default)]
pub(super) struct LiveEvents {
    logs: Vec<NewEvent>,
    /// The latest progress not yet written: `(done, total)`.
    progress: Option<(u64, u64)>,
    /// Events handed out for writing so far.
    written: usize,
    /// Events dropped for the budget, not yet said.
    dropped: bool,
    /// Whether the warning about dropped events was handed out.
    warned: bool,
}

impl LiveEvents {
    /// Takes one event; `true` when the buffer was empty before (time to ring for a flush).
    pub(super) fn push(&mut self, event: Event) -> bool {
        let was_empty = self.is_empty();
        match event {
            Event::Log(l) => {
                if self.written + self.logs.len() + usize::from(self.progress.is_some())
                    >= MAX_EVENTS_PER_ATTEMPT
                {
                    self.dropped = true;
                    return false;
                }
                self.logs.push(NewEvent {
                    kind: "log",
                    data: json!({ "level": l.level, "source": l.source, "message": l.message, "at_ms": l.at_ms }),
                });
            }
            Event::Progress { done, total } => self.progress = Some((done, total)),
        }
        was_empty
    }

    fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.progress.is_none()
    }

    /// The events to write now, in order (the latest progress last), within the budget.
    pub(super) fn take(&mut self) -> Vec<NewEvent> {
        let mut out = std::mem::take(&mut self.logs);
        if let Some((done, total)) = self.progress.take() {
            if self.written + out.len() < MAX_EVENTS_PER_ATTEMPT {
                out.push(NewEvent {
                    kind: "progress",
                    data: json!({ "done": done, "total": total }),
                });
            } else {
                self.dropped = true;
            }
        }
        self.written += out.len();
        if self.dropped && !self.warned {
            self.warned = true;
            out.push(NewEvent {
                kind: "log",
                data: json!({
                    "level": "warn",
                    "source": "wasmjobs",
                    "message": format!("events past the attempt's budget of {MAX_EVENTS_PER_ATTEMPT} were dropped"),
                }),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmjobs_host::{LogLevel, LogLine};

    fn log(i: usize) -> Event {
        Event::Log(LogLine {
            at_ms: 0,
            level: LogLevel::Info,
            source: "report".into(),
            message: format!("line {i}"),
        })
    }

    #[test]
    fn progress_is_coalesced_to_the_latest_value_per_write() {
        let mut live = LiveEvents::default();
        assert!(
            live.push(Event::Progress { done: 0, total: 5 }),
            "first rings"
        );
        for done in 1..=1_000_000u64 {
            assert!(!live.push(Event::Progress { done, total: 5 }));
        }
        live.push(log(1));
        let batch = live.take();
        assert_eq!(batch.len(), 2, "one log line and one progress: {batch:?}");
        assert_eq!(batch[0].kind, "log");
        assert_eq!(batch[1].data, json!({ "done": 1_000_000, "total": 5 }));
        assert!(live.take().is_empty());
        assert!(
            live.push(Event::Progress { done: 7, total: 9 }),
            "empty again: rings"
        );
    }

    #[test]
    fn events_past_the_budget_are_dropped_and_said_once() {
        let mut live = LiveEvents::default();
        let mut written = Vec::new();
        for i in 0..MAX_EVENTS_PER_ATTEMPT + 500 {
            live.push(log(i));
            if i % 1000 == 0 {
                written.extend(live.take());
            }
        }
        live.push(Event::Progress { done: 1, total: 1 });
        written.extend(live.take());
        assert_eq!(
            written.len(),
            MAX_EVENTS_PER_ATTEMPT + 1,
            "the budget and one warning"
        );
        let warnings: Vec<&NewEvent> = written
            .iter()
            .filter(|e| e.data["source"] == "wasmjobs")
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].data["message"]
                .as_str()
                .is_some_and(|m| m.contains("budget")),
            "{warnings:?}"
        );
        live.push(log(0));
        live.push(Event::Progress { done: 2, total: 2 });
        assert!(
            live.take().is_empty(),
            "nothing more, and no second warning"
        );
    }
}
