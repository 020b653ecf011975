//! A job's history and its ended attempts as its row keeps them, the same on both backends:
//! two text columns in JSON Lines, one JSON object per line, appended by the statement that
//! makes the transition (string concatenation: no parse, no rewrite of what is there) and read
//! here.
//!
//! - `jobs.history`: the job's state events, `{"seq":3,"at":…,"kind":"state","data":{…}}`.
//!   Its other events (logs, progress, cancel requests) are rows of `events`; a job's history
//!   is both, merged by `seq` ([`merge`]).
//! - `jobs.ended_attempts`: each attempt that ended, `{"attempt":1,"worker":…,"outcome":…,
//!   "trap":…,"error":…,"fuel_consumed":…,"peak_memory_bytes":…,"wall_time_us":…,
//!   "started_at":…,"finished_at":…}`. The running attempt is the row's own (`attempts`,
//!   `worker`, `attempt_started_at`).
//!
//! JSON escapes every control character, so a line never holds a raw newline.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Attempt, Completion, Event, JobId, NewEvent};
use super::{Result, StoreError};

/// The end of a history line after its `seq` and `at`, which the statement writes in front
/// (they are the row's to clamp): `"kind":"state","data":{…}}`.
pub(super) fn tail(e: &NewEvent) -> String {
    let mut out = Vec::with_capacity(e.kind.len() + 96);
    out.extend_from_slice(b"\"kind\":");
    // Writing JSON into a `Vec` cannot fail, and JSON text is UTF-8.
    let _ = serde_json::to_writer(&mut out, e.kind);
    out.extend_from_slice(b",\"data\":");
    let _ = serde_json::to_writer(&mut out, &e.data);
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

/// [`tail`] of an event whose data is already JSON text.
pub(super) fn tail_text(kind: &str, data: &str) -> String {
    format!(
        "\"kind\":{},\"data\":{data}}}",
        serde_json::Value::from(kind)
    )
}

/// A whole history line, for statements that do not compute `seq` and `at` themselves.
pub(super) fn line(seq: i64, at: i64, e: &NewEvent) -> String {
    format!("{{\"seq\":{seq},\"at\":{at},{}\n", tail(e))
}

#[derive(Deserialize)]
struct HistoryLine {
    seq: i64,
    at: i64,
    kind: String,
    data: Value,
}

/// The events of `history` (job `job_id`) with `seq > after`, in order.
pub(super) fn parse(job_id: JobId, history: &str, after: i64) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for l in history.lines().filter(|l| !l.is_empty()) {
        let h: HistoryLine = serde_json::from_str(l)
            .map_err(|e| StoreError::Corrupt(format!("job {job_id}'s history: {e}")))?;
        if h.seq > after {
            out.push(Event {
                job_id,
                seq: h.seq,
                kind: h.kind,
                data: h.data,
                at: h.at,
            });
        }
    }
    Ok(out)
}

/// A job's history (`state`, in order) and its other events (`others`, in order) as one, in
/// order of `seq`, at most `limit`.
pub(super) fn merge(state: Vec<Event>, others: Vec<Event>, limit: usize) -> Vec<Event> {
    let mut all = state;
    all.extend(others);
    all.sort_by_key(|e| e.seq);
    all.truncate(limit);
    all
}

/// An ended attempt as a line of `ended_attempts`.
#[derive(Serialize, Deserialize)]
struct AttemptLine<'a> {
    attempt: u32,
    #[serde(borrow)]
    worker: std::borrow::Cow<'a, str>,
    outcome: std::borrow::Cow<'a, str>,
    trap: Option<std::borrow::Cow<'a, str>>,
    error: Option<std::borrow::Cow<'a, str>>,
    fuel_consumed: i64,
    peak_memory_bytes: i64,
    wall_time_us: i64,
    #[serde(default)]
    started_at: i64,
    #[serde(default)]
    finished_at: i64,
}

