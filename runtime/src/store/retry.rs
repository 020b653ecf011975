//! The retry policy and the one function that decides where a job goes after an attempt. Both
//! store backends apply its answer; neither decides on its own.

use serde::{Deserialize, Deserializer, Serialize};
use wasmjobs_host::{Outcome, TrapKind};

use super::model::JobState;

/// How a job is retried. Defaults: 3 attempts, backoff 1 s × 2ⁿ up to 5 min with ±20 % jitter,
/// retrying every outcome except the deterministic ones (`out_of_fuel`, `out_of_memory`,
/// `output_too_large`) and `cancelled`. Attempts that end `lost` (the node running them died
/// or lost its lease) have a budget of their own, `max_lost` (default 5): a crash of the
/// infrastructure does not use up a job's retries, and a job that kills its workers still
/// stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Attempts that may end `lost` before the job fails; they do not count in `max_attempts`.
    pub max_lost: u32,
    #[serde(deserialize_with = "millis")]
    pub initial_backoff_ms: u64,
    pub multiplier: f64,
    #[serde(deserialize_with = "millis")]
    pub max_backoff_ms: u64,
    /// Fraction of the backoff added or removed at random (0 to 1).
    pub jitter: f64,
    /// Outcomes that are retried; `None` means the default set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<Outcome>>,
    /// Of `trapped` attempts, retry only those that ended in one of these traps (e.g.
    /// `["stack_overflow"]`); every trap when unset. `trapped` must still be retried by
    /// `retry_on` (it is by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_traps: Option<Vec<TrapKind>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            max_lost: 5,
            initial_backoff_ms: 1_000,
            multiplier: 2.0,
            max_backoff_ms: 300_000,
            jitter: 0.2,
            retry_on: None,
            retry_on_traps: None,
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(u64),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::Number(n) => Ok(n),
        Repr::Text(t) => wasmjobs_host::units::parse_duration(&t)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(serde::de::Error::custom),
    }
}

impl RetryPolicy {
    /// Checks the values a user sent; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.max_lost == 0 {
            return Err("retry.max_lost must be at least 1".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "retry.multiplier must be a number ≥ 1, got {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry.jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if self
            .retry_on
            .as_ref()
            .is_some_and(|r| r.contains(&Outcome::Succeeded))
        {
            return Err("retry.retry_on cannot contain succeeded".into());
        }
        Ok(())
    }

    /// Whether an attempt that ended in `outcome` may be retried by this policy. `lost` is
    /// always retried (it says nothing about the job).
    pub fn retries(&self, outcome: Outcome) -> bool {
        match (&self.retry_on, outcome) {
            (_, Outcome::Succeeded | Outcome::Cancelled) => false,
            (_, Outcome::Lost) => true,
            (Some(list), o) => list.contains(&o),
            (None, o) => !o.is_deterministic(),
        }
    }

    /// Whether a `trapped` attempt with trap kind `trap` may be retried: any trap unless
    /// `retry_on_traps` lists which (a trap of no known kind only if it lists `other`).
    pub fn retries_trap(&self, trap: Option<&str>) -> bool {
        match &self.retry_on_traps {
            None => true,
            Some(kinds) => {
                let kind = trap.unwrap_or(TrapKind::Other.as_str());
                kinds.iter().any(|k| k.as_str() == kind)
            }
        }
    }

    /// Delay before attempt `attempts + 1`, after `attempts` attempts, with jitter.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let exp = self
            .multiplier
            .powi(attempts.saturating_sub(1).min(64) as i32);
        let base = (self.initial_backoff_ms as f64 * exp).min(self.max_backoff_ms as f64);
        let jitter = base * self.jitter * (fastrand::f64() * 2.0 - 1.0);
        (base + jitter).max(0.0) as u64
    }
}

/// What the store knows of a job when an attempt ends.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Of those, the ones that ended `lost` before this one.
    pub lost: u32,
    pub retry: RetryPolicy,
    pub cancel_requested: bool,
    pub deadline_at: Option<i64>,
}

/// Where a job goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    Cancelled,
    /// Back to `scheduled` until `run_at` (or `queued` when the backoff is zero).
    Retry {
        run_at: i64,
    },
    Failed,
}

