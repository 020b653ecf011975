//! Cron schedules: parsing (the `croner` crate: standard 5-field expressions, or 6 with
//! seconds), and the loop that fires due schedules. A schedule's target ([`Target`]) is a job
//! to submit or a workflow run to start. Each tick fires once however many nodes run: the
//! store hands a due schedule to one node (row lock), and a tick's job carries an idempotency
//! key naming the schedule and the tick.
//!
//! Ticks missed while every node was down are not replayed one by one: the first node up fires
//! the schedule once, then continues from the next tick after now.
//!
//! A schedule's `overlap` says what a tick does while the job (or run) of its last tick has
//! not ended: fire anyway (`allow`), nothing (`skip`), or keep the tick (the latest one) and
//! fire it once that job or run ended (`queue_one`).

use std::str::FromStr;
use std::time::Duration;

use chrono::TimeZone;
use croner::Cron;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::{JobService, SubmitJob};
use crate::store::{Fired, Overlap, Schedule, now_ms};
use crate::workflow::WorkflowService;

/// The workflow run a schedule starts each tick: the latest version of workflow `name` (or
/// `version`), on `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTarget {
    pub name: String,
    /// A version to pin; the latest at each tick if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
    /// The run's input (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// What a schedule does at each tick, as its `target` stores it: a job submission
/// (`SubmitJob`'s JSON), or `{"workflow": WorkflowTarget}`.
#[derive(Debug, Clone)]
pub enum Target {
    Job(Box<SubmitJob>),
    Workflow(WorkflowTarget),
}

impl Target {
    /// The target a schedule stores.
    pub fn of(stored: &Value) -> Result<Target, String> {
        match stored.get("workflow") {
            Some(w) => serde_json::from_value(w.clone())
                .map(Target::Workflow)
                .map_err(|e| format!("a workflow target that does not parse: {e}")),
            None => serde_json::from_value(stored.clone())
                .map(|j| Target::Job(Box::new(j)))
                .map_err(|e| format!("a job target that does not parse: {e}")),
        }
    }

    /// The JSON a schedule stores.
    pub fn to_stored(&self) -> Result<Value, serde_json::Error> {
        match self {
            Target::Job(job) => serde_json::to_value(job),
            Target::Workflow(w) => Ok(serde_json::json!({ "workflow": w })),
        }
    }
}

/// Parses a cron expression, with a message naming it when it is not one.
pub fn parse(expr: &str) -> Result<Cron, String> {
    Cron::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// Parses an IANA time zone name (`Europe/Berlin`), with a message naming it when it is not
/// one.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })
}

