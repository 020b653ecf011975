//! What both backends do alike around their statements, as Rust: a new job's state and first
//! event, the ending of an attempt (`ending`, on top of the retry decision), reading a job's
//! attempts, a hand retry, a workflow definition's next version.

use super::model::*;
use super::rows::WorkflowRow;
use super::{Result, StoreError};

/// A job's state and run_at as submitted at `now`: scheduled when it asks to run later.
pub(super) fn initial_state(j: &NewJob, now: i64) -> (JobState, i64) {
    let run_at = j.run_at.unwrap_or(now);
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    };
    (state, run_at)
}

/// The first event of a job just created in `state`.
/// The event of a job put back in the queue by a worker that shut down before it ran it to
/// its end (the attempt is not charged).
pub(super) fn released_event(worker: &str) -> NewEvent {
    NewEvent::state(
        JobState::Queued,
        serde_json::json!({ "released_by": worker }),
    )
}

pub(super) fn created_event(state: JobState, run_at: i64) -> NewEvent {
    let extra = if state == JobState::Scheduled {
        serde_json::json!({ "run_at": run_at })
    } else {
        serde_json::json!({})
    };
    NewEvent::state(state, extra)
}

/// A job's attempts: those that ended (its `ended_attempts`) and the one it runs, if it runs
/// one (`state`, its attempt count, worker and the attempt's start, from its row).
pub(super) fn attempts_of(
    id: JobId,
    ended: &str,
    state: &str,
    attempts: i64,
    worker: Option<String>,
    started: Option<i64>,
) -> Result<Vec<Attempt>> {
    let mut all = super::history::parse_attempts(id, ended)?;
    if state == "running"
        && let (Some(worker), Some(started_at)) = (worker, started)
    {
        all.push(Attempt {
            attempt: u32::try_from(attempts).unwrap_or(0),
            worker,
            outcome: None,
            trap: None,
            error: None,
            fuel_consumed: None,
            peak_memory_bytes: None,
            wall_time_us: None,
            started_at,
            finished_at: None,
        });
    }
    Ok(all)
}

/// JSON text of a value that serializes infallibly (our own plain structs).
pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// When a transition of `job` that the caller makes at `now` (its clock reading) happens: never
/// before the job's last one (docs/state-machine.md, "A job's times read forward").
pub(super) fn transition_at(job: &Job, now: i64) -> i64 {
    now.max(job.updated_at)
}

/// What a retry by hand writes: the job's new settings, its concurrency key (it takes a place
/// again, or waits), and when the retry happens ([`transition_at`]).
pub(super) struct Retried {
    pub settings: super::settings::Settings,
    pub concurrency: Option<Concurrency>,
    pub at: i64,
}

/// What job `id` (as read, `None` if missing) gets when a user retries it at `now`: a fresh
/// budget of attempts on top of those made, as new settings for this job (the others that
/// shared its settings keep theirs). Only failed and cancelled jobs can be retried.
pub(super) fn retried(id: JobId, job: Option<Job>, now: i64) -> Result<Retried> {
    let job = job.ok_or(StoreError::NotFound {
        what: "job",
        id: id.to_string(),
    })?;
    if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
        return Err(StoreError::Conflict(format!(
            "job {id} is {}: only failed or cancelled jobs can be retried",
            job.state
        )));
    }
    let at = transition_at(&job, now);
    let mut retry = job.retry;
    // A fresh budget of each kind on top of what was used.
    let other = job.attempts.saturating_sub(job.lost_attempts);
    retry.max_attempts = other.saturating_add(retry.max_attempts.max(1));
    retry.max_lost = job.lost_attempts.saturating_add(retry.max_lost.max(1));
    Ok(Retried {
        settings: super::settings::Settings::of_parts(&job.limits, &retry, &job.grants),
        concurrency: job.concurrency,
        at,
    })
}

/// Jobs inserted (each with `false` when its idempotency key returned an earlier job) and the
/// notices to send once the transaction commits.
pub(super) type Inserted = (Vec<(Job, bool)>, Vec<super::Notice>);

/// An event row to write: job, seq, kind, data, time.
pub(super) type PendingEvent = (JobId, i64, &'static str, String, i64);

/// Event rows for `events` appended after `last_seq - events.len()`, at `at`.
pub(super) fn pending(
    job_id: JobId,
    last_seq: i64,
    events: &[NewEvent],
    at: i64,
) -> Vec<PendingEvent> {
    let first = last_seq - events.len() as i64 + 1;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| (job_id, first + i as i64, e.kind, e.data.to_string(), at))
        .collect()
}

/// What the end of an attempt does to its job: the next state, a retry's `run_at`, whether the
/// output is kept, and the data of the state event appended after the attempt's own events
/// (`Completion::events`).
pub(super) struct Ending {
    pub state: super::model::JobState,
    pub run_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub keep_output: bool,
    /// The state event's data as JSON text (`kind` is `state`).
    pub state_data: String,
}