impl Next {
    pub fn state(self) -> JobState {
        match self {
            Next::Succeeded => JobState::Succeeded,
            Next::Cancelled => JobState::Cancelled,
            Next::Retry { .. } => JobState::Scheduled,
            Next::Failed => JobState::Failed,
        }
    }
}

/// Where a job goes after an attempt that ended in `outcome`, when the outcome alone decides
/// it: a succeeded or cancelled attempt ends its job so whatever the job's retry policy,
/// deadline or cancel request.
pub fn decided_by_outcome(outcome: Outcome) -> Option<Next> {
    match outcome {
        Outcome::Succeeded => Some(Next::Succeeded),
        Outcome::Cancelled => Some(Next::Cancelled),
        _ => None,
    }
}

/// How an attempt ended, as far as the retry decision cares.
#[derive(Debug, Clone, Copy)]
pub struct AttemptEnd<'a> {
    pub outcome: Outcome,
    /// The trap kind (`TrapKind::as_str`) of a `trapped` attempt.
    pub trap: Option<&'a str>,
    /// The job marked its failure permanent.
    pub permanent: bool,
}

impl AttemptEnd<'_> {
    pub fn of(outcome: Outcome) -> AttemptEnd<'static> {
        AttemptEnd {
            outcome,
            trap: None,
            permanent: false,
        }
    }
}