/// The first tick of `expr` strictly after `after_ms`, in milliseconds: the expression read in
/// time zone `tz` (UTC if `None`), daylight saving included (croner: a tick in a skipped hour
/// fires once at the jump, a tick in a repeated hour fires once).
pub fn next_after(expr: &str, tz: Option<&str>, after_ms: i64) -> Option<i64> {
    let cron = parse(expr).ok()?;
    let zone = match tz {
        Some(name) => parse_tz(name).ok()?,
        None => chrono_tz::Tz::UTC,
    };
    // Ticks fall on whole seconds: search from the second `after_ms` falls in.
    let start = zone
        .timestamp_millis_opt(after_ms - after_ms.rem_euclid(1000))
        .single()?;
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The next `n` ticks of `s` after `after_ms`.
pub fn next_ticks(s: &Schedule, after_ms: i64, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut at = after_ms;
    while out.len() < n {
        match next_after(&s.cron, s.tz.as_deref(), at) {
            Some(t) => {
                out.push(t);
                at = t;
            }
            None => break,
        }
    }
    out
}

/// A schedule's next tick after `after_ms` (what the store asks when it advances one).
fn next_tick(s: &Schedule, after_ms: i64) -> Option<i64> {
    next_after(&s.cron, s.tz.as_deref(), after_ms)
}

/// Fires due schedules once a second until shut down, and the ticks `queue_one` schedules
/// kept once their previous job or run ended. Schedules that start workflow runs need
/// `workflows` (a node without it logs their ticks as errors).
pub(super) async fn fire(
    service: JobService,
    workflows: Option<WorkflowService>,
    shutdown: CancellationToken,
) {
    let fire = Firing { service, workflows };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match fire
            .service
            .store
            .take_due_schedules(now_ms(), next_tick)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                crate::throttle::warn(format!("cron: {e}"));
                continue;
            }
        };
        for schedule in due {
            let tick = schedule.next_run_at;
            if schedule.overlap != Overlap::Allow && fire.previous_going(&schedule).await {
                let what = fire.previous(&schedule);
                if schedule.overlap == Overlap::QueueOne {
                    tracing::info!(
                        schedule = schedule.id,
                        "schedule {}: {what} of its previous tick is still going; this tick waits for it (queue_one)",
                        schedule.id
                    );
                    if let Err(e) = fire.service.store.schedule_pending(schedule.id, tick).await {
                        tracing::error!("schedule {}: cannot keep its tick: {e}", schedule.id);
                    }
                } else {
                    tracing::info!(
                        schedule = schedule.id,
                        "schedule {}: {what} of its previous tick is still going; this tick is skipped",
                        schedule.id
                    );
                }
                continue;
            }
            fire.tick(&schedule, tick).await;
        }
        // Ticks kept by `queue_one` whose previous job or run has ended now.
        let kept = match fire.service.store.list_schedules().await {
            Ok(all) => all.into_iter().filter(|s| s.pending_tick.is_some()),
            Err(e) => {
                crate::throttle::warn(format!("cron: {e}"));
                continue;
            }
        };
        for schedule in kept.collect::<Vec<_>>() {
            if let Some(tick) = schedule.pending_tick
                && !fire.previous_going(&schedule).await
            {
                fire.tick(&schedule, tick).await;
            }
        }
    }
}

/// What fires schedules' ticks: the job service, and the workflow service for schedules that
/// start runs.
struct Firing {
    service: JobService,
    workflows: Option<WorkflowService>,
}

impl Firing {
    /// The job or run of the schedule's last tick, for the log.
    fn previous(&self, schedule: &Schedule) -> String {
        match (schedule.last_job, schedule.last_run) {
            (_, Some(run)) => format!("workflow run {run}"),
            (Some(job), None) => format!("job {job}"),
            (None, None) => "nothing".into(),
        }
    }

    /// Whether the job or run of the schedule's last tick has not ended (one no longer stored
    /// has).
    async fn previous_going(&self, schedule: &Schedule) -> bool {
        let going = match (schedule.last_job, schedule.last_run, &self.workflows) {
            (_, Some(run), Some(workflows)) => workflows
                .runs()
                .get_run(run)
                .await
                .map(|r| r.is_some_and(|r| !r.run.state.is_final())),
            (Some(job), None, _) => self
                .service
                .store
                .get_job(job)
                .await
                .map(|j| j.is_some_and(|j| !j.state.is_final())),
            (None, None, _) => return false,
            (_, Some(run), None) => {
                crate::throttle::warn(format!(
                    "cron: this node cannot read workflow run {run} of schedule {}",
                    schedule.id
                ));
                return true;
            }
        };
        // Unknown: do as if it ran, so `skip` and `queue_one` never double up.
        going.unwrap_or_else(|e| {
            crate::throttle::warn(format!(
                "cron: cannot read {}: {e}",
                self.previous(schedule)
            ));
            true
        })
    }