/// The data of the state event that ends an attempt. Its fields are in the order serde_json
/// writes a map's keys (sorted), so the text is the one a `Value` of it gave: serialized
/// straight into text, without building that `Value`, which cost the completer more than the
/// rest of deciding an ending (a profile of the batched Postgres run).
#[derive(serde::Serialize)]
struct StateChange<'a> {
    attempt: u32,
    error: &'a Option<String>,
    outcome: wasmjobs_host::Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<i64>,
    state: super::model::JobState,
    /// The job marked its failure permanent: that is why it was not retried.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    permanent: bool,
}

/// The job's columns the decision needs, as both backends store them.
pub(super) struct EndingSnapshot<'a> {
    pub attempts: i64,
    /// Of those, how many ended `lost` before this one.
    pub lost_attempts: i64,
    pub retry: &'a str,
    pub cancel_requested: bool,
    pub deadline_at: Option<i64>,
}

/// Decides where a job goes after attempt `c` (`policy::decide`) and the events that say so.
pub(super) fn ending(
    snap: EndingSnapshot<'_>,
    c: &super::model::Completion,
    now: i64,
) -> super::Result<Ending> {
    use super::retry::{AttemptEnd, JobSnapshot, RetryPolicy, decide};
    let retry: RetryPolicy = serde_json::from_str(snap.retry)
        .map_err(|e| super::StoreError::Corrupt(format!("retry: {e}")))?;
    let next = decide(
        &JobSnapshot {
            attempts: u32::try_from(snap.attempts).unwrap_or(0),
            lost: u32::try_from(snap.lost_attempts).unwrap_or(0),
            retry,
            cancel_requested: snap.cancel_requested,
            deadline_at: snap.deadline_at,
        },
        AttemptEnd {
            outcome: c.outcome,
            trap: c.trap.as_deref(),
            permanent: c.permanent,
        },
        now,
    );
    Ok(ending_after(next, c, now))
}

/// The ending of attempt `c` when its outcome alone decides it
/// (`policy::decided_by_outcome`), so that the job's row need not be read first.
/// An attempt's fuel, peak memory and wall time as both stores keep them: SQL integers, a
/// figure past `i64::MAX` kept as `i64::MAX`.
pub(super) fn stored_figures(c: &super::model::Completion) -> [i64; 3] {
    [c.fuel_consumed, c.peak_memory_bytes, c.wall_time_us]
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

pub(super) fn ending_by_outcome(c: &super::model::Completion, now: i64) -> Option<Ending> {
    super::retry::decided_by_outcome(c.outcome).map(|next| ending_after(next, c, now))
}

fn ending_after(next: super::retry::Next, c: &super::model::Completion, now: i64) -> Ending {
    let state = next.state();
    let run_at = match next {
        super::retry::Next::Retry { run_at } => Some(run_at),
        _ => None,
    };
    let change = StateChange {
        attempt: c.attempt,
        error: &c.error,
        outcome: c.outcome,
        run_at,
        state,
        permanent: c.permanent,
    };
    Ending {
        state,
        run_at,
        finished_at: state.is_final().then_some(now),
        keep_output: matches!(
            c.outcome,
            wasmjobs_host::Outcome::Succeeded | wasmjobs_host::Outcome::Failed
        ),
        // Serializing plain fields into a `String` cannot fail.
        state_data: serde_json::to_string(&change).unwrap_or_default(),
    }
}

/// What storing `definition` (JSON) as workflow `name` means, given its latest stored version:
/// that version itself with `false` when the definitions are equal, else the record of the next
/// version, to insert, with `true`.
pub(super) fn next_workflow(
    latest: Option<WorkflowRow>,
    name: &str,
    definition: &str,
    now: i64,
) -> Result<(WorkflowRecord, bool)> {
    let definition: serde_json::Value = serde_json::from_str(definition)
        .map_err(|e| StoreError::Corrupt(format!("workflow {name}: {e}")))?;
    let version = match latest {
        Some(row) => {
            let record = row.into_record()?;
            if record.definition == definition {
                return Ok((record, false));
            }
            record.version + 1
        }
        None => 1,
    };
    let record = WorkflowRecord {
        name: name.to_string(),
        version,
        definition,
        created_at: now,
    };
    Ok((record, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::retry::Next;

    /// The ending's state event is the text a `Value` of the same fields serializes to, so
    /// histories written before and after read the same.
    #[test]
    fn the_state_event_of_an_ending_reads_as_its_value_did() {
        let mut c = Completion::lost(7, 2, Some("node \"a\"\tb".into()));
        c.error = Some("tab\there, quote \" and\nnewline é".into());
        for (next, run_at) in [
            (Next::Retry { run_at: 1234 }, Some(1234)),
            (Next::Failed, None),
        ] {
            let e = ending_after(next, &c, 99);
            let mut extra = serde_json::json!({
                "attempt": c.attempt, "outcome": c.outcome, "error": c.error,
            });
            if let Some(run_at) = run_at {
                extra["run_at"] = serde_json::json!(run_at);
            }
            let old = NewEvent::state(e.state, extra);
            assert_eq!(e.state_data, old.data.to_string());
        }
        c.error = None;
        let e = ending_after(Next::Succeeded, &c, 99);
        assert_eq!(
            e.state_data,
            r#"{"attempt":2,"error":null,"outcome":"lost","state":"succeeded"}"#
        );
    }
}
