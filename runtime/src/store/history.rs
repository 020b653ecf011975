//! A job's history and its ended attempts as its row keeps them, the same on both backends:
//! two text columns of JSON Lines, one compact JSON array per line, appended by the statement
//! that makes the transition (string concatenation: no parse, no rewrite of what is there) and
//! read here. Arrays, not objects: a job's row is rewritten at each transition, and on Postgres
//! its versions must fit beside it on its page for the update to stay HOT (decision 008), so
//! the lines carry no key names.
//!
//! - `jobs.history`: the job's state events, `[seq,at,{data}]` (their kind is `state`). Its
//!   other events (logs, progress, cancel requests) are rows of `events`; a job's history is
//!   both, merged by `seq` ([`merge`]).
//! - `jobs.ended_attempts`: each attempt that ended, `[attempt,worker,outcome,trap,error,
//!   fuel_consumed,peak_memory_bytes,wall_time_us,started_at,finished_at]`. The running
//!   attempt is the row's own (`attempts`, `worker`, `attempt_started_at`).
//!
//! JSON escapes every control character, so a line never holds a raw newline.

use std::borrow::Cow;

use serde_json::Value;

use super::model::{Attempt, Completion, Event, JobId, NewEvent};
use super::{Result, StoreError};

/// The end of state event `e`'s history line, after its `seq` and `at`, which the statement
/// writes in front (they are the row's to clamp): `{data}]`.
pub(super) fn tail(e: &NewEvent) -> String {
    debug_assert_eq!(e.kind, "state", "only state events go into a job's row");
    tail_text(&e.data.to_string())
}

/// [`tail`] of a state event whose data is already JSON text.
pub(super) fn tail_text(data: &str) -> String {
    format!("{data}]")
}

/// A whole history line, for statements that do not compute `seq` and `at` themselves.
pub(super) fn line(seq: i64, at: i64, e: &NewEvent) -> String {
    format!("[{seq},{at},{}\n", tail(e))
}

/// The events of `history` (job `job_id`) with `seq > after`, in order.
pub(super) fn parse(job_id: JobId, history: &str, after: i64) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for l in history.lines().filter(|l| !l.is_empty()) {
        let (seq, at, data): (i64, i64, Value) = serde_json::from_str(l)
            .map_err(|e| StoreError::Corrupt(format!("job {job_id}'s history: {e}")))?;
        if seq > after {
            out.push(Event {
                job_id,
                seq,
                kind: "state".to_string(),
                data,
                at,
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

/// An ended attempt's line: number, worker, outcome, trap, error, fuel, peak memory, wall
/// time, start, end.
type AttemptLine<'a> = (
    u32,
    Cow<'a, str>,
    Cow<'a, str>,
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// The start of attempt `c`'s line in `ended_attempts`, up to its start and end times, which
/// the statement appends (they are the row's to clamp): `[attempt,…,wall_time_us,`.
pub(super) fn attempt_head(c: &Completion) -> String {
    let [fuel, peak, wall] = super::lifecycle::stored_figures(c);
    let head = (
        c.attempt,
        c.worker.as_str(),
        c.outcome.as_str(),
        c.trap.as_deref(),
        c.error.as_deref(),
        fuel,
        peak,
        wall,
    );
    // Serializing plain values into a string cannot fail.
    let mut text = serde_json::to_string(&head).unwrap_or_default();
    // `[…,wall]` → `[…,wall,`
    text.pop();
    text.push(',');
    text
}

/// The whole line of attempt `c`, for statements that append it with its times known.
pub(super) fn attempt_line(c: &Completion, started_at: i64, finished_at: i64) -> String {
    format!("{}{started_at},{finished_at}]\n", attempt_head(c))
}

/// The attempts of `ended` (a job's `ended_attempts`), in order.
pub(super) fn parse_attempts(job_id: JobId, ended: &str) -> Result<Vec<Attempt>> {
    let corrupt = |e: String| StoreError::Corrupt(format!("job {job_id}'s attempts: {e}"));
    let mut out = Vec::new();
    for l in ended.lines().filter(|l| !l.is_empty()) {
        let a: AttemptLine = serde_json::from_str(l).map_err(|e| corrupt(e.to_string()))?;
        let (attempt, worker, outcome, trap, error, fuel, peak, wall, started_at, finished_at) = a;
        let to_u64 = |v: i64| Some(u64::try_from(v).unwrap_or(0));
        out.push(Attempt {
            attempt,
            worker: worker.into_owned(),
            outcome: Some(outcome.parse().map_err(corrupt)?),
            trap: trap.map(Cow::into_owned),
            error: error.map(Cow::into_owned),
            fuel_consumed: to_u64(fuel),
            peak_memory_bytes: to_u64(peak),
            wall_time_us: to_u64(wall),
            started_at,
            finished_at: Some(finished_at),
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
        // As a statement appends one: `[` seq `,` at `,` tail newline.
        history.push_str(&format!("[{},{},{}\n", 2, 20, tail(&e)));
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
            submitted_at: None,
            events: Vec::new(),
            permanent: false,
            keyed: false,
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