    /// Fires `schedule`'s `tick` (a job: once per tick, its key names them) and records what
    /// it fired as the schedule's last.
    async fn tick(&self, schedule: &Schedule, tick: i64) {
        let target = match Target::of(&schedule.target) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("schedule {}: stored target is {e}", schedule.id);
                return;
            }
        };
        let fired = match target {
            Target::Job(mut req) => {
                // The tick's key is in the server's own namespace: no client can take it first.
                req.idempotency_key = None;
                match self.service.submit_scheduled(*req, schedule.id, tick).await {
                    Ok((job, _)) => Fired::Job(job.id),
                    Err(e) => {
                        tracing::error!("schedule {} could not submit its job: {e}", schedule.id);
                        return;
                    }
                }
            }
            Target::Workflow(w) => {
                let Some(workflows) = &self.workflows else {
                    tracing::error!(
                        "schedule {}: this node was started without the workflow service: it cannot start runs",
                        schedule.id
                    );
                    return;
                };
                let started = match crate::service::input_bytes(w.input.as_ref(), None) {
                    Ok(input) => workflows.start_run(&w.name, w.version, input).await,
                    Err(e) => Err(e),
                };
                match started {
                    Ok((run, _)) => Fired::Run(run.id),
                    Err(e) => {
                        tracing::error!(
                            "schedule {} could not start a run of workflow {:?}: {e}",
                            schedule.id,
                            w.name
                        );
                        return;
                    }
                }
            }
        };
        if let Err(e) = self.service.store.schedule_fired(schedule.id, fired).await {
            tracing::error!("schedule {}: cannot record {fired:?}: {e}", schedule.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick() {
        // 2026-01-01T00:00:00Z
        let t0 = 1_767_225_600_000;
        assert_eq!(next_after("0 * * * *", None, t0), Some(t0 + 3_600_000));
        assert_eq!(next_after("*/5 * * * *", None, t0 + 1), Some(t0 + 300_000));
        assert!(
            parse("every tuesday")
                .unwrap_err()
                .contains("every tuesday")
        );
    }

    #[test]
    fn ticks_in_a_time_zone_follow_its_daylight_saving() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        let berlin = Some("Europe/Berlin");
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            next_after("0 9 * * *", berlin, at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            next_after("0 9 * * *", berlin, at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T07:00:00Z"))
        );
        // Across the spring change (29 March 2026): one tick a day, an hour earlier in UTC.
        let s = Schedule {
            id: 1,
            name: None,
            cron: "0 9 * * *".into(),
            tz: Some("Europe/Berlin".into()),
            overlap: Overlap::Allow,
            target: serde_json::json!({}),
            next_run_at: 0,
            created_at: 0,
            last_job: None,
            last_run: None,
            pending_tick: None,
        };
        assert_eq!(
            next_ticks(&s, at("2026-03-28T12:00:00Z"), 2),
            [at("2026-03-29T07:00:00Z"), at("2026-03-30T07:00:00Z")]
        );
        // 02:30 does not exist on that day in Berlin: it fires once, at the jump.
        let ticks = next_ticks(
            &Schedule {
                cron: "30 2 * * *".into(),
                ..s
            },
            at("2026-03-28T12:00:00Z"),
            2,
        );
        assert_eq!(ticks.len(), 2);
        assert!(ticks[0] < at("2026-03-29T02:00:00Z") && ticks[1] > at("2026-03-30T00:00:00Z"));
        assert!(
            parse_tz("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }

    #[test]
    fn a_target_is_a_job_or_a_workflow_run() {
        let job = serde_json::json!({"module": "report", "input": {"day": 1}});
        assert!(matches!(Target::of(&job), Ok(Target::Job(j)) if j.module == "report"));
        let run = Target::Workflow(WorkflowTarget {
            name: "nightly".into(),
            version: Some(2),
            input: Some(serde_json::json!({"day": 1})),
        });
        let stored = run.to_stored().expect("stored");
        assert_eq!(
            stored,
            serde_json::json!({"workflow": {"name": "nightly", "version": 2, "input": {"day": 1}}})
        );
        assert!(matches!(Target::of(&stored), Ok(Target::Workflow(w)) if w.version == Some(2)));
        assert!(
            Target::of(&serde_json::json!({"workflow": {"nam": "x"}}))
                .unwrap_err()
                .contains("workflow target")
        );
    }
}