/// The start of attempt `c`'s line in `ended_attempts`, up to its start and end times, which
/// the statement appends (they are the row's to clamp): `{"attempt":…,…,"started_at":`.
pub(super) fn attempt_head(c: &Completion) -> String {
    let [fuel, peak, wall] = super::rows::stored_figures(c);
    let line = AttemptLine {
        attempt: c.attempt,
        worker: c.worker.as_str().into(),
        outcome: c.outcome.as_str().into(),
        trap: c.trap.as_deref().map(Into::into),
        error: c.error.as_deref().map(Into::into),
        fuel_consumed: fuel,
        peak_memory_bytes: peak,
        wall_time_us: wall,
        started_at: 0,
        finished_at: 0,
    };
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    // `…,"started_at":0,"finished_at":0}` → `…,"started_at":`
    if let Some(at) = text.rfind(",\"started_at\":") {
        text.truncate(at + ",\"started_at\":".len());
    }
    text
}

/// The whole line of attempt `c`, for statements that append it with its times known.
pub(super) fn attempt_line(c: &Completion, started_at: i64, finished_at: i64) -> String {
    format!(
        "{}{started_at},\"finished_at\":{finished_at}}}\n",
        attempt_head(c)
    )
}

/// The attempts of `ended` (a job's `ended_attempts`), in order.
pub(super) fn parse_attempts(job_id: JobId, ended: &str) -> Result<Vec<Attempt>> {
    let mut out = Vec::new();
    for l in ended.lines().filter(|l| !l.is_empty()) {
        let a: AttemptLine = serde_json::from_str(l)
            .map_err(|e| StoreError::Corrupt(format!("job {job_id}'s attempts: {e}")))?;
        let to_u64 = |v: i64| Some(u64::try_from(v).unwrap_or(0));
        out.push(Attempt {
            attempt: a.attempt,
            worker: a.worker.into_owned(),
            outcome: Some(
                a.outcome
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("job {job_id}'s attempts: {e}")))?,
            ),
            trap: a.trap.map(|t| t.into_owned()),
            error: a.error.map(|e| e.into_owned()),
            fuel_consumed: to_u64(a.fuel_consumed),
            peak_memory_bytes: to_u64(a.peak_memory_bytes),
            wall_time_us: to_u64(a.wall_time_us),
            started_at: a.started_at,
            finished_at: Some(a.finished_at),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_lines_round_trip_whatever_their_text_holds() {
        let e = NewEvent {
            kind: "state",
            data: json!({"state": "failed", "error": "a\ttab, a\nnewline, a \"quote\" and a }"}),
        };
        let mut history = line(1, 10, &e);
        // As a statement appends one: `{"seq":` seq `,"at":` at `,` tail newline.
        history.push_str(&format!("{{\"seq\":{},\"at\":{},{}\n", 2, 20, tail(&e)));
        let events = parse(7, &history, 0).expect("parses");
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[1].seq, events[1].at, events[1].kind.as_str()),
            (2, 20, "state")
        );
        assert_eq!(events[1].data, e.data);
        assert_eq!(parse(7, &history, 1).expect("parses").len(), 1);
        assert!(parse(7, "not json\n", 0).is_err());
    }

    #[test]
    fn attempt_lines_round_trip() {
        let c = Completion {
            job_id: 7,
            attempt: 2,
            worker: "node \"a\"".into(),
            outcome: wasmjobs_host::Outcome::Trapped,
            trap: Some("unreachable".into()),
            error: Some("boom\nagain".into()),
            output: Vec::new(),
            fuel_consumed: 10,
            peak_memory_bytes: u64::MAX,
            wall_time_us: 5,
            ended_at: 0,
            events: Vec::new(),
        };
        let text = attempt_line(&c, 100, 200);
        assert!(text.starts_with(&attempt_head(&c)));
        let a = parse_attempts(7, &text).expect("parses");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (
                a[0].attempt,
                a[0].worker.as_str(),
                a[0].started_at,
                a[0].finished_at
            ),
            (2, "node \"a\"", 100, Some(200))
        );
        assert_eq!(a[0].error.as_deref(), Some("boom\nagain"));
        assert_eq!(a[0].peak_memory_bytes, Some(i64::MAX as u64));
    }
}