/// Decides the job's next state after an attempt ended (`end`) at `now`.
pub fn decide(job: &JobSnapshot, end: AttemptEnd<'_>, now: i64) -> Next {
    let outcome = end.outcome;
    if let Some(next) = decided_by_outcome(outcome) {
        return next;
    }
    if job.cancel_requested {
        return Next::Cancelled;
    }
    if end.permanent && outcome == Outcome::Failed {
        return Next::Failed;
    }
    if outcome == Outcome::Trapped && !job.retry.retries_trap(end.trap) {
        return Next::Failed;
    }
    // A lost attempt counts against `max_lost`; every other one against `max_attempts`.
    let (used, budget) = if outcome == Outcome::Lost {
        (job.lost.saturating_add(1), job.retry.max_lost)
    } else {
        (
            job.attempts.saturating_sub(job.lost),
            job.retry.max_attempts,
        )
    };
    if !job.retry.retries(outcome) || used >= budget {
        return Next::Failed;
    }
    let run_at = now.saturating_add(i64::try_from(job.retry.backoff_ms(used)).unwrap_or(i64::MAX));
    if job.deadline_at.is_some_and(|d| run_at >= d) {
        return Next::Failed;
    }
    Next::Retry { run_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(attempts: u32) -> JobSnapshot {
        JobSnapshot {
            attempts,
            lost: 0,
            retry: RetryPolicy::default(),
            cancel_requested: false,
            deadline_at: None,
        }
    }

    #[test]
    fn a_permanent_failure_is_not_retried_and_traps_retry_as_listed() {
        let end = |outcome, trap, permanent| AttemptEnd {
            outcome,
            trap,
            permanent,
        };
        assert_eq!(
            decide(&snap(1), end(Outcome::Failed, None, true), 0),
            Next::Failed
        );
        // Only a returned failure is the job's to call permanent.
        assert!(matches!(
            decide(&snap(1), end(Outcome::TimedOut, None, true), 0),
            Next::Retry { .. }
        ));
        let mut s = snap(1);
        s.retry.retry_on_traps = Some(vec![TrapKind::StackOverflow]);
        assert!(matches!(
            decide(&s, end(Outcome::Trapped, Some("stack_overflow"), false), 0),
            Next::Retry { .. }
        ));
        assert_eq!(
            decide(&s, end(Outcome::Trapped, Some("unreachable"), false), 0),
            Next::Failed
        );
        assert_eq!(
            decide(&s, end(Outcome::Trapped, None, false), 0),
            Next::Failed
        );
        // Unset: every trap retries.
        assert!(matches!(
            decide(
                &snap(1),
                end(Outcome::Trapped, Some("unreachable"), false),
                0
            ),
            Next::Retry { .. }
        ));
        let policy: RetryPolicy =
            serde_json::from_str(r#"{"retry_on_traps": ["stack_overflow", "other"]}"#).unwrap();
        assert_eq!(policy.retry_on_traps.map(|t| t.len()), Some(2));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"retry_on_traps": ["boom"]}"#).is_err());
        // Unset, the policy's text (which keys the stored settings) is as before.
        assert!(
            !serde_json::to_string(&RetryPolicy::default())
                .unwrap()
                .contains("traps")
        );
    }

    #[test]
    fn retries_until_attempts_run_out() {
        assert!(matches!(
            decide(&snap(1), AttemptEnd::of(Outcome::Failed), 0),
            Next::Retry { .. }
        ));
        assert!(matches!(
            decide(&snap(2), AttemptEnd::of(Outcome::TimedOut), 0),
            Next::Retry { .. }
        ));
        assert_eq!(
            decide(&snap(3), AttemptEnd::of(Outcome::Failed), 0),
            Next::Failed
        );
        assert_eq!(
            decide(&snap(3), AttemptEnd::of(Outcome::Succeeded), 0),
            Next::Succeeded
        );
    }

    #[test]
    fn deterministic_outcomes_are_not_retried_by_default() {
        for o in [
            Outcome::OutOfFuel,
            Outcome::OutOfMemory,
            Outcome::OutputTooLarge,
        ] {
            assert_eq!(decide(&snap(1), AttemptEnd::of(o), 0), Next::Failed, "{o}");
        }
        let mut s = snap(1);
        s.retry.retry_on = Some(vec![Outcome::OutOfFuel]);
        assert!(matches!(
            decide(&s, AttemptEnd::of(Outcome::OutOfFuel), 0),
            Next::Retry { .. }
        ));
        assert_eq!(decide(&s, AttemptEnd::of(Outcome::Failed), 0), Next::Failed);
    }

    #[test]
    fn lost_attempts_have_a_budget_of_their_own() {
        let mut s = snap(1);
        s.retry.retry_on = Some(vec![]);
        assert!(matches!(
            decide(&s, AttemptEnd::of(Outcome::Lost), 0),
            Next::Retry { .. }
        ));
        // Three attempts, all lost so far: retries are untouched, the lost budget is not.
        let mut s = snap(3);
        s.lost = 2;
        assert!(matches!(
            decide(&s, AttemptEnd::of(Outcome::Lost), 0),
            Next::Retry { .. }
        ));
        // The fifth lost attempt (the default max_lost) ends the job: a job that kills its
        // workers still stops.
        let mut s = snap(5);
        s.lost = 4;
        assert_eq!(decide(&s, AttemptEnd::of(Outcome::Lost), 0), Next::Failed);
        // Four lost attempts and one failed: the failure is the job's first of three.
        let mut s = snap(5);
        s.lost = 4;
        assert!(matches!(
            decide(&s, AttemptEnd::of(Outcome::Failed), 0),
            Next::Retry { .. }
        ));
        let mut s = snap(7);
        s.lost = 4;
        assert_eq!(
            decide(&s, AttemptEnd::of(Outcome::Failed), 0),
            Next::Failed,
            "the third failure"
        );
    }

    #[test]
    fn cancel_request_and_deadline_win() {
        let mut s = snap(1);
        s.cancel_requested = true;
        assert_eq!(
            decide(&s, AttemptEnd::of(Outcome::Failed), 0),
            Next::Cancelled
        );
        let mut s = snap(1);
        s.deadline_at = Some(10);
        assert_eq!(decide(&s, AttemptEnd::of(Outcome::Failed), 0), Next::Failed);
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            [p.backoff_ms(1), p.backoff_ms(2), p.backoff_ms(3)],
            [1000, 2000, 4000]
        );
        assert_eq!(p.backoff_ms(40), 300_000);
        let j = RetryPolicy::default();
        for _ in 0..100 {
            let b = j.backoff_ms(1);
            assert!((800..=1200).contains(&b), "{b}");
        }
    }

    #[test]
    fn policy_accepts_human_durations_and_names_bad_fields() {
        let p: RetryPolicy =
            serde_json::from_str(r#"{"initial_backoff_ms": "250ms", "max_attempts": 5}"#)
                .expect("valid");
        assert_eq!((p.initial_backoff_ms, p.max_attempts), (250, 5));
        assert!(
            RetryPolicy {
                max_attempts: 0,
                ..p.clone()
            }
            .validate()
            .unwrap_err()
            .contains("max_attempts")
        );
        assert!(
            serde_json::from_str::<RetryPolicy>(r#"{"tries": 1}"#)
                .unwrap_err()
                .to_string()
                .contains("tries")
        );
    }
}
